"""Bounds on what one request may cost: the size of a study spec and of a told trial.

Every bound is a field of :class:`RequestLimits` and a ``bbo serve`` flag of the same name
(``max_parameters`` is ``--max-parameters``). The checks read the request once, before anything is
built from it, so checking costs time linear in the request's size; a request over a bound is
refused with :class:`LimitExceeded` (RESOURCE_EXHAUSTED, naming the field and the flag) and changes
nothing.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bbo.errors import LimitError
from bbo.spec import AlgorithmOptions

DEFAULT_MODEL_POINTS = AlgorithmOptions.max_model_points  # a study's default


class LimitExceeded(LimitError):
    """A request over one of :class:`RequestLimits`; ``field`` names the offending part."""

    def __init__(self, field: str, message: str, flag: str):
        said = f"{message} (bbo serve --{flag.replace('_', '-')})"
        super().__init__(f"{field}: {said}")
        # ``message`` without the field, as a SpecError's: the BadRequest violation carries the
        # field beside it, and a client showing "field: description" would name it twice
        self.message = said
        self.field = field
        self.flag = flag


# the most objectives a server may allow (--max-objectives): BoTorch's exact box decomposition of
# a Pareto front (FastNondominatedPartitioning) took 4.3 s for 4 objectives and a 300-trial front,
# 7.7 s for 5 and 60 trials, 9.8 s for 6 and 20, over 100 s for 6 and 40
OBJECTIVES_CAP = 4
# the most rungs a server may allow (--max-rungs): Hyperband's bracket sizes are eta^k, which
# overflow a double past about 640 rungs at eta 3 (every ask then failed INTERNAL)
RUNGS_CAP = 100


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on one study spec and one told or reported trial (0 nowhere means unlimited)."""

    max_parameters: int = 256  # parameters per study
    max_choices: int = 1000  # choices of one categorical, values of one ordinal
    max_linear_constraints: int = 64  # linear parameter constraints per study
    max_objectives: int = 4  # objectives per study
    max_outcome_constraints: int = 16  # outcome constraints per study
    max_tracked_metrics: int = 64  # tracked (not modeled) metrics per study
    max_name_length: int = 128  # characters of a parameter, choice, fixed string or metric name
    max_description_bytes: int = 65536  # UTF-8 bytes of a study's description
    max_spec_bytes: int = 1 << 20  # JSON bytes of a whole spec
    max_metrics_per_trial: int = 256  # metrics reported with one trial
    max_steps_per_trial: int = 10000  # intermediate values (distinct steps) stored per trial
    max_rungs: int = 20  # budgets of a fidelity's ladder (max / eta^k down to min)
    max_transfer_sources: int = 8  # source studies one study transfers from
    # trials per study, asked or added: what grows with a study (GetBest, an Ask's read of its
    # trials, a report's pass over them) grows with this at most
    max_trials_per_study: int = 100000
    # points a study's GP is fit or conditioned on (its algorithm.max_fit_points and
    # max_model_points): the exact GP's time and memory grow with their cube and square (100,000
    # points were 75 GiB of kernel matrix). At least the spec's default, 3,000
    max_model_points: int = 10000

    @classmethod
    def flags(cls) -> list[tuple[str, int, str]]:
        """``(field, default, help)`` for each bound (the ``bbo serve`` flags)."""
        helps = {
            "max_parameters": "parameters per study",
            "max_choices": "choices of a categorical / values of an ordinal parameter",
            "max_linear_constraints": "linear parameter constraints per study",
            "max_objectives": "objectives per study",
            "max_outcome_constraints": "outcome constraints per study",
            "max_tracked_metrics": "tracked metrics per study",
            "max_name_length": "characters of a parameter, choice, fixed string or metric name",
            "max_description_bytes": "UTF-8 bytes of a study description",
            "max_spec_bytes": "JSON bytes of a whole study spec",
            "max_metrics_per_trial": "metrics reported with one trial",
            "max_steps_per_trial": "intermediate values (distinct steps) stored per trial",
            "max_rungs": "rungs of a fidelity's budget ladder (max / eta^k down to min)",
            "max_transfer_sources": "source studies one study transfers from (named or auto)",
            "max_trials_per_study": "trials per study, asked or added",
            "max_model_points": "points a study's GP is fit or conditioned on (its "
            "algorithm.max_fit_points / max_model_points; at least 3000)",
        }
        return [(f.name, int(f.default), helps[f.name]) for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"--{f.name.replace('_', '-')} must be a positive integer")
        if self.max_objectives > OBJECTIVES_CAP:
            raise ValueError(
                f"--max-objectives can be at most {OBJECTIVES_CAP}: the exact hypervolume box "
                "decomposition an ask of several objectives makes grows exponentially with them "
                "(6 objectives, a front of 40 trials: over 100 s an ask)"
            )
        if self.max_rungs > RUNGS_CAP:
            raise ValueError(
                f"--max-rungs can be at most {RUNGS_CAP}: Hyperband's brackets grow as eta^rungs"
            )
        if self.max_model_points < DEFAULT_MODEL_POINTS:
            raise ValueError(
                f"--max-model-points must be at least {DEFAULT_MODEL_POINTS} (a study's default "
                "algorithm.max_model_points)"
            )

    # ---- checks ---------------------------------------------------------------------------------
    def _count(self, field: str, items: Any, bound: str, what: str) -> None:
        n = len(items) if isinstance(items, (list, tuple, dict, set)) else 0
        limit = getattr(self, bound)
        if n > limit:
            raise LimitExceeded(field, f"{n} {what}, at most {limit} allowed", bound)

    def _name(self, field: str, name: Any) -> None:
        if isinstance(name, str) and len(name) > self.max_name_length:
            raise LimitExceeded(
                field,
                f"a name of {len(name)} characters, at most {self.max_name_length} allowed",
                "max_name_length",
            )

    def check_spec(self, d: Mapping[str, Any], field: str = "spec") -> None:
        """Check a spec in its dict form (``StudySpec.to_dict`` / what the service converts from
        protobuf) before it is parsed. Malformed parts are left to the parser to name."""
        if not isinstance(d, Mapping):
            return
        size = len(json.dumps(d, default=str))
        if size > self.max_spec_bytes:
            raise LimitExceeded(
                field,
                f"{size} bytes as JSON, at most {self.max_spec_bytes} allowed",
                "max_spec_bytes",
            )
        params = d.get("parameters") or []
        self._count(f"{field}.parameters", params, "max_parameters", "parameters")
        for i, p in enumerate(params if isinstance(params, list) else []):
            if not isinstance(p, Mapping):
                continue
            path = f"{field}.parameters[{i}]"
            self._name(f"{path}.name", p.get("name"))
            # a fixed string is a one-choice categorical, stored with every trial of the study
            self._name(f"{path}.value", p.get("value") if p.get("type") == "fixed" else None)
            for key in ("choices", "values"):
                items = p.get(key)
                self._count(f"{path}.{key}", items, "max_choices", key)
                if key == "choices" and isinstance(items, (list, tuple)):
                    for c in items:
                        self._name(f"{path}.choices", c)
        cons = d.get("parameter_constraints") or []
        self._count(
            f"{field}.parameter_constraints", cons, "max_linear_constraints", "linear constraints"
        )
        for j, c in enumerate(cons if isinstance(cons, list) else []):
            if isinstance(c, Mapping):
                path = f"{field}.parameter_constraints[{j}].coefficients"
                self._count(path, c.get("coefficients"), "max_parameters", "terms")
        objs = d.get("objectives") or []
        self._count(f"{field}.objectives", objs, "max_objectives", "objectives")
        for i, o in enumerate(objs if isinstance(objs, list) else []):
            if isinstance(o, Mapping):
                self._name(f"{field}.objectives[{i}].name", o.get("name"))
        ocs = d.get("outcome_constraints") or []
        self._count(
            f"{field}.outcome_constraints", ocs, "max_outcome_constraints", "outcome constraints"
        )
        for i, c in enumerate(ocs if isinstance(ocs, list) else []):
            if isinstance(c, Mapping):
                self._name(f"{field}.outcome_constraints[{i}].metric", c.get("metric"))
        tracked = d.get("tracked_metrics") or []
        self._count(f"{field}.tracked_metrics", tracked, "max_tracked_metrics", "tracked metrics")
        for i, m in enumerate(tracked if isinstance(tracked, list) else []):
            self._name(f"{field}.tracked_metrics[{i}]", m)
        desc = d.get("description") or ""
        if isinstance(desc, str):
            n = len(desc.encode("utf-8", "surrogatepass"))
            if n > self.max_description_bytes:
                raise LimitExceeded(
                    f"{field}.description",
                    f"{n} bytes, at most {self.max_description_bytes} allowed",
                    "max_description_bytes",
                )
        priors = d.get("priors") or []
        self._count(f"{field}.priors", priors, "max_parameters", "priors")
        for i, p in enumerate(priors if isinstance(priors, list) else []):
            if isinstance(p, Mapping):
                self._count(
                    f"{field}.priors[{i}].probabilities",
                    p.get("probabilities"),
                    "max_choices",
                    "probabilities",
                )
        alg = d.get("algorithm") or {}
        if isinstance(alg, Mapping):
            for key in ("max_fit_points", "max_model_points"):
                v = alg.get(key)
                if isinstance(v, int) and not isinstance(v, bool) and v > self.max_model_points:
                    raise LimitExceeded(
                        f"{field}.algorithm.{key}",
                        f"{v} points, at most {self.max_model_points} allowed",
                        "max_model_points",
                    )
            self._count(
                f"{field}.algorithm.reference_point",
                alg.get("reference_point"),
                "max_objectives",
                "entries",
            )
        llm = d.get("llm") or {}
        if isinstance(llm, Mapping):
            self._name(f"{field}.llm.model", llm.get("model"))
        transfer = d.get("transfer") or {}
        if isinstance(transfer, Mapping):
            sources = transfer.get("sources")
            self._count(
                f"{field}.transfer.sources", sources, "max_transfer_sources", "source studies"
            )
            for i, name in enumerate(sources if isinstance(sources, (list, tuple)) else []):
                self._name(f"{field}.transfer.sources[{i}]", name)
            asked = transfer.get("max_sources")
            if (
                isinstance(asked, int)
                and not isinstance(asked, bool)
                and asked > self.max_transfer_sources
            ):
                raise LimitExceeded(
                    f"{field}.transfer.max_sources",
                    f"{asked} sources asked for, at most {self.max_transfer_sources} allowed",
                    "max_transfer_sources",
                )
        self._check_fidelity(d, field)

    def _check_fidelity(self, d: Mapping[str, Any], field: str) -> None:
        """The fidelity's name, and the number of rungs its budget range makes (each rung costs
        work on every report and ask)."""
        fid, pruning = d.get("fidelity"), d.get("pruning") or {}
        if not isinstance(fid, Mapping):
            return
        self._name(f"{field}.fidelity.name", fid.get("name"))
        eta = pruning.get("eta", 3.0) if isinstance(pruning, Mapping) else 3.0
        try:
            from bbo.pruning import rung_count

            n = rung_count(fid, float(eta))
        except (KeyError, TypeError, ValueError, OverflowError, ZeroDivisionError):
            return  # malformed: the parser names the field
        if n > self.max_rungs:
            raise LimitExceeded(
                f"{field}.fidelity",
                f"max / min spans {n} rungs at eta {float(eta):g}, at most {self.max_rungs} "
                "allowed: raise min or eta",
                "max_rungs",
            )

    def check_metrics(self, metrics: Mapping[str, Any], field: str = "metrics") -> None:
        """Check the metrics told with one trial (before they are validated and stored)."""
        self._count(field, metrics, "max_metrics_per_trial", "metrics")
        for name in metrics:
            self._name(f"{field}['{str(name)[:32]}...']", name)
