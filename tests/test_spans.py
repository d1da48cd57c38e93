"""Spans (causal_kl/spans.py) against direct computations from the definitions: eligibility, resample sources,
extra-position noise directions, and the floor / route vectors over whole spans; k = 1 is today's splice exactly."""

import numpy as np
import pyarrow as pa
import pytest

from causal_kl import conditions as C
from causal_kl.contracts import CONDITION_CHOICES, DOCS, SITES
from causal_kl.errors import CausalKLError
from causal_kl.spans import (SPAN_NOISE_TAG, check_spans_fit, eligible_sites, extension_positions, span_choices,
                             span_fits, span_floor_vectors, span_noise_directions, span_route_vectors, span_stack)

K = 4
# (doc_id, n_tokens) and the sites' (doc_id, position): for K = 4 the spans end exactly at the last token
# (fits) or one past it (excluded), plus sites well inside.
DOC_LENGTHS = {"c:en:0": 10, "c:en:1": 8, "c:en:2": 20, "c:en:3": 12}
SITE_ROWS = [
    ("c:en:0", 2), ("c:en:0", 6), ("c:en:0", 7),      # 6 + 3 = 9 = n - 1 fits; 7 + 3 = 10 one past the end
    ("c:en:1", 4), ("c:en:1", 5), ("c:en:1", 7),      # 4 fits exactly; 5 one past; 7 (the last token) only for k = 1
    ("c:en:2", 0), ("c:en:2", 16), ("c:en:2", 17), ("c:en:2", 9),
    ("c:en:3", 3), ("c:en:3", 8), ("c:en:3", 11),
]
SEED = 7


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and "Fix:" in msg, msg
    return msg


def sites_table(rows=SITE_ROWS) -> pa.Table:
    n = len(rows)
    return pa.table({
        "site_id": pa.array(range(n), pa.int64()),
        "doc_id": pa.array([d for d, _ in rows], pa.string()),
        "position": pa.array([p for _, p in rows], pa.int64()),
        "token_id": pa.array([5] * n, pa.int64()),
        "token": pa.array(["x"] * n, pa.string()),
        "next_token_id": pa.array([6] * n, pa.int64()),
        "shard": pa.array([0] * n, pa.int64()),
    }, schema=SITES.schema())


def docs_table(lengths=DOC_LENGTHS) -> pa.Table:
    return pa.table({
        "doc_id": pa.array(list(lengths), pa.string()),
        "row": pa.array(range(len(lengths)), pa.int64()),
        "n_tokens": pa.array(list(lengths.values()), pa.int64()),
        "input_ids": pa.array([list(range(n)) for n in lengths.values()], pa.list_(pa.int32())),
    }, schema=DOCS.schema())


def expected_fits(rows, lengths, k):
    """Every position p .. p+k-1 of the span is a token of the document (0 .. n_tokens - 1)."""
    return [all(0 <= q < lengths[d] for q in range(p, p + k)) for d, p in rows]


# --- eligibility -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, K, 9])
def test_eligible_sites_against_direct_count(k):
    mask, summary = eligible_sites(sites_table(), docs_table(), k)
    want = expected_fits(SITE_ROWS, DOC_LENGTHS, k)
    assert mask.dtype == bool and mask.tolist() == want
    excluded = [i for i, ok in enumerate(want) if not ok]
    assert summary == {"span": k, "n_sites": len(SITE_ROWS), "n_eligible": sum(want), "n_excluded": len(excluded),
                       "excluded_site_ids": excluded}
    assert all(type(s) is int for s in summary["excluded_site_ids"])


