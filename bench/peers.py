"""Ask/tell adapters for the optimizers compared in bench_core: bbo (in-process strategy), Ax
(ax-platform Client API, its default generation strategy), Optuna TPE and GPSampler, random search.

Every adapter offers ``ask() -> params``, ``tell(params, metrics)`` and ``load(history)`` (bulk-add
completed trials without asking, for latency measurements at a given history size), and for several
workers at once ``ask_async() -> (handle, params)`` and ``tell_async(handle, params, metrics)``:
points asked and not yet told are pending, in each method's own convention. All minimize
``f``; a problem's constraint metric ``c <= 0`` and linear parameter constraints are passed to each
method in its own convention.
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
from problems import Problem, random_params

from bbo.space import CategoricalParam, FloatParam, IntParam, OrdinalParam
from bbo.strategy import GenerationStrategy
from bbo.trial import Metric, Trial, TrialState


class Method:
    name = "?"

    def __init__(self, problem: Problem, seed: int, **kw):
        self.problem, self.seed = problem, seed
        self._last = None  # the handle of the last ask()

    def ask_async(self) -> tuple[object, dict]:
        """A new point and the handle its result is told with; earlier points may be pending."""
        raise NotImplementedError

    def tell_async(self, handle, params: dict, metrics: dict) -> None:
        raise NotImplementedError

    def ask(self) -> dict:
        self._last, params = self.ask_async()
        return params

    def tell(self, params: dict, metrics: dict) -> None:
        self.tell_async(self._last, params, metrics)

    def load(self, history: list[tuple[dict, dict]]) -> None:
        for p, m in history:
            self.tell(p, m)

    def recommend(self) -> dict | None:
        """The point the method reports as best at the end of a run; None: the best observed
        (feasible) point, which is what Optuna's ``best_trial`` and random search report."""
        return None


def run_workers(
    m: Method, evaluate, budget: int, parallel: int, seed: int, ask_seconds: list[float]
):
    """Yield ``(params, result)`` of ``budget`` evaluations of ``m``'s points as they are told:
    ``parallel`` workers, each asking again as soon as it tells (one: ask, evaluate, tell), with
    evaluation times drawn per ``seed`` (lognormal), the same for every method. ``evaluate(params,
    i)``: the result of the ``i``-th evaluation started. Each ask's seconds go to ``ask_seconds``;
    an ask that raises ends the run with its exception."""
    import heapq

    durations = np.random.default_rng(seed).lognormal(0.0, 0.5, budget)
    running: list[tuple] = []  # (finish time, start index, handle, params): a heap
    clock, started = 0.0, 0
    while started < budget or running:
        while len(running) < parallel and started < budget:
            t0 = time.perf_counter()
            handle, p = m.ask_async()
            ask_seconds.append(time.perf_counter() - t0)
            heapq.heappush(running, (clock + durations[started], started, handle, p))
            started += 1
        clock, i, handle, p = heapq.heappop(running)
        y = evaluate(p, i)
        m.tell_async(handle, p, y)
        yield p, y


def _constraints(problem) -> tuple:
    """The problem's outcome constraints (bench/problems.py has at most one, bench/families.py
    several)."""
    many = getattr(problem, "constraints", None)
    if many is not None:
        return tuple(many)
    return (problem.constraint,) if problem.constraint else ()


class RandomSearch(Method):
    name = "random"

    def __init__(self, problem, seed, **kw):
        super().__init__(problem, seed)
        self.rng = np.random.default_rng(seed)

    def ask_async(self):
        return None, random_params(self.problem.space, self.rng)

    def tell_async(self, handle, params, metrics):
        pass


class Bbo(Method):
    name = "bbo"

    def __init__(self, problem, seed, device="cpu", **kw):
        super().__init__(problem, seed)
        self.gs = GenerationStrategy(problem.spec(seed, device=device))
        self.trials: list[Trial] = []
        self.told: list[int] = []  # trial ids in the order their results were told

    def ask_async(self):
        """The strategy's next point given the completed and the pending trials."""
        s = self.gs.suggest(self.trials, 1)[0]
        t = Trial(len(self.trials), dict(s.params), TrialState.PENDING, origin=s.origin)
        self.trials.append(t)
        return t, dict(s.params)

    def tell_async(self, handle, params, metrics):
        handle.state = TrialState.COMPLETED
        handle.metrics = {k: Metric(float(v)) for k, v in metrics.items()}
        self.told.append(handle.id)

    def load(self, history):
        for p, m in history:
            t = Trial(len(self.trials), dict(p), origin="user")
            self.trials.append(t)
            self.tell_async(t, p, m)

    def recommend(self):
        """What GetBest reports: the strategy's recommended trial where it makes one (a noisy
        objective), else None (the best observed feasible trial). An engine without
        recommendations (a baseline checkout) reports the best observed."""
        from bbo.incumbent import is_feasible

        self.estimate = None
        rec = getattr(self.gs, "recommend", None)
        r = rec(self.trials) if rec is not None else None
        t = next((t for t in self.trials if r is not None and t.id == r.trial_id), None)
        if t is None or not is_feasible(self.gs.spec, t):
            return None
        self.estimate = getattr(r, "estimate", None)  # GetBest's estimate of its objective
        self.reported_row = self.told.index(t.id)  # the run's evaluation index (tell order)
        return dict(t.params)


