"""Transfer across studies, side by side in one run: a re-tuning task per application kit and a
synthetic family, each tuned (a) from nothing, (b) with two related source studies (and with
the first of them alone: variant one_related), (c) with a misleading source, (d) with Ax's
transfer learning (BOTL: a multi-task GP; with --ax-model-selection, Ax's cross-validated choice
against a single-task GP) on the same sources.

Tasks (the target instance is fixed; the 10 seeds are the optimizer's):

  hartmann6  Hartmann6 shifted and rescaled: a(k) * H6(x - delta(k)) + b(k), delta(k) in
             [-0.02, 0.02]^6, a(k) in [0.5, 2], b(k) in [-1, 1]; target member 0, sources 1, 2
  admm       the ADMM kit on a new Lasso instance (seed 10) of the same family; sources: the
             instances of seeds 11 and 12
  cloud      the cloud kit with a shifted workload (trace seed 10 at 1.25x the load); sources:
             traces 11 and 12 at the usual load
  hpo_rows   the HPO kit's MLP (5 parameters) on new data of the same kind: a third of digits'
             rows (the kit's part 1/3); sources: the same MLP on the other two thirds
  hpo        the HPO kit's SVM on breast_cancer; sources: the same SVM on wine and on digits

Sources are earlier studies: plain bbo runs of 30 evaluations on each source instance, a new one
for every seed (the source study's seed is SOURCE_SEED + the run's seed), so that the median over
seeds averages over what earlier studies happen to have found as well as over the target's runs.
With one source study per task, shared by every seed (``--fixed-sources``, this benchmark's
protocol before), the result hung on that one draw: the ADMM kit's related sources reached no
transfer's 30-evaluation result at evaluation 2 with the sources one engine made and not by
evaluation 10 with those of the next, whose source1 had stopped at 41 iterations instead of 30.
The misleading source of every task is the
target's own function with every parameter mirrored in its range (u -> 1 - u in the encoding,
categoricals reversed): the same scale and structure under the same parameter names, the optimum
somewhere else, tuned the same way.

Metrics per task (median over seeds of the best feasible value so far, as regret against the
task's reference: the known optimum for hartmann6, else the best feasible value any run here
found): evals_to_plain_30 (the first evaluation where (b)'s median regret is at or below (a)'s at
30; target <= 10), final ratio (c) / (a) at 30 (target <= 1.10), and the same for (d).

    OMP_NUM_THREADS=1 nice -n 10 python bench/bench_transfer.py [--seeds 10] [--budget 30]
        [--tasks hartmann6,admm,cloud,hpo] [--variants plain,related,one_related,misleading,ax]
        [--ax-seeds 10] [--ax-model-selection] [--fixed-sources] [--workers 1] [--resume]

Writes bench/results/transfer.json, transfer.md and transfer.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from common import ROOT, limit_threads

limit_threads()

VARIANTS = ("plain", "related", "one_related", "misleading", "ax")
TASKS = ("hartmann6", "admm", "cloud", "hpo_rows", "hpo")
SOURCE_BUDGET = 30
SOURCE_SEED = 777  # a source study's seed: this plus the run's seed (--fixed-sources: this alone)
OUT = Path(ROOT) / "bench" / "results"


# ---- tasks ---------------------------------------------------------------------------------------
_H6_A = np.array(
    [
        [10, 3, 17, 3.5, 1.7, 8],
        [0.05, 10, 17, 0.1, 8, 14],
        [3, 3.5, 1.7, 10, 17, 8],
        [17, 8, 0.05, 10, 0.1, 14],
    ]
)
_H6_P = 1e-4 * np.array(
    [
        [1312, 1696, 5569, 124, 8283, 5886],
        [2329, 4135, 8307, 3736, 1004, 9991],
        [2348, 1451, 3522, 2883, 3047, 6650],
        [4047, 8828, 8732, 5743, 1091, 381],
    ]
)
_H6_ALPHA = np.array([1.0, 1.2, 3.0, 3.2])
H6_OPT = -3.3223680114155147


def _h6(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(-np.sum(_H6_ALPHA * np.exp(-np.sum(_H6_A * (x - _H6_P) ** 2, axis=1))))


def h6_member(k: int) -> tuple[np.ndarray, float, float]:
    """(delta, a, b) of family member ``k`` (member 0 is the target)."""
    rng = np.random.default_rng([2024, k])
    return rng.uniform(-0.02, 0.02, 6), float(rng.uniform(0.5, 2.0)), float(rng.uniform(-1, 1))


@dataclasses.dataclass
class Instance:
    """One black box: a spec (its fixed parameters say which instance) and its evaluation."""

    name: str
    spec: object  # bbo.spec.StudySpec
    evaluate: object  # params -> metrics
    # the objective's least step where it has one, else 0: an HPO error rate counts misclassified
    # rows (a CV mean over folds of unequal size puts the same count a few 1e-5 apart)
    resolution: float = 0.0


def _kit_instance(name, kit_name, seed, **options) -> Instance:
    from bbo.kits import KITS
    from bbo.kits.hpo import load_dataset
    from bbo.space import FixedParam

    kit = KITS[kit_name]
    spec = kit.spec(**options)
    fixed = {p.name: p.value for p in spec.space.params if isinstance(p, FixedParam)}

    def evaluate(params):
        return kit.evaluate({**fixed, **params}, seed=seed)

    step = 0.0
    if kit_name == "hpo":
        p = {**kit.defaults, **fixed}
        step = 1.0 / len(load_dataset(p["dataset"], int(p["max_samples"]), str(p["part"]))[1])
    return Instance(name, spec, evaluate, step)


def _h6_instance(name: str, k: int) -> Instance:
    from bbo.space import FloatParam, SearchSpace
    from bbo.spec import Objective, StudySpec

    delta, a, b = h6_member(k)
    space = SearchSpace(tuple(FloatParam(f"x{i}", 0.0, 1.0) for i in range(6)))
    spec = StudySpec(
        space,
        (Objective("y"),),
        description="Minimize a shifted, rescaled 6-D Hartmann function on the unit cube.",
    )

    def evaluate(params):
        x = np.clip(np.array([params[f"x{i}"] for i in range(6)]) - delta, 0.0, 1.0)
        return {"y": a * _h6(x) + b}

    return Instance(name, spec, evaluate)


def _mirrored(base: Instance) -> Instance:
    space = base.spec.space
    cats = set(space.cat_dims)
    hi = space.bounds()[1]

    def evaluate(params):
        u = space.encode(params)
        m = np.array([hi[i] - u[i] if i in cats else 1.0 - u[i] for i in range(len(u))])
        return base.evaluate(space.decode(m))

    return Instance(base.name + "~mirror", base.spec, evaluate)


def instance(name: str) -> Instance:
    """Every black box of the benchmark by name: ``<task>:target``, ``<task>:source<k>``,
    ``<task>:misleading``."""
    task, which = name.split(":")
    if which == "misleading":
        return dataclasses.replace(_mirrored(instance(f"{task}:target")), name=name)
    k = 0 if which == "target" else int(which.removeprefix("source"))
    if task == "hartmann6":
        return _h6_instance(name, k)
    if task == "admm":
        return _kit_instance(name, "admm", 10 + k, problem="lasso")
    if task == "cloud":
        return _kit_instance(name, "cloud", 10 + k, load_scale=1.25 if k == 0 else 1.0)
    if task == "hpo_rows":
        return _kit_instance(name, "hpo", 0, model="mlp", dataset="digits", part=f"{k + 1}/3")
    if task == "hpo":
        data = {0: "breast_cancer", 1: "wine", 2: "digits"}[k]
        return _kit_instance(name, "hpo", 0, model="svm", dataset=data)
    raise KeyError(name)


SOURCES = {
    "related": ["source1", "source2"],
    "one_related": ["source1"],
    "misleading": ["misleading"],
}


# ---- runs ----------------------------------------------------------------------------------------
def _objective(spec):
    o = spec.objectives[0]
    return o.name, (1.0 if o.goal == "minimize" else -1.0)


def _best_curve(spec, history) -> list[float]:
    """Best feasible objective so far (signed so that lower is better), inf before any."""
    name, sign = _objective(spec)
    best, out = math.inf, []
    for m in history:
        if m is not None and spec.is_feasible(m):
            best = min(best, sign * m[name])
        out.append(best)
    return out


def run_bbo(task: str, variant: str, seed: int, budget: int, sources: list) -> dict:
    import torch

    torch.set_num_threads(1)
    from bbo.spec import AlgorithmOptions, TransferOptions
    from bbo.strategy import GenerationStrategy
    from bbo.trial import Metric, Trial, TrialState

    inst = instance(f"{task}:target")
    transfer = TransferOptions(tuple(s.name for s in sources)) if sources else TransferOptions()
    spec = dataclasses.replace(inst.spec, algorithm=AlgorithmOptions(seed=seed), transfer=transfer)
    gs = GenerationStrategy(spec)
    if sources:
        gs.set_sources(sources)
    trials, history, origins, weights = [], [], [], []
    t0 = time.perf_counter()
    for i in range(budget):
        (s,) = gs.suggest(trials, 1)
        try:
            m = {k: float(v) for k, v in inst.evaluate(s.params).items()}
            ok = all(math.isfinite(v) for v in m.values())
        except Exception:  # noqa: BLE001 - a failed evaluation is a failed trial
            m, ok = None, False
        state = TrialState.COMPLETED if ok else TrialState.FAILED
        metrics = {k: Metric(v) for k, v in (m or {}).items()} if ok else {}
        trials.append(Trial(i + 1, s.params, state, metrics, origin=s.origin))
        history.append(m if ok else None)
        origins.append(s.origin)
        rep = gs.transfer_report()
        weights.append(rep["by_metric"][_objective(spec)[0]] if rep else None)
    return {
        "task": task,
        "variant": variant,
        "seed": seed,
        "best": _best_curve(spec, history),
        "origins": origins,
        "weights": weights,
        "seconds": time.perf_counter() - t0,
    }


def make_source(task: str, which: str, budget: int, seed: int = SOURCE_SEED) -> dict:
    """A plain bbo study (seeded ``seed``) on a source instance: its trials as stored (for
    SourceData)."""
    import torch

    torch.set_num_threads(1)
    from bbo.spec import AlgorithmOptions
    from bbo.strategy import GenerationStrategy
    from bbo.trial import Metric, Trial, TrialState

    inst = instance(f"{task}:{which}")
    spec = dataclasses.replace(inst.spec, algorithm=AlgorithmOptions(seed=seed))
    gs = GenerationStrategy(spec)
    trials = []
    for i in range(budget):
        (s,) = gs.suggest(trials, 1)
        m = inst.evaluate(s.params)
        trials.append(
            Trial(
                i + 1, s.params, TrialState.COMPLETED, {k: Metric(float(v)) for k, v in m.items()}
            )
        )
    return {
        "task": task,
        "which": which,
        "source_seed": seed,
        "trials": [
            {"id": t.id, "params": t.params, "metrics": {k: m.value for k, m in t.metrics.items()}}
            for t in trials
        ],
        "best": _best_curve(spec, [{k: m.value for k, m in t.metrics.items()} for t in trials])[-1],
    }


def source_data(stored: dict):
    from bbo.transfer import SourceData
    from bbo.trial import Metric, Trial, TrialState

    inst = instance(f"{stored['task']}:{stored['which']}")
    trials = [
        Trial(
            t["id"],
            t["params"],
            TrialState.COMPLETED,
            {k: Metric(v) for k, v in t["metrics"].items()},
        )
        for t in stored["trials"]
    ]
    return SourceData(f"uid-{stored['which']}", stored["which"], inst.spec, trials)


def run_ax(
    task: str, seed: int, budget: int, sources: list[dict], n_init: int, selection: bool
) -> dict:
    """Ax 1.3's transfer learning on the same sources: BOTL (MultiTaskGP) after a Sobol design of
    ``n_init`` points; with ``selection``, Ax's model selection against a single-task GP (its
    default, by cross-validation before every trial: too slow for this machine's budget)."""
    import logging
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from ax.adapter.registry import Generators
    from ax.adapter.transfer_learning.adapter import (
        TL_EXP,
        transfer_learning_generator_specs_constructor,
    )
    from ax.api.client import Client
    from ax.core.auxiliary_source import AuxiliarySource
    from ax.generation_strategy.generation_node import GenerationNode
    from ax.generation_strategy.generation_strategy import GenerationStrategy
    from ax.generation_strategy.generator_spec import GeneratorSpec
    from ax.generation_strategy.transition_criterion import MinTrials
    from peers import ax_parameters

    inst = instance(f"{task}:target")
    spec = inst.spec
    name, sign = _objective(spec)
    cons = [f"{c.metric} {c.op} {c.bound}" for c in spec.outcome_constraints] or None

    def client(s: int, exp_name: str) -> Client:
        c = Client(random_seed=s)
        c.configure_experiment(parameters=ax_parameters(spec.space), name=exp_name)
        c.configure_optimization(
            objective=("-" if sign > 0 else "") + name, outcome_constraints=cons
        )
        return c

    for n in list(logging.root.manager.loggerDict):
        if n.startswith("ax"):
            logging.getLogger(n).setLevel(logging.ERROR)
    aux = []
    free = set(spec.space.names)
    for k, src in enumerate(sources):
        c = client(seed + 1000 + k, f"src{k}")
        for t in src["trials"]:
            idx = c.attach_trial(parameters={p: v for p, v in t["params"].items() if p in free})
            c.complete_trial(idx, raw_data={m: float(v) for m, v in t["metrics"].items()})
        aux.append(AuxiliarySource(experiment=c._experiment))
    target = client(seed, "target")
    target._experiment.auxiliary_experiments_by_purpose[TL_EXP] = aux
    specs, selector = transfer_learning_generator_specs_constructor(use_model_selection=selection)
    target.set_generation_strategy(
        GenerationStrategy(
            name="botl",
            nodes=[
                GenerationNode(
                    name="Sobol",
                    generator_specs=[
                        GeneratorSpec(
                            generator_enum=Generators.SOBOL, generator_kwargs={"seed": seed}
                        )
                    ],
                    transition_criteria=[
                        MinTrials(
                            threshold=n_init, transition_to="BOTL", use_all_trials_in_exp=True
                        )
                    ],
                ),
                GenerationNode(name="BOTL", generator_specs=specs, best_model_selector=selector),
            ],
        )
    )
    history, t0, errors = [], time.perf_counter(), []
    for _ in range(budget):
        idx, params = next(iter(target.get_next_trials(max_trials=1).items()))
        try:
            m = {k: float(v) for k, v in inst.evaluate(dict(params)).items()}
            target.complete_trial(idx, raw_data=m)
        except Exception as e:  # noqa: BLE001
            errors.append(f"{type(e).__name__}: {e}"[:200])
            target.mark_trial_failed(idx)
            m = None
        history.append(m)
    return {
        "task": task,
        "variant": "ax",
        "seed": seed,
        "best": _best_curve(spec, history),
        "origins": [],
        "weights": [],
        "errors": errors,
        "seconds": time.perf_counter() - t0,
    }


