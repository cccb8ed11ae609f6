"""``Client``: a connection to a bbo server; ``StudyHandle``: ask / tell / optimize on one study."""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import operator
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import grpc

from bbo_client.errors import (
    GRPC_CONCURRENCY_REFUSAL,
    BboError,
    InvalidArgument,
    NotFound,
    TrialPruned,
    Unavailable,
    answer_lost,
    from_rpc_error,
    retryable,
)
from bbo_client.model import (
    STATE_TO_PB,
    Best,
    Constraint,
    Estimate,
    Fidelity,
    LinearConstraint,
    Llm,
    LlmCall,
    Objective,
    Parameter,
    Prior,
    Pruning,
    StopAdvice,
    StudyInfo,
    TellResult,
    Transfer,
    Trial,
    _time,
    _value_pb,
)
from bbo_client.v1 import service_pb2 as svc
from bbo_client.v1 import service_pb2_grpc
from bbo_client.v1 import study_pb2 as pb

DEFAULT_ADDRESS = "127.0.0.1:50051"
BEST_EVERY = 2.0  # seconds at least between the progress bar's reads of the study's best
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MetricsLike = float | int | Mapping[str, Any]


class Client:
    """A connection to a bbo server. Use as a context manager, or call :meth:`close`.

    Calls that fail with UNAVAILABLE (server restarting, not up yet) or are refused by a rate limit
    or a busy server (RESOURCE_EXHAUSTED with a RetryInfo: ``--rate-limit``,
    ``--max-concurrent-rpcs``) are retried with exponential backoff; Ask and AddTrial
    carry a request id so a retry never creates trials twice, and a repeated Tell is recognised by
    the server as a duplicate.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        ask_timeout: float = 600.0,
        retries: int = 8,
        rate_patience: float = 120.0,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        tls: bool | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_server_name: str | None = None,
        lb_policy: str | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ):
        """``api_key``: sent as ``authorization: Bearer`` (default: env ``BBO_API_KEY``).
        TLS: ``tls_ca`` (PEM file to trust; env ``BBO_TLS_CA``), ``tls_cert`` / ``tls_key`` (a client
        certificate for mutual TLS; env ``BBO_CLIENT_CERT`` / ``BBO_CLIENT_KEY``), ``tls=True`` for TLS
        with the system's roots, ``tls_server_name`` to check the certificate against another name;
        or pass ready ``credentials``.
        Several server replicas: ``address`` may be any gRPC target naming them all, e.g.
        ``dns:///bbo.example:50051`` (every A record) or ``ipv4:10.0.0.1:50051,10.0.0.2:50051``;
        ``lb_policy="round_robin"`` spreads calls over every healthy one (the default,
        ``pick_first``, uses one until it fails, then another). ``channel_options``: extra gRPC
        channel arguments. ``retries``: how often a call is retried while the server is away;
        ``rate_patience``: for how many seconds one is retried while a rate limit refuses it."""
        self.address = address
        opts = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            # reconnect promptly after a server restart (gRPC's default backoff grows to 120 s)
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if lb_policy:
            opts.append(("grpc.lb_policy_name", lb_policy))
        opts.extend(channel_options)
        if api_key is None:
            api_key = os.environ.get("BBO_API_KEY") or None
        api_key = _clean_key(api_key)
        tls_ca = tls_ca or os.environ.get("BBO_TLS_CA") or None
        tls_cert = tls_cert or os.environ.get("BBO_CLIENT_CERT") or None
        tls_key = tls_key or os.environ.get("BBO_CLIENT_KEY") or None
        if credentials is None and (tls or tls_ca or tls_cert or tls_key):
            credentials = _tls_credentials(tls_ca, tls_cert, tls_key)
        if tls_server_name:
            opts.append(("grpc.ssl_target_name_override", tls_server_name))
        self._channel = (
            grpc.secure_channel(address, credentials, options=opts)
            if credentials
            else grpc.insecure_channel(address, options=opts)
        )
        self._stub = service_pb2_grpc.BboServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout, self.ask_timeout = timeout, ask_timeout
        self.retries, self.rate_patience, self.backoff, self.max_backoff = (
            retries,
            rate_patience,
            backoff,
            max_backoff,
        )

    # ---- plumbing -------------------------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server accepts connections (raises Unavailable after ``timeout``)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Unavailable(
                f"no bbo server answered at {self.address} within {timeout:g}s"
            ) from None

    def _call(
        self,
        method: str,
        request,
        timeout: float | None = None,
        patience: float | None = None,
        lost: list[BboError] | None = None,
    ):
        """One RPC; retried with jittered exponential backoff while it fails in a way that may pass
        later (:func:`retryable`): UNAVAILABLE ``self.retries`` times, a refusal for load (a rate
        limit's or a cap's, which says when to come back, or gRPC's own past the server's
        concurrent calls) for ``self.rate_patience`` seconds; with ``patience``, either for that
        many seconds. ``lost``: for a call that may be sent again after its answer was lost (its
        retry's answer says what became of the first): DEADLINE_EXCEEDED is retried as
        UNAVAILABLE is, and each attempt that may have run on the server unanswered
        (:func:`answer_lost`) is appended to it."""
        fn = getattr(self._stub, method)
        delay = self.backoff
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                return fn(request, timeout=timeout or self.timeout, metadata=self._metadata)
            except grpc.RpcError as e:
                err = from_rpc_error(e)
            attempt += 1
            unanswered = lost is not None and answer_lost(err)
            if unanswered:
                lost.append(err)
            wait = max(delay * (0.5 + random.random()), err.retry_after or 0.0)
            if patience is not None:
                more = time.monotonic() + wait - start < patience
            elif err.retry_after is not None or err.message == GRPC_CONCURRENCY_REFUSAL:
                more = time.monotonic() + wait - start < self.rate_patience
            else:
                more = attempt <= self.retries
            if not ((retryable(err) or unanswered) and more):
                raise err
            time.sleep(wait)
            delay = min(delay * 2, self.max_backoff)

    # ---- studies --------------------------------------------------------------------------------
    def create_study(
        self,
        name: str,
        parameters: Sequence[Parameter],
        objectives: str | Objective | Sequence[str | Objective],
        *,
        constraints: Sequence[Constraint] = (),
        parameter_constraints: Sequence[LinearConstraint] = (),
        tracked_metrics: Sequence[str] = (),
        description: str = "",
        n_initial: int = 0,
        seed: int | None = None,
        device: str = "",
        priors: Sequence[Prior] = (),
        llm: Llm | None = None,
        reference_point: Mapping[str, float] | None = None,
        max_fit_points: int = 0,
        max_model_points: int = 0,
        prior_exponent: float = 0.0,
        exploit_gap: int = 0,
        fidelity: Fidelity | None = None,
        pruning: Pruning | None = None,
        transfer: Transfer | None = None,
    ) -> StudyHandle:
        """Create a study, or reattach to it if one of that name exists with the same spec.

        ``objectives``: a metric name (minimized), an :class:`Objective`, or a list of them.
        ``fidelity``: budgets (epochs, a data fraction...) for multi-fidelity optimization;
        ``pruning``: how trials are stopped early (see :class:`Pruning`).
        ``transfer``: learn from earlier studies (:class:`Transfer`); a named source that is not a
        study of this tenant raises :class:`NotFound`.
        Raises :class:`AlreadyExists` when the name is taken by a different spec.
        """
        if isinstance(objectives, (str, Objective)):
            objectives = [objectives]
        objs = [Objective(o) if isinstance(o, str) else o for o in objectives]
        spec = pb.StudySpec(
            parameters=_built(parameters, "spec.parameters"),
            parameter_constraints=_built(parameter_constraints, "spec.parameter_constraints"),
            objectives=_built(objs, "spec.objectives"),
            outcome_constraints=_built(constraints, "spec.outcome_constraints"),
            tracked_metrics=list(tracked_metrics),
            description=description,
            priors=_built(priors, "spec.priors"),
        )
        a = spec.algorithm
        a.n_initial, a.device, a.max_fit_points, a.max_model_points, a.prior_exponent = (
            n_initial,
            device,
            max_fit_points,
            max_model_points,
            prior_exponent,
        )
        a.exploit_gap = exploit_gap  # 0 = the server's default (2), < 0 = no exploitation steps
        if seed is not None:
            a.seed = seed
        for k, v in (reference_point or {}).items():
            a.reference_point[k] = float(v)
        for field, part in (
            ("llm", llm),
            ("fidelity", fidelity),
            ("pruning", pruning),
            ("transfer", transfer),
        ):
            if part is not None:
                getattr(spec, field).CopyFrom(_built([part], f"spec.{field}", indexed=False)[0])
        resp = self._call("CreateStudy", svc.CreateStudyRequest(name=name, spec=spec))
        h = StudyHandle(self, resp.study.name)
        h.created = resp.created
        h._info = StudyInfo.from_pb(resp.study)
        return h

    def study(self, name: str) -> StudyHandle:
        """A handle on an existing study (raises :class:`NotFound`)."""
        h = StudyHandle(self, name)
        h._info = self.get_study(name)
        return h

    def get_study(self, name: str) -> StudyInfo:
        return StudyInfo.from_pb(self._call("GetStudy", svc.GetStudyRequest(name=name)))

    def list_studies(self, page_size: int = 100) -> list[StudyInfo]:
        out, token = [], ""
        while True:
            r = self._call(
                "ListStudies", svc.ListStudiesRequest(page_size=page_size, page_token=token)
            )
            out.extend(StudyInfo.from_pb(s) for s in r.studies)
            token = r.next_page_token
            if not token:
                return out

    def delete_study(self, name: str) -> bool:
        """Delete the study ``name`` and everything of it; True once it is gone. Raises
        :class:`NotFound` where no study has that name. Retried as every call is, and past a
        deadline too: an attempt that failed UNAVAILABLE or DEADLINE_EXCEEDED may have deleted the
        study with its answer lost, so a NOT_FOUND answering a retry after one means it did (True),
        not an error (docs/operations.md, "Retried calls")."""
        lost: list[BboError] = []
        try:
            return self._call("DeleteStudy", svc.DeleteStudyRequest(name=name), lost=lost).deleted
        except NotFound:
            if lost:
                return True
            raise


def _tls_credentials(ca: str | None, cert: str | None, key: str | None) -> grpc.ChannelCredentials:
    if bool(cert) != bool(key):
        raise InvalidArgument(
            "a client certificate needs both tls_cert and tls_key", field="tls_cert"
        )

    def read(path: str | None) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )


def _built(parts: Sequence[Any], where: str, indexed: bool = True) -> list[Any]:
    """Each builder's message; one refused names its field as the server would
    (``spec.parameters[1].high``), where the builder knows only its own (``high``)."""
    out = []
    for i, part in enumerate(parts):
        try:
            out.append(part.to_pb())
        except InvalidArgument as e:
            at = f"{where}[{i}]" if indexed else where
            raise InvalidArgument(e.message, field=f"{at}.{e.field}" if e.field else at) from None
    return out


def _split_metric(v: Any) -> tuple[Any, Any]:
    """(value, sem) of a metric given as value, (value, sem) or {"value", "sem"}; sem None = not given."""
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return v[0], v[1]
    if isinstance(v, Mapping) and "value" in v:
        return v["value"], v.get("sem")
    return v, None


def _metric_pb(v: Any, name: str) -> pb.MetricValue:
    """A metric (see :func:`_split_metric`); numbers of any kind (numpy scalars too)."""
    value, sem = _split_metric(v)
    m = pb.MetricValue(value=_number(value, name))
    if sem is not None:
        m.sem = _number(sem, name)
    return m


def _number(x: Any, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise InvalidArgument(
            f"metric value must be a number, got {x!r}", field=f"metrics['{name}']"
        )
    return float(x)


def _short(x: Any, limit: int = 80) -> str:
    """``repr(x)``, cut to ``limit`` characters (for a message)."""
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _trial_id(t: int | Trial) -> int:
    return t.id if isinstance(t, Trial) else int(t)


def _step(step) -> int:
    """A report's step as the int64 it is sent as: a fraction or a non-number is refused by name
    (protobuf's own TypeError failed the trial with a message about its internals)."""
    try:
        whole = operator.index(step)
    except TypeError:
        whole = int(step) if isinstance(step, float) and step.is_integer() else None
    if whole is None:
        raise InvalidArgument(
            f"a step is a whole number (an epoch, an iteration), got {step!r}", field="step"
        )
    return whole


def _study_uid(t: int | Trial) -> str:
    """The uid of a Trial's study (checked by the server); a bare trial id carries none."""
    return t.study_uid if isinstance(t, Trial) else ""


class StudyHandle:
    """Ask, tell and inspect one study."""

    def __init__(self, client: Client, name: str):
        self.client = client
        self.name = name
        self.created = False
        self._info: StudyInfo | None = None

    def __repr__(self) -> str:
        return f"StudyHandle({self.name!r})"

    # ---- ask / tell -----------------------------------------------------------------------------
    def ask(
        self,
        count: int = 1,
        *,
        worker_id: str = "",
        lease_seconds: float = 0.0,
        request_id: str | None = None,
        patience: float | None = None,
    ) -> list[Trial]:
        """``count`` trials to evaluate (stored PENDING on the server before they are returned).
        ``patience``: as in :meth:`tell` (a retried Ask keeps its request id: never two sets of trials)."""
        req = svc.AskRequest(
            study=self.name,
            count=count,
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            request_id=request_id or uuid.uuid4().hex,
        )
        r = self.client._call("Ask", req, timeout=self.client.ask_timeout, patience=patience)
        return [Trial.from_pb(t) for t in r.trials]

    def tell(
        self,
        trial: int | Trial,
        metrics: MetricsLike | None = None,
        *,
        failed: bool = False,
        abandoned: bool = False,
        pruned: bool = False,
        reason: str = "",
        request_id: str | None = None,
        patience: float | None = None,
        budget: float | None = None,
    ) -> TellResult:
        """Report a trial's metrics (``{name: value}``, ``{name: (value, sem)}``, or a bare number
        for a single-objective study), or its failure with ``failed=True, reason=...``, or that it
        was stopped early with ``pruned=True`` (metrics optional: its last values).
        ``budget`` (studies with a fidelity): what the metrics were measured at; default the
        budget of the trial as asked (a :class:`Trial` passed carries it), or for ``pruned=True``
        the largest budget it reported (a stopped trial did not reach the budget it was asked at).
        ``patience``: retry a failure that may pass later (server away, rate limit) for this many
        seconds instead of the client's ``retries`` times. ``request_id`` (default: a new one per
        call, the same on its retries): the server answers a retry under it as the tell it
        repeats, whatever became of the trial since. Pass the :class:`Trial` rather than its id
        in a study with promotion: a continued trial's result equal to the one that paused it
        is told apart by its budget (docs/operations.md, "Retried calls")."""
        if budget is None and isinstance(trial, Trial) and not pruned:
            budget = trial.budget
        req = svc.TellRequest(
            study=self.name,
            trial_id=_trial_id(trial),
            reason=reason,
            request_id=request_id or uuid.uuid4().hex,
            study_uid=_study_uid(trial),
            budget=float(budget or 0.0),
        )
        if failed:
            req.state = pb.TRIAL_STATE_FAILED
        elif abandoned:
            req.state = pb.TRIAL_STATE_ABANDONED
        elif pruned:
            req.state = pb.TRIAL_STATE_PRUNED
        else:
            req.state = pb.TRIAL_STATE_COMPLETED
        for k, v in self._metrics_dict(metrics).items():
            req.metrics[k].CopyFrom(_metric_pb(v, k))
        r = self.client._call("Tell", req, patience=patience)
        return TellResult(Trial.from_pb(r.trial), r.duplicate)

    def _metrics_dict(self, metrics: MetricsLike | None) -> dict[str, Any]:
        if metrics is None:
            return {}
        if isinstance(metrics, Mapping):
            return dict(metrics)
        objs = self.info(cached=True).objectives
        if len(objs) != 1:  # a tuple (Optuna's habit) is as ambiguous as a number: say what came
            names = ", ".join(o.name for o in objs)
            raise InvalidArgument(
                "a bare number is only accepted for a single-objective study: pass a dict "
                f"{{name: value}} with each of the {len(objs)} objectives ({names}), "
                f"got {type(metrics).__name__} {_short(metrics)}",
                field="metrics",
            )
        return {objs[0].name: metrics}

    def add_trial(
        self,
        params: Mapping[str, Any],
        metrics: MetricsLike | None = None,
        *,
        failed: bool = False,
        request_id: str | None = None,
    ) -> Trial:
        """Attach a point evaluated elsewhere (origin ``user``)."""
        req = svc.AddTrialRequest(
            study=self.name,
            request_id=request_id or uuid.uuid4().hex,
            state=pb.TRIAL_STATE_FAILED if failed else pb.TRIAL_STATE_COMPLETED,
        )
        for k, v in params.items():
            req.parameters[k].CopyFrom(_value_pb(v, f"parameters['{k}']"))
        for k, v in self._metrics_dict(metrics).items():
            req.metrics[k].CopyFrom(_metric_pb(v, k))
        return Trial.from_pb(self.client._call("AddTrial", req))

    def report_intermediate(
        self,
        trial: int | Trial,
        step: int,
        value: float,
        budget: float | None = None,
    ) -> bool:
        """Report the first objective's value at ``step``; True means: stop this trial early.
        ``budget``: what the value was measured at (studies with a fidelity; default the step)."""
        return self.report(trial, step, value, budget).should_stop

    def report(
        self,
        trial: int | Trial,
        step: int,
        value: float,
        budget: float | None = None,
        patience: float | None = None,
    ) -> StopAdvice:
        """As :meth:`report_intermediate`, with the pruning policy's reason."""
        r = self.client._call(
            "ReportIntermediate",
            svc.ReportIntermediateRequest(
                study=self.name,
                trial_id=_trial_id(trial),
                step=_step(step),
                value=float(value),
                study_uid=_study_uid(trial),
                budget=float(budget or 0.0),
            ),
            patience=patience,
        )
        return StopAdvice(r.should_stop, r.reason)

    def heartbeat(self, trial: int | Trial, lease_seconds: float = 0.0) -> Trial:
        """Extend a pending trial's lease (from now)."""
        r = self.client._call(
            "Heartbeat",
            svc.HeartbeatRequest(
                study=self.name,
                trial_id=_trial_id(trial),
                lease_seconds=lease_seconds,
                study_uid=_study_uid(trial),
            ),
        )
        return Trial.from_pb(r.trial)

    # ---- reads ----------------------------------------------------------------------------------
    def info(self, cached: bool = False) -> StudyInfo:
        if not (cached and self._info is not None):
            self._info = self.client.get_study(self.name)
        return self._info

    def trial(self, trial_id: int) -> Trial:
        return Trial.from_pb(
            self.client._call("GetTrial", svc.GetTrialRequest(study=self.name, trial_id=trial_id))
        )

    def trials(self, states: Iterable[str] = (), page_size: int = 1000) -> list[Trial]:
        """All trials (or those in ``states``: "PENDING", "COMPLETED", "FAILED", "ABANDONED")."""
        try:
            st = [STATE_TO_PB[s.upper()] for s in states]
        except KeyError as e:
            raise InvalidArgument(f"unknown trial state {e.args[0]!r}", field="states") from None
        out, token = [], ""
        while True:
            r = self.client._call(
                "ListTrials",
                svc.ListTrialsRequest(
                    study=self.name, states=st, page_size=page_size, page_token=token
                ),
            )
            out.extend(Trial.from_pb(t) for t in r.trials)
            token = r.next_page_token
            if not token:
                return out

    def best(self) -> Best:
        r = self.client._call("GetBest", svc.GetBestRequest(study=self.name))
        state = "LIKELY_INFEASIBLE" if r.state == pb.STUDY_STATE_LIKELY_INFEASIBLE else "ACTIVE"
        estimate = Estimate.from_pb(r.estimate) if r.HasField("estimate") else None
        trials = [Trial.from_pb(t) for t in r.trials]
        count = r.best_count or len(trials)  # a server before best_count sends every trial
        return Best(trials, state, r.state_reason, r.selection, estimate, count)

    def llm_calls(self, purpose: str = "", page_size: int = 100) -> list[LlmCall]:
        """Every LLM exchange of the study, oldest first (or those for ``purpose``: "warmstart",
        "priors", "proposal"), fetched page by page."""
        out, token = [], ""
        while True:
            r = self.client._call(
                "ListLlmCalls",
                svc.ListLlmCallsRequest(
                    study=self.name, purpose=purpose, page_size=page_size, page_token=token
                ),
            )
            out.extend(
                LlmCall(
                    c.purpose,
                    c.model,
                    c.prompt,
                    c.response,
                    c.outcome,
                    c.prompt_tokens,
                    c.completion_tokens,
                    c.latency_seconds,
                    _time(c.create_time),
                )
                for c in r.calls
            )
            token = r.next_page_token
            if not token:
                return out

    def delete(self) -> bool:
        return self.client.delete_study(self.name)

    # ---- the loop -------------------------------------------------------------------------------
    def optimize(
        self,
        fn: Callable[[dict], MetricsLike] | Callable[[dict, TrialContext], MetricsLike],
        n_trials: int,
        n_workers: int = 1,
        *,
        progress: bool = True,
        worker_id: str | None = None,
        lease_seconds: float = 0.0,
        heartbeat_seconds: float | None = None,
        tell_patience: float = 600.0,
    ) -> Best:
        """Evaluate ``fn`` on ``n_trials`` suggested points with ``n_workers`` threads.

        ``fn(params)`` returns a metrics dict (or a number for a single objective). An objective
        that takes two arguments, ``fn(params, trial)``, gets a :class:`TrialContext`: it reports
        its learning curve with ``trial.report(step, value)`` (or ``trial(step, value)``), which
        raises :class:`TrialPruned` once the study's pruning policy says to stop; the trial is then
        told PRUNED with its last value (also if it returns nothing after reporting), and the loop
        goes on. In a study with a fidelity,
        ``trial.budget`` is the budget to run to (and with promotion ``trial.resume_budget`` the
        one a continued trial already reached: resume from your checkpoint of ``trial.id``); each
        of the ``n_trials`` asks may hand out a new point or continue a paused one.

        An exception ``fn`` raises (or a metric that is not a finite number) is reported as a
        FAILED trial with the reason, and the loop goes on. While ``fn`` runs, the trial's lease is
        renewed every ``heartbeat_seconds`` (default: a third of the lease the server granted).
        Asks and Tells are retried for up to ``tell_patience`` seconds while the server is away (a
        restart does not end the loop); if a result's Tell still fails, the error names the trial
        and its metrics. On Ctrl-C (or such an error) no new trial starts, and the evaluations
        under way finish and are told before the exception propagates (a trial whose Ask was in
        flight is told ABANDONED, not started); an objective that calls
        ``sys.exit()`` ends the loop too, its trial told FAILED first. Returns :meth:`best`.
        The progress bar shows that best as trials complete (read at most every
        :data:`BEST_EVERY` seconds): under noise the server's choice and its estimate, not the
        luckiest draw.
        """
        if n_trials < 0 or n_workers < 1:
            raise InvalidArgument("need n_trials >= 0 and n_workers >= 1")
        from tqdm.auto import tqdm

        wid = worker_id or f"{uuid.uuid4().hex[:8]}"
        lock = threading.Lock()
        claimed = [0]
        bar = tqdm(total=n_trials, disable=not progress, desc=self.name, unit="trial")
        with_trial = _takes_two(fn)

        stopping = threading.Event()  # Ctrl-C, or another worker failed: claim no more trials
        shown = [-math.inf, 0]  # when the bar last showed the study's best, and after how many

        def show_best(best: Best | None = None) -> None:
            if not progress or (best is None and bar.n == shown[1]):
                return
            if best is None and time.monotonic() - shown[0] < BEST_EVERY:
                return
            shown[:] = [time.monotonic(), bar.n]
            try:
                objectives = self.info(cached=True).objectives
                bar.set_postfix_str(_best_note(best or self.best(), objectives))
            except BboError:  # the bar's note is a courtesy: the loop's own calls report errors
                pass

        def one(worker: int) -> None:
            while True:
                with lock:
                    if claimed[0] >= n_trials or stopping.is_set():
                        return
                    claimed[0] += 1
                (t,) = self.ask(
                    1,
                    worker_id=f"{wid}-{worker}",
                    lease_seconds=lease_seconds,
                    patience=tell_patience,
                )
                if stopping.is_set():  # Ctrl-C (or a failure) while this Ask was in flight: the
                    # trial is not started; say so now rather than leave it PENDING for its lease
                    with contextlib.suppress(BboError):
                        self.tell(t, abandoned=True, reason="optimize stopped before it started")
                    return
                interval = (
                    heartbeat_seconds
                    if heartbeat_seconds is not None
                    else _lease_length(t, lease_seconds) / 3
                )
                stop = threading.Event()
                hb = threading.Thread(
                    target=self._heartbeats, args=(t, interval, lease_seconds, stop), daemon=True
                )
                hb.start()
                try:
                    self._evaluate(fn, t, with_trial, tell_patience)
                finally:
                    stop.set()
                with lock:
                    bar.update(1)

        try:
            with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="bbo-optimize") as ex:
                try:
                    pending = {ex.submit(one, k) for k in range(n_workers)}
                    while pending:  # wake up now and then: Ctrl-C is handled only while the
                        # main thread runs, and a signal another thread took does not wake it
                        done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                        for f in done:
                            f.result()
                        show_best()
                except (
                    BaseException
                ):  # the evaluations under way finish and are told; no new ones start
                    stopping.set()
                    raise
            best = self.best()
            show_best(best)
            return best
        finally:
            bar.close()

    def _evaluate(self, fn, t: Trial, with_trial: bool, patience: float) -> None:
        """Run the objective on one trial and tell what came of it (see :meth:`optimize`)."""
        metrics, failure, ctx, stopped = None, "", None, False
        try:
            if with_trial:
                ctx = TrialContext(self, t, patience)
                out = fn(dict(t.params), ctx)
            else:
                out = fn(dict(t.params))
            metrics = self._metrics_dict(out) if out is not None or ctx is None else None
            bad = [k for k, v in (metrics or {}).items() if not _finite(v)]
            if bad:
                failure = "metric(s) not finite numbers: " + ", ".join(
                    f"{k}={metrics[k]!r}" for k in bad
                )
        except TrialPruned:
            stopped = True  # told below (PRUNED)
        except Exception as e:  # the objective failed: record why, keep going
            failure = f"{type(e).__name__}: {e}"[:2000]
        except BaseException as e:  # sys.exit() in the objective: the loop ends, as it asked,
            # but the trial is told FAILED first rather than left PENDING until its lease ends
            reason = f"{type(e).__name__}: {e}"[:2000]
            with contextlib.suppress(BboError):
                self.tell(t, failed=True, reason=f"interrupted: {reason}", patience=patience)
            raise
        try:
            if failure:
                self.tell(t, failed=True, reason=failure, patience=patience)
            elif stopped or (
                ctx is not None and (ctx.pruned or (metrics is None and ctx.last is not None))
            ):  # stopped early; returning nothing with nothing reported is a missing result
                self._tell_pruned(t, ctx, metrics, patience)
            else:
                try:
                    self.tell(t, metrics, patience=patience)
                except InvalidArgument as e:  # metrics the study cannot take (a missing objective)
                    self.tell(
                        t, failed=True, reason=f"metrics refused: {e}"[:2000], patience=patience
                    )
        except BboError as e:
            what = f"failure ({failure})" if failure else f"metrics {metrics}"
            retry = (  # a deleted study or trial takes no tell, now or later
                "nothing is left to tell it to"
                if isinstance(e, NotFound)
                else f"tell it again with tell({t.id}, ...)"
            )
            raise type(e)(
                f"trial {t.id} of '{self.name}': its {what} could not be reported: {e.message}; "
                + retry,
                field=e.field,
                code=e.code,
            ) from e

    def _tell_pruned(self, t: Trial, ctx: TrialContext | None, metrics, patience: float) -> None:
        """Tell a trial the objective stopped (told to, or returned nothing after reporting)
        PRUNED, with the metrics it returned or else its last reported value, at the last budget
        reported."""
        last = ctx.last if ctx is not None else None
        if not metrics and last is not None:
            metrics = {self.info(cached=True).objectives[0].name: last[1]}
        budget = last[2] if last is not None else None
        self.tell(
            t,
            metrics or None,
            pruned=True,
            reason=(ctx.reason if ctx is not None else "") or "stopped by the objective",
            budget=budget if budget is not None else 0.0,
            patience=patience,
        )

    def _heartbeats(
        self, trial: Trial, interval: float, lease_seconds: float, stop: threading.Event
    ) -> None:
        """Renew the lease until ``stop``; a failure that may pass later is tried again next round."""
        while interval > 0 and not stop.wait(interval):
            try:
                self.heartbeat(trial, lease_seconds)
            except BboError as e:
                if not retryable(e):  # the trial is finished or gone: nothing left to keep alive
                    return


def _best_note(best: Best, objectives: Sequence[Objective]) -> str:
    """The progress bar's note of a study's best: the trial and its objective's value (with the
    model's estimate where the model chose it), or the Pareto front's size."""
    if not best.trials:
        return "no feasible trial yet"
    if len(objectives) != 1:
        return f"Pareto front: {best.count or len(best.trials)} trials"
    t, name = best.trials[0], objectives[0].name
    note = f"best {name}={t.metrics.get(name, math.nan):.6g} (trial {t.id})"
    if best.estimate is not None:
        note += f", model estimate {best.estimate.value:.6g}"
    return note


class TrialContext:
    """What an objective of two arguments gets from :meth:`StudyHandle.optimize`: the trial, its
    budget, and ``report(step, value)`` for its learning curve, which raises
    :class:`TrialPruned` once the study's pruning policy says to stop."""

    def __init__(self, study: StudyHandle, trial: Trial, patience: float | None = None):
        self.study, self.trial, self._patience = study, trial, patience
        self.pruned = False
        self.reason = ""
        self.last: tuple[int, float, float | None] | None = None  # (step, value, budget)

    @property
    def params(self) -> dict:
        return dict(self.trial.params)

    @property
    def budget(self) -> float | None:
        """The budget to run the trial to (None in a study without a fidelity)."""
        return self.trial.budget

    @property
    def resume_budget(self) -> float | None:
        """A continued trial: the budget it already reached (resume from there); else None."""
        return self.trial.resume_budget

    def report(self, step: int, value: float, budget: float | None = None) -> None:
        """Record the first objective's value at ``step`` (measured at ``budget``, default the
        step in a study with a fidelity); raise :class:`TrialPruned` if the trial should stop."""
        self.last = (step, float(value), budget)  # a PRUNED tell without a budget: the last one
        advice = self.study.report(self.trial, step, value, budget, patience=self._patience)
        if advice.should_stop:
            self.pruned, self.reason = True, advice.reason
            raise TrialPruned(advice.reason, step, float(value))

    __call__ = report


def _takes_two(fn: Callable) -> bool:
    """Whether the objective takes a second positional argument (the trial context)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(positional) >= 2


def _clean_key(key: str | None) -> str | None:
    """The key without surrounding whitespace (a key read from a file ends in a newline); a key that
    still holds characters no header can carry is refused here, with a message, not by gRPC."""
    if key is None:
        return None
    key = str(key).strip()
    if any(not 0x20 < ord(ch) < 0x7F for ch in key):
        raise ValueError(
            "api_key holds whitespace or non-ASCII characters inside it: pass the key exactly as `bbo keys create` printed it"
        )
    return key or None


def _lease_length(t: Trial, asked: float) -> float:
    """The lease the server granted ``t`` (its clock on both ends), else what was asked for, else 600 s.
    Measured from the trial's last update (its ask), not its creation: a PAUSED trial continued by
    promotion was created rungs ago, and its lease runs from the ask that handed it out again."""
    start = t.updated or t.created
    if t.lease_expires is not None and start is not None:
        granted = (t.lease_expires - start).total_seconds()
        if granted > 0:
            return granted
    return asked or 600.0


def _finite(v: Any) -> bool:
    """Whether a metric's value (and sem, if given) are finite numbers."""

    def ok(x: Any) -> bool:
        try:
            return math.isfinite(float(x))
        except (TypeError, ValueError):
            return False

    value, sem = _split_metric(v)
    return ok(value) and (sem is None or ok(sem))
