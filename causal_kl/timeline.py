"""Where a run's model time goes, from the model server's own event records (``model_server.jsonl``).

The server appends one JSON line per ``start``, ``load`` and ``request`` (``causal_kl.server.Server.record``); a
request record carries its wall-clock ``start`` and its ``seconds``, a load the request it happened in and its
``seconds``. ``server_timeline`` reads the records of one invocation (a window of wall-clock time) and says what
issue #32 measures: the time from the invocation's start to its first model request, the loads (and whether one
sat on a request's path), the seconds the server was busy (requests merged where they overlap), the gaps between
requests (count, median, total), the tail after the last request, and the busy share of the wall. The preload of
the run's model (``PRELOAD``) counts as busy time, not as a job's request; so does a job the server computed ahead
(an ``ahead`` record, ``causal_kl.ahead``), whose own request then only takes its result (a request record with
``ahead``: counted in ``claimed``).

No job log is read: the records are the server's, written as it works, one ``write`` per line.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Iterable


HANDOFF_S = 0.01
"""Idle shorter than this between two busy intervals is the server handing one computation to the next (a claimed
job's request, the next job computed ahead: a millisecond or two), not the model waiting for a job: it is not
counted as a gap (its seconds are in ``gap_total_s`` all the same)."""

PRELOAD = ":preload_model"
"""A request whose function ends so is the run's model preload (``causal_kl.jobs.gold.preload_model``, started from
Snakemake's ``onstart``): not a job's request, and a load inside it is not on a job's path."""


def read_events(path: str | Path) -> list[dict]:
    """The records of a ``model_server.jsonl`` (several servers may share one file); a torn last line is skipped."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "event" in rec:
            out.append(rec)
    return out


def merged(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of ``(start, end)`` intervals, as sorted disjoint intervals."""
    merged: list[list[float]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def server_timeline(events: list[dict], start: float, end: float) -> dict[str, Any]:
    """The timeline of the invocation that ran from ``start`` to ``end`` (wall-clock seconds).

    Requests are those that started inside the window (a job's; the preload is counted apart). Busy time is the union
    of their intervals and those of the jobs computed ahead; a gap is the idle
    time between one busy interval's end and the next one's start (counted from ``HANDOFF_S``; ``gap_total_s`` is all
    of it). ``load_on_request_path``: a load happened inside
    a request (its seconds were waited for by a job) rather than before the first request."""
    wall = max(end - start, 0.0)
    reqs = sorted((r for r in events if r.get("event") == "request" and start <= float(r.get("start", -1)) <= end),
                  key=lambda r: float(r["start"]))
    servers = [r for r in events if r.get("event") == "start" and start <= float(r.get("time", -1)) <= end]
    adopted = [r for r in events if r.get("event") == "adopt" and start <= float(r.get("time", -1)) <= end]
    loads = [r for r in events if r.get("event") == "load" and start <= float(r.get("time", -1)) <= end]
    ahead = [r for r in events if r.get("event") == "ahead" and start <= float(r.get("start", -1)) <= end]
    preloads = {(r.get("pid"), r.get("request")) for r in reqs if str(r.get("func", "")).endswith(PRELOAD)}
    jobs = [r for r in reqs if (r.get("pid"), r.get("request")) not in preloads]
    busy = merged((float(r["start"]), float(r["start"]) + float(r.get("seconds", 0.0))) for r in [*reqs, *ahead])
    idle = [b[0] - a[1] for a, b in zip(busy, busy[1:])]
    gaps = [g for g in idle if g >= HANDOFF_S]
    parts = gap_parts(busy, reqs)
    busy_s = sum(b - a for a, b in busy)
    out: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "servers_started": len(servers),
        "servers_adopted": len(adopted),
        "requests": len(jobs),
        "preloads": len(preloads),
        "computed_ahead": len(ahead),
        "claimed": sum(1 for r in jobs if r.get("ahead") is not None),
        "loads": len(loads),
        "load_s": round(sum(float(r.get("seconds", 0.0)) for r in loads), 2),
        "load_on_request_path": any(r.get("request") is not None and (r.get("pid"), r.get("request")) not in preloads
                                    for r in loads),
        "first_request_s": round(float(jobs[0]["start"]) - start, 2) if jobs else None,
        "busy_s": round(busy_s, 2),
        "busy_share": round(busy_s / wall, 3) if wall else None,
        "gaps": len(gaps),
        "handoffs": len(idle) - len(gaps),
        "gap_median_s": round(statistics.median(gaps), 3) if gaps else None,
        "gap_total_s": round(sum(idle), 2),
        "tail_s": round(end - busy[-1][1], 2) if busy else None,
        "gap_parts_s": parts,
    }
    return out


GAP_PARTS = ("before_process", "process", "connect", "unknown")
"""Where a gap between requests went, by the next request's client times (``causal_kl.client.run_remote`` sends
them): ``before_process`` from the end of the busy time to the start of the next job's process (Snakemake finishing
the last job and scheduling the next, or CPU jobs holding the cores), ``process`` from then to the job's call of
``run_remote`` (the interpreter, Snakemake's script preamble, imports), ``connect`` from then to the request's start
in the server (slot, identity, connect); ``unknown`` for a request without client times, and for a gap that a job
computed ahead ended."""


def _overlap(a: float, b: float, lo: float, hi: float) -> float:
    return max(0.0, min(b, hi) - max(a, lo))


def gap_parts(busy: list[tuple[float, float]], reqs: list[dict]) -> dict[str, float]:
    """The gaps' seconds split into ``GAP_PARTS``, each part clipped to its gap."""
    totals = dict.fromkeys(GAP_PARTS, 0.0)
    for (_, lo), (hi, _) in zip(busy, busy[1:]):
        nxt = next((r for r in reqs if abs(float(r["start"]) - hi) < 1e-9), None)
        client = (nxt or {}).get("client") or {}
        started, entered = client.get("process_start"), client.get("entered")
        if started is None or entered is None:
            totals["unknown"] += hi - lo
            continue
        totals["before_process"] += _overlap(lo, float(started), lo, hi)
        totals["process"] += _overlap(float(started), float(entered), lo, hi)
        totals["connect"] += _overlap(float(entered), hi, lo, hi)
    return {k: round(v, 2) for k, v in totals.items()}


def format_timeline(t: dict[str, Any]) -> str:
    """One line of the figures, as the benchmark prints them."""
    def s(v: Any, unit: str = " s") -> str:
        return "-" if v is None else f"{v}{unit}"

    where = ", on a job's request" if t["load_on_request_path"] else (", preloaded" if t.get("preloads") and t["loads"] else "")
    load = f"{t['loads']} ({s(t['load_s'])}{where})"
    adopted = f", adopted {t['servers_adopted']} kept server(s)" if t.get("servers_adopted") else ""
    ahead = f", {t['claimed']} of them computed ahead" if t.get("computed_ahead") else ""
    return (f"requests {t['requests']}{ahead}, load {load}{adopted}, first request at {s(t['first_request_s'])}, busy "
            f"{s(t['busy_s'])} ({100 * (t['busy_share'] or 0):.0f}%), gaps {t['gaps']} "
            f"(median {s(t['gap_median_s'])}, total {s(t['gap_total_s'])}{_parts(t.get('gap_parts_s'))}), after the last "
            f"request {s(t['tail_s'])}")


def _parts(parts: dict[str, float] | None) -> str:
    shown = [f"{k.replace('_', ' ')} {v} s" for k, v in (parts or {}).items() if v]
    return f": {', '.join(shown)}" if shown else ""
