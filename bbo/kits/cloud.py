"""Cloud scheduling and autoscaling: a discrete-event cluster simulator (SimPy) with a tunable policy.

Workload model (a trace generated from the evaluation seed before the simulation, so every policy
sees the same jobs: common random numbers):

- arrivals: a Markov-modulated Poisson process over ``horizon`` minutes (default 360 = 6 h): a calm
  state (2.5 jobs/min, sojourn Exp(mean 60 min)) and a burst state (10 jobs/min, sojourn Exp(mean
  12 min)); about 1,350 jobs per trace on average;
- durations: log-normal, median 6 min, sigma 1.0 (mean about 10 min), clipped to [0.5, 240] min;
  durations are unknown to the scheduler;
- sizes: CPU cores in {1, 2, 4, 8} with probabilities 0.4 / 0.3 / 0.2 / 0.1; memory = cores x
  log-normal(median 3 GB, sigma 0.5), clipped to [0.25, 60] GB;
- priority: high with probability 0.2, else low.

Cluster: identical machines of 16 cores and 64 GB that take 3 minutes to boot once requested; cost
is machine-hours from request to termination (booting included). A job on a machine whose CPU use
(including the job) exceeds 50% runs slower (noisy neighbours): runtime x (1 + 0.3 x (u - 0.5) /
0.5), so up to 1.3x on a full machine. Packing saves machines but costs speed; spreading the reverse.

Policy (the tuned parameters):

- ``priority_weight`` (minutes): queue order is by arrival time minus priority_weight for
  high-priority jobs, plus ``size_weight`` minutes per requested core (a shortest-job-first flavour);
- ``backfill_depth``: how many blocked jobs the scheduler may skip to start later ones (0 = strict
  order, head-of-line blocking);
- ``target_fill`` in [0, 1]: a job goes to the machine whose fill after placement (max of CPU and
  memory fraction) is closest to target_fill: 1 = best fit (packing), 0 = worst fit (spreading);
- autoscaler, every minute: demand = (cores in use + cores queued) / cores of ready and booting
  machines. Above ``scale_up_threshold`` it requests enough machines to bring demand to the
  threshold (at most ``max_machines`` in total), unless it scaled up within ``cooldown_minutes``.
  Below ``scale_down_threshold`` = ``scale_down_ratio`` x scale_up_threshold it terminates machines
  that have been empty for ``idle_minutes``, keeping ``min_machines`` (capped at max_machines).

Metrics: ``mean_completion_minutes`` (arrival to finish, averaged over all jobs),
``cost_machine_hours``, ``cost_overhead`` (machine-hours / the machine-hours of a perfectly packed,
never idle cluster = the jobs' core-hours / 16; at least 1), ``sla_violation_rate`` (fraction of high-priority jobs that waited more than
``sla_wait_minutes``, default 5, before starting), and tracked: p95 completion, mean wait, mean
high-priority wait, mean CPU utilisation of ready machines, peak machines, job counts. Jobs that
have not finished when the simulation stops (``horizon`` + 240 min of drain) count as unfinished;
their completion time is taken as the stop time minus arrival (a lower bound), and unfinished
high-priority jobs that waited too long count as SLA violations. One evaluation takes 0.02-0.2 s.

Variants (``spec(variant=...)``):

- ``single`` (default): minimize mean_completion_minutes subject to sla_violation_rate <= sla_bound
  (default 0.05) and cost_overhead <= cost_budget (default 2.5); cost in machine-hours is tracked.
  (Without a cost constraint the answer is trivial: keep 40 machines up.) On a 200-point Sobol
  design about 20-40% of the points are feasible; the best feasible completion time is about 10-11
  minutes against a median of 12-13 among feasible points and up to 200 for bad policies.
- ``multi``: minimize mean_completion_minutes and cost_machine_hours (a Pareto front) subject to
  the SLA constraint.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from bbo.errors import SpecError
from bbo.kits.base import Kit
from bbo.space import FloatParam, IntParam, SearchSpace
from bbo.spec import MINIMIZE, Objective, OutcomeConstraint, StudySpec

MACHINE_CPU, MACHINE_MEM = 16.0, 64.0
BOOT_MINUTES = 3.0
INTERFERENCE = 0.3
AUTOSCALE_INTERVAL = 1.0
DRAIN_MINUTES = 240.0


# ---- workload --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    arrival: np.ndarray  # minutes, sorted
    duration: np.ndarray  # minutes at no interference
    cpu: np.ndarray
    mem: np.ndarray
    high: np.ndarray  # bool
    horizon: float

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def ideal_machine_hours(self) -> float:
        """Cost of a perfectly packed cluster that is never idle: the work's core-hours / 16."""
        return float(np.sum(self.duration * self.cpu)) / MACHINE_CPU / 60.0


