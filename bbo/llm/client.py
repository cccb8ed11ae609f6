"""A thin, time-bounded wrapper over the ``openai`` package's chat completions.

Every call returns a :class:`ChatOutcome`; nothing here raises to callers. Failures (timeout, HTTP
429 / 5xx, connection errors, refusals, empty answers) come back as ``reason`` strings so the
advisor can record them and fall back to plain BO.

Structured output: a call with a JSON schema first asks for ``response_format={"type":
"json_schema", ..., "strict": true}``. Endpoints that reject it (HTTP 400 / 422, common on older
vLLM, llama.cpp or Ollama builds) are asked again in plain text at once, and the client remembers
not to try again. Parsing is defensive either way (:mod:`bbo.llm.parse`).

Time: the HTTP library's timeout is per read, so a server that trickles bytes could hold a call far
longer; each call therefore runs on a daemon thread and the caller stops waiting at the bound.
Headers that trickle in keep that thread: past ``LlmConfig.max_overdue_calls`` such threads per
model nothing more is sent until one ends (:class:`_Overdue`).

Size and the thread's own end: every response body is read through :class:`_BoundedBody`, which
stops reading at ``MAX_ANSWER_BYTES`` (an answer of ``max_tokens`` tokens is a few KiB; a larger one
is refused, never stored) and once the request's own timeout has passed since its headers arrived,
so an endpoint that trickles or never ends its answer holds neither memory nor the call's thread
past the bound.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bbo.llm.config import LlmConfig
from bbo.llm.parse import valid_text

log = logging.getLogger(__name__)

OK = "ok"

# The most bytes of one HTTP response body (a chat answer, an error, the model list) bbo reads.
MAX_ANSWER_BYTES = 1024 * 1024
# The longest model name bbo takes from an endpoint (a /models listing, an answer's ``model``): the
# name is stored with every call record, also each ask's ``cached`` one
MAX_MODEL_CHARS = 256
# a call given less than this share of the configured timeout ran on its caller's budget (an ask's
# or a CreateStudy's deadline): its timing out is the caller's, not the endpoint's (LlmClient._note)
FULL_TIMEOUT = 0.9


@dataclass
class ChatOutcome:
    """What one chat call produced: text and usage, or why there is none."""

    text: str = ""
    reason: str = OK  # "ok", or the failure reason (recorded as the call's outcome)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    model: str = ""
    structured: bool = False  # answered under a strict JSON schema
    transport_failure: bool = False  # timeout / 429 / 5xx / connection: counts toward the cooldown
    status: int = 0  # the HTTP status of a rejected request
    detail: str = ""  # the upstream error text, redacted: never stored, only used and debug-logged

    @property
    def ok(self) -> bool:
        return self.reason == OK


class _Deadline(Exception):
    pass


class _Overdue:
    """Calls whose caller stopped waiting at their bound while their thread still runs. Headers
    that trickle in (a line within each read timeout, lines without end) hold such a thread and its
    connection as long as the endpoint likes: past ``limit`` of them a client sends nothing more
    until some end (before, each call left one more behind, and with them the server's threads and
    sockets)."""

    def __init__(self, limit: int):
        self.limit, self.n = limit, 0
        self.lock = threading.Lock()

    def full(self) -> str | None:
        """Why no call may start now, or None."""
        n = self.n
        if n >= self.limit:
            return f"llm busy: {n} earlier calls still running past their time bound"
        return None


def _bounded(fn: Callable[[], Any], timeout_s: float, overdue: _Overdue) -> Any:
    """Run ``fn`` on a daemon thread; raise _Deadline if it has not finished in ``timeout_s`` (the
    thread, still running, then counts in ``overdue`` until it ends)."""
    box: dict[str, Any] = {}
    done = threading.Event()
    late = False  # set once the caller gave up on the call

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller's thread
            box["error"] = e
        finally:
            with overdue.lock:
                done.set()
                if late:
                    overdue.n -= 1

    threading.Thread(target=run, daemon=True, name="bbo-llm-call").start()
    if not done.wait(max(0.0, timeout_s)):
        with overdue.lock:
            if not done.is_set():
                late = True
                overdue.n += 1
                raise _Deadline()
    if "error" in box:
        raise box["error"]
    return box["value"]


class AnswerRefused(Exception):
    """A response body bbo does not read on: past ``MAX_ANSWER_BYTES``, or compressed although bbo
    asked for it as it is (its size is known only once decoded: a few KiB of gzip can be a GB)."""


class AnswerTooLarge(AnswerRefused):
    """An endpoint's response body passed ``MAX_ANSWER_BYTES``; reading it stopped there."""

    def __init__(self, limit: int):
        super().__init__(f"answer larger than {limit} bytes")
        self.limit = limit


