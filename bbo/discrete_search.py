"""Acquisition maximization on fully discrete spaces (every parameter int, ordinal or
categorical): every point of the grid is scored where there are few enough, else BoTorch's local
search over one-parameter changes from the best of random grid points. Grids too large to score
whole with a column of more than BoTorch's ``MAX_DISCRETE_VALUES`` values are not searched here
(:func:`on_grid`): BoTorch's mixed optimizer relaxes such a column to a range and rounds, as it
does in spaces with a float; a local search changes one column at a time to any of its values, so
6 ints of 1,001 values scored about 350k points an ask (0.7-3.1x Optuna's GPSampler's time:
bench/results/latency_integers.md).

Points to avoid (the study's existing points) are left out of the search itself, so the answer is
a new point whenever one is left. BoTorch's mixed alternating optimizer, used where some columns
are continuous, spends most of its time on continuous relaxation steps that a lattice does not
need: on a 6-parameter categorical space it took 0.9-1.4 s per ask against a few hundredths here.
"""

from __future__ import annotations

import math
from typing import cast

import numpy as np
import torch
from botorch.acquisition import AcquisitionFunction
from botorch.optim import optimize as _botorch_optimize
from botorch.optim.optimize import optimize_acqf_discrete, optimize_acqf_discrete_local_search
from botorch.optim.optimize_mixed import MAX_DISCRETE_VALUES

from bbo.device import Placement
from bbo.space import SearchSpace, dense_constraints

ENUMERATE_MAX = 4096  # grids up to this many points are scored whole
RAW_SAMPLES = 1024  # random grid points scored to pick local-search starts
RESTARTS = 4
BATCH = 128  # points per acquisition evaluation (bounds transient memory, as INIT_BATCH_LIMIT)
# Points one local search scores at most (starts, then every one-parameter neighbor of each step).
# A step scores sum(choices - 1) neighbors and a climb takes up to about one step per parameter,
# so the unbounded search grew as parameters^2 x choices: 120 categoricals of 1,000 choices (within
# every spec limit) scored ~50M points, minutes of a fit slot for one Ask. Searches of ordinary
# spaces score far fewer (6 parameters of 10 values: a few thousand) and are unchanged.
EVAL_BUDGET = 1 << 19


def fully_discrete(space: SearchSpace) -> bool:
    """Whether every free column takes finitely many listed values."""
    return len(space.discrete_values()) == space.dim


def on_grid(space: SearchSpace) -> bool:
    """Whether the acquisition is maximized on the grid here: a fully discrete space whose grid
    is scored whole, or none of whose columns BoTorch's mixed optimizer would relax (an int or
    ordinal of more than ``MAX_DISCRETE_VALUES`` values outside every linear constraint)."""
    if not fully_discrete(space):
        return False
    if grid_size(space) <= ENUMERATE_MAX:
        return True
    tied = {i for idx, _, _ in space.inequality_constraints() for i in idx}
    grids = space.discrete_values()
    return all(
        i in tied or i in space.cat_dims or len(grids[i]) <= MAX_DISCRETE_VALUES
        for i in range(space.dim)
    )


def grid_size(space: SearchSpace) -> float:
    return math.prod(len(g) for g in space.discrete_values().values())


def feasible_grid(space: SearchSpace) -> np.ndarray | None:
    """Every encoded point of a fully discrete space that meets its linear constraints; None
    where some column is continuous or the grid has over :data:`ENUMERATE_MAX` points (a study
    that measured them all is not in sight)."""
    if not fully_discrete(space) or grid_size(space) > ENUMERATE_MAX:
        return None
    grids = space.discrete_values()
    mesh = np.stack(np.meshgrid(*(grids[i] for i in range(space.dim)), indexing="ij"), -1)
    mesh = mesh.reshape(-1, space.dim)
    if space.constraints:
        A, b = dense_constraints(space.inequality_constraints(), space.dim)
        mesh = mesh[np.all(mesh @ A.T >= b - 1e-9, axis=1)]
    return mesh


