"""Several objectives, side by side in one run: bbo (log EHVI), Optuna's GPSampler and TPE, and
random search on BoTorch's multi-objective test functions, one point per ask (``--batch q``: q
points per ask, as q workers would take them, every point of an ask evaluated before the next).

Score: the hypervolume of the evaluated points' Pareto front (against each problem's reference
point) as a share of the front's known maximum, at every evaluation; reported as the log10 of the
gap (lower is better), median over seeds, and the median seconds per ask after the design.

    OMP_NUM_THREADS=1 python bench/bench_multiobjective.py [--seeds 5] [--budget 30]
        [--problems branin_currin,dtlz2_6d,zdt1_6d] [--methods bbo,optuna_gp,optuna_tpe,random]
        (also dtlz2_6d_m3, dtlz2_6d_m4: DTLZ2 with three and four objectives)
        [--batch 1] [--noise 0]

Writes bench/results/multiobjective.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
from common import HERE, limit_threads

limit_threads()

METHODS = ("bbo", "optuna_gp", "optuna_tpe", "random")


def problem(name: str):
    """The BoTorch test function (negated: every objective maximized) behind ``name``."""
    from botorch.test_functions import multi_objective as mo

    return {
        "branin_currin": lambda: mo.BraninCurrin(negate=True),
        "dtlz2_6d": lambda: mo.DTLZ2(dim=6, num_objectives=2, negate=True),
        "dtlz2_6d_m3": lambda: mo.DTLZ2(dim=6, num_objectives=3, negate=True),
        "dtlz2_6d_m4": lambda: mo.DTLZ2(dim=6, num_objectives=4, negate=True),
        "zdt1_6d": lambda: mo.ZDT1(dim=6, num_objectives=2, negate=True),
    }[name]()


def hv_curve(f, Y: np.ndarray) -> list[float]:
    """Hypervolume of the first k points' front, for every k."""
    import torch
    from botorch.utils.multi_objective.hypervolume import Hypervolume
    from botorch.utils.multi_objective.pareto import is_non_dominated

    hv = Hypervolume(ref_point=f.ref_point.double())
    T = torch.as_tensor(Y, dtype=torch.double)
    out = []
    for k in range(1, len(T) + 1):
        P = T[:k][is_non_dominated(T[:k])]
        P = P[(P > f.ref_point).all(dim=-1)]
        out.append(float(hv.compute(P)) if len(P) else 0.0)
    return out


def noise_sd(f, share: float) -> np.ndarray:
    """Per objective, ``share`` of its standard deviation over 1,024 uniform points (fixed)."""
    import torch

    if share <= 0:
        return np.zeros(f.num_objectives)
    U = torch.as_tensor(np.random.default_rng(0).uniform(size=(1024, f.dim)))
    with torch.no_grad():
        Y = f(f.bounds[0] + U * (f.bounds[1] - f.bounds[0]))
    return share * Y.std(dim=0).numpy()


def run(name: str, method: str, seed: int, budget: int, batch: int = 1, noise: float = 0.0) -> dict:
    """One run; with ``noise`` > 0 every observation gets Gaussian noise of that share of each
    objective's spread (bbo is told its standard error), and the score is the hypervolume of the
    evaluated points' true values."""
    import torch

    torch.set_num_threads(1)
    f = problem(name)
    lo, hi = f.bounds[0].tolist(), f.bounds[1].tolist()
    d, m = f.dim, f.num_objectives
    names = [f"x{i}" for i in range(d)]
    sd = noise_sd(f, noise)
    rng_noise = np.random.default_rng(10_000 + seed)  # the same noise sequence for every method
    truth: list[list[float]] = []

    def evaluate(x: list[float]) -> list[float]:
        with torch.no_grad():
            y = f(torch.tensor([x], dtype=torch.double))[0].numpy()
        truth.append(y.tolist())
        return (y + sd * rng_noise.standard_normal(m)).tolist()

    X, Y, asks = [], [], []
    if method == "bbo":
        from bbo.space import FloatParam, SearchSpace
        from bbo.spec import AlgorithmOptions, Objective, StudySpec
        from bbo.strategy import GenerationStrategy
        from bbo.trial import Metric, Trial, TrialState

        space = SearchSpace(tuple(FloatParam(n, a, b) for n, a, b in zip(names, lo, hi)))
        objs = tuple(Objective(f"f{j}", goal="maximize") for j in range(m))
        gs = GenerationStrategy(StudySpec(space, objs, algorithm=AlgorithmOptions(seed=seed)))
        sem = [float(v) if noise > 0 else None for v in sd]  # told with every observation
        trials = []
        while len(trials) < budget:
            t0 = time.perf_counter()
            out = gs.suggest(trials, min(batch, budget - len(trials)))
            per_point = (time.perf_counter() - t0) / len(out)
            for s in out:
                asks.append((per_point, s.origin != "initial_design"))
                x = [float(s.params[n]) for n in names]
                y = evaluate(x)
                metrics = {f"f{j}": Metric(v, sem[j]) for j, v in enumerate(y)}
                trials.append(Trial(len(trials) + 1, s.params, TrialState.COMPLETED, metrics))
                X.append(x)
                Y.append(y)
    elif method == "random":
        rng = np.random.default_rng(seed)
        for _ in range(budget):
            x = rng.uniform(lo, hi).tolist()
            X.append(x)
            Y.append(evaluate(x))
    else:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = (
            optuna.samplers.GPSampler(seed=seed)
            if method == "optuna_gp"
            else optuna.samplers.TPESampler(seed=seed)
        )
        study = optuna.create_study(directions=["maximize"] * m, sampler=sampler)
        dist = {n: optuna.distributions.FloatDistribution(a, b) for n, a, b in zip(names, lo, hi)}
        while len(X) < budget:
            k = min(batch, budget - len(X))
            t0 = time.perf_counter()
            trs = [study.ask(dist) for _ in range(k)]
            per_point = (time.perf_counter() - t0) / k
            for tr in trs:  # GPSampler: 10 random startup points
                asks.append((per_point, len(X) >= 10))
                x = [tr.params[n] for n in names]
                y = evaluate(x)
                study.tell(tr, y)
                X.append(x)
                Y.append(y)
    curve = hv_curve(f, np.array(truth))
    model_asks = [s for s, model in asks if model]
    return {
        "problem": name,
        "method": method,
        "seed": seed,
        "hv": curve,
        "max_hv": float(f.max_hv),
        "ask_s": float(np.median(model_asks)) if model_asks else None,
    }


