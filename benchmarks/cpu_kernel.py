"""The CPU TW kernel (XLA FFI) vs dense and vs the XLA TW path, same run.

``python -m benchmarks.cpu_kernel [--quick] [--repeats R] [--out results]``: K = N = 4096
float32 (``--dtype`` to change), TW 75% and 90% (magnitude masks of a random normal
weight, tile 128), M in {1, 16, 512}. Every point times, round-robin
(:func:`benchmarks._timing.interleaved_medians`, twice the L3 read between timed calls so
every call starts with its operands out of cache): the dense baselines ``x @ W`` and
``(W^T x^T)^T`` (the faster is "dense"), the XLA TW path of :mod:`tvwjax.matmul` and the
FFI kernel (:func:`tvwjax.cpu_kernel.tw_matmul_cpu`), each timed as the linear layer it
stands for, ``product(x, W) + b`` under ``jax.jit`` (:func:`benchmarks._timing.linear_layer`
says why). Writes
``<out>/bench_cpu_kernel.{json,md}`` with the issue-16 targets met or missed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import jax.numpy as jnp
import numpy as np

from benchmarks._timing import (
    cache_flusher,
    interleaved_medians,
    linear_layer,
    machine_info,
    md_table,
    record_end_load,
    write_results,
)
from tvwjax import cpu_kernel
from tvwjax.formats import compress
from tvwjax.patterns import TW

#: issue 16: speed-up over the best dense form, per (sparsity, M).
TARGETS = {(0.75, 1): 3.3, (0.75, 16): 3.3, (0.75, 512): 3.0,
           (0.9, 1): 7.0, (0.9, 16): 7.0, (0.9, 512): 7.0}
FULL = dict(shape=(4096, 4096), ms=[1, 16, 512], sparsities=[0.75, 0.9])
QUICK = dict(shape=(4096, 4096), ms=[1, 16, 512], sparsities=[0.75, 0.9])


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CLI options."""
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per point")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--ms", type=int, nargs="*", default=None, help="override the M values")


def _xla_tw():
    """Today's XLA TW path, whatever :mod:`tvwjax.matmul` dispatches to."""
    mm_mod = importlib.import_module("tvwjax.matmul")
    xla = getattr(mm_mod, "_xla_matmul", None)
    if xla is not None:
        return xla
    return mm_mod.matmul  # pragma: no cover - the private name changed


def run(args: argparse.Namespace) -> int:
    """Run the sweep; write ``<out>/bench_cpu_kernel.{json,md}``."""
    if not cpu_kernel.available():
        print(f"CPU kernel unavailable: {cpu_kernel.reason()}", file=sys.stderr)
        return 1
    cfg = QUICK if args.quick else FULL
    repeats = args.repeats or (5 if args.quick else 9)
    ms = args.ms or cfg["ms"]
    dtype = jnp.dtype(args.dtype)
    k, n = cfg["shape"]
    info = machine_info()
    info["kernel"] = cpu_kernel.report()
    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32)
    wd = jnp.asarray(w, dtype)
    xw = linear_layer(lambda x, w: x @ w)
    wtxt = linear_layer(lambda x, w: (w.T @ x.T).T)
    xla = linear_layer(_xla_tw())
    ffi = linear_layer(cpu_kernel.tw_matmul_cpu)
    b = jnp.zeros((n,), dtype)
    # The floor: the same layer with 8 output columns, the fixed cost of one call here.
    w_floor, b_floor = jnp.zeros((k, 8), dtype), jnp.zeros((8,), dtype)
    flush = cache_flusher()
    info["flush_mib"] = flush.mib
    records = []
    t0 = time.perf_counter()
    for s in cfg["sparsities"]:
        cw = compress(wd, np.asarray(TW().mask(jnp.abs(jnp.asarray(w)), s)), TW())
        for m in ms:
            x = jnp.asarray(np.random.default_rng(1).standard_normal((m, k)), dtype)
            err = float(jnp.max(jnp.abs(ffi(x, cw, b).astype(jnp.float32)
                                        - xla(x, cw, b).astype(jnp.float32))))
            fns = {"dense_xW": lambda x=x: xw(x, wd, b),
                   "dense_WtXt": lambda x=x: wtxt(x, wd, b),
                   "tw_xla": lambda x=x, cw=cw: xla(x, cw, b),
                   "tw_ffi": lambda x=x, cw=cw: ffi(x, cw, b),
                   "floor": lambda x=x: xw(x, w_floor, b_floor)}
            med = interleaved_medians(fns, repeats=repeats, budget_s=40.0, between=flush)
            dense = min(med["dense_xW"], med["dense_WtXt"])
            target = TARGETS.get((s, m))
            # M = 1 streams the weight: the ratio TW would reach reading its stored bytes as
            # fast as dense reads its own, on top of the same fixed cost per call.
            frac = cw.storage_bytes() / (k * n * dtype.itemsize)
            bound = (dense / (med["floor"] + (dense - med["floor"]) * frac)
                     if m == 1 and dense > med["floor"] else None)
            rec = dict(K=k, N=n, M=m, sparsity=s, dtype=str(dtype),
                       dense_ms=round(dense * 1e3, 4),
                       tw_xla_ms=round(med["tw_xla"] * 1e3, 4),
                       tw_ffi_ms=round(med["tw_ffi"] * 1e3, 4),
                       ffi_vs_dense=round(dense / med["tw_ffi"], 3),
                       xla_vs_dense=round(dense / med["tw_xla"], 3),
                       ffi_vs_xla=round(med["tw_xla"] / med["tw_ffi"], 3),
                       target_vs_dense=target,
                       met=None if target is None else bool(dense / med["tw_ffi"] >= target),
                       floor_ms=round(med["floor"] * 1e3, 4),
                       stored_fraction=round(frac, 4),
                       streaming_bound=None if bound is None else round(bound, 3),
                       max_abs_diff_vs_xla=err)
            records.append(rec)
            print(f"TW {s:.0%} M={m}: dense {dense * 1e3:.3f} ms, xla {med['tw_xla'] * 1e3:.3f}"
                  f" ms, ffi {med['tw_ffi'] * 1e3:.3f} ms -> {rec['ffi_vs_dense']:.2f}x dense "
                  f"(target {target}), {rec['ffi_vs_xla']:.2f}x xla", flush=True)
    payload = {"machine": info, "repeats": repeats,
               "elapsed_s": round(time.perf_counter() - t0, 1), "records": records}
    record_end_load(payload)
    write_results(args.out, "bench_cpu_kernel", payload, _markdown(records, payload))
    return 0


