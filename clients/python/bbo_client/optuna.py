"""An Optuna sampler backed by a bbo server: ``optuna.create_study(sampler=BboSampler(address))``
makes an unchanged ``study.optimize(objective)`` script ask bbo for its points.

Needs ``pip install "./clients/python[optuna]"`` (bbo-client is not on PyPI). How it works (Optuna is define-by-run, bbo needs the
search space up front):

- Until the space is known, a trial's parameters come from an independent sampler (random by
  default), as Optuna's own model-based samplers do for their start-up trials.
- Once a trial has completed, the parameters every completed trial shares (Optuna's intersection
  search space) become a bbo study, or the sampler adopts the bbo study of that name if another
  process created it first. Its objectives are the Optuna study's directions, named after
  ``study.metric_names`` (default ``value``, or ``value_0``, ``value_1``, ... for several).
- From then on each trial's parameters come from bbo's ``Ask``; the bbo trial id rides along in
  the Optuna trial's system attributes (``bbo:trial_id``). Trials whose parameters were not asked
  (the start-up ones, enqueued ones) are attached to the bbo study with ``AddTrial`` when they
  complete, under a request id derived from the Optuna trial, so several processes attaching the
  same shared trial record it once.
- When a trial finishes, bbo is told: COMPLETE as COMPLETED with its value(s) (and its constraint
  values, feasible when <= 0, as bbo outcome constraints ``constraint_<key>``: those of
  ``constraints_func``, keyed 0, 1, ..., or of Optuna 5's ``trial.set_constraint(key, value)``;
  Optuna keeps them, so ``study.best_trial`` skips infeasible trials), FAIL as FAILED, and PRUNED
  as PRUNED with the reason "pruned by Optuna at step N" and its last intermediate value (which
  bbo's model learns from): evaluated and judged unpromising, a final outcome with a reason worth
  keeping (not ABANDONED: in bbo that means no result came back and a late result is still
  accepted; not FAILED: the evaluation worked). A trial Optuna fails as stale (heartbeats on an RDB
  storage: its worker died) is told FAILED at the next ask, as Optuna ends it.

Several Optuna processes (each its own Optuna study, or one shared Optuna storage) share one bbo
study by giving their samplers the same ``study_name``: each Ask sees the others' pending points.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.samplers._base import _process_constraints_after_trial
from optuna.search_space import IntersectionSearchSpace
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from bbo_client._adapt import (
    MAX_GRID,
    bbo_name,
    bbo_names,
    check_study_options,
    choice_labels,
)
from bbo_client.client import Client, StudyHandle
from bbo_client.errors import (
    AlreadyExists,
    BboError,
    Conflict,
    InvalidArgument,
    NotFound,
)
from bbo_client.model import (
    Categorical,
    Constraint,
    Float,
    Int,
    Objective,
    Ordinal,
    Parameter,
    StudyInfo,
    Trial,
)

__all__ = ["TRIAL_ID_ATTR", "BboSampler", "bbo_parameter", "bbo_value", "optuna_value"]

log = logging.getLogger(__name__)

TRIAL_ID_ATTR = "bbo:trial_id"  # the bbo trial an Optuna trial's parameters were asked for
STUDY_UID_ATTR = "bbo:study_uid"
# the Optuna trial (storage id) those two were written for: a copy of its system attributes on
# another trial (a RetryFailedTrialCallback retry, study.add_trials) names another trial's bbo id
OWNER_ATTR = "bbo:optuna_trial_id"
_BAD_NAME = re.compile(r"[^A-Za-z0-9_.\-]+")

try:  # Optuna 5: constraints_func's list and trial.set_constraint's values, as Optuna reads them
    from optuna.study._constrained_optimization import (
        _get_constraints_from_system_attrs as _optuna_constraints,
    )
except ImportError:  # Optuna 4: constraints_func's list only

    def _optuna_constraints(system_attrs: dict[str, Any]) -> dict[str, float]:
        return {str(i): c for i, c in enumerate(system_attrs.get("constraints") or ())}


def _constraints(system_attrs: dict[str, Any], objectives: Sequence[str]) -> dict[str, float]:
    """A trial's constraint values (feasible when <= 0) by bbo metric, ``constraint_<key>``; two
    keys naming one metric, or a metric named as an objective, are refused (one would be lost)."""
    values = _optuna_constraints(system_attrs)
    names = bbo_names(values, "constraint_", "constraints")
    for k, n in names.items():
        if n in objectives:
            raise InvalidArgument(
                f"constraint {k!r} becomes bbo metric {n!r}, the name of an objective: rename "
                "one (study.set_metric_names or the constraint's key)",
                field="constraints",
            )
    return {names[k]: float(v) for k, v in values.items()}


def _asked(trial: FrozenTrial) -> Trial | None:
    """The bbo trial ``trial``'s parameters were asked for; None if they were not asked (or its
    bbo attributes were copied from another Optuna trial: that trial's bbo trial, not its own)."""
    attrs = trial.system_attrs
    tid = attrs.get(TRIAL_ID_ATTR)
    if tid is None or attrs.get(OWNER_ATTR, trial._trial_id) != trial._trial_id:
        return None
    return Trial(int(tid), {}, study_uid=attrs.get(STUDY_UID_ATTR, ""))