def test_span_ending_at_and_one_past_the_document_end():
    mask, summary = eligible_sites(sites_table(), docs_table(), K)
    by_site = dict(zip(range(len(SITE_ROWS)), mask.tolist()))
    assert by_site[1] and by_site[3] and by_site[7]          # p + K - 1 == n_tokens - 1
    assert not by_site[2] and not by_site[4] and not by_site[8]  # p + K - 1 == n_tokens
    assert summary["excluded_site_ids"] == [2, 4, 5, 8, 12]
    assert summary["n_excluded"] == 5 and summary["n_eligible"] == len(SITE_ROWS) - 5


def test_k1_every_site_in_its_document_is_eligible():
    mask, summary = eligible_sites(sites_table(), docs_table(), 1)
    assert mask.all() and summary["n_excluded"] == 0 and summary["excluded_site_ids"] == []


def test_span_fits_direct():
    p = np.array([0, 5, 6, 7, 9])
    assert span_fits(p, 10, K).tolist() == [q + K - 1 <= 9 for q in p]
    n = np.array([4, 8, 9, 10, 12])
    assert span_fits(p, n, K).tolist() == [q + K - 1 <= m - 1 for q, m in zip(p, n)]
    assert span_fits(p, n, 1).tolist() == [q <= m - 1 for q, m in zip(p, n)]


def test_extension_positions_direct():
    p = np.array([3, 50, 0])
    ext = extension_positions(p, K)
    assert ext.dtype == np.int64 and ext.shape == (3, K - 1)
    assert ext.tolist() == [[q + j for j in range(1, K)] for q in p]
    assert extension_positions(p, 1).shape == (3, 0)


def test_eligibility_bad_inputs():
    with pytest.raises(CausalKLError) as e:
        eligible_sites(sites_table(), docs_table({k: v for k, v in DOC_LENGTHS.items() if k != "c:en:2"}), K)
    msg = one_line(e)
    assert "docs.parquet" in msg and "doc_id" in msg and "c:en:2" in msg
    for bad in (0, -1, 1.5, True):
        with pytest.raises(CausalKLError) as e:
            eligible_sites(sites_table(), docs_table(), bad)
        assert "patch.spans" in one_line(e)
    with pytest.raises(CausalKLError) as e:
        span_fits(np.array([1, 2, 3]), np.array([10, 10]), K)
    one_line(e)


def test_a_span_longer_than_any_site_can_fit_is_a_parse_time_error():
    """The bound is the definition's: the longest span that fits a site at sites.min_position in a document of
    sites.max_length tokens (the best case any corpus can give)."""
    from causal_kl.checks import check_spans
    from causal_kl.config import validate_config

    sites = {"min_position": 10, "max_length": 40}
    best = max(k for k in range(1, 100) if span_fits(np.array([10]), 40, k)[0])
    assert best == 30
    config = validate_config({"run": "t", "corpus": {"name": "c", "rows": [0, 4]}, "model": {"path": "m", "layer": 1},
                              "sites": sites, "patch": {"spans": [1, 4, best]}})
    check_spans(config, "run.yaml")
    config["patch"]["spans"] = [1, 4, best + 1, 1000]
    with pytest.raises(CausalKLError) as e:
        check_spans(config, "run.yaml")
    msg = one_line(e)
    assert msg.startswith("run.yaml: patch.spans: span 31 cannot fit any site") and "at most 30" in msg, msg


