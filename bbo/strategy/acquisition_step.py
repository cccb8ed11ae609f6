"""The acquisition step: build the acquisition functions for an ask (log EI on the GP's cached
marginals where one objective has no reported noise, augmented EI where that objective is known
to be noisy, else log noisy EI or EHVI; piBO weighting while the priors agree with the data),
maximize them, and turn the optimizer's point into a suggestion: repaired where rounding broke a
parameter constraint or hit an existing point, and outranked by a proposal (e.g. the LLM's) that
the acquisition function values higher.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch
from botorch.acquisition import AcquisitionFunction

from bbo.acquisition import (
    Layout,
    baseline_rows,
    believe,
    budget,
    cheap_initial_conditions,
    evaluate,
    informative_pending,
    make_acquisition,
    marginal_acquisition,
    optimize,
    plugin_hypervolume,
    to_numpy,
)
from bbo.design import sobol_design
from bbo.predictive import CachedPredictive, cached_predictive
from bbo.priors import LogPrior, agrees_with_data
from bbo.space import Value
from bbo.spec import ParameterPrior
from bbo.strategy.base import Suggestion
from bbo.strategy.context import Ask, Context
from bbo.trial import Origin

log = logging.getLogger(__name__)

# L-BFGS-B stops for the acquisition on marginals (BoTorch's defaults are pgtol 1e-5, factr 1e7;
# Optuna stops its at 1e-2): the last digits of an acquisition maximizer change no decision, and their
# iterations cost a third of the optimization. (Exploitation steps keep BoTorch's defaults.)
MARGINAL_TOLERANCES = {"pgtol": 1e-3, "factr": 1e10}
INCUMBENT_JITTER = 0.01  # the incumbent's restart starts this far off it (share of each range)
CHEAP_INIT_ABOVE = 60  # model size above which optimizer starts come from a cheap analytic score
PRIOR_SET_ASIDE = "prior set aside: the best trials are less likely under it than the rest"


class Steer(TypedDict):
    """What every acquisition function of one ask takes besides its model and data."""

    prior: LogPrior | None
    prior_exponent: float
    seed: int


@dataclass
class PriorChoice:
    """The piBO prior of one ask and what it makes of the acquisition step."""

    prior: LogPrior | None
    exponent: float  # beta / n while the prior steers, else 0
    origin: str  # prior_guided_bo while it steers, else bo
    note: str  # the model's notes, with why the prior was set aside where it was


@dataclass
class Acquisition:
    """One ask's acquisition functions and what its steps share."""

    alone: Callable[[], AcquisitionFunction]  # for a point chosen alone, built on first use
    joint: Callable[[], AcquisitionFunction]  # MC where marginals do not apply (pending: X_pending)
    # the acquisition with pending points believed: on the marginals (one objective), or
    # :func:`bbo.acquisition.plugin_hypervolume` (:func:`believes_pending`); None otherwise
    believer: Callable[[torch.Tensor], AcquisitionFunction | None] | None
    predictive: CachedPredictive | None  # the GP's marginals, cheaply (single objective)
    origin: str  # bo, or prior_guided_bo
    note: str  # the model's notes (fit fallbacks, a prior set aside)
    budget: tuple[int, int, int]  # optimizer restarts, raw samples, L-BFGS iterations
    cheap_init: bool  # optimizer starts from a cheap analytic score (large continuous models)
    marginal: bool  # alone runs on the cached marginals (one point at a time, one objective)
    incumbent: np.ndarray | None  # the best observed feasible point (encoded), if any
    layout: Layout  # the outcome layout in the model's units (:attr:`TrainingData.layout`)