def maximize(
    acqf,
    space: SearchSpace,
    placement: Placement,
    inequality_constraints=None,
    avoid: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, float]:
    """The best grid point by ``acqf`` (1 x d) and its value, not one of ``avoid`` (n x d
    encoded). Raises where no point is left."""
    grids = space.discrete_values()
    choices = [placement.tensor(grids[i]) for i in range(space.dim)]
    X_avoid = placement.tensor(avoid) if avoid is not None and len(avoid) else None
    if grid_size(space) <= ENUMERATE_MAX:
        mesh = torch.cartesian_prod(*choices) if space.dim > 1 else choices[0].reshape(-1, 1)
        x, v = optimize_acqf_discrete(
            acqf,
            q=1,
            choices=mesh.reshape(-1, space.dim),
            max_batch_size=BATCH,
            X_avoid=X_avoid,
            inequality_constraints=inequality_constraints,
        )
    else:
        starts = _feasible_starts(acqf, space, placement, avoid, seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            x, _ = optimize_acqf_discrete_local_search(
                # BoTorch only calls it (q = 1): a callable is enough
                cast(AcquisitionFunction, _Budgeted(acqf, EVAL_BUDGET)),
                discrete_choices=choices,
                q=1,
                num_restarts=RESTARTS if starts is None else len(starts),
                raw_samples=RAW_SAMPLES,
                inequality_constraints=inequality_constraints,
                X_avoid=X_avoid,
                batch_initial_conditions=starts,
                max_batch_size=BATCH,
                return_acq_values=False,  # the budget may be spent: scored below, by acqf itself
            )
        with torch.no_grad():
            v = acqf(x)
    return x.reshape(1, -1), float(v.reshape(-1)[0])


def _feasible_starts(acqf, space: SearchSpace, placement: Placement, avoid, seed: int):
    """Under linear constraints, the local search's starts (k x 1 x d): the best by ``acqf`` of
    feasible grid points drawn inside the polytope (:func:`bbo.design.polytope_samples`), not yet
    measured. BoTorch draws its starts uniformly from the grid, and under a tight constraint (4
    ints of 0-100 summing to at most 6: 210 of 1e8 points) found none, so every BO step fell
    back. None without constraints, or where no such point was drawn (BoTorch's own then)."""
    if not space.constraints:
        return None
    from bbo.design import polytope_samples

    X = np.unique(
        np.array([space.encode(p) for p in polytope_samples(space, RAW_SAMPLES, seed)]), axis=0
    )
    if len(X) and avoid is not None and len(avoid):
        measured = {tuple(r) for r in np.asarray(avoid, dtype=float)}
        X = X[[tuple(r) not in measured for r in X]]
    if not len(X):
        return None
    T = placement.tensor(X).unsqueeze(1)
    with torch.no_grad():
        v = torch.cat([acqf(T[i : i + BATCH]) for i in range(0, len(T), BATCH)])
    return T[torch.argsort(v, descending=True)[:RESTARTS]]


def _filter_invalid(X: torch.Tensor, X_avoid: torch.Tensor) -> torch.Tensor:
    """BoTorch's ``_filter_invalid`` (the rows of ``X`` equal to no row of ``X_avoid``), the same
    rows in the same order, found by narrowing candidate pairs column by column: BoTorch's builds an
    ``avoid x points x d`` tensor and reduces its short last axis, which on 12 ints of 101 values
    at n = 300 (every local-search step filtered ~1,200 neighbors against every trial, before such
    columns were relaxed) was half of a 5 s ask."""
    if X.shape[0] == 0 or X_avoid.shape[0] == 0 or X.shape[-1] == 0:
        return X[~(X == X_avoid.unsqueeze(-2)).all(dim=-1).any(dim=-2)]
    # the pairs equal in the first column, narrowed column by column (few survive the first)
    a, x = (X_avoid[:, None, 0] == X[None, :, 0]).nonzero(as_tuple=True)
    for k in range(1, X.shape[-1]):
        keep = X_avoid[a, k] == X[x, k]
        a, x = a[keep], x[keep]
    hit = torch.zeros(X.shape[0], dtype=torch.bool, device=X.device)
    hit[x] = True
    return X[~hit]


# BoTorch's local search and its start points look the function up in their module at each call
# (its own kept beside, for the test that the two agree)
_botorch_filter_invalid = _botorch_optimize._filter_invalid
_botorch_optimize._filter_invalid = _filter_invalid


class _Budgeted:
    """``acqf`` that scores at most about ``budget`` points (whole batches): past it every point
    scores -inf, so BoTorch's local search stops where it is (no neighbor beats the point a climb
    has reached, whose score is real; a later restart's start scores -inf and is never picked). The
    search returns the best point it reached within the budget."""

    def __init__(self, acqf, budget: int):
        self.acqf, self.left = acqf, budget

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        if self.left <= 0:
            return torch.full(X.shape[:-2], -math.inf, dtype=X.dtype, device=X.device)
        self.left -= math.prod(X.shape[:-2])
        return self.acqf(X)
