"""Multi-fidelity optimization, side by side in one run: bbo's multi-fidelity mode (a fidelity,
ASHA / Hyperband pruning, the model on the best-informed rung) against bbo without it (every trial
at the full budget), Optuna TPE with its HyperbandPruner, and random search with asynchronous
successive halving (Optuna's RandomSampler + SuccessiveHalvingPruner). With ``--methods
bbo_mf:median,optuna_gp_median,optuna_tpe_median``: early stopping without a fidelity, bbo's
median rule (its default) against Optuna's GPSampler and TPESampler with its MedianPruner.

Problems (each trial is "trained" budget unit by budget unit, reporting its value after each one;
a unit costs 1, so the budget spent is the sum of the units trained):

- ``mf_hartmann6``: BoTorch's AugmentedHartmann (Hartmann-6 whose first term's weight is biased by
  ``0.1 * (1 - s)`` at fidelity ``s``), units 1..27 mapped to ``s = log(b) / log(27)``: the full
  budget is the plain Hartmann-6 (optimum -3.32237), lower budgets a biased version of it.
- ``hpo_sgd_mlp``: the HPO kit's epoch-based model (``sgd_mlp``: an MLP trained by SGD with momentum
  on digits, hold-out error), epochs 1..27.

Every method gets the same total budget: ``--trials`` full-budget trials' worth. The best value of a
method at a point is the best value of a trial it ran to the full budget by then (pruned trials never
count, as in bbo's GetBest and Optuna's best_value). bbo runs through a real ``bbo serve`` (SQLite)
and the Python client; one sequential worker per run. Results: ``bench/results/<out>.json``,
``<out>.png`` (best value against budget spent, median and quartiles over seeds) and ``<out>.md``,
``out`` from ``--out`` (default ``fidelity``).

Run from the repository root with the package importable (``make setup``, or PYTHONPATH)::

    OMP_NUM_THREADS=1 nice -n 10 python bench/bench_fidelity.py [--seeds 10] [--trials 20]
        [--mf-mode asha-promote] [--problems mf_hartmann6,hpo_sgd_mlp] [--out fidelity]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
MAX = 27  # the full budget (units / epochs); rungs 1, 3, 9, 27 at eta 3
ETA = 3
# "after the first rung": the first rung of Hyperband's first bracket (eta^3 = 27 configurations
# at 1 epoch) spends one full budget; a full-budget value before that means a single configuration
# took all of it
FIRST_RUNG = MAX
H6_OPT = -3.3223680114155147


# ---- problems -------------------------------------------------------------------------------------
@dataclass
class Problem:
    """A search space (bbo_client parameters), and ``run(params, seed)``: a trainer whose
    ``to(b)`` returns the value after ``b`` units (continuing from where it stopped)."""

    name: str
    params: list  # bbo_client parameter builders
    trainer: Callable
    optimum: float | None  # known best full-budget value (regret), None where unknown
    objective: str = "loss"


class _Curve:
    """A trainer of a deterministic value per budget: units are counted, the value recomputed."""

    def __init__(self, f):
        self.f, self.done = f, 0

    def to(self, b: int) -> float:
        self.done = max(self.done, b)
        return self.f(b)


def mf_hartmann6() -> Problem:
    import torch
    from botorch.test_functions.multi_fidelity import AugmentedHartmann

    import bbo_client as bc

    fn = AugmentedHartmann()

    def trainer(params, seed):
        x = [params[f"x{i}"] for i in range(6)]

        def value(b):
            s = math.log(b) / math.log(MAX)
            return float(fn(torch.tensor([x + [s]], dtype=torch.float64)))

        return _Curve(value)

    return Problem("mf_hartmann6", [bc.Float(f"x{i}", 0.0, 1.0) for i in range(6)], trainer, H6_OPT)


def hpo_sgd_mlp() -> Problem:
    from bbo.kits.cli import spec_to_client_kwargs
    from bbo.kits.hpo import KIT

    opts = {"model": "sgd_mlp", "dataset": "digits", "max_epochs": MAX}
    params = list(spec_to_client_kwargs(KIT.spec(**opts))["parameters"])

    class Trainer:
        def __init__(self, p, seed):
            self.tr = KIT.trainer({**opts, **p}, seed=0)  # one function for every method's seed

        def to(self, b):
            return self.tr.train_to(b)

    return Problem("hpo_sgd_mlp", params, Trainer, None, objective="val_error")


PROBLEMS = {"mf_hartmann6": mf_hartmann6, "hpo_sgd_mlp": hpo_sgd_mlp}


# ---- a run's trace --------------------------------------------------------------------------------
class Trace:
    """Budget spent and the best full-budget value, after every unit; stops at ``total``."""

    def __init__(self, total: int):
        self.total, self.spent, self.best = total, 0, math.inf
        self.points: list[tuple[int, float]] = []  # (spent, best) where best changed
        self.full = self.pruned = self.trials = 0

    @property
    def out(self) -> bool:
        return self.spent >= self.total

    def spend(self, units: int) -> None:
        self.spent += units

    def finished(self, value: float) -> None:
        self.full += 1
        if value < self.best:
            self.best = value
            self.points.append((self.spent, value))

    def best_at(self, budget: float) -> float:
        b = math.inf
        for s, v in self.points:
            if s <= budget:
                b = v
        return b


def train(problem: Problem, tr, start: int, stop: int, trace: Trace, report) -> tuple[int, float]:
    """Units ``start+1 .. stop`` of a trainer, reporting each; ``(last unit, value)``, or where
    ``report`` said stop (returns True) or the total budget ran out."""
    value, b = math.nan, start
    for b in range(start + 1, stop + 1):
        if trace.out:
            return b - 1, value
        value = tr.to(b)
        trace.spend(1)
        if report(b, value):
            return b, value
    return b, value


# ---- bbo, through a real server ------------------------------------------------------------------
class _Reporter:
    """Reports one trial's values to its study; keeps the last answer."""

    def __init__(self, study, trial):
        self.study, self.trial, self.advice = study, trial, None

    def __call__(self, b: int, v: float) -> bool:
        self.advice = self.study.report(self.trial, b, v)
        return self.advice.should_stop


