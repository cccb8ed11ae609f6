"""LLM priors and warm starts vs plain BO, side by side: accurate and misleading advice.

There is no real LLM here. The "LLM" is bbo/testing/chat_server.py, a local OpenAI-compatible chat server
that answers the priors prompt and the warm-start prompt with scripted JSON: priors / candidates
centred near the known optimum (accurate) or on a poor region far from it (misleading). The answers
go through the real ``openai`` client, bbo.llm's parsing and validation (confidence capped at 0.5,
spreads widened to >= 10 % of the range), into bbo.strategy.GenerationStrategy (piBO priors, warm
start in the initial design). What this measures is how much bbo gains from good advice and how
little it loses to bad advice, not how good any LLM's advice is.

Variants, per problem and seed (same seed = same Sobol design and BO randomness):
  plain       bbo's BO, no LLM
  prior_good  LLM priors: best_guess = optimum + N(0, 3 % range), 80 % interval +-15 % range, confidence 0.5
  prior_bad   the same around a poor point far from every optimum
  warm_good   LLM warm start (a third of the initial design): optimum + N(0, 5 % range) per coordinate
  warm_bad    the same around the poor point

Metrics (median over seeds of the best-so-far simple regret):
  evals_to_plain_final  first evaluation at which a variant's median regret <= plain BO's median
                        regret after the full budget (target for prior_good: <= budget / 2)
  final_ratio           variant's median final regret / plain's (target for the misleading ones: <= 1.10)

    OMP_NUM_THREADS=1 python bench/bench_llm.py [--seeds 10] [--budget 50] [--problems branin,hartmann6,levy4,admm_lasso] [--workers 2]

Writes bench/results/llm.json, llm.png and llm.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

import problems  # noqa: E402
from problems import BRANIN_OPT, H6_OPT  # noqa: E402 - full-precision optima, shared with bench_core

VARIANTS = ("plain", "prior_good", "prior_bad", "warm_good", "warm_bad")


# ---- problems -----------------------------------------------------------------------------------------
_BRANIN, _HARTMANN6 = problems.branin(), problems.hartmann6()  # BoTorch's test functions


def branin(x):
    return _BRANIN.evaluate({"x1": x[0], "x2": x[1]})["f"]


def hartmann6(x):
    return _HARTMANN6.evaluate({f"x{i}": float(v) for i, v in enumerate(x)})["f"]


def levy(x):
    w = 1 + (np.asarray(x, dtype=float) - 1) / 4
    t1 = math.sin(math.pi * w[0]) ** 2
    t2 = np.sum((w[:-1] - 1) ** 2 * (1 + 10 * np.sin(math.pi * w[:-1] + 1) ** 2))
    t3 = (w[-1] - 1) ** 2 * (1 + math.sin(2 * math.pi * w[-1]) ** 2)
    return float(t1 + t2 + t3)


def admm_iterations(x):
    """The ADMM kit's Lasso instance (seed 0): iterations to converge, x = (log10 rho, alpha), no adaptation."""
    from bbo.kits.admm import KIT

    return KIT.evaluate(
        {"rho": 10.0 ** float(x[0]), "alpha": float(x[1]), "adaptive": "off"}, seed=0
    )["iterations"]


@functools.lru_cache(maxsize=1)
def admm_reference() -> tuple[float, list[float]]:
    """Fewest iterations on a 101 x 19 grid over the fast region (log10 rho in [-1, 1]) and where."""
    best = (math.inf, [0.0, 1.6])
    for lr in np.linspace(-1.0, 1.0, 101):
        for a in np.linspace(1.0, 1.9, 19):
            f = admm_iterations([lr, a])
            if f < best[0]:
                best = (f, [float(lr), float(a)])
    return best


PROBLEMS = {
    # name: (function, bounds, optimum value, an optimum, a poor point far from every optimum, description)
    "branin": (
        branin,
        [(-5.0, 10.0), (0.0, 15.0)],
        BRANIN_OPT,
        [math.pi, 2.275],
        [-4.0, 1.0],
        "Minimize the Branin-Hoo function, a 2-D test function with three global minima.",
    ),
    "hartmann6": (
        hartmann6,
        [(0.0, 1.0)] * 6,
        H6_OPT,
        [0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573],
        [0.85, 0.85, 0.15, 0.85, 0.85, 0.15],
        "Minimize the 6-D Hartmann function on the unit cube.",
    ),
    "levy4": (
        levy,
        [(-10.0, 10.0)] * 4,
        0.0,
        [1.0, 1.0, 1.0, 1.0],
        [-7.5, -7.5, -7.5, -7.5],
        "Minimize the 4-D Levy function, a rugged function with many local minima.",
    ),
    # the ADMM kit (bbo/kits/admm.py) on its Lasso instance; optimum from admm_reference() when first used
    "admm_lasso": (
        admm_iterations,
        [(-3.0, 3.0), (1.0, 1.9)],
        None,
        None,
        [-2.5, 1.05],
        "Tuning an ADMM solver for a Lasso problem (150 x 300, 15-sparse): x1 = log10 of the penalty rho, x2 = the "
        "over-relaxation factor alpha. Minimize the iterations to converge (capped at 2000). Far too small or too large "
        "a rho slows convergence by orders of magnitude; alpha 1.5-1.8 usually helps.",
    ),
}