class AcquisitionStep:
    """Builds and maximizes the acquisition function of one study."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def prior(self, ask: Ask, note: str, priors: Sequence[ParameterPrior] = ()) -> PriorChoice:
        """The piBO prior of this ask (the ask's own priors, else ``priors``: a transfer source's
        location prior): in force (exponent ``beta / n``) unless it is empty or the data
        contradict it (:func:`bbo.priors.agrees_with_data`), which the note then says."""
        ctx, data = self.ctx, ask.data
        priors = ask.priors or tuple(priors)
        prior = LogPrior(ctx.spec.space, priors, ctx.placement) if priors else None
        if prior is None or prior.empty:
            return PriorChoice(prior, 0.0, Origin.BO.value, note)
        density = to_numpy(prior(ctx.placement.tensor(data.X)[:, None, :]))[:, 0]
        if not agrees_with_data(density, data.score):
            return PriorChoice(prior, 0.0, Origin.BO.value, _join(note, PRIOR_SET_ASIDE))
        exponent = ctx.spec.algorithm.prior_exponent / max(1, len(data.trials))
        return PriorChoice(prior, exponent, Origin.PRIOR_BO.value, note)

    def build(
        self,
        model,
        rows: np.ndarray,
        ask: Ask,
        prior: PriorChoice,
        predictive=None,
        noisy: bool = False,
    ) -> Acquisition:
        """The acquisition functions on the GP conditioned on ``rows`` of the training data: q = 1
        log EI on the cached marginals for one objective, reported noise or not
        (:func:`bbo.acquisition.marginal_acquisition`; augmented EI where ``noisy``, the
        objective known to be noisy; with reported standard errors qLogNEI's joint posterior cost
        0.15-0.32 s an ask, 2-3x Optuna GPSampler's, and ended no better), the same with pending
        points believed
        (:func:`bbo.acquisition.believe`); for several objectives without reported noise, the
        plug-in front's log EHVI on the marginals (:func:`bbo.acquisition.plugin_hypervolume`);
        and qLogNEI / qLogNEHVI for the rest (pending points then integrated over by Monte
        Carlo, except for several objectives where :func:`believes_pending`: believed,
        :func:`bbo.acquisition.plugin_hypervolume`). The hypervolume acquisitions are built on
        first use: their box decompositions are the costly part of an ask with many objectives,
        and an ask whose points all have others pending never uses the one without them.
        ``predictive``: the GP's :class:`~bbo.predictive.CachedPredictive`, where it has one.
        Raises where BoTorch cannot build them (the caller falls back)."""
        ctx, data, space = self.ctx, ask.data, self.ctx.spec.space
        layout = data.layout
        base = rows[baseline_rows(data.score[rows], layout.multi)]
        X_base, Y = ctx.placement.tensor(data.X[base]), data.Ym[rows]
        steer = Steer(prior=prior.prior, prior_exponent=prior.exponent, seed=ask.seed)

        @functools.cache
        def joint() -> AcquisitionFunction:
            return make_acquisition(model, layout, X_base, Y, **steer)

        # the GP's marginals serve the plug-in front too; Acquisition.predictive is one objective's
        marginals, predictive = predictive, None if layout.multi else predictive
        acqf = None
        if predictive is not None and (data.Ymvar is None or not layout.multi):  # see above
            acqf = marginal_acquisition(predictive, layout, Y, augmented=noisy, **steer)
        marginal = acqf is not None
        front = layout.multi and marginals is not None and data.Ymvar is None

        @functools.cache
        def alone() -> AcquisitionFunction:
            if acqf is not None:
                return acqf
            if front:  # the plug-in front on the marginals
                return plugin_hypervolume(marginals, layout, X_base, Y, **steer)
            return joint()

        if not marginal and not front:
            joint()  # built here, as before: where BoTorch cannot, the caller falls back

        believer: Callable[[torch.Tensor], AcquisitionFunction | None] | None = None
        if marginal:
            believer = _marginal_believer(model, layout, Y, noisy, steer)
        elif believes_pending(layout, data):
            believer = _front_believer(model, layout, X_base, Y, steer)
        cheap_init = (
            not marginal
            and len(rows) > CHEAP_INIT_ABOVE
            and not layout.multi
            and not space.discrete_values()
            and not space.constraints
        )
        lean = layout.multi or (data.Ymvar is not None and not marginal)  # Monte Carlo at every ask
        restarts, raw, maxiter = budget(len(rows), space.dim, marginal, lean)
        return Acquisition(
            alone,
            joint,
            believer,
            predictive,
            prior.origin,
            prior.note,
            (restarts, raw, maxiter),
            cheap_init,
            marginal,
            _incumbent(data, rows, layout),
            layout,
        )

    def step(
        self,
        acq: Acquisition,
        model,
        Ym: np.ndarray,
        pending: list[torch.Tensor],
        taken: np.ndarray,
        proposals: list,
        seed: int,
    ) -> Suggestion:
        """The acquisition function's maximizer given the ``pending`` points (encoded, 1 x d
        each); ``Ym``: the warped outcomes the GP conditions on (for cheap optimizer starts)."""
        ctx, space = self.ctx, self.ctx.spec.space
        X_pending = torch.cat(pending, dim=0) if pending else None
        believed = _believed(acq, X_pending) if X_pending is not None else None
        marginal = acq.marginal and (X_pending is None or believed is not None)
        if believed is not None:
            acqf = believed
        elif X_pending is None:
            acqf = acq.alone()
        else:  # Monte Carlo over the pending points
            acqf = acq.joint()
            acqf.set_X_pending(X_pending)
        restarts, raw, maxiter = acq.budget
        ic, tolerances = None, None
        if acq.cheap_init:
            ic = cheap_initial_conditions(
                model, acq.layout, space, ctx.placement, Ym, 4 * raw, restarts, seed
            )
        elif marginal:
            ic = start_points(acq.incumbent, space, ctx.placement, seed)
            tolerances = MARGINAL_TOLERANCES
        x, _ = optimize(
            acqf,
            space,
            ctx.placement,
            num_restarts=restarts,
            raw_samples=raw,
            maxiter=maxiter,
            initial_conditions=ic,
            avoid=taken,
            seed=seed,
            tolerances=tolerances,
        )
        return self._finish(acqf, x, taken, proposals, acq.origin, acq.note)

    def _finish(
        self, acqf, x: torch.Tensor, taken: np.ndarray, props: list, origin: str, note: str
    ) -> Suggestion:
        """Decode the optimizer's point; repair it if rounding broke a constraint or hit an
        existing point; let proposals compete; consume the proposal used."""
        space, points = self.ctx.spec.space, self.ctx.points
        params: dict[str, Value] | None
        params = space.decode(to_numpy(x)[0])
        reason = note
        xe = space.encode(params)
        if not space.is_feasible(params) or points.too_close(xe, taken):
            why = (
                "violated a parameter constraint after rounding"
                if not space.is_feasible(params)
                else "repeated an existing point"
            )
            params = self._repair(acqf, to_numpy(x)[0], taken)
            if params is None:
                raise RuntimeError(f"optimizer's point {why} and no feasible alternative was found")
            reason = _join(
                reason, f"optimizer's point {why}: replaced by the best nearby alternative"
            )
            xe = space.encode(params)
        cands = [(s, p) for s, p in props if not points.too_close(space.encode(p), taken)]
        if cands:
            X = self.ctx.placement.tensor(np.vstack([xe] + [space.encode(p) for _, p in cands]))
            vals = evaluate(acqf, X)
            j = int(torch.argmax(vals))
            if j > 0 and torch.isfinite(vals[j]) and vals[j] > vals[0]:
                s, p = cands[j - 1]
                props.remove((s, p))
                return Suggestion(p, s.origin or Origin.LLM_PROPOSAL.value, s.reason, s.rationale)
        return Suggestion(params, origin, reason)

    def _repair(self, acqf, x: np.ndarray, taken: np.ndarray) -> dict[str, Value] | None:
        """The best, by the acquisition function, of random roundings and small jitters of the
        optimizer's point and of Sobol points: feasible and distinct from existing points."""
        ctx = self.ctx
        space = ctx.spec.space
        rng = np.random.default_rng(ctx.seed + len(taken))
        cands = []
        disc = space.discrete_values()
        cont = [i for i in range(space.dim) if i not in disc]
        for _ in range(
            64
        ):  # random floor/ceil roundings and small jitters of the optimizer's point
            y = x.copy()
            for i, g in disc.items():
                lo = g[g <= y[i]].max(initial=g[0])
                hi = g[g >= y[i]].min(initial=g[-1])
                y[i] = lo if rng.random() < 0.5 else hi
            y[cont] = np.clip(y[cont] + rng.normal(0, 0.02, len(cont)), 0, 1)
            cands.append(space.decode(y))
        cands += sobol_design(space, 128, ctx.seed + 17 + len(taken))
        ok = [
            p
            for p in cands
            if space.is_feasible(p) and not ctx.points.too_close(space.encode(p), taken)
        ]
        if not ok:
            return None
        vals = evaluate(acqf, ctx.placement.tensor(np.vstack([space.encode(p) for p in ok])))
        vals = torch.nan_to_num(vals, nan=-float("inf"))
        return ok[int(torch.argmax(vals))]


