"""``bbo studies``, ``bbo trials STUDY``, ``bbo best STUDY``: look at what a server holds."""

from __future__ import annotations

import dataclasses
import json
import unicodedata

from bbo_server.cli import add_connection_args, connect


def register(sub) -> None:
    p = sub.add_parser("studies", help="list studies")
    add_connection_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=studies)

    p = sub.add_parser("trials", help="list a study's trials")
    p.add_argument("study")
    p.add_argument(
        "--state",
        action="append",
        default=[],
        choices=["PENDING", "COMPLETED", "FAILED", "ABANDONED", "PAUSED", "PRUNED"],
        help="only these states (repeatable)",
    )
    add_connection_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=trials)

    p = sub.add_parser("best", help="a study's best feasible trial (or Pareto front)")
    p.add_argument("study")
    add_connection_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=best)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def text(s: str) -> str:
    """``s`` safe to print on a terminal: control and format characters (a newline, an escape
    sequence, a bidi override), which workers may put in a reason, a category or a metric name,
    are shown escaped (``\\x1b``), so a row stays one line and only text reaches the terminal."""
    if s.isprintable():
        return s
    return "".join(
        c.encode("unicode_escape").decode("ascii") if unicodedata.category(c)[0] == "C" else c
        for c in s
    )


def trial_dict(t) -> dict:
    return {
        "id": t.id,
        "state": t.state,
        "params": t.params,
        "metrics": t.metrics,
        "sems": t.sems,  # the standard errors told with the metrics that had one
        "origin": t.origin,
        "reason": t.reason,
        "worker_id": t.worker_id,
        "created": t.created.isoformat() if t.created else None,
    }


def table(rows: list[list[str]], header: list[str]) -> str:
    rows = [[text(c) for c in r] for r in rows]
    header = [text(h) for h in header]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def transfer_dict(info) -> dict | None:
    """A study's transfer sources and weights, as JSON (None without transfer)."""
    t = info.transfer
    if t is None:
        return None
    return {
        "sources": [dataclasses.asdict(s) for s in t.sources],
        "target_weights": t.target_weights,
        "weights_at_trials": t.weights_at_trials,
        "note": t.note,
    }


def transfer_lines(info) -> list[str]:
    """Which studies ``info``'s study transfers from and the weights its model gives them."""
    t = info.transfer
    if t is None:
        return []
    first = info.objectives[0].name if info.objectives else ""
    when = (
        f"weights on {first} at {t.weights_at_trials} completed trials"
        if t.weights_at_trials
        else "no weights yet (the initial design runs first)"
    )
    lines = [f"transfer from {len(t.sources)} source study(ies), {when}:"]
    for s in t.sources:
        w = s.weights.get(first)
        lines.append(
            f"  {s.name}  weight {'-' if w is None else f'{w:.2f}'}  "
            f"relatedness {s.relatedness:.2f}  {'named' if s.named else 'auto'}"
            f"{'  DELETED' if s.state == 'deleted' else ''}  ({s.why})"
        )
    if t.weights_at_trials and first in t.target_weights:
        lines.append(f"  (this study's own model: weight {t.target_weights[first]:.2f})")
    if t.note:
        lines.append(f"  {t.note}")
    return lines


def source_name(source) -> str:
    """A transfer source as the studies table names it: deleted ones marked, as in the JSON."""
    return f"{source.name} (deleted)" if source.state == "deleted" else source.name


def studies(args) -> int:
    with connect(args) as c:
        ss = c.list_studies()
    if args.json:
        for s in ss:
            print(
                json.dumps(
                    {
                        "name": s.name,
                        "state": s.state,
                        "trials": s.trial_count,
                        "completed": s.completed_count,
                        "objectives": [f"{o.goal} {o.name}" for o in s.objectives],
                        "created": s.created.isoformat() if s.created else None,
                        "transfer": transfer_dict(s),
                    }
                )
            )
        return 0
    any_transfer = any(s.transfer is not None for s in ss)
    rows = [
        [
            s.name,
            s.state,
            str(s.trial_count),
            str(s.completed_count),
            ", ".join(f"{o.goal} {o.name}" for o in s.objectives),
            s.created.strftime("%Y-%m-%d %H:%M:%S") if s.created else "",
        ]
        + (
            [", ".join(source_name(x) for x in s.transfer.sources) if s.transfer else ""]
            if any_transfer
            else []
        )
        for s in ss
    ]
    header = ["STUDY", "STATE", "TRIALS", "COMPLETED", "OBJECTIVES", "CREATED (UTC)"]
    print(
        table(rows, header + (["TRANSFER FROM"] if any_transfer else [])) if rows else "no studies"
    )
    return 0


def trials(args) -> int:
    with connect(args) as c:
        h = c.study(args.study)
        ts = h.trials(args.state)
    if args.json:
        for t in ts:
            print(json.dumps(trial_dict(t)))
        return 0
    pnames = sorted({k for t in ts for k in t.params})
    mnames = sorted({k for t in ts for k in t.metrics})
    rows = [
        [str(t.id), t.state, t.origin]
        + [_fmt(t.params.get(k, "")) for k in pnames]
        + [_fmt(t.metrics.get(k, "")) for k in mnames]
        + [t.reason[:60]]
        for t in ts
    ]
    for line in transfer_lines(h.info(cached=True)):
        print(text(line))
    print(
        table(rows, ["ID", "STATE", "ORIGIN", *pnames, *mnames, "REASON"]) if rows else "no trials"
    )
    return 0


def _metric_order(info, metrics) -> list[str]:
    """The objectives first, then the constrained metrics, then the rest (tracked ones) by name:
    in the order they came a study's objective could sit behind dozens of tracked metrics."""
    first = [o.name for o in info.objectives] + [c.metric for c in info.constraints]
    ahead = [m for m in dict.fromkeys(first) if m in metrics]
    return ahead + sorted(m for m in metrics if m not in ahead)


def best(args) -> int:
    with connect(args) as c:
        h = c.study(args.study)
        b = h.best()
        info = h.info(cached=True) if b.trials and not args.json else None
    if args.json:
        print(
            json.dumps(
                {
                    "state": b.state,
                    "state_reason": b.state_reason,
                    "trials": [trial_dict(t) for t in b.trials],
                    "count": b.count,  # more than trials: a front too large for one answer
                    "selection": b.selection,
                    "estimate": None if b.estimate is None else dataclasses.asdict(b.estimate),
                }
            )
        )
        return 0
    if not b.trials:
        print(
            "no feasible completed trial yet"
            + (f" ({b.state}: {text(b.state_reason)})" if b.state_reason else "")
        )
        return 0
    if b.count > len(b.trials):
        print(f"Pareto front of {b.count} trials; its first {len(b.trials)} by id:")
    for t in b.trials:
        print(f"trial {t.id} ({t.origin})")
        print(text("  params:  " + ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())))
        shown = ", ".join(f"{k}={_fmt(t.metrics[k])}" for k in _metric_order(info, t.metrics))
        print(text("  metrics: " + shown))
    if b.selection:
        print(f"  chosen:  {text(b.selection)}")
    if b.estimate is not None:
        e = b.estimate
        print(
            f"  model's estimate: {_fmt(e.value)} (68% interval {_fmt(e.lower)} .. {_fmt(e.upper)})"
        )
    return 0
