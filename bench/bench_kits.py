"""Landscape facts of the application kits, measured: evaluation time, spread of the objective and
the fraction of a space-filling design that meets the outcome constraints.

These are the numbers the kits' docstrings quote (``bbo/kits/*.py``). Usage::

    OMP_NUM_THREADS=1 python bench/bench_kits.py [--points 64] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from bbo.design import sobol_design  # noqa: E402
from bbo.kits import KITS  # noqa: E402

VARIANTS = [
    ("hpo", {"model": "svm", "dataset": "digits"}),
    ("hpo", {"model": "hgb", "dataset": "breast_cancer"}),
    ("hpo", {"model": "mlp", "dataset": "digits"}),
    ("admm", {"problem": "lasso"}),
    ("admm", {"problem": "qp"}),
    ("cloud", {"variant": "single"}),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--points",
        type=int,
        default=64,
        help="Sobol points per variant and seed (default %(default)s)",
    )
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        "| kit | options | seed | s/eval (mean, max) | objective min / median / max | feasible fraction | best feasible |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, opts in VARIANTS:
        kit = KITS[name]
        spec = kit.spec(**opts)
        obj = spec.objectives[0].name
        for seed in seeds:
            pts = sobol_design(spec.space, args.points, seed)
            ts, vals, feas = [], [], []
            for p in pts:
                t0 = time.perf_counter()
                m = kit.evaluate(p, seed=seed)
                ts.append(time.perf_counter() - t0)
                vals.append(m[obj])
                feas.append(spec.is_feasible(m))
            v, f = np.array(vals), np.array(feas)
            best = f"{v[f].min():.4g}" if f.any() else "—"
            print(
                f"| {name} | {opts} | {seed} | {np.mean(ts):.3f}, {np.max(ts):.3f} | {v.min():.4g} / {np.median(v):.4g} / {v.max():.4g} "
                f"| {f.mean():.2f} | {best} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
