"""Core optimizer benchmark: bbo vs Ax, Optuna (TPE, GPSampler) and random search, side by side.

Two parts, one run:

1. Sample efficiency: best-so-far regret (best *feasible* objective minus the known optimum) after
   each of ``--budget`` evaluations, for every problem of ``bench/problems.py`` x method x seed.
2. Ask latency on the 6-D problem with one outcome constraint, with 20 / 100 / 300 / 1000 completed
   (random) trials loaded: bbo *warm* (the strategy instance already fit a model one trial earlier,
   the server's steady state: conditioning on cached hyperparameters) and *cold* (a fresh instance,
   full hyperparameter fit: a server restart); Ax ``get_next_trials``; Optuna GPSampler ``ask``.
   A peer whose ask exceeded ``--latency-cap`` seconds is not measured at larger sizes (recorded as
   "skipped (too slow)"); Ax is not run at 1000 by default (``--ax-max``).

Every method runs with torch / BLAS on one thread (set OMP_NUM_THREADS=1 before starting; the
script sets torch.set_num_threads(1) for all methods equally). ``--workers`` runs regret runs in
parallel processes, each single-threaded. Finished regret runs are appended to
``core_runs.jsonl`` and reused with ``--resume``.

Outputs under ``--out`` (default bench/results): ``core_<stamp>.json`` and ``core_latest.json``
(everything), ``core_regret.png``, ``core_latency.png``, ``core_table.md``; ``--write-readme``
also puts the table into bench/README.md between the core markers.

    OMP_NUM_THREADS=1 python bench/bench_core.py --quick          # smoke run, < 1 min
    OMP_NUM_THREADS=1 nohup python bench/bench_core.py --seeds 5 --budget 50 --workers 2 --resume --write-readme &
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

README_BEGIN, README_END = "<!-- core:begin -->", "<!-- core:end -->"


def _threads():
    import torch

    torch.set_num_threads(1)


# ---- sample efficiency -------------------------------------------------------------------------------
def regret_run(
    problem_name: str, method: str, seed: int, budget: int, device: str, parallel: int = 1
) -> dict:
    """Best-so-far regret after each evaluation. ``parallel`` > 1: that many workers evaluate at
    once, each asking again as soon as it tells, so every ask sees ``parallel - 1`` pending points;
    evaluation times are random (lognormal), drawn per seed and the same for every method."""
    _threads()
    import warnings

    warnings.filterwarnings("ignore")
    from peers import METHODS, run_workers
    from problems import ALL

    prob = ALL[problem_name]()
    m = METHODS[method](prob, seed, device=device)
    best, curve, ask_s, err = math.inf, [], [], ""
    try:
        for p, y in run_workers(m, lambda p, i: prob.evaluate(p), budget, parallel, seed, ask_s):
            if prob.feasible(y, p):
                best = min(best, y["f"])
            curve.append(best - prob.optimum if math.isfinite(best) else None)
    except Exception as e:  # noqa: BLE001 - a crashing peer is recorded, not fatal
        err = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    return {
        "problem": problem_name,
        "method": method,
        "seed": seed,
        "budget": budget,
        "parallel": parallel,
        "curve": curve,
        "ask_seconds": ask_s,
        "error": err,
    }


def _final(r):
    c = r["curve"]
    return c[-1] if c and c[-1] is not None else math.inf


def _fmt(x):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.3g}"


def run_regret(args, out_dir) -> list[dict]:
    path = os.path.join(out_dir, "core_runs.jsonl")
    done = {}
    if args.resume and os.path.exists(path):
        for line in open(path):
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r["budget"] == args.budget and not r.get("error"):
                done[(r["problem"], r["method"], r["seed"])] = r
    elif not args.resume and os.path.exists(path) and not args.quick:
        os.replace(path, path + ".old")
    tasks = [
        (p, m, s)
        for p in args.problems
        for m in args.methods
        for s in range(args.seeds)
        if (p, m, s) not in done
    ]
    # the slow methods first, so parallel workers finish together
    order = {"ax": 0, "bbo": 1, "optuna_gp": 2, "optuna_tpe": 3, "random": 4}
    tasks.sort(key=lambda t: (order.get(t[1], 9), t[0], t[2]))
    results = list(done.values())
    jpath = path if not args.quick else os.path.join(out_dir, "core_runs_quick.jsonl")
    with open(jpath, "a") as fh:
        if args.workers <= 1:
            for t in tasks:
                r = regret_run(*t, args.budget, args.device)
                fh.write(json.dumps(r) + "\n")
                fh.flush()
                results.append(r)
                print(
                    f"  {t[0]:14s} {t[1]:11s} seed {t[2]}: final regret {_fmt(_final(r))}  ({sum(r['ask_seconds']):.1f} s asking)",
                    flush=True,
                )
        else:
            with ProcessPoolExecutor(args.workers) as ex:
                futs = {ex.submit(regret_run, *t, args.budget, args.device): t for t in tasks}
                for f in as_completed(futs):
                    t = futs[f]
                    try:
                        r = f.result()
                    except Exception as e:  # noqa: BLE001
                        r = {
                            "problem": t[0],
                            "method": t[1],
                            "seed": t[2],
                            "budget": args.budget,
                            "curve": [],
                            "ask_seconds": [],
                            "error": repr(e),
                        }
                    fh.write(json.dumps(r) + "\n")
                    fh.flush()
                    results.append(r)
                    print(
                        f"  {t[0]:14s} {t[1]:11s} seed {t[2]}: final regret {_fmt(_final(r))}  ({sum(r['ask_seconds']):.1f} s asking)",
                        flush=True,
                    )
    keep = {(r["problem"], r["method"], r["seed"]) for r in results}
    assert all(
        (p, m, s) in keep for p in args.problems for m in args.methods for s in range(args.seeds)
    )
    return [
        r
        for r in results
        if r["problem"] in args.problems and r["method"] in args.methods and r["seed"] < args.seeds
    ]


def summarize_regret(results, problems, methods, budget) -> dict:
    out = {}
    checkpoints = [c for c in (10, 20, 30, 40, 50) if c <= budget] or [budget]
    for p in problems:
        out[p] = {}
        for m in methods:
            rs = [r for r in results if r["problem"] == p and r["method"] == m]
            finals = [_final(r) for r in rs]
            at = {}
            for c in checkpoints:
                vals = [
                    (
                        r["curve"][c - 1]
                        if len(r["curve"]) >= c and r["curve"][c - 1] is not None
                        else math.inf
                    )
                    for r in rs
                ]
                at[str(c)] = statistics.median(vals) if vals else None
            asks = [s for r in rs for s in r["ask_seconds"]]
            out[p][m] = {
                "final_per_seed": [f if math.isfinite(f) else None for f in finals],
                "median_final": (statistics.median(finals) if finals else None),
                "median_at": at,
                "median_ask_seconds": statistics.median(asks) if asks else None,
                "errors": [r["error"] for r in rs if r.get("error")],
            }
            v = out[p][m]["median_final"]
            if v is not None and not math.isfinite(v):
                out[p][m]["median_final"] = None
            for k, v in at.items():
                if v is not None and not math.isfinite(v):
                    at[k] = None
    return out


# ---- latency ---------------------------------------------------------------------------------------------
def _history(prob, n, seed=123):
    from problems import random_params

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = random_params(prob.space, rng)
        out.append((p, prob.evaluate(p)))
    return out


def latency_bbo(n: int, device: str, repeats: int = 3) -> dict:
    _threads()
    from peers import Bbo
    from problems import latency_problem

    prob = latency_problem()
    hist = _history(prob, n + repeats)

    def ask(m):  # a point the run never tells: asked of the strategy, not left pending
        return m.gs.suggest(m.trials, 1)

    # cold: fresh instance, n completed trials, full hyperparameter fit
    m = Bbo(prob, 0, device=device)
    m.load(hist[:n])
    t0 = time.perf_counter()
    ask(m)
    cold = time.perf_counter() - t0
    cold_fit = m.gs.last.fit_seconds
    # warm: the instance fit at n-1 trials; each timed ask sees one more trial
    m = Bbo(prob, 0, device=device)
    m.load(hist[: n - 1])
    ask(m)
    warm, refits = [], 0
    for i in range(repeats):
        m.load([hist[n - 1 + i]])
        t0 = time.perf_counter()
        ask(m)
        warm.append(time.perf_counter() - t0)
        refits += int(m.gs.last.refit)
    return {
        "cold": cold,
        "cold_fit": cold_fit,
        "warm": statistics.median(warm),
        "warm_all": warm,
        "warm_refits": refits,
    }


def latency_peer(method: str, n: int, repeats: int = 1) -> dict:
    _threads()
    import warnings

    warnings.filterwarnings("ignore")
    from peers import METHODS
    from problems import latency_problem

    prob = latency_problem()
    hist = _history(prob, n + repeats)
    m = METHODS[method](prob, 0)
    m.load(hist[:n])
    if method == "ax":  # Ax's first ask after attached trials is still a Sobol point: not timed
        p = m.ask()
        m.tell(p, prob.evaluate(p))
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        p = m.ask()
        times.append(time.perf_counter() - t0)
        m.tell(p, prob.evaluate(p))
    return {"ask": statistics.median(times), "all": times}


def run_latency(args) -> dict:
    out = {"sizes": args.latency_sizes, "bbo": {}, "ax": {}, "optuna_gp": {}}
    for n in args.latency_sizes:
        try:
            out["bbo"][str(n)] = latency_bbo(n, args.device)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            out["bbo"][str(n)] = {"error": repr(e)}
        print(f"  latency bbo      n={n:5d}: {out['bbo'][str(n)]}", flush=True)
    for method in ("ax", "optuna_gp"):
        if method not in args.methods:
            continue
        too_slow = False
        for n in args.latency_sizes:
            if too_slow or (method == "ax" and n > args.ax_max):
                out[method][str(n)] = {"skipped": "too slow"}
            else:
                try:
                    r = latency_peer(method, n, repeats=1 if method == "ax" else 2)
                    out[method][str(n)] = r
                    too_slow = r["ask"] > args.latency_cap
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    out[method][str(n)] = {"error": repr(e)}
            print(f"  latency {method:9s} n={n:5d}: {out[method][str(n)]}", flush=True)
    return out


# ---- report ----------------------------------------------------------------------------------------------
def table(summary, latency, methods, problems, budget, seeds) -> str:
    lines = [
        f"Median final regret after {budget} evaluations over {seeds} seed(s) (lower is better; n/a = no feasible point):",
        "",
    ]
    lines.append("| problem | " + " | ".join(methods) + " |")
    lines.append("|---" * (len(methods) + 1) + "|")
    for p in problems:
        row = [summary[p][m]["median_final"] for m in methods]
        vals = [v if v is not None else math.inf for v in row]
        best = min(vals)
        cells = [
            (f"**{_fmt(v)}**" if v is not None and vals[i] <= best * 1.000001 + 1e-12 else _fmt(v))
            for i, v in enumerate(row)
        ]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Median time per ask during those runs (s):",
        "",
        "| problem | " + " | ".join(methods) + " |",
        "|---" * (len(methods) + 1) + "|",
    ]
    for p in problems:
        lines.append(
            f"| {p} | "
            + " | ".join(_fmt(summary[p][m]["median_ask_seconds"]) for m in methods)
            + " |"
        )
    if latency and latency.get("sizes"):
        lines += [
            "",
            "Ask latency, 6-D problem with one outcome constraint, n completed trials (s). bbo warm = the study's strategy "
            "already holds hyperparameters (steady state); cold = fresh instance, full fit:",
            "",
            "| n | bbo warm | bbo cold | Ax | Optuna GP | bbo warm / Ax | bbo warm / Optuna GP |",
            "|---|---|---|---|---|---|---|",
        ]
        for n in latency["sizes"]:
            b = latency["bbo"].get(str(n), {})
            a = latency.get("ax", {}).get(str(n), {})
            o = latency.get("optuna_gp", {}).get(str(n), {})

            def cell(d, k="ask"):
                if "skipped" in d:
                    return "skipped (too slow)"
                if "error" in d:
                    return "error"
                return _fmt(d.get(k)) if d else "-"

            ra = _fmt(b["warm"] / a["ask"]) if "warm" in b and "ask" in a else "-"
            ro = _fmt(b["warm"] / o["ask"]) if "warm" in b and "ask" in o else "-"
            lines.append(
                f"| {n} | {cell(b, 'warm')} | {cell(b, 'cold')} | {cell(a)} | {cell(o)} | {ra} | {ro} |"
            )
    return "\n".join(lines) + "\n"


def plots(results, summary, latency, problems, methods, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(problems), figsize=(4 * len(problems), 3.4), squeeze=False)
    for ax, p in zip(axes[0], problems):
        for m in methods:
            rs = [r for r in results if r["problem"] == p and r["method"] == m and r["curve"]]
            if not rs:
                continue
            L = min(len(r["curve"]) for r in rs)
            arr = np.array(
                [[v if v is not None else np.nan for v in r["curve"][:L]] for r in rs], dtype=float
            )
            med = np.nanmedian(np.where(np.isnan(arr), np.inf, arr), axis=0)
            ax.plot(np.arange(1, L + 1), np.maximum(med, 1e-6), label=m)
        ax.set_yscale("log")
        ax.set_title(p)
        ax.set_xlabel("evaluations")
    axes[0][0].set_ylabel("median regret")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "core_regret.png"), dpi=110)
    plt.close(fig)
    if latency and latency.get("sizes"):
        fig, ax = plt.subplots(figsize=(5, 3.4))
        sizes = latency["sizes"]
        for key, label, field in (
            ("bbo", "bbo warm", "warm"),
            ("bbo", "bbo cold", "cold"),
            ("ax", "Ax", "ask"),
            ("optuna_gp", "Optuna GP", "ask"),
        ):
            xs = [n for n in sizes if field in latency.get(key, {}).get(str(n), {})]
            if xs:
                ax.plot(xs, [latency[key][str(n)][field] for n in xs], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("completed trials")
        ax.set_ylabel("seconds per ask")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "core_latency.png"), dpi=110)
        plt.close(fig)


def write_readme(md: str, meta: str):
    path = os.path.join(HERE, "README.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    block = (
        f"{README_BEGIN}\n## Core optimizer (bench/bench_core.py)\n\n{meta}\n\n{md}\n{README_END}"
    )
    if README_BEGIN in text and README_END in text:
        a, b = text.index(README_BEGIN), text.index(README_END) + len(README_END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as fh:
        fh.write(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run (< 1 min): branin, bbo/TPE/random, 1 seed, 12 evals, latency at n=20",
    )
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument(
        "--problems", default="branin,hartmann6,hartmann6_con,hartmann6_lin,levy10,mixed"
    )
    ap.add_argument("--methods", default="bbo,ax,optuna_gp,optuna_tpe,random")
    ap.add_argument("--latency-sizes", default="20,100,300,1000")
    ap.add_argument(
        "--latency-cap",
        type=float,
        default=15.0,
        help="stop measuring a peer at larger sizes once an ask took longer (s)",
    )
    ap.add_argument("--ax-max", type=int, default=300, help="largest history Ax is timed at")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--skip-regret", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.budget = 1, 12
        args.problems, args.methods, args.latency_sizes = "branin", "bbo,optuna_tpe,random", "20"
    args.problems = [p for p in args.problems.split(",") if p]
    args.methods = [m for m in args.methods.split(",") if m]
    args.latency_sizes = [int(x) for x in args.latency_sizes.split(",") if x]
    os.makedirs(args.out, exist_ok=True)
    _threads()
    t0 = time.time()
    print(
        f"bench_core: problems {args.problems}, methods {args.methods}, {args.seeds} seeds x {args.budget} evals",
        flush=True,
    )
    results = [] if args.skip_regret else run_regret(args, args.out)
    summary = summarize_regret(results, args.problems, args.methods, args.budget) if results else {}
    latency = {} if args.skip_latency else run_latency(args)
    md = (
        table(summary, latency, args.methods, args.problems, args.budget, args.seeds)
        if summary
        else table({}, latency, [], [], args.budget, args.seeds)
    )
    meta = (
        f"Run {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {os.cpu_count()} CPU(s), torch threads 1, device {args.device}, "
        f"{args.seeds} seeds x {args.budget} evaluations, wall {time.time() - t0:.0f} s."
    )
    doc = {
        "meta": {
            "argv": sys.argv[1:],
            "seeds": args.seeds,
            "budget": args.budget,
            "problems": args.problems,
            "methods": args.methods,
            "device": args.device,
            "quick": args.quick,
            "wall_seconds": time.time() - t0,
            "cpus": os.cpu_count(),
        },
        "regret": summary,
        "latency": latency,
        "runs": results,
        "table_md": md,
    }
    # one file per mode: earlier runs live in git history, not beside the current one
    fn = "core_quick_latest.json" if args.quick else "core_latest.json"
    with open(os.path.join(args.out, fn), "w") as fh:
        json.dump(doc, fh, indent=1)
    try:
        plots(results, summary, latency, args.problems, args.methods, args.out)
    except Exception:  # noqa: BLE001 - plots are a convenience
        traceback.print_exc()
    with open(
        os.path.join(args.out, "core_quick_table.md" if args.quick else "core_table.md"), "w"
    ) as fh:
        fh.write(meta + "\n\n" + md)
    if args.write_readme and not args.quick:
        write_readme(md, meta)
    print()
    print(meta)
    print()
    print(md)
    return doc


if __name__ == "__main__":
    main()
