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
    assert "requests 24" in line and "on a job's request" in line and f"gaps {len(ref['gaps'])}" in line


def test_timeline_of_an_invocation_without_requests():
    got = server_timeline([], 0.0, 10.0)
    assert got["requests"] == 0 and got["busy_s"] == 0 and got["first_request_s"] is None and got["tail_s"] is None
    assert "-" in format_timeline(got)


def test_a_preload_is_busy_time_but_no_jobs_request():
    events = [
        {"event": "start", "time": 100.1, "pid": 7},
        {"event": "request", "pid": 7, "request": 1, "func": "causal_kl.jobs.gold:preload_model", "start": 100.2,
         "seconds": 3.0},
        {"event": "load", "pid": 7, "request": 1, "seconds": 2.5, "time": 103.0},
        {"event": "request", "pid": 7, "request": 2, "func": "causal_kl.jobs.gold:gold", "start": 104.0, "seconds": 1.0},
        {"event": "request", "pid": 7, "request": 3, "func": "causal_kl.jobs.patch:patch_route", "start": 106.0,
         "seconds": 1.0},
    ]
    t = server_timeline(events, 100.0, 110.0)
    assert (t["requests"], t["preloads"], t["loads"]) == (2, 1, 1) and not t["load_on_request_path"]
    assert t["first_request_s"] == 4.0 and t["busy_s"] == 5.0 and t["gaps"] == 2 and t["gap_total_s"] == 1.8  # 103.2 -> 104, 105 -> 106
    assert t["tail_s"] == 3.0 and "preloaded" in format_timeline(t)


def test_a_local_run_preloads_only_a_model_it_does_not_make_and_only_for_model_jobs():
    from causal_kl.cluster import LM, RULE_MODELS
    from causal_kl.jobs.gold import preload_plan

    lm_rules = {r for r, m in RULE_MODELS.items() if m == LM}
    assert lm_rules and "gold" in lm_rules
    assert preload_plan({"sites", "gold"}, ["results/x/sites.json"], "/m/model")
    assert not preload_plan({"sites", "gold_aggregate", "table_routes"}, [], "/m/model")  # analysis only
    assert not preload_plan({"recon_sae", "explain_nla_av"}, [], "/m/model")  # no language model of the run's
    # the demo's model is made by the run itself: nothing to load before its rule has run
    assert not preload_plan({"demo_model", "gold"}, ["resources/demo/model", "logs/demo/model.log"], "resources/demo/model/")
    assert preload_plan({"gold"}, ["resources/demo/model_card.json"], "resources/demo/model")


def test_gaps_split_by_the_next_jobs_client_times():
    """Each gap cut at the next request's process start and run_remote call, clipped to the gap, summed by hand."""
    start = 500.0
    # (request start, seconds, client process start, client entered); the third job's process started while the
    # second request still ran (only the part inside the gap counts); the last request has no client times
    rows = [(501.0, 1.0, 500.5, 500.8), (502.6, 0.5, 502.1, 502.4), (503.9, 1.0, 503.0, 503.5),
            (505.5, 0.2, None, None)]
    events = [{"event": "request", "request": i, "start": s, "seconds": d,
               **({"client": {"process_start": p, "entered": e, "sent": s}} if p is not None else {})}
              for i, (s, d, p, e) in enumerate(rows)]
    got = server_timeline(events, start, 510.0)
    # gap 1: 502.0 -> 502.6: before the process 0.1, process 0.3, connect 0.2
    # gap 2: 503.1 -> 503.9: process started 503.0 (before the gap): before 0, process 503.1->503.5 0.4, connect 0.4
    # gap 3: 504.9 -> 505.5: no client times: unknown 0.6
    assert got["gap_parts_s"] == {"before_process": 0.1, "process": 0.7, "connect": 0.6, "unknown": 0.6}
    assert abs(sum(got["gap_parts_s"].values()) - got["gap_total_s"]) < 1e-6
    assert "before process 0.1 s, process 0.7 s, connect 0.6 s, unknown 0.6 s" in format_timeline(got)


def test_jobs_computed_ahead_are_busy_time_and_a_handoff_is_no_gap():
    """The server computed shards 2 and 3 ahead (``ahead`` records); their jobs' requests only took the results. Busy
    time, gaps and handoffs counted by hand from the records."""
    events = [
        {"event": "request", "pid": 7, "request": 1, "func": "causal_kl.jobs.gold:gold", "start": 100.0, "seconds": 1.0},
        {"event": "ahead", "pid": 7, "ahead": 1, "func": "causal_kl.jobs.gold:gold", "start": 101.002, "seconds": 1.0},
        {"event": "request", "pid": 7, "request": 2, "func": "causal_kl.jobs.gold:gold", "start": 102.003,
         "seconds": 0.001, "ahead": 1},
        {"event": "ahead", "pid": 7, "ahead": 2, "func": "causal_kl.jobs.gold:gold", "start": 102.006, "seconds": 1.0},
        {"event": "request", "pid": 7, "request": 3, "func": "causal_kl.jobs.gold:gold", "start": 103.5,
         "seconds": 0.001, "ahead": 2},
        {"event": "request", "pid": 7, "request": 4, "func": "causal_kl.jobs.patch:patch_route", "start": 105.0,
         "seconds": 1.0},
    ]
    t = server_timeline(events, 99.0, 107.0)
    assert (t["requests"], t["computed_ahead"], t["claimed"]) == (4, 2, 2)
    # busy: 100-101, 101.002-102.002 (the ahead job), 102.003-102.004 (its claim), 102.006-103.006, 103.5-103.501,
    # 105-106 (rounded to 10 ms)
    assert abs(t["busy_s"] - (1.0 + 1.0 + 0.001 + 1.0 + 0.001 + 1.0)) < 0.006
    # idle: 0.002, 0.001 and 0.002 (handoffs, under HANDOFF_S), 0.494 (103.006 -> 103.5), 1.499 (103.501 -> 105)
    assert t["gaps"] == 2 and t["handoffs"] == 3 and abs(t["gap_total_s"] - 1.998) < 0.006
    assert "4, 2 of them computed ahead" in format_timeline(t)
