"""Noisy and discrete benchmark families (bench/families.py): bbo vs Optuna GPSampler, TPE, Ax and
random search, side by side, in one run.

Each (problem, method, seed) run asks and tells the problem's budget of evaluations; evaluation
``i`` of seed ``s`` draws its noise (CV folds, model seed, workload, additive noise) from seed
``1000 s + i``, the same for every method. At the end the method names its best point (bbo: what
GetBest reports; Ax: its own recommendation; Optuna and random search: the best observed feasible
point, as ``study.best_trial``), and that point is scored by its *true* value (noise-free function,
or re-evaluation averaged over fresh seeds). bbo is told what its user would know: the noisy
family's objectives are declared noisy (``Objective.noise``; Optuna's GPSampler assumes noise
by default); ``--undeclared`` leaves them at "auto", as a user who does not say. Reported per
problem and method: the mean true value of the reported point (the score; ranks are by it, per
seed, ties sharing), the mean best observed (noisy) value, the true value of the best observed
point, and the median time per ask.

bbo's runs can carry a tag (``--tag before``, ``--tag after``): they are stored as ``bbo@TAG`` and
shown beside the peers' runs, which are stored once and reused (``--resume``). Where the peers'
runs are not at hand, ``--against results/families_<family>.json`` ranks a tagged engine with
the peers of a stored summary and pairs it with that summary's bbo, seed by seed (:func:`against`).

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/bench_families.py --family noisy --seeds 5 \\
        --workers 2 --resume --tag before
    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/bench_families.py --quick   # smoke run, ~1 min

Outputs under ``--out`` (default bench/results): ``families_runs.jsonl`` (every run),
``families_<family>.json`` / ``.md`` / ``.png``.
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

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("OMP_NUM_THREADS", "1")

DEFAULT_METHODS = {
    "noisy": "bbo,optuna_gp,optuna_tpe,ax,random",
    "noisy_heldout": "bbo,optuna_gp,optuna_tpe,random",
    "noisy_fresh": "bbo,optuna_gp,optuna_tpe,random",
    "discrete": "bbo,optuna_gp,optuna_tpe,random",
}
ORDER = {"ax": 0, "bbo": 1, "optuna_gp": 2, "optuna_tpe": 3, "random": 4}


def eval_seed(seed: int, i: int) -> int:
    """The noise seed of evaluation ``i`` of a run with ``seed`` (the same for every method)."""
    return 1000 * seed + i


def label(method: str, tag: str) -> str:
    return f"{method}@{tag}" if tag and method == "bbo" else method


def one_run(
    problem: str,
    method: str,
    seed: int,
    budget: int,
    tag: str,
    undeclared: bool = False,
    parallel: int = 1,
) -> dict:
    """One optimization run and the scores of the point the method reports as best;
    ``undeclared``: the objective's noise left at "auto" (a user who does not declare it);
    ``parallel``: workers evaluating at once (:func:`peers.run_workers`)."""
    import warnings
    from dataclasses import replace

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from families import ALL
    from peers import METHODS, run_workers

    prob = ALL[problem]()
    if undeclared:
        prob = replace(prob, noise="auto")
    budget = budget or prob.budget
    m = METHODS[method](prob, seed, device="cpu")
    params, values, feas, ask_s, err = [], [], [], [], ""
    try:
        for p, y in run_workers(
            m, lambda p, i: prob.sample(p, eval_seed(seed, i)), budget, parallel, seed, ask_s
        ):
            params.append(p)
            values.append(y["f"])
            feas.append(prob.feasible(y))
    except Exception as e:  # noqa: BLE001 - a crashing method is recorded, not fatal
        err = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    ok = [i for i in range(len(values)) if feas[i]]
    best_i = min(ok, key=lambda i: values[i]) if ok else None
    rec = None
    if not err:
        try:
            rec = m.recommend()
        except Exception as e:  # noqa: BLE001
            err = f"recommend: {type(e).__name__}: {e}"
    rec_from = "model" if rec is not None else "observed"
    est = getattr(m, "estimate", None) if rec is not None else None
    row = getattr(m, "reported_row", None) if rec is not None else best_i
    if rec is None and best_i is not None:
        rec = params[best_i]
    cache: dict = {}

    def truth(p):
        key = json.dumps(p, sort_keys=True, default=str)
        if key not in cache:
            t = prob.truth(p)
            cache[key] = t["f"] if prob.feasible(t) else None
        return cache[key]

    return {
        "problem": problem,
        "family": prob.family,
        "method": label(method, tag),
        "seed": seed,
        "budget": budget,
        "parallel": parallel,
        "values": values,
        "feasible": feas,
        "params": params,
        "best_observed": values[best_i] if best_i is not None else None,
        "best_observed_true": truth(params[best_i]) if best_i is not None else None,
        "reported": rec,
        "reported_from": rec_from,
        "reported_true": truth(rec) if rec is not None else None,
        # the method's own estimate of the reported point's value (bbo's GetBest estimate:
        # value, lower, upper) and that point's noisy measurement
        "estimate": list(est) if est is not None else None,
        "reported_observed": values[row] if row is not None else None,
        "optimum": prob.optimum,
        "ask_seconds": ask_s,
        "error": err,
    }


def run_all(args, tasks: list[tuple], path: str) -> list[dict]:
    out = []
    with open(path, "a") as fh:

        def done(r, t):
            fh.write(json.dumps(r, default=str) + "\n")
            fh.flush()
            out.append(r)
            print(
                f"  {t[0]:24s} {r['method']:12s} seed {t[2]}: reported true {_fmt(r['reported_true'])}"
                f" (best observed {_fmt(r['best_observed'])}), {sum(r['ask_seconds']):.1f} s asking"
                + (f" ERROR {r['error']}" if r["error"] else ""),
                flush=True,
            )

        if args.workers <= 1:
            for t in tasks:
                done(one_run(*t), t)
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as ex:
                futs = {ex.submit(one_run, *t): t for t in tasks}
                for f in as_completed(futs):
                    t = futs[f]
                    try:
                        r = f.result()
                    except Exception as e:  # noqa: BLE001
                        traceback.print_exc()
                        r = {"problem": t[0], "method": label(t[1], t[4]), "seed": t[2]}
                        r.update(values=[], ask_seconds=[], error=repr(e), reported_true=None)
                        r.update(best_observed=None)
                    done(r, t)
    return out


def load_runs(path: str) -> dict:
    runs = {}
    if os.path.exists(path):
        for line in open(path):
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not r.get("error"):
                runs[(r["problem"], r["method"], r["seed"])] = r  # later lines win
    return runs


# ---- summary -----------------------------------------------------------------------------------


def _ranks(vals: dict[str, float | None]) -> dict[str, float]:
    """Rank 1 = lowest; None (no feasible point) ranks last; ties share the mean rank."""
    key = {m: (v if v is not None else math.inf) for m, v in vals.items()}
    order = sorted(key.values())
    out = {}
    for m, v in key.items():
        lo = order.index(v)
        hi = len(order) - 1 - order[::-1].index(v)
        out[m] = 1 + (lo + hi) / 2
    return out


def summarize(runs: dict, problems: list[str], labels: list[str], seeds: list[int]) -> dict:
    table: dict = {"problems": {}, "mean_rank": {}, "mean_rank_observed": {}}
    rank_all = {m: [] for m in labels}
    rank_obs_all = {m: [] for m in labels}
    for p in problems:
        per = {m: [runs.get((p, m, s)) for s in seeds] for m in labels}
        complete = [s for k, s in enumerate(seeds) if all(per[m][k] for m in labels)]
        ranks = {m: [] for m in labels}
        ranks_obs = {m: [] for m in labels}
        for s in complete:
            rs = {m: runs[(p, m, s)] for m in labels}
            for m, r in _ranks({m: r["reported_true"] for m, r in rs.items()}).items():
                ranks[m].append(r)
            for m, r in _ranks({m: r["best_observed"] for m, r in rs.items()}).items():
                ranks_obs[m].append(r)
        entry = {"seeds": complete, "methods": {}}
        for m in labels:
            rs = [r for r in per[m] if r]
            tv = [r["reported_true"] for r in rs]
            finite = [v for v in tv if v is not None]
            asks = [a for r in rs for a in r["ask_seconds"]]
            entry["methods"][m] = {
                "runs": len(rs),
                "reported_true": tv,
                "reported_true_mean": _mean(finite),
                "reported_true_sd": statistics.stdev(finite) if len(finite) > 1 else None,
                "infeasible": sum(v is None for v in tv),
                "best_observed_mean": _mean([r["best_observed"] for r in rs]),
                "best_observed_true_mean": _mean([r["best_observed_true"] for r in rs]),
                "model_reported": sum(r.get("reported_from") == "model" for r in rs),
                **_estimate_errors(rs),
                "mean_rank": _mean(ranks[m]),
                "mean_rank_observed": _mean(ranks_obs[m]),
                "median_ask_seconds": statistics.median(asks) if asks else None,
                "ask_seconds_per_run": _mean([sum(r["ask_seconds"]) for r in rs]),
            }
            if entry["methods"][m]["mean_rank"] is not None:
                rank_all[m].append(entry["methods"][m]["mean_rank"])
                rank_obs_all[m].append(entry["methods"][m]["mean_rank_observed"])
        table["problems"][p] = entry
    table["mean_rank"] = {m: _mean(v) for m, v in rank_all.items()}
    table["mean_rank_observed"] = {m: _mean(v) for m, v in rank_obs_all.items()}
    return table


def against(stored: dict, runs: dict, label: str) -> dict:
    """``label``'s runs (a tagged bbo) beside a stored summary (``families_<family>.json``'s
    ``table``) on the problems and seeds both have, so that an engine change is measured without
    rerunning the peers (same seeds, same noise sequences): the mean rank by the true value of the
    reported point with ``label`` in bbo's place, and the paired delta against the stored bbo's
    runs, each normalized by the problem's sd over every stored method's values (mean and
    standard error; negative is better)."""
    ranks: dict[str, list[float]] = {}
    deltas: dict[str, list[float]] = {}
    for p, entry in stored["problems"].items():
        methods = entry["methods"]
        values = [v for m in methods.values() for v in m["reported_true"] if v is not None]
        sd = statistics.pstdev(values) if len(values) > 1 else 0.0
        for k, s in enumerate(entry["seeds"]):
            r = runs.get((p, label, s))
            if r is None:
                continue
            vals = {m: methods[m]["reported_true"][k] for m in methods}
            base, vals["bbo"] = vals.get("bbo"), r["reported_true"]
            for m, rank in _ranks(vals).items():
                ranks.setdefault(m, []).append(rank)
            if base is not None and r["reported_true"] is not None and sd > 0:
                deltas.setdefault(p, []).append((r["reported_true"] - base) / sd)
    every = [d for ds in deltas.values() for d in ds]
    return {
        "runs": len(ranks.get("bbo", [])),
        "mean_rank": {m: _mean(v) for m, v in ranks.items()},
        "delta": _mean(every),
        "delta_se": statistics.stdev(every) / math.sqrt(len(every)) if len(every) > 1 else None,
        "delta_by_problem": {p: _mean(ds) for p, ds in deltas.items()},
    }


def _estimate_errors(rs: list[dict]) -> dict:
    """How near the true value of the reported point the method's estimate of it comes, against
    that point's own measurement (runs with an estimate and a feasible truth)."""
    rows = [
        (r["estimate"], r["reported_observed"], r["reported_true"])
        for r in rs
        if r.get("estimate")
        and r["reported_true"] is not None
        and r.get("reported_observed") is not None
    ]
    if not rows:
        return {"estimated": 0}
    return {
        "estimated": len(rows),
        "estimate_error": _mean([abs(e[0] - t) for e, _, t in rows]),
        "observed_error": _mean([abs(o - t) for _, o, t in rows]),
        "estimate_covers": sum(e[1] <= t <= e[2] for e, _, t in rows),
    }


