"""Where the LLM lives and how long bbo waits for it.

No ``base_url`` means the LLM module is off: every advisor call returns at once with reason
``"llm disabled"`` and bbo behaves exactly as plain BO.

Environment (read by :meth:`LlmConfig.from_env`):

=========================  ==========================================================  =========
variable                   meaning                                                     default
=========================  ==========================================================  =========
``BBO_LLM_BASE_URL``       an OpenAI-compatible endpoint, e.g. ``http://host:8000/v1``  (off)
``BBO_LLM_API_KEY``        bearer key; local servers (vLLM, Ollama) accept anything     ``none``
``BBO_LLM_MODEL``          model name; empty = the first of BBO_LLM_MODELS, else the    (ask)
                           first one ``GET /models`` lists
``BBO_LLM_MODELS``         other models a study's ``llm.model`` may name, comma-sep.   (none)
``BBO_LLM_TIMEOUT``        seconds one chat call may take                               ``30``
``BBO_LLM_MAX_RETRIES``    retries of a 429 / 5xx / connection error (0 or 1)           ``0``
``BBO_LLM_ASK_BUDGET``     seconds all LLM work of one ask may take                     ``60``
=========================  ==========================================================  =========

``BBO_LLM=local`` (``bbo serve --llm local``) starts a packaged model instead of naming an endpoint:
see :mod:`bbo.llm.local`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace


def env_seconds(env: Mapping[str, str], key: str, default: float | None) -> float | None:
    """``env[key]`` as a positive, finite number of seconds (``default`` where unset); a
    ValueError naming the variable otherwise."""
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"{key}={raw!r} is not a number of seconds") from None
    return seconds(v, key, repr(raw))


# the longest an LLM call or an Ask's LLM work may take: 1e300 s overflowed the HTTP client's
# timeout on every call
MAX_SECONDS = 86400.0


def seconds(v: float, what: str, shown: str | None = None) -> float:
    """``v`` where it is a number of seconds in (0, :data:`MAX_SECONDS`]; a ValueError naming
    ``what`` (and the value as given, ``shown``) otherwise."""
    if not 0 < v <= MAX_SECONDS:  # False for nan
        raise ValueError(
            f"{what} must be a number of seconds in (0, {MAX_SECONDS:g}], got {shown or repr(v)!s}"
        )
    return v


def _url_parts(url: str):
    from urllib.parse import parse_qsl, urlsplit

    try:
        u = urlsplit(url)
        return u, parse_qsl(u.query, keep_blank_values=True)
    except ValueError:
        return None, []


def url_secrets(url: str) -> tuple[str, ...]:
    """The parts of an endpoint URL that may carry a credential: its user and password
    (``https://user:key@host``) and its query values (``?api-key=...``)."""
    u, query = _url_parts(url)
    if u is None:
        return (url,) if url else ()
    found = [u.username or "", u.password or ""] + [v for _, v in query]
    return tuple(dict.fromkeys(x for x in found if x))


def shown_url(url: str) -> str:
    """``url`` as logs and messages may show it: user, password and query values masked."""
    from urllib.parse import urlunsplit

    u, query = _url_parts(url)
    if u is None:
        return "(an unreadable URL)"
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = u.port
    except ValueError:
        port = None
    netloc = ("***@" if u.username or u.password else "") + host + (f":{port}" if port else "")
    shown_query = "&".join(f"{k}=***" for k, _ in query)
    return urlunsplit((u.scheme, netloc, u.path, shown_query, ""))


@dataclass(frozen=True)
class LlmConfig:
    """Connection and time bounds for the LLM module.

    ``timeout_s`` bounds one chat call (wall clock, enforced by bbo, not only by the HTTP library);
    ``ask_budget_s`` bounds everything the advisor does for one request (all its calls together).
    ``max_retries`` is capped at 1: a retry that waits out a rate limit rarely fits the budget.
    ``models``: the other models a study may name (its ``llm.model``); the default model always is.
    ``compact``: prompts and schemas for a small local model (short text, no example values to
    copy, bounded string lengths and candidate counts, value ranges in the schema).
    ``seed``: sent with every request where set (reproducible sampling on engines that honour it).
    ``llguidance``: send the JSON schema as a llguidance grammar (``grammar`` in the request body,
    as llama.cpp servers built with LLGuidance take it) instead of ``response_format``: llama.cpp
    then enforces the schema fully (number bounds, string lengths, no optional whitespace), which
    it does not through ``response_format``. Set for the local engine.
    """

    base_url: str = ""
    api_key: str = ""
    model: str = ""
    timeout_s: float = 30.0
    max_retries: int = 0
    ask_budget_s: float = 60.0
    temperature: float = 0.7
    max_tokens: int = 2048
    # piBO priors from an LLM may be wrong: cap how strongly they bend the search.
    prior_confidence_cap: float = 0.5
    # After this many consecutive failed calls, skip the LLM for ``cooldown_s`` (fail fast).
    failures_before_cooldown: int = 3
    cooldown_s: float = 120.0
    # Calls whose caller gave up at their bound while the endpoint still holds them (trickled
    # headers): past this many, per model, no new call starts until one ends (LlmClient).
    max_overdue_calls: int = 16
    models: tuple[str, ...] = ()
    compact: bool = False
    seed: int | None = None
    llguidance: bool = False

    def __post_init__(self):
        object.__setattr__(self, "base_url", (self.base_url or "").strip().rstrip("/"))
        models = self.models.split(",") if isinstance(self.models, str) else self.models or ()
        names = tuple(dict.fromkeys(m.strip() for m in models if m and m.strip()))
        object.__setattr__(self, "model", (self.model or "").strip() or (names[0] if names else ""))
        object.__setattr__(self, "models", tuple(m for m in names if m != self.model))
        object.__setattr__(self, "max_retries", max(0, min(1, int(self.max_retries))))
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if not self.ask_budget_s > 0:
            raise ValueError(f"ask_budget_s must be > 0, got {self.ask_budget_s}")
        if self.max_overdue_calls < 1:
            raise ValueError(f"max_overdue_calls must be >= 1, got {self.max_overdue_calls}")
        if not 0 < self.prior_confidence_cap <= 1:
            raise ValueError("prior_confidence_cap must be in (0, 1]")

    @property
    def enabled(self) -> bool:
        return bool(self.base_url)

    @property
    def allowed_models(self) -> tuple[str, ...]:
        """The names a study's ``llm.model`` may take besides empty (= the default model)."""
        return ((self.model,) if self.model else ()) + self.models

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> LlmConfig:
        """The configuration the environment describes; keyword arguments override it."""
        env = os.environ if env is None else env
        retries_raw = env.get("BBO_LLM_MAX_RETRIES", "").strip()
        try:
            retries = int(retries_raw) if retries_raw else 0
        except ValueError:
            raise ValueError(f"BBO_LLM_MAX_RETRIES={retries_raw!r} is not 0 or 1") from None
        cfg = cls(
            base_url=env.get("BBO_LLM_BASE_URL", ""),
            api_key=env.get("BBO_LLM_API_KEY", ""),
            model=env.get("BBO_LLM_MODEL", "").strip(),
            timeout_s=env_seconds(env, "BBO_LLM_TIMEOUT", None) or 30.0,
            max_retries=retries,
            ask_budget_s=env_seconds(env, "BBO_LLM_ASK_BUDGET", None) or 60.0,
            models=tuple(env.get("BBO_LLM_MODELS", "").split(",")),
        )
        return replace(cfg, **overrides) if overrides else cfg

    @property
    def secrets(self) -> tuple[str, ...]:
        """What logs and stored text must never show: the key, and credentials in the URL."""
        return ((self.api_key,) if self.api_key else ()) + url_secrets(self.base_url)

    def describe(self) -> str:
        """One line for logs (never the key, nor credentials in the URL)."""
        if not self.enabled:
            return "LLM module off (BBO_LLM_BASE_URL not set)"
        extra = f" (studies may also name {', '.join(self.models)})" if self.models else ""
        return (
            f"LLM at {shown_url(self.base_url)} model={self.model or '(server default)'}{extra} "
            f"timeout={self.timeout_s:g}s budget={self.ask_budget_s:g}s"
        )