def _markdown(records: list[dict], payload: dict) -> str:
    mach = payload["machine"]
    rows = [[f"{r['K']}x{r['N']}", f"{r['sparsity']:.0%}", r["M"], f"{r['dense_ms']:.3f}",
             f"{r['tw_xla_ms']:.3f}", f"{r['tw_ffi_ms']:.3f}", f"{r['xla_vs_dense']:.2f}x",
             f"{r['ffi_vs_dense']:.2f}x", f"{r['ffi_vs_xla']:.2f}x", f"{r['floor_ms']:.3f}",
             "" if r.get("streaming_bound") is None else f"{r['streaming_bound']:.2f}x",
             "" if r["target_vs_dense"] is None else
             f">= {r['target_vs_dense']}x: {'met' if r['met'] else 'MISSED'}"]
            for r in records]
    head = (f"# CPU TW kernel (XLA FFI, {mach['kernel']['isa']}) vs dense and the XLA TW path"
            f" ({records[0]['dtype'] if records else ''})\n\n"
            f"Medians of {payload['repeats']} interleaved runs, each timed as a linear layer "
            f"(`product(x, W) + b` under `jax.jit`), each after a "
            f"{mach.get('flush_mib', '?')} MiB read (twice the L3: operands out of cache); "
            f"dense = the faster of `x @ W` and `(W^T x^T)^T`. jax {mach['jax']}, "
            f"{mach['cpus']} CPUs, load average {mach['loadavg_start']} at start, "
            f"{mach.get('loadavg_end')} at end, {payload['elapsed_s']} s.\n\n")
    return head + md_table(["shape", "sparsity", "M", "dense ms", "TW XLA ms", "TW FFI ms",
                            "XLA vs dense", "FFI vs dense", "FFI vs XLA", "floor ms",
                            "M=1 streaming bound", "target"], rows) + _NOTE


_NOTE = """
*floor ms*: the same layer with 8 output columns, timed in the same rounds: the fixed cost of
one call after the cache flush (dispatch, waking XLA's threads, the bias). *M=1 streaming
bound*: the speed-up TW would reach if it read its stored bytes (values and tables) as fast as
dense reads its own, on top of the same floor: `dense / (floor + (dense - floor) * stored /
dense bytes)`. At M = 1 both are memory-bound, so this is the ceiling of the ratio on this
machine.
"""


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.cpu_kernel``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_kernel",
                                description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