def test_spans_that_fit_sites_of_fewer_than_two_documents_are_one_line_once_the_sites_exist(tmp_path):
    """check_spans_fit against the definition: a span passes exactly when the sites it fits (every position of the
    span inside the document) come from two documents or more, the condition span_choices needs; the line names the
    longest span that passes."""
    import pyarrow.parquet as pq

    pq.write_table(sites_table(), tmp_path / "sites.parquet")
    pq.write_table(docs_table(), tmp_path / "docs.parquet")
    passing = []
    for k in range(2, 22):
        fits = expected_fits(SITE_ROWS, DOC_LENGTHS, k)
        n_docs = len({d for (d, _), ok in zip(SITE_ROWS, fits) if ok})
        if n_docs >= 2:
            check_spans_fit([1, k], tmp_path / "sites.parquet", tmp_path / "docs.parquet")
            passing.append(k)
            span_choices(list(range(len(SITE_ROWS))), [d for d, _ in SITE_ROWS], SEED, eligible=np.array(fits))
        else:
            with pytest.raises(CausalKLError) as e:
                check_spans_fit([1, 4, k], tmp_path / "sites.parquet", tmp_path / "docs.parquet")
            msg = one_line(e)
            assert f"docs.parquet: patch.spans: span {k} fits sites of {n_docs} of the run's 4 documents" in msg, msg
            with pytest.raises(CausalKLError):  # what the span's conditions job would have hit, after every gold job
                span_choices(list(range(len(SITE_ROWS))), [d for d, _ in SITE_ROWS], SEED, eligible=np.array(fits))
    assert passing == list(range(2, 10))  # some sites excluded from k = 5 on: still fine
    with pytest.raises(CausalKLError, match="list spans of at most 9 in patch.spans"):
        check_spans_fit([1, 10], tmp_path / "sites.parquet", tmp_path / "docs.parquet")
    check_spans_fit([1], tmp_path / "nope.parquet", tmp_path / "nope.parquet")  # span 1 only: nothing read


# --- resample sources --------------------------------------------------------------------------------------------

def test_span_choices_are_resample_choices_on_the_eligible_sites():
    t = sites_table()
    mask, _ = eligible_sites(t, docs_table(), K)
    ids, docs = t["site_id"].to_pylist(), t["doc_id"].to_pylist()
    got = span_choices(ids, docs, SEED, eligible=mask)
    keep_ids = [s for s, m in zip(ids, mask) if m]
    keep_docs = [d for d, m in zip(docs, mask) if m]
    assert got.equals(C.resample_choices(keep_ids, keep_docs, SEED))
    assert got.equals(span_choices(keep_ids, keep_docs, SEED))
    assert got.schema.equals(CONDITION_CHOICES.schema())
    doc_of = dict(zip(ids, docs))
    eligible = set(keep_ids)
    for s, a, b in zip(*(got[c].to_pylist() for c in CONDITION_CHOICES.names)):
        assert b in eligible and doc_of[b] != doc_of[s]
        assert a == -1 or (a in eligible and a != s and doc_of[a] == doc_of[s])
        siblings = [x for x in keep_ids if x != s and doc_of[x] == doc_of[s]]
        assert (a == -1) == (not siblings)


def test_span_choices_k1_is_todays_table_bit_for_bit():
    t = sites_table()
    mask, _ = eligible_sites(t, docs_table(), 1)
    ids, docs = t["site_id"].to_pylist(), t["doc_id"].to_pylist()
    today = C.resample_choices(ids, docs, SEED)
    assert span_choices(ids, docs, SEED, eligible=mask).equals(today)
    assert span_choices(ids, docs, SEED).equals(today)


def test_span_choices_bad_inputs():
    with pytest.raises(CausalKLError) as e:
        span_choices([0, 1, 2], ["a", "b"], SEED)
    one_line(e)
    with pytest.raises(CausalKLError) as e:
        span_choices([0, 1, 2], ["a", "a", "b"], SEED, eligible=np.array([True, True, False]))
    assert "patch.spans" in one_line(e)
    with pytest.raises(CausalKLError) as e:
        span_choices([0, 1, 2], ["a", "a", "b"], SEED, eligible=np.array([True, False]))
    one_line(e)


# --- noise directions at the extra positions ---------------------------------------------------------------------

