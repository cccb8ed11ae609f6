"""The benchmark suite: bbo, Ax, Optuna (TPE, GP) and random search on the same problems, seeds and
budgets, in one run.

Problems: the synthetic ones of ``bench/problems.py`` plus the application kits of ``bbo.kits``
(hyperparameter tuning on one or two model / data set pairs, ADMM on Lasso, the cloud scheduler's
single-objective variant). Every (problem, method, seed) run is one process-pool task; a run's
black box is deterministic (kits are evaluated with ``seed`` = the run's seed, so every method of
one seed tunes exactly the same function, and seeds differ in CV split / instance / workload too).

Outputs (``--out``, default ``bench/results``):

- ``suite.json``   every run's curve (best feasible objective after each evaluation), times, and the
                   aggregate table;
- ``suite.md``     final best value and regret per problem and method, and the mean rank per method;
- ``suite_regret.png``  regret curves (mean over seeds, log scale), one panel per problem;
- ``suite_runs.jsonl``  finished runs, one per line (``--resume`` skips them).

Regret: ``|best feasible value - reference|`` with the reference the problem's known optimum where
there is one, else the best feasible value any method found for that problem and seed (so regret
0 means "best of the suite"). A run with no feasible point yet is charged the worst feasible value
seen for that problem and seed. Ranks: per problem and seed the methods are ranked by final regret
(ties share the mean rank); the mean rank averages over seeds and then problems.

Usage::

    OMP_NUM_THREADS=1 python bench/run_all.py --quick            # < 2 min smoke run
    OMP_NUM_THREADS=1 python bench/run_all.py --seeds 3 --budget 30 --jobs 2
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

import numpy as np  # noqa: E402
import problems  # noqa: E402

from bbo.spec import MAXIMIZE, StudySpec  # noqa: E402

ALL_METHODS = ["bbo", "ax", "optuna_gp", "optuna_tpe", "random"]
QUICK_METHODS = ["bbo", "optuna_tpe", "random"]


# ---- problems ------------------------------------------------------------------------------------


@dataclass
class Problem:
    """A black box for the suite: spec, ``evaluate(params, seed) -> metrics``, optional optimum."""

    name: str
    spec: StudySpec
    evaluate: Callable[[dict, int], dict]
    known_best: float | None = None
    group: str = "synthetic"

    @property
    def objective(self):
        return self.spec.objectives[0]


def kit_problems(quick: bool = False) -> list[Problem]:
    from bbo.kits import KITS

    variants = [
        ("hpo-svm-digits", "hpo", {"model": "svm", "dataset": "digits"}),
        ("hpo-hgb-breast_cancer", "hpo", {"model": "hgb", "dataset": "breast_cancer"}),
        ("admm-lasso", "admm", {"problem": "lasso"}),
        ("cloud-single", "cloud", {"variant": "single"}),
    ]
    if quick:
        variants = [
            ("hpo-knn-wine", "hpo", {"model": "knn", "dataset": "wine"}),
            variants[2],
            variants[3],
        ]
    out = []
    for name, kit_name, opts in variants:
        kit = KITS[kit_name]
        out.append(
            Problem(name, kit.spec(**opts), _KitEval(kit_name), kit.known_best(**opts), group="kit")
        )
    return out


class _KitEval:
    """Picklable ``(params, seed) -> metrics`` for a kit."""

    def __init__(self, kit_name: str):
        self.kit_name = kit_name

    def __call__(self, params: dict, seed: int) -> dict:
        from bbo.kits import KITS

        return KITS[self.kit_name].evaluate(params, seed=seed)


def synthetic_problems(quick: bool = False) -> list[Problem]:
    """The problems of H1's ``bench/problems.py`` (``ALL``: known optima), else a built-in pair."""
    try:
        import problems as h1  # bench/problems.py
    except ImportError:
        h1 = None
    if h1 is None or not hasattr(h1, "ALL"):
        return _builtin_synthetic(quick)
    names = list(h1.ALL)
    if quick:
        names = [n for n in ("branin", "mixed") if n in h1.ALL] or names[:2]
    out = []
    for name in names:
        pr = h1.ALL[name]()
        out.append(Problem(pr.name, pr.spec(), _H1Eval(name), float(pr.optimum), group="synthetic"))
    return out