def _http_lib():
    """The HTTP library the installed ``openai`` package is built on (``httpx`` or a fork of it)."""
    import importlib

    import openai

    base = next(c for c in openai.DefaultHttpxClient.__mro__[1:] if c.__name__ == "Client")
    return importlib.import_module(base.__module__.split(".")[0])


def _bounded_http_client(timeout_s: float, limit: int = MAX_ANSWER_BYTES):
    """``openai.DefaultHttpxClient`` whose every response body is read through :class:`_BoundedBody`:
    at most ``limit`` bytes, and for at most the request's read timeout (openai passes each call's
    time left) from the moment its headers arrived. A response hook wraps the body before it is
    read, whatever transport (proxy or not) fetched it; ``Accept-Encoding: identity`` asks for the
    bytes as they are, and a compressed body is refused unread (it would be counted before it is
    decoded)."""
    import openai

    lib = _http_lib()
    stream_base: Any = lib.SyncByteStream  # the library's sync body type (its Response checks it)

    class _BoundedBody(stream_base):
        def __init__(self, inner, deadline: float, declared: int):
            self.inner, self.deadline, self.declared = inner, deadline, declared

        def __iter__(self):
            if self.declared > limit:
                raise AnswerTooLarge(limit)
            n = 0
            for chunk in self.inner:
                n += len(chunk)
                if n > limit:
                    raise AnswerTooLarge(limit)
                if time.monotonic() > self.deadline:
                    raise lib.ReadTimeout("the answer did not end within the call's time bound")
                yield chunk

        def close(self):
            close = getattr(self.inner, "close", None)
            if close is not None:
                close()

    def bound(response):
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise AnswerRefused(f"answer compressed ({encoding}) although asked for as it is")
        t = response.request.extensions.get("timeout") or {}
        read = t.get("read") if isinstance(t, dict) else None
        bound_s = float(read) if read else timeout_s
        try:
            declared = int(response.headers.get("content-length") or 0)
        except ValueError:
            declared = 0
        response.stream = _BoundedBody(response.stream, time.monotonic() + bound_s, declared)

    return openai.DefaultHttpxClient(
        event_hooks={"response": [bound]}, headers={"Accept-Encoding": "identity"}
    )


def _model_name(name: Any) -> bool:
    """Whether an endpoint's model name is one bbo takes: a string of 1 to :data:`MAX_MODEL_CHARS`
    characters (a listing's ``123`` or ``null`` failed every call record's storage, ``""`` sent no
    request yet counted as an answer)."""
    return isinstance(name, str) and 0 < len(name.strip()) <= MAX_MODEL_CHARS


