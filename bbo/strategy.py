"""Generation strategy: which point to evaluate next, given a study's trials.

Space-filling initial design first (the centre of the space, or the priors' best guess where there
are priors, then scrambled Sobol; LLM warm-start candidates, when given, take the first slot and
the last ones, those only while the candidates measured so far are not worse than the design's
median), then GP-based Bayesian optimization (:mod:`bbo.surrogate`, :mod:`bbo.acquisition`), with
an exploitation step (the GP mean's optimum, or on deterministic objectives a local quadratic
model's once the GP stops resolving the optimum: :mod:`bbo.local_model`) every few asks where that
pays off. One instance
lives per study: it caches the fitted surrogate's hyperparameters between asks and is pure with
respect to storage (it sees trials, returns suggestions). Calls on one instance are serialized by a
lock.

Guarantees of :meth:`GenerationStrategy.suggest`: it returns exactly ``n`` suggestions, every one of
them valid for the search space and meeting every linear parameter constraint, distinct from the
pending trials and from each other (unless the space has fewer free points than that), and it never
raises: a failing model or optimizer yields ``origin="fallback"`` points with ``reason`` set.
With ``algorithm.seed`` set, the same trials give the same suggestions (on the CPU).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from botorch.acquisition.analytic import PosteriorMean
from botorch.acquisition.monte_carlo import qSimpleRegret
from botorch.acquisition.objective import ConstrainedMCObjective, ScalarizedPosteriorTransform
from botorch.acquisition.utils import get_infeasible_cost
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.sampling import manual_seed
from scipy.stats import qmc

from bbo.acquisition import (
    MC_SAMPLES,
    Layout,
    baseline_rows,
    budget,
    cheap_initial_conditions,
    evaluate,
    log_prob_feasible,
    make_acquisition,
    model_score,
    optimize,
    to_numpy,
)
from bbo.design import _to_box, center_encoded, sobol_design
from bbo.device import select_device
from bbo.local_model import quadratic_step
from bbo.priors import LogPrior, agrees_with_data, prior_mode
from bbo.spec import ParameterPrior, StudySpec
from bbo.space import Value
from bbo.surrogate import Surrogate
from bbo.trial import Origin, Trial, TrialState
from bbo.warping import OutcomeWarp

log = logging.getLogger(__name__)

MIN_MODEL_POINTS = 2  # completed trials needed before a GP is fit
CHEAP_INIT_ABOVE = 60  # model size above which optimizer starts come from a cheap analytic score
MIN_SEPARATION = 1e-8  # scaled encoded distance under which two points count as the same point (local model steps resolve ~1e-7)
ACTIVE, LIKELY_INFEASIBLE = "ACTIVE", "LIKELY_INFEASIBLE"
INFEASIBLE_PROB = (
    0.01  # max model probability of feasibility under which a study is declared likely infeasible
)
INFEASIBLE_EXTRA = 5  # completed trials beyond the initial design before that judgement is made
DETERMINISTIC_NOISE = (
    1e-4  # fitted noise variance (standardized) under which the objective counts as noise-free
)
EXPLOIT_MAX_DOUBLINGS = (
    3  # the gap between exploitation steps grows to at most 2**3 times algorithm.exploit_gap
)


@dataclass
class Suggestion:
    """A point to evaluate, where it came from, and why (fallback reason or LLM rationale)."""

    params: dict[str, Value]
    origin: str
    reason: str = ""
    rationale: str = ""


@dataclass
class AskInfo:
    """Diagnostics of the last :meth:`GenerationStrategy.suggest` call (for logs and benchmarks)."""

    n_completed: int = 0
    refit: bool = False
    n_model: int = 0
    fit_seconds: float = 0.0
    acq_seconds: float = 0.0
    total_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class _Data:
    trials: list[Trial]
    X: np.ndarray
    Y: np.ndarray
    Yvar: Optional[np.ndarray]
    score: np.ndarray
    feasible: np.ndarray
    Ym: np.ndarray  # Y warped for the model (:mod:`bbo.warping`), in ``model_layout`` units
    Ymvar: Optional[np.ndarray]


def _design_rows(data: "_Data") -> list[int]:
    """Rows of ``data`` that are initial-design trials (Sobol / centre / prior guess, or warm start)."""
    return [
        i
        for i, t in enumerate(data.trials)
        if t.origin in (Origin.INITIAL.value, Origin.LLM_WARMSTART.value)
    ]


class GenerationStrategy:
    """Sobol initial design (or LLM warm-start candidates), then Bayesian optimization."""

    def __init__(self, spec: StudySpec, priors: Optional[Sequence[ParameterPrior]] = None):
        self.spec = spec
        seed = spec.algorithm.seed
        self.seed = int(seed) if seed is not None else int.from_bytes(os.urandom(4), "little")
        self.n_initial = spec.algorithm.initial_size(spec.space.dim)
        self.priors = tuple(priors) if priors is not None else tuple(spec.priors)
        self.layout = Layout.of(spec)
        self.warp = OutcomeWarp.of(self.layout)
        self.model_layout = (
            self.warp.model_layout
        )  # constraint bounds in warped units: for everything model-facing
        self.placement = select_device(spec.algorithm.device)
        self.surrogate = Surrogate(spec.space, self.layout.m, spec.algorithm, self.placement)
        self._scale = np.maximum(spec.space.bounds()[1], 1.0)
        self._lock = threading.RLock()
        self._status_cache: tuple[tuple, tuple[str, str]] | None = None
        self._encoded: dict[int, tuple[dict, np.ndarray]] = {}  # trial id -> (params, encoding)
        self.last = AskInfo()

    # ---- public API ------------------------------------------------------------------------------
    def suggest(
        self,
        trials: Sequence[Trial],
        n: int = 1,
        *,
        warmstart: Sequence[Suggestion] = (),
        proposals: Sequence[Suggestion] = (),
        priors: Optional[Sequence[ParameterPrior]] = None,
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
            trials = list(trials)
            try:
                with manual_seed(self._call_seed(trials)):
                    out = self._suggest(
                        trials,
                        n,
                        warmstart,
                        proposals,
                        self.priors if priors is None else tuple(priors),
                    )
            except Exception as e:  # noqa: BLE001 - by contract, suggest never raises
                log.exception("generation failed; falling back to space-filling points")
                taken = self._encode_trials(trials)
                out = self._space_filling(
                    trials, n, taken, f"generation failed: {type(e).__name__}: {e}"
                )
            self.last.total_seconds = time.perf_counter() - t0
            return out

    def export_state(self):
        """The surrogate's fitted state (see :meth:`Surrogate.export_state`), for replicas to share."""
        with self._lock:
            return self.surrogate.export_state()

    def import_state(self, n_fit: int, hyper: dict) -> None:
        with self._lock:
            self.surrogate.import_state(n_fit, hyper)

    def status(self, trials: Sequence[Trial]) -> tuple[str, str]:
        """``(ACTIVE | LIKELY_INFEASIBLE, reason)``: CONFIG-style infeasibility declaration.

        LIKELY_INFEASIBLE when the study has outcome constraints, no completed trial meets them after
        at least ``n_initial + 5`` completed trials, and the GP's highest probability that all
        constraints hold, over a dense Sobol sample of the space and the observed points, is below 1 %.
        """
        if not self.spec.outcome_constraints:
            return ACTIVE, ""
        with self._lock:
            data = self._data(trials)
            n = len(data.trials)
            if n == 0 or data.feasible.any() or n < self.n_initial + INFEASIBLE_EXTRA:
                return ACTIVE, ""
            key = tuple(t.id for t in data.trials)
            if self._status_cache and self._status_cache[0] == key:
                return self._status_cache[1]
            try:
                with manual_seed(self._call_seed(trials)):
                    model, _, _ = self.surrogate.model(
                        data.X, data.Ym, data.Ymvar, data.score, seed=self.seed
                    )
                    box = _to_box(
                        self.spec.space,
                        qmc.Sobol(self.spec.space.dim, scramble=True, seed=self.seed).random(2048),
                    )
                    X = self.placement.tensor(np.vstack([box, data.X]))
                    p_max = float(log_prob_feasible(model, self.model_layout, X).exp().max())
            except Exception as e:  # noqa: BLE001
                return ACTIVE, f"feasibility check failed: {type(e).__name__}: {e}"
            if p_max >= INFEASIBLE_PROB:
                result = (ACTIVE, "")
            else:
                slack = self.layout.slack(data.Y)
                worst = [
                    f"{c} (closest observed: {float(data.Y[np.argmin(slack[:, k]), self.layout.constraints[k][0]]):g})"
                    for k, c in enumerate(self.spec.outcome_constraints)
                    if (slack[:, k] > 0).all()
                ]
                result = (
                    LIKELY_INFEASIBLE,
                    f"none of {n} completed trials meets the outcome constraints and the model gives at most "
                    f"{p_max:.2g} probability that any point does; never met: {', '.join(worst) or 'jointly'}",
                )
            self._status_cache = (key, result)
            return result

    # ---- generation -----------------------------------------------------------------------------------
    def _call_seed(self, trials: Sequence[Trial]) -> int:
        return (self.seed + 1_000_003 * len(trials)) % (2**31 - 1)

    def _suggest(self, trials, n, warmstart, proposals, priors) -> list[Suggestion]:
        space = self.spec.space
        taken = self._encode_trials(trials)  # every existing point, any state
        out: list[Suggestion] = []
        warm = self._fresh_warmstart(warmstart, taken) if len(trials) < self.n_initial else []
        size = self._design_size(trials, priors, len(warm))
        n_design = max(0, min(n, size - len(trials)))
        if n_design:
            if warm:
                out, taken = self._design_with_warmstart(
                    trials, n_design, size, warm, taken, priors
                )
            else:
                n_initial_used = sum(1 for t in trials if t.origin == Origin.INITIAL.value)
                c = self._opening_point(priors, taken) if n_initial_used == 0 else None
                if c is not None:
                    out.append(
                        Suggestion(
                            c, Origin.INITIAL.value, "the priors' best guess" if priors else ""
                        )
                    )
                    taken = np.vstack([taken, space.encode(c)[None]])
                for p in sobol_design(space, n_design - len(out), self.seed, skip=n_initial_used):
                    out.append(Suggestion(p, Origin.INITIAL.value))
                    taken = np.vstack([taken, space.encode(p)[None]])
        if len(out) < n:
            out.extend(self._bo(trials, n - len(out), out, taken, proposals, priors))
        return out

    def _design_size(self, trials: Sequence[Trial], priors, n_warm: int) -> int:
        """How many trials the initial design holds: ``n_initial``, or fewer once the data confirm the
        advice. If the trial at the priors' best guess, or a warm-start candidate, is the best of the
        completed design trials once there are ``d + 1`` of them, the design's remaining Sobol points are dropped
        (the remaining ``n_warm`` candidates still follow) and BO starts, weighted by the prior, sooner.
        Misleading advice is not the best of them, so it leaves the design as it was."""
        short = min(self.n_initial, self.spec.space.dim + 1)
        if (
            len(trials) >= self.n_initial
            or short >= self.n_initial
            or not (priors or any(t.origin == Origin.LLM_WARMSTART.value for t in trials))
        ):
            return self.n_initial
        data = self._data(trials)
        design = _design_rows(data)
        if len(design) < short:
            return self.n_initial
        best = data.trials[design[int(np.argmax(data.score[design]))]]
        advised = best.origin == Origin.LLM_WARMSTART.value
        if not advised and priors and not LogPrior(self.spec.space, priors, self.placement).empty:
            guess = prior_mode(self.spec.space, priors, center_encoded(self.spec.space))
            advised = self._too_close(guess, self._encoding(best)[None])
        return min(self.n_initial, len(trials) + n_warm) if advised else self.n_initial

    def _opening_point(self, priors, taken: np.ndarray) -> Optional[dict[str, Value]]:
        """The design's opening point: the priors' best guess, else the centre; None where it is
        infeasible or already taken."""
        space = self.spec.space
        c = space.decode(prior_mode(space, priors, center_encoded(space)))
        return c if space.is_feasible(c) and not self._too_close(space.encode(c), taken) else None

    def _fresh_warmstart(
        self, warmstart: Sequence[Suggestion], taken: np.ndarray
    ) -> list[tuple[Suggestion, dict]]:
        """The warm-start candidates not yet used (valid, distinct from every existing point), in order."""
        out = []
        for s in warmstart:
            p = self._valid(s.params)
            if p is None:
                continue
            x = self.spec.space.encode(p)
            if self._too_close(x, taken):
                continue
            taken = np.vstack([taken, x[None]])
            out.append((s, p))
        return out

    def _design_with_warmstart(
        self, trials, n_design: int, size: int, warm: list, taken: np.ndarray, priors
    ):
        """Initial design with warm-start candidates: the first candidate opens it, the rest close it,
        and those are used only while the candidates measured so far are not worse than the design's
        median (:meth:`_warmstart_agrees`); otherwise their slots go to Sobol points. With good
        candidates the design holds the same points as before, in another order; misleading ones
        cost one evaluation instead of all their slots."""
        space = self.spec.space
        out: list[Suggestion] = []
        n_initial_used = sum(1 for t in trials if t.origin == Origin.INITIAL.value)
        warm_used = sum(1 for t in trials if t.origin == Origin.LLM_WARMSTART.value)
        note, agrees = "", None  # the gate looks at completed trials only: one verdict per call
        for k in range(n_design):
            if warm and (warm_used == 0 or len(trials) + k >= size - len(warm)):
                if warm_used > 0 and agrees is None:
                    agrees = self._warmstart_agrees(trials)
                if warm_used == 0 or agrees:
                    s, p = warm.pop(0)
                    out.append(
                        Suggestion(p, s.origin or Origin.LLM_WARMSTART.value, s.reason, s.rationale)
                    )
                    taken = np.vstack([taken, space.encode(p)[None]])
                    warm_used += 1
                    continue
                warm = []
                note = "warm-start candidates set aside: the ones measured are worse than the design's median"
            p = (
                self._opening_point(priors, taken) if n_initial_used == 0 else None
            )  # right after the first candidate
            reason = "the priors' best guess" if p is not None and priors else note
            if p is None:
                p = sobol_design(space, 1, self.seed, skip=n_initial_used)[0]
            n_initial_used += 1
            out.append(Suggestion(p, Origin.INITIAL.value, reason))
            taken = np.vstack([taken, space.encode(p)[None]])
        return out, taken

    def _warmstart_agrees(self, trials: Sequence[Trial]) -> bool:
        """Whether the completed warm-start trials score, in median, at least as well as the median
        completed design trial (True while none is completed: no evidence against them yet)."""
        data = self._data(trials)
        design = _design_rows(data)
        warm = [i for i in design if data.trials[i].origin == Origin.LLM_WARMSTART.value]
        if not warm or len(design) < 2:
            return True
        return bool(np.median(data.score[warm]) >= np.median(data.score[design]))

    def _bo(
        self, trials, n, earlier: list[Suggestion], taken: np.ndarray, proposals, priors
    ) -> list[Suggestion]:
        space, layout = self.spec.space, self.model_layout
        data = self._data(trials)
        self.last.n_completed = len(data.trials)
        if len(data.trials) < MIN_MODEL_POINTS:
            return self._space_filling(
                trials,
                n,
                taken,
                f"waiting for data: {len(data.trials)} completed trial(s), the model needs {MIN_MODEL_POINTS}",
            )
        seed = self._call_seed(trials)
        try:
            model, rows, info = self.surrogate.model(
                data.X, data.Ym, data.Ymvar, data.score, seed=seed
            )
        except Exception as e:  # noqa: BLE001
            return self._space_filling(
                trials, n, taken, f"no usable surrogate: {type(e).__name__}: {e}"
            )
        self.last.refit, self.last.n_model, self.last.fit_seconds = (
            info.refit,
            info.n_model,
            info.fit_seconds,
        )
        fit_note = info.reason
        prior = LogPrior(space, priors, self.placement) if priors else None
        use_prior = prior is not None and not prior.empty
        if use_prior and not agrees_with_data(
            to_numpy(prior(self.placement.tensor(data.X)[:, None, :]))[:, 0], data.score
        ):
            use_prior = False
            fit_note = (
                fit_note + "; " if fit_note else ""
            ) + "prior set aside: the best trials are less likely under it than the rest"
        exponent = (
            self.spec.algorithm.prior_exponent / max(1, len(data.trials)) if use_prior else 0.0
        )
        origin = Origin.PRIOR_BO.value if use_prior else Origin.BO.value
        ta = time.perf_counter()
        P = self.placement
        pending = [t.params for t in trials if t.state is TrialState.PENDING] + [
            s.params for s in earlier
        ]
        chosen: list[torch.Tensor] = [P.tensor(space.encode(p))[None] for p in pending]
        props = [(s, p) for s in proposals if (p := self._valid(s.params)) is not None]
        base = rows[baseline_rows(data.score[rows], layout.multi)]
        try:
            acqf = make_acquisition(
                model,
                self.spec,
                layout,
                P.tensor(data.X[base]),
                data.Ym[rows],
                prior=prior,
                prior_exponent=exponent,
                seed=seed,
            )
        except Exception as e:  # noqa: BLE001
            log.info("acquisition construction failed: %s", e)
            return self._model_fallback(
                model, trials, n, taken, f"acquisition failed: {type(e).__name__}: {e}"
            )
        restarts, raw, maxiter = budget(len(rows), space.dim)
        cheap_init = (
            len(rows) > CHEAP_INIT_ABOVE
            and not layout.multi
            and not space.discrete_values()
            and not space.constraints
        )
        out: list[Suggestion] = []
        exploit = self._exploit_due(trials, data)
        for i in range(n):
            sug = (
                self._exploit(model, data, taken, restarts, raw, maxiter, fit_note, seed)
                if i == 0 and exploit
                else None
            )
            if sug is None:  # an acquisition step
                try:
                    acqf.set_X_pending(torch.cat(chosen, dim=0) if chosen else None)
                    ic = None
                    if cheap_init:
                        ic = cheap_initial_conditions(
                            model, layout, space, P, data.Ym[rows], 4 * raw, restarts, seed + i
                        )
                    x, _ = optimize(
                        acqf,
                        space,
                        P,
                        num_restarts=restarts,
                        raw_samples=raw,
                        maxiter=maxiter,
                        initial_conditions=ic,
                    )
                    sug = self._finish(acqf, x, taken, props, origin, fit_note)
                except Exception as e:  # noqa: BLE001
                    log.info("acquisition optimization failed: %s", e)
                    sug = self._model_fallback(
                        model,
                        trials,
                        1,
                        taken,
                        f"acquisition optimization failed: {type(e).__name__}: {e}",
                    )[0]
            out.append(sug)
            xe = space.encode(sug.params)
            taken = np.vstack([taken, xe[None]])
            chosen.append(P.tensor(xe)[None])
        self.last.acq_seconds = time.perf_counter() - ta
        return out

    def _exploit_due(self, trials: Sequence[Trial], data: _Data) -> bool:
        """Whether this ask opens with an exploitation step (cf. De Ath et al. 2021, "Greed is good"):
        EI-type acquisitions refine a found optimum slowly, the surrogate's predicted best point does
        it fast. Due after ``algorithm.exploit_gap`` acquisition steps since the last one, the gap
        doubling per consecutive exploitation step that did not beat every earlier trial.

        Only for one objective and continuous parameters, and not once two completed trials tie on
        the objective. A capped or quantized response is flat where the GP's
        mean says it slopes: on the ADMM kit exploiting it took 41 evaluations to the best instead
        of 32. With integer or categorical parameters the steps refined the continuous ones inside
        a wrong discrete setting (bench_core "mixed": 2 of 5 seeds stuck at regret 5 and 2.2)."""
        gap = self.spec.algorithm.exploit_gap
        if (
            gap <= 0
            or self.layout.multi
            or self.spec.space.discrete_values()
            or not len(data.trials)
        ):
            return False
        obj = self.layout.signed_objectives(data.Y)[:, 0]
        if len(np.unique(obj)) < len(obj):
            return False
        exploits = (Origin.BO_EXPLOIT.value, Origin.BO_LOCAL.value)
        bo = sorted(
            (t for t in trials if t.origin in (Origin.BO.value, Origin.PRIOR_BO.value) + exploits),
            key=lambda t: t.id,
        )
        since = next((k for k, t in enumerate(reversed(bo)) if t.origin in exploits), len(bo))
        ids = np.array([t.id for t in data.trials])
        row = {t.id: i for i, t in enumerate(data.trials)}

        def beat_all(t: Trial) -> bool:
            earlier = data.score[ids < t.id]
            return not len(earlier) or bool(data.score[row[t.id]] > earlier.max())

        last = [t for t in bo[-2:] if t.origin == Origin.BO_LOCAL.value and t.id in row]
        if (
            last
            and last[-1] is bo[-1]
            and not (len(last) == 2 and not any(beat_all(t) for t in last))
        ):
            # a local model step is followed by the next at once (trust-region methods converge
            # superlinearly); one that missed still put a point next to the optimum, which refines the
            # model, so only two misses in a row hand back to the gap schedule
            return True
        fails = 0
        for t in reversed(bo):
            if fails == EXPLOIT_MAX_DOUBLINGS:
                break  # more failures would not widen the gap
            if t.origin not in exploits or t.id not in row:
                continue  # an acquisition step, or an exploitation step with no result yet
            if not beat_all(t):
                fails += 1
                continue
            break
        return since >= gap * 2 ** min(fails, EXPLOIT_MAX_DOUBLINGS)

    def _exploit(
        self,
        model,
        data: _Data,
        taken: np.ndarray,
        restarts: int,
        raw: int,
        maxiter: int,
        note: str,
        seed: int,
    ) -> Optional[Suggestion]:
        """The maximizer of the posterior mean of the (signed) objective; with outcome constraints,
        of its expectation with infeasible outcomes replaced by a cost below every observed one
        (BoTorch's ``ConstrainedMCObjective``). Where the GP no longer resolves the optimum, the
        local quadratic model's optimum instead (:meth:`_local_step`). None where the point exists
        already or breaks a parameter constraint (the acquisition step takes the slot)."""
        space, P, layout = self.spec.space, self.placement, self.model_layout
        X = P.tensor(data.X)
        try:
            w = layout.objective_weights(**P.tkwargs)
            if layout.constraints:

                def objective(Z, X=None):
                    return Z @ w

                cost = get_infeasible_cost(X=X, model=model, objective=objective)
                acqf = qSimpleRegret(
                    model,
                    sampler=SobolQMCNormalSampler(sample_shape=torch.Size([MC_SAMPLES]), seed=seed),
                    objective=ConstrainedMCObjective(
                        objective, layout.constraint_callables(), infeasible_cost=cost
                    ),
                )
            else:
                acqf = PosteriorMean(model, posterior_transform=ScalarizedPosteriorTransform(w))
            x, _ = optimize(acqf, space, P, num_restarts=restarts, raw_samples=raw, maxiter=maxiter)
            local = self._local_step(model, data, x, taken)
        except Exception as e:  # noqa: BLE001
            log.info("exploitation step failed: %s", e)
            return None
        note = note + "; " if note else ""
        for point, origin, what in (
            (
                local,
                Origin.BO_LOCAL,
                "the local quadratic model's optimum, where the surrogate no longer resolves the objective",
            ),
            (to_numpy(x)[0], Origin.BO_EXPLOIT, "the surrogate's predicted best point"),
        ):
            if point is None:
                continue
            params = space.decode(point)
            if space.is_feasible(params) and not self._too_close(space.encode(params), taken):
                return Suggestion(params, origin.value, f"{note}exploitation step: {what}")
        return None

    def _local_step(
        self, model, data: _Data, x_gp: torch.Tensor, taken: np.ndarray
    ) -> Optional[np.ndarray]:
        """The local quadratic model's optimum (:mod:`bbo.local_model`), where it applies and the GP
        cannot tell it from its own predicted best: one unconstrained objective, observed without
        reported noise and fitted as noise-free, and a GP mean there within two posterior standard
        deviations of the mean at the GP's pick. None otherwise."""
        layout = self.model_layout
        if layout.constraints or data.Yvar is not None:
            return None
        noise = getattr(model.likelihood, "noise", None)
        if (
            noise is None
            or float(noise.detach().reshape(-1)[layout.obj_idx[0] if noise.numel() > 1 else 0])
            > DETERMINISTIC_NOISE
        ):
            return None
        xq = quadratic_step(data.X, self.layout.signed_objectives(data.Y)[:, 0])
        if xq is None or self._too_close(xq, taken):
            return None
        P = self.placement
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ~0 variance next to the data of a noiseless fit
            post = model.posterior(torch.cat([P.tensor(xq)[None], x_gp.reshape(1, -1)]))
            j, sign = layout.obj_idx[0], layout.signs[0]
            mu = sign * post.mean[..., j].reshape(-1)
            sd = post.variance[..., j].clamp_min(0).sqrt().reshape(-1)
        return xq if float(mu[0] + 2 * sd[0]) >= float(mu[1]) else None

    def _finish(
        self, acqf, x: torch.Tensor, taken: np.ndarray, props: list, origin: str, note: str
    ) -> Suggestion:
        """Decode the optimizer's point; repair it if rounding broke a constraint or hit an existing
        point; let proposals compete; consume the proposal used."""
        space = self.spec.space
        params = space.decode(to_numpy(x)[0])
        reason = note
        xe = space.encode(params)
        if not space.is_feasible(params) or self._too_close(xe, taken):
            why = (
                "violated a parameter constraint after rounding"
                if not space.is_feasible(params)
                else "repeated an existing point"
            )
            params = self._repair(acqf, to_numpy(x)[0], taken)
            if params is None:
                raise RuntimeError(f"optimizer's point {why} and no feasible alternative was found")
            reason = (
                reason + "; " if reason else ""
            ) + f"optimizer's point {why}: replaced by the best nearby alternative"
            xe = space.encode(params)
        cands = [(s, p) for s, p in props if not self._too_close(space.encode(p), taken)]
        if cands:
            X = self.placement.tensor(np.vstack([xe] + [space.encode(p) for _, p in cands]))
            vals = evaluate(acqf, X)
            j = int(torch.argmax(vals))
            if j > 0 and torch.isfinite(vals[j]) and vals[j] > vals[0]:
                s, p = cands[j - 1]
                props.remove((s, p))
                return Suggestion(p, s.origin or Origin.LLM_PROPOSAL.value, s.reason, s.rationale)
        return Suggestion(params, origin, reason)

    def _repair(self, acqf, x: np.ndarray, taken: np.ndarray) -> Optional[dict[str, Value]]:
        space = self.spec.space
        rng = np.random.default_rng(self.seed + len(taken))
        cands = []
        disc = space.discrete_values()
        for _ in range(
            64
        ):  # random floor/ceil roundings and small jitters of the optimizer's point
            y = x.copy()
            for i, g in disc.items():
                lo = g[g <= y[i]].max(initial=g[0])
                hi = g[g >= y[i]].min(initial=g[-1])
                y[i] = lo if rng.random() < 0.5 else hi
            cont = [i for i in range(space.dim) if i not in disc]
            y[cont] = np.clip(y[cont] + rng.normal(0, 0.02, len(cont)), 0, 1)
            cands.append(space.decode(y))
        cands += sobol_design(space, 128, self.seed + 17 + len(taken))
        ok = [
            p for p in cands if space.is_feasible(p) and not self._too_close(space.encode(p), taken)
        ]
        if not ok:
            return None
        vals = evaluate(acqf, self.placement.tensor(np.vstack([space.encode(p) for p in ok])))
        vals = torch.nan_to_num(vals, nan=-float("inf"))
        return ok[int(torch.argmax(vals))]

    def _model_fallback(
        self, model, trials, n: int, taken: np.ndarray, reason: str
    ) -> list[Suggestion]:
        """Best of random feasible candidates under a cheap model score; Sobol if that fails too."""
        space = self.spec.space
        try:
            cands = sobol_design(space, 512, self.seed + 31 + len(taken))
            cands = [p for p in cands if not self._too_close(space.encode(p), taken)]
            X = self.placement.tensor(np.vstack([space.encode(p) for p in cands]))
            s = torch.nan_to_num(model_score(model, self.model_layout, X), nan=-float("inf"))
            out = []
            for i in torch.argsort(s, descending=True).tolist():
                xe = space.encode(cands[i])
                if self._too_close(xe, taken):
                    continue
                out.append(
                    Suggestion(
                        cands[i],
                        Origin.FALLBACK.value,
                        reason + "; used the best of 512 random points under the model",
                    )
                )
                taken = np.vstack([taken, xe[None]])
                if len(out) == n:
                    return out
        except Exception as e:  # noqa: BLE001
            reason = f"{reason}; model scoring failed too ({type(e).__name__})"
        return self._space_filling(trials, n, taken, reason)

    def _space_filling(self, trials, n: int, taken: np.ndarray, reason: str) -> list[Suggestion]:
        """Sobol points after the ones already used, skipping existing points (fallback origin)."""
        space = self.spec.space
        used = sum(1 for t in trials if t.origin in (Origin.INITIAL.value, Origin.FALLBACK.value))
        out: list[Suggestion] = []
        skip = used
        for _ in range(8):
            for p in sobol_design(space, 2 * n, self.seed, skip=skip):
                xe = space.encode(p)
                if self._too_close(xe, taken):
                    continue
                out.append(Suggestion(p, Origin.FALLBACK.value, reason))
                taken = np.vstack([taken, xe[None]])
                if len(out) == n:
                    return out
            skip += 2 * n
        while len(out) < n:  # (almost) exhausted discrete space: repeats are all that is left
            out.append(
                Suggestion(
                    sobol_design(space, 1, self.seed + len(out), skip=skip)[0],
                    Origin.FALLBACK.value,
                    reason + "; space exhausted, repeating a point",
                )
            )
        return out

    # ---- data -------------------------------------------------------------------------------------------
    def _valid(self, params) -> Optional[dict[str, Value]]:
        try:
            return self.spec.space.validate_params(params)
        except Exception:  # noqa: BLE001 - invalid candidates are skipped, not errors
            return None

    def _encode_trials(self, trials: Sequence[Trial]) -> np.ndarray:
        """Encoded points of ``trials`` (unreadable ones skipped), reusing the last call's encodings
        by trial id: re-encoding every trial on every ask dominated initial-design asks."""
        new, rows = {}, []
        for t in trials:
            try:
                x = self._encoding(t)
            except Exception:  # noqa: BLE001
                continue
            new[t.id] = (t.params, x)
            rows.append(x)
        self._encoded = new  # only the current trials: nothing accumulates for deleted ones
        return np.vstack(rows) if rows else np.zeros((0, self.spec.space.dim))

    def _encoding(self, t: Trial) -> np.ndarray:
        """``t``'s encoded point: the cached one while its params are unchanged (raises if unreadable)."""
        hit = self._encoded.get(t.id)
        return (
            hit[1] if hit is not None and hit[0] == t.params else self.spec.space.encode(t.params)
        )

    def _too_close(self, x: np.ndarray, taken: np.ndarray) -> bool:
        if len(taken) == 0:
            return False
        return bool(
            np.min(np.sqrt(np.sum(((taken - x) / self._scale) ** 2, axis=1))) < MIN_SEPARATION
        )

    def _data(self, trials: Sequence[Trial]) -> _Data:
        names = self.spec.modeled_metrics
        space = self.spec.space
        used, X, Y, S = [], [], [], []
        for t in trials:
            if t.state is not TrialState.COMPLETED:
                continue
            try:
                y = [float(t.metrics[k].value) for k in names]
                x = self._encoding(t)
            except Exception:  # noqa: BLE001 - a trial we cannot read is not modeled
                continue
            if not (np.all(np.isfinite(y)) and np.all(np.isfinite(x))):
                continue
            used.append(t)
            X.append(x)
            Y.append(y)
            S.append([t.metrics[k].sem for k in names])
        m = len(names)
        Xa = np.asarray(X, dtype=float).reshape(-1, space.dim)
        Ya = np.asarray(Y, dtype=float).reshape(-1, m)
        Yvar = None
        if used and all(s is not None and np.isfinite(s) for row in S for s in row):
            Yvar = np.asarray(S, dtype=float) ** 2
        feas = self.layout.feasible(Ya)
        Ym, Ymvar = self.warp.apply(Ya, Yvar)
        return _Data(used, Xa, Ya, Yvar, self._score(Ya, feas), feas, Ym, Ymvar)

    def _score(self, Y: np.ndarray, feas: np.ndarray) -> np.ndarray:
        """Quality per row, higher is better, every feasible row above every infeasible one."""
        if len(Y) == 0:
            return np.zeros(0)
        obj = self.layout.signed_objectives(Y)
        if obj.shape[1] == 1:
            s = obj[:, 0]
        else:  # mean percentile rank over objectives
            s = np.mean(np.argsort(np.argsort(obj, axis=0), axis=0) / max(1, len(Y) - 1), axis=1)
        s = (s - s.min()) / max(np.ptp(s), 1e-12)
        violation = np.clip(self.layout.slack(Y), 0, None).sum(axis=1)
        return np.where(feas, s + 2.0, -violation / max(violation.max(), 1e-12))