class _H1Eval:
    """Picklable ``(params, seed) -> metrics`` for a problem of ``bench/problems.py`` (seed unused:
    the synthetic functions are deterministic)."""

    _cache: dict = {}

    def __init__(self, name: str):
        self.name = name

    def __call__(self, params: dict, seed: int) -> dict:
        pr = self._cache.get(self.name)
        if pr is None:
            import problems as h1

            pr = self._cache[self.name] = h1.ALL[self.name]()
        return pr.evaluate(params)


def _builtin_synthetic(quick: bool) -> list[Problem]:
    from bbo.space import FloatParam, SearchSpace
    from bbo.spec import Objective

    br = Problem(
        "branin",
        StudySpec(
            SearchSpace((FloatParam("x1", -5.0, 10.0), FloatParam("x2", 0.0, 15.0))),
            (Objective("f"),),
            description="Branin function",
        ),
        _branin,
        0.39788735772973816,
        "synthetic",
    )
    h6 = Problem(
        "hartmann6",
        StudySpec(
            SearchSpace(tuple(FloatParam(f"x{i}", 0.0, 1.0) for i in range(6))),
            (Objective("f"),),
            description="Hartmann 6-D function",
        ),
        _hartmann6,
        -3.3223680114155147,
        "synthetic",
    )
    return [br] if quick else [br, h6]


def _branin(p: dict, seed: int = 0) -> dict:
    return problems.branin().evaluate(p)


def _hartmann6(p: dict, seed: int = 0) -> dict:
    return problems.hartmann6().evaluate(p)


# ---- methods ----------------------------------------------------------------------------------------
# Same tools and defaults as bench/peers.py (bench_core.py), generalised to what the kits need:
# several outcome constraints, any objective name and goal, fixed parameters, seeded black boxes,
# failed evaluations. bench/peers.py handles one constraint on "f" only.


def _constraint_violations(spec: StudySpec, m: dict) -> list[float]:
    """One number per outcome constraint, <= 0 when it holds (Optuna's convention)."""
    return [
        (m[c.metric] - c.bound) if c.op == "<=" else (c.bound - m[c.metric])
        for c in spec.outcome_constraints
    ]


def _safe_eval(problem: Problem, params: dict, seed: int) -> dict | None:
    try:
        m = problem.evaluate(dict(params), seed)
    except Exception:  # noqa: BLE001 - a failed evaluation is a used evaluation without a result
        traceback.print_exc()
        return None
    if not all(
        isinstance(v, (int, float)) and math.isfinite(v)
        for k, v in m.items()
        if k in problem.spec.modeled_metrics
    ):
        return None
    return {k: float(v) for k, v in m.items()}


def run_random(problem: Problem, budget: int, seed: int) -> list[tuple[dict, dict | None]]:
    space = problem.spec.space
    rng = np.random.default_rng([seed, 99])
    box = space.bounds()
    cat = set(space.cat_dims)
    disc = space.discrete_values()
    hist = []
    for _ in range(budget):
        for _try in range(1000):
            x = np.array(
                [
                    rng.integers(0, int(box[1, i]) + 1)
                    if i in cat
                    else (
                        rng.choice(disc[i])
                        if i in disc and len(disc[i]) < 64
                        else rng.uniform(0, 1)
                    )
                    for i in range(space.dim)
                ],
                dtype=float,
            )
            p = space.decode(x)
            if space.is_feasible(p):
                break
        hist.append((p, _safe_eval(problem, p, seed)))
    return hist


def run_bbo(problem: Problem, budget: int, seed: int) -> list[tuple[dict, dict | None]]:
    from bbo.strategy import GenerationStrategy
    from bbo.trial import Metric, Trial, TrialState

    spec = dataclasses.replace(
        problem.spec, algorithm=dataclasses.replace(problem.spec.algorithm, seed=seed, device="cpu")
    )
    gs = GenerationStrategy(spec)
    trials: list[Trial] = []
    hist = []
    for i in range(budget):
        (s,) = gs.suggest(trials, 1)
        m = _safe_eval(problem, s.params, seed)
        t = Trial(id=i + 1, params=dict(s.params), origin=s.origin)
        if m is None:
            t.state = TrialState.FAILED
        else:
            t.state = TrialState.COMPLETED
            t.metrics = {k: Metric(v) for k, v in m.items()}
        trials.append(t)
        hist.append((dict(s.params), m))
    return hist


