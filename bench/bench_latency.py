"""Ask latency: where bbo's ask time goes, and bbo against Optuna GPSampler (and Ax) side by side.

Two parts, one run:

1. **profile**: bbo's ask time per phase (encoding, training data, GP fit, acquisition
   construction, optimizer start points, optimizer, exploitation steps, feasibility status, and
   the service's storage path) on unconstrained, constrained, mixed, two-objective and batch
   (q = 4) asks, at each history size n.
2. **latency**: the time of one ask at each n, on 2-, 5- and 10-D Styblinski-Tang, unconstrained
   and with an outcome constraint: bbo, Optuna GPSampler, Ax (n <= ``--ax-max``), and, with
   ``--before-tree DIR``, bbo from another checkout (``bbo_before``: the engine before a change).

Protocol, the same for every method: after a throwaway study has warmed the process up (imports,
lazy initialization), a fresh optimizer gets ``n - 1`` completed random trials (seeded: every
method sees the same ones), asks once untimed (its first fit, or its last design point), then asks
``--repeats`` times, each ask timed and its point told before the next. bbo's history is labelled
as a run's would be (initial design, then BO), so one timed ask in three is an exploitation step
as in a real run; the median is reported, and the mean (which includes it). Every
(method, problem, n) runs in a child process of its own with one torch thread, on the checkout its
PYTHONPATH names. Times are wall-clock on a shared machine: compare methods within one run
(ratios), not across runs.

    PYTHONPATH=$PWD:$PWD/server:$PWD/clients/python OMP_NUM_THREADS=1 \\
        nice -n 10 python bench/bench_latency.py [--quick] [--before-tree /tmp/bbo-base]

Writes ``latency.json``, ``latency.md``, ``latency.png`` and ``latency_profile.png`` under
``--out`` (default bench/results), or the same files named after ``--name``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = (10, 20, 50, 100, 300, 1000)
DIMS = (2, 5, 10)
PROFILE_CASES = ("unconstrained", "constrained", "mixed", "two_objectives", "batch")
PHASES = (
    "encode",
    "data",
    "fit",
    "acq_build",
    "candidates",
    "optimizer",
    "exploit",
    "status",
    "storage",
    "other",
)


# ---- problems ----------------------------------------------------------------------------------
def _st(x: np.ndarray) -> float:
    """Styblinski-Tang: smooth, multimodal, any dimension (minimum -39.166 * d at x_i = -2.9035)."""
    return float(0.5 * np.sum(x**4 - 16 * x**2 + 5 * x))


def problem(key: str, device: str = "auto", max_model_points: int | None = None):
    """``(spec, evaluate, q)`` for a latency problem (``st5``, ``st5_con``) or a profile case;
    bbo's GP runs on ``device`` and conditions on at most ``max_model_points`` (the default if None)."""
    from bbo.space import CategoricalParam, FloatParam, IntParam, SearchSpace
    from bbo.spec import AlgorithmOptions, Objective, OutcomeConstraint, StudySpec

    def box(d):
        return SearchSpace(tuple(FloatParam(f"x{i}", -5.0, 5.0) for i in range(d)))

    def vec(p, d):
        return np.array([p[f"x{i}"] for i in range(d)])

    alg = AlgorithmOptions(seed=0, device=device)
    if max_model_points:
        alg = dataclasses.replace(alg, max_model_points=max_model_points)
    con = (OutcomeConstraint("c", "<=", 0.0),)
    q = 1
    if key.startswith("st"):
        d = int(key[2:].split("_")[0])
        constrained = key.endswith("_con")
        spec = StudySpec(box(d), (Objective("f"),), con if constrained else (), algorithm=alg)

        def f(
            p,
        ):  # the constraint cuts off the box's corners; the optimum (norm 2.9) stays feasible
            x = vec(p, d)
            return {"f": _st(x), "c": float(np.linalg.norm(x) / math.sqrt(d) - 3.0)}

        return spec, f, q
    if key in ("unconstrained", "batch"):
        spec, f, _ = problem("st5", device, max_model_points)
        return spec, f, 4 if key == "batch" else 1
    if key == "constrained":
        return problem("st5_con", device, max_model_points)
    if key == "mixed":
        space = SearchSpace(
            (
                FloatParam("x0", -5.0, 5.0),
                FloatParam("x1", -5.0, 5.0),
                IntParam("k", 0, 12),
                CategoricalParam("cat", ("a", "b", "c")),
            )
        )

        def fm(p):
            x = np.array([p["x0"], p["x1"]])
            return {"f": _st(x) + 0.2 * (p["k"] - 7) ** 2 + {"a": 0, "b": 2, "c": 5}[p["cat"]]}

        return StudySpec(space, (Objective("f"),), algorithm=alg), fm, q
    if key == "integers":  # all-integer and wide: a large grid no search can score whole
        space = SearchSpace(tuple(IntParam(f"k{i}", 0, 1000) for i in range(6)))

        def fi(p):
            return {"f": _st(np.array([(p[f"k{i}"] - 500) / 100.0 for i in range(6)]))}

        return StudySpec(space, (Objective("f"),), algorithm=alg), fi, q
    if key == "two_objectives":
        spec = StudySpec(box(5), (Objective("f"), Objective("g")), algorithm=alg)

        def f2(p):
            x = vec(p, 5)
            return {"f": _st(x), "g": _st(x - 2.0)}

        return spec, f2, q
    return _more_problem(key, alg, box, vec)


