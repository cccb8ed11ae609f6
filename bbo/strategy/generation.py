"""The generation strategy: the parts of :mod:`bbo.strategy` put together for one study.

An ask builds its training data at most once (:class:`~bbo.strategy.context.Ask`) and goes through
the initial design, then Bayesian optimization: the surrogate (:mod:`bbo.surrogate`), then per point
a replicate (:mod:`bbo.strategy.replication`) or an exploitation step where one is due, or an
acquisition step, each falling back where it fails. Once the ask's time bound passes
(:meth:`GenerationStrategy.bound_time`), a batch's remaining points are model-guided
(:meth:`~bbo.strategy.fallback.Fallback.model_guided`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from botorch.utils.sampling import manual_seed

from bbo.device import Placement, cuda_available, select_device
from bbo.spec import ParameterPrior, StudySpec
from bbo.strategy.acquisition_step import Acquisition, AcquisitionStep
from bbo.strategy.base import AskInfo, Recommendation, StudyStatus, Suggestion
from bbo.strategy.context import Ask, Context
from bbo.strategy.exploitation import Exploitation
from bbo.strategy.fallback import Fallback
from bbo.strategy.feasibility import Feasibility
from bbo.strategy.initial_design import InitialDesign
from bbo.strategy.model_data import TrainingData
from bbo.strategy.recommendation import Recommender
from bbo.strategy.replication import Replication
from bbo.surrogate import Surrogate
from bbo.trial import Origin, Trial, TrialState

if TYPE_CHECKING:
    from bbo.transfer_model import Transfer

log = logging.getLogger(__name__)

MIN_MODEL_POINTS = 2  # completed trials needed before a GP is fit
# Pending trials an acquisition step conditions on, the most recently asked: each is a believed
# point of the GP (or a dimension of qLogNEI's joint draws), so without a bound a study holding
# thousands took 8-90 s an ask, on a shared fit slot. Every pending point is still never handed
# out again; older ones are the likelier to belong to workers that went away.
MAX_PENDING_POINTS = 100


class GenerationStrategy:
    """Sobol initial design (or LLM warm-start candidates), then Bayesian optimization.

    Implements :class:`~bbo.strategy.base.Strategy` and the optional
    :class:`~bbo.strategy.base.SharesModelState`, :class:`~bbo.strategy.base.TimeBounded`,
    :class:`~bbo.strategy.base.Recommends`, :class:`~bbo.strategy.base.UsesSources` and
    :class:`~bbo.strategy.base.DescribesAsks`. Calls on one instance are serialized by a lock
    (:meth:`recommend` excepted); :attr:`last` describes the last ``suggest`` call."""

    def __init__(self, spec: StudySpec, priors: Sequence[ParameterPrior] | None = None):
        seed = spec.algorithm.seed
        seed = int(seed) if seed is not None else int.from_bytes(os.urandom(4), "little")
        self.spec, self.seed = spec, seed
        self.priors = tuple(priors) if priors is not None else tuple(spec.priors)
        # "auto" on a CUDA machine starts on the CPU and moves once the GP is large (_place)
        self._gpu_later = spec.algorithm.device == "auto" and cuda_available()
        self._assemble(select_device(spec.algorithm.device, n_points=0))
        self._lock = threading.RLock()
        self.last = AskInfo()
        self._until: float | None = None  # bound_time's bound for the next ask

    def _assemble(self, placement: Placement) -> None:
        """The strategy's parts on one device (see :mod:`bbo.device`)."""
        spec = self.spec
        self.ctx = Context.of(spec, self.seed, placement)
        self.n_initial = self.ctx.n_initial
        # bbo.transfer_model.Transfer when the spec names source studies
        self.transfer: Transfer | None = None
        self.surrogate: Surrogate
        if spec.transfer.enabled:
            from bbo.transfer_model import Transfer, TransferSurrogate

            self.surrogate = TransferSurrogate(
                spec.space, self.ctx.layout.m, spec.algorithm, placement
            )
            self.transfer = Transfer(self.ctx, self.surrogate)
        else:
            self.surrogate = Surrogate(spec.space, self.ctx.layout.m, spec.algorithm, placement)
        self.design = InitialDesign(self.ctx)
        self.acquisition = AcquisitionStep(self.ctx)
        self.exploitation = Exploitation(self.ctx)
        self.replication = Replication(self.ctx)
        self.fallback = Fallback(self.ctx)
        self.feasibility = Feasibility(self.ctx, self.surrogate)
        self.recommender = Recommender(self.ctx, self.surrogate)

    def _place(self, trials: Sequence[Trial]) -> None:
        """``device: auto`` with a GPU: move to it once the GP would condition on
        :data:`~bbo.device.AUTO_GPU_MIN_POINTS` points; the fitted state and sources carry over."""
        if not self._gpu_later:
            return
        n = sum(t.state is TrialState.COMPLETED for t in trials)
        placement = select_device("auto", n_points=min(n, self.spec.algorithm.max_model_points))
        if placement == self.ctx.placement:
            return
        state = self.surrogate.export_state()
        sources = self.transfer.sources if self.transfer is not None else None
        self._assemble(placement)
        if state is not None:
            self.surrogate.import_state(*state)
        if sources is not None:
            self.set_sources(sources)
        self._gpu_later = False

    # ---- public API ------------------------------------------------------------------------------
    def bound_time(self, until: float | None) -> None:
        """See :class:`~bbo.strategy.base.TimeBounded`: a batch's later points past ``until`` are
        the best of random points under the model (:meth:`Fallback.model_guided`)."""
        self._until = until

    def suggest(
        self,
        trials: Sequence[Trial],
        n: int = 1,
        *,
        warmstart: Sequence[Suggestion] = (),
        proposals: Sequence[Suggestion] = (),
        priors: Sequence[ParameterPrior] | None = None,
    ) -> list[Suggestion]:
        """``n`` new points, distinct from pending ones, jointly chosen.

        ``warmstart``: candidates (e.g. from an LLM) used, in order, before Sobol points while the
        initial design is not exhausted; ones too close to existing trials or invalid are skipped.
        ``proposals``: candidates that compete with the acquisition optimizer's best point and are
        returned only when the acquisition function ranks them higher. ``priors`` replaces the
        strategy's priors (by default ``spec.priors``) for this call.
        """
        if n <= 0:
            return []
        with self._lock:
            t0 = time.perf_counter()
            self.last = AskInfo()
            self._place(trials)
            ask = Ask(self.ctx, list(trials), self.priors if priors is None else tuple(priors))
            try:
                with manual_seed(ask.seed):
                    out = self._suggest(ask, n, warmstart, proposals)
            except Exception as e:  # by contract, suggest never raises
                log.exception("generation failed; falling back to space-filling points")
                taken = self.ctx.points.encode_trials(ask.trials)
                why = f"generation failed: {type(e).__name__}: {e}"
                out = self.fallback.space_filling(ask.trials, n, taken, why)
            self.last.total_seconds = time.perf_counter() - t0
            return out

    def status(self, trials: Sequence[Trial]) -> StudyStatus:
        """``(ACTIVE | LIKELY_INFEASIBLE, reason)``: see :mod:`bbo.strategy.feasibility`."""
        with self._lock:
            return self.feasibility.status(Ask(self.ctx, list(trials), self.priors))

    def recommend(self, trials: Sequence[Trial]) -> Recommendation | None:
        """The trial to report as best: on a noisy objective the best posterior mean, else None
        (the best observed). Not under the ask lock: see :mod:`bbo.strategy.recommendation`."""
        try:
            return self.recommender.recommend(trials)
        except Exception:  # noqa: BLE001 - a read never fails for this: the observed best
            log.exception("recommendation failed; reporting the best observed trial")
            return None

    def set_sources(self, sources: Sequence) -> None:
        """The source studies' data for the next asks (see :mod:`bbo.transfer`)."""
        if self.transfer is not None:
            with self._lock:
                self.transfer.set_sources(sources)

    def transfer_report(self) -> dict | None:
        """The weights the last BO ask gave the sources (None before any, or without transfer)."""
        w = None if self.transfer is None else self.transfer.weights
        return None if w is None else {"by_metric": w.by_metric, "target": w.target, "n": w.n}

    def export_state(self) -> tuple[int, dict] | None:
        """The surrogate's fitted state (see :meth:`Surrogate.export_state`), for replicas."""
        with self._lock:
            return self.surrogate.export_state()

    def import_state(self, n_fit: int, hyper: dict) -> None:
        """Adopt another replica's fitted state."""
        with self._lock:
            self.surrogate.import_state(n_fit, hyper)

    # ---- generation ------------------------------------------------------------------------------
    def _suggest(self, ask: Ask, n: int, warmstart, proposals) -> list[Suggestion]:
        taken = self.ctx.points.encode_trials(ask.trials)  # every existing point, any state
        design = self.design
        tr = self.transfer  # sources' best points open the design (never longer than n_initial)
        if tr is not None and tr.active and len(ask.trials) < self.ctx.n_initial:
            best = tr.warmstart()
            plan = tr.design(len(best))
            ctx = dataclasses.replace(self.ctx, n_initial=plan.size)
            design = InitialDesign(ctx, plan.region)
            warmstart = [*best, *warmstart]
        out, taken = design.suggest(ask, n, warmstart, taken)
        if len(out) < n:
            out.extend(self._bo(ask, n - len(out), out, taken, proposals))
        return out

    def _bo(
        self, ask: Ask, n: int, earlier: list[Suggestion], taken: np.ndarray, proposals
    ) -> list[Suggestion]:
        """``n`` points by Bayesian optimization, after the ``earlier`` ones of this ask."""
        ctx, trials, data = self.ctx, ask.trials, ask.data
        space, P = ctx.spec.space, ctx.placement
        self.last.n_completed = len(data.trials)
        if len(data.trials) < MIN_MODEL_POINTS:
            why = (
                f"waiting for data: {len(data.trials)} completed trial(s), "
                f"the model needs {MIN_MODEL_POINTS}"
            )
            return self.fallback.space_filling(trials, n, taken, why)
        transfer_note = self._prepare_transfer(data, ask.seed)
        try:
            model, rows, info = data.model(self.surrogate, ask.seed)
        except Exception as e:  # noqa: BLE001
            why = f"no usable surrogate: {type(e).__name__}: {e}"
            return self.fallback.space_filling(trials, n, taken, why)
        self.last.refit, self.last.n_model = info.refit, info.n_model
        self.last.fit_seconds = info.fit_seconds
        noise = data.noise.with_model(model, data.layout)
        try:
            self.recommender.remember(data, model, rows, info.predictive)
        except Exception:  # noqa: BLE001 - the recommendation is recomputed when read
            log.info("recording the recommendation failed", exc_info=True)
        located = (  # a source's location prior, where the user or the LLM gave none
            self.transfer.location_prior(data) if self.transfer and not ask.priors else ()
        )
        prior = self.acquisition.prior(ask, info.reason, located)
        if located and prior.exponent > 0 and self.transfer is not None:
            where = f"EI bent towards the best point of source '{self.transfer.located_from}'"
            transfer_note = f"{transfer_note}; {where} (a quantized objective)"
        ta = time.perf_counter()
        pending = [t.params for t in pending_trials(trials, data)] + [s.params for s in earlier]
        chosen: list[torch.Tensor] = [P.tensor(space.encode(p))[None] for p in pending]
        props = [(s, p) for s in proposals if (p := ctx.points.valid(s.params)) is not None]
        try:
            acq = self.acquisition.build(
                model, rows, ask, prior, info.predictive, noisy=noise.known
            )
        except Exception as e:  # noqa: BLE001
            log.info("acquisition construction failed: %s", e)
            why = f"acquisition failed: {type(e).__name__}: {e}"
            return self.fallback.model_guided(model, data.layout, trials, n, taken, why)
        if transfer_note:
            self._credit_transfer(acq, transfer_note, bool(located))
        out: list[Suggestion] = []
        first = self.replication.step(
            data, noise, lambda: self.recommender.fit_evidence(data, model, rows).objective, taken
        )
        exploit = first is None and self.exploitation.due(trials, data)
        repeats = 0
        for i in range(n):
            if i and self._out_of_time(time.perf_counter() - ta, i):
                why = (
                    f"the ask's time ran short after {i} of {n} points "
                    "(the caller's deadline or --max-ask-seconds)"
                )
                out += self.fallback.model_guided(model, data.layout, trials, n - i, taken, why)
                break
            sug = first if i == 0 else None
            n_points = self.fallback.exhausted(taken) if sug is None else 0
            if n_points:  # no new point is left: a deliberate repeat, not a failing optimizer
                sug = self.fallback.repeat_best(model, data, repeats, n_points)
                repeats += 1
            elif i == 0 and exploit:
                sug = self.exploitation.step(
                    model, data, noise, taken, acq.budget, acq.note, ask.seed, acq.predictive
                )
            if sug is None:  # an acquisition step
                try:
                    sug = self.acquisition.step(
                        acq, model, data.Ym[rows], chosen, taken, props, ask.seed + i
                    )
                except Exception as e:  # noqa: BLE001
                    log.info("acquisition optimization failed: %s", e)
                    why = f"acquisition optimization failed: {type(e).__name__}: {e}"
                    sug = self.fallback.model_guided(model, data.layout, trials, 1, taken, why)[0]
            out.append(sug)
            xe = space.encode(sug.params)
            taken = np.vstack([taken, xe[None]])
            chosen.append(P.tensor(xe)[None])
        self.last.acq_seconds = time.perf_counter() - ta
        return out

    def _prepare_transfer(self, data: TrainingData, seed: int) -> str:
        """The sources' prior on this ask's model (:meth:`Transfer.prepare`), and the note it
        leaves; where it fails the study goes on with a plain model, and the note says so."""
        if self.transfer is None:
            return ""
        try:
            return self.transfer.prepare(data, seed)
        except Exception as e:  # noqa: BLE001 - the study goes on without its sources
            log.info("transfer prior failed: %s", e, exc_info=True)
            self.transfer.surrogate.prior = None
            return f"transfer prior failed ({type(e).__name__}): plain model"

    def _credit_transfer(self, acq: Acquisition, note: str, located: bool) -> None:
        """Add the transfer's ``note`` to the acquisition steps' note; their points are
        ``transfer_bo`` where the sources carry weight in the model (or the piBO prior is a
        source's ``located`` one)."""
        acq.note = f"{acq.note}; {note}" if acq.note else note
        if (
            self.transfer is not None
            and self.transfer.carries_weight
            and (acq.origin == Origin.BO.value or located)
        ):
            acq.origin = Origin.TRANSFER_BO.value

    def _out_of_time(self, spent: float, done: int) -> bool:
        """Whether one more point, at the mean time of the ``done`` found in ``spent`` seconds,
        would end past the ask's time bound."""
        return self._until is not None and time.monotonic() + spent / done > self._until


def pending_trials(trials: Sequence[Trial], data: TrainingData) -> list[Trial]:
    """The trials an acquisition step believes pending, the :data:`MAX_PENDING_POINTS` most
    recently asked: the running ones, and PRUNED ones the model has no row for (a constraint's or
    another objective's metric never told), else the search went back to a pruned point again and
    again, a hair away."""
    modeled = {t.id for t in data.trials}
    out = sorted(
        (
            t
            for t in trials
            if t.state is TrialState.PENDING
            or (t.state is TrialState.PRUNED and t.id not in modeled)
        ),
        key=lambda t: t.id,
    )
    return out[-MAX_PENDING_POINTS:]
