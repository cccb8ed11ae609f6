"""Several workers at once: what asking before earlier points are told costs each method.

A service's studies are asked by several workers: each ask sees the points still being evaluated.
This runs bench_core's regret runs (:func:`bench_core.regret_run`) twice per method, problem and
seed, in one run: one worker (ask, evaluate, tell), and ``--parallel`` workers, each asking again
as soon as it tells, with random evaluation times (lognormal, the same draws for every method).
Pending points reach each method in its own convention: bbo's pending trials (integrated out by
qLogNEI's ``X_pending``), Optuna's RUNNING trials (GPSampler conditions on them; TPE's constant
liar), Ax's running trials; random search ignores them.

Reported: median final regret at one worker and at ``--parallel``, their ratio (the price of
parallelism; above 1: the workers' points were worth less), and the median seconds per ask.

    OMP_NUM_THREADS=1 python bench/bench_parallel.py [--seeds 5] [--budget 50] [--parallel 4]
        [--problems branin,hartmann6,hartmann6_con] [--methods bbo,ax,optuna_gp,optuna_tpe,random]
        [--ax-seeds 2] [--workers 2] [--resume]

Writes bench/results/parallel.json, parallel.md, parallel.png (finished runs in
parallel_runs.jsonl, reused with ``--resume``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed

from common import HERE, limit_threads

limit_threads()

from bench_core import _final, _fmt, regret_run  # noqa: E402

OUT = os.path.join(HERE, "results")
METHODS = ("bbo", "ax", "optuna_gp", "optuna_tpe", "random")


def _median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs: list[dict], problems, methods, parallel: int) -> dict:
    """Per problem and method: median final regret at 1 and ``parallel`` workers, their ratio
    (of medians), median ask seconds at ``parallel``, and the seeds run."""
    out: dict = {}
    for p in problems:
        for m in methods:
            by = {
                w: [r for r in runs if (r["problem"], r["method"], r["parallel"]) == (p, m, w)]
                for w in (1, parallel)
            }
            one, many = (_median([_final(r) for r in by[w]]) for w in (1, parallel))
            ratio = None
            if one is not None and many is not None and math.isfinite(one) and math.isfinite(many):
                ratio = many / one if one > 0 else (1.0 if many == 0 else math.inf)
            asks = [s for r in by[parallel] for s in r["ask_seconds"]]
            out.setdefault(p, {})[m] = {
                "seeds": sorted(r["seed"] for r in by[parallel]),
                "final_1": one,
                f"final_{parallel}": many,
                "ratio": ratio,
                "ask_seconds": _median(asks),
                "errors": [r["error"] for r in by[1] + by[parallel] if r["error"]],
            }
    return out


def markdown(summary: dict, problems, methods, args, meta: str) -> str:
    w = args.parallel
    lines = [
        f"<!-- {meta} -->",
        f"Median final regret after {args.budget} evaluations, one worker -> {w} workers "
        f"(x: the ratio; lower is better), seeds per method in brackets:",
        "",
        "| problem | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for p in problems:
        best = min(
            (
                summary[p][m][f"final_{w}"]
                for m in methods
                if summary[p][m][f"final_{w}"] is not None
            ),
            default=None,
        )
        cells = []
        for m in methods:
            s = summary[p][m]
            many = s[f"final_{w}"]
            txt = f"{_fmt(s['final_1'])} -> {_fmt(many)}"
            if best is not None and many is not None and many <= best * 1.000001 + 1e-12:
                txt = f"{_fmt(s['final_1'])} -> **{_fmt(many)}**"
            cells.append(f"{txt} (x{_fmt(s['ratio'])}) [{len(s['seeds'])}]")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Median seconds per ask with {w} workers:",
        "",
        "| problem | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for p in problems:
        lines.append(
            f"| {p} | " + " | ".join(_fmt(summary[p][m]["ask_seconds"]) for m in methods) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(runs, problems, methods, parallel, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(problems), figsize=(5 * len(problems), 4), squeeze=False)
    for ax, p in zip(axes[0], problems):
        for i, m in enumerate(methods):
            for w, style in ((1, ":"), (parallel, "-")):
                curves = [
                    [np.inf if c is None else c for c in r["curve"]]
                    for r in runs
                    if (r["problem"], r["method"], r["parallel"]) == (p, m, w)
                    and len(r["curve"]) == r["budget"]
                ]
                if not curves:
                    continue
                med = np.median(np.array(curves, dtype=float), axis=0)
                ax.plot(
                    np.arange(1, len(med) + 1),
                    np.maximum(med, 1e-12),
                    style,
                    color=f"C{i}",
                    label=f"{m} ({w})" if w == parallel else None,
                )
        ax.set_yscale("log")
        ax.set_title(p)
        ax.set_xlabel("evaluations told")
        ax.set_ylabel("median regret")
    axes[0][0].legend(fontsize=8, title=f"solid: {parallel} workers, dotted: 1")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--ax-seeds", type=int, default=2, help="Ax asks take seconds: fewer seeds")
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--parallel", type=int, default=4, help="workers evaluating at once")
    ap.add_argument("--problems", default="branin,hartmann6,hartmann6_con")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--workers", type=int, default=1, help="benchmark processes")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    if args.parallel < 2:
        ap.error("--parallel must be at least 2")
    problems = [p for p in args.problems.split(",") if p]
    methods = [m for m in args.methods.split(",") if m]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "parallel_runs.jsonl")
    done: dict = {}
    if args.resume and os.path.exists(path):
        for line in open(path):
            r = json.loads(line)
            if r["budget"] == args.budget and not r["error"]:
                done[(r["problem"], r["method"], r["seed"], r["parallel"])] = r
    elif os.path.exists(path):
        os.remove(path)
    tasks = [
        (p, m, s, w)
        for s in range(args.seeds)
        for p in problems
        for m in methods
        for w in (1, args.parallel)
        if (m != "ax" or s < args.ax_seeds) and (p, m, s, w) not in done
    ]
    t0 = time.time()
    runs = list(done.values())
    with open(path, "a") as fh, ProcessPoolExecutor(max(1, args.workers)) as ex:
        futs = {
            ex.submit(regret_run, p, m, s, args.budget, "cpu", w): (p, m, s, w)
            for p, m, s, w in tasks
        }
        for f in as_completed(futs):
            r = f.result()
            runs.append(r)
            fh.write(json.dumps(r) + "\n")
            fh.flush()
            print(
                f"  {r['problem']:14s} {r['method']:11s} seed {r['seed']} x{r['parallel']}: "
                f"final {_fmt(_final(r))}" + (f" ERROR {r['error']}" if r["error"] else ""),
                flush=True,
            )
    meta = (
        f"{args.seeds} seeds (Ax {min(args.ax_seeds, args.seeds)}), budget {args.budget}, "
        f"{args.parallel} workers, written {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, "
        f"{os.cpu_count()} CPUs, torch threads 1; {len(tasks)} runs in {time.time() - t0:.0f} s"
    )
    summary = summarize(runs, problems, methods, args.parallel)
    md = markdown(summary, problems, methods, args, meta)
    with open(os.path.join(args.out, "parallel.json"), "w") as fh:
        json.dump({"meta": meta, "args": vars(args), "summary": summary}, fh, indent=1)
    with open(os.path.join(args.out, "parallel.md"), "w") as fh:
        fh.write(md)
    plot(runs, problems, methods, args.parallel, os.path.join(args.out, "parallel.png"))
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