def _optuna_dists(space):
    import optuna.distributions as d

    out = {}
    for p in space.free:
        if isinstance(p, FloatParam):
            out[p.name] = d.FloatDistribution(p.low, p.high, log=p.log)
        elif isinstance(p, IntParam):
            out[p.name] = d.IntDistribution(p.low, p.high, log=p.log)
        elif isinstance(p, OrdinalParam):
            out[p.name] = d.CategoricalDistribution(list(p.values))
        elif isinstance(p, CategoricalParam):
            out[p.name] = d.CategoricalDistribution(list(p.choices))
    return out


class _Optuna(Method):
    def _sampler(self, constraints_func):
        raise NotImplementedError

    def __init__(self, problem, seed, **kw):
        super().__init__(problem, seed)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", module="optuna")
        constrained = _constraints(problem) or problem.space.constraints
        cf = (lambda ft: ft.user_attrs["c"]) if constrained else None
        # the objectives, all minimized: "f" unless the problem names several
        self.objectives = tuple(getattr(problem, "objectives", ("f",)))
        self.study = optuna.create_study(
            directions=["minimize"] * len(self.objectives), sampler=self._sampler(cf)
        )
        self.dists = _optuna_dists(problem.space)

    def _values(self, metrics):
        """The told value: one objective's, or the list of several."""
        v = [metrics[o] for o in self.objectives]
        return v[0] if len(v) == 1 else v

    def ask_async(self):
        t = self.study.ask(self.dists)  # asked and not told: a RUNNING trial to the samplers
        return t, dict(t.params)

    def _slack(self, metrics, params):
        """Optuna's constraint values (feasible when <= 0): each outcome constraint's, then each
        linear parameter constraint's (Optuna has none of its own, so it learns them as these)."""
        cons, lin = _constraints(self.problem), self.problem.space.constraints
        if not cons and not lin:
            return None
        return [
            metrics[c.metric] - c.bound if c.op == "<=" else c.bound - metrics[c.metric]
            for c in cons
        ] + [c.lhs(params) - c.bound for c in lin]

    def tell_async(self, t, params, metrics):
        slack = self._slack(metrics, params)
        if slack is not None:
            t.set_user_attr("c", slack)
        self.study.tell(t, self._values(metrics))

    def load(self, history):
        import optuna

        trials = []
        for p, m in history:
            slack = self._slack(m, p)
            trials.append(
                optuna.trial.create_trial(
                    params=p,
                    distributions=self.dists,
                    values=self._values(m) if len(self.objectives) > 1 else None,
                    value=m["f"] if len(self.objectives) == 1 else None,
                    user_attrs={"c": slack} if slack else {},
                    system_attrs={"constraints": slack} if slack else {},
                )
            )
        self.study.add_trials(trials)


class OptunaTPE(_Optuna):
    name = "optuna_tpe"

    def _sampler(self, cf):
        import optuna

        return optuna.samplers.TPESampler(seed=self.seed, constraints_func=cf)


class OptunaGP(_Optuna):
    name = "optuna_gp"

    def _sampler(self, cf):
        import optuna

        return optuna.samplers.GPSampler(seed=self.seed, constraints_func=cf)


def ax_parameters(space) -> list:
    """The free parameters of a bbo space as Ax parameter configs: ranges (log-scaled where bbo's
    are), ordered choices (int-valued where every value is a whole number, as Ax checks a trial's
    values against the declared type) and unordered string choices."""
    from ax.api.configs import ChoiceParameterConfig, RangeParameterConfig

    out = []
    for p in space.free:
        if isinstance(p, (FloatParam, IntParam)):
            kind = "float" if isinstance(p, FloatParam) else "int"
            scaling = "log" if p.log else None
            out.append(RangeParameterConfig(p.name, (p.low, p.high), kind, scaling=scaling))
        elif isinstance(p, OrdinalParam):
            whole = all(isinstance(v, int) for v in p.values)
            values = list(p.values) if whole else [float(v) for v in p.values]
            out.append(
                ChoiceParameterConfig(p.name, values, "int" if whole else "float", is_ordered=True)
            )
        else:
            out.append(ChoiceParameterConfig(p.name, list(p.choices), "str", is_ordered=False))
    return out


class Ax(Method):
    name = "ax"

    def __init__(self, problem, seed, **kw):
        super().__init__(problem, seed)
        warnings.filterwarnings("ignore")
        from ax.api.client import Client

        _quiet_ax()

        params = ax_parameters(problem.space)
        self.client = Client(random_seed=seed)
        self.client.configure_experiment(
            parameters=params,
            parameter_constraints=[str(c) for c in problem.space.constraints] or None,
        )
        cons = [f"{c.metric} {c.op} {c.bound}" for c in _constraints(problem)]
        self.client.configure_optimization(objective="-f", outcome_constraints=cons or None)
        _quiet_ax()

    def ask_async(self):
        idx, params = next(iter(self.client.get_next_trials(max_trials=1).items()))
        return idx, dict(params)  # running trials are pending points to Ax's generator

    def tell_async(self, idx, params, metrics):
        self.client.complete_trial(idx, raw_data={k: float(v) for k, v in metrics.items()})

    def load(self, history):
        for p, m in history:
            self.tell_async(self.client.attach_trial(parameters=p), p, m)

    def recommend(self):
        """Ax's own recommendation (model-predicted best where it has a model)."""
        try:
            params, _, _, _ = self.client.get_best_parameterization()
        except Exception:  # noqa: BLE001 - no recommendation: the best observed point
            return None
        return dict(params)


def _quiet_ax():
    """Ax logs every trial at INFO on loggers it configures itself."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("ax"):
            logging.getLogger(name).setLevel(logging.ERROR)


METHODS = {m.name: m for m in (Bbo, Ax, OptunaGP, OptunaTPE, RandomSearch)}
