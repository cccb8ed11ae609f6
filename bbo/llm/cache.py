"""The advisor's persistent cache: a study's own LLM call log in the database.

Every exchange is already stored with its study (``llm_calls``), so no second table is needed: after a
restart, or on another replica, the same prompt on the same study is answered from the stored
response instead of being sent again. Keys are :meth:`LlmAdvisor.cache_key` strings whose study part
ends in the study uid (``tenant/name/uid``, as :class:`bbo.study.Study` builds it); other keys miss.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from bbo.errors import NotFoundError

USABLE = ("ok", "cached", "partial")  # outcomes whose response was parsed and used
REPEATED = (
    "priors",
    "warmstart",
)  # prompts that recur on a study; proposal prompts carry the history
SCAN_PAGE = 16  # calls read at a time (each may hold a 1 MiB answer)
SCANNED_KEYS = 4096  # keys whose scan position is remembered


def prompt_hash(prompt_text: str) -> str:
    """The cache key's prompt part. Not the model: the model a response names may differ from the one
    asked for (a dated snapshot of an alias, or one found through /models), and the issue's rule is
    "the same prompt on the same study is not sent twice"."""
    return hashlib.sha256(prompt_text.encode()).hexdigest()[:40]


class StoredAnswers:
    """``get(key)`` finds a usable stored answer to the same prompt on the same study; ``put``
    stores nothing (the call log already has it).

    A study logs a priors call on every ask (a cache hit, a failure, a prompt no longer asked), so
    its log grows with its asks: a lookup reads it :data:`SCAN_PAGE` calls at a time, from where
    the previous lookup of the same key stopped (its newest usable answer, else its end)."""

    def __init__(self, storage):
        self.storage = storage
        self._from: OrderedDict[str, int] = OrderedDict()  # key -> call number to read after
        self._lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        try:
            study_key, purpose, h = key.rsplit("|", 2)
            uid = study_key.rsplit("/", 1)[1]
        except (ValueError, IndexError):
            return None
        if purpose not in REPEATED or not uid:
            return None
        with self._lock:
            after = self._from.get(key, 0)
        found = None
        try:
            while True:
                calls = self.storage.list_llm_calls(uid, purpose, after=after, limit=SCAN_PAGE)
                for rec in calls:
                    if rec.outcome.startswith(USABLE) and prompt_hash(rec.prompt) == h:
                        found = rec
                if calls:
                    after = calls[-1].number
                if len(calls) < SCAN_PAGE:
                    break
        except NotFoundError:  # the study was deleted
            return None
        with self._lock:
            self._from[key] = found.number - 1 if found is not None else after
            self._from.move_to_end(key)
            while len(self._from) > SCANNED_KEYS:
                self._from.popitem(last=False)
        if found is None:
            return None
        return {
            "text": found.response,
            "prompt_tokens": found.prompt_tokens,
            "completion_tokens": found.completion_tokens,
            "model": found.model,
        }

    def put(self, key: str, value: dict) -> None:
        return None