def _believed(acq: Acquisition, X_pending: torch.Tensor) -> AcquisitionFunction | None:
    """The acquisition on the marginals with ``X_pending`` believed (:func:`believe`), or None
    where that does not apply or fails (the Monte Carlo integral over them then serves)."""
    if acq.believer is None:
        return None
    try:
        return acq.believer(X_pending)
    except Exception as e:  # noqa: BLE001
        log.info("believer acquisition failed: %s", e)
        return None


def _marginal_believer(
    model, layout: Layout, Y: np.ndarray, noisy: bool, steer: Steer
) -> Callable[[torch.Tensor], AcquisitionFunction | None]:
    """One objective's :attr:`Acquisition.believer`: the acquisition on the marginals of the GP
    conditioned on the pending points at its posterior mean, their believed values joining the
    incumbent's running (``Y``: the outcomes the GP conditions on). Where that GP is
    ill-conditioned, again without the pending points the GP already knows
    (:func:`bbo.acquisition.informative_pending`), every pending point's mean still setting the
    bar; None where that fails too."""

    def believer(X_pending: torch.Tensor) -> AcquisitionFunction | None:
        believed, pending = cached_predictive(believe(model, X_pending)), None
        if believed is None:  # ill-conditioned: again without the points it knows
            keep = informative_pending(model, X_pending)
            if len(keep) == len(X_pending):
                return None
            believed = cached_predictive(believe(model, X_pending[keep]))
            if believed is None:
                return None
            with torch.no_grad():  # every pending point's outcome still sets the bar
                pending = to_numpy(model.posterior(X_pending).mean)
        fantasies = to_numpy(believed.train_mean()[len(Y) :])
        return marginal_acquisition(
            believed,
            layout,
            np.vstack([Y, fantasies]),
            augmented=noisy,
            pending=pending,
            **steer,
        )

    return believer