def get(problem: str) -> tuple:
    """PROBLEMS[problem] with a computed optimum filled in where the table leaves it open."""
    fn, bounds, f_star, x_opt, x_bad, desc = PROBLEMS[problem]
    if f_star is None:
        f_star, x_opt = admm_reference()
    return fn, bounds, f_star, x_opt, x_bad, desc


def make_spec(problem: str, seed: int, prior_exponent: float = 3.0):
    from bbo.space import FloatParam, SearchSpace
    from bbo.spec import AlgorithmOptions, LlmOptions, Objective, StudySpec

    _, bounds, _, _, _, desc = get(problem)
    space = SearchSpace(tuple(FloatParam(f"x{i + 1}", lo, hi) for i, (lo, hi) in enumerate(bounds)))
    return StudySpec(
        space,
        (Objective("y"),),
        algorithm=AlgorithmOptions(seed=seed, prior_exponent=prior_exponent),
        description=desc,
        llm=LlmOptions(enabled=True),
    )


# ---- the scripted "LLM" -------------------------------------------------------------------------------
def advice(problem: str, good: bool, seed: int, n_candidates: int) -> tuple[str, str]:
    """(priors JSON, candidates JSON) that an accurate / misleading LLM would answer."""
    _, bounds, _, x_opt, x_bad, _ = get(problem)
    rng = np.random.default_rng(10_000 + seed)
    centre = np.array(x_opt if good else x_bad, dtype=float)
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    rngw = hi - lo
    guess = np.clip(centre + rng.normal(0, 0.03 * rngw), lo, hi)
    priors = {
        f"x{i + 1}": {
            "rationale": "from experience with this function",
            "best_guess": round(float(guess[i]), 4),
            "low": round(float(max(lo[i], guess[i] - 0.15 * rngw[i])), 4),
            "high": round(float(min(hi[i], guess[i] + 0.15 * rngw[i])), 4),
            "confidence": 0.8,
        }
        for i in range(len(bounds))
    }
    cands = []
    for _ in range(n_candidates):
        x = np.clip(centre + rng.normal(0, 0.05 * rngw), lo, hi)
        cands.append(
            {
                "rationale": "close to where the minimum should be",
                "params": {f"x{i + 1}": round(float(v), 4) for i, v in enumerate(x)},
            }
        )
    return json.dumps({"priors": priors}), "Here are my suggestions:\n```json\n" + json.dumps(
        {"candidates": cands}, indent=1
    ) + "\n```"


# ---- one run ------------------------------------------------------------------------------------------
def run_one(
    problem: str, variant: str, seed: int, budget: int, prior_exponent: float = 3.0
) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from bbo.llm import LlmAdvisor, LlmConfig, warmstart_count
    from bbo.strategy import GenerationStrategy
    from bbo.testing.chat_server import ChatServer, Reply
    from bbo.trial import Metric, Trial, TrialState

    fn, _, f_star, _, _, _ = get(problem)
    spec = make_spec(problem, seed, prior_exponent)
    warm: list = []
    llm_info: dict = {}
    if variant != "plain":
        good = variant.endswith("good")
        priors_json, cands_json = advice(problem, good, seed, warmstart_count(spec))

        def respond(body):
            name = (body.get("response_format") or {}).get("json_schema", {}).get("name", "")
            return Reply(priors_json if name == "parameter_priors" else cands_json)

        with ChatServer(respond) as srv:
            adv = LlmAdvisor(
                LlmConfig(base_url=srv.url, api_key="bench", model="scripted", timeout_s=10)
            )
            if variant.startswith("prior"):
                res = adv.priors(spec, study_key=f"{problem}-{seed}")
                spec = dataclasses.replace(spec, priors=tuple(res.priors))
            else:
                res = adv.warmstart(spec, [], study_key=f"{problem}-{seed}")
                warm = res.suggestions
        llm_info = {
            "reason": res.reason,
            "outcome": res.calls[0].outcome,
            "latency_s": res.calls[0].latency_seconds,
            "n_priors": len(res.priors),
            "n_warm": len(warm),
        }
    gs = GenerationStrategy(spec)
    trials: list = []
    best = math.inf
    regret: list[float] = []
    origins: list[str] = []
    t0 = time.perf_counter()
    for i in range(budget):
        (s,) = gs.suggest(trials, 1, warmstart=warm)
        x = [s.params[n] for n in spec.space.names]
        y = float(fn(x))
        trials.append(Trial(i, s.params, TrialState.COMPLETED, {"y": Metric(y)}, origin=s.origin))
        best = min(best, y)
        regret.append(max(best - f_star, 1e-12))
        origins.append(s.origin)
    return {
        "problem": problem,
        "variant": variant,
        "seed": seed,
        "prior_exponent": prior_exponent,
        "regret": regret,
        "origins": origins,
        "seconds": time.perf_counter() - t0,
        "llm": llm_info,
    }