@lru_cache(maxsize=32)
def make_workload(
    seed: int,
    horizon: float = 360.0,
    calm_rate: float = 2.5,
    burst_rate: float = 10.0,
    calm_mean: float = 60.0,
    burst_mean: float = 12.0,
    load_scale: float = 1.0,
) -> Workload:
    """The documented workload model (module docstring), deterministic for a seed."""
    rng = np.random.default_rng([seed, 7])
    t, burst, arrivals = 0.0, False, []
    while t < horizon:
        stay = rng.exponential(burst_mean if burst else calm_mean)
        end = min(t + stay, horizon)
        rate = (burst_rate if burst else calm_rate) * load_scale
        k = rng.poisson(rate * (end - t))
        arrivals.append(np.sort(rng.uniform(t, end, k)))
        t, burst = end, not burst
    arr = np.concatenate(arrivals) if arrivals else np.zeros(0)
    n = len(arr)
    dur = np.clip(rng.lognormal(math.log(6.0), 1.0, n), 0.5, 240.0)
    cpu = rng.choice(np.array([1.0, 2.0, 4.0, 8.0]), n, p=[0.4, 0.3, 0.2, 0.1])
    mem = np.clip(cpu * rng.lognormal(math.log(3.0), 0.5, n), 0.25, 60.0)
    high = rng.random(n) < 0.2
    for a in (arr, dur, cpu, mem, high):
        a.setflags(write=False)
    return Workload(arr, dur, cpu, mem, high, float(horizon))


# ---- policy and simulator --------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    priority_weight: float = 10.0
    size_weight: float = 0.0
    backfill_depth: int = 8
    target_fill: float = 1.0
    scale_up_threshold: float = 0.8
    scale_down_ratio: float = 0.5
    cooldown_minutes: float = 5.0
    idle_minutes: float = 5.0
    min_machines: int = 2
    max_machines: int = 24

    @property
    def scale_down_threshold(self) -> float:
        return self.scale_down_ratio * self.scale_up_threshold

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> Policy:
        names = cls.__dataclass_fields__
        return cls(**{k: type(getattr(cls, k))(p[k]) for k in names if k in p})


@dataclass
class _Machine:
    id: int
    requested_at: float
    ready: bool = False
    terminated_at: float | None = None
    cpu_used: float = 0.0
    mem_used: float = 0.0
    jobs: int = 0
    idle_since: float = 0.0


@dataclass
class SimResult:
    metrics: dict[str, float]
    timeline: list[tuple[float, int, float]] = field(
        default_factory=list
    )  # (minute, machines, cores in use + queued)
    wait: np.ndarray = field(default_factory=lambda: np.zeros(0))
    completion: np.ndarray = field(default_factory=lambda: np.zeros(0))


