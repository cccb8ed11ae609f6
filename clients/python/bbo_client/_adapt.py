"""Helpers shared by the Optuna and Ray Tune adapters: parameter names and categorical labels."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Sequence
from typing import Any

from bbo_client.errors import InvalidArgument

_BAD = re.compile(r"[^A-Za-z0-9_.\-]")
_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")  # in the repr of a function, lambda or plain object
# a stepped / quantized domain with at most this many values is a bbo Ordinal of them, a longer one
# is searched continuously and snapped: a server refuses an ordinal over its --max-choices (1000)
MAX_GRID = 1000


def bbo_name(name: str) -> str:
    """A bbo parameter name (letters, digits, ``_ . -``) for another library's parameter name:
    ``/`` (Ray Tune's nesting) becomes ``.``, any other character outside the set ``_``."""
    return _BAD.sub("_", str(name).replace("/", ".")) or "_"


def bbo_names(names: Iterable[str], prefix: str = "", kind: str = "parameters") -> dict[str, str]:
    """``prefix`` + :func:`bbo_name` of each name; refused when two names would become the same
    bbo name (``kind``: what they name, for the message)."""
    out: dict[str, str] = {}
    taken: dict[str, str] = {}
    for n in names:
        b = prefix + bbo_name(n)
        if b in taken and taken[b] != n:
            raise InvalidArgument(
                f"{kind} {taken[b]!r} and {n!r} both become bbo {kind[:-1]} {b!r} "
                "(bbo names hold letters, digits, '_', '.', '-'): rename one",
                field=kind,
            )
        out[n], taken[b] = b, n
    return out


def choice_labels(choices: Sequence[Any]) -> list[str]:
    """Distinct string labels of categorical choices of any type (a bbo ``Categorical`` holds
    strings): a string stays itself, anything else is its ``repr`` less any memory address
    (``<function relu>``: the same in every process, so runs sharing a study build one spec); if
    two labels coincide (``1`` and ``"1"``, two lambdas), every label gets its index prefixed."""
    labels = [c if isinstance(c, str) else _ADDRESS.sub("", repr(c)) for c in choices]
    if len(set(labels)) < len(labels):
        labels = [f"{i}:{s}" for i, s in enumerate(labels)]
    return labels


def check_study_options(owner: str, options: dict[str, Any], *taken: str) -> None:
    """Refuse, when the adapter is made, extra keyword arguments that ``Client.create_study``
    would refuse only at the first trial (a typo, another library's option such as
    ``points_to_evaluate``); ``taken``: the ones the adapter sets itself."""
    from bbo_client.client import Client

    sig = inspect.signature(Client.create_study).parameters
    allowed = [k for k, p in sig.items() if p.kind is p.KEYWORD_ONLY and k not in taken]
    for k in options:
        if k not in allowed:
            raise TypeError(
                f"{owner}() got an unexpected keyword argument {k!r} (its extra keyword "
                f"arguments go to Client.create_study: {', '.join(allowed)})"
            )