def _optuna_distributions(space):
    import optuna.distributions as od

    from bbo.space import CategoricalParam, FixedParam, FloatParam, IntParam, OrdinalParam

    dists, fixed = {}, {}
    for p in space.params:
        if isinstance(p, FloatParam):
            dists[p.name] = od.FloatDistribution(float(p.low), float(p.high), log=p.log)
        elif isinstance(p, IntParam):
            dists[p.name] = od.IntDistribution(int(p.low), int(p.high), log=p.log)
        elif isinstance(p, CategoricalParam):
            dists[p.name] = od.CategoricalDistribution(list(p.choices))
        elif isinstance(p, OrdinalParam):
            dists[p.name] = od.IntDistribution(0, len(p.values) - 1)  # ordered index
        elif isinstance(p, FixedParam):
            fixed[p.name] = p.value
    return dists, fixed


def run_optuna(
    problem: Problem, budget: int, seed: int, kind: str
) -> list[tuple[dict, dict | None]]:
    import optuna

    from bbo.space import OrdinalParam

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = problem.spec
    # Optuna 5: constraints are set on the trial (trial.set_constraint); both samplers read them.
    if kind == "gp":
        sampler = optuna.samplers.GPSampler(seed=seed)  # defaults, as in bench/peers.py
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    direction = "maximize" if problem.objective.goal == MAXIMIZE else "minimize"
    study = optuna.create_study(direction=direction, sampler=sampler)
    dists, fixed = _optuna_distributions(spec.space)
    ordinals = {p.name: p.values for p in spec.space.params if isinstance(p, OrdinalParam)}
    hist = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(budget):
            tr = study.ask(dists)
            p = {n: (ordinals[n][tr.params[n]] if n in ordinals else tr.params[n]) for n in dists}
            p.update(fixed)
            p = {q.name: p[q.name] for q in spec.space.params}
            if not spec.space.is_feasible(
                p
            ):  # linear parameter constraint violated: Optuna cannot avoid it
                study.tell(tr, state=optuna.trial.TrialState.FAIL)
                hist.append((p, None))
                continue
            m = _safe_eval(problem, p, seed)
            if m is None:
                study.tell(tr, state=optuna.trial.TrialState.FAIL)
            else:
                for k, c in enumerate(_constraint_violations(spec, m)):
                    tr.set_constraint(f"c{k}", c)
                study.tell(tr, m[problem.objective.name])
            hist.append((p, m))
    return hist


def run_ax(problem: Problem, budget: int, seed: int) -> list[tuple[dict, dict | None]]:
    import logging

    from ax.api.client import Client
    from ax.api.configs import ChoiceParameterConfig, RangeParameterConfig

    from bbo.space import CategoricalParam, FixedParam, FloatParam, IntParam, OrdinalParam

    spec = problem.spec
    params, fixed = [], {}
    for p in spec.space.params:
        if isinstance(p, FloatParam):
            params.append(
                RangeParameterConfig(
                    p.name,
                    (float(p.low), float(p.high)),
                    "float",
                    scaling="log" if p.log else "linear",
                )
            )
        elif isinstance(p, IntParam):
            params.append(
                RangeParameterConfig(
                    p.name, (int(p.low), int(p.high)), "int", scaling="log" if p.log else "linear"
                )
            )
        elif isinstance(p, CategoricalParam):
            params.append(ChoiceParameterConfig(p.name, list(p.choices), "str", is_ordered=False))
        elif isinstance(p, OrdinalParam):
            params.append(
                ChoiceParameterConfig(
                    p.name, [float(v) for v in p.values], "float", is_ordered=True
                )
            )
        elif isinstance(p, FixedParam):
            fixed[p.name] = p.value
    lin = [
        " + ".join(f"{float(c)}*{n}" for n, c in lc.coefficients.items()) + f" <= {float(lc.bound)}"
        for lc in spec.space.constraints
    ]
    client = Client(random_seed=seed)
    for name in list(logging.root.manager.loggerDict):  # Ax sets its loggers to INFO on import
        if name == "ax" or name.startswith("ax."):
            logging.getLogger(name).setLevel(logging.WARNING)
    client.configure_experiment(parameters=params, parameter_constraints=lin or None)
    obj = problem.objective
    client.configure_optimization(
        objective=("" if obj.goal == MAXIMIZE else "-") + obj.name,
        outcome_constraints=[
            f"{c.metric} {c.op} {float(c.bound)}" for c in spec.outcome_constraints
        ]
        or None,
    )
    hist = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(budget):
            ((idx, raw),) = client.get_next_trials(max_trials=1).items()
            p = dict(raw)
            p.update(fixed)
            p = {
                q.name: (int(p[q.name]) if isinstance(q, IntParam) else p[q.name])
                for q in spec.space.params
            }
            m = _safe_eval(problem, p, seed)
            if m is None:
                client.mark_trial_failed(idx)
            else:
                client.complete_trial(idx, raw_data={k: m[k] for k in spec.modeled_metrics})
            hist.append((p, m))
    return hist