def job(kind: str, *args):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if kind == "source":
        return make_source(*args)
    task, variant, seed, budget, stored, ax_selection = args
    if variant == "ax":
        d = instance(f"{task}:target").spec.space.dim
        n_init = max(2, math.ceil((d + 1) / 2))  # Sobol points before Ax's multi-task GP
        return run_ax(task, seed, budget, stored, n_init, ax_selection)
    return run_bbo(task, variant, seed, budget, [source_data(s) for s in stored])


# ---- summary -------------------------------------------------------------------------------------
def reference(task: str, runs: list[dict], sources: dict) -> float:
    if task == "hartmann6":
        _, a, b = h6_member(0)
        return a * H6_OPT + b  # the shift keeps the optimum inside the cube
    vals = [r["best"][-1] for r in runs if r["task"] == task and math.isfinite(r["best"][-1])]
    return min(vals) if vals else math.nan


SUBSET_SEEDS = 10  # the seeds a rerun of the protocol uses
SUBSETS = 1000
REACH_TARGET = 10  # related sources should reach no transfer's final result by this evaluation


def _subset_reach(plain: np.ndarray, runs: np.ndarray, tol: float) -> dict | None:
    """What a run of SUBSET_SEEDS seeds would report, over random subsets of the seeds run (the
    same subset for both variants, as a rerun shares its seeds): the evaluation at which the
    subset's median reaches plain's median at the budget (budget + 1: never), as its 10th /
    50th / 90th percentiles and the share of subsets at or below REACH_TARGET; None with too few
    seeds (or seed counts that differ, as in a partial run)."""
    n = len(plain)
    if n <= SUBSET_SEEDS or len(runs) != n:
        return None
    rng = np.random.default_rng(0)
    reach = np.empty(SUBSETS)
    for b in range(SUBSETS):
        idx = rng.choice(n, SUBSET_SEEDS, replace=False)
        target = np.median(plain[idx, -1])
        hit = np.nonzero(np.median(runs[idx], axis=0) <= target + tol)[0]
        reach[b] = hit[0] + 1 if len(hit) else runs.shape[1] + 1
    p10, p50, p90 = np.percentile(reach, [10, 50, 90])
    return {
        "p10": float(p10),
        "p50": float(p50),
        "p90": float(p90),
        "share_within_target": float(np.mean(reach <= REACH_TARGET)),
    }