# ---- summary ------------------------------------------------------------------------------------------
def summarize(runs: list[dict], budget: int) -> dict:
    out: dict = {}
    runs = sorted(
        runs, key=lambda r: r["seed"]
    )  # rows of every variant's array in the same seed order
    for problem in sorted({r["problem"] for r in runs}):
        curves = {
            v: np.array(
                [r["regret"] for r in runs if r["problem"] == problem and r["variant"] == v]
            )
            for v in VARIANTS
        }
        curves = {v: c for v, c in curves.items() if len(c)}
        if "plain" not in curves:
            continue
        med = {v: np.median(c, axis=0) for v, c in curves.items()}
        target = float(med["plain"][-1])
        row: dict = {"plain_final": target, "n_seeds": int(len(curves["plain"]))}
        for v, m in med.items():
            hit = np.nonzero(m <= target * (1 + 1e-9))[0]
            row[v] = {
                "median_final": float(m[-1]),
                "final_ratio": float(m[-1] / target) if target > 0 else float("nan"),
                "evals_to_plain_final": int(hit[0]) + 1 if len(hit) else None,
                "median_at_10": float(m[min(9, budget - 1)]),
                "median_at_25": float(m[min(24, budget - 1)]),
                "mean_log10_final": float(np.mean(np.log10(curves[v][:, -1]))),
                # per seed: does the variant end no worse than plain with the same seed (+10 %)?
                "seeds_within_10pct_of_plain": int(
                    np.sum(curves[v][:, -1] <= 1.1 * curves["plain"][:, -1] + 1e-12)
                ),
                # per seed log10(variant / plain) at the end, median over seeds: robust where medians of
                # regrets near 1e-6 swing with a few seeds
                "paired_log10_ratio_median": float(
                    np.median(np.log10(curves[v][:, -1] / curves["plain"][:, -1]))
                ),
            }
        out[problem] = row
    return out