FALLBACK = {
    "bbo": run_bbo,
    "random": run_random,
    "optuna_tpe": lambda pr, b, s: run_optuna(pr, b, s, "tpe"),
    "optuna_gp": lambda pr, b, s: run_optuna(pr, b, s, "gp"),
    "ax": run_ax,
}


def run_method(
    method: str, problem: Problem, budget: int, seed: int
) -> list[tuple[dict, dict | None]]:
    return FALLBACK[method](problem, budget, seed)


# ---- one run, many runs ----------------------------------------------------------------------------


def _curve(problem: Problem, hist) -> tuple[list[float | None], list[float | None]]:
    """Best feasible objective after each evaluation (None before the first), and each raw value."""
    sign = 1.0 if problem.objective.goal == MAXIMIZE else -1.0
    best, curve, raw = None, [], []
    for _, m in hist:
        v = None
        if m is not None and problem.spec.is_feasible(m):
            v = m[problem.objective.name]
            if best is None or sign * v > sign * best:
                best = v
        raw.append(None if m is None else m.get(problem.objective.name))
        curve.append(best)
    return curve, raw


def _task(args) -> dict:
    method, problem, budget, seed = args
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    err = ""
    try:
        hist = run_method(method, problem, budget, seed)
    except Exception as e:  # noqa: BLE001 - a crashing method is reported, not fatal to the suite
        traceback.print_exc()
        hist, err = [], f"{type(e).__name__}: {e}"
    curve, raw = _curve(problem, hist)
    feasible = [m is not None and problem.spec.is_feasible(m) for _, m in hist]
    return {
        "problem": problem.name,
        "method": method,
        "seed": seed,
        "budget": budget,
        "curve": curve,
        "values": raw,
        "feasible": feasible,
        "failed": sum(m is None for _, m in hist),
        "seconds": time.perf_counter() - t0,
        "error": err,
    }