def test_span_noise_directions_unit_seeded_and_subset_independent():
    ids, d = [3, 11, 0, 42], 24
    u = span_noise_directions(ids, K, d, SEED)
    assert u.shape == (4, K - 1, d) and u.dtype == np.float64
    assert np.allclose(np.linalg.norm(u, axis=2), 1.0, rtol=0, atol=1e-12)
    assert np.array_equal(u, span_noise_directions(ids, K, d, SEED))
    # each (site, j) from its own generator: independent of the other sites, their order and the span length
    rev = span_noise_directions(ids[::-1], K, d, SEED)[::-1]
    assert np.array_equal(u, rev)
    assert np.array_equal(u[2], span_noise_directions([0], K, d, SEED)[0])
    assert np.array_equal(u[:, :2], span_noise_directions(ids, 3, d, SEED))
    for i, s in enumerate(ids):
        for j in range(1, K):
            v = np.random.default_rng([SEED, s, SPAN_NOISE_TAG, j]).standard_normal(d)
            assert np.array_equal(u[i, j - 1], v / np.linalg.norm(v))
    # distinct across j, from the site's own j = 0 direction, and across seeds
    u0 = C.noise_directions(ids, d, SEED)
    full = np.concatenate([u0[:, None], u], axis=1)
    for i in range(len(ids)):
        cos = full[i] @ full[i].T
        assert np.all(np.abs(cos[~np.eye(K, dtype=bool)]) < 0.99)
    assert not np.allclose(u, span_noise_directions(ids, K, d, SEED + 1))
    assert span_noise_directions(ids, 1, d, SEED).shape == (4, 0, d)


# --- floor vectors -----------------------------------------------------------------------------------------------