def _more_problem(key: str, alg, box, vec):
    """The problems of ``latency_more.md``: ordinary studies outside the main grid. A metric's
    value may be ``(value, sem)``: an observation whose noise the user declares."""
    from bbo.space import CategoricalParam, FloatParam, IntParam, LinearConstraint, SearchSpace
    from bbo.spec import Objective, OutcomeConstraint, StudySpec

    if key.startswith("batch") and key[5:].isdigit():  # 5-D Styblinski-Tang, q points an ask
        spec, f, _ = problem("st5", alg.device)
        return spec, f, int(key[5:])
    if key == "log5":  # 5 log-scale floats over five decades
        space = SearchSpace(tuple(FloatParam(f"x{i}", 1e-3, 1e2, log=True) for i in range(5)))
        return (
            StudySpec(space, (Objective("f"),), algorithm=alg),
            lambda p: {"f": _st(2.0 * (np.log10(vec(p, 5)) + 0.5))},
            1,
        )
    if key == "cat8":  # 8 categoricals of 4 choices: additive effects and one interaction
        table = np.random.default_rng(5).normal(size=(8, 4))
        space = SearchSpace(tuple(CategoricalParam(f"c{i}", tuple("abcd")) for i in range(8)))

        def fc(p):
            j = ["abcd".index(p[f"c{i}"]) for i in range(8)]
            return {"f": float(sum(table[i, j[i]] for i in range(8)) + (j[0] == j[1]))}

        return StudySpec(space, (Objective("f"),), algorithm=alg), fc, 1
    if key == "int15":  # 15 ints of 0-100
        space = SearchSpace(tuple(IntParam(f"k{i}", 0, 100) for i in range(15)))

        def fi(p):
            return {"f": _st(np.array([(p[f"k{i}"] - 50) / 10.0 for i in range(15)]))}

        return StudySpec(space, (Objective("f"),), algorithm=alg), fi, 1
    if key in ("mo3", "mo2_con"):  # three objectives; two objectives and an outcome constraint
        names = ("f", "g", "h") if key == "mo3" else ("f", "g")
        con = (OutcomeConstraint("c", "<=", 0.0),) if key == "mo2_con" else ()
        spec = StudySpec(box(5), tuple(Objective(n) for n in names), con, algorithm=alg)

        def fm(p):
            x = vec(p, 5)
            out = {"f": _st(x), "g": _st(x - 2.0), "h": _st(x + 2.0)}
            out = {n: out[n] for n in names}
            return {**out, "c": float(np.linalg.norm(x) / math.sqrt(5) - 3.0)} if con else out

        return spec, fm, 1
    if key in ("h6n", "h6n_sem"):  # Hartmann6 + N(0, 0.1): noise undeclared, or declared (sem)
        import torch
        from botorch.test_functions import Hartmann

        h6, rng = Hartmann(dim=6), np.random.default_rng(11)
        space = SearchSpace(tuple(FloatParam(f"x{i}", 0.0, 1.0) for i in range(6)))

        def fh(p):
            y = float(h6(torch.tensor([vec(p, 6).tolist()]))) + 0.1 * float(rng.normal())
            return {"f": (y, 0.1) if key == "h6n_sem" else y}

        return StudySpec(space, (Objective("f"),), algorithm=alg), fh, 1
    if key == "st5_lin":  # 5-D Styblinski-Tang, x0 + x1 + x2 <= 0 (the optimum stays feasible)
        space = SearchSpace(
            box(5).params, (LinearConstraint({"x0": 1.0, "x1": 1.0, "x2": 1.0}, 0.0),)
        )
        return (
            StudySpec(space, (Objective("f"),), algorithm=alg),
            lambda p: {"f": _st(vec(p, 5))},
            1,
        )
    raise KeyError(key)


