"""What every application kit offers: a described, seedable black box with a study spec.

A kit is a small object with

- ``name`` and ``description``: natural language for the LLM module (what is tuned, facts about the
  model / data set / solver / cluster that a human expert would use to guess good settings);
- ``spec(**options) -> StudySpec``: search space, objectives, outcome constraints, tracked metrics;
  options choose a variant (model and data set, solver problem, single- or multi-objective...) and
  are recorded as *fixed parameters* of the space, so that a trial's parameters alone say what to run;
- ``evaluate(params, seed=0) -> dict[str, float]``: run the black box; deterministic for a given
  ``params`` and ``seed`` (except the wall-clock metrics listed in ``wall_clock_metrics``);
- ``known_best(**options)``: the best objective value known for that variant, for regret, or None.

A kit whose model trains epoch by epoch (a fidelity) also implements :class:`TrainsByEpoch`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

from bbo.errors import SpecError
from bbo.space import FixedParam
from bbo.spec import StudySpec


class Kit:
    """Base class of the application kits (see the module docstring)."""

    name: str = ""
    description: str = ""
    #: metrics measured in wall-clock seconds: they vary from run to run even for one seed
    wall_clock_metrics: tuple[str, ...] = ()
    #: option name -> default, for ``spec`` and ``evaluate`` (missing fixed parameters take these)
    defaults: Mapping[str, Any] = {}

    def spec(self, **options: Any) -> StudySpec:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(
        self, params: Mapping[str, Any], seed: int = 0
    ) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError

    def known_best(self, **options: Any) -> float | None:
        return None

    # ---- helpers shared by the kits ------------------------------------------------------------
    def _options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise SpecError(
                "options",
                f"kit '{self.name}' has no option(s) {sorted(unknown)}; it takes {sorted(self.defaults)}",
            )
        out = dict(self.defaults)
        out.update({k: v for k, v in options.items() if v is not None})
        return out

    def _check_number(
        self,
        opts: Mapping[str, Any],
        name: str,
        low: float,
        high: float = float("inf"),
        *,
        integer: bool = False,
        above: bool = False,
    ) -> None:
        """Refuse an option that is not a finite number in ``[low, high]`` (``(low, high]`` with
        ``above``; a whole number with ``integer``): a study whose every trial fails or measures
        nothing is refused before it is created, and so is an infinite bound, which the server
        refuses without naming the option."""
        v = opts[name]
        ok = not isinstance(v, bool) and (
            isinstance(v, int) or isinstance(v, float) and math.isfinite(v)
        )
        if ok and integer:
            ok = isinstance(v, int) or v.is_integer()
        if ok:
            ok = (v > low if above else v >= low) and v <= high
        if not ok:
            kind = "a whole number" if integer else "a finite number"
            where = f"{'>' if above else '>='} {low:g}" + (
                f" and <= {high:g}" if high != float("inf") else ""
            )
            raise SpecError(
                name, f"kit '{self.name}': option {name} must be {kind} {where}, got {v!r}"
            )

    def _fixed(self, opts: Mapping[str, Any], names: tuple[str, ...]) -> tuple[FixedParam, ...]:
        return tuple(FixedParam(n, opts[n]) for n in names)

    def _with_defaults(self, params: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in self.defaults.items()}
        out.update(params)
        return out

    def __repr__(self) -> str:
        return f"<kit {self.name}>"


class EpochRun(Protocol):
    """One configuration being trained: its curve, and where it stands."""

    epochs: int  # epochs done
    error: float  # the hold-out error after them
    seconds: float  # training time so far

    def curve(self, epochs: int) -> Iterator[tuple[int, float]]:
        """Train to ``epochs``, yielding ``(epoch, error)`` after each epoch."""
        ...


@runtime_checkable
class TrainsByEpoch(Protocol):
    """A kit whose model trains epoch by epoch: a study with a fidelity prunes it mid-training."""

    def trainer(self, params: Mapping[str, Any], seed: int = 0) -> EpochRun:
        """A run of the configuration ``params`` (untrained)."""
        ...