def _short(msg: object, limit: int = 160) -> str:
    s = " ".join(str(msg).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def classify_error(e: BaseException) -> tuple[str, bool]:
    """(reason, is_transport_failure) for an exception raised by the openai client.

    The reason names the exception class and the HTTP status only, e.g. ``"error:
    AuthenticationError 401"``: upstream error bodies and messages may echo a key or other secrets,
    and the reason is stored in the call log that tenants read. The detail goes to the debug log,
    redacted (:func:`error_detail`).
    """
    import openai

    if isinstance(e, _Deadline) or isinstance(e, openai.APITimeoutError):
        return "timeout", True
    cause = e if isinstance(e, AnswerRefused) else e.__cause__ or e.__context__
    if isinstance(cause, AnswerRefused):
        return f"error: {cause}", True
    if isinstance(e, openai.APIStatusError):
        code = int(getattr(e, "status_code", 0) or 0)
        transport = code == 429 or code >= 500
        return f"error: {type(e).__name__} {code}", transport
    if isinstance(e, openai.APIConnectionError):
        return f"error: {type(e).__name__}", True
    if isinstance(e, openai.APIResponseValidationError):
        return f"error: {type(e).__name__} {getattr(e, 'status_code', '')}".rstrip(), False
    return f"error: {type(e).__name__}", False


_SECRET_PATTERNS = (
    # bearer tokens, key=value pairs, and long opaque tokens (API keys, JWTs, hex digests)
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(
        r"(?i)((?:api[_-]?key|key|token|secret|password|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"
    ),
    re.compile(r"\b(?:sk|pk|rk|ghp|gho|xox[abpr])[-_][A-Za-z0-9_-]{8,}"),
    re.compile(r"\b[A-Za-z0-9_-]{32,}\b"),
)


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with the given secrets and anything that looks like a key or token replaced."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "[redacted]")
    for pat in _SECRET_PATTERNS:
        text = pat.sub(
            lambda m: (m.group(1) if m.re.groups else "") + "[redacted]",
            text,
        )
    return text


def error_detail(e: BaseException, secrets: Sequence[str] = ()) -> str:
    """The exception's own text (upstream message, cause), redacted and shortened, for debug logs
    and for the client's own decisions (which request field an endpoint rejected)."""
    return _short(redact(f"{getattr(e, 'message', '') or e} {e.__cause__ or ''}", secrets), 300)


class LlmClient:
    """One endpoint, one model. Thread-safe; share one per process (or per endpoint)."""

    def __init__(self, config: LlmConfig):
        self.config = config
        self._client = None
        self._model = config.model
        self._structured_supported: bool | None = None  # None: not yet known
        self._max_tokens_key = "max_tokens"
        self._send_temperature = True
        self._lock = threading.Lock()
        self._consecutive_failures = 0
        self._cool_until = 0.0
        self._overdue = _Overdue(config.max_overdue_calls)

    # ---- plumbing ------------------------------------------------------------------------------
    def _openai(self):
        with self._lock:
            if self._client is None:
                from openai import OpenAI

                self._client = OpenAI(
                    base_url=self.config.base_url,
                    api_key=self.config.api_key or "none",  # local servers accept any key
                    timeout=self.config.timeout_s,
                    max_retries=self.config.max_retries,
                    http_client=_bounded_http_client(self.config.timeout_s),
                )
            return self._client

    def _secrets(self) -> tuple[str, ...]:
        return self.config.secrets

    @property
    def structured_supported(self) -> bool | None:
        return self._structured_supported

    def cooling_down(self) -> str | None:
        """The reason to skip the LLM right now (too many recent failures), or None."""
        left = self._cool_until - time.monotonic()
        if left > 0:
            return f"llm unavailable: {self._consecutive_failures} calls failed in a row, retrying in {left:.0f}s"
        return None

    def _note(self, out: ChatOutcome, cut_short: bool = False) -> None:
        """Count a failed call toward the cooldown, a good one resets the count. ``cut_short``: the
        call had less than the configured timeout; its timeout then says nothing of the endpoint
        (counted, one tenant's asks with short deadlines turned the LLM off for every tenant)."""
        if cut_short and out.reason.endswith("timeout"):
            return
        with self._lock:
            if out.ok:
                self._consecutive_failures = 0
            elif out.transport_failure:
                self._consecutive_failures += 1
                if self._consecutive_failures >= self.config.failures_before_cooldown:
                    self._cool_until = time.monotonic() + self.config.cooldown_s
                    log.warning(
                        "LLM endpoint failed %d times in a row (%s); skipping it for %.0fs",
                        self._consecutive_failures,
                        out.reason,
                        self.config.cooldown_s,
                    )

    def model(self, timeout_s: float) -> tuple[str, str]:
        """(model name, reason): the configured model, or the first one the server lists."""
        if self._model:
            return self._model, OK
        client = self._openai()
        try:
            page = _bounded(
                lambda: client.with_options(timeout=timeout_s, max_retries=0).models.list(),
                timeout_s,
                self._overdue,
            )
            ids = [m.id for m in page.data if _model_name(getattr(m, "id", None))]
        except BaseException as e:  # noqa: BLE001
            reason, _ = classify_error(e)
            log.debug("listing models failed: %s", error_detail(e, self._secrets()))
            return "", f"no model configured and listing models failed: {reason}"
        if not ids:
            return "", "no model configured and the server lists none usable (set BBO_LLM_MODEL)"
        self._model = valid_text(ids[0])
        return self._model, OK

    # ---- the call ------------------------------------------------------------------------------
    def chat(
        self,
        messages: Sequence[dict],
        *,
        schema: dict | None = None,
        schema_name: str = "answer",
        timeout_s: float | None = None,
    ) -> ChatOutcome:
        """One chat completion, bounded by ``timeout_s`` (default: the config's) in wall-clock time."""
        t0 = time.monotonic()
        bound = min(
            timeout_s if timeout_s is not None else self.config.timeout_s, self.config.timeout_s
        )
        if not self.config.enabled:
            return ChatOutcome(reason="llm disabled")
        cool = self.cooling_down() or self._overdue.full()
        if cool:
            return ChatOutcome(reason=cool)
        if bound <= 0.05:
            return ChatOutcome(reason="llm time budget exhausted")
        cut_short = bound < FULL_TIMEOUT * self.config.timeout_s
        model, why = self.model(bound)
        if not model:
            out = ChatOutcome(reason=why, latency_s=time.monotonic() - t0, transport_failure=True)
            self._note(out, cut_short)
            return out
        use_schema = schema is not None and self._structured_supported is not False
        schema_refused = ""  # why a request with the schema was refused (HTTP 400 / 422)
        # this call's adjustments; kept for every later call only once a request went through
        max_key, send_temperature = self._max_tokens_key, self._send_temperature
        out = ChatOutcome(reason="timeout", transport_failure=True)
        for _ in range(
            4
        ):  # the first try, then at most one adjustment per rejected request feature
            left = bound - (time.monotonic() - t0)
            if left <= 0.05:
                break
            out = self._once(
                messages,
                model,
                schema if use_schema else None,
                schema_name,
                left,
                max_key,
                send_temperature,
            )
            if out.status not in (400, 422):
                break
            msg = out.detail.lower()
            if "max_tokens" in msg and max_key == "max_tokens":
                max_key = "max_completion_tokens"  # newer hosted models
            elif "temperature" in msg and send_temperature:
                send_temperature = False  # models that only take the default
            elif use_schema:
                schema_refused = out.reason  # asked once more in plain text: was it the schema?
                use_schema = False
            else:
                break
        if schema_refused and out.ok:
            # The endpoint does not do strict JSON schemas: say so once, ask in plain text from
            # now on. Not where plain text was refused too (a prompt over the model's context):
            # then one tenant's long description turned every tenant's calls to plain text.
            log.info(
                "LLM endpoint rejected response_format json_schema (%s); using plain text",
                schema_refused,
            )
            self._structured_supported = False
        elif use_schema and out.ok:
            self._structured_supported = True
        if out.ok:  # as the schema's: an error message naming a parameter (a prompt past the
            # context, say) must not change every tenant's requests when the change did not help
            self._max_tokens_key, self._send_temperature = max_key, send_temperature
        out.latency_s = time.monotonic() - t0
        out.model = out.model or model
        self._note(out, cut_short)
        return out

    def _once(
        self,
        messages,
        model: str,
        schema: dict | None,
        schema_name: str,
        timeout_s: float,
        max_tokens_key: str,
        send_temperature: bool,
    ) -> ChatOutcome:
        client = self._openai()
        kwargs: dict[str, Any] = dict(
            model=model,
            messages=list(messages),
            timeout=max(0.05, timeout_s),
        )
        kwargs[max_tokens_key] = self.config.max_tokens
        if send_temperature:
            kwargs["temperature"] = self.config.temperature
        if self.config.seed is not None:
            kwargs["seed"] = int(self.config.seed)
        if schema is not None and self.config.llguidance:
            grammar = "%llguidance {}\nstart: %json " + json.dumps(schema)
            kwargs["extra_body"] = {"grammar": grammar}
        elif schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name, "schema": schema, "strict": True},
            }
        try:
            resp = _bounded(
                lambda: client.chat.completions.create(**kwargs), timeout_s, self._overdue
            )
        except BaseException as e:  # noqa: BLE001 - every failure becomes an outcome
            reason, transport = classify_error(e)
            detail = error_detail(e, self._secrets())
            log.debug("LLM call failed: %s: %s", reason, detail)
            return ChatOutcome(
                reason=reason,
                transport_failure=transport,
                status=int(getattr(e, "status_code", 0) or 0),
                detail=detail,
            )
        try:
            return self._read(resp, model, schema is not None)
        except Exception as e:  # noqa: BLE001 - a body of the wrong shape is an outcome too
            log.debug("LLM answer of an unexpected shape: %s", error_detail(e, self._secrets()))
            return ChatOutcome(reason=f"malformed response: {type(e).__name__}")

    @staticmethod
    def _read(resp: Any, model: str, structured: bool) -> ChatOutcome:
        """The outcome of a response body (the openai package does not check its shape: a
        ``null`` message, a list for ``content`` or ``"1e999"`` tokens arrive as they are)."""

        def tokens(raw: Any) -> int:
            try:
                return max(0, int(raw or 0))
            except (TypeError, ValueError, OverflowError):
                return 0

        usage = getattr(resp, "usage", None)
        pt = tokens(getattr(usage, "prompt_tokens", 0)) if usage else 0
        ct = tokens(getattr(usage, "completion_tokens", 0)) if usage else 0
        named = getattr(resp, "model", "")
        base: dict[str, Any] = dict(
            prompt_tokens=pt,
            completion_tokens=ct,
            model=valid_text(named) if _model_name(named) else model,
            structured=structured,
        )
        choices = getattr(resp, "choices", None) or []
        if not isinstance(choices, list):
            choices = []
        if not choices:
            return ChatOutcome(reason="empty response (no choices)", **base)
        msg = choices[0].message
        refusal = getattr(msg, "refusal", None)
        if refusal:
            return ChatOutcome(reason=f"refusal: {valid_text(_short(refusal))}", **base)
        text = msg.content or ""
        if not isinstance(text, str):
            kind = type(text).__name__
            return ChatOutcome(reason=f"malformed response: content is {kind}", **base)
        if not text.strip():
            return ChatOutcome(reason="empty response", **base)
        return ChatOutcome(text=valid_text(text), **base)
