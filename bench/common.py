"""What the service benchmarks share: import paths for an uninstalled checkout and percentiles."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def setup_paths(*extra: str) -> None:
    """Make bbo, bbo_server and bbo_client (and ``extra`` folders of the repo) importable; one torch thread."""
    for p in (
        ROOT,
        os.path.join(ROOT, "server"),
        os.path.join(ROOT, "clients", "python"),
        *(os.path.join(ROOT, e) for e in extra),
    ):
        if p not in sys.path:
            sys.path.insert(0, p)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pct(xs, q, empty=float("nan")):
    """The q-th percentile (nearest rank) of xs; ``empty`` when there are none."""
    xs = sorted(xs)
    if not xs:
        return empty
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))]
