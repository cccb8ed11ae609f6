"""Search spaces: parameter kinds, linear parameter constraints, and the unit-cube encoding.

Encoding (what the surrogate sees): one column per non-fixed parameter.
- float / int: a number in [0, 1] (log-transformed first when ``log``); ints take only the
  finitely many values listed by :meth:`SearchSpace.discrete_values`.
- ordinal: its position on the grid, value ``i`` of ``k`` at ``i / (k - 1)`` (in a linear
  constraint: its value in [0, 1], log-transformed first when ``log``, as a float).
- categorical: the choice's index 0..k-1 (a categorical kernel treats it as unordered).
Fixed parameters take no column; they are added back on decode.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from bbo.errors import SpecError

Value = float | int | str

INT64 = 2**63  # int parameters and integer values live in [-2**63, 2**63) (protobuf int64)
EXACT_INT = 2**53  # whole numbers up to this are exact as doubles: ordinals of them are integers
# CreateStudy's check that whole-number ints and ordinal values can meet the parameter constraints
# stops after this long (undecided: the study is accepted, as before the check)
MILP_SECONDS = 2.0
# how far apart (in the encoding) the values of an enumerated int must be: the strategy counts
# points closer than this as one (bbo.strategy.model_data.MIN_SEPARATION)
GRID_SEPARATION = 1e-8


def separated(grid: np.ndarray) -> bool:
    """Whether an encoded grid's values are at least :data:`GRID_SEPARATION` apart (the strategy
    takes closer ones for one point)."""
    return bool(np.all(np.diff(grid) > GRID_SEPARATION))


def _check_width(width: float, path: str, name: str) -> None:
    """The encoding divides by the range's width (in the search scale): it must be a finite,
    positive double, or every point would encode alike."""
    if not (math.isfinite(width) and width > 0):
        raise SpecError(
            path,
            f"the range of '{name}' is too wide or too narrow for a double ({width}): narrow it",
        )


def _check_name(name: str, field_path: str) -> None:
    if (
        not isinstance(name, str)
        or not name
        or not name.replace("_", "a").replace(".", "a").replace("-", "a").isalnum()
    ):
        raise SpecError(
            field_path,
            f"parameter name {name!r} must be a non-empty string of letters, digits, '_', '.', '-'",
        )


def _finite(x: float, field_path: str) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        raise SpecError(field_path, f"{x!r} is not a number") from None
    if not math.isfinite(x):
        raise SpecError(field_path, f"must be finite, got {x}")
    return x


@dataclass(frozen=True)
class FloatParam:
    """A real-valued parameter in [low, high], searched on a linear or log scale."""

    kind: ClassVar[str] = "float"  # its name in specs, JSON and the proto oneof
    name: str
    low: float
    high: float
    log: bool = False

    def validate(self, path: str) -> None:
        low, high = _finite(self.low, f"{path}.low"), _finite(self.high, f"{path}.high")
        if low >= high:
            raise SpecError(
                f"{path}.high", f"high ({high}) must be greater than low ({low}) for '{self.name}'"
            )
        if self.log and low <= 0:
            raise SpecError(
                f"{path}.low", f"log-scale parameter '{self.name}' needs low > 0, got {low}"
            )
        _check_width(self._t(high) - self._t(low), path, self.name)

    def _t(self, x: float) -> float:
        return math.log(x) if self.log else x

    def to_unit(self, v: Value) -> float:
        lo, hi = self._t(self.low), self._t(self.high)
        return (self._t(float(v)) - lo) / (hi - lo)

    def from_unit(self, u: float) -> float:
        u = min(max(float(u), 0.0), 1.0)
        lo, hi = self._t(self.low), self._t(self.high)
        t = lo + u * (hi - lo)
        x = math.exp(t) if self.log else t
        return min(max(x, float(self.low)), float(self.high))

    def check(self, v: Value) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(self.name, f"'{self.name}' needs a number, got {v!r}")
        if not math.isfinite(v) or not (self.low <= v <= self.high):
            raise SpecError(self.name, f"'{self.name}'={v} is outside [{self.low}, {self.high}]")
        return float(v)


@dataclass(frozen=True)
class IntParam:
    """An integer parameter in [low, high] (inclusive), on a linear or log scale."""

    kind: ClassVar[str] = "int"  # its name in specs, JSON and the proto oneof
    name: str
    low: int
    high: int
    log: bool = False

    def validate(self, path: str) -> None:
        for attr in ("low", "high"):
            v = getattr(self, attr)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not -INT64 <= v < INT64:
                raise SpecError(
                    f"{path}.{attr}", f"'{self.name}'.{attr} must fit in 64 bits, got {v!r}"
                )
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, np.integer))
                and not (isinstance(v, float) and v.is_integer())
            ):
                raise SpecError(
                    f"{path}.{attr}", f"'{self.name}'.{attr} must be an integer, got {v!r}"
                )
        if self.low >= self.high:
            raise SpecError(
                f"{path}.high",
                f"high ({self.high}) must be greater than low ({self.low}) for '{self.name}'",
            )
        if self.log and self.low <= 0:
            raise SpecError(
                f"{path}.low", f"log-scale parameter '{self.name}' needs low > 0, got {self.low}"
            )

    def check_encodable(self, path: str) -> None:
        """Refuse a range whose whole numbers the encoding (in doubles) cannot tell apart: beyond
        2**53 neighbours can be one double or one logarithm, so [2**62, 2**62 + 1] encoded by a
        division by zero (every ask failed) and [2**62, 2**62 + 1000] only at its two ends (every
        ask after the design a fallback repeating them). Checked where a study is created (a
        stored study is read as it was accepted)."""
        _check_width(self._t(self.high) - self._t(self.low), path, self.name)
        if not separated(self.grid()):
            raise SpecError(
                path,
                f"the whole numbers of '{self.name}' are too close together for a double to tell "
                "apart (beyond 2**53 on this scale): shift the range towards zero",
            )

    def _t(self, x: float) -> float:
        return math.log(x) if self.log else float(x)

    def to_unit(self, v: Value) -> float:
        lo, hi = self._t(self.low), self._t(self.high)
        return (self._t(int(v)) - lo) / (hi - lo)

    def from_unit(self, u: float) -> int:
        u = min(max(float(u), 0.0), 1.0)
        lo, hi = self._t(self.low), self._t(self.high)
        t = lo + u * (hi - lo)
        x = math.exp(t) if self.log else t
        # Round in the search scale so each integer owns the half-way band around it.
        cands = [math.floor(x), math.ceil(x)]
        best = min(cands, key=lambda c: abs(self._t(min(max(c, self.low), self.high)) - t))
        return int(min(max(best, int(self.low)), int(self.high)))

    def grid(self) -> np.ndarray:
        n = int(self.high) - int(self.low) + 1
        if n > 10_000:
            return np.empty(
                0
            )  # too many values to enumerate: treated as continuous, rounded on decode
        return np.array([self.to_unit(v) for v in range(int(self.low), int(self.high) + 1)])

    def check(self, v: Value) -> int:
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float, np.integer))
            or (isinstance(v, float) and not v.is_integer())
        ):
            raise SpecError(self.name, f"'{self.name}' needs an integer, got {v!r}")
        if not (self.low <= v <= self.high):
            raise SpecError(self.name, f"'{self.name}'={v} is outside [{self.low}, {self.high}]")
        return int(v)


@dataclass(frozen=True)
class CategoricalParam:
    """An unordered choice among strings."""

    kind: ClassVar[str] = "categorical"  # its name in specs, JSON and the proto oneof
    log: ClassVar[bool] = False  # no scale: choices are not numbers
    name: str
    choices: tuple[str, ...]

    def validate(self, path: str) -> None:
        if len(self.choices) == 0:
            raise SpecError(
                f"{path}.choices", f"categorical '{self.name}' needs at least one choice"
            )
        for c in self.choices:
            if not isinstance(c, str):
                raise SpecError(
                    f"{path}.choices",
                    f"categorical '{self.name}' choices must be strings, got {c!r}",
                )
        if len(self._index) != len(self.choices):
            dup = sorted(c for c, n in Counter(self.choices).items() if n > 1)[:10]
            raise SpecError(
                f"{path}.choices", f"categorical '{self.name}' has duplicate choices {dup}"
            )

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.choices)}

    def to_unit(self, v: Value) -> float:
        return float(self._index[v])  # type: ignore[index]  # a choice not listed: KeyError

    def from_unit(self, u: float) -> str:
        i = int(round(min(max(float(u), 0.0), len(self.choices) - 1)))
        return self.choices[i]

    def check(self, v: Value) -> str:
        if not isinstance(v, str) or v not in self._index:
            shown = list(self.choices[:20]) + (["..."] if len(self.choices) > 20 else [])
            raise SpecError(self.name, f"'{self.name}'={v!r} is not one of {shown}")
        return v


@dataclass(frozen=True)
class OrdinalParam:
    """An ordered set of numeric values (e.g. batch sizes 16, 32, 64, 128)."""

    kind: ClassVar[str] = "ordinal"  # its name in specs, JSON and the proto oneof
    name: str
    values: tuple[float, ...]
    log: bool = False

    def validate(self, path: str) -> None:
        if len(self.values) < 2:
            raise SpecError(
                f"{path}.values",
                f"ordinal '{self.name}' needs at least two values (use a fixed parameter for one)",
            )
        vals = [_finite(v, f"{path}.values") for v in self.values]
        if len(set(vals)) != len(vals):
            raise SpecError(f"{path}.values", f"ordinal '{self.name}' has duplicate values")
        if list(vals) != sorted(vals):
            raise SpecError(
                f"{path}.values", f"ordinal '{self.name}' values must be sorted ascending"
            )
        if self.log and vals[0] <= 0:
            raise SpecError(
                f"{path}.values", f"log-scale ordinal '{self.name}' needs all values > 0"
            )
        _check_width(self._t(vals[-1]) - self._t(vals[0]), path, self.name)

    def _t(self, x: float) -> float:
        return math.log(x) if self.log else float(x)

    def to_unit(self, v: Value) -> float:
        lo, hi = self._t(self.values[0]), self._t(self.values[-1])
        return (self._t(float(v)) - lo) / (hi - lo)

    @functools.cached_property
    def _grid(self) -> np.ndarray:
        return np.array([self.to_unit(v) for v in self.values])

    def grid(self) -> np.ndarray:
        return self._grid.copy()

    @functools.cached_property
    def integral(self) -> bool:
        """All values are whole numbers that a double and an int64 hold exactly (batch sizes,
        layer counts): they are handed out as ints; other values as floats."""
        return all(float(x).is_integer() and abs(float(x)) <= EXACT_INT for x in self.values)

    @functools.cached_property
    def _by_value(self) -> dict[float, Value]:
        return {float(x): self._plain(x) for x in self.values}

    def _plain(self, x) -> Value:
        return int(x) if self.integral else float(x)

    def from_unit(self, u: float):
        return self._plain(self.values[int(np.argmin(np.abs(self._grid - float(u))))])

    @functools.cached_property
    def _scaled_values(self) -> np.ndarray:
        return np.array([self._t(float(x)) for x in self.values])

    def rank_unit(self, v: float) -> float:
        """``v``'s position on the grid in [0, 1]: value ``i`` of ``k`` at ``i / (k - 1)``, values
        in between interpolated on the search scale (for priors, which give any number)."""
        pos = np.linspace(0.0, 1.0, len(self.values))
        return float(np.interp(self._t(float(v)), self._scaled_values, pos))

    def rank_value(self, u: float) -> float:
        """The number at grid position ``u`` in [0, 1], interpolated on the search scale: the
        inverse of :meth:`rank_unit` (a prior's spread set on the encoded column)."""
        pos = np.linspace(0.0, 1.0, len(self.values))
        x = float(np.interp(min(max(float(u), 0.0), 1.0), pos, self._scaled_values))
        return math.exp(x) if self.log else x

    def from_rank_unit(self, u: float):
        k = len(self.values)
        return self._plain(self.values[int(round(min(max(float(u), 0.0), 1.0) * (k - 1)))])

    def check(self, v: Value):
        shown = list(self.values[:20]) + (["..."] if len(self.values) > 20 else [])
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise SpecError(self.name, f"'{self.name}' needs one of {shown}, got {v!r}")
        try:
            x = float(v)
            if x != v:  # a whole number a double cannot hold (2**53 + 1): no listed value
                raise KeyError(v)
            return self._by_value[x]
        except (KeyError, OverflowError):
            raise SpecError(self.name, f"'{self.name}'={v} is not one of {shown}") from None


@dataclass(frozen=True)
class FixedParam:
    """A parameter held at one value (reported to workers, not searched)."""

    kind: ClassVar[str] = "fixed"  # its name in specs, JSON and the proto oneof
    log: ClassVar[bool] = False  # no scale: not searched
    name: str
    value: Value

    def validate(self, path: str) -> None:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise SpecError(f"{path}.value", f"fixed '{self.name}' must be a number or a string")
        if isinstance(v, float) and not math.isfinite(v):
            raise SpecError(f"{path}.value", f"fixed '{self.name}' must be finite")
        if isinstance(v, int) and not -INT64 <= v < INT64:
            raise SpecError(f"{path}.value", f"fixed '{self.name}' must fit in 64 bits")

    def check(self, v: Value) -> Value:
        if v != self.value:
            raise SpecError(self.name, f"'{self.name}' is fixed at {self.value!r}, got {v!r}")
        return self.value


Param = FloatParam | IntParam | CategoricalParam | OrdinalParam | FixedParam
# a parameter with a column in the encoding
FreeParam = FloatParam | IntParam | CategoricalParam | OrdinalParam
# every parameter kind by its name: a new kind is a class above, listed here
PARAM_KINDS: dict[str, type] = {
    c.kind: c for c in (FloatParam, IntParam, CategoricalParam, OrdinalParam, FixedParam)
}


def param_to_dict(p: Param) -> dict[str, Any]:
    """The parameter as plain JSON data: ``{"type": kind, **fields}``."""
    d = asdict(p)
    for k in ("choices", "values"):
        if k in d:
            d[k] = list(d[k])
    return {"type": p.kind, **d}


def param_from_dict(d: Mapping[str, Any], i: int) -> Param:
    """The parameter ``parameters[i]`` of a spec's JSON data (not yet validated)."""
    d = dict(d)
    kind = d.pop("type", None)
    cls = PARAM_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise SpecError(
            f"parameters[{i}].type",
            f"unknown parameter type {kind!r}: use {', '.join(PARAM_KINDS)}",
        )
    for k in ("choices", "values"):
        if k in d:
            d[k] = tuple(d[k])
    try:
        return cls(**d)
    except TypeError as e:
        raise SpecError(f"parameters[{i}]", f"bad fields for a {kind} parameter: {e}") from None


@dataclass(frozen=True)
class LinearConstraint:
    """``sum(coefficients[name] * value[name]) <= bound`` over linear-scale numeric parameters."""

    coefficients: Mapping[str, float]
    bound: float

    def lhs(self, params: Mapping[str, Value]) -> float:
        return sum(float(c) * float(params[n]) for n, c in self.coefficients.items())

    def satisfied(self, params: Mapping[str, Value], tol: float = 1e-9) -> bool:
        """Whether ``params`` meet the constraint, up to ``tol`` relative to the bound and
        coefficients. A :class:`SearchSpace` judges its own constraints by the parameters' ranges
        instead (:meth:`SearchSpace.is_feasible`): this scale lets a bound far from zero (a
        range of [1e9, 1e9 + 1]) excuse violations as wide as the range."""
        scale = max(1.0, abs(self.bound), *(abs(c) for c in self.coefficients.values()))
        return self.lhs(params) <= self.bound + tol * scale

    def __str__(self) -> str:
        terms = " + ".join(f"{c:g}*{n}" for n, c in self.coefficients.items())
        return f"{terms} <= {self.bound:g}"


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of parameters plus linear constraints, validated on construction."""

    params: tuple[Param, ...]
    constraints: tuple[LinearConstraint, ...] = field(default=())

    def __post_init__(self):
        object.__setattr__(self, "params", tuple(self.params))
        object.__setattr__(self, "constraints", tuple(self.constraints))
        if not self.params:
            raise SpecError("parameters", "the search space needs at least one parameter")
        seen: set[str] = set()
        for i, p in enumerate(self.params):
            path = f"parameters[{i}]"
            _check_name(p.name, f"{path}.name")
            if p.name in seen:
                raise SpecError(
                    f"{path}.name", f"duplicate parameter name '{p.name}': names must be unique"
                )
            seen.add(p.name)
            p.validate(path)
        if not self.free:
            raise SpecError("parameters", "every parameter is fixed: nothing to search")
        by_name = self.by_name
        for j, c in enumerate(self.constraints):
            path = f"parameter_constraints[{j}]"
            if not c.coefficients:
                raise SpecError(
                    f"{path}.coefficients", "a linear constraint needs at least one term"
                )
            _finite(c.bound, f"{path}.bound")
            for n, a in c.coefficients.items():
                _finite(a, f"{path}.coefficients['{n}']")
                p = by_name.get(n)
                if p is None:
                    raise SpecError(
                        f"{path}.coefficients", f"constraint names unknown parameter '{n}'"
                    )
                if isinstance(p, (CategoricalParam, FixedParam)):
                    raise SpecError(
                        f"{path}.coefficients",
                        f"constraint term '{n}' is {type(p).__name__[:-5].lower()}: only float, int and ordinal parameters can be constrained",
                    )
                if p.log:
                    raise SpecError(
                        f"{path}.coefficients",
                        f"constraint term '{n}' is on a log scale: a linear constraint needs linear-scale parameters",
                    )
        for j, (_, coef, rhs) in enumerate(self.inequality_constraints()):
            if not all(math.isfinite(x) for x in (*coef, rhs)):
                raise SpecError(
                    f"parameter_constraints[{j}]",
                    "coefficients times parameter ranges overflow a double: rescale the constraint",
                )
        if self.constraints and self._feasible_point() is None:
            raise SpecError(
                "parameter_constraints",
                "the parameter constraints admit no point inside the parameter bounds: loosen a bound",
            )

    # ---- structure ---------------------------------------------------------------------------
    @functools.cached_property
    def by_name(self) -> dict[str, Param]:
        return {p.name: p for p in self.params}

    @functools.cached_property
    def free(self) -> tuple[FreeParam, ...]:
        """Parameters that get a column in the encoding (all but fixed)."""
        return tuple(p for p in self.params if not isinstance(p, FixedParam))

    @property
    def dim(self) -> int:
        return len(self.free)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.free]

    @functools.cached_property
    def by_rank(self) -> frozenset[str]:
        """Ordinal parameters encoded by their position on the grid (value ``i`` of ``k`` at
        ``i / (k - 1)``): all but those in a linear constraint, which needs the value scale.
        Grids are usually laid out so that each step matters alike (batch sizes 16, 32, 64, ...,
        learning rates 1e-4, 1e-3, ...), and listed without ``log``: on the value scale such a
        grid crowds all but its last values into a corner of the column, where a kernel cannot
        tell them apart and a space-filling design rarely lands."""
        constrained = {n for c in self.constraints for n in c.coefficients}
        return frozenset(
            p.name for p in self.free if isinstance(p, OrdinalParam) and p.name not in constrained
        )

    def unit(self, p: FreeParam, v: Value) -> float:
        """``v`` (a value of ``p``, or any number in its range for an ordinal) on ``p``'s encoded
        column."""
        if isinstance(p, OrdinalParam) and p.name in self.by_rank:
            return p.rank_unit(float(v))
        return p.to_unit(v)

    @functools.cached_property
    def floats_constrained(self) -> bool:
        """Whether a float parameter is in a linear constraint (:meth:`complete` can move it)."""
        tied = {n for c in self.constraints for n in c.coefficients}
        return any(isinstance(p, FloatParam) and p.name in tied for p in self.free)

    @property
    def cat_dims(self) -> list[int]:
        return [i for i, p in enumerate(self.free) if isinstance(p, CategoricalParam)]

    def bounds(self) -> np.ndarray:
        """(2, d) box of the encoding: [0, 1] per numeric column, [0, k-1] per categorical."""
        hi = [len(p.choices) - 1 if isinstance(p, CategoricalParam) else 1.0 for p in self.free]
        return np.array([[0.0] * self.dim, [float(h) for h in hi]])

    def discrete_values(self) -> dict[int, np.ndarray]:
        """Column -> its allowed encoded values, for int / ordinal / categorical columns."""
        out: dict[int, np.ndarray] = {}
        for i, p in enumerate(self.free):
            if isinstance(p, OrdinalParam) and p.name in self.by_rank:
                out[i] = np.linspace(0.0, 1.0, len(p.values))
            elif isinstance(p, (IntParam, OrdinalParam)):
                g = p.grid()
                if g.size:
                    out[i] = g
            elif isinstance(p, CategoricalParam):
                out[i] = np.arange(len(p.choices), dtype=float)
        return out

    def inequality_constraints(self) -> list[tuple[list[int], list[float], float]]:
        """Constraints in the encoding, BoTorch style: ``sum(coef * x[idx]) >= rhs``."""
        col = {p.name: i for i, p in enumerate(self.free)}
        out = []
        for c in self.constraints:
            idx, coef, rhs = [], [], float(c.bound)
            for n, a in c.coefficients.items():
                p = self.by_name[n]
                lo, hi = _linear_range(p)
                # a * (lo + u * (hi - lo)) summed <= b   <=>   sum(-a (hi-lo) u) >= -(b - sum a lo)
                idx.append(col[n])
                coef.append(-float(a) * (hi - lo))
                rhs -= float(a) * lo
            out.append((idx, coef, -rhs))
        return out

    # ---- encoding ----------------------------------------------------------------------------
    def validate_params(
        self, params: Mapping[str, Value], path: str = "parameters"
    ) -> dict[str, Value]:
        """Type- and range-check a full assignment; returns it canonicalised, or raises SpecError."""
        if not isinstance(params, Mapping):
            raise SpecError(path, "parameters must be a mapping of name to value")
        extra = set(params) - set(self.by_name)
        if extra:
            raise SpecError(
                path,
                f"unknown parameter(s) {sorted(extra)}; the space has {[p.name for p in self.params]}",
            )
        out: dict[str, Value] = {}
        for p in self.params:
            if p.name not in params:
                if isinstance(p, FixedParam):
                    out[p.name] = p.value
                    continue
                raise SpecError(path, f"missing parameter '{p.name}'")
            try:
                out[p.name] = p.check(params[p.name])
            except SpecError as e:
                raise SpecError(f"{path}['{p.name}']", e.message) from None
        for j, c in enumerate(self.constraints):
            lhs = c.lhs(out)
            if lhs > c.bound + self.slack[j]:
                # repr, not :g: lhs 0.6000001 against a bound of 0.6 read "lhs = 0.6"
                raise SpecError(
                    path,
                    f"parameters violate constraint {j} ({c}): the left-hand side is {lhs!r}, "
                    f"{lhs - c.bound:.3g} over the bound",
                )
        return out

    def encode(self, params: Mapping[str, Value]) -> np.ndarray:
        return np.array([self.unit(p, params[p.name]) for p in self.free], dtype=float)

    def decode(self, x: Sequence[float] | np.ndarray) -> dict[str, Value]:
        x = list(map(float, x))
        if len(x) != self.dim:
            raise ValueError(f"expected {self.dim} encoded values, got {len(x)}")
        free = iter(zip(self.free, x))
        out: dict[str, Value] = {}
        for p in self.params:
            if isinstance(p, FixedParam):
                out[p.name] = p.value
            else:
                q, u = next(free)
                if isinstance(q, OrdinalParam) and q.name in self.by_rank:
                    out[p.name] = q.from_rank_unit(u)
                else:
                    out[p.name] = q.from_unit(u)
        return out

    def is_feasible(self, params: Mapping[str, Value]) -> bool:
        return all(c.lhs(params) <= c.bound + s for c, s in zip(self.constraints, self.slack))

    @functools.cached_property
    def slack(self) -> tuple[float, ...]:
        """Per constraint, how far its left-hand side may exceed the bound: 1e-9 of the
        constraint's own scale, the bound or a coefficient (at least 1) as before but never more
        than its widest term's range (``|a| * (high - low)``, its coefficient in the encoding the
        optimizer works in), plus the rounding of the sum in doubles. Scaled by the bound alone,
        ``x + y <= 1e9 + 1`` over x in [1e9, 1e9 + 1] and y in [0, 1] let points through that
        broke it by 0.57 (the initial design's, a repaired optimizer point's, an added trial's).
        Only float terms count for the range: an int or ordinal is handed out at its exact value,
        and ``1e12 * n + 2 * m <= 1`` over ints excused n = 0, m = 2 (1,000 of slack)."""
        out = []
        for c in self.constraints:
            terms = [(float(a), *_linear_range(self.by_name[n])) for n, a in c.coefficients.items()]
            old = max(1.0, abs(c.bound), *(abs(a) for a, _, _ in terms))
            floats = [isinstance(self.by_name[n], FloatParam) for n in c.coefficients]
            width = max(
                (abs(a) * (hi - lo) for (a, lo, hi), f in zip(terms, floats) if f), default=0.0
            )
            eps = 4 * (len(terms) + 2) * float(np.finfo(float).eps)  # first: no overflow
            rounding = eps * abs(c.bound) + sum(
                eps * abs(a) * abs(lo) + eps * abs(a) * abs(hi) for a, lo, hi in terms
            )
            out.append(1e-9 * min(old, width) + rounding)
        return tuple(out)

    def check_encodable(self) -> None:
        """Refuse int ranges the encoding cannot tell apart (:meth:`IntParam.check_encodable`), and
        ordinal values it cannot where the value scale encodes them (an ordinal in a linear
        constraint: values 0, 1e-300, 2e-300, 1 were one point, and only 0 and 1 were handed out)."""
        for i, p in enumerate(self.params):
            if isinstance(p, IntParam):
                p.check_encodable(f"parameters[{i}]")
            elif isinstance(p, OrdinalParam) and p.name not in self.by_rank:
                if not separated(p.grid()):
                    raise SpecError(
                        f"parameters[{i}].values",
                        f"values of '{p.name}' are too close together for the constraint's "
                        f"value scale to tell apart (within {GRID_SEPARATION:g} of its range): "
                        "spread or merge them",
                    )

    def check_reachable(self, path: str = "parameter_constraints") -> None:
        """Refuse parameter constraints that no point the study can hand out meets: the box check
        of construction relaxes ints and ordinals to ranges, so constraints that fit only between
        two whole numbers or two ordinal values pass it, and every ask of such a study would fail.
        Checked where a study is created (a stored study is read as it was accepted)."""
        relaxed = self._feasible_point() if self.constraints else None
        if relaxed is not None and self._breaks_slack(relaxed):
            raise SpecError(
                path,
                "the parameter constraints admit no point inside the parameter bounds (within "
                "1e-9 of each constraint's scale): loosen a bound",
            )
        if self.constraints and self._grid_solution[0] is False:
            raise SpecError(
                path,
                "the parameter constraints admit no point with whole-number int parameters and "
                "ordinal parameters at one of their values: loosen a bound",
            )
        if self.constraints and self._feasible_point() is not None:
            from bbo.discrete_search import feasible_grid

            _, eq = split_equalities(self.inequality_constraints(), self.bounds())
            grid = feasible_grid(self)  # a small grid's points; None where it is not one
            only = grid[0] if grid is not None and len(grid) == 1 else None  # a + b <= 0.5
            if (
                only is not None
                or np.linalg.matrix_rank(dense_constraints(eq, self.dim)[0]) >= self.dim
            ):
                point = self.decode(only) if only is not None else self.feasible_params or {}
                shown = ", ".join(f"{n} = {v!r}" for n, v in point.items())
                raise SpecError(
                    path,
                    f"the parameter constraints leave one point ({shown}): there is nothing to "
                    "search; make those parameters fixed, or loosen a constraint",
                )

    @property
    def feasible_params(self) -> dict[str, Value] | None:
        """A point meeting every parameter constraint, ints whole and ordinals at their values
        (the last resort of the design's sampling), or None where none was found."""
        found = self._grid_solution[1]
        return dict(found) if found is not None else None

    @functools.cached_property
    def _grid_solution(self) -> tuple[bool | None, dict[str, Value] | None]:
        """``(True, point)`` for a point of the constraints that the space can hand out, found by a
        mixed-integer LP over the encoding (an int in a constraint by its whole steps from low, a
        constrained ordinal by one binary per value); ``(False, None)`` where the LP proves there
        is none; ``(None, None)`` where it could not tell (time limit, numerics)."""
        from scipy.optimize import Bounds, milp
        from scipy.optimize import LinearConstraint as Rows

        constrained = {n for c in self.constraints for n in c.coefficients}
        box = self.bounds()
        lo, hi = [float(v) for v in box[0]], [float(v) for v in box[1]]
        integral = [0] * self.dim
        scale = [1.0] * self.dim  # encoded value per unit of the column
        onehot: dict[int, tuple[int, np.ndarray]] = {}  # column -> (first binary, ordinal grid)
        for i, p in enumerate(self.free):
            if p.name not in constrained:
                continue
            if isinstance(p, IntParam):
                steps = int(p.high) - int(p.low)
                if steps <= EXACT_INT:  # wider: whole steps are not exact as doubles
                    hi[i], integral[i], scale[i] = float(steps), 1, 1.0 / steps
            elif isinstance(p, OrdinalParam):
                g = p.grid()
                onehot[i] = (len(lo), g)
                lo += [0.0] * len(g)
                hi += [1.0] * len(g)
                integral += [1] * len(g)
        n = len(lo)
        rows, low_rhs, high_rhs = [], [], []
        for idx, coef, rhs in self.inequality_constraints():  # sum(coef * u) >= rhs
            row = np.zeros(n)
            for j, a in zip(idx, coef):
                if j in onehot:
                    start, g = onehot[j]
                    row[start : start + len(g)] += a * g
                else:
                    row[j] += a * scale[j]
            rows.append(row)
            low_rhs.append(rhs)
            high_rhs.append(np.inf)
        for start, g in onehot.values():  # one value per ordinal
            row = np.zeros(n)
            row[start : start + len(g)] = 1.0
            rows.append(row)
            low_rhs.append(1.0)
            high_rhs.append(1.0)
        A, b, ub = scaled_rows(np.array(rows), np.array(low_rhs), np.array(high_rhs))
        res = milp(
            np.zeros(n),
            constraints=Rows(A, b, ub),
            integrality=np.array(integral),
            bounds=Bounds(lo, hi),
            # HiGHS's presolve ignores the time limit: 20 ordinals of 1,000 values under 8
            # constraints presolved 14-18 s and then could not tell; without it, 0.5 s to a point
            options={"time_limit": MILP_SECONDS, "presolve": False},
        )
        if res.status == 2:
            return False, None
        if res.status != 0 or res.x is None:
            return None, None
        u = [
            round(res.x[i]) * scale[i] if integral[i] else float(res.x[i]) for i in range(self.dim)
        ]
        for i, (start, g) in onehot.items():
            u[i] = float(g[int(np.argmax(res.x[start : start + len(g)]))])
        params = self.decode(u)
        return (True, params) if self.is_feasible(params) else (None, None)

    def may_be_feasible(self, X: np.ndarray) -> np.ndarray:
        """Per row of ``X`` (n x d, the encoding), False where its decoded point surely breaks a
        constraint: even the rounding of each int and ordinal most favourable to each constraint
        breaks it, past its slack and a margin for the sum's rounding. One vectorized pass, so
        the Python decode and check of :meth:`is_feasible` runs only on rows that may meet
        every constraint (a constraint Sobol points rarely meet had the design decode hundreds
        of thousands of rows)."""
        col = {p.name: i for i, p in enumerate(self.free)}
        ok = np.ones(len(X), dtype=bool)
        for c, s in zip(self.constraints, self.slack):
            low = np.zeros(len(X))  # the smallest left-hand side any rounding gives
            scale = abs(float(c.bound))
            for n, a in c.coefficients.items():
                p, a = self.by_name[n], float(a)
                lo, hi = _linear_range(p)
                v = np.clip(lo + np.clip(X[:, col[n]], 0.0, 1.0) * (hi - lo), lo, hi)
                if isinstance(p, IntParam):
                    down, up = np.floor(v), np.ceil(v)
                elif isinstance(p, OrdinalParam):
                    vals = np.asarray(p.values, dtype=float)
                    j = np.clip(np.searchsorted(vals, v), 1, len(vals) - 1)
                    down, up = vals[j - 1], vals[j]
                else:
                    down = up = v
                low += np.minimum(a * down, a * up)
                scale += abs(a) * max(abs(lo), abs(hi))
            ok &= low <= float(c.bound) + s + 1e-12 * scale
        return ok

    def complete(self, x: np.ndarray) -> dict[str, Value] | None:
        """``x`` (a point of the relaxed encoding) decoded, its ints and ordinals rounded and its
        floats then moved as little as the constraints need (least L1 change, one linear
        program): rounding alone rarely meets constraints that tie a float to an int (``a + x ==
        2.5``; a thin band across the box), so sampled points almost all broke them. None where
        no float is in a constraint or the rounded values leave the floats no room."""
        p = self.decode(x)
        if not self.constraints or self.is_feasible(p):
            return p
        from scipy.optimize import linprog

        u = self.encode(p)
        floats = [i for i, q in enumerate(self.free) if isinstance(q, FloatParam)]
        A, b = dense_constraints(self.inequality_constraints(), self.dim)  # A u >= b
        A_f = A[:, floats]
        live = np.abs(A_f).max(axis=1, initial=0.0) > 0
        if not live.any():
            return None
        rest = np.delete(np.arange(self.dim), floats)
        # rows on the floats f: A_f f >= b - A_rest u_rest; variables (f, t), t >= |f - u_f|
        G, g = scaled_rows(A_f[live], (b - A[:, rest] @ u[rest])[live])
        k = len(floats)
        eye = np.eye(k)
        res = linprog(
            np.r_[np.zeros(k), np.ones(k)],
            A_ub=np.vstack([np.c_[-G, np.zeros((len(G), k))], np.c_[eye, -eye], np.c_[-eye, -eye]]),
            b_ub=np.r_[-g, u[floats], -u[floats]],
            bounds=[(0.0, 1.0)] * k + [(0.0, None)] * k,
            method="highs",
        )
        if res.status != 0:
            return None
        u[floats] = np.clip(res.x[:k], 0.0, 1.0)
        q = self.decode(u)
        return q if self.is_feasible(q) else None

    def _feasible_point(self) -> np.ndarray | None:
        """A point of the relaxed box that meets every constraint (LP), or None."""
        from scipy.optimize import linprog

        A, b = scaled_rows(*dense_constraints(self.inequality_constraints(), self.dim))
        box = self.bounds()
        res = linprog(
            np.zeros(self.dim),
            A_ub=-A,
            b_ub=-b + 1e-12,
            bounds=list(zip(box[0], box[1])),
            method="highs",
        )
        return res.x if res.status == 0 else None

    def _breaks_slack(self, x: np.ndarray) -> bool:
        """Whether the relaxed point ``x`` (the LP's) breaks a constraint past :attr:`slack` over
        its floats (its ints and ordinals are relaxed to ranges: their terms keep the LP's
        precision). HiGHS excuses 1e-7 of a scaled row, so ``1e-300 * x <= 0`` over x >= 1e-4
        was accepted and every ask then searched a minute for a point and failed."""
        A, b = dense_constraints(self.inequality_constraints(), self.dim)
        disc = [i for i, p in enumerate(self.free) if not isinstance(p, FloatParam)]
        excused = np.asarray(self.slack) + 1e-9 * np.abs(A[:, disc]).max(axis=1, initial=0.0)
        return bool(np.any(b - A @ x > excused))


def scaled_rows(A: np.ndarray, *sides: np.ndarray) -> tuple[np.ndarray, ...]:
    """The rows ``A x`` against their ``sides`` (right-hand sides), each row divided by its
    largest coefficient: HiGHS refuses a matrix entry of 1e15 or more as a model error (which
    scipy reports as infeasible, so ``x - y <= 0`` over [0, 1e15] was refused as admitting no
    point) and drops entries below 1e-9 as zeros. A side past a double (``1e-300 * x <= 1e12``,
    a row far tinier than its bound) is capped at 1e300, far past what the row reaches on the
    unit box: it was inf, which linprog refused (CreateStudy failed INTERNAL)."""
    norm = np.abs(A).max(axis=1, initial=0.0)
    norm[norm == 0] = 1.0
    with np.errstate(over="ignore"):
        scaled = [np.clip(np.asarray(v, dtype=float) / norm, -1e300, 1e300) for v in sides]
    return (A / norm[:, None], *scaled)


def _linear_range(p: Param) -> tuple[float, float]:
    if isinstance(p, OrdinalParam):
        return float(p.values[0]), float(p.values[-1])
    return float(p.low), float(p.high)  # type: ignore[union-attr]


# a constraint in the encoding, BoTorch's form: sum(coef * x[idx]) >= rhs
EncodedConstraint = tuple[list[int], list[float], float]


def _terms(idx: list[int], coef: list[float]) -> tuple[tuple[int, float], ...]:
    """A constraint's left-hand side, in an order-free form."""
    return tuple(sorted(zip(idx, coef)))


def split_equalities(
    cons: list[EncodedConstraint], bounds: np.ndarray | None = None
) -> tuple[list[EncodedConstraint], list[EncodedConstraint]]:
    """``(inequalities, equalities)``: a pair ``a.x >= r`` and ``-a.x >= -r`` (a user's
    ``a.x <= b`` beside ``-a.x <= -b``, e.g. weights that sum to one) is the equality ``a.x = r``,
    which leaves the polytope no interior for hit-and-run to walk in. With ``bounds`` (the
    encoded box, 2 x d) the equalities the box and the constraints imply are added too
    (:func:`pinned`): ``x <= 0`` for ``x`` in [0, 1] is ``x = 0``."""
    index = {(_terms(idx, coef), rhs): i for i, (idx, coef, rhs) in enumerate(cons)}
    paired: set[int] = set()
    eq = []
    for i, (idx, coef, rhs) in enumerate(cons):
        j = index.get((_terms(idx, [-a for a in coef]), -rhs))
        if j is not None and j != i and i not in paired and j not in paired:
            paired |= {i, j}
            eq.append((idx, coef, rhs))
    ineq = [c for i, c in enumerate(cons) if i not in paired]
    if bounds is None or not cons:
        return ineq, eq
    met, rows, fixed = pinned(ineq, eq, bounds)
    return (
        [c for k, c in enumerate(ineq) if k not in met],
        eq + [([j], [1.0], v) for j, v in fixed] + [c for k, c in enumerate(ineq) if k in rows],
    )


# a range counts as empty where it is no wider than this (relative to the row scaled to a largest
# coefficient of one, or to the column's range in the box)
PINNED_TOL = 1e-9


def pinned(
    ineq: list[EncodedConstraint], eq: list[EncodedConstraint], bounds: np.ndarray
) -> tuple[frozenset[int], frozenset[int], tuple[tuple[int, float], ...]]:
    """What the polytope ``ineq`` and ``eq`` cut from the box ``bounds`` holds fixed, as linear
    programs (the range of each constrained column, then of each inequality) find it: the
    inequalities (by position) every point of it meets with equality; those of them that add a
    direction to the equalities (the others are implied by them); and ``(column, value)`` for each
    column it leaves one value (again where that adds a direction). Left as
    inequalities the polytope has no interior: hit-and-run found no room, and the design
    repeated one point of a space with a whole face to sample (x, z in [0, 1] under x <= 0: every
    design trial at (0, 0), each ask taking seconds). Cached per constraints and box."""
    key = (
        tuple((tuple(i), tuple(c), float(r)) for i, c, r in ineq),
        tuple((tuple(i), tuple(c), float(r)) for i, c, r in eq),
        tuple(map(tuple, np.asarray(bounds, dtype=float))),
    )
    return _pinned(key)


@functools.lru_cache(maxsize=64)
def _pinned(key: tuple) -> tuple[frozenset[int], frozenset[int], tuple[tuple[int, float], ...]]:
    from scipy.optimize import linprog

    ineq, eq, box = key
    lo, hi = np.asarray(box, dtype=float)
    d = lo.size
    G, g = scaled_rows(*dense_constraints([(list(i), list(c), r) for i, c, r in ineq], d))
    E, e = scaled_rows(*dense_constraints([(list(i), list(c), r) for i, c, r in eq], d))
    box_bounds = list(zip(lo, hi))

    def largest(c: np.ndarray) -> float | None:
        """max c.x over the polytope, None where the program fails."""
        res = linprog(
            -c,
            A_ub=-G,
            b_ub=-g,
            A_eq=E if len(E) else None,
            b_eq=e if len(E) else None,
            bounds=box_bounds,
            method="highs",
        )
        return -float(res.fun) if res.status == 0 else None

    held = [E[k] for k in range(len(E))]

    def adds(row: np.ndarray) -> bool:
        if np.linalg.matrix_rank(np.vstack(held + [row])) > len(held):
            held.append(row)
            return True
        return False

    fixed = []
    for j in sorted({j for i, _, _ in ineq + eq for j in i}):
        unit = np.zeros(d)
        unit[j] = 1.0
        top, bottom = largest(unit), largest(-unit)
        if top is None or bottom is None:
            return frozenset(), frozenset(), ()  # no point at all: refused where that is found
        if top + bottom <= PINNED_TOL * max(1.0, hi[j] - lo[j]) and adds(unit):
            fixed.append((j, min(max(-bottom, lo[j]), hi[j])))
    met, rows = set(), set()
    for k in range(len(G)):
        top = largest(G[k])
        if top is not None and top - g[k] <= PINNED_TOL * max(1.0, abs(g[k])):
            met.add(k)
            if adds(G[k]):
                rows.add(k)
    return frozenset(met), frozenset(rows), tuple(fixed)


def dense_constraints(cons: list[EncodedConstraint], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with ``A @ x >= b`` row by row: encoded constraints as a dense system (rows of
    zeros outside each constraint's parameters)."""
    A = np.zeros((len(cons), dim))
    for k, (idx, coef, _) in enumerate(cons):
        A[k, idx] = coef
    return A, np.array([float(rhs) for _, _, rhs in cons])
