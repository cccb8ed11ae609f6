"""``bbo plot STUDY -o FILE.png``: best-so-far curve, feasibility, parameter values over trials."""

from __future__ import annotations

from bbo_server.cli import add_connection_args, connect


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot a study's progress to a PNG")
    p.add_argument("study")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    add_connection_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    with connect(args) as c:
        h = c.study(args.study)
        info, trials = h.info(), h.trials()
    path = plot_study(info, trials, args.output)
    print(path)
    return 0


def _unit(p, v):
    """A parameter value on [0, 1] for the parameter panel (categoricals by choice index)."""
    import math

    from bbo_client import Categorical, Fixed, Ordinal

    if isinstance(p, Fixed) or v is None:
        return None
    if isinstance(p, Categorical):
        return p.choices.index(v) / max(1, len(p.choices) - 1) if v in p.choices else None
    lo, hi = (p.values[0], p.values[-1]) if isinstance(p, Ordinal) else (p.low, p.high)
    t = (lambda x: math.log(x)) if p.log else (lambda x: float(x))
    return (t(v) - t(lo)) / ((t(hi) - t(lo)) or 1.0)


def plot_study(info, trials, output: str) -> str:
    """Write the progress figure of a study (``bbo_client`` StudyInfo and trials) to ``output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obj = info.objectives[0]
    sign = 1.0 if obj.goal == "maximize" else -1.0
    done = [t for t in trials if t.state == "COMPLETED" and obj.name in t.metrics]

    def feasible(t) -> bool:
        return all(
            (t.metrics.get(c.metric, float("nan")) <= c.bound)
            if c.op == "<="
            else (t.metrics.get(c.metric, float("nan")) >= c.bound)
            for c in info.constraints
        )

    free = [p for p in info.parameters if type(p).__name__ != "Fixed"]
    fig, axes = plt.subplots(
        2, 1, figsize=(9, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    ax = axes[0]
    fx = [t.id for t in done if feasible(t)]
    fy = [t.metrics[obj.name] for t in done if feasible(t)]
    ix = [t.id for t in done if not feasible(t)]
    iy = [t.metrics[obj.name] for t in done if not feasible(t)]
    ax.scatter(fx, fy, s=22, color="tab:blue", label="feasible", zorder=3)
    if ix:
        ax.scatter(
            ix,
            iy,
            s=26,
            marker="x",
            color="tab:red",
            label="infeasible (violates a constraint)",
            zorder=3,
        )
    failed = [t.id for t in trials if t.state == "FAILED"]
    for k, tid in enumerate(failed):
        ax.axvline(tid, color="0.8", lw=0.8, zorder=1, label="failed trial" if k == 0 else None)
    best, bx, by = None, [], []
    for t in sorted(done, key=lambda t: t.id):
        if feasible(t):
            v = t.metrics[obj.name]
            best = v if best is None or sign * v > sign * best else best
        if best is not None:
            bx.append(t.id)
            by.append(best)
    if bx:
        ax.step(
            bx, by, where="post", color="tab:green", lw=2, label="best feasible so far", zorder=4
        )
    ax.set_ylabel(f"{obj.name} ({obj.goal})")
    cons = "; ".join(f"{c.metric} {c.op} {c.bound:g}" for c in info.constraints)
    ax.set_title(
        f"study {info.name}: {len(done)} completed, {len(failed)} failed"
        + (f"\nconstraints: {cons}" if cons else "")
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax2 = axes[1]
    for p in free:
        pts = [(t.id, _unit(p, t.params.get(p.name))) for t in trials]
        pts = [(i, u) for i, u in pts if u is not None]
        if pts:
            ax2.plot(
                [i for i, _ in pts], [u for _, u in pts], marker="o", ms=3, lw=0.8, label=p.name
            )
    ax2.set_ylabel("parameter (scaled to [0, 1])")
    ax2.set_xlabel("trial")
    ax2.set_ylim(-0.05, 1.05)
    ax2.grid(alpha=0.3)
    if free:
        ax2.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
    return output