def bbo_parameter(name: str, dist: BaseDistribution) -> Parameter:
    """The bbo parameter searching what an Optuna distribution allows (``name``: the bbo name).

    Floats and ints map to ``Float`` / ``Int`` (log scale kept); a stepped one to an ``Ordinal`` of
    its grid (up to ``MAX_GRID`` values; a longer grid is searched continuously and snapped);
    categorical choices (None, bool, int, float or str) to the string labels of a ``Categorical``.
    """
    if isinstance(dist, FloatDistribution):
        grid = _grid(dist.low, dist.high, dist.step)
        if grid is not None:
            return Ordinal(name, grid)
        return Float(name, dist.low, dist.high, dist.log)
    if isinstance(dist, IntDistribution):
        grid = _grid(dist.low, dist.high, dist.step) if dist.step != 1 else None
        if grid is not None:
            return Ordinal(name, [int(v) for v in grid])
        return Int(name, dist.low, dist.high, dist.log)
    if isinstance(dist, CategoricalDistribution):
        return Categorical(name, choice_labels(dist.choices))
    raise TypeError(f"parameter '{name}': no bbo parameter for Optuna's {type(dist).__name__}")


def _grid(low: float, high: float, step: float | None, limit: int = MAX_GRID) -> list[float] | None:
    if step is None:
        return None
    n = round((high - low) / step) + 1
    return [low + k * step for k in range(n)] if n <= limit else None


def optuna_value(dist: BaseDistribution, value: Any) -> Any:
    """A bbo trial's value as the Optuna distribution's external value."""
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[choice_labels(dist.choices).index(value)]
    if isinstance(dist, IntDistribution):
        v = round(float(value))
        if dist.step != 1:
            v = dist.low + round((v - dist.low) / dist.step) * dist.step
        return min(max(v, dist.low), dist.high)
    v = float(value)
    if dist.step is not None:
        v = dist.low + round((v - dist.low) / dist.step) * dist.step
    return min(max(v, dist.low), dist.high)


def _same(a: Parameter, b: Parameter) -> bool:
    return a.to_pb() == b.to_pb()


def _searches(dist: BaseDistribution, p: Parameter) -> bool:
    """Whether the bbo parameter ``p`` searches ``dist``: as :func:`bbo_parameter` makes it, or as
    an Ordinal of a grid of up to 10,000 steps (which earlier versions made, on a server allowing
    that many values)."""
    if _same(bbo_parameter(p.name, dist), p):
        return True
    if isinstance(p, Ordinal) and isinstance(dist, FloatDistribution):
        grid = _grid(dist.low, dist.high, dist.step, 10_000)
        return grid is not None and _same(Ordinal(p.name, grid), p)
    if isinstance(p, Ordinal) and isinstance(dist, IntDistribution) and dist.step != 1:
        grid = _grid(dist.low, dist.high, dist.step, 10_000)
        return grid is not None and _same(Ordinal(p.name, [int(v) for v in grid]), p)
    return False


def default_study_name(optuna_name: str) -> str:
    """A valid bbo study name (``[A-Za-z0-9_.-]{1,128}``) made from an Optuna study's name."""
    return (_BAD_NAME.sub("-", optuna_name).strip("-") or "optuna")[:128]


