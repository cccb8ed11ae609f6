"""``bbo kit NAME --server ADDR [--trials N] [--workers K]``: run a kit's study on a live server.

Creates the kit's study on the server through the Python client (``bbo_client``), evaluates the
suggested trials locally with ``kit.evaluate(params, seed=--eval-seed)`` in ``--workers`` threads,
and prints the best trial. ``bbo kit list`` lists the kits and their options.

Entry points: :func:`kit_main` (``argv`` without the leading "kit") and :func:`register` (adds the
``kit`` subcommand to an argparse sub-parser set, as ``bbo_server.commands`` modules do).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from bbo.kits import KITS, get_kit
from bbo.kits.base import TrainsByEpoch
from bbo.space import CategoricalParam, FixedParam, FloatParam, IntParam, OrdinalParam
from bbo.spec import StudySpec

MAX_EVAL_SEED = 2**32 - 1  # --eval-seed: every trial failed above it (and below 0)


def at_least(low: int, high: int | None = None):
    """An argparse type: a whole number >= ``low`` (and <= ``high``) (refused by argparse, naming
    the flag, before a server is waited for or a study created)."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if v < low or (high is not None and v > high):
            where = f">= {low}" + (f" and <= {high}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {where}, got {v}")
        return v

    return parse


def add_seed_argument(p: argparse.ArgumentParser) -> None:
    """``--seed`` of a command that creates a study, held to the spec's range before any work
    (out of it, ``bbo demo`` started a server and the spec refused it only then)."""
    from bbo.spec import MAX_SEED

    p.add_argument(
        "--seed",
        type=at_least(0, MAX_SEED),
        default=None,
        help="seed of the study's suggestions",
    )


def add_count_arguments(p: argparse.ArgumentParser, trials: int, workers: int) -> None:
    """``--trials`` and ``--workers`` of a command that runs a study (``bbo kit``, ``bbo demo``)."""
    p.add_argument(
        "--trials", type=at_least(1), default=trials, help="evaluations (default %(default)s)"
    )
    p.add_argument(
        "--workers",
        type=at_least(1),
        default=workers,
        help="parallel evaluation threads (default %(default)s)",
    )


def spec_to_client_kwargs(spec: StudySpec) -> dict[str, Any]:
    """``bbo_client.Client.create_study`` keyword arguments equivalent to a core ``StudySpec``."""
    import bbo_client as bc

    params = []
    for p in spec.space.params:
        if isinstance(p, FloatParam):
            params.append(bc.Float(p.name, float(p.low), float(p.high), log=p.log))
        elif isinstance(p, IntParam):
            params.append(bc.Int(p.name, int(p.low), int(p.high), log=p.log))
        elif isinstance(p, CategoricalParam):
            params.append(bc.Categorical(p.name, list(p.choices)))
        elif isinstance(p, OrdinalParam):
            params.append(bc.Ordinal(p.name, [float(v) for v in p.values], log=p.log))
        elif isinstance(p, FixedParam):
            params.append(bc.Fixed(p.name, p.value))
        else:  # pragma: no cover - the space has no other kinds
            raise TypeError(f"unsupported parameter {p!r}")
    a = spec.algorithm
    return dict(
        parameters=params,
        objectives=[bc.Objective(o.name, o.goal) for o in spec.objectives],
        constraints=[
            bc.Constraint(c.metric, c.op, float(c.bound)) for c in spec.outcome_constraints
        ],
        parameter_constraints=[
            bc.LinearConstraint(dict(c.coefficients), float(c.bound))
            for c in spec.space.constraints
        ],
        tracked_metrics=list(spec.tracked_metrics),
        description=spec.description,
        n_initial=a.n_initial,
        seed=a.seed,
        priors=[
            bc.Prior(
                p.parameter,
                p.mean,
                p.std,
                dict(p.probabilities) if p.probabilities else None,
                p.confidence,
            )
            for p in spec.priors
        ],
        **_budgets(spec),
    )


