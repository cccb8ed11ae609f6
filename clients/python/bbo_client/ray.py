"""A Ray Tune searcher backed by a bbo server: ``tune.TuneConfig(search_alg=BboSearch(address))``
makes an unchanged ``tune.Tuner`` run ask bbo for each trial's config.

Needs ``pip install "./clients/python[ray]"`` (bbo-client is not on PyPI). The Tuner's ``param_space`` (``tune.uniform``,
``tune.loguniform``, ``tune.randint``, ``tune.quniform``, ``tune.choice``, ...; nested dicts too)
becomes a bbo study whose one objective is the Tuner's ``metric`` (``mode`` min / max); each
``suggest`` is a bbo ``Ask``, and each finished trial is told: its last result's metric as
PRUNED when the scheduler given to BboSearch stopped it before its ``max_t``, else as COMPLETED;
an errored trial (or one whose last result lacks the metric or is not finite) as FAILED with the
reason.
While Tune runs a trial its bbo lease is renewed. Several Tuners (processes, machines) given the
same ``study_name`` share one bbo study, each ask seeing the others' pending points.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import math
import os
import pickle
import socket
import threading
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher, sample
from ray.tune.search.variant_generator import parse_spec_vars
from ray.tune.utils.util import flatten_dict, unflatten_dict

from bbo_client._adapt import MAX_GRID, bbo_names, check_study_options, choice_labels
from bbo_client.client import Client, StudyHandle, _lease_length
from bbo_client.errors import BboError, InvalidArgument
from bbo_client.model import (
    Categorical,
    Fixed,
    Float,
    Int,
    Objective,
    Ordinal,
    Parameter,
    Trial,
)

__all__ = ["BboSearch", "convert_search_space"]


@dataclass(frozen=True)
class _Param:
    """One searched entry of the Tune config: its flattened path and bbo parameter, and how a bbo
    value goes back (plain data, so Tune can pickle the searcher)."""

    path: str  # "a/b" for config["a"]["b"]
    parameter: Parameter
    is_int: bool = False
    q: float | None = None  # rounded to multiples of q (a quantized domain searched continuously)
    categories: tuple | None = None  # Tune's choices, in the order of the bbo labels

    def decode(self, v: Any) -> Any:
        """The Tune config value of a bbo trial's value."""
        if self.categories is not None:
            assert isinstance(self.parameter, Categorical)
            return self.categories[list(self.parameter.choices).index(v)]
        x = float(v)
        if self.q is not None:
            x = round(x / self.q) * self.q
        return round(x) if self.is_int else x


def convert_search_space(config: dict) -> list[_Param]:
    """The bbo parameters of a Tune ``param_space``'s search domains (constants are left to Tune).

    ``uniform`` / ``loguniform`` -> Float, ``randint`` / ``lograndint`` (upper bound exclusive) ->
    Int, ``quniform`` / ``qloguniform`` / ``qrandint`` / ``qlograndint`` (upper bound inclusive)
    -> Ordinal of the grid (Float / Int and rounding beyond ``MAX_GRID`` values), ``choice`` ->
    Categorical. Grid search, ``randn``, ``sample_from`` and a ``choice`` holding search domains
    are refused with the parameter's path.
    """
    _, domains, grids = parse_spec_vars(config or {})
    if grids:
        raise InvalidArgument(
            "tune.grid_search cannot be searched by bbo: use tune.choice instead",
            field="param_space",
        )
    _, domains, _ = parse_spec_vars(flatten_dict(config, prevent_delimiter=True))
    paths = ["/".join(str(k) for k in path) for path, _ in domains]
    names = bbo_names(paths)
    return [_param(p, names[p], d) for p, (_, d) in zip(paths, domains)]