def _spans(n, k, d, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(dtype), rng.standard_normal((n, k - 1, d)).astype(dtype)


def test_span_floor_vectors_against_per_position_loops():
    t = sites_table()
    mask, _ = eligible_sites(t, docs_table(), K)
    ids = [s for s, m in zip(t["site_id"].to_pylist(), mask) if m]
    docs = [d for d, m in zip(t["doc_id"].to_pylist(), mask) if m]
    n, d = len(ids), 16
    g0, gx = _spans(n, K, d)
    mean = np.random.default_rng(5).standard_normal(d)
    ch = span_choices(ids, docs, SEED)
    fv = span_floor_vectors(g0, gx, ids, ch, mean)
    assert set(fv) == set(C.FLOOR_CONDITIONS)
    row = {s: i for i, s in enumerate(ids)}
    src = {s: (a, b) for s, a, b in zip(*(ch[c].to_pylist() for c in CONDITION_CHOICES.names))}

    def gold_at(site, j):
        return g0[row[site]] if j == 0 else gx[row[site], j - 1]

    for c in C.FLOOR_CONDITIONS:
        v, ok = fv[c]
        assert v.shape == (n, K, d) and v.dtype == np.float32 and ok.shape == (n,) and ok.dtype == bool
    for i, s in enumerate(ids):
        a, b = src[s]
        for j in range(K):
            assert np.array_equal(fv[C.GOLD][0][i, j], gold_at(s, j))
            assert np.array_equal(fv[C.CROSS_DOC][0][i, j], gold_at(b, j))
            assert np.array_equal(fv[C.ZERO][0][i, j], np.zeros(d, np.float32))
            assert np.array_equal(fv[C.MEAN][0][i, j], mean.astype(np.float32))
            if a >= 0:
                assert np.array_equal(fv[C.SAME_DOC][0][i, j], gold_at(a, j))
        assert fv[C.SAME_DOC][1][i] == (a >= 0)
        for c in (C.GOLD, C.CROSS_DOC, C.ZERO, C.MEAN):
            assert fv[c][1][i]
    assert (~fv[C.SAME_DOC][1]).any()  # the hand-made sites include ones with no eligible sibling


@pytest.mark.parametrize("ext_dtype", [np.float32, np.float64])
def test_span_floor_vectors_k1_is_floor_vectors_exactly(ext_dtype):
    t = sites_table()
    ids, docs = t["site_id"].to_pylist(), t["doc_id"].to_pylist()
    n, d = len(ids), 8
    g0 = np.random.default_rng(2).standard_normal((n, d)).astype(np.float32)
    mean = C.eval_mean(g0)
    ch = C.resample_choices(ids, docs, SEED)
    today = C.floor_vectors(g0, ids, ch, mean)
    got = span_floor_vectors(g0, np.zeros((n, 0, d), ext_dtype), ids, ch, mean)
    for c in C.FLOOR_CONDITIONS:
        assert got[c][0].dtype == today[c][0].dtype == np.float32
        assert np.array_equal(got[c][0], today[c][0][:, None])
        assert np.array_equal(got[c][1], today[c][1])
    # and at k > 1, position j = 0 is today's vectors exactly
    gx = np.random.default_rng(3).standard_normal((n, K - 1, d)).astype(np.float32)
    got = span_floor_vectors(g0, gx, ids, ch, mean)
    for c in C.FLOOR_CONDITIONS:
        assert np.array_equal(got[c][0][:, 0], today[c][0]) and np.array_equal(got[c][1], today[c][1])


def test_span_floor_vectors_bad_inputs():
    ids, docs = [0, 1, 2, 3], ["a", "a", "b", "b"]
    g0, gx = _spans(4, K, 6)
    mean = np.zeros(6)
    ch = C.resample_choices(ids, docs, SEED)
    with pytest.raises(CausalKLError) as e:  # extra-position golds of another width
        span_floor_vectors(g0, gx[:, :, :5], ids, ch, mean)
    one_line(e)
    with pytest.raises(CausalKLError) as e:  # ... or for other sites
        span_floor_vectors(g0, gx[:3], ids, ch, mean)
    one_line(e)
    with pytest.raises(CausalKLError) as e:  # a source site that is not among the sites (e.g. not eligible)
        span_floor_vectors(g0[:3], gx[:3], ids[:3], C.resample_choices(ids, docs, SEED).slice(0, 3).set_column(
            2, "cross_doc_source", pa.array([3, 3, 0], pa.int64())), mean)
    assert "source site 3" in one_line(e)
    with pytest.raises(CausalKLError) as e:  # a site with no recorded choice
        span_floor_vectors(g0, gx, ids, ch.slice(0, 3), mean)
    assert "choices" in one_line(e)
    with pytest.raises(CausalKLError) as e:
        span_floor_vectors(g0, gx, ids, ch, np.zeros(5))
    one_line(e)


# --- route vectors -----------------------------------------------------------------------------------------------

def _route_inputs(n, k, d, seed=0):
    rng = np.random.default_rng(seed)
    g0, gx = _spans(n, k, d, seed)
    scale0 = rng.uniform(0.3, 3.0, (n, 1)).astype(np.float32)
    scalex = rng.uniform(0.3, 3.0, (n, k - 1, 1)).astype(np.float32)
    r0 = (g0 * scale0 + 0.7 * rng.standard_normal((n, d))).astype(np.float32)
    rx = (gx * scalex + 0.7 * rng.standard_normal((n, k - 1, d))).astype(np.float32)
    return g0, gx, r0, rx


def test_span_route_vectors_against_per_position_loops():
    ids = [5, 9, 2, 30, 31]
    n, d = len(ids), 32
    g0, gx, r0, rx = _route_inputs(n, K, d)
    r0[1] = 0.0  # a zero reconstruction stays zero at gold norm
    u0 = C.noise_directions(ids, d, SEED).astype(np.float32)  # as recorded (float32)
    ux = span_noise_directions(ids, K, d, SEED).astype(np.float32)
    rv = span_route_vectors(g0, gx, r0, rx, ids, SEED, u0, ux)
    assert set(rv) == set(C.ROUTE_CONDITIONS)
    for c in C.ROUTE_CONDITIONS:
        assert rv[c].shape == (n, K, d) and rv[c].dtype == np.float32
    for i in range(n):
        for j in range(K):
            g = (g0[i] if j == 0 else gx[i, j - 1]).astype(np.float64)
            r = (r0[i] if j == 0 else rx[i, j - 1]).astype(np.float64)
            u = (u0[i] if j == 0 else ux[i, j - 1]).astype(np.float64)
            rn = np.linalg.norm(r)
            rg = r / rn * np.linalg.norm(g) if rn > 0 else np.zeros(d)
            e = np.linalg.norm(rg - g)
            noise = g + e * u / np.linalg.norm(u)
            assert np.allclose(rv[C.RECON][i, j], rg, rtol=1e-6, atol=1e-6)
            assert np.array_equal(rv[C.RECON_RAW][i, j], r.astype(np.float32))
            assert np.allclose(rv[C.NOISE][i, j], noise, rtol=1e-6, atol=1e-6)
            got_e = np.linalg.norm(rv[C.NOISE][i, j].astype(np.float64) - g)
            assert abs(got_e - e) <= 1e-5 * e
    # default directions are the seeded ones
    dflt = span_route_vectors(g0, gx, r0, rx, ids, SEED)
    again = span_route_vectors(g0, gx, r0, rx, ids, SEED, C.noise_directions(ids, d, SEED),
                               span_noise_directions(ids, K, d, SEED))
    for c in C.ROUTE_CONDITIONS:
        assert np.array_equal(dflt[c], again[c])


def test_span_route_vectors_k1_and_j0_are_todays_route_vectors_bit_for_bit():
    ids = list(range(10, 22))
    n, d = len(ids), 24
    g0, gx, r0, rx = _route_inputs(n, K, d, seed=4)
    u0 = C.noise_directions(ids, d, SEED).astype(np.float32)
    ux = span_noise_directions(ids, K, d, SEED).astype(np.float32)
    today = C.route_vectors(g0, r0, ids, SEED, directions=u0)
    empty = np.zeros((n, 0, d), np.float32)
    k1 = span_route_vectors(g0, empty, r0, empty, ids, SEED, u0, empty)
    span = span_route_vectors(g0, gx, r0, rx, ids, SEED, u0, ux)
    for c in C.ROUTE_CONDITIONS:
        assert np.array_equal(k1[c], today[c][:, None])
        assert np.array_equal(span[c][:, 0], today[c])
    # without recorded directions too
    today = C.route_vectors(g0, r0, ids, SEED)
    k1 = span_route_vectors(g0, empty, r0, empty, ids, SEED)
    for c in C.ROUTE_CONDITIONS:
        assert np.array_equal(k1[c], today[c][:, None])


def test_span_route_vectors_bad_inputs():
    ids = [0, 1, 2]
    g0, gx, r0, rx = _route_inputs(3, K, 8)
    u0 = C.noise_directions(ids, 8, SEED)
    ux = span_noise_directions(ids, K, 8, SEED)
    for args in ((g0, gx, r0, rx[:, :2], ids, SEED, u0, ux),      # reconstructions for a shorter span
                 (g0, gx, r0[:, :7], rx, ids, SEED, u0, ux),      # another width
                 (g0, gx, r0, rx, ids[:2], SEED, u0, ux),         # site ids for other sites
                 (g0, gx, r0, rx, ids, SEED, u0, ux[:, :1]),      # directions for a shorter span
                 (g0, gx[:2], r0, rx, ids, SEED, u0, ux)):        # golds for other sites
        with pytest.raises(CausalKLError) as e:
            span_route_vectors(*args)
        one_line(e)


def test_span_stack():
    a, b = _spans(3, K, 5)
    s = span_stack(a, b)
    assert s.shape == (3, K, 5)
    for i in range(3):
        assert np.array_equal(s[i, 0], a[i])
        for j in range(1, K):
            assert np.array_equal(s[i, j], b[i, j - 1])
    with pytest.raises(CausalKLError) as e:
        span_stack(a, b[:, :, :4])
    one_line(e)