def _front_believer(
    model, layout: Layout, X_base: torch.Tensor, Y: np.ndarray, steer: Steer
) -> Callable[[torch.Tensor], AcquisitionFunction]:
    """Several objectives' :attr:`Acquisition.believer` (:func:`believes_pending`): the plug-in
    front's log EHVI with the pending points believed, on the believed GP's cached marginals
    (the believed points join the front), else on the GP itself."""

    def believer(X_pending: torch.Tensor) -> AcquisitionFunction:
        believed = cached_predictive(believe(model, X_pending))
        if believed is None:  # pending points believed on the GP itself
            return plugin_hypervolume(model, layout, X_base, Y, X_pending, **steer)
        X_all = torch.cat([X_base, X_pending])  # the believed points join the front
        return plugin_hypervolume(believed, layout, X_all, Y, **steer)

    return believer


def believes_pending(layout, data) -> bool:
    """Whether several objectives' pending points are believed (:func:`bbo.acquisition.believe`)
    rather than integrated over by qLogNEHVI's Monte Carlo: always without reported noise (the
    plug-in front, as for a point asked alone), and with it from three objectives on, where
    qLogNEHVI loops over its samples' box decompositions in Python (60 % of a point's time)."""
    return layout.multi and (data.Ymvar is None or len(layout.obj_idx) > 2)


def _join(note: str, more: str) -> str:
    return f"{note}; {more}" if note else more


def _incumbent(data, rows: np.ndarray, layout) -> np.ndarray | None:
    """The best observed feasible point among ``rows`` (encoded), or None."""
    feas = rows[data.feasible[rows]]
    if not len(feas):
        return None
    obj = layout.signed_objectives(data.Y[feas])[:, 0]
    return data.X[feas[int(np.argmax(obj))]]


def start_points(incumbent, space, placement, seed: int) -> torch.Tensor | None:
    """Optimizer starts besides BoTorch's raw-sample ones (k x 1 x d): the incumbent, jittered
    (at an observed point a noise-free log EI is flat: its gradient would not move L-BFGS), so one
    restart refines the region the search has found best; on continuous spaces only."""
    if incumbent is None or space.discrete_values():
        return None
    box = space.bounds()
    rng = np.random.default_rng(seed)
    x = incumbent + INCUMBENT_JITTER * (box[1] - box[0]) * rng.standard_normal(len(incumbent))
    x = np.clip(x, box[0], box[1])
    if not space.is_feasible(space.decode(x)):  # outside a parameter constraint: no seeded start
        return None
    return placement.tensor(x).reshape(1, 1, -1)