def run_bbo(problem: Problem, seed: int, total: int, address: str, mode: str) -> Trace:
    """``mode``: "plain" (no fidelity), "median" (no fidelity, the median rule's stopping),
    "asha" / "hyperband" (stopping), "asha-promote"."""
    import bbo_client as bc

    trace = Trace(total)
    name = f"{problem.name}-{mode}-{seed}-{os.getpid()}-{time.time_ns()}"
    kw = {}
    if mode not in ("plain", "median"):
        policy, _, promote = mode.partition("-")
        kw = dict(
            fidelity=bc.Fidelity("epochs", 1, MAX, integer=True),
            pruning=bc.Pruning(policy, ETA, promote=bool(promote)),
        )
    with bc.Client(address, ask_timeout=900) as client:
        study = client.create_study(name, problem.params, problem.objective, seed=seed, **kw)
        trainers: dict[int, object] = {}
        while not trace.out:
            (t,) = study.ask()
            target = int(t.budget or MAX)
            if t.id not in trainers:
                trainers[t.id] = problem.trainer(t.params, seed)
                trace.trials += 1
            tr = trainers[t.id]
            start = int(t.resume_budget or 0)
            if mode == "plain":
                b, value = train(problem, tr, start, target, trace, lambda b, v: False)
            else:
                reporter = _Reporter(study, t)
                b, value = train(problem, tr, start, target, trace, reporter)
                stop = reporter.advice
                if stop is not None and stop.should_stop:
                    study.tell(t, {problem.objective: value}, pruned=True, reason=stop.reason)
                    trace.pruned += 1
                    continue
            if b < target:  # out of budget mid-trial
                break
            study.tell(t, {problem.objective: value})
            if b >= MAX:
                trace.finished(value)
        study.delete()
    return trace


# ---- Optuna ----------------------------------------------------------------------------------------
def run_optuna(problem: Problem, seed: int, total: int, method: str) -> Trace:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if method == "optuna_tpe_hyperband":
        sampler = optuna.samplers.TPESampler(seed=seed)
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=MAX, reduction_factor=ETA
        )
    elif method.endswith("_median"):  # bbo's median rule's settings: 3 completed, from step 1
        gp = method == "optuna_gp_median"
        sampler = (
            optuna.samplers.GPSampler(seed=seed) if gp else optuna.samplers.TPESampler(seed=seed)
        )
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    else:  # random + ASHA
        sampler = optuna.samplers.RandomSampler(seed=seed)
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=ETA)
    study = optuna.create_study(sampler=sampler, pruner=pruner)
    trace = Trace(total)

    def objective(trial):
        params = {}
        for p in problem.params:
            params[p.name] = _suggest(trial, p)
        tr = problem.trainer(params, seed)
        trace.trials += 1

        def report(b, v):
            trial.report(v, b)
            return trial.should_prune()

        b, value = train(problem, tr, 0, MAX, trace, report)
        if b >= MAX:
            trace.finished(value)
            return value
        if trace.out:
            study.stop()
        trace.pruned += 1
        raise optuna.TrialPruned()

    while not trace.out:
        study.optimize(objective, n_trials=1)
    return trace