def _param(path: str, name: str, domain: sample.Domain) -> _Param:
    smp = domain.get_sampler()
    q = None
    if isinstance(smp, sample.Quantized):
        q, smp = smp.q, smp.sampler
    log = isinstance(smp, sample.LogUniform)
    if isinstance(domain, sample.Categorical) and isinstance(smp, sample.Uniform):
        cats = tuple(domain.categories)
        if any(_holds_domain(c) for c in cats):
            raise InvalidArgument(
                "a choice holding search domains (tune.choice([{'lr': tune.uniform(...)}, ...])) "
                "cannot be searched by bbo: search each domain as its own parameter",
                field=f"param_space['{path}']",
            )
        return _Param(path, Categorical(name, choice_labels(cats)), categories=cats)
    if isinstance(domain, (sample.Float, sample.Integer)) and (
        log or isinstance(smp, sample.Uniform)
    ):
        is_int = isinstance(domain, sample.Integer)
        if q is not None:
            grid = _grid(domain.lower, domain.upper, q, is_int)
            if grid is not None and len(grid) == 1:
                return _Param(path, Fixed(name, grid[0]), is_int)
            if grid is not None:
                return _Param(path, Ordinal(name, grid, log), is_int)
            kind = Int if is_int else Float
            return _Param(path, kind(name, domain.lower, domain.upper, log), is_int, q)
        if is_int:  # randint / lograndint: the upper bound is exclusive
            if domain.upper - 1 <= domain.lower:
                return _Param(path, Fixed(name, int(domain.lower)), True)
            return _Param(path, Int(name, domain.lower, domain.upper - 1, log), True)
        if domain.upper <= domain.lower:  # tune.uniform(1, 1): Tune samples 1.0
            return _Param(path, Fixed(name, float(domain.lower)))
        return _Param(path, Float(name, domain.lower, domain.upper, log))
    raise InvalidArgument(
        f"{type(domain).__name__} with a {type(smp).__name__} sampler cannot be searched by bbo "
        "(use uniform, loguniform, randint, lograndint, their q- forms, or choice)",
        field=f"param_space['{path}']",
    )


def _holds_domain(v: Any) -> bool:
    if isinstance(v, sample.Domain):
        return True
    if isinstance(v, dict):
        return any(_holds_domain(x) for x in v.values())
    return isinstance(v, (list, tuple)) and any(_holds_domain(x) for x in v)


def _grid(low: float, high: float, q: float, is_int: bool) -> list | None:
    """The multiples of ``q`` in [low, high] (Tune's quantized domains include the upper bound)."""
    first, last = math.ceil(low / q - 1e-9), math.floor(high / q + 1e-9)
    if last - first + 1 > MAX_GRID or last < first:
        return None
    vals = [k * q for k in range(first, last + 1)]
    return [round(v) for v in vals] if is_int else vals


