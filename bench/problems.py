"""Test problems for the core benchmark: known optima, so regret = best feasible value - optimum.

Each :class:`Problem` carries a bbo :class:`~bbo.spec.StudySpec` (every peer adapter translates the
same search space) and ``evaluate(params) -> {metric: value}``. All objectives are minimized; the
constrained problem's constraint metric ``c`` must be ``<= 0``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from botorch.test_functions import Branin, Hartmann

from bbo.design import _to_box
from bbo.space import CategoricalParam, FloatParam, IntParam, LinearConstraint, SearchSpace
from bbo.spec import AlgorithmOptions, Objective, OutcomeConstraint, StudySpec

_branin, _hartmann = Branin(), Hartmann(dim=6)


def _t(xs) -> torch.Tensor:
    return torch.tensor([list(xs)], dtype=torch.float64)


@dataclass
class Problem:
    name: str
    space: SearchSpace
    evaluate: Callable[[dict], dict]
    optimum: float
    constraint: OutcomeConstraint | None = None

    def spec(self, seed: int | None = None, **algorithm) -> StudySpec:
        return StudySpec(
            self.space,
            (Objective("f"),),
            (self.constraint,) if self.constraint else (),
            algorithm=AlgorithmOptions(seed=seed, **algorithm),
        )

    def feasible(self, metrics: dict, params: dict | None = None) -> bool:
        """The outcome constraint holds and, given ``params``, the linear parameter constraints
        (which a peer without them may have broken)."""
        if params is not None and not self.space.is_feasible(params):
            return False
        return self.constraint is None or self.constraint.satisfied(metrics[self.constraint.metric])


BRANIN_OPT = 0.39788735772973816  # f(pi, 2.275), to full precision


def branin() -> Problem:
    space = SearchSpace((FloatParam("x1", -5.0, 10.0), FloatParam("x2", 0.0, 15.0)))
    return Problem(
        "branin", space, lambda p: {"f": float(_branin(_t([p["x1"], p["x2"]])))}, BRANIN_OPT
    )


H6 = [f"x{i}" for i in range(6)]
H6_OPT = -3.3223680114155147  # to full precision: a rounded optimum puts a floor under every regret


def hartmann6() -> Problem:
    space = SearchSpace(tuple(FloatParam(n, 0.0, 1.0) for n in H6))
    return Problem(
        "hartmann6", space, lambda p: {"f": float(_hartmann(_t(p[n] for n in H6)))}, H6_OPT
    )


def hartmann6_constrained() -> Problem:
    """Hartmann6 with ``c = ||x||_2 - 1 <= 0``; the global optimum (norm 0.95) stays feasible, right
    next to the boundary, so the constraint must be modeled well to get close."""
    space = SearchSpace(tuple(FloatParam(n, 0.0, 1.0) for n in H6))

    def f(p):
        x = [p[n] for n in H6]
        return {"f": float(_hartmann(_t(x))), "c": float(np.linalg.norm(x) - 1.0)}

    return Problem("hartmann6_con", space, f, H6_OPT, OutcomeConstraint("c", "<=", 0.0))


H6_SUM_BOUND = 2.0
# on the face sum(x) = 2 (SLSQP from 300 starts, then BFGS within the face): the unconstrained
# optimum's coordinates sum to 2.07, so this one lies on the constraint's face
H6_LIN_OPT = -3.3075362992629893


def hartmann6_linear() -> Problem:
    """Hartmann6 under the linear parameter constraint ``sum(x) <= 2`` (8 % of the box): the
    optimum is on the constraint's face, as a budget split's usually is. bbo and Ax take the
    constraint with the space; Optuna learns it as an outcome constraint (its slack, known at the
    ask); random search samples the polytope by rejection."""
    space = SearchSpace(
        tuple(FloatParam(n, 0.0, 1.0) for n in H6),
        (LinearConstraint({n: 1.0 for n in H6}, H6_SUM_BOUND),),
    )
    return Problem(
        "hartmann6_lin",
        space,
        lambda p: {"f": float(_hartmann(_t(p[n] for n in H6)))},
        H6_LIN_OPT,
    )


def levy10() -> Problem:
    """Levy in 10-D on [-5, 15]^10: optimum 0 at x = 1, far from the box center (on the usual
    [-10, 10] box the center point, which Ax evaluates first, is already within 1.5 of the optimum)."""
    names = [f"x{i}" for i in range(10)]
    space = SearchSpace(tuple(FloatParam(n, -5.0, 15.0) for n in names))
    return Problem("levy10", space, lambda p: {"f": _levy([p[n] for n in names])}, 0.0)


def _levy(x) -> float:
    w = 1.0 + (np.asarray(x, dtype=float) - 1.0) / 4.0
    head = np.sin(np.pi * w[0]) ** 2
    mid = np.sum((w[:-1] - 1) ** 2 * (1 + 10 * np.sin(np.pi * w[:-1] + 1) ** 2))
    tail = (w[-1] - 1) ** 2 * (1 + np.sin(2 * np.pi * w[-1]) ** 2)
    return float(head + mid + tail)


MIXED_OFFSET = {"a": 0.0, "b": 2.0, "c": 5.0}


def mixed() -> Problem:
    """Branin in (x1, x2) plus an integer and a categorical term: optimum 0.397887 at k=7, cat='a'.
    The categorical also shifts x2 (an interaction a GP must learn per category)."""
    space = SearchSpace(
        (
            FloatParam("x1", -5.0, 10.0),
            FloatParam("x2", 0.0, 15.0),
            IntParam("k", 0, 12),
            CategoricalParam("cat", ("a", "b", "c")),
        )
    )

    def f(p):
        shift = {"a": 0.0, "b": 3.0, "c": -3.0}[p["cat"]]
        x2 = min(max(p["x2"] + shift, 0.0), 15.0)
        return {
            "f": float(_branin(_t([p["x1"], x2])))
            + 0.2 * (p["k"] - 7) ** 2
            + MIXED_OFFSET[p["cat"]]
        }

    return Problem("mixed", space, f, BRANIN_OPT)


def latency_problem() -> Problem:
    """The 6-D problem with one outcome constraint used for ask-latency measurements."""
    return hartmann6_constrained()


ALL = {
    "branin": branin,
    "hartmann6": hartmann6,
    "hartmann6_con": hartmann6_constrained,
    "hartmann6_lin": hartmann6_linear,
    "levy10": levy10,
    "mixed": mixed,
}


def random_params(space: SearchSpace, rng: np.random.Generator) -> dict:
    """A uniform random point of the box, or of the polytope its linear constraints cut from it
    (by rejection: a random search's user would not submit a point the constraints forbid)."""
    for _ in range(10_000):
        p = space.decode(_to_box(space, rng.random((1, space.dim)))[0])
        if space.is_feasible(p):
            return p
    raise RuntimeError("no feasible point in 10,000 uniform draws")