def history(spec, f, n: int, seed: int = 123) -> list[tuple[dict, dict]]:
    """``n`` completed random trials (the same for every method)."""
    from bbo.design import _to_box

    if spec.space.constraints:
        from bbo.design import polytope_samples

        return [(p, f(p)) for p in polytope_samples(spec.space, n, seed)]
    rng = np.random.default_rng(seed)
    pts = _to_box(spec.space, rng.random((n, spec.space.dim)))
    return [(p, f(p)) for p in (spec.space.decode(x) for x in pts)]


def _metric(v):
    """A bbo Metric from a problem's value or ``(value, sem)``."""
    from bbo.trial import Metric

    return Metric(*map(float, v)) if isinstance(v, tuple) else Metric(float(v))


def _plain(m: dict) -> dict:
    """A problem's metrics without declared sems (what a peer without them is told)."""
    return {k: v[0] if isinstance(v, tuple) else v for k, v in m.items()}


# ---- phase timer (bbo only) --------------------------------------------------------------------
class PhaseTimer:
    """Exclusive wall time per phase: a wrapped call's time minus that of wrapped calls inside it;
    calls inside an opaque phase (an exploitation step, the status check) count as that phase."""

    def __init__(self):
        self.acc: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []

    def wrap(self, phase: str, fn, opaque: bool = False):
        def timed(*a, **k):
            if self._stack and self._stack[-1][1]:
                return fn(*a, **k)
            t0 = time.perf_counter()
            self._stack.append([phase, opaque, 0.0])
            try:
                return fn(*a, **k)
            finally:
                _, _, inner = self._stack.pop()
                dt = time.perf_counter() - t0
                self.acc[phase] += dt - inner
                if self._stack:
                    self._stack[-1][2] += dt

        return timed

    def install(self) -> list[str]:
        """Wrap every phase function this checkout has; returns the ones it has not."""
        import importlib

        targets = [
            ("encode", "bbo.strategy.model_data", "Points.encode_trials", False),
            ("data", "bbo.strategy.model_data", "ModelData._build", False),
            ("fit", "bbo.surrogate", "Surrogate.model", False),
            ("acq_build", "bbo.strategy.acquisition_step", "AcquisitionStep.build", False),
            ("candidates", "botorch.optim.optimize", "gen_batch_initial_conditions", False),
            ("candidates", "botorch.optim.optimize_mixed", "generate_starting_points", False),
            ("candidates", "bbo.strategy.acquisition_step", "cheap_initial_conditions", False),
            ("candidates", "bbo.strategy.acquisition_step", "start_points", False),
            ("optimizer", "bbo.strategy.acquisition_step", "optimize", False),
            ("exploit", "bbo.strategy.exploitation", "Exploitation.step", True),
            ("status", "bbo.strategy.feasibility", "Feasibility.status", True),
        ]
        missing = []
        for phase, mod, attr, opaque in targets:
            try:
                owner = importlib.import_module(mod)
                *path, name = attr.split(".")
                for p in path:
                    owner = getattr(owner, p)
                fn = getattr(owner, name)
            except (ImportError, AttributeError):
                missing.append(f"{mod}.{attr}")
                continue
            setattr(owner, name, self.wrap(phase, fn, opaque))
        return missing

    def take(self) -> dict[str, float]:
        out = dict(self.acc)
        self.acc.clear()
        return out


