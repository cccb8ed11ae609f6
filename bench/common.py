"""What the service benchmarks share: one thread per process and percentiles."""

from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def limit_threads() -> None:
    """One torch / BLAS thread per process unless the caller chose otherwise (call before torch)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pct(xs, q, empty=float("nan")):
    """The q-th percentile (nearest rank) of xs; ``empty`` when there are none."""
    xs = sorted(xs)
    if not xs:
        return empty
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))]