class BboSearch(Searcher):
    """Ray Tune searcher whose configs come from a bbo server's study (see the module docstring).

    ``address``: the server (``host:port`` or any gRPC target); or pass a ready ``client``.
    ``space``: a Tune param_space, if not given to the Tuner. ``metric`` / ``mode``: if not given to
    the TuneConfig. ``study_name``: the bbo study (default: ``ray-tune-`` and a random suffix);
    searchers given the same name share one study. ``lease_seconds``: the lease of asked trials
    (0 = the server's default). ``study_options``: passed to :meth:`Client.create_study`
    (``n_initial``, ``seed``, ``description``, ``constraints``, ``tracked_metrics``, ...; not
    ``fidelity`` / ``pruning``: early stopping is Tune's schedulers'); metrics named in
    ``constraints`` or ``tracked_metrics`` are read from the trial's last result too.
    ``scheduler``: the Tune scheduler given to the TuneConfig: its hooks are wrapped to note the
    trials it stops itself, which are told PRUNED below its ``max_t`` (see
    :meth:`on_trial_complete`); without it every trial that did not error is told COMPLETED.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        space: dict | None = None,
        metric: str | None = None,
        mode: str | None = None,
        study_name: str | None = None,
        client: Client | None = None,
        worker_id: str | None = None,
        lease_seconds: float = 0.0,
        tell_patience: float = 600.0,
        scheduler: Any = None,
        **study_options: Any,
    ):
        if isinstance(metric, (list, tuple)):
            raise InvalidArgument("BboSearch optimizes one metric: pass a string", field="metric")
        if study_options.keys() & {"fidelity", "pruning"}:  # Tune would run the promotions anew
            raise TypeError(
                "BboSearch() takes no 'fidelity' or 'pruning': a Tune searcher cannot stop, pause "
                "or resume trials; use a Tune scheduler (ASHAScheduler, HyperBandScheduler)"
            )
        check_study_options("BboSearch", study_options)
        super().__init__(metric=metric, mode=mode)
        self._address = address
        self._client = client
        self._study_name = study_name or f"ray-tune-{uuid.uuid4().hex[:12]}"
        self._worker_id = (  # each searcher its own: a restore abandons its own trials only
            worker_id or f"ray-tune-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self._lease = lease_seconds
        self._patience = tell_patience
        self._options = study_options
        self._params: list[_Param] | None = None
        self._handle: StudyHandle | None = None
        self._live: dict[str, Trial] = {}  # Tune trial id -> the bbo trial it evaluates
        self._last: dict[str, dict] = {}  # Tune trial id -> its latest intermediate result
        self._failed: dict[str, Trial] = {}  # Tune trial id -> its bbo trial, told FAILED
        self._lists: dict[str, list] = {}  # "a/b" -> a param_space list with searched values
        if scheduler is not None:
            _note_stops(scheduler)
        self._full = _full_budget(scheduler)  # (time attribute, max_t) of a scheduler's full run
        self._lock = threading.Lock()
        self._beats: dict[str, threading.Event] = {}  # Tune trial id -> stops its lease renewal
        _OPEN.add(self)
        if space:
            self._set_space(space)

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self._address)
        return self._client

    @property
    def study_name(self) -> str:
        return self._study_name

    # ---- the searcher interface -----------------------------------------------------------------
    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        self._metric = metric or self._metric  # the TuneConfig's win, as for Ray's searchers
        self._mode = mode or self._mode
        if self._params is not None:
            return False  # Tune then refuses a param_space that still holds search domains
        self._set_space(config)
        return True

    def _set_space(self, config: dict) -> None:
        self._params = convert_search_space(config)
        flat = flatten_dict(config, prevent_delimiter=True)  # lists are not flattened: kept whole
        self._lists = {
            k: v
            for k, v in flat.items()
            if isinstance(v, list) and any(p.path.startswith(k + "/") for p in self._params)
        }

    def suggest(self, trial_id: str) -> dict | None:
        h = self._study()
        (t,) = h.ask(
            1, worker_id=self._worker_id, lease_seconds=self._lease, patience=self._patience
        )
        with self._lock:
            self._live[trial_id] = t
        self._renew(trial_id)
        return self._config(t)

    def _renew(self, trial_id: str) -> None:
        """Keep the live trial's bbo lease from running out while Tune runs it (a third of the
        lease at a time, as :meth:`StudyHandle.optimize` does), until it is told."""
        with self._lock:
            t = self._live.get(trial_id)
            if t is None or trial_id in self._beats:
                return
            stop = self._beats[trial_id] = threading.Event()
        threading.Thread(
            target=self._renewing,
            args=(t, stop),
            name=f"bbo-lease-{self._study_name}-{t.id}",
            daemon=True,
        ).start()

    def _renewing(self, t: Trial, stop: threading.Event) -> None:
        with contextlib.suppress(ValueError):  # the client was closed: nothing to renew with
            self._study()._heartbeats(t, _lease_length(t, self._lease) / 3, self._lease, stop)

    def _stop_renewing(self, trial_id: str) -> None:
        with self._lock:
            stop = self._beats.pop(trial_id, None)
        if stop is not None:
            stop.set()

    def _config(self, t: Trial) -> dict:
        """The Tune config of the bbo trial ``t`` (its values decoded, nested as the space is)."""
        assert self._params is not None
        values = {p.path: p.decode(t.params[p.parameter.name]) for p in self._params}
        return _nest(values, self._lists)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Keep a live trial's latest result (a trial a scheduler paused (HyperBand) and then stops
        is completed by Tune without one), and its lease renewed: after a restore, a trial Tune
        resumes is renewed again from its first result."""
        with self._lock:
            if trial_id not in self._live:
                return
            self._last[trial_id] = result
        self._renew(trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Tell bbo the trial's end: PRUNED with its last value if the scheduler given to BboSearch
        stopped it below its ``max_t`` (Tune passes that result without having shown it to
        :meth:`on_trial_result`, or none for a paused trial), FAILED for an error, else COMPLETED:
        its trainable returned or said ``done``, a stopper or ``stop`` criteria ended it, or it
        reached ``max_t``."""
        self._stop_renewing(trial_id)
        by_scheduler = _take_stop(trial_id)
        with self._lock:
            t = self._live.pop(trial_id, None)
            last = self._last.pop(trial_id, None)
            rerun = t is None and self._errored_trial(result)
        if rerun:  # its bbo trial is FAILED for good: the point joins the study anew
            h = self._study()
            metrics, reason = self._metrics(result, error)
            if not reason:
                h.add_trial(rerun.params, metrics)
            return
        if t is None:
            return
        h = self._study()  # after a restore from Tune's checkpoint: reattached by name and spec
        final = last if result is None else result
        metrics, reason = self._metrics(final, error)
        early = "" if reason or not by_scheduler else self._stopped_early(final)
        try:
            if reason:
                h.tell(t, failed=True, reason=reason, patience=self._patience)
                with self._lock:
                    self._failed[trial_id] = t
            elif early:
                h.tell(t, metrics, pruned=True, reason=early, patience=self._patience)
            else:
                h.tell(t, metrics, patience=self._patience)
        except BboError as e:
            raise type(e)(
                f"bbo trial {t.id} of '{h.name}' (Tune trial {trial_id}) could not be "
                f"reported: {e.message}",
                field=e.field,
                code=e.code,
            ) from e

    def _stopped_early(self, final: dict | None) -> str:
        """Why the scheduler's stop of a trial was early ("" if it came at its ``max_t``: ASHA and
        HyperBand stop the trials that get there too)."""
        attr, max_t = self._full or (TRAINING_ITERATION, math.inf)
        at = (final or {}).get(attr)
        if _finite(at) and at >= max_t:
            return ""
        return f"stopped early by the Ray Tune scheduler at {attr}={at}"

    def _errored_trial(self, result: dict | None) -> Trial | None:
        """The bbo trial (told FAILED) of the errored trial that Tuner.restore(restart_errored=True)
        ran again as a new Tune trial, found by the config in its ``result``; it is forgotten."""
        if not result or self._params is None:
            return None
        for tid, t in self._failed.items():
            flat = flatten_dict(self._config(t), prevent_delimiter=True)
            if all(f"config/{k}" in result and result[f"config/{k}"] == v for k, v in flat.items()):
                return self._failed.pop(tid)
        return None

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        """Tuner.restore: the searcher's saved state back, and the bbo trials this searcher asked
        that it no longer tracks (asked after that save: Tune reruns none of them) ABANDONED."""
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))
        self._abandon_untracked()

    def _abandon_untracked(self) -> None:
        if self._params is None or not self._metric:
            return
        h = self._study()
        kept = {t.id for t in self._live.values()}
        for t in h.trials(states=["PENDING"]):
            if t.worker_id == self._worker_id and t.id not in kept:
                h.tell(
                    t,
                    abandoned=True,
                    reason="asked by a Ray Tune run restored without its trial",
                    patience=self._patience,
                )

    def close(self) -> None:
        """Stop renewing leases and tell the trials Tune never finished ABANDONED (Tune stops
        trials without telling its searcher when a run ends early: ``time_budget_s``,
        ``fail_fast``, a stopper's ``stop_all``, Ctrl-C). Done at exit; call it after
        ``Tuner.fit()`` in a process that goes on (a notebook)."""
        for trial_id in list(self._beats):
            self._stop_renewing(trial_id)
        with self._lock:
            live, self._live = self._live, {}
            self._last.clear()
        for t in live.values():
            with contextlib.suppress(BboError):
                self._study().tell(
                    t, abandoned=True, reason="the Ray Tune run ended without it", patience=2.0
                )

    def get_state(self) -> dict:
        return self.__getstate__()

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    # the client (a gRPC channel), the lock and the lease renewals stay behind when Tune pickles
    # the searcher
    def __getstate__(self) -> dict:
        gone = ("_client", "_lock", "_handle", "_beats")
        return {k: v for k, v in self.__dict__.items() if k not in gone}

    def __setstate__(self, state: dict) -> None:
        # a searcher pickled by an earlier version lacks what later ones keep: empty
        old = {"_lists": {}, "_last": {}, "_failed": {}, "_full": None}
        self.__dict__.update({**old, **state})
        self._client, self._handle, self._lock, self._beats = None, None, threading.Lock(), {}

    # ---- bbo ------------------------------------------------------------------------------------
    def _study(self) -> StudyHandle:
        """The bbo study, created (or reattached) from the search space at the first suggest."""
        if self._handle is not None:
            return self._handle
        if self._params is None:
            raise InvalidArgument(
                "BboSearch has no search space: give the Tuner a param_space or BboSearch a space",
                field="space",
            )
        if not self._metric or self._mode not in ("min", "max"):
            raise InvalidArgument(
                "BboSearch needs a metric and a mode ('min' or 'max'): set them in the "
                f"TuneConfig or BboSearch (got metric={self._metric!r}, mode={self._mode!r})",
                field="metric",
            )
        with self._lock:
            if self._handle is None:
                goal = "maximize" if self._mode == "max" else "minimize"
                self._handle = self.client.create_study(
                    self._study_name,
                    parameters=[p.parameter for p in self._params],
                    objectives=[Objective(self._metric, goal)],
                    **self._options,
                )
        return self._handle

    def _metrics(self, result: dict | None, error: bool) -> tuple[dict[str, float], str]:
        """What to tell for a finished trial: its metrics, or a reason it failed."""
        if error:
            return {}, "the Ray Tune trial raised an error (see its error file in the run's folder)"
        info = self._handle.info(cached=True) if self._handle else None
        wanted = [self._metric] + (
            [c.metric for c in info.constraints] + list(info.spec.tracked_metrics) if info else []
        )
        result = result or {}
        missing = [m for m in wanted if m not in result]
        if missing:
            return {}, f"the trial's last result has no {', '.join(map(repr, missing))}"
        metrics = {m: result[m] for m in dict.fromkeys(wanted)}
        bad = [f"{m}={v!r}" for m, v in metrics.items() if not _finite(v)]
        if bad:
            return {}, "not finite: " + ", ".join(bad)
        return {m: float(v) for m, v in metrics.items()}, ""


_OPEN: weakref.WeakSet[BboSearch] = weakref.WeakSet()  # the searchers to close at exit


@atexit.register
def _close_all() -> None:
    for s in list(_OPEN):
        with contextlib.suppress(Exception):  # a client closed already, a server gone
            s.close()


_STOPPED: set[str] = set()  # the Tune trial ids a wrapped scheduler stopped, until they are told
_HOOKS = (  # a scheduler's hooks that decide or stop (HyperBand stops paused trials in all of them)
    "on_trial_result",
    "on_trial_complete",
    "on_trial_remove",
    "on_trial_error",
    "choose_trial_to_run",
)


def _note_stops(scheduler: Any) -> None:
    """Wrap the scheduler instance's hooks to note the trials it stops itself: Tune shows the
    searcher neither who stopped a trial (the trainable's ``done``, a stopper, the scheduler) nor
    the scheduler's paused trials it stops."""
    for name in _HOOKS:
        if hasattr(scheduler, name) and not isinstance(scheduler.__dict__.get(name), _Noting):
            setattr(scheduler, name, _Noting(scheduler, name))


def _take_stop(trial_id: str) -> bool:
    """Whether a wrapped scheduler stopped the trial (forgotten once asked)."""
    try:
        _STOPPED.remove(trial_id)
    except KeyError:
        return False
    return True


class _Noting:
    """A scheduler's hook noting the trials the scheduler stops: those its ``on_trial_result``
    answers STOP, those it hands to ``stop_trial``. Plain data, pickled with the scheduler into
    the Tuner's state, so a ``Tuner.restore``'d scheduler notes them too."""

    def __init__(self, scheduler: Any, name: str):
        self.scheduler, self.name = scheduler, name

    def __call__(self, tune_controller: Any, *args: Any, **kwargs: Any) -> Any:
        hook = getattr(type(self.scheduler), self.name)
        decision = hook(self.scheduler, _StopNoting(tune_controller), *args, **kwargs)
        if self.name == "on_trial_result" and decision == TrialScheduler.STOP:
            _STOPPED.add(args[0].trial_id)
        return decision


class _StopNoting:
    """The Tune controller as a wrapped hook sees it: a trial it stops is noted first."""

    def __init__(self, controller: Any):
        self._controller = controller

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)

    def stop_trial(self, trial: Any) -> Any:
        _STOPPED.add(trial.trial_id)
        return self._controller.stop_trial(trial)


def _full_budget(scheduler: Any) -> tuple[str, float] | None:
    """The (time attribute, max_t) at which a Tune scheduler ends a trial that ran in full:
    ASHAScheduler's ``max_t``, HyperBandScheduler's, that of the one a ResourceChangingScheduler
    wraps; None for one without (MedianStoppingRule)."""
    inner = getattr(scheduler, "_base_scheduler", None)
    if inner is not None:  # ResourceChangingScheduler: the stops are its base scheduler's
        return _full_budget(inner)
    max_t = getattr(scheduler, "_max_t", None)
    if max_t is None:
        max_t = getattr(scheduler, "_max_t_attr", None)
    if max_t is None:
        return None
    return getattr(scheduler, "_time_attr", TRAINING_ITERATION), float(max_t)


def _nest(values: dict[str, Any], lists: dict[str, list]) -> dict:
    """The nested config of flattened ``values`` ({"a/b": v}). Tune merges a suggestion into the
    param_space dict by dict but replaces a list whole, so a list holding searched values is sent
    whole: a copy of the param_space's list (its constants kept) with the values put in."""
    if not lists:
        return unflatten_dict(values)
    out: dict = {}
    for path, v in values.items():
        parts = path.split("/")
        node = out
        for i, k in enumerate(parts[:-1]):
            prefix = "/".join(parts[: i + 1])
            if prefix in lists:
                if k not in node:
                    node[k] = copy.deepcopy(lists[prefix])
                node = node[k]
                for j in parts[i + 1 : -1]:  # below a list: list positions and dict keys
                    node = node[int(j)] if isinstance(node, list) else node[j]
                break
            node = node.setdefault(k, {})
        last = parts[-1]
        node[int(last) if isinstance(node, list) else last] = v
    return out


def _finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