# ---- one measurement (child process) -----------------------------------------------------------
class BboAdapter:
    """bbo in-process: the strategy as the service calls it (suggest, then status)."""

    def __init__(self, spec, q: int):
        from bbo.strategy import GenerationStrategy

        self.gs, self.spec, self.q, self.trials = GenerationStrategy(spec), spec, q, []

    def load(self, hist):
        from bbo.trial import Origin, Trial, TrialState

        n0 = self.gs.n_initial
        for p, m in hist:
            origin = Origin.INITIAL.value if len(self.trials) < n0 else Origin.BO.value
            metrics = {k: _metric(v) for k, v in m.items()}
            t = Trial(len(self.trials) + 1, dict(p), TrialState.COMPLETED, metrics, origin=origin)
            self.trials.append(t)

    def ask(self):
        out = self.gs.suggest(self.trials, self.q)
        self.gs.status(self.trials)
        return out

    def tell(self, out, f):
        from bbo.trial import Trial, TrialState

        for s in out:
            m = {k: _metric(v) for k, v in f(s.params).items()}
            t = Trial(len(self.trials) + 1, dict(s.params), TrialState.COMPLETED, m, s.origin)
            self.trials.append(t)


class ServiceAdapter(BboAdapter):
    """bbo through the in-process service (StudyRegistry on a temporary SQLite file): the ask
    includes the storage path (trial list, lease check, insert and commit, model-state push)."""

    def __init__(self, spec, q: int):
        from bbo.registry import StudyRegistry
        from bbo.storage import open_storage
        from bbo.strategy import GenerationStrategy, Suggestion

        self.queue: list[dict] = []  # the history's points, handed out while loading
        self.strategy_seconds = 0.0
        outer = self

        class Timed(GenerationStrategy):
            def suggest(self, trials, n=1, **kw):
                if outer.queue:  # bulk-loading the history: its points, no model
                    return [Suggestion(outer.queue.pop(0), "bo") for _ in range(n)]
                t0 = time.perf_counter()
                try:
                    return super().suggest(trials, n, **kw)
                finally:
                    outer.strategy_seconds += time.perf_counter() - t0

            def status(self, trials):
                t0 = time.perf_counter()
                try:
                    return super().status(trials)
                finally:
                    outer.strategy_seconds += time.perf_counter() - t0

        self.dir = tempfile.mkdtemp(prefix="bbo-latency-")
        self.storage = open_storage(f"sqlite:///{self.dir}/bbo.db")
        self.registry = StudyRegistry(self.storage, strategy_factory=Timed)
        self.study, _ = self.registry.create_study("latency", spec)
        self.q = q

    def load(self, hist):
        self.queue = [dict(p) for p, _ in hist]
        for _, m in hist:
            (t,) = self.study.ask(1).trials
            self.study.tell(t.id, m)

    def ask(self):
        return self.study.ask(self.q).trials

    def tell(self, out, f):
        for t in out:
            self.study.tell(t.id, f(t.params))


