"""benchmarks._timing: round-robin medians, the untimed ``between`` hook before every timed
call, and the cache flusher the matmul benchmarks pass to it."""

import time

import jax.numpy as jnp
import numpy as np

from benchmarks import _timing
from benchmarks._timing import cache_flusher, interleaved_medians, linear_layer


def test_between_runs_before_every_timed_call_and_is_not_timed():
    calls = []

    def make(name):
        def f():
            calls.append(name)
            return jnp.zeros(())
        return f

    med = interleaved_medians({"a": make("a"), "b": make("b")}, repeats=3, warmup=1,
                              between=make("flush"))
    assert set(med) == {"a", "b"} and all(v > 0 for v in med.values())
    # Warm-up (2 calls each, no flush), then every timed call right after a flush, the
    # order reversed in every other round.
    assert calls[:4] == ["a", "a", "b", "b"]
    assert calls[4:] == ["flush", "a", "flush", "b", "flush", "b", "flush", "a",
                         "flush", "a", "flush", "b"]

    def slow_flush():
        time.sleep(0.05)

    med = interleaved_medians({"a": make("a")}, repeats=3, between=slow_flush)
    assert med["a"] < 0.05  # the 50 ms in `between` is outside the timed window


def test_cache_flusher_reads_the_requested_size():
    flush = cache_flusher(mib=1)
    assert float(flush()) == (1 << 20) // 4


def test_flush_size_is_twice_the_last_level_cache(tmp_path, monkeypatch):
    for i, size in enumerate(["48K", "2048K", "491520K", "junk"]):
        (tmp_path / f"index{i}").mkdir()
        (tmp_path / f"index{i}" / "size").write_text(size + "\n")
    (tmp_path / "uevent").write_text("")
    assert _timing.last_level_cache_mib(str(tmp_path)) == 480.0
    assert _timing.last_level_cache_mib(str(tmp_path / "missing")) is None
    for llc, want in [(480.0, 960), (16.0, _timing.FLUSH_MIB), (4096.0, _timing.FLUSH_MAX_MIB),
                      (None, _timing.FLUSH_MIB)]:
        monkeypatch.setattr(_timing, "last_level_cache_mib", lambda llc=llc: llc)
        assert _timing.default_flush_mib() == want
    assert cache_flusher(mib=2).mib == 2


def test_linear_layer_is_the_product_plus_bias():
    rng = np.random.default_rng(0)
    x, w, b = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in [(3, 5), (5, 4), (4,)])
    y = linear_layer(lambda x, w: x @ w)(x, w, b)
    np.testing.assert_allclose(np.asarray(y), np.asarray(x) @ np.asarray(w) + np.asarray(b),
                               rtol=1e-5, atol=1e-5)


def test_layer_chain_feeds_each_layer_the_previous_output():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    ws = [rng.standard_normal((4, 4)).astype(np.float32) for _ in range(3)]
    b = rng.standard_normal(4).astype(np.float32)
    y = _timing.layer_chain(lambda x, w: x @ w)(jnp.asarray(x), tuple(map(jnp.asarray, ws)),
                                                jnp.asarray(b))
    want = x
    for w in ws:
        want = want @ w + b
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)


def test_matmul_times_unstructured_formats_in_rounds_of_their_own():
    from benchmarks.matmul import _rounds

    fns = {k: (lambda: None) for k in
           ("dense_xW", "dense_WtXt", "bcoo", "bcsr", "block32", "tw", "tvw")}
    tiled, unstructured = _rounds(fns)
    assert list(tiled) == ["dense_xW", "dense_WtXt", "block32", "tw", "tvw"]
    assert list(unstructured) == ["dense_xW", "dense_WtXt", "bcoo", "bcsr"]
    # Without BCOO / BCSR (--no-unstructured): one group.
    only = {k: f for k, f in fns.items() if k not in ("bcoo", "bcsr")}
    assert [list(g) for g in _rounds(only)] == [list(tiled)]
