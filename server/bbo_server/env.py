"""Settings read from the environment as the defaults of ``bbo serve``'s flags, checked as the
flags are: argparse checks neither a default's type nor its ``choices``, so ``BBO_METRICS_PORT=9o9o``
turned the metrics off, ``BBO_DEVICE=gpu`` ran as ``cuda`` and ``BBO_LOG_LEVEL=verbose`` ended in
a traceback. A value that does not parse is kept as :class:`Invalid`, and :func:`check` refuses it
with a message naming the variable before the server starts."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn


@dataclass(frozen=True)
class Invalid:
    """An environment variable's value a flag cannot take."""

    name: str
    raw: str
    rule: str


def default(
    name: str,
    fallback: Any,
    parse: Callable[[str], Any] = str,
    choices: Sequence[Any] | None = None,
    rule: str = "",
) -> Any:
    """The flag's default: ``parse`` of the variable ``name`` where it is set and not blank
    (one of ``choices`` where given), else ``fallback``; an :class:`Invalid` where it does not
    parse (``rule`` says what it must be)."""
    raw = os.environ.get(name, "")
    if not raw.strip():
        return fallback
    what = rule or (f"one of {', '.join(map(str, choices))}" if choices else "valid")
    try:
        value = parse(raw.strip())
    except ValueError:
        return Invalid(name, raw, what)
    if choices is not None and value not in choices:
        return Invalid(name, raw, what)
    return value


def refuse(flag: str, rule: str, value: Any) -> NoReturn:
    """Exit (status 1) with one line naming ``--flag``, what it must be and what it got: the one
    way ``bbo serve`` and its plugins refuse a value out of range, before anything listens."""
    raise SystemExit(f"bbo serve: --{flag} must be {rule}, got {value!r}")


def check(args) -> None:
    """Exit (status 1) naming the first variable whose value a flag cannot take."""
    for value in vars(args).values():
        if isinstance(value, Invalid):
            raise SystemExit(f"bbo serve: {value.name} must be {value.rule}, got {value.raw!r}")