def markdown(summary: dict, budget: int, n_seeds: int, seconds: float) -> str:
    lines = [
        f"Median simple regret over the seeds in the table, budget {budget} evaluations (scripted LLM answers through the real client).",
        "",
        "| problem | variant | regret @10 | regret @25 | regret @"
        + str(budget)
        + " | × plain @"
        + str(budget)
        + " | evals to plain's @"
        + str(budget)
        + " | mean log10 regret @"
        + str(budget)
        + " | seeds ≤ 1.1 × plain | per-seed × plain (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for problem, row in summary.items():
        for v in VARIANTS:
            if v not in row:
                continue
            r = row[v]
            e = r["evals_to_plain_final"]
            lines.append(
                f"| {problem} | {v} | {r['median_at_10']:.3g} | {r['median_at_25']:.3g} | {r['median_final']:.3g} | "
                f"{r['final_ratio']:.2f} | {e if e is not None else f'> {budget}'} | {r['mean_log10_final']:.2f} | "
                f"{r['seeds_within_10pct_of_plain']}/{row['n_seeds']} | {10 ** r['paired_log10_ratio_median']:.2f} |"
            )
    lines.append("")
    lines.append(f"Total compute: {seconds / 60:.1f} CPU-minutes.")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path, budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = sorted({r["problem"] for r in runs})
    fig, axes = plt.subplots(1, len(problems), figsize=(5 * len(problems), 4), squeeze=False)
    colors = {
        "plain": "k",
        "prior_good": "tab:green",
        "prior_bad": "tab:red",
        "warm_good": "tab:blue",
        "warm_bad": "tab:orange",
    }
    styles = {
        "plain": "-",
        "prior_good": "-",
        "prior_bad": "--",
        "warm_good": "-.",
        "warm_bad": ":",
    }
    for ax, problem in zip(axes[0], problems):
        for v in VARIANTS:
            c = np.array(
                [r["regret"] for r in runs if r["problem"] == problem and r["variant"] == v]
            )
            if not len(c):
                continue
            x = np.arange(1, c.shape[1] + 1)
            lc = np.log10(c)
            ax.plot(x, np.median(lc, axis=0), styles[v], color=colors[v], label=v)
            ax.fill_between(
                x,
                np.percentile(lc, 25, axis=0),
                np.percentile(lc, 75, axis=0),
                color=colors[v],
                alpha=0.12,
            )
        ax.set_title(problem)
        ax.set_xlabel("evaluations")
        ax.set_ylabel("log10 simple regret (median, IQR)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="run seeds first-seed .. first-seed + seeds - 1 (to add seeds to a run)",
    )
    ap.add_argument("--budget", type=int, default=50)
    ap.add_argument("--problems", default="branin,hartmann6,levy4,admm_lasso")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--workers", type=int, default=max(1, min(4, (os.cpu_count() or 2))))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument(
        "--prior-exponent",
        type=float,
        default=3.0,
        help="piBO beta (algorithm.prior_exponent; bbo default 3)",
    )
    ap.add_argument(
        "--resume", action="store_true", help="keep the runs already in <out>/llm.partial.jsonl"
    )
    ap.add_argument(
        "--summarize-only",
        action="store_true",
        help="write the outputs from llm.partial.jsonl and stop",
    )
    ap.add_argument(
        "--name",
        default=None,
        help="output basename (default llm, or llm.interim with --summarize-only)",
    )
    args = ap.parse_args(argv)
    problems = [p for p in args.problems.split(",") if p]
    variants = [v for v in args.variants.split(",") if v]
    for p in problems:
        if p not in PROBLEMS:
            ap.error(f"unknown problem {p!r}; have {sorted(PROBLEMS)}")
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; have {list(VARIANTS)}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / "llm.partial.jsonl"
    jobs = [
        (p, v, s, args.budget, args.prior_exponent)
        for s in range(args.first_seed, args.first_seed + args.seeds)
        for p in problems
        for v in variants
    ]
    runs: list[dict] = []
    others: list[
        dict
    ] = []  # stored runs outside this job set (other seeds, problems): kept in the file
    if (args.resume or args.summarize_only) and partial.exists():
        for line in partial.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a line cut off by a kill
            (runs if _job_of(r) in jobs else others).append(r)
        done = {_job_of(r) for r in runs}
        jobs = [j for j in jobs if j not in done]
        print(f"resuming: {len(runs)} runs kept, {len(jobs)} to go", flush=True)
    if args.summarize_only:
        jobs = []
        # per problem, only seeds where every variant finished, so variants are compared on the same seeds
        full = {
            p: sorted(
                s
                for s in {r["seed"] for r in runs if r["problem"] == p}
                if sum(1 for r in runs if r["seed"] == s and r["problem"] == p) == len(variants)
            )
            for p in problems
        }
        runs = [r for r in runs if r["seed"] in full[r["problem"]]]
        args.seeds = max((len(v) for v in full.values()), default=0)
        print(f"summarizing {len(runs)} runs; seeds per problem: {full}", flush=True)
    t0 = time.time()
    if not args.summarize_only:
        _run(jobs, runs, others, partial, args.workers, args.resume)
    seconds = sum(r["seconds"] for r in runs)
    summary = summarize(runs, args.budget)
    md = markdown(summary, args.budget, args.seeds, seconds)
    result = {
        "budget": args.budget,
        "seeds": args.seeds,
        "prior_exponent": args.prior_exponent,
        "problems": problems,
        "variants": variants,
        "wall_seconds": time.time() - t0,
        "summary": summary,
        "runs": runs,
    }
    name = args.name or ("llm" if not args.summarize_only else "llm.interim")
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out_dir / f"{name}.md").write_text(md + "\n")
    plot(runs, out_dir / f"{name}.png", args.budget)
    print(md)
    return 0


def _job_of(r: dict) -> tuple:
    return (
        r["problem"],
        r["variant"],
        r["seed"],
        len(r["regret"]),
        float(r.get("prior_exponent", 1.0)),
    )


def _run(jobs, runs, others, partial, workers, resume) -> None:
    """Run ``jobs``, appending to ``runs``; rewrites ``partial`` with, when resuming, every stored run
    (``runs`` and ``others``, so adding seeds does not drop the ones already there) and then each new one."""
    with ProcessPoolExecutor(max_workers=workers) as ex, open(partial, "w") as log:
        futs = {ex.submit(run_one, *j): j for j in jobs}
        if resume:
            for r in others + runs:
                log.write(json.dumps(r) + "\n")
        for k, f in enumerate(as_completed(futs), 1):
            r = f.result()
            runs.append(r)
            log.write(json.dumps(r) + "\n")
            log.flush()
            print(
                f"[{k}/{len(jobs)}] {r['problem']:<10} {r['variant']:<10} seed {r['seed']}: final regret "
                f"{r['regret'][-1]:.3g} ({r['seconds']:.0f}s) {r['llm'].get('reason', '')}",
                flush=True,
            )


if __name__ == "__main__":
    sys.exit(main())