def measure(req: dict) -> dict:
    """One (method, problem, n) measurement; runs in a child process."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    method, key, n, repeats = req["method"], req["problem"], req["n"], req["repeats"]
    spec, f, q = problem(key, req.get("device", "auto"), req.get("max_model_points"))
    hist = history(spec, f, n - 1)

    def make():
        if method in ("bbo", "bbo_before"):
            return ServiceAdapter(spec, q) if req.get("service") else BboAdapter(spec, q)
        return Peer(method, key, spec, q)

    # a throwaway study first: imports, lazy initialization and JIT compilation happen once per
    # process (a server's first ask), not in what each size measures
    w = make()
    w.load(history(spec, f, 24, seed=7))
    w.tell(w.ask(), f)
    timer = PhaseTimer() if req.get("profile") else None
    missing = timer.install() if timer else []
    m = make()
    m.load(hist)
    m.tell(m.ask(), f)  # untimed: the first fit
    if timer:
        timer.take()
    times, cpu, phases, origins = [], [], [], []
    for _ in range(repeats):
        if isinstance(m, ServiceAdapter):
            m.strategy_seconds = 0.0
        c0, t0 = time.process_time(), time.perf_counter()
        out = m.ask()
        dt = time.perf_counter() - t0
        times.append(dt)
        cpu.append(time.process_time() - c0)
        if timer:
            ph = timer.take()
            if isinstance(m, ServiceAdapter):
                ph["storage"] = dt - m.strategy_seconds
            ph["other"] = dt - sum(ph.values())
            phases.append(ph)
        if method.startswith("bbo"):
            origins.append([getattr(s, "origin", "") for s in out])
        m.tell(out, f)
    return {
        **req,
        "times": times,
        "median": statistics.median(times),
        "mean": statistics.fmean(times),
        "cpu": cpu,
        "cpu_median": statistics.median(cpu),
        "phases": phases,
        "origins": origins,
        "missing_phases": missing,
    }


class Peer:
    """Optuna GPSampler or Ax through bench/peers.py; a batch of ``q`` is ``q`` asks, the earlier
    ones pending (Optuna: RUNNING trials, which its GPSampler conditions on)."""

    def __init__(self, method: str, key: str, spec, q: int = 1):
        from peers import METHODS
        from problems import Problem

        con = spec.outcome_constraints[0] if spec.outcome_constraints else None
        prob = Problem(key, spec.space, None, 0.0, con)
        prob.objectives = tuple(o.name for o in spec.objectives)
        self.m, self.q = METHODS[method](prob, 0), q

    def load(self, hist):
        self.m.load([(p, _plain(m)) for p, m in hist])

    def ask(self):
        return [self.m.ask_async() for _ in range(self.q)]

    def tell(self, out, f):
        for handle, p in out:
            self.m.tell_async(handle, p, _plain(f(p)))


# ---- driver ------------------------------------------------------------------------------------
def run_child(req: dict, tree: str | None, timeout: float, extra_path: str = "") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if tree:
        env["PYTHONPATH"] = os.pathsep.join(
            [tree, os.path.join(tree, "server"), os.path.join(tree, "clients", "python")]
        )
    if extra_path:
        env["PYTHONPATH"] = os.pathsep.join([extra_path, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(req)]
    try:
        r = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return {**req, "error": f"over {timeout:.0f} s"}
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()[-12:]
        return {**req, "error": tail[-1] if tail else "?", "traceback": tail}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _gpu_name() -> str:
    """The CUDA device torch sees here ('' on a machine without one)."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def tables(doc: dict) -> str:
    lines = [doc["meta"]["note"], ""]
    lat = doc["latency"]
    methods = doc["meta"]["methods"]
    before = "bbo_before" in methods
    for field, what in (("median", "wall-clock"), ("cpu_median", "CPU (process) time")):
        lines += [
            f"### Per-ask {what} (s, median of the timed asks)",
            "",
            "| problem | n | "
            + " | ".join(methods)
            + " | bbo / optuna_gp |"
            + (" bbo / bbo_before |" if before else ""),
            "|---" * (len(methods) + 3 + before) + "|",
        ]
        for key in doc["meta"]["problems"]:
            for n in doc["meta"]["sizes"]:
                row = {m: lat.get(f"{m}|{key}|{n}", {}) for m in methods}
                cells = [_fmt(r.get(field)) if r else "-" for r in row.values()]
                b, o = row.get("bbo", {}).get(field), row.get("optuna_gp", {}).get(field)
                extra = ""
                if before:
                    bb = row["bbo_before"].get(field)
                    extra = f" {_fmt(b / bb) if b and bb else '-'} |"
                ratio = _fmt(b / o) if b and o else "-"
                lines.append(f"| {key} | {n} | " + " | ".join(cells) + f" | {ratio} |" + extra)
        lines.append("")
    prof = doc["profile"]
    if prof:
        lines += ["", "### bbo per-phase time (s, mean over the timed asks)", ""]
        lines.append("| engine | case | n | total | " + " | ".join(PHASES) + " |")
        lines.append("|---" * (len(PHASES) + 4) + "|")
        for k in sorted(
            prof, key=lambda k: (k.split("|")[0], k.split("|")[1], int(k.split("|")[2]))
        ):
            r = prof[k]
            if "error" in r:
                continue
            eng, case, n = k.split("|")
            mean = {p: statistics.fmean(ph.get(p, 0.0) for ph in r["phases"]) for p in PHASES}
            lines.append(
                f"| {eng} | {case} | {n} | {_fmt(r['mean'])} | "
                + " | ".join(_fmt(mean[p]) for p in PHASES)
                + " |"
            )
    return "\n".join(lines) + "\n"