def summarize(runs: list[dict], budget: int, sources: dict) -> dict:
    out = {}
    for task in TASKS:
        mine = [r for r in runs if r["task"] == task]
        if not mine:
            continue
        ref = reference(task, runs, sources)
        curves = {}
        for v in VARIANTS:
            rs = sorted((r for r in mine if r["variant"] == v), key=lambda r: r["seed"])
            if rs:
                curves[v] = np.array([np.array(r["best"]) - ref for r in rs])
        if "plain" not in curves:
            continue
        med = {v: np.median(c, axis=0) for v, c in curves.items()}
        plain30 = float(med["plain"][-1])
        # values a quarter of the objective's least step apart are equal
        tol = max(1e-12 * max(1.0, abs(ref)), 0.25 * instance(f"{task}:target").resolution)
        row = {"reference": ref, "plain_final_regret": plain30, "variants": {}}
        for v, m in med.items():
            hit = np.nonzero(m <= plain30 + tol)[0]
            final = float(m[-1])
            row["variants"][v] = {
                "n_seeds": int(len(curves[v])),
                "median_regret_at_5": float(m[min(4, len(m) - 1)]),
                "median_regret_at_10": float(m[min(9, len(m) - 1)]),
                "median_regret_final": final,
                "median_best_final": final + ref,
                "final_ratio_to_plain": (
                    final / plain30 if plain30 > tol else (1.0 if final <= tol else math.inf)
                ),
                "evals_to_plain_final": int(hit[0]) + 1 if len(hit) else None,
                "subsets": _subset_reach(curves["plain"], curves[v], tol),
            }
        out[task] = row
    return out