class _Cluster:
    """One simulation's state and its SimPy processes: job arrivals, the scheduler, the autoscaler."""

    def __init__(self, env: Any, policy: Policy, wl: Workload, record: bool) -> None:
        self.env, self.policy, self.wl, self.record = env, policy, wl, record
        n = len(wl)
        self.start = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.min_machines = max(0, min(policy.min_machines, policy.max_machines))
        self.machines: list[_Machine] = []
        self.queue: list[tuple[float, int]] = []  # sorted (priority key, job id)
        self.queued_cpu = 0.0
        self.done = self.arrived = self.peak = 0
        self.last_up = -math.inf
        self.util_area = self.cap_area = 0.0  # core-minutes in use / of ready machines
        self.all_done = env.event()
        self.timeline: list[tuple[float, int, float]] = []

    def key(self, j: int) -> float:
        """Queue order: arrival time, earlier for high priority, later per requested core."""
        wl, policy = self.wl, self.policy
        return (
            float(wl.arrival[j])
            - policy.priority_weight * float(wl.high[j])
            + policy.size_weight * float(wl.cpu[j])
        )

    def live(self) -> list[_Machine]:
        return [m for m in self.machines if m.terminated_at is None]

    def request_machine(self, now: float) -> None:
        m = _Machine(len(self.machines), now)
        self.machines.append(m)
        self.peak = max(self.peak, len(self.live()))
        self.env.process(self.boot(m))

    def boot(self, m: _Machine):
        yield self.env.timeout(BOOT_MINUTES)
        m.ready = True
        m.idle_since = self.env.now
        self.schedule()

    def run(self, j: int, m: _Machine, slowdown: float):
        wl = self.wl
        yield self.env.timeout(float(wl.duration[j]) * slowdown)
        self.finish[j] = self.env.now
        m.cpu_used -= wl.cpu[j]
        m.mem_used -= wl.mem[j]
        m.jobs -= 1
        if m.jobs == 0:
            m.idle_since = self.env.now
            m.cpu_used, m.mem_used = 0.0, 0.0  # no float drift on empty machines
        self.done += 1
        if self.done == len(wl):
            self.all_done.succeed()
        self.schedule()

    def place(self, c: float, g: float, ready: list[_Machine]) -> _Machine | None:
        """The ready machine whose fill after placing (c cores, g GB) is closest to target_fill."""
        best, best_score = None, math.inf
        for m in ready:
            if m.cpu_used + c <= MACHINE_CPU and m.mem_used + g <= MACHINE_MEM:
                fill = max((m.cpu_used + c) / MACHINE_CPU, (m.mem_used + g) / MACHINE_MEM)
                score = abs(fill - self.policy.target_fill)
                if score < best_score - 1e-12:
                    best, best_score = m, score
        return best

    def schedule(self) -> None:
        """Start queued jobs in order, skipping at most backfill_depth that fit nowhere."""
        queue, wl = self.queue, self.wl
        if not queue:
            return
        ready = [m for m in self.machines if m.ready and m.terminated_at is None]
        if not ready:
            return
        free_cpu = max(MACHINE_CPU - m.cpu_used for m in ready)
        free_mem = max(MACHINE_MEM - m.mem_used for m in ready)
        blocked = 0
        i = 0
        while i < len(queue):
            if free_cpu < 1.0 or free_mem < 0.25:
                return
            _, j = queue[i]
            c, g = wl.cpu[j], wl.mem[j]
            best = self.place(c, g, ready) if c <= free_cpu and g <= free_mem else None
            if best is None:
                blocked += 1
                if blocked > self.policy.backfill_depth:
                    return
                i += 1
                continue
            del queue[i]
            self.queued_cpu -= c
            u = (best.cpu_used + c) / MACHINE_CPU
            best.cpu_used += c
            best.mem_used += g
            best.jobs += 1
            self.start[j] = self.env.now
            self.env.process(self.run(j, best, 1.0 + INTERFERENCE * max(0.0, u - 0.5) / 0.5))
            free_cpu = max(MACHINE_CPU - m.cpu_used for m in ready)
            free_mem = max(MACHINE_MEM - m.mem_used for m in ready)

    def arrivals(self):
        env, wl = self.env, self.wl
        for j in range(len(wl)):
            dt = float(wl.arrival[j]) - env.now
            if dt > 0:
                yield env.timeout(dt)
            bisect.insort(self.queue, (self.key(j), j))
            self.queued_cpu += wl.cpu[j]
            self.arrived += 1
            self.schedule()

    def autoscaler(self):
        policy = self.policy
        while True:
            now = self.env.now
            lv = self.live()
            ready = [m for m in lv if m.ready]
            used = sum(m.cpu_used for m in ready)
            cap_all = MACHINE_CPU * len(lv)
            demand_cores = used + self.queued_cpu
            self.util_area += used * AUTOSCALE_INTERVAL
            self.cap_area += MACHINE_CPU * len(ready) * AUTOSCALE_INTERVAL
            if self.record:
                self.timeline.append((now, len(lv), demand_cores))
            demand = demand_cores / cap_all if cap_all > 0 else math.inf
            cooled = now - self.last_up >= policy.cooldown_minutes
            if len(lv) < self.min_machines:
                for _ in range(self.min_machines - len(lv)):
                    self.request_machine(now)
            elif demand > policy.scale_up_threshold and cooled:
                want = math.ceil(demand_cores / (policy.scale_up_threshold * MACHINE_CPU)) - len(lv)
                add = min(max(want, 1), policy.max_machines - len(lv))
                for _ in range(add):
                    self.request_machine(now)
                if add > 0:
                    self.last_up = now
            elif demand < policy.scale_down_threshold and cooled:
                removable = len(lv) - self.min_machines
                for m in ready:
                    if removable <= 0:
                        break
                    if m.jobs == 0 and now - m.idle_since >= policy.idle_minutes:
                        m.terminated_at = now
                        removable -= 1
            yield self.env.timeout(AUTOSCALE_INTERVAL)

    def result(self, end: float, sla_wait_minutes: float) -> SimResult:
        """The documented metrics (module docstring) of a run stopped at ``end``."""
        wl, n = self.wl, len(self.wl)
        high = wl.high
        cost = (
            sum(
                ((m.terminated_at if m.terminated_at is not None else end) - m.requested_at)
                for m in self.machines
            )
            / 60.0
        )
        finished = ~np.isnan(self.finish)
        comp = np.where(finished, self.finish, end) - wl.arrival
        wait = np.where(np.isnan(self.start), end, self.start) - wl.arrival
        n_high = int(high.sum())
        sla = float(np.sum(wait[high] > sla_wait_minutes) / n_high) if n_high else 0.0
        metrics = {
            "mean_completion_minutes": float(comp.mean()) if n else 0.0,
            "cost_machine_hours": float(cost),
            "cost_overhead": float(cost / wl.ideal_machine_hours)
            if wl.ideal_machine_hours > 0
            else 0.0,
            "sla_violation_rate": sla,
            "p95_completion_minutes": float(np.percentile(comp, 95)) if n else 0.0,
            "mean_wait_minutes": float(wait.mean()) if n else 0.0,
            "high_priority_mean_wait_minutes": float(wait[high].mean()) if n_high else 0.0,
            "mean_utilization": float(self.util_area / self.cap_area) if self.cap_area > 0 else 0.0,
            "peak_machines": float(self.peak),
            "jobs_arrived": float(self.arrived),
            "jobs_completed": float(finished.sum()),
            "jobs_unfinished": float(n - finished.sum()),
            "sim_minutes": float(end),
        }
        return SimResult(metrics, self.timeline, wait, comp)


