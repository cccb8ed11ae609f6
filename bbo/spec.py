"""What a study optimizes: objectives, outcome constraints, tracked metrics, options and priors.

A :class:`StudySpec` is plain data; ``to_dict`` / ``from_dict`` give the JSON form that storage keeps
and the gRPC layer translates to and from protobuf.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from bbo.errors import SpecError
from bbo.space import (
    CategoricalParam,
    FixedParam,
    LinearConstraint,
    SearchSpace,
    param_from_dict,
    param_to_dict,
)

MINIMIZE, MAXIMIZE = "minimize", "maximize"
# how an objective is observed: AUTO judges it from the data (bbo.strategy.noise); NOISY and
# DETERMINISTIC are the user's word for it (Vizier's observation_noise, Optuna's
# deterministic_objective), in force from the first ask
NOISE_AUTO, NOISE_NOISY, NOISE_DETERMINISTIC = "auto", "noisy", "deterministic"
OBSERVATION_NOISE = (NOISE_AUTO, NOISE_NOISY, NOISE_DETERMINISTIC)
MEDIAN, ASHA, HYPERBAND, NO_PRUNING = "median", "asha", "hyperband", "none"
PRUNING_POLICIES = (MEDIAN, ASHA, HYPERBAND, NO_PRUNING)


@dataclass(frozen=True)
class Objective:
    """A metric to minimize or maximize."""

    name: str
    goal: str = MINIMIZE
    noise: str = NOISE_AUTO  # one of OBSERVATION_NOISE

    @property
    def sign(self) -> float:
        """+1 when larger is better (the surrogate maximizes ``sign * value``)."""
        return 1.0 if self.goal == MAXIMIZE else -1.0


@dataclass(frozen=True)
class OutcomeConstraint:
    """A black-box constraint on a metric: ``metric <= bound`` or ``metric >= bound``."""

    metric: str
    op: str  # "<=" or ">="
    bound: float

    def satisfied(self, value: float) -> bool:
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class ParameterPrior:
    """A belief about where the optimum lies in one parameter (piBO-style).

    Numeric parameters: ``mean`` and ``std`` in the parameter's own units (log units are handled by
    the encoding). Categoricals: ``probabilities`` per choice. ``confidence`` in (0, 1] scales how
    strongly the prior bends the acquisition.
    """

    parameter: str
    mean: float | None = None
    std: float | None = None
    probabilities: Mapping[str, float] | None = None
    confidence: float = 0.5
    source: str = "user"  # "user" or "llm"


@dataclass(frozen=True)
class AlgorithmOptions:
    """Knobs of the generation strategy; defaults suit most studies."""

    n_initial: int = 0  # 0 = choose from the dimension: max(5, 2 * d), capped at 20 (cut to d + 1 once LLM or user advice measures best)
    seed: int | None = None
    device: str = "auto"  # "auto", "cpu" or "cuda"
    max_fit_points: int = 1000  # above this, hyperparameters are fit on a subset
    max_model_points: int = 3000  # above this, the GP conditions on a subset near the incumbent
    refit_growth: float = 0.2  # refit hyperparameters when the data grew by this fraction
    # beta of piBO: prior weight is prior(x)^(beta/n). 3 measured best of 1 / 3 / 10 (bench_llm, 5 seeds x 40
    # evaluations): 1 barely helps with an accurate prior, 10 lets a misleading one cost 30x on Hartmann6
    prior_exponent: float = 3.0
    # acquisition steps between exploitation steps (the surrogate's predicted best point), the gap doubling
    # after each one that does not improve; 0 = never. bench_core, 5 seeds x 50: Branin 6.6e-7 -> 9.1e-8,
    # Hartmann6 1.4e-5 -> 1.3e-6, constrained Hartmann6 1.1e-5 -> 2.7e-6
    exploit_gap: int = 2
    reference_point: Mapping[str, float] | None = None  # multi-objective, per objective

    def initial_size(self, dim: int) -> int:
        return self.n_initial if self.n_initial > 0 else min(20, max(5, 2 * dim))


@dataclass(frozen=True)
class LlmOptions:
    """Per-study opt-in to the LLM module."""

    enabled: bool = False
    warmstart_candidates: int = 0  # 0 = a third of the initial design
    derive_priors: bool = True
    propose_during_search: bool = False
    model: str = ""  # empty = the server's default


MAX_TRANSFER_SOURCES = 64  # sources one study may use (bbo serve --max-transfer-sources: 8)


@dataclass(frozen=True)
class TransferOptions:
    """Transfer from earlier studies of the same tenant (:mod:`bbo.transfer`).

    ``sources``: study names, resolved to their uids when the study is created. ``auto``: bbo also
    ranks the tenant's stored studies by relatedness and adds the best, up to ``max_sources`` in
    all (0 = the default, 3; every named source is used, more than 3 too)."""

    sources: tuple[str, ...] = ()
    auto: bool = False
    max_sources: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.sources) or self.auto

    @property
    def limit(self) -> int:
        return self.max_sources or 3


@dataclass(frozen=True)
class Fidelity:
    """What a trial's budget counts (epochs, a data fraction, solver iterations, simulated hours)
    and its range: trials run at budgets from ``min`` to ``max``; only full-budget results complete.
    ``integer``: budgets are whole numbers (rung budgets are rounded)."""

    name: str
    min: float
    max: float
    integer: bool = False


@dataclass(frozen=True)
class Pruning:
    """How trials are stopped early or continued (see :mod:`bbo.pruning`). ``policy``: "median",
    "asha", "hyperband" or "none"; "" = median without a fidelity, asha with one. ``eta``: the
    reduction factor between rungs. ``promote``: Ask hands out trials at their first rung's budget
    and continues the best paused ones (else trials run toward the full budget and ReportIntermediate
    stops the rest)."""

    policy: str = ""
    eta: float = 3.0
    promote: bool = False


@dataclass(frozen=True)
class StudySpec:
    """Everything a study needs: search space, metrics, options, description and priors."""

    space: SearchSpace
    objectives: tuple[Objective, ...]
    outcome_constraints: tuple[OutcomeConstraint, ...] = ()
    tracked_metrics: tuple[str, ...] = ()
    algorithm: AlgorithmOptions = field(default_factory=AlgorithmOptions)
    description: str = ""
    priors: tuple[ParameterPrior, ...] = ()
    llm: LlmOptions = field(default_factory=LlmOptions)
    fidelity: Fidelity | None = None
    pruning: Pruning = field(default_factory=Pruning)
    transfer: TransferOptions = field(default_factory=TransferOptions)

    def __post_init__(self):
        for attr in ("objectives", "outcome_constraints", "tracked_metrics", "priors"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        if isinstance(self.transfer.sources, (list, tuple)):
            object.__setattr__(
                self, "transfer", replace(self.transfer, sources=tuple(self.transfer.sources))
            )
        _check_objectives(self.objectives)
        _check_outcome_constraints(self.outcome_constraints)
        for i, m in enumerate(self.tracked_metrics):
            if not isinstance(m, str) or not m:
                raise SpecError(f"tracked_metrics[{i}]", "metric name must not be empty")
        _check_algorithm(self.algorithm, {o.name for o in self.objectives})
        _check_llm(self.llm)
        _check_transfer(self.transfer)
        if not isinstance(self.description, str):
            raise SpecError("description", "must be a string")
        _check_priors(self.priors, self.space)
        _check_fidelity(self)

    def check_outcome_window(self) -> None:
        """Refuse a metric whose outcome constraints no value meets (``m >= 1`` beside
        ``m <= 0``): no trial could ever be feasible, so GetBest would stay empty however long the
        study ran. Checked where a study is created (a stored study is read as it was accepted)."""
        low: dict[str, tuple[float, int]] = {}  # metric -> its largest lower bound, where
        high: dict[str, tuple[float, int]] = {}  # metric -> its smallest upper bound, where
        for i, c in enumerate(self.outcome_constraints):
            side, tighter = (low, max) if c.op == ">=" else (high, min)
            if c.metric not in side or tighter(c.bound, side[c.metric][0]) != side[c.metric][0]:
                side[c.metric] = (float(c.bound), i)
        for metric, (lo, i) in low.items():
            if metric in high and lo > high[metric][0]:
                hi, j = high[metric]
                raise SpecError(
                    f"outcome_constraints[{max(i, j)}]",
                    f"no value of '{metric}' meets both {metric} >= {lo:g} "
                    f"(outcome_constraints[{i}]) and {metric} <= {hi:g} "
                    f"(outcome_constraints[{j}]): no trial could be feasible; fix the bounds",
                )

    # ---- budgets and pruning --------------------------------------------------------------------
    @property
    def pruning_policy(self) -> str:
        """The policy in force: the spec's, else ASHA with a fidelity, the median rule with one
        objective, none with several (the rule reads the first objective alone, so it would stop
        trials the others make Pareto-optimal; Optuna refuses pruning there)."""
        if self.pruning.policy:
            return self.pruning.policy
        if self.fidelity is not None:
            return ASHA
        return MEDIAN if len(self.objectives) == 1 else NO_PRUNING

    @property
    def rung_based(self) -> bool:
        """Whether trials are judged at rungs (ASHA, Hyperband)."""
        return self.pruning_policy in (ASHA, HYPERBAND)

    # ---- metric roles ---------------------------------------------------------------------------
    @property
    def modeled_metrics(self) -> list[str]:
        """Objectives first, then constraint metrics not already objectives: the GP's outputs."""
        out = [o.name for o in self.objectives]
        for c in self.outcome_constraints:
            if c.metric not in out:
                out.append(c.metric)
        return out

    @property
    def required_metrics(self) -> list[str]:
        return self.modeled_metrics

    @property
    def all_metrics(self) -> list[str]:
        return self.modeled_metrics + [
            m for m in self.tracked_metrics if m not in self.modeled_metrics
        ]

    def is_feasible(self, metrics: Mapping[str, float]) -> bool:
        return all(c.satisfied(metrics[c.metric]) for c in self.outcome_constraints)

    # ---- JSON form -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "parameters": [param_to_dict(p) for p in self.space.params],
            "parameter_constraints": [
                {"coefficients": dict(c.coefficients), "bound": c.bound}
                for c in self.space.constraints
            ],
            # the noise only where declared: a study without it stores the JSON it always did
            "objectives": [
                {k: v for k, v in asdict(o).items() if k != "noise" or v != NOISE_AUTO}
                for o in self.objectives
            ],
            "outcome_constraints": [asdict(c) for c in self.outcome_constraints],
            "tracked_metrics": list(self.tracked_metrics),
            "algorithm": {
                k: (dict(v) if isinstance(v, Mapping) else v)
                for k, v in asdict(self.algorithm).items()
            },
            "description": self.description,
            "priors": [
                {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(p).items()}
                for p in self.priors
            ],
            "llm": asdict(self.llm),
            # only where set: a study without them stores the JSON it always did
            **({"fidelity": asdict(self.fidelity)} if self.fidelity is not None else {}),
            **({"pruning": asdict(self.pruning)} if self.pruning != Pruning() else {}),
            "transfer": {
                "sources": list(self.transfer.sources),
                "auto": self.transfer.auto,
                "max_sources": self.transfer.max_sources,
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], strict: bool = True) -> StudySpec:
        """The spec of a dict as :meth:`to_dict` writes it. ``strict``: a key it does not know, at
        the top or in a parameter constraint, is a :class:`SpecError` (a user's ``"op": ">="`` on
        a constraint was dropped silently, leaving the opposite constraint in force); stored specs
        are read with ``strict=False``, so one written by another version still loads."""
        if strict:
            _check_keys(d, SPEC_KEYS, "spec")
            for i, c in enumerate(d.get("parameter_constraints", [])):
                _check_keys(c, CONSTRAINT_KEYS, f"parameter_constraints[{i}]")
        try:
            params = tuple(param_from_dict(p, i) for i, p in enumerate(d.get("parameters", [])))
            cons = tuple(
                LinearConstraint(dict(c["coefficients"]), float(c["bound"]))
                for c in d.get("parameter_constraints", [])
            )
            space = SearchSpace(params, cons)
            return cls(
                space=space,
                objectives=tuple(Objective(**o) for o in d.get("objectives", [])),
                outcome_constraints=tuple(
                    OutcomeConstraint(**c) for c in d.get("outcome_constraints", [])
                ),
                tracked_metrics=tuple(d.get("tracked_metrics", [])),
                algorithm=AlgorithmOptions(**d.get("algorithm", {})),
                description=d.get("description", ""),
                priors=tuple(ParameterPrior(**p) for p in d.get("priors", [])),
                llm=LlmOptions(**d.get("llm", {})),
                fidelity=Fidelity(**d["fidelity"]) if d.get("fidelity") is not None else None,
                pruning=Pruning(**(d.get("pruning") or {})),
                transfer=TransferOptions(**d.get("transfer", {})),
            )
        except TypeError as e:
            raise SpecError("spec", f"unexpected field: {e}") from None
        except KeyError as e:
            raise SpecError("spec", f"missing field {e}") from None