def _suggest(trial, p):
    import bbo_client as bc

    if isinstance(p, bc.Float):
        return trial.suggest_float(p.name, p.low, p.high, log=p.log)
    if isinstance(p, bc.Int):
        return trial.suggest_int(p.name, p.low, p.high, log=p.log)
    if isinstance(p, bc.Ordinal):
        return trial.suggest_categorical(p.name, [int(v) for v in p.values])
    if isinstance(p, bc.Categorical):
        return trial.suggest_categorical(p.name, list(p.choices))
    if isinstance(p, bc.Fixed):
        return p.value
    raise TypeError(p)


# ---- the comparison --------------------------------------------------------------------------------
METHODS = ["bbo_mf", "bbo", "optuna_tpe_hyperband", "random_asha"]
LABELS = {
    "bbo_mf": "bbo multi-fidelity",
    "bbo": "bbo, no pruning",
    "optuna_tpe_hyperband": "Optuna TPE + Hyperband",
    "random_asha": "random + ASHA",
    "bbo_mf:median": "bbo, median rule",
    "optuna_gp_median": "Optuna GP + MedianPruner",
    "optuna_tpe_median": "Optuna TPE + MedianPruner",
}


def one_run(problem: Problem, method: str, seed: int, total: int, address: str, mf_mode: str):
    t0 = time.perf_counter()
    if method == "bbo":
        trace = run_bbo(problem, seed, total, address, "plain")
    elif method == "bbo_mf":
        trace = run_bbo(problem, seed, total, address, mf_mode)
    elif method.startswith("bbo_mf:"):
        trace = run_bbo(problem, seed, total, address, method.split(":", 1)[1])
    else:
        trace = run_optuna(problem, seed, total, method)
    return {
        "problem": problem.name,
        "method": method,
        "seed": seed,
        "total": total,
        "spent": trace.spent,
        "points": trace.points,
        "trials": trace.trials,
        "full": trace.full,
        "pruned": trace.pruned,
        "seconds": time.perf_counter() - t0,
    }


def best_at(run: dict, budget: float) -> float:
    """The run's best full-budget value after ``budget`` units (inf: none yet; nan: a run stopped
    before its total budget, past where it stopped)."""
    if run["spent"] < run["total"] and budget > run["spent"]:
        return math.nan
    b = math.inf
    for s, v in run["points"]:
        if s <= budget:
            b = v
    return b


def reach(run: dict, target: float) -> float:
    """Budget spent when the run's best first got to ``target`` or better (inf: never)."""
    for s, v in run["points"]:
        if v <= target + 1e-12 * max(1.0, abs(target)):
            return s
    return math.inf