def _evals(x: float, budget: int) -> str:
    return "never" if x > budget else f"{x:.0f}"


def markdown(summary: dict, budget: int, meta: dict) -> str:
    lines = [
        f"Median over seeds of the best feasible value so far, as regret against the task's "
        f"reference (hartmann6: its optimum; kits: the best any run here found). Budget {budget}.",
        "",
        "| task | variant | seeds | regret @5 | regret @10 | regret @"
        + str(budget)
        + " | x plain @"
        + str(budget)
        + " | evals to plain's @"
        + str(budget)
        + f" | the same, {SUBSET_SEEDS}-seed subsets: p10-p90 (share <= {REACH_TARGET}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, row in summary.items():
        for v in VARIANTS:
            r = row["variants"].get(v)
            if r is None:
                continue
            e = r["evals_to_plain_final"]
            sub = r.get("subsets")
            subs = (
                f"{_evals(sub['p10'], budget)}-{_evals(sub['p90'], budget)} "
                f"({sub['share_within_target']:.0%})"
                if sub and v != "plain"
                else ""
            )
            lines.append(
                f"| {task} | {v} | {r['n_seeds']} | {r['median_regret_at_5']:.3g} | "
                f"{r['median_regret_at_10']:.3g} | {r['median_regret_final']:.3g} | "
                f"{r['final_ratio_to_plain']:.2f} | {e if e is not None else 'never'} | "
                f"{subs} |"
            )
    lines += ["", f"Wall time {meta['wall_seconds'] / 60:.1f} min; {meta['note']}"]
    return "\n".join(lines)


def plot(runs: list[dict], summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    if not tasks:  # no task has its plain runs: nothing to plot regret against
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.8), squeeze=False)
    colors = {
        "plain": "k",
        "related": "tab:green",
        "one_related": "tab:olive",
        "misleading": "tab:red",
        "ax": "tab:blue",
    }
    for ax, task in zip(axes[0], tasks, strict=True):
        ref = summary[task]["reference"]
        for v in VARIANTS:
            c = np.array([r["best"] for r in runs if r["task"] == task and r["variant"] == v])
            if not len(c):
                continue
            reg = np.log10(np.maximum(c - ref, 1e-6 * max(1.0, abs(ref))))
            x = np.arange(1, reg.shape[1] + 1)
            ax.plot(x, np.median(reg, axis=0), color=colors[v], label=v)
            ax.fill_between(x, *np.percentile(reg, [25, 75], axis=0), color=colors[v], alpha=0.12)
        ax.axvline(10, color="grey", lw=0.5, ls=":")
        ax.set_title(task)
        ax.set_xlabel("evaluations")
        ax.set_ylabel("log10 regret (median, IQR)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---- main ----------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--ax-seeds", type=int, default=10, help="seeds of variant (d), Ax's BOTL")
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument(
        "--ax-model-selection",
        action="store_true",
        help="(d) with Ax's cross-validated choice between BOTL and a single-task GP (slow)",
    )
    ap.add_argument(
        "--fixed-sources",
        action="store_true",
        help="one source study per task (seed SOURCE_SEED) shared by every seed, as before",
    )
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--name", default="transfer")
    ap.add_argument("--resume", action="store_true", help="keep runs in <out>/<name>.partial.jsonl")
    ap.add_argument(
        "--summarize",
        action="store_true",
        help="run nothing: summarize the runs kept in <out>/<name>.partial.jsonl (with --resume)",
    )
    args = ap.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    variants = [v for v in args.variants.split(",") if v]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f"{args.name}.partial.jsonl"
    done: list[dict] = []
    if args.resume and partial.exists():
        for line in partial.read_text().splitlines():
            try:
                done.append(json.loads(line))
            except ValueError:
                continue
    t0 = time.time()
    log = open(partial, "a" if args.resume else "w")

    def keep(r: dict) -> None:
        done.append(r)
        log.write(json.dumps(r) + "\n")
        log.flush()

    def source_seed(seed: int) -> int:
        return SOURCE_SEED + (0 if args.fixed_sources else seed)

    with ProcessPoolExecutor(max_workers=args.workers) as ex:
        have = {
            (r["task"], r["which"], r.get("source_seed", SOURCE_SEED)) for r in done if "which" in r
        }
        need = [
            (t, w, source_seed(seed))
            for seed in range(args.seeds)
            for t in tasks
            for v in variants
            if v != "plain" and not args.summarize
            for w in SOURCES.get(v, SOURCES["related"])
        ]
        futs = {
            ex.submit(job, "source", t, w, SOURCE_BUDGET, ss): (t, w, ss)
            for t, w, ss in dict.fromkeys(need)
            if (t, w, ss) not in have
        }
        for f in as_completed(futs):
            r = f.result()
            keep(r)
            print(
                f"source {r['task']}:{r['which']} (seed {r['source_seed']}) best {r['best']:.4g}",
                flush=True,
            )
        stored = {
            (r["task"], r["which"], r.get("source_seed", SOURCE_SEED)): r
            for r in done
            if "which" in r
        }
        have = {(r["task"], r["variant"], r["seed"]) for r in done if "variant" in r}
        jobs = []
        for seed in range(args.seeds):
            for t in tasks:
                for v in variants:
                    if v == "ax" and seed >= args.ax_seeds:
                        continue
                    if (t, v, seed) in have or args.summarize:
                        continue
                    srcs = (
                        [
                            stored[(t, w, source_seed(seed))]
                            for w in SOURCES.get(v, SOURCES["related"])
                        ]
                        if v != "plain"
                        else []
                    )
                    jobs.append((t, v, seed, args.budget, srcs, args.ax_model_selection))
        futs = {ex.submit(job, "run", *j): j for j in jobs}
        for k, f in enumerate(as_completed(futs), 1):
            j = futs[f]
            try:
                r = f.result()
            except Exception as e:  # noqa: BLE001 - one failed run is reported, the rest go on
                print(
                    f"[{k}/{len(jobs)}] {j[0]} {j[1]} seed {j[2]} FAILED: {type(e).__name__}: {e}",
                    flush=True,
                )
                continue
            keep(r)
            print(
                f"[{k}/{len(jobs)}] {r['task']:<9} {r['variant']:<10} seed {r['seed']}: best "
                f"{r['best'][9]:.4g} @10, {r['best'][-1]:.4g} @{args.budget} ({r['seconds']:.0f}s)",
                flush=True,
            )
    log.close()
    runs = [
        r
        for r in done
        if "variant" in r
        and r["task"] in tasks
        and r["variant"] in variants
        and r["seed"] < (args.ax_seeds if r["variant"] == "ax" else args.seeds)
        and len(r["best"]) == args.budget
    ]
    sources = {  # each source study's best value, by task, role and seed
        f"{r['task']}:{r['which']}:{r.get('source_seed', SOURCE_SEED)}": r["best"]
        for r in done
        if "which" in r
    }
    summary = summarize(runs, args.budget, sources)
    meta = {
        "wall_seconds": time.time() - t0,
        "note": f"{len(runs)} runs, CPU {sum(r['seconds'] for r in runs) / 60:.0f} min in the runs",
    }
    md = markdown(summary, args.budget, meta)
    result = {
        "budget": args.budget,
        "seeds": args.seeds,
        "ax_seeds": args.ax_seeds,
        "ax_model_selection": args.ax_model_selection,
        "fixed_sources": args.fixed_sources,
        "tasks": tasks,
        "variants": variants,
        "source_best": sources,
        "summary": summary,
        "runs": runs,
        **meta,
    }
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1))
    (out / f"{args.name}.md").write_text(md + "\n")
    plot(runs, summary, out / f"{args.name}.png")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