def _budgets(spec: StudySpec) -> dict[str, Any]:
    """The fidelity and pruning of a kit's spec, as client arguments (none where unset)."""
    import bbo_client as bc

    out: dict[str, Any] = {}
    f = spec.fidelity
    if f is not None:
        out["fidelity"] = bc.Fidelity(f.name, float(f.min), float(f.max), f.integer)
        p = spec.pruning
        out["pruning"] = bc.Pruning(p.policy, float(p.eta), p.promote)
    return out


def objective(kit, spec: StudySpec, seed: int):
    """What ``optimize`` evaluates: ``kit.evaluate``, or for an epoch-based kit model a function
    that trains epoch by epoch, reports each epoch's value and stops when the study prunes it."""
    if spec.fidelity is None or not isinstance(kit, TrainsByEpoch):
        return lambda params: kit.evaluate(params, seed=seed)
    obj = spec.objectives[0].name

    def train(params, trial):
        tr = kit.trainer(params, seed)
        for epoch, value in tr.curve(int(trial.budget or spec.fidelity.max)):
            trial.report(epoch, value)  # raises TrialPruned when the study stops the trial
        return {obj: tr.error, "train_seconds": tr.seconds, "epochs": float(tr.epochs)}

    return train


def _coerce(kit, key: str, raw: str) -> Any:
    default = kit.defaults.get(key)
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float) or default is None:
        try:
            return float(raw)
        except ValueError:
            return raw
    return raw