def simulate(
    policy: Policy, wl: Workload, sla_wait_minutes: float = 5.0, record: bool = False
) -> SimResult:
    """Run the cluster under ``policy`` on workload ``wl``; see the module docstring."""
    import simpy

    env = simpy.Environment()
    cluster = _Cluster(env, policy, wl, record)
    for _ in range(cluster.min_machines):
        cluster.request_machine(0.0)
    env.process(cluster.arrivals())
    env.process(cluster.autoscaler())
    if len(wl):
        stop_at = wl.horizon + DRAIN_MINUTES
        env.run(until=simpy.AnyOf(env, [cluster.all_done, env.timeout(stop_at)]))
    return cluster.result(env.now, sla_wait_minutes)


# ---- the kit ---------------------------------------------------------------------------------------

PARAMS = (
    FloatParam("priority_weight", 0.1, 100.0, log=True),
    FloatParam("size_weight", 0.0, 5.0),
    IntParam("backfill_depth", 0, 64),
    FloatParam("target_fill", 0.0, 1.0),
    FloatParam("scale_up_threshold", 0.4, 1.0),
    FloatParam("scale_down_ratio", 0.05, 0.9),
    FloatParam("cooldown_minutes", 0.0, 30.0),
    FloatParam("idle_minutes", 0.0, 30.0),
    IntParam("min_machines", 1, 10),
    IntParam("max_machines", 4, 40),
)

TRACKED = (
    "cost_machine_hours",
    "cost_overhead",
    "p95_completion_minutes",
    "mean_wait_minutes",
    "high_priority_mean_wait_minutes",
    "mean_utilization",
    "peak_machines",
    "jobs_arrived",
    "jobs_completed",
    "jobs_unfinished",
)


MAX_HORIZON = 10_080.0  # minutes simulated (a week): horizon
MAX_LOAD_SCALE = 100.0  # load_scale


