"""The model timeline (causal_kl.timeline) against a time grid: busy seconds, gaps and tail counted millisecond by
millisecond from the same request records, independently of the interval merging the module does."""

from __future__ import annotations

import json
import random
import statistics

import numpy as np

from causal_kl.timeline import format_timeline, read_events, server_timeline


def _grid_figures(reqs: list[tuple[float, float]], start: float, end: float, step: float = 0.001) -> dict:
    t = np.arange(start, end, step)
    busy = np.zeros_like(t, dtype=bool)
    for a, s in reqs:
        busy |= (t >= a) & (t < a + s)
    idx = np.flatnonzero(busy)
    runs = np.split(idx, np.flatnonzero(np.diff(idx) > 1) + 1)  # busy stretches on the grid
    gaps = [(r2[0] - r1[-1] - 1) * step for r1, r2 in zip(runs, runs[1:])]
    return {"busy": busy.sum() * step, "first": idx[0] * step, "tail": (len(t) - 1 - idx[-1]) * step, "gaps": gaps}


def test_timeline_matches_a_time_grid(tmp_path):
    rng = random.Random(3)
    start = 1_000_000.0
    reqs, events, t = [], [{"event": "start", "time": start + 0.2, "pid": 1}], start + 1.7
    for n in range(1, 25):
        s = round(rng.uniform(0.05, 1.5), 3)
        reqs.append((t, s))
        events.append({"event": "request", "request": n, "start": t, "seconds": s, "time": t + s})
        if n == 1:
            events.append({"event": "load", "request": 1, "seconds": 0.8, "time": t + 0.8})
        # the next request starts after a gap, or overlaps this one (two jobs at once)
        t = round(t + (s + rng.uniform(0.05, 0.9) if rng.random() < 0.8 else rng.uniform(0.0, s)), 3)
    end = t + 2.4
    events.append({"event": "request", "request": 99, "start": end + 5, "seconds": 1.0})  # a later invocation's
    f = tmp_path / "model_server.jsonl"
    f.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "requ')  # a torn last line
    got = server_timeline(read_events(f), start, end)
    ref = _grid_figures(reqs, start, end)
    assert got["requests"] == 24 and got["loads"] == 1 and got["load_on_request_path"] and got["servers_started"] == 1
    assert abs(got["busy_s"] - ref["busy"]) < 0.01 and abs(got["first_request_s"] - ref["first"]) < 0.01
    assert abs(got["tail_s"] - ref["tail"]) < 0.01
    assert got["gaps"] == len(ref["gaps"]) and abs(got["gap_total_s"] - sum(ref["gaps"])) < 0.01
    assert abs(got["gap_median_s"] - statistics.median(ref["gaps"])) < 0.002
    assert abs(got["busy_share"] - ref["busy"] / (end - start)) < 0.002
    line = format_timeline(got)
    assert "requests 24" in line and "on a request" in line and f"gaps {len(ref['gaps'])}" in line


def test_timeline_of_an_invocation_without_requests():
    got = server_timeline([], 0.0, 10.0)
    assert got["requests"] == 0 and got["busy_s"] == 0 and got["first_request_s"] is None and got["tail_s"] is None
    assert "-" in format_timeline(got)