def summarize(runs: list[dict], budget: int) -> dict:
    out: dict = {}
    for r in runs:
        gap = [max(r["max_hv"] - h, 1e-12) / r["max_hv"] for h in r["hv"]]
        cell = out.setdefault(r["problem"], {}).setdefault(r["method"], {"gaps": [], "ask_s": []})
        cell["gaps"].append(gap)
        if r["ask_s"] is not None:
            cell["ask_s"].append(r["ask_s"])
    table = {}
    for p, by in out.items():
        table[p] = {}
        for mth, c in by.items():
            G = np.log10(np.array(c["gaps"]))
            table[p][mth] = {
                "log_gap_median": np.median(G, axis=0).tolist(),
                "at_half": float(np.median(G[:, budget // 2 - 1])),
                "final": float(np.median(G[:, -1])),
                "ask_s": float(np.median(c["ask_s"])) if c["ask_s"] else None,
            }
    return table


def markdown(
    table: dict, seeds: int, budget: int, wall: float, batch: int = 1, noise: float = 0.0
) -> str:
    per = "one point per ask" if batch == 1 else f"{batch} points per ask (seconds per point)"
    if noise > 0:
        per += (
            f", observations with Gaussian noise of {noise:g} of each objective's spread (bbo"
            " told its standard error), scored by the evaluated points' true values"
        )
    methods = [m for m in METHODS if any(m in by for by in table.values())]
    lines = [
        "### Several objectives",
        "",
        f"{seeds} seeds, budget {budget}, {per}; log10 of the hypervolume gap (share of"
        f" the maximum left to find; lower is better), median over seeds, at evaluation"
        f" {budget // 2} / {budget}; and median seconds per model-based ask. Wall {wall:.0f} s.",
        "",
        "| problem | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for p, by in table.items():
        best = min(by[m]["final"] for m in methods if m in by)
        cells = []
        for m in methods:
            c = by.get(m)
            if c is None:
                cells.append("")
                continue
            s = f"{c['at_half']:.2f} / {c['final']:.2f}"
            s = f"**{s}**" if c["final"] == best else s
            cells.append(s + (f" ({c['ask_s']:.2g} s)" if c["ask_s"] is not None else ""))
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(5 * len(table), 3.6), squeeze=False)
    for ax, (p, by) in zip(axes[0], table.items()):
        for m, c in by.items():
            ax.plot(range(1, len(c["log_gap_median"]) + 1), c["log_gap_median"], label=m)
        ax.set_title(p)
        ax.set_xlabel("evaluations")
        ax.set_ylabel("log10 hypervolume gap (median)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--problems", default="branin_currin,dtlz2_6d,zdt1_6d")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--tag", default="multiobjective")
    ap.add_argument("--batch", type=int, default=1, help="points per ask")
    ap.add_argument(
        "--noise",
        type=float,
        default=0.0,
        help="observation noise, as a share of each objective's spread (bbo told the sem)",
    )
    args = ap.parse_args(argv)
    t0 = time.time()
    runs = []
    for p in args.problems.split(","):
        for m in args.methods.split(","):
            for s in range(args.seeds):
                r = run(p, m, s, args.budget, args.batch, args.noise)
                runs.append(r)
                gap = (r["max_hv"] - r["hv"][-1]) / r["max_hv"]
                ask = f"{r['ask_s']:.3g} s/ask" if r["ask_s"] is not None else ""
                print(
                    f"{p:14s} {m:11s} seed {s}: log10 gap {math.log10(max(gap, 1e-12)):.2f} {ask}"
                )
    table = summarize(runs, args.budget)
    wall = time.time() - t0
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, args.tag)
    with open(base + ".json", "w") as fh:
        json.dump({"seeds": args.seeds, "budget": args.budget, "table": table, "runs": runs}, fh)
    md = markdown(table, args.seeds, args.budget, wall, args.batch, args.noise)
    with open(base + ".md", "w") as fh:
        fh.write(md)
    plot(table, base + ".png")
    print(md)


if __name__ == "__main__":
    main()