def run_suite(
    problems: Sequence[Problem],
    methods: Sequence[str],
    seeds: Sequence[int],
    budget: int,
    jobs: int,
    runs_path: str,
    resume: bool,
    log: Callable[[str], None] = print,
    redo: Sequence[str] = (),
) -> list[dict]:
    done: dict[tuple, dict] = {}
    if resume and os.path.exists(runs_path):
        with open(runs_path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("budget") == budget and not r.get("error") and r["method"] not in redo:
                    done[(r["problem"], r["method"], r["seed"])] = r  # later lines win
    cost = {"ax": 0, "bbo": 1, "optuna_gp": 2, "optuna_tpe": 3, "random": 4}
    tasks = [
        (m, p, budget, s)
        for s in seeds
        for p in problems
        for m in methods
        if (p.name, m, s) not in done
    ]
    tasks.sort(key=lambda t: (cost.get(t[0], 5), t[3]))  # slow methods first: better packing
    log(f"suite: {len(tasks)} runs to do ({len(done)} reused), {jobs} parallel")
    out = list(done.values())
    mode = "a" if resume else "w"
    with open(runs_path, mode) as f:
        if jobs <= 1:
            it = map(_task, tasks)
            pool = None
        else:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(jobs, maxtasksperchild=8)
            it = pool.imap_unordered(_task, tasks)
        t0 = time.time()
        try:
            for k, r in enumerate(it, 1):
                out.append(r)
                f.write(json.dumps(r) + "\n")
                f.flush()
                last = r["curve"][-1] if r["curve"] else None
                log(
                    f"[{k}/{len(tasks)} {time.time() - t0:6.0f}s] {r['problem']:24s} {r['method']:11s} seed {r['seed']}: "
                    f"best {last if last is None else f'{last:.6g}'} in {r['seconds']:.1f}s{' ERROR ' + r['error'] if r['error'] else ''}"
                )
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    return out


# ---- aggregation -----------------------------------------------------------------------------------


def aggregate(
    problems: Sequence[Problem], methods: Sequence[str], seeds: Sequence[int], runs: Sequence[dict]
) -> dict:
    by = {(r["problem"], r["method"], r["seed"]): r for r in runs}
    table: dict[str, Any] = {"problems": {}, "mean_rank": {}, "never_worse_than_random": {}}
    rank_sum = {m: [] for m in methods}
    for pr in problems:
        sign = 1.0 if pr.objective.goal == MAXIMIZE else -1.0
        entry: dict[str, Any] = {
            "goal": pr.objective.goal,
            "known_best": pr.known_best,
            "group": pr.group,
            "methods": {},
            "reference": {},
        }
        regret_curves: dict[str, list] = {m: [] for m in methods}
        ranks_by_method = {m: [] for m in methods}
        for s in seeds:
            rs = {m: by.get((pr.name, m, s)) for m in methods}
            vals = [v for r in rs.values() if r for v in r["curve"] if v is not None]
            if pr.known_best is not None:
                ref = pr.known_best
            elif vals:
                ref = max(vals, key=lambda v: sign * v)
            else:
                ref = None
            worst = min(vals, key=lambda v: sign * v) if vals else None
            entry["reference"][str(s)] = ref
            finals = {}
            for m, r in rs.items():
                if r is None or not r["curve"] or ref is None:
                    continue
                tol = 1e-9 * max(
                    1.0, abs(ref)
                )  # the same point can score 1e-17 apart: a tie, not a win
                reg = [abs(ref - (v if v is not None else worst)) for v in r["curve"]]
                reg = [0.0 if g <= tol else g for g in reg]
                regret_curves[m].append(reg)
                finals[m] = reg[-1]
            if finals:
                order = sorted(finals.values())
                for m, v in finals.items():
                    lo = order.index(v)
                    hi = len(order) - 1 - order[::-1].index(v)
                    ranks_by_method[m].append(1 + (lo + hi) / 2)
        for m in methods:
            rc = regret_curves[m]
            runs_m = [by[(pr.name, m, s)] for s in seeds if (pr.name, m, s) in by]
            finals_v = [r["curve"][-1] for r in runs_m if r["curve"]]
            entry["methods"][m] = {
                "final_best_mean": _mean([v for v in finals_v if v is not None]),
                "final_best_per_seed": finals_v,
                "final_regret_mean": _mean([c[-1] for c in rc]),
                "final_regret_sem": _sem([c[-1] for c in rc]),
                "regret_curve_mean": np.mean(np.array(rc), axis=0).tolist()
                if rc and len({len(c) for c in rc}) == 1
                else None,
                "mean_rank": _mean(ranks_by_method[m]),
                "feasible_runs": sum(1 for v in finals_v if v is not None),
                "runs": len(runs_m),
                "seconds_mean": _mean([r["seconds"] for r in runs_m]),
                "errors": [r["error"] for r in runs_m if r.get("error")],
            }
            if entry["methods"][m]["mean_rank"] is not None:
                rank_sum[m].append(entry["methods"][m]["mean_rank"])
        if "random" in methods:
            rnd = entry["methods"]["random"]["final_regret_mean"]
            for m in methods:
                mine = entry["methods"][m]["final_regret_mean"]
                if m != "random" and mine is not None and rnd is not None:
                    table["never_worse_than_random"].setdefault(m, {})[pr.name] = bool(
                        mine <= rnd + 1e-12
                    )
        table["problems"][pr.name] = entry
    table["mean_rank"] = {m: _mean(v) for m, v in rank_sum.items()}
    return table


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _sem(xs):
    xs = [x for x in xs if x is not None]
    return float(np.std(xs, ddof=1) / math.sqrt(len(xs))) if len(xs) > 1 else None


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "—"
    if v == 0:
        return "0"
    return f"{v:.{digits}g}"


def markdown(table: dict, methods: Sequence[str], meta: dict) -> str:
    lines = [
        f"# Benchmark suite ({meta['mode']})",
        "",
        f"{len(meta['seeds'])} seed(s) {meta['seeds']}, budget {meta['budget']} evaluations per run, methods {', '.join(methods)}; "
        f"generated {meta['finished']}; the runs took {meta['run_seconds'] / 60:.0f} min of (shared, busy) CPU time in all, {meta['jobs']} in parallel on "
        f"{meta['cpus']} CPU(s); bbo engine {meta.get('bbo_engine', '?')}.",
        "",
        "Regret = |best feasible value - reference|; reference = known optimum, else the best value any method found for that "
        "problem and seed. Ranks by final regret per problem and seed (1 = best), averaged.",
        "",
        "## Mean rank over the suite (lower is better)",
        "",
        "| method | mean rank | problems where regret <= random's |",
        "|---|---|---|",
    ]
    nwr = table["never_worse_than_random"]
    for m in sorted(methods, key=lambda m: table["mean_rank"].get(m) or 99):
        ok = nwr.get(m)
        cell = f"{sum(ok.values())}/{len(ok)}" if ok else "—"
        lines.append(f"| {m} | {_fmt(table['mean_rank'].get(m), 3)} | {cell} |")
    lines += [
        "",
        "## Final best value (mean over seeds) / final regret (mean ± sem) / mean rank",
        "",
    ]
    lines.append("| problem | goal | " + " | ".join(methods) + " |")
    lines.append("|---|---|" + "---|" * len(methods))
    for name, e in table["problems"].items():
        cells = []
        best_rank = min(
            (
                e["methods"][m]["mean_rank"]
                for m in methods
                if e["methods"][m]["mean_rank"] is not None
            ),
            default=None,
        )
        for m in methods:
            d = e["methods"][m]
            c = f"{_fmt(d['final_best_mean'])} / {_fmt(d['final_regret_mean'], 3)}"
            if d["final_regret_sem"] is not None:
                c += f" ± {_fmt(d['final_regret_sem'], 2)}"
            c += f" / {_fmt(d['mean_rank'], 2)}"
            if d["feasible_runs"] < d["runs"]:
                c += f" ({d['runs'] - d['feasible_runs']} run(s) infeasible)"
            if d["errors"]:
                c += " ERROR"
            if best_rank is not None and d["mean_rank"] == best_rank:
                c = f"**{c}**"
            cells.append(c)
        goal = "min" if e["goal"] != MAXIMIZE else "max"
        ref = f", f*={_fmt(e['known_best'])}" if e["known_best"] is not None else ""
        lines.append(f"| {name} | {goal}{ref} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Mean seconds per run",
        "",
        "| problem | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for name, e in table["problems"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(_fmt(e["methods"][m]["seconds_mean"], 3) for m in methods)
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(table: dict, methods: Sequence[str], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = list(table["problems"])
    if not names:
        return None
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        e = table["problems"][name]
        curves = {
            m: np.array(e["methods"][m]["regret_curve_mean"])
            for m in methods
            if e["methods"][m]["regret_curve_mean"]
        }
        top = max((float(c.max()) for c in curves.values()), default=1.0)
        floor = max(top, 1e-12) * 1e-4  # regret 0 (the suite's best) is drawn at this floor
        for m, c in curves.items():
            ax.plot(
                np.arange(1, len(c) + 1),
                np.maximum(c, floor),
                label=m,
                lw=1.8 if m == "bbo" else 1.0,
            )
        ax.set_yscale("log")
        ax.set_ylim(floor * 0.7, top * 1.5 if top > 0 else 1.0)
        ref = "f*" if e["known_best"] is not None else "best found"
        ax.set_title(f"{name} (regret vs {ref})", fontsize=9)
        ax.set_xlabel("evaluations", fontsize=8)
        ax.set_ylabel("regret (mean over seeds)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- main ------------------------------------------------------------------------------------------


def _engine_fingerprint() -> str:
    """A short hash of bbo's strategy / surrogate / acquisition sources (which engine produced bbo's runs)."""
    import hashlib

    h = hashlib.sha256()
    strategy = sorted(glob.glob(os.path.join(ROOT, "bbo", "strategy", "*.py")))
    for path in strategy + [
        os.path.join(ROOT, "bbo", n) for n in ("surrogate.py", "acquisition.py")
    ]:
        try:
            with open(path, "rb") as f:
                h.update(f.read())
        except OSError:
            pass
    return h.hexdigest()[:12]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="1 seed, budget 8, bbo + TPE + random, a few problems (< 2 min)",
    )
    ap.add_argument(
        "--seeds", type=int, default=3, help="number of seeds (0..N-1; default %(default)s)"
    )
    ap.add_argument(
        "--budget", type=int, default=None, help="evaluations per run (default 30; --quick: 8)"
    )
    ap.add_argument(
        "--methods",
        default="",
        help="comma-separated, of "
        + ",".join(ALL_METHODS)
        + " (default all; --quick: "
        + ",".join(QUICK_METHODS)
        + ")",
    )
    ap.add_argument(
        "--problems", default="", help="comma-separated problem names to keep (default all)"
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="parallel runs (default %(default)s)",
    )
    ap.add_argument(
        "--out", default=os.path.join(HERE, "results"), help="output folder (default bench/results)"
    )
    ap.add_argument(
        "--resume", action="store_true", help="reuse finished runs from suite_runs.jsonl"
    )
    ap.add_argument(
        "--redo",
        default="",
        help="with --resume: comma-separated methods to run again anyway (e.g. bbo after an engine change)",
    )
    args = ap.parse_args(argv)

    seeds = [0] if args.quick else list(range(args.seeds))
    budget = args.budget or (8 if args.quick else 30)
    methods = [m for m in args.methods.split(",") if m] or (
        QUICK_METHODS if args.quick else ALL_METHODS
    )
    unknown = set(methods) - set(FALLBACK)
    if unknown:
        ap.error(f"unknown method(s) {sorted(unknown)}")
    problems = synthetic_problems(args.quick) + kit_problems(args.quick)
    if args.problems:
        keep = set(args.problems.split(","))
        problems = [p for p in problems if p.name in keep]
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    print(
        f"suite: {len(problems)} problems ({', '.join(p.name for p in problems)}), methods {methods}, seeds {seeds}, budget {budget}",
        flush=True,
    )
    runs = run_suite(
        problems,
        methods,
        seeds,
        budget,
        args.jobs,
        os.path.join(args.out, "suite_runs.jsonl"),
        args.resume,
        log=lambda s: print(s, flush=True),
        redo=[m for m in args.redo.split(",") if m],
    )
    table = aggregate(problems, methods, seeds, runs)
    meta = {
        "mode": "quick" if args.quick else "full",
        "seeds": seeds,
        "budget": budget,
        "methods": methods,
        "problems": [p.name for p in problems],
        "jobs": args.jobs,
        "cpus": os.cpu_count(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_seconds": time.time() - t0,
        "bbo_engine": _engine_fingerprint(),
        "run_seconds": float(
            sum(
                r["seconds"]
                for r in runs
                if r["problem"] in {p.name for p in problems} and r["method"] in methods
            )
        ),
    }
    with open(os.path.join(args.out, "suite.json"), "w") as f:
        json.dump(
            {
                "meta": meta,
                "table": table,
                "runs": [
                    r for r in runs if r["problem"] in meta["problems"] and r["method"] in methods
                ],
            },
            f,
            indent=1,
        )
    md = markdown(table, methods, meta)
    with open(os.path.join(args.out, "suite.md"), "w") as f:
        f.write(md)
    png = plot(table, methods, os.path.join(args.out, "suite_regret.png"))
    print(md)
    print(
        f"suite: wrote {args.out}/suite.json, suite.md{', ' + os.path.basename(png) if png else ''} in {time.time() - t0:.0f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