# the keys StudySpec.from_dict reads: of a spec, and of one parameter constraint (sum <= bound)
SPEC_KEYS = frozenset(
    (
        "parameters",
        "parameter_constraints",
        "objectives",
        "outcome_constraints",
        "tracked_metrics",
        "algorithm",
        "description",
        "priors",
        "llm",
        "fidelity",
        "pruning",
        "transfer",
    )
)
CONSTRAINT_KEYS = frozenset(("coefficients", "bound"))


def _check_keys(d: Any, known: frozenset[str], path: str) -> None:
    if not isinstance(d, Mapping):
        raise SpecError(path, f"must be a mapping, got {type(d).__name__}")
    unknown = sorted(str(k) for k in d if k not in known)
    if unknown:
        hint = (
            ": a constraint is sum(coefficients[name] * value) <= bound; for >=, negate both"
            if known is CONSTRAINT_KEYS
            else ""
        )
        raise SpecError(path, f"unknown field(s) {', '.join(unknown)[:200]}{hint}")


INT64_MAX = 2**63 - 1
MAX_SEED = 2**63 - 2**20  # the strategy derives seeds by adding small offsets
MAX_MODEL_POINTS = 100_000


def _int(v, path: str, lo: int, hi: int, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise SpecError(path, f"must be {what}, got {v!r}")
    return v


def _number(v, path: str, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpecError(path, f"must be {what}, got {v!r}")
    return float(v)


def _check_objectives(objectives: tuple[Objective, ...]) -> None:
    """At least one objective; names non-empty and distinct; a known goal and noise each."""
    if not objectives:
        raise SpecError("objectives", "a study needs at least one objective")
    names: set[str] = set()
    for i, o in enumerate(objectives):
        if not isinstance(o.name, str) or not o.name:
            raise SpecError(f"objectives[{i}].name", "objective name must not be empty")
        if o.name in names:
            raise SpecError(f"objectives[{i}].name", f"duplicate objective '{o.name}'")
        if o.goal not in (MINIMIZE, MAXIMIZE):
            raise SpecError(
                f"objectives[{i}].goal",
                f"goal must be 'minimize' or 'maximize', got {o.goal!r}",
            )
        if o.noise not in OBSERVATION_NOISE:
            raise SpecError(
                f"objectives[{i}].noise",
                f"noise must be one of {', '.join(OBSERVATION_NOISE)}, got {o.noise!r}",
            )
        names.add(o.name)


def _check_outcome_constraints(constraints: tuple[OutcomeConstraint, ...]) -> None:
    """Each constraint names a metric, an op of <= or >=, and a finite bound."""
    for i, c in enumerate(constraints):
        if not isinstance(c.metric, str) or not c.metric:
            raise SpecError(
                f"outcome_constraints[{i}].metric", "constraint metric name must not be empty"
            )
        if c.op not in ("<=", ">="):
            raise SpecError(
                f"outcome_constraints[{i}].op", f"op must be '<=' or '>=', got {c.op!r}"
            )
        if (
            isinstance(c.bound, bool)
            or not isinstance(c.bound, (int, float))
            or not math.isfinite(c.bound)
        ):
            raise SpecError(f"outcome_constraints[{i}].bound", "bound must be a finite number")


def _check_priors(priors: tuple[ParameterPrior, ...], space: SearchSpace) -> None:
    """At most one prior per parameter, on a parameter that varies, of the parameter's kind."""
    by_name = space.by_name
    for i, p in enumerate(priors):
        path = f"priors[{i}]"
        param = by_name.get(p.parameter)
        if param is None:
            raise SpecError(f"{path}.parameter", f"prior on unknown parameter '{p.parameter}'")
        if not 0 < _number(p.confidence, f"{path}.confidence", "a number in (0, 1]") <= 1:
            raise SpecError(f"{path}.confidence", "confidence must be in (0, 1]")
        if isinstance(param, FixedParam):
            raise SpecError(
                f"{path}.parameter", f"'{p.parameter}' is fixed: a prior on it means nothing"
            )
        if isinstance(param, CategoricalParam):
            probs = p.probabilities or {}
            bad = set(probs) - set(param.choices)
            if not probs or bad:
                raise SpecError(
                    f"{path}.probabilities",
                    f"need probabilities over choices {list(param.choices)}",
                )
            total = sum(probs.values())  # normalized by it: 1e308 + 1e308 would be NaNs
            if (
                any(not math.isfinite(v) or v < 0 for v in probs.values())
                or not 0 < total < math.inf
            ):
                raise SpecError(
                    f"{path}.probabilities",
                    "probabilities must be non-negative with a positive, finite sum",
                )
        else:
            if (
                p.mean is None
                or p.std is None
                or not math.isfinite(p.mean)
                or not math.isfinite(p.std)
                or p.std <= 0
            ):
                raise SpecError(
                    f"{path}.std",
                    f"numeric prior on '{p.parameter}' needs a finite mean and std > 0",
                )
    if len({p.parameter for p in priors}) != len(priors):
        raise SpecError("priors", "at most one prior per parameter")


def _check_algorithm(a: AlgorithmOptions, objectives: set[str]) -> None:
    """Range-check every algorithm option: nothing stored may make a study's asks fail later."""
    _int(
        a.n_initial, "algorithm.n_initial", 0, 10_000, "an integer between 0 (automatic) and 10000"
    )
    if a.seed is not None:
        _int(a.seed, "algorithm.seed", 0, MAX_SEED, f"an integer from 0 to {MAX_SEED} (or unset)")
    if a.device not in ("auto", "cpu", "cuda"):
        raise SpecError("algorithm.device", "must be 'auto', 'cpu' or 'cuda'")
    _int(
        a.max_fit_points,
        "algorithm.max_fit_points",
        10,
        MAX_MODEL_POINTS,
        f"10 to {MAX_MODEL_POINTS}",
    )
    _int(
        a.max_model_points,
        "algorithm.max_model_points",
        a.max_fit_points,
        MAX_MODEL_POINTS,
        f"max_fit_points ({a.max_fit_points}) to {MAX_MODEL_POINTS}",
    )
    if not 0 < _number(a.refit_growth, "algorithm.refit_growth", "a number in (0, 10]") <= 10:
        raise SpecError("algorithm.refit_growth", "must be in (0, 10]")
    if (
        not 0
        < _number(a.prior_exponent, "algorithm.prior_exponent", "a number in (0, 1000]")
        <= 1000
    ):
        raise SpecError("algorithm.prior_exponent", "must be in (0, 1000]")
    _int(
        a.exploit_gap,
        "algorithm.exploit_gap",
        0,
        1000,
        "an integer from 0 (no exploitation steps) to 1000",
    )
    if a.reference_point is not None:
        if not isinstance(a.reference_point, Mapping):
            raise SpecError("algorithm.reference_point", "must map objective names to numbers")
        for k, v in a.reference_point.items():
            if k not in objectives:
                raise SpecError("algorithm.reference_point", f"names unknown objective {k!r}")
            _number(v, f"algorithm.reference_point['{k}']", "a finite number")


def _check_llm(o: LlmOptions) -> None:
    for name in ("enabled", "derive_priors", "propose_during_search"):
        if not isinstance(getattr(o, name), bool):
            raise SpecError(f"llm.{name}", "must be true or false")
    _int(
        o.warmstart_candidates,
        "llm.warmstart_candidates",
        0,
        100,
        "an integer from 0 (a third of the design) to 100",
    )
    if not isinstance(o.model, str):
        raise SpecError("llm.model", "must be a string")


MIN_ETA, MAX_ETA = 2.0, 100.0


def _check_fidelity(spec: StudySpec) -> None:
    """A fidelity's range, the pruning policy, and what they need of the rest of the spec."""
    f, p = spec.fidelity, spec.pruning
    if not isinstance(p, Pruning):
        raise SpecError("pruning", "must be a pruning setting")
    if p.policy not in ("",) + PRUNING_POLICIES:
        raise SpecError(
            "pruning.policy", f"unknown policy {p.policy!r}: use {', '.join(PRUNING_POLICIES)}"
        )
    eta = _number(p.eta, "pruning.eta", f"a number from {MIN_ETA:g} to {MAX_ETA:g}")
    if not MIN_ETA <= eta <= MAX_ETA:
        raise SpecError("pruning.eta", f"must be from {MIN_ETA:g} to {MAX_ETA:g}, got {eta:g}")
    if not isinstance(p.promote, bool):
        raise SpecError("pruning.promote", "must be true or false")
    if f is None:
        if p.policy in (ASHA, HYPERBAND):
            raise SpecError(
                "pruning.policy",
                f"{p.policy} ranks trials at budgets: declare the study's fidelity (its name, min "
                "and max budget)",
            )
        if p.promote:
            raise SpecError("pruning.promote", "promotion needs a fidelity and ASHA or Hyperband")
        return
    if not isinstance(f, Fidelity):
        raise SpecError("fidelity", "must be a fidelity setting")
    if not isinstance(f.name, str) or not f.name:
        raise SpecError("fidelity.name", "name what the budget counts, e.g. 'epochs'")
    if not isinstance(f.integer, bool):
        raise SpecError("fidelity.integer", "must be true or false")
    lo = _number(f.min, "fidelity.min", "a finite number > 0")
    hi = _number(f.max, "fidelity.max", "a finite number > min")
    if lo <= 0:
        raise SpecError("fidelity.min", f"must be > 0, got {lo:g}")
    if hi <= lo:
        raise SpecError("fidelity.max", f"must be larger than min ({lo:g}), got {hi:g}")
    if f.integer and (lo != math.floor(lo) or hi != math.floor(hi) or hi > INT64_MAX):
        raise SpecError(
            "fidelity.min", "an integer fidelity needs whole-number min and max up to 2**63 - 1"
        )
    if len(spec.objectives) != 1 or spec.outcome_constraints:
        raise SpecError(
            "fidelity",
            "a study with a fidelity has one objective and no outcome constraints: trials are "
            "ranked at lower budgets by that objective's values",
        )
    if spec.pruning_policy in (ASHA, HYPERBAND) and hi / lo < eta * (1 - 1e-9):
        raise SpecError(
            "fidelity.min",
            f"with eta {eta:g}, max / min must be at least {eta:g} to leave a rung below the full "
            f"budget (max {hi:g}, min {lo:g}): lower min or eta",
        )
    if p.promote and spec.pruning_policy not in (ASHA, HYPERBAND):
        raise SpecError("pruning.promote", "promotion needs the policy asha or hyperband")


# a study name, matched whole (fullmatch: "$" would let "x\n" in); also what CreateStudy checks
STUDY_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def _check_transfer(t: TransferOptions) -> None:
    if not isinstance(t.sources, tuple):
        raise SpecError("transfer.sources", "must be a list of study names")
    seen: set[str] = set()
    for i, name in enumerate(t.sources):
        if not isinstance(name, str) or not STUDY_NAME.fullmatch(name):
            raise SpecError(
                f"transfer.sources[{i}]",
                f"{str(name)[:140]!r} is not a study name (1-128 letters, digits, '_', '-', '.')",
            )
        if name in seen:
            raise SpecError(f"transfer.sources[{i}]", f"study '{name}' is named twice")
        seen.add(name)
    if not isinstance(t.auto, bool):
        raise SpecError("transfer.auto", "must be true or false")
    _int(
        t.max_sources,
        "transfer.max_sources",
        0,
        MAX_TRANSFER_SOURCES,
        f"an integer from 0 (the default, 3) to {MAX_TRANSFER_SOURCES}",
    )
    if len(t.sources) > MAX_TRANSFER_SOURCES:
        raise SpecError(
            "transfer.sources", f"{len(t.sources)} sources, at most {MAX_TRANSFER_SOURCES}"
        )
    if t.max_sources and len(t.sources) > t.max_sources:
        raise SpecError(
            "transfer.max_sources",
            f"{len(t.sources)} sources are named but max_sources is {t.max_sources}: raise it",
        )