def plots(doc: dict, out: str, name: str = "latency") -> None:
    """``<name>.png`` (seconds per ask against n, per problem) and ``<name>_profile.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = doc["meta"]["problems"]
    fig, axes = plt.subplots(1, len(probs), figsize=(3.3 * len(probs), 3.2), squeeze=False)
    for ax, key in zip(axes[0], probs):
        for m in doc["meta"]["methods"]:
            pts = [
                (n, doc["latency"].get(f"{m}|{key}|{n}", {}).get("median"))
                for n in doc["meta"]["sizes"]
            ]
            pts = [(n, v) for n, v in pts if v]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=m)
        ax.axhline(0.15, color="grey", lw=0.6, ls=":")
        ax.set(xscale="log", yscale="log", title=key, xlabel="completed trials")
    axes[0][0].set_ylabel("seconds per ask")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{name}.png"), dpi=100)
    plt.close(fig)
    prof = doc["profile"]
    if not prof:
        return
    engines = sorted({k.split("|")[0] for k in prof})
    cases = [c for c in PROFILE_CASES if any(k.split("|")[1] == c for k in prof)]
    fig, axes = plt.subplots(
        len(engines), len(cases), figsize=(3.2 * len(cases), 2.8 * len(engines)), squeeze=False
    )
    for i, eng in enumerate(engines):
        for j, case in enumerate(cases):
            ax = axes[i][j]
            sizes = [n for n in doc["meta"]["sizes"] if f"{eng}|{case}|{n}" in prof]
            bottom = np.zeros(len(sizes))
            for p in PHASES:
                v = []
                for n in sizes:
                    r = prof[f"{eng}|{case}|{n}"]
                    v.append(statistics.fmean(ph.get(p, 0.0) for ph in r.get("phases") or [{}]))
                ax.bar(range(len(sizes)), v, bottom=bottom, label=p)
                bottom += np.maximum(np.array(v), 0)
            ax.set_xticks(range(len(sizes)), [str(n) for n in sizes])
            ax.set_title(f"{eng}: {case}", fontsize=8)
            if j == 0:
                ax.set_ylabel("s per ask")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"{name}_profile.png"), dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="n = 20, 100; 5-D only; 2 repeats")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--dims", default=",".join(map(str, DIMS)))
    ap.add_argument("--methods", default="bbo,optuna_gp,ax")
    ap.add_argument("--before-tree", help="a checkout whose bbo runs as method bbo_before")
    ap.add_argument("--ax-max", type=int, default=50, help="largest n Ax is timed at")
    ap.add_argument(
        "--peer-path",
        default="",
        help="a folder put first on the peers' path, e.g. one holding greenlet, with which "
        "Optuna's GPSampler runs its L-BFGS restarts batched (about 2x faster asks)",
    )
    ap.add_argument(
        "--problems",
        default="",
        help="latency problems, e.g. st5,mixed,st5_con (default: st<d> and st<d>_con per --dims; "
        "mixed: 2 floats, an int and a 3-way categorical; integers: 6 ints of 0-1000)",
    )
    ap.add_argument("--profile-cases", default=",".join(PROFILE_CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-profile", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--timeout", type=float, default=900.0, help="per measurement (s)")
    ap.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="bbo's algorithm.device (the peers run where they run: Optuna's GP on the CPU)",
    )
    ap.add_argument(
        "--max-model-points",
        type=int,
        default=0,
        help="bbo's algorithm.max_model_points (0: the default, 3000)",
    )
    ap.add_argument("--name", default="", help="output file stem (default latency)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return 0
    if args.quick:
        args.sizes, args.dims, args.repeats = "20,100", "5", 2
    sizes = [int(x) for x in args.sizes.split(",") if x]
    dims = [int(x) for x in args.dims.split(",") if x]
    methods = list(dict.fromkeys(m for m in args.methods.split(",") if m))
    trees = {"bbo": None}
    if args.before_tree:
        if "bbo_before" in methods:
            methods.remove("bbo_before")
        methods.insert(1, "bbo_before")
        trees["bbo_before"] = os.path.abspath(args.before_tree)
    problems = [p for p in args.problems.split(",") if p] or [
        f"st{d}{c}" for d in dims for c in ("", "_con")
    ]
    model = {"device": args.device, "max_model_points": args.max_model_points or None}
    t0 = time.time()
    doc = {"meta": {}, "latency": {}, "profile": {}}
    if not args.skip_profile:
        for eng in [m for m in ("bbo", "bbo_before") if m in trees]:
            for case in [c for c in args.profile_cases.split(",") if c]:
                for n in sizes:
                    req = {"method": eng, "problem": case, "n": n, "repeats": args.repeats}
                    req.update(model)
                    req["profile"], req["service"] = True, case == "unconstrained"
                    r = run_child(req, trees[eng], args.timeout)
                    doc["profile"][f"{eng}|{case}|{n}"] = r
                    print(
                        f"profile {eng:10s} {case:14s} n={n:5d}: {_fmt(r.get('mean'))} s "
                        f"{r.get('error', '')}",
                        flush=True,
                    )
    if not args.skip_latency:
        for key in problems:
            for n in sizes:
                for m in methods:
                    if m == "ax" and n > args.ax_max:
                        continue
                    req = {"method": m, "problem": key, "n": n, "repeats": args.repeats}
                    req.update(model)
                    extra = "" if m.startswith("bbo") else args.peer_path
                    r = run_child(req, trees.get(m), args.timeout, extra)
                    doc["latency"][f"{m}|{key}|{n}"] = r
                    print(
                        f"latency {m:10s} {key:8s} n={n:5d}: {_fmt(r.get('median'))} s "
                        f"{r.get('error', '')}",
                        flush=True,
                    )
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    gpu = _gpu_name()
    doc["meta"] = {
        "argv": sys.argv[1:],
        "sizes": sizes,
        "dims": dims,
        "problems": problems,
        "methods": methods,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "gpu": gpu,
        **model,
        "wall_seconds": time.time() - t0,
        "note": (
            f"Run {stamp} UTC, {os.cpu_count()} CPU(s) (shared), torch threads 1, "
            f"bbo device {args.device}{f' ({gpu})' if gpu else ''}, "
            f"{args.repeats} timed asks per cell, wall {time.time() - t0:.0f} s."
        ),
    }
    os.makedirs(args.out, exist_ok=True)
    name = args.name or ("latency_quick" if args.quick else "latency")
    with open(os.path.join(args.out, f"{name}.json"), "w") as fh:
        json.dump(doc, fh, indent=1)
    md = tables(doc)
    with open(os.path.join(args.out, f"{name}.md"), "w") as fh:
        fh.write(md)
    if not args.quick:
        plots(doc, args.out, name)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