@dataclass
class _Bound:
    """The bbo study an Optuna study's trials are asked from, and its space as Optuna sees it."""

    handle: StudyHandle
    space: dict[str, BaseDistribution]  # by Optuna parameter name
    names: dict[str, str]  # Optuna parameter name -> bbo parameter name
    objectives: list[str]
    constraints: list[str]  # the bbo metrics of its outcome constraints, each <= 0
    attached: set[int] = field(default_factory=set)  # Optuna trial ids attached (or passed over)
    ended: set[int] = field(default_factory=set)  # asked Optuna trials told (or checked) ending


def _whole(study: Study) -> Study:
    """The study itself where Optuna's HyperbandPruner hands the sampler its per-bracket view (a
    ``_BracketStudy``: most attributes refused, ``metric_names`` among them, and only the
    bracket's trials listed); one bbo study serves every bracket."""
    inner = getattr(study, "_study", None) if hasattr(study, "_bracket_id") else None
    return inner if isinstance(inner, Study) else study


class BboSampler(BaseSampler):
    """Optuna sampler whose points come from a bbo server's study (see the module docstring).

    ``address``: the server (``host:port`` or any gRPC target); or pass a ready ``client``.
    ``study_name``: the bbo study (default: the Optuna study's name, made valid); samplers in
    several processes given the same name share one bbo study. ``independent_sampler``: for the
    parameters bbo does not search (start-up trials, parameters outside the shared space;
    default ``RandomSampler(seed)``); ``seed`` also seeds the bbo study the sampler creates, unless
    ``study_options`` names its own. ``n_startup_trials``: completed trials sampled independently
    before the sampler creates the bbo study from the parameters they all share (raise it for a
    conditional space, so that branch-only parameters drop out of it).
    ``constraints_func(frozen_trial) -> sequence of floats``: outcome constraints, feasible when
    every value is <= 0 (as Optuna's samplers take them).
    ``lease_seconds``: the lease of asked trials (0 = the server's default). ``study_options``:
    passed to :meth:`Client.create_study` when the sampler creates the bbo study (``n_initial``,
    ``seed``, ``description``, ``priors``, ...).
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        study_name: str | None = None,
        client: Client | None = None,
        independent_sampler: BaseSampler | None = None,
        n_startup_trials: int = 1,
        constraints_func: Callable[[FrozenTrial], Sequence[float]] | None = None,
        seed: int | None = None,
        worker_id: str | None = None,
        lease_seconds: float = 0.0,
        tell_patience: float = 600.0,
        **study_options: Any,
    ):
        if study_name is not None and default_study_name(study_name) != study_name:
            raise InvalidArgument(
                f"bbo study names are 1-128 of A-Z a-z 0-9 _ . -, got {study_name!r}",
                field="study_name",
            )
        check_study_options("BboSampler", study_options, "constraints")
        self._client = client if client is not None else Client(address)
        self._study_name = study_name
        self._independent = independent_sampler or RandomSampler(seed=seed)
        self._n_startup = max(1, int(n_startup_trials))
        self._constraints_func = constraints_func
        self._worker_id = worker_id or f"optuna-{socket.gethostname()}-{os.getpid()}"
        self._lease = lease_seconds
        self._patience = tell_patience
        if seed is not None:  # a seeded sampler is reproducible: the bbo study's points too
            study_options.setdefault("seed", seed)
        self._options = study_options
        self._bound: dict[str, _Bound] = {}  # by Optuna study name
        self._waiting: set[str] = set()  # bbo studies found with parameters not suggested yet
        self._warned: set[tuple[str, str]] = set()  # (bbo study, parameter) suggested elsewhere
        self._lock = threading.Lock()

    @property
    def client(self) -> Client:
        return self._client

    def bbo_study(self, study: Study) -> StudyHandle | None:
        """The bbo study serving this Optuna study, once there is one."""
        b = self._bind(study)
        return b.handle if b else None

    # ---- the sampler interface ------------------------------------------------------------------
    def reseed_rng(self) -> None:
        self._independent.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        b = self._bind(study)
        return dict(b.space) if b else {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        b = self._bind(study)
        if b is not None:
            self._attach_done(study, b)  # such as study.add_trial's since the last ask
        if not search_space or b is None or "fixed_params" in trial.system_attrs:
            return {}  # enqueued parameters win: that trial is attached when it completes
        (t,) = b.handle.ask(
            1, worker_id=self._worker_id, lease_seconds=self._lease, patience=self._patience
        )
        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, TRIAL_ID_ATTR, t.id)
        storage.set_trial_system_attr(trial._trial_id, STUDY_UID_ATTR, t.study_uid)
        storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, trial._trial_id)
        return {
            k: optuna_value(d, t.params[b.names[k]])
            for k, d in search_space.items()
            if k in b.names and b.names[k] in t.params
        }

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._independent.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._independent.before_trial(study, trial)
        if is_heartbeat_enabled(study._storage):
            self._fail_stale(study)

    def _fail_stale(self, study: Study) -> None:
        """Tell bbo FAILED the asked trials Optuna failed as stale (their worker stopped sending
        heartbeats: ``optimize`` fails them before its next ask, without ``after_trial``), so that
        bbo ends them as Optuna did instead of holding them PENDING until their lease runs out."""
        b = self._bound.get(_whole(study).study_name)
        if b is None:
            return
        for t in study._storage.get_all_trials(
            study._study_id, deepcopy=False, states=(TrialState.FAIL,)
        ):
            if t._trial_id in b.ended or (asked := _asked(t)) is None:
                continue
            b.ended.add(t._trial_id)
            reason = f"Optuna failed trial {t.number} as stale: its worker stopped heartbeating"
            try:  # a trial told already (by after_trial) keeps its tell: a repeat or a conflict
                b.handle.tell(asked, failed=True, reason=reason, patience=self._patience)
            except Conflict as e:
                log.debug("Optuna trial %d: bbo trial %d kept: %s", t.number, asked.id, e)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        attrs = trial.system_attrs
        if self._constraints_func is not None:  # stored where Optuna's samplers store them
            _process_constraints_after_trial(self._constraints_func, study, trial, state)
            attrs = study._storage.get_trial_system_attrs(trial._trial_id)
        self._independent.after_trial(study, trial, state, values)
        asked = _asked(trial)
        if asked is None:  # its parameters were not asked: attach it once it has a result
            if state == TrialState.COMPLETE and (b := self._bind(study)) is not None:
                self._attach(study, b, trial, list(values or []), attrs)
            return
        b = self._bind(study)
        assert b is not None, "a trial was asked from bbo, so the study is bound"
        b.ended.add(trial._trial_id)  # told here: not a stale trial for _fail_stale
        tid = asked.id
        try:
            moved = self._moved(b, trial, tid)
            if moved:  # bbo's point was not evaluated: its result must not be told for it
                reason = (
                    f"Optuna trial {trial.number} evaluated {moved}: the objective suggests "
                    "another range than the bbo study's, so Optuna sampled it independently"
                )
                b.handle.tell(asked, abandoned=True, reason=reason, patience=self._patience)
            elif state == TrialState.COMPLETE:
                metrics, bad = self._metrics(b, list(values or []), attrs)
                if bad:
                    b.handle.tell(asked, failed=True, reason=bad, patience=self._patience)
                else:
                    b.handle.tell(asked, metrics, patience=self._patience)
            elif state == TrialState.PRUNED:
                step = trial.last_step
                at = "" if step is None else f" at step {step}"
                last = "" if step is None else f" (last value {trial.intermediate_values[step]})"
                reason = f"pruned by Optuna{at}{last}"
                b.handle.tell(
                    asked,
                    self._pruned_metrics(b, trial),
                    pruned=True,
                    reason=reason,
                    patience=self._patience,
                )
            else:
                reason = (
                    f"Optuna trial {trial.number} failed: the objective raised, or returned a "
                    "value Optuna could not take (NaN, not a number, a wrong count)"
                )
                b.handle.tell(asked, failed=True, reason=reason, patience=self._patience)
        except BboError as e:
            raise type(e)(
                f"bbo trial {tid} of '{b.handle.name}' (Optuna trial {trial.number}, "
                f"{state.name}) could not be reported: {e.message}",
                field=e.field,
                code=e.code,
            ) from e

    def _moved(self, b: _Bound, trial: FrozenTrial, tid: int) -> str:
        """The parameters ``trial`` took at other values than bbo asked for, or "" (most trials:
        an objective suggesting a parameter as the bbo study has it gets bbo's value). One whose
        distribution changed (``suggest_float("x", 0, 1)`` where the study has [0, 2]) got bbo's
        value only if the new range holds it; otherwise Optuna sampled it independently."""
        changed = {
            k: trial.distributions[k]
            for k, d in b.space.items()
            if k in trial.distributions and trial.distributions[k] != d
        }
        if not changed:
            return ""
        params = b.handle.trial(tid).params
        moved = []
        for k, d in changed.items():
            bbo = optuna_value(b.space[k], params[b.names[k]])
            if trial.params[k] != bbo:
                moved.append(f"{k}={trial.params[k]!r} ({d}), not bbo's {k}={bbo!r}")
                if (b.handle.name, k) not in self._warned:
                    self._warned.add((b.handle.name, k))
                    log.warning(
                        "'%s' is suggested from %s but bbo study '%s' searches %s: a trial "
                        "evaluated elsewhere than bbo asked is told ABANDONED, not its result; "
                        "pass another study_name to search the new space",
                        k,
                        d,
                        b.handle.name,
                        b.space[k],
                    )
        return "; ".join(moved)

    # ---- binding an Optuna study to a bbo study -------------------------------------------------
    def _bind(self, study: Study) -> _Bound | None:
        """The bbo study for ``study``: adopted if one of the name exists, else created from the
        intersection search space once a trial has completed; None while neither is possible."""
        study = _whole(study)
        b = self._bound.get(study.study_name)
        if b is not None:
            return b
        with self._lock:
            b = self._bound.get(study.study_name)
            if b is None:
                b = self._bind_locked(study)
                if b is not None:
                    self._bound[study.study_name] = b
                    self._attach_done(study, b)
            return b

    def _bind_locked(self, study: Study) -> _Bound | None:
        name = self._study_name or default_study_name(study.study_name)
        objectives = self._objectives(study)
        try:
            info: StudyInfo | None = self._client.get_study(name)
        except NotFound:
            info = None
        if info is None:
            done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if len(done) < self._n_startup:
                return None
            space = {
                k: d
                for k, d in IntersectionSearchSpace().calculate(study).items()
                if not d.single()
            }
            if not space:
                return None
            names = bbo_names(space)
            try:
                handle = self._client.create_study(
                    name,
                    parameters=[bbo_parameter(names[k], d) for k, d in space.items()],
                    objectives=objectives,
                    constraints=[
                        Constraint(c, "<=", 0.0)
                        for c in _constraints_of(done, [o.name for o in objectives])
                    ],
                    **self._options,
                )
                info = handle.info(cached=True)
            except AlreadyExists:  # another process created it a moment ago
                info = self._client.get_study(name)
        return self._adopt(study, info, objectives)

    def _adopt(self, study: Study, info: StudyInfo, objectives: list[Objective]) -> _Bound | None:
        """Use the existing bbo study ``info`` if its space is one this Optuna study has seen; None
        while some of its parameters have not been suggested here yet; an error if they differ."""
        if [(o.name, o.goal) for o in info.objectives] != [(o.name, o.goal) for o in objectives]:
            raise InvalidArgument(
                f"bbo study '{info.name}' has objectives {_show(info.objectives)}, this Optuna "
                f"study optimizes {_show(objectives)}: pass another study_name, or set the "
                "Optuna study's metric_names / directions to match",
                field="study_name",
            )
        seen: dict[str, tuple[str, BaseDistribution]] = {}  # by bbo name
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            seen.update({bbo_name(k): (k, d) for k, d in t.distributions.items()})
        space: dict[str, BaseDistribution] = {}
        names: dict[str, str] = {}
        unseen = [p.name for p in info.parameters if p.name not in seen]
        if unseen:  # not suggested here yet: sample independently until they are
            if info.name not in self._waiting and any(t.state.is_finished() for t in trials):
                self._waiting.add(info.name)
                log.warning(
                    "bbo study '%s' searches %s, which this Optuna study has not suggested yet: "
                    "sampling independently until it has",
                    info.name,
                    unseen,
                )
            return None
        for p in info.parameters:
            k, d = seen[p.name]
            if not _searches(d, p):
                raise InvalidArgument(
                    f"bbo study '{info.name}' searches {p}, this Optuna study suggests "
                    f"'{k}' from {d}: pass another study_name for a different space",
                    field="study_name",
                )
            space[k], names[k] = d, p.name
        constraints = [c.metric for c in info.constraints if c.metric.startswith("constraint_")]
        handle = StudyHandle(self._client, info.name)
        handle._info = info
        return _Bound(handle, space, names, [o.name for o in objectives], constraints)

    def _objectives(self, study: Study) -> list[Objective]:
        names = study.metric_names or (
            ["value"]
            if len(study.directions) == 1
            else [f"value_{i}" for i in range(len(study.directions))]
        )
        return [
            Objective(n, "maximize" if d == StudyDirection.MAXIMIZE else "minimize")
            for n, d in zip(names, study.directions)
        ]

    # ---- results --------------------------------------------------------------------------------
    def _metrics(
        self, b: _Bound, values: list[float], attrs: dict[str, Any]
    ) -> tuple[dict[str, float], str]:
        """The metrics to tell for a completed trial (``attrs``: its system attributes, holding
        its constraints), or a reason it cannot count (non-finite, constraints bbo cannot take)."""
        metrics = dict(zip(b.objectives, values))
        try:
            constraints = _constraints(attrs, b.objectives)
        except InvalidArgument as e:
            return {}, e.message
        if b.constraints:
            if sorted(constraints) != sorted(b.constraints):
                return {}, (
                    f"the trial's constraints are {sorted(constraints)}, the study's "
                    f"{sorted(b.constraints)}"
                )
            metrics.update(constraints)
        bad = [f"{k}={v!r}" for k, v in metrics.items() if not math.isfinite(v)]
        return metrics, ("not finite: " + ", ".join(bad)) if bad else ""

    def _pruned_metrics(self, b: _Bound, trial: FrozenTrial) -> dict[str, float] | None:
        """A pruned trial's last intermediate value as its objective (as Optuna keeps it), so that
        bbo's model learns why the trial was stopped; None where there is none to tell."""
        step = trial.last_step
        if step is None or len(b.objectives) != 1:
            return None
        value = float(trial.intermediate_values[step])
        return {b.objectives[0]: value} if math.isfinite(value) else None

    def _attach(
        self,
        study: Study,
        b: _Bound,
        trial: FrozenTrial,
        values: list[float],
        attrs: dict[str, Any],
    ) -> None:
        """AddTrial a completed Optuna trial whose parameters bbo did not choose, if it has every
        parameter of the bbo study with the same distribution; recorded once across processes."""
        b.attached.add(trial._trial_id)
        if any(trial.distributions.get(k) != d for k, d in b.space.items()):
            return
        metrics, bad = self._metrics(b, values, attrs)
        if bad:
            return
        params = {b.names[k]: bbo_value(d, trial.params[k]) for k, d in b.space.items()}
        try:
            b.handle.add_trial(params, metrics, request_id=_request_id(study, trial))
        except InvalidArgument as e:  # outside the bbo study's space after all: not modeled
            log.info("Optuna trial %d not attached to bbo: %s", trial.number, e)

    def _attach_done(self, study: Study, b: _Bound) -> None:
        """Attach the completed trials not asked from bbo and not attached yet: those completed
        before the bbo study was bound, and those ``study.add_trial`` added (no after_trial)."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if _asked(t) is None and t._trial_id not in b.attached:
                self._attach(study, b, t, list(t.values or []), t.system_attrs)


def bbo_value(dist: BaseDistribution, value: Any) -> Any:
    """An Optuna parameter value as the bbo parameter of :func:`bbo_parameter` takes it (a stepped
    value is the very grid point :func:`_grid` computed)."""
    if isinstance(dist, CategoricalDistribution):
        return choice_labels(dist.choices)[int(dist.to_internal_repr(value))]
    step = (
        dist.step
        if isinstance(dist, FloatDistribution)
        else (dist.step if dist.step != 1 else None)
    )
    v = float(value)
    if step is not None:
        v = dist.low + round((v - dist.low) / step) * step
    return round(v) if isinstance(dist, IntDistribution) else float(v)


def _constraints_of(trials: Sequence[FrozenTrial], objectives: Sequence[str]) -> list[str]:
    """The bbo constraint metrics of the first of ``trials`` that has constraint values."""
    return next((list(c) for t in trials if (c := _constraints(t.system_attrs, objectives))), [])


def _request_id(study: Study, trial: FrozenTrial) -> str:
    """The same for every process reading the trial from a shared Optuna storage; different for
    trials of separate Optuna studies (their start times and parameters differ)."""
    key = json.dumps(
        [
            study.study_name,
            trial.number,
            trial.datetime_start.isoformat() if trial.datetime_start else "",
            sorted((k, repr(v)) for k, v in trial.params.items()),
        ]
    )
    return "optuna-" + hashlib.sha1(key.encode()).hexdigest()


def _show(objectives: Sequence[Objective]) -> str:
    return ", ".join(f"{o.goal} {o.name}" for o in objectives) or "none"
