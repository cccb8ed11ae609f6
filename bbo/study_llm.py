"""The LLM side of one study (:mod:`bbo.llm`): what the advisor adds to an ask, and the audit log
of every exchange with the model."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from bbo.errors import SpecError
from bbo.spec import StudySpec
from bbo.storage import LLM_PURPOSES, LlmCallRecord, Storage
from bbo.trial import Trial

if TYPE_CHECKING:
    from bbo.registry import StudyConfig

log = logging.getLogger("bbo.study")
CACHED = "cached"  # the outcome of an ask's answer from the cache (no request sent)


class StudyLlm:
    """The LLM advisor's work for the study ``uid`` (``key`` in the advisor's caches)."""

    def __init__(
        self, storage: Storage, spec: StudySpec, config: StudyConfig, uid: str, name: str, key: str
    ):
        self.storage, self.spec, self.config = storage, spec, config
        self.uid, self.name, self.key = uid, name, key

    def plan(
        self, trials: list[Trial], count: int, budget_s: float | None = None
    ) -> dict[str, Any]:
        """What the LLM module adds to this ask (warm start, proposals, priors) as keyword
        arguments of the strategy's ``suggest``; {} without one.

        Bounded by the advisor's ask budget and ``budget_s`` (part of the caller's deadline);
        every call (or cache hit) is stored for audit; any failure leaves plain BO in charge. A
        study deleted meanwhile ends the ask (NotFoundError): nothing of it is stored.
        """
        advisor = self.config.llm
        if advisor is None or not self.spec.llm.enabled:
            return {}
        try:
            plan = advisor.prepare(
                self.spec, trials, count, study_key=self.key, budget_s=budget_s, record=self.log
            )
        except Exception as e:  # the advisor is meant never to raise; if it does, BO goes on alone
            log.exception("llm advisor failed", extra={"study": self.name})
            error = f"advisor error: {type(e).__name__}"
            self.log(LlmCallRecord("ask", self.spec.llm.model, "", "", error))
            return {}
        for call in plan.calls:
            self.log(call)
        kw: dict[str, Any] = {}
        if plan.warmstart:
            kw["warmstart"] = plan.warmstart
        if plan.proposals:
            kw["proposals"] = plan.proposals
        if plan.spec.priors != self.spec.priors:
            kw["priors"] = plan.spec.priors
        return kw

    def log(self, call: LlmCallRecord) -> None:
        """Record what the LLM module asked and was answered (and tell the observer, if any). An
        answer from the cache is recorded as outcome ``cached`` without its prompt and answer: the
        call it repeats holds them, and a copy on every ask (the priors' answer, ~20 KB to 1 MiB)
        grew a long study's log by that much per ask."""
        if call.cached:
            call = dataclasses.replace(
                call, prompt="", response="", outcome=CACHED, prompt_tokens=0, completion_tokens=0
            )
        self.storage.log_llm_call(self.uid, call)
        if self.config.on_llm_call is not None:
            try:
                self.config.on_llm_call(call)
            except Exception:  # an observer (metrics) never breaks a call
                log.warning("llm call observer failed", exc_info=True)

    def calls(
        self, purpose: str | None = None, after: int = 0, limit: int | None = None
    ) -> list[LlmCallRecord]:
        """The study's LLM exchanges in the order they happened (numbers above ``after``, at most
        ``limit``)."""
        if purpose is not None and purpose not in LLM_PURPOSES:
            raise SpecError(
                "purpose",
                f"unknown purpose {purpose!r}: use one of {', '.join(LLM_PURPOSES)} "
                "or leave it empty",
            )
        return self.storage.list_llm_calls(self.uid, purpose, after=after, limit=limit)
