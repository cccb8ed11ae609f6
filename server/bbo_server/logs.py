"""Structured logs: one JSON object per line on stderr, with study / trial ids as fields."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from bbo.storage.keys import KEY_PREFIX

# an API key in a log line (``bbo keys create``'s form), whole or cut short: a field cut in the
# middle of a key (a study name past MAX_LOGGED_NAME, a clipped message) kept up to 42 of its 43
# secret characters, and KEY_RE matches only whole keys
_KEY_IN_TEXT = re.compile(re.escape(KEY_PREFIX) + r"([0-9a-f]{12})_[A-Za-z0-9_\-]+")

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {"message", "asctime"}


# characters of a request's study name a log line keeps: no study's name is longer, and a request
# (authenticated or not) naming 4 MiB of control characters wrote 25 MB of escaped JSON a line
MAX_LOGGED_NAME = 128


def request_ids(request) -> dict:
    """The study and trial a BboService request names, as log fields (any request message); a
    name longer than any study's is cut, saying its length."""
    study = getattr(request, "study", "") or getattr(request, "name", "")
    if isinstance(study, str) and len(study) > MAX_LOGGED_NAME:
        study = f"{study[:MAX_LOGGED_NAME]}... ({len(study)} characters)"
    return {"study": study, "trial": getattr(request, "trial_id", None)}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # an API key in any field keeps only its public id: a key with a stray byte grpc cannot
        # decode was logged whole, by grpc's own logger, at error level
        return _KEY_IN_TEXT.sub(KEY_PREFIX + r"\1_***", json.dumps(out, default=str))


def setup(level: str = "info", stream=None) -> None:
    h = logging.StreamHandler(stream or sys.stderr)
    h.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(h)
    root.setLevel(level.upper())
    for noisy in ("sqlalchemy", "alembic", "matplotlib", "urllib3", "httpx", "openai"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
