"""Space-filling initial design: scrambled Sobol points that respect parameter constraints."""

from __future__ import annotations

import functools

import numpy as np
from scipy.stats import qmc

from bbo.errors import ConflictError
from bbo.space import SearchSpace, Value

Region = tuple[np.ndarray, np.ndarray]  # (low, high) of a sub-box of the encoding


def _to_box(space: SearchSpace, u: np.ndarray, region: Region | None = None) -> np.ndarray:
    """Map unit-cube Sobol points onto the encoding's box (categoricals span 0..k-1), or onto
    ``region``'s ranges of the non-categorical dimensions."""
    box = space.bounds()
    x = u.copy()
    if region is not None:
        num = np.setdiff1d(np.arange(space.dim), space.cat_dims)
        lo, hi = region
        x[:, num] = lo[num] + u[:, num] * (hi[num] - lo[num])
    for i in space.cat_dims:
        k = box[1, i] + 1
        x[:, i] = np.minimum(np.floor(u[:, i] * k), k - 1)
    return x


_BLOCK = 256


@functools.lru_cache(maxsize=32)
def _sobol_block(dim: int, seed: int, block: int) -> np.ndarray:
    """Points ``block * _BLOCK ..`` of a seed's scrambled Sobol sequence, ``_BLOCK`` of them (read-only)."""
    engine = qmc.Sobol(dim, scramble=True, seed=seed)
    if block:
        engine.fast_forward(block * _BLOCK)  # (scipy refuses fast_forward(0))
    pts = engine.random(_BLOCK)
    pts.setflags(write=False)
    return pts


def center_encoded(space: SearchSpace) -> np.ndarray:
    """The middle of the encoded box (geometric middle on log scales, the first choice of each
    categorical): the first initial-design point, as in Ax, since ranges are often drawn around a
    sensible default. Callers check it against parameter constraints."""
    box = space.bounds()
    x = 0.5 * (box[0] + box[1])
    for i in space.cat_dims:
        x[i] = 0.0
    return x


def sobol_design(
    space: SearchSpace, n: int, seed: int, skip: int = 0, region: Region | None = None
) -> list[dict[str, Value]]:
    """The Sobol points ``skip .. skip+n-1`` of this seed's sequence that are feasible, decoded;
    with ``region``, spread over that sub-box of the encoding instead of the whole box.

    Rounding (ints, ordinals) happens before the feasibility check, so every returned point meets
    the constraints exactly. If constraints reject nearly everything, points come from hit-and-run
    sampling of the constraint polytope instead, and where that finds none, the point the space
    knows to meet them (:attr:`SearchSpace.feasible_params`).
    """
    if n <= 0:
        return []
    if skip > 0 and not space.constraints and isinstance(seed, (int, np.integer)):
        # Without parameter constraints every point is feasible: the answer is simply points
        # skip .. skip+n-1. Initial-design Asks walk one seed's sequence a few points at a time, so
        # blocks of it are cached instead of building the scrambled engine and drawing (and
        # decoding) every earlier point on each Ask.
        first, last = skip // _BLOCK, (skip + n - 1) // _BLOCK
        pts = np.vstack([_sobol_block(space.dim, int(seed), b) for b in range(first, last + 1)])
        start = skip - first * _BLOCK
        return [space.decode(row) for row in _to_box(space, pts[start : start + n], region)]
    engine = qmc.Sobol(space.dim, scramble=True, seed=seed)
    out: list[dict[str, Value]] = []
    seen_feasible = 0
    drawn = 0
    while len(out) < n and drawn < 64 * (skip + n) + 4096:
        batch = _to_box(space, engine.random(256), region)
        drawn += 256
        for row in batch[space.may_be_feasible(batch)]:
            p = space.decode(row)
            if not space.is_feasible(p):
                continue
            seen_feasible += 1
            if seen_feasible > skip:
                out.append(p)
                if len(out) == n:
                    break
    if len(out) < n:
        out.extend(polytope_samples(space, n - len(out), seed + skip + 1))
    return out


def polytope_samples(space: SearchSpace, n: int, seed: int) -> list[dict[str, Value]]:
    """Uniform-ish feasible points by hit-and-run inside the constraint polytope (an ensemble of
    chains, :meth:`bbo.acquisition.Polytope.walk`, else BoTorch's one chain); where constraints
    pair up into equalities (:func:`bbo.space.split_equalities`), within their hyperplane. A
    sample whose rounded ints break a constraint has its floats completed where they can be."""
    import torch
    from botorch.exceptions.errors import InfeasibilityError
    from botorch.utils.sampling import get_polytope_samples

    from bbo.acquisition import Polytope
    from bbo.device import Placement

    polytope = Polytope.of(space, Placement(torch.device("cpu"), torch.double))
    out: list[dict[str, Value]] = []
    completions = max(4 * n, 64)  # linear programs left to spend on completing points

    def take(rows: np.ndarray) -> bool:
        """Keep the rows that decode feasible, then complete the others (:meth:`SearchSpace.
        complete`: floats moved to meet constraints that tie them to rounded ints); whether
        ``n`` points are in hand."""
        nonlocal completions
        missed = []
        for row in rows:
            p = space.decode(row)
            if space.is_feasible(p):
                out.append(p)
                if len(out) == n:
                    return True
            else:
                missed.append(row)
        for row in missed if space.floats_constrained else ():
            if completions <= 0:
                break
            completions -= 1
            done = space.complete(row)
            if done is not None:
                out.append(done)
                if len(out) == n:
                    return True
        return False

    # an ensemble of chains in one vectorized walk (Polytope.walk: milliseconds), new chains on
    # each attempt; BoTorch's one chain (10,000 burn-in steps in Python: seconds an attempt) only
    # where the walk cannot start, and for fewer attempts: a polytope whose points seldom decode
    # feasible cost 20 of its attempts, 35 s of CPU, on every design Ask before the known point
    attempt = 0
    walkable = polytope is not None
    while polytope is not None and len(out) < n and attempt < (20 if walkable else 3):
        rows = polytope.walk(max(4 * n, 64), seed + attempt) if walkable else None
        if rows is None:
            walkable = False
            try:
                rows = get_polytope_samples(
                    n=4 * n,
                    bounds=polytope.bounds,
                    inequality_constraints=polytope.ineq,
                    equality_constraints=polytope.eq,
                    seed=seed + attempt,
                    n_thinning=16,
                )
            except InfeasibilityError:  # no interior to walk in (met only within the tolerance)
                break
        if take(rows.numpy()):
            break
        attempt += 1
    if len(out) < n:
        # (almost) no room: the one point the constraints are known to admit, repeated
        known = space.feasible_params
        if known is None:
            raise ConflictError(
                "could not find a point meeting the parameter constraints with whole-number ints "
                "and ordinals at their values: create a study with looser constraints"
            )
        out.extend(dict(known) for _ in range(n - len(out)))
    return out