class CloudKit(Kit):
    name = "cloud"
    defaults = {
        "variant": "single",
        "sla_wait_minutes": 5.0,
        "sla_bound": 0.05,
        "cost_budget": 2.5,
        "horizon": 360.0,
        "load_scale": 1.0,
    }

    @property
    def description(self) -> str:  # type: ignore[override]
        return self.describe()

    def describe(self, **options: Any) -> str:
        o = self._options(options)
        goal = (
            "Objectives: minimize mean job completion time (minutes) and minimize cost (machine-hours): a Pareto front."
            if o["variant"] == "multi"
            else f"Objective: minimize mean job completion time (minutes), subject to cost_overhead <= {o['cost_budget']:g}, where "
            f"cost_overhead is the machine-hours paid divided by the machine-hours of a perfectly packed, never idle cluster "
            f"(the jobs' core-hours / 16)."
        )
        s = float(o["load_scale"])  # arrival rates and load scale with it
        return (
            "Tuning the scheduling and autoscaling policy of a simulated compute cluster. "
            f"Workload: {o['horizon'] / 60:g} hours of batch jobs arriving as a Poisson process of {2.5 * s:.3g} jobs/min with bursts of "
            f"{10 * s:.3g} jobs/min (about 12 minutes each, roughly every hour), log-normal durations (median 6 min, mean 10 min, unknown "
            "to the scheduler), 1-8 cores (mean 2.6) and about 3 GB memory per core, 20% high-priority. The average load is "
            f"about {100 * s:.3g} busy cores ({math.ceil(100 * s / MACHINE_CPU)} machines), bursts need {20 * s:.3g} or more. Machines: 16 cores, 64 GB, 3 minutes to boot, billed "
            "per machine-hour including boot; jobs slow down by up to 30% on machines more than half full. "
            + goal
            + f" Constraint: sla_violation_rate, the fraction of high-priority jobs waiting more than {o['sla_wait_minutes']:g} "
            f"minutes to start, at most {o['sla_bound']:g}. Parameters: priority_weight (minutes of head start for high-priority "
            "jobs in the queue), size_weight (minutes of delay per requested core: favours small jobs), backfill_depth (how "
            "many blocked jobs may be skipped), target_fill (placement: 1 packs jobs onto full machines, 0 spreads them), "
            "scale_up_threshold (demand/capacity that triggers booting machines), scale_down_ratio (scale-down threshold as a "
            "fraction of scale_up_threshold), cooldown_minutes (between scale-ups), idle_minutes (how long an empty machine "
            "lives), min_machines and max_machines. Booting takes 3 minutes, so early scale-up protects the SLA during bursts "
            "while idle machines cost money."
        )

    def spec(self, **options: Any) -> StudySpec:
        o = self._options(options)
        if o["variant"] not in ("single", "multi"):
            raise SpecError("variant", f"variant must be 'single' or 'multi', got {o['variant']!r}")
        if o["variant"] == "multi" and options.get("cost_budget") is not None:
            # cost is an objective there: a budget given would be dropped without a word
            raise SpecError(
                "cost_budget",
                "kit 'cloud': option cost_budget does not apply to variant 'multi' (cost is an "
                "objective there); use variant 'single' for a cost budget",
            )
        # a week at 100x the load is about a minute and a half of simulation a trial (3600 min at
        # 1x: 0.35 s); 1e9 minutes would draw billions of jobs before simulating any
        self._check_number(o, "horizon", 0, MAX_HORIZON, above=True)
        self._check_number(o, "load_scale", 0, MAX_LOAD_SCALE, above=True)
        self._check_number(o, "cost_budget", 0, above=True)
        self._check_number(o, "sla_wait_minutes", 0)
        self._check_number(o, "sla_bound", 0, 1)
        fixed = self._fixed(o, ("sla_wait_minutes", "horizon", "load_scale"))
        sla = OutcomeConstraint("sla_violation_rate", "<=", float(o["sla_bound"]))
        objectives: tuple[Objective, ...]
        cons: tuple[OutcomeConstraint, ...]
        if o["variant"] == "multi":
            objectives = (
                Objective("mean_completion_minutes", MINIMIZE),
                Objective("cost_machine_hours", MINIMIZE),
            )
            cons = (sla,)
        else:
            objectives = (Objective("mean_completion_minutes", MINIMIZE),)
            cons = (sla, OutcomeConstraint("cost_overhead", "<=", float(o["cost_budget"])))
        return StudySpec(
            space=SearchSpace(PARAMS + fixed),
            objectives=objectives,
            outcome_constraints=cons,
            tracked_metrics=tuple(
                m
                for m in TRACKED
                if m not in {o.name for o in objectives} | {c.metric for c in cons}
            ),
            description=self.describe(**options),
        )

    def evaluate(self, params: Mapping[str, Any], seed: int = 0) -> dict[str, float]:
        p = self._with_defaults(params)
        wl = make_workload(
            int(seed), horizon=float(p["horizon"]), load_scale=float(p["load_scale"])
        )
        return simulate(
            Policy.from_params(p), wl, sla_wait_minutes=float(p["sla_wait_minutes"])
        ).metrics


KIT = CloudKit()
