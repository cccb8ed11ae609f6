"""Leak check: does memory grow with the number of asks, or only with the size of the history?

The soak (bench_soak.py) sees the server's resident memory rise as its studies grow. That mixes two
things: a working set that grows with the history (GP matrices, caches; bounded by
``max_model_points``) and a true leak (growth per ask at a fixed history). Here one
GenerationStrategy answers ``--asks`` asks on a *fixed* history of ``n`` completed trials (Hartmann6
with an outcome constraint, random points; the suggestions are not told), and the
process's anonymous resident memory is sampled after every ask, for each n in ``--sizes``. A leak
shows as a positive slope at a fixed n after warm-up.

    OMP_NUM_THREADS=1 python bench/bench_leak.py [--sizes 30,60,120] [--asks 150]

Writes bench/results/leak.json and leak.png.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
from common import limit_threads  # noqa: E402

limit_threads()

import numpy as np  # noqa: E402
from bench_soak import rss_split_mb  # noqa: E402
from problems import hartmann6_constrained, random_params  # noqa: E402

from bbo.memory import malloc_trim  # noqa: E402
from bbo.spec import AlgorithmOptions, Objective, StudySpec  # noqa: E402
from bbo.strategy import GenerationStrategy  # noqa: E402
from bbo.trial import Metric, Trial, TrialState  # noqa: E402


def history(problem, n: int, seed: int) -> list[Trial]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = random_params(problem.space, rng)
        out.append(
            Trial(
                id=i + 1,
                params=p,
                state=TrialState.COMPLETED,
                metrics={k: Metric(v) for k, v in problem.evaluate(p).items()},
            )
        )
    return out


def run(n: int, asks: int, seed: int) -> dict:
    prob = hartmann6_constrained()
    spec = StudySpec(
        prob.space,
        (Objective("f"),),
        outcome_constraints=(prob.constraint,),
        algorithm=AlgorithmOptions(seed=seed),
    )
    gs = GenerationStrategy(spec)
    trials = history(prob, n, seed)
    anon, seconds = [], []
    for i in range(asks):
        t0 = time.perf_counter()
        gs.suggest(trials, 1)
        seconds.append(time.perf_counter() - t0)
        gc.collect()
        malloc_trim()
        anon.append(rss_split_mb(os.getpid())[0])
    warm = asks // 3
    slope = (
        float(np.polyfit(np.arange(warm, asks), anon[warm:], 1)[0]) * 100
        if asks - warm >= 3
        else float("nan")
    )
    return {
        "n": n,
        "asks": asks,
        "anon_mb": anon,
        "ask_seconds": seconds,
        "mb_per_100_asks_after_warmup": slope,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="30,60,120")
    ap.add_argument("--asks", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    results = []
    for n in [int(s) for s in args.sizes.split(",") if s]:
        r = run(n, args.asks, args.seed)
        print(
            f"n={n:4d}: anon RSS {r['anon_mb'][0]:.0f} -> {r['anon_mb'][-1]:.0f} MB, "
            f"slope after warm-up {r['mb_per_100_asks_after_warmup']:+.1f} MB per 100 asks",
            flush=True,
        )
        results.append(r)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "leak.json"), "w") as f:
        json.dump({"generated": time.strftime("%Y-%m-%d %H:%M:%S"), "results": results}, f)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ax.plot(r["anon_mb"], label=f"n = {r['n']} completed trials")
    ax.set_xlabel("asks at a fixed history")
    ax.set_ylabel("anonymous resident memory (MB)")
    ax.set_title("GenerationStrategy memory per ask (a leak = a rising line)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "leak.png"), dpi=110)


if __name__ == "__main__":
    main()