def summarize(runs: list[dict], problems: list[str], methods: list[str], total: int) -> dict:
    out = {}
    grid = [k * MAX for k in range(1, total // MAX + 1)]
    for p in problems:
        by = {
            m: sorted(
                (r for r in runs if r["problem"] == p and r["method"] == m), key=lambda r: r["seed"]
            )
            for m in methods
        }
        med = {m: [float(np.median([best_at(r, b) for r in by[m]])) for b in grid] for m in methods}
        s = {"grid": grid, "median": med}
        if "bbo" in by and "bbo_mf" in by:
            ratios = []
            for a, b in zip(by["bbo"], by["bbo_mf"], strict=True):
                ratios.append(reach(b, best_at(a, total)) / total)
            s["mf_budget_to_plain_final"] = ratios
            s["mf_budget_to_plain_final_median"] = float(np.median(ratios))
        if "optuna_tpe_hyperband" in med and "bbo_mf" in med:
            first = next((i for i, b in enumerate(grid) if b > FIRST_RUNG), 0)
            s["mf_ahead_of_hyperband"] = [
                med["bbo_mf"][i] <= med["optuna_tpe_hyperband"][i]
                for i in range(first, len(grid))
                if not math.isnan(med["bbo_mf"][i] + med["optuna_tpe_hyperband"][i])
            ]
        s["trials"] = {m: float(np.median([r["trials"] for r in by[m]])) for m in methods}
        s["full"] = {m: float(np.median([r["full"] for r in by[m]])) for m in methods}
        s["seconds"] = {m: float(np.median([r["seconds"] for r in by[m]])) for m in methods}
        out[p] = s
    return out


def _fmt(x: float) -> str:
    """``n/a``: no full-budget value yet; ``-``: past where a stopped run ended."""
    if math.isnan(x):
        return "-"
    return "n/a" if not math.isfinite(x) else f"{x:.4g}"


def table(summary: dict, methods: list[str], optima: dict, meta: str) -> str:
    lines = [meta, ""]
    for p, s in summary.items():
        opt = optima.get(p)
        what = (
            "regret (best full-budget value - optimum)"
            if opt is not None
            else "best full-budget value"
        )
        lines += [f"### {p}: median {what} against budget spent", ""]
        grid = s["grid"]
        show = [
            i
            for i in range(len(grid))
            if i in (0, 1, 2, 4, 9) or i == len(grid) - 1 or (i + 1) % 5 == 0
        ]
        lines.append(
            "| budget (full-trial equivalents) | "
            + " | ".join(LABELS.get(m, m) for m in methods)
            + " |"
        )
        lines.append("|---|" + "---|" * len(methods))
        for i in sorted(set(show)):
            row = []
            for m in methods:
                v = s["median"][m][i]
                row.append(_fmt(v - opt if opt is not None and math.isfinite(v) else v))
            lines.append(f"| {grid[i] // MAX} | " + " | ".join(row) + " |")
        lines.append("")
        if "mf_budget_to_plain_final" in s:
            r = s["mf_budget_to_plain_final"]
            lines.append(
                "bbo multi-fidelity's budget to reach the no-pruning run's final best value, as a "
                f"fraction of that run's budget, per seed: {', '.join(_fmt(x) for x in r)} "
                f"(median {_fmt(s['mf_budget_to_plain_final_median'])}; target <= 0.333)."
            )
        if "mf_ahead_of_hyperband" in s:
            a = s["mf_ahead_of_hyperband"]
            lines.append(
                f"bbo multi-fidelity at or ahead of Optuna TPE + Hyperband (median) at {sum(a)} of "
                f"the {len(a)} budget points after the first rung (past {FIRST_RUNG // MAX} full "
                "budget: the first rung of Hyperband's first bracket)."
            )
        lines.append(
            "Trials started (median): "
            + ", ".join(
                f"{LABELS.get(m, m)} {s['trials'][m]:.0f} ({s['full'][m]:.0f} at the full budget)"
                for m in methods
            )
            + "; wall seconds per run: "
            + ", ".join(f"{LABELS.get(m, m)} {s['seconds'][m]:.0f}" for m in methods)
            + "."
        )
        lines.append("")
    return "\n".join(lines)


def plot(runs, summary, methods, optima, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = list(summary)
    fig, axes = plt.subplots(1, len(probs), figsize=(6.5 * len(probs), 4.6), squeeze=False)
    for ax, p in zip(axes[0], probs, strict=True):
        opt = optima.get(p)
        total = max(r["total"] for r in runs if r["problem"] == p)
        xs = np.arange(1, total + 1)
        for m in methods:
            rs = [r for r in runs if r["problem"] == p and r["method"] == m]
            Y = np.array([[best_at(r, x) for x in xs] for r in rs], dtype=float)
            if opt is not None:
                Y = Y - opt
            Y[~np.isfinite(Y)] = np.nan
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                med = np.nanmedian(Y, axis=0)
                lo, hi = np.nanpercentile(Y, 25, axis=0), np.nanpercentile(Y, 75, axis=0)
            ax.plot(xs / MAX, med, label=LABELS.get(m, m))
            ax.fill_between(xs / MAX, lo, hi, alpha=0.15)
        ax.set_yscale("log")
        ax.set_xlabel("budget spent (full-trial equivalents)")
        ax.set_ylabel(
            "regret of the best full-budget trial" if opt is not None else "best full-budget value"
        )
        ax.set_title(p)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=20, help="total budget in full-budget trials")
    ap.add_argument("--problems", default="mf_hartmann6,hpo_sgd_mlp")
    ap.add_argument("--methods", default=",".join(METHODS), help="also bbo_mf:MODE variants")
    ap.add_argument(
        "--mf-mode",
        default="asha-promote",
        help="bbo_mf's policy: asha-promote (the documented results), hyperband-promote, asha, "
        "hyperband (the last two stop trials instead of pausing and continuing them)",
    )
    ap.add_argument("--out", default="fidelity")
    ap.add_argument("--resume", action="store_true", help="reuse runs already in the JSON")
    ap.add_argument(
        "--summarize-only",
        action="store_true",
        help="rebuild the outputs from the runs in the JSON (an interrupted run): no new runs",
    )
    ap.add_argument("--note", default="", help="with --summarize-only: a line on how it was run")
    args = ap.parse_args(argv)
    if args.summarize_only:
        return summarize_only(args)
    from bbo_server.process import ServerProcess

    problems = [PROBLEMS[p]() for p in args.problems.split(",")]
    methods = args.methods.split(",")
    total = args.trials * MAX
    os.makedirs(RESULTS, exist_ok=True)
    json_path = os.path.join(RESULTS, f"{args.out}.json")
    runs: list[dict] = []
    if args.resume and os.path.exists(json_path):
        runs = json.load(open(json_path))["runs"]
    done = {(r["problem"], r["method"], r["seed"]) for r in runs}
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    tmp = tempfile.mkdtemp(prefix="bbo-fidelity-")
    srv = ServerProcess(
        "sqlite:///" + os.path.join(tmp, "bench.db"),
        args=["--workers", "1"],
        log_path=os.path.join(tmp, "server.log"),
    )
    srv.start()
    try:
        for seed in range(args.seeds):
            for prob in problems:
                for m in methods:
                    if (prob.name, m, seed) in done:
                        continue
                    r = one_run(prob, m, seed, total, srv.address, args.mf_mode)
                    runs.append(r)
                    b = r["points"][-1][1] if r["points"] else math.inf
                    print(
                        f"{prob.name} {m} seed {seed}: best {_fmt(b)} after {r['spent']} units, "
                        f"{r['trials']} trials ({r['full']} full, {r['pruned']} pruned), {r['seconds']:.0f} s",
                        flush=True,
                    )
                    json.dump({"runs": runs, "mf_mode": args.mf_mode}, open(json_path, "w"))
    finally:
        srv.stop()
    optima = {p.name: p.optimum for p in problems if p.optimum is not None}
    meta = (
        f"`bench/bench_fidelity.py --seeds {args.seeds} --trials {args.trials} --mf-mode {args.mf_mode}"
        f" --problems {args.problems} --methods {args.methods}`: "
        f"{args.seeds} seeds, a total budget of {args.trials} full-budget trials ({total} units, "
        f"full budget {MAX}, eta {ETA}) per run; run {started} to {time.strftime('%H:%M:%S')} "
        "on the shared 2-core VM (one sequential worker per run)."
    )
    md = write_outputs(
        runs, [p.name for p in problems], methods, total, optima, meta, args.mf_mode, args.out
    )
    print(md)
    return 0


def write_outputs(runs, problems, methods, total, optima, meta, mf_mode, out) -> str:
    """``out``.json / .md / .png under bench/results from ``runs``; returns the markdown."""
    summary = summarize(runs, problems, methods, total)
    md = table(summary, methods, optima, meta)
    json.dump(
        {"runs": runs, "summary": summary, "mf_mode": mf_mode, "meta": meta},
        open(os.path.join(RESULTS, f"{out}.json"), "w"),
        indent=1,
    )
    open(os.path.join(RESULTS, f"{out}.md"), "w").write(md + "\n")
    plot(runs, summary, methods, optima, os.path.join(RESULTS, f"{out}.png"))
    return md


def summarize_only(args) -> int:
    """Outputs from the runs stored in ``--out``.json, per problem the seeds every method
    finished (a run stopped part-way through its seeds)."""
    data = json.load(open(os.path.join(RESULTS, f"{args.out}.json")))
    methods = args.methods.split(",")
    names = [p for p in args.problems.split(",") if any(r["problem"] == p for r in data["runs"])]
    runs, seeds = [], {}
    for p in names:
        have = [
            {r["seed"] for r in data["runs"] if r["problem"] == p and r["method"] == m}
            for m in methods
        ]
        seeds[p] = sorted(set.intersection(*have))
        runs += [
            r
            for r in data["runs"]
            if r["problem"] == p and r["seed"] in seeds[p] and r["method"] in methods
        ]
    total = args.trials * MAX
    optima = {"mf_hartmann6": H6_OPT}
    mf_mode = data.get("mf_mode", args.mf_mode)
    meta = (
        f"`bench/bench_fidelity.py --trials {args.trials} --mf-mode {mf_mode}`, stopped part-way "
        "and summarized with `--summarize-only`: seeds "
        + "; ".join(f"{p} {', '.join(map(str, s))}" for p, s in seeds.items())
        + f"; a total budget of {args.trials} full-budget trials ({total} units, full budget "
        f"{MAX}, eta {ETA}) per run, on the shared 2-core VM (one sequential worker per run)."
        + (f" {args.note}" if args.note else "")
    )
    print(write_outputs(runs, names, methods, total, optima, meta, mf_mode, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