def _mean(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(xs)) if xs else None


def _fmt(v, digits=4):
    if v is None:
        return "—"
    return f"{v:.{digits}g}"


def markdown(table: dict, labels: list[str], family: str, meta: str) -> str:
    lines = [f"### Family `{family}`", "", meta, ""]
    lines += [
        "Mean rank over problems (per problem and seed, by the true value of the point each "
        "method reports as best; 1 = best) and, second, by the best observed noisy value:",
        "",
        "| "
        + " | ".join(["method", "mean rank (true value of reported best)", "by best observed"])
        + " |",
        "|---|---|---|",
    ]
    for m in sorted(labels, key=lambda m: table["mean_rank"].get(m) or 99):
        lines.append(
            f"| {m} | {_fmt(table['mean_rank'].get(m), 3)} | "
            f"{_fmt(table['mean_rank_observed'].get(m), 3)} |"
        )
    lines += [
        "",
        "True value of the reported best point, mean ± sd over seeds (lower is better), and the "
        "mean rank on that problem:",
        "",
        "| problem | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for p, e in table["problems"].items():
        cells = []
        best = min((e["methods"][m]["mean_rank"] or 99) for m in labels)
        for m in labels:
            d = e["methods"][m]
            c = _fmt(d["reported_true_mean"])
            if d["reported_true_sd"] is not None:
                c += f" ± {_fmt(d['reported_true_sd'], 2)}"
            c += f" ({_fmt(d['mean_rank'], 2)})"
            if d["infeasible"]:
                c += f" [{d['infeasible']} infeasible]"
            if d["mean_rank"] is not None and d["mean_rank"] == best:
                c = f"**{c}**"
            cells.append(c)
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    lines += _per_method_table(
        table,
        labels,
        "Best observed (noisy) value, mean over seeds / true value of that best observed point:",
        lambda r: f"{_fmt(r['best_observed_mean'])} / {_fmt(r['best_observed_true_mean'])}",
    )
    estimating = [
        m for m in labels if any(e["methods"][m]["estimated"] for e in table["problems"].values())
    ]
    if estimating:
        lines += _per_method_table(
            table,
            estimating,
            "The model's estimate of the reported point (GetBest's `estimate`) against that "
            "point's true value: mean absolute error of the estimate / of the point's own noisy "
            "measurement, and in how many runs its interval (one posterior sd either side) holds "
            "the true value:",
            lambda r: (
                f"{_fmt(r['estimate_error'], 2)} / {_fmt(r['observed_error'], 2)}, "
                f"{r['estimate_covers']} of {r['estimated']}"
                if r["estimated"]
                else "—"
            ),
        )
    lines += _per_method_table(
        table,
        labels,
        "Median seconds per ask (and seconds asking per run):",
        lambda r: f"{_fmt(r['median_ask_seconds'], 3)} ({_fmt(r['ask_seconds_per_run'], 3)})",
    )
    return "\n".join(lines) + "\n"


def _per_method_table(table: dict, labels: list[str], title: str, cell) -> list[str]:
    """A titled markdown table: a row per problem, ``cell(result)`` per method."""
    rows = [
        "",
        title,
        "",
        "| problem | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for p, e in table["problems"].items():
        rows.append(f"| {p} | " + " | ".join(cell(e["methods"][m]) for m in labels) + " |")
    return rows


def plot(table: dict, labels: list[str], path: str, family: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table["problems"])
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.0 * rows), squeeze=False)
    for ax, p in zip(axes.ravel(), names, strict=False):
        e = table["problems"][p]
        for k, m in enumerate(labels):
            v = [x for x in e["methods"][m]["reported_true"] if x is not None]
            if not v:
                continue
            ax.scatter([k] * len(v), v, s=12, alpha=0.6)
            ax.plot([k - 0.3, k + 0.3], [np.mean(v)] * 2, color="k", lw=1.5)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=35, fontsize=7, ha="right")
        ax.set_title(p, fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    fig.suptitle(f"{family}: true value of the reported best point (dots: seeds, bar: mean)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="noisy,discrete")
    ap.add_argument("--problems", default="", help="comma-separated (default: the families')")
    ap.add_argument("--methods", default="", help="default: per family (see DEFAULT_METHODS)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=0, help="0: each problem's own (30 / 40)")
    ap.add_argument("--tag", default="", help="label bbo's runs bbo@TAG")
    ap.add_argument(
        "--undeclared",
        action="store_true",
        help="leave every objective's noise at auto, as a user who does not declare it (with --tag)",
    )
    ap.add_argument("--show", default="", help="labels to tabulate (default: all present)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="workers evaluating at once within a run, each asking with the others' points "
        "pending (give such runs their own --out)",
    )
    ap.add_argument("--resume", action="store_true", help="reuse finished runs")
    ap.add_argument("--report-only", action="store_true", help="only tabulate stored runs")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 cheap problems, 1 seed")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument(
        "--against",
        default="",
        help="a stored families_<family>.json: each tagged bbo's runs ranked with its peers "
        "and paired against its bbo (one family)",
    )
    args = ap.parse_args(argv)
    if args.undeclared and not args.tag:  # else they would be stored, and resumed, as declared
        ap.error("--undeclared runs need a --tag (e.g. --tag auto)")
    from families import FAMILIES

    os.makedirs(args.out, exist_ok=True)
    families = [f for f in args.family.split(",") if f]
    path = os.path.join(args.out, "families_runs.jsonl")
    if args.quick:
        args.seeds, args.budget = 1, 12
        args.problems = args.problems or "branin_hetero,nas_cell"
        args.methods = args.methods or "bbo,optuna_tpe,random"
        path = os.path.join(args.out, "families_quick_runs.jsonl")
        if os.path.exists(path):
            os.remove(path)
    seeds = list(range(args.seeds))
    stored = load_runs(path) if (args.resume or args.report_only) else {}
    docs = {}
    for fam in families:
        probs = [p for p in (args.problems.split(",") if args.problems else FAMILIES[fam]) if p]
        probs = [p for p in probs if p in FAMILIES[fam]]
        if not probs:
            continue
        methods = [m for m in (args.methods or DEFAULT_METHODS[fam]).split(",") if m]
        tasks = [
            (p, m, s, args.budget, args.tag, args.undeclared, args.parallel)
            for p in probs
            for m in methods
            for s in seeds
            if (p, label(m, args.tag), s) not in stored
        ]
        # seed by seed, every method on each problem: a run stopped early still compares fairly
        tasks.sort(key=lambda t: (t[2], t[0], ORDER.get(t[1], 9)))
        t0 = time.time()
        if not args.report_only:
            print(f"{fam}: {len(tasks)} runs to do, {args.workers} parallel", flush=True)
            for r in run_all(args, tasks, path):
                stored[(r["problem"], r["method"], r["seed"])] = r
        present = {m for (p, m, s) in stored if p in probs}
        if args.show:
            labels = [m for m in args.show.split(",") if m]
        else:
            labels = sorted(present, key=lambda m: (ORDER.get(m.split("@")[0], 9), m))
        table = summarize(stored, probs, labels, seeds)
        meta = (
            f"{len(seeds)} seeds, budget {args.budget or 'per problem'}, "
            + (f"{args.parallel} workers per run, " if args.parallel > 1 else "")
            + "written "
            f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {os.cpu_count()} CPUs "
            f"(shared), torch threads 1; this invocation ran {len(tasks)} runs in "
            f"{time.time() - t0:.0f} s."
        )
        md = markdown(table, labels, fam, meta)
        stem = "families_quick" if args.quick else f"families_{fam}"
        with open(os.path.join(args.out, f"{stem}.json"), "w") as fh:
            json.dump({"meta": meta, "labels": labels, "table": table}, fh, indent=1, default=str)
        with open(os.path.join(args.out, f"{stem}.md"), "w") as fh:
            fh.write(md)
        try:
            plot(table, labels, os.path.join(args.out, f"{stem}.png"), fam)
        except Exception:  # noqa: BLE001 - the plot is a convenience
            traceback.print_exc()
        docs[fam] = table
        print(md, flush=True)
        if args.against:
            with open(args.against) as fh:
                summary = json.load(fh)["table"]
            for lab in (m for m in labels if m.startswith("bbo@")):
                print(f"{lab} against {args.against}:", json.dumps(against(summary, stored, lab)))
    return docs


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
