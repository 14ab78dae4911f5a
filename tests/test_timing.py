"""benchmarks._timing: round-robin medians, the untimed ``between`` hook before every timed
call, and the cache flusher the matmul benchmarks pass to it."""

import time

import jax.numpy as jnp

from benchmarks._timing import cache_flusher, interleaved_medians


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
    # Warm-up (2 calls each, no flush), then every timed call right after a flush.
    assert calls[:4] == ["a", "a", "b", "b"]
    assert calls[4:] == ["flush", "a", "flush", "b"] * 3

    def slow_flush():
        time.sleep(0.05)

    med = interleaved_medians({"a": make("a")}, repeats=3, between=slow_flush)
    assert med["a"] < 0.05  # the 50 ms in `between` is outside the timed window


def test_cache_flusher_reads_the_requested_size():
    flush = cache_flusher(mib=1)
    assert float(flush()) == (1 << 20) // 4