def parse_options(kit, pairs: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in pairs:
        if "=" not in item:
            raise SystemExit(
                f"bbo kit: option {item!r} must look like KEY=VALUE (options of '{kit.name}': {sorted(kit.defaults)})"
            )
        k, v = item.split("=", 1)
        if k not in kit.defaults:
            raise SystemExit(
                f"bbo kit: '{kit.name}' has no option {k!r}; it takes {sorted(kit.defaults)}"
            )
        try:
            out[k] = _coerce(kit, k, v)
        except ValueError:
            raise SystemExit(
                f"bbo kit: option {k}={v!r} of '{kit.name}' must be {type(kit.defaults[k]).__name__} (default {kit.defaults[k]!r})"
            ) from None
    return out


def parse_transfer(value: str):
    """``--transfer``'s value as the client's Transfer: study names, and ``auto`` among them for
    the most related stored studies."""
    import bbo_client as bc

    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise SystemExit("bbo kit: --transfer needs 'auto' or study names (comma-separated)")
    names = tuple(v for v in items if v != "auto")
    return bc.Transfer(sources=names, auto="auto" in items)


def print_transfer(transfer) -> None:
    """The sources a transfer study used and the weight its model gave each (last ask)."""
    if transfer is None or not transfer.sources:
        print(
            "transfer: no source study was used"
            + (f" ({transfer.note})" if transfer and transfer.note else "")
        )
        return
    for src in transfer.sources:
        w = ", ".join(f"{m} {v:.2f}" for m, v in src.weights.items()) or "not weighed yet"
        how = "named" if src.named else f"auto, relatedness {src.relatedness:.2f}"
        print(f"transfer: source {src.name} ({how}, {src.state}): weight {w}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "name", help=f"kit to run: {', '.join(sorted(KITS))}, or 'list' to describe them"
    )
    p.add_argument(
        "--server",
        "--address",
        dest="server",
        default=os.environ.get("BBO_ADDRESS", "127.0.0.1:50051"),
        help="address of a running bbo server (env BBO_ADDRESS; default %(default)s)",
    )
    p.add_argument(
        "--api-key", default=os.environ.get("BBO_API_KEY"), help="API key (env BBO_API_KEY)"
    )
    add_count_arguments(p, trials=30, workers=1)
    p.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="kit option, repeatable (e.g. -o model=rf -o dataset=wine; see 'bbo kit list')",
    )
    p.add_argument(
        "--study", default=None, help="study name (default kit-NAME-<options>-<timestamp>)"
    )
    add_seed_argument(p)
    p.add_argument(
        "--eval-seed",
        type=at_least(0, MAX_EVAL_SEED),  # scikit-learn's random_state takes 0 to 2**32 - 1
        default=0,
        help=f"seed of the black box (CV split / instance / workload), 0 to {MAX_EVAL_SEED}; "
        "default 0",
    )
    p.add_argument(
        "--transfer",
        default=None,
        metavar="auto|STUDY[,STUDY]",
        help="learn from earlier studies of the same tenant: their names, 'auto' for the most "
        "related stored ones, or both (e.g. --transfer auto,kit-hpo-digits-a); the sources used "
        "and their weights are printed at the end",
    )
    p.add_argument(
        "--llm",
        action="store_true",
        help="opt the study into the LLM module (warm start and priors)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.name == "list":
        for name, kit in sorted(KITS.items()):
            opts = ", ".join(f"{k}={v!r}" for k, v in kit.defaults.items())
            print(f"{name}: options {opts}\n  {kit.description}\n")
        return 0
    import bbo_client as bc

    kit = get_kit(args.name)
    options = parse_options(kit, args.option)
    spec = kit.spec(**options)
    kwargs = spec_to_client_kwargs(spec)
    if args.seed is not None:
        kwargs["seed"] = args.seed
    if args.llm:
        kwargs["llm"] = bc.Llm(enabled=True)
    if args.transfer is not None:
        kwargs["transfer"] = parse_transfer(args.transfer)
    tag = "-".join(str(v) for v in options.values()).replace("/", "_").replace(" ", "_")
    name = (
        args.study or f"kit-{kit.name}{'-' + tag if tag else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    with bc.Client(args.server, api_key=args.api_key) as client:
        client.wait_ready(timeout=30.0)
        study = client.create_study(name, **kwargs)
        print(
            f"bbo kit: study {study.name} on {args.server}: {args.trials} trials, {args.workers} workers, eval seed {args.eval_seed}"
        )
        best = study.optimize(
            objective(kit, spec, args.eval_seed),
            n_trials=args.trials,
            n_workers=args.workers,
            progress=not args.quiet,
        )
        trials = study.trials()
        info = study.info() if args.transfer is not None else None
    done = sum(t.state == "COMPLETED" for t in trials)
    failed = [t for t in trials if t.state == "FAILED"]
    pruned = sum(t.state == "PRUNED" for t in trials)
    print(
        f"bbo kit: {done} of {len(trials)} trials completed, {len(failed)} failed"
        + (f", {pruned} pruned" if pruned else "")
    )
    for t in failed[:3]:
        print(f"  trial {t.id} failed: {t.reason}")
    if info is not None:
        print_transfer(info.transfer)
    if not best.trials:
        print(
            f"no feasible trial found ({best.state}{': ' + best.state_reason if best.state_reason else ''})"
        )
        return 0
    objs = [o.name for o in spec.objectives]
    label = (
        "best trial"
        if len(best.trials) == 1
        else f"Pareto front ({len(best.trials)} trials), first"
    )
    t = best.trials[0]
    print(
        f"{label} {t.id} ({t.origin}): "
        + ", ".join(f"{m}={t.metrics.get(m, float('nan')):.6g}" for m in spec.modeled_metrics)
    )
    free = [(k, t.params[k]) for k in spec.space.names if k in t.params]
    print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in free))
    if len(best.trials) > 1:
        for t in best.trials[1:]:
            print(
                f"  trial {t.id}: "
                + ", ".join(f"{m}={t.metrics.get(m, float('nan')):.6g}" for m in objs)
            )
    return 0


def register(sub) -> argparse.ArgumentParser:
    """Add ``kit`` to an argparse sub-parser set (``bbo_server.commands`` convention: sets ``func``)."""
    p = sub.add_parser(
        "kit",
        help="run an application kit's study (hpo, admm, cloud) on a live server",
        description=__doc__.split("\n\n")[0],
    )
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def kit_main(argv: Sequence[str] | None = None) -> int:
    """``bbo kit ...`` with ``argv`` the arguments after "kit"."""
    ap = argparse.ArgumentParser(prog="bbo kit", description=__doc__.split("\n\n")[0])
    add_arguments(ap)
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    return run(args)


if __name__ == "__main__":
    sys.exit(kit_main())
