"""Sparse matmul: dense vs BCOO/BCSR (unstructured), block 32x32, TW and TVW, same run.

For every weight shape ``(K, N)``, batch ``M`` and sparsity, the methods are timed
round-robin (``interleaved_medians``, twice the L3 read before every timed call so each
starts with its operands out of cache) in two groups, each with the dense forms: the tile
formats, then BCOO / BCSR (whose slow, allocating calls would perturb the others), each as
the linear layer it stands for
(``product(x, W) + b`` under ``jax.jit``, see :func:`benchmarks._timing.linear_layer`),
and reported as speed-ups over the dense baseline: the faster of ``x @ W`` and
``(W^T x^T)^T`` (``W^T`` stored, as for BCOO / BCSR). Weights are random normal (magnitude masks).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse as jsparse

from benchmarks._timing import (
    cache_flusher,
    interleaved_medians,
    linear_layer,
    machine_info,
    md_table,
    record_end_load,
    write_results,
)
from tvwjax.formats import compress
from tvwjax.matmul import matmul
from tvwjax.patterns import BW, EW, TVW, TW

FULL = dict(shapes=[(4096, 4096), (768, 768), (768, 3072), (3072, 768)], ms=[1, 16, 128, 512],
            sparsities=[0.5, 0.75, 0.9])
QUICK = dict(shapes=[(4096, 4096)], ms=[1, 16, 512], sparsities=[0.75, 0.9])
METHODS = ["dense_xW", "dense_WtXt", "bcoo", "bcsr", "block32", "tw", "tvw", "tvw_cpu"]
UNSTRUCTURED = ("bcoo", "bcsr")  # timed in rounds of their own (see _rounds)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CLI options of ``matmul``."""
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per point")
    p.add_argument("--no-unstructured", action="store_true", help="skip BCOO/BCSR")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])


def _weights(k: int, n: int, s: float, dtype, unstructured: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    score = jnp.abs(jnp.asarray(w))
    wd = jnp.asarray(w, dtype)
    # The second dense form stores W transposed, like BCOO / BCSR below (a `w.T` inside the
    # program would copy the whole weight every call).
    out: dict[str, Any] = {"dense": wd, "dense_t": jnp.asarray(wd.T)}
    if unstructured:
        m = np.asarray(EW().mask(score, s))
        # Stored transposed: sparse @ dense computes y^T = W^T x^T (their fast orientation).
        wst = jnp.asarray(np.where(m, w, 0).T, dtype)
        out["bcoo"] = jsparse.BCOO.fromdense(wst)
        if dtype == jnp.float32:  # BCSR's CPU kernel: 2-D, f32/f64 only
            out["bcsr"] = jsparse.BCSR.fromdense(wst)
    out["block32"] = compress(wd, np.asarray(BW(32, 32).mask(score, s)), BW(32, 32))
    out["tw"] = compress(wd, np.asarray(TW().mask(score, s)), TW())
    if s >= 0.5:
        out["tvw"] = compress(wd, np.asarray(TVW().mask(score, s)), TVW())
        # How TVW runs on a CPU: its TW part, decoded once at load (no 2:4 hardware).
        out["tvw_cpu"] = out["tvw"].to_tile_wise()
    return out


def _fns(ws: dict[str, Any], x: jax.Array) -> dict[str, Any]:
    xw = linear_layer(lambda x, w: x @ w)
    wt_x = linear_layer(lambda x, wt: (wt @ x.T).T)  # W stored transposed: dense and sparse
    mm = linear_layer(matmul)
    b = jnp.zeros((ws["dense"].shape[1],), x.dtype)
    f = {"dense_xW": lambda: xw(x, ws["dense"], b),
         "dense_WtXt": lambda: wt_x(x, ws["dense_t"], b)}
    for k in UNSTRUCTURED:
        if k in ws:
            f[k] = (lambda wt: (lambda: wt_x(x, wt, b)))(ws[k])
    for k in ("block32", "tw", "tvw", "tvw_cpu"):
        if k in ws:
            f[k] = (lambda cw: (lambda: mm(x, cw, b)))(ws[k])
    return f


def _rounds(fns: dict[str, Any]) -> list[dict[str, Any]]:
    """The timed groups: the tile formats with dense, then BCOO / BCSR with dense again.

    Unstructured calls take up to seconds and allocate gigabytes; timed in the same rounds
    they slowed whatever ran after them (TW at M = 512 measured 1.7x dense there and 3.4x
    without them), so they get rounds of their own, each group against the dense baseline
    measured in its own rounds.
    """
    dense = {k: f for k, f in fns.items() if k.startswith("dense")}
    tiled = {k: f for k, f in fns.items() if k not in dense and k not in UNSTRUCTURED}
    groups = [{**dense, **tiled}]
    unstructured = {k: f for k, f in fns.items() if k in UNSTRUCTURED}
    if unstructured:
        groups.append({**dense, **unstructured})
    return groups


def run(args: argparse.Namespace) -> int:
    """Run the sweep; write ``results/bench_matmul.{json,md}``."""
    cfg = QUICK if args.quick else FULL
    dtype = jnp.dtype(args.dtype)
    info = machine_info()
    flush = cache_flusher()
    info["flush_mib"] = flush.mib
    records = []
    t_start = time.perf_counter()
    for k, n in cfg["shapes"]:
        for s in cfg["sparsities"]:
            ws = _weights(k, n, s, dtype, not args.no_unstructured)
            storage = {name: (w.storage_bytes() if hasattr(w, "storage_bytes") else
                              int(sum(np.asarray(a).nbytes for a in jax.tree.leaves(w))))
                       for name, w in ws.items()}
            for m in cfg["ms"]:
                x = jnp.asarray(np.random.default_rng(1).standard_normal((m, k)), dtype)
                fns = _fns(ws, x)
                ratios = {}
                for group in _rounds(fns):
                    med = interleaved_medians(group, repeats=args.repeats, budget_s=30.0,
                                              between=flush)
                    dense = min(med["dense_xW"], med["dense_WtXt"])
                    for name, t in med.items():
                        if name in ratios:  # dense again, in the unstructured rounds
                            continue
                        key = name if not name.startswith("dense") else "dense"
                        ratios[name] = dense / t
                        records.append(dict(K=k, N=n, M=m, sparsity=s, method=name,
                                            median_ms=round(t * 1e3, 4),
                                            speedup_vs_dense=round(dense / t, 3),
                                            storage_bytes=storage.get(key),
                                            dense_bytes=k * n * dtype.itemsize))
                print(f"K={k} N={n} s={s} M={m}: " + ", ".join(
                    f"{nm} {r:.2f}x" for nm, r in ratios.items()), flush=True)
    payload = {"machine": info, "dtype": args.dtype, "quick": bool(args.quick),
               "elapsed_s": round(time.perf_counter() - t_start, 1), "records": records}
    record_end_load(payload)
    write_results(args.out, "bench_matmul", payload, _markdown(records, payload))
    return 0


def _markdown(records: list[dict], payload: dict) -> str:
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    keys = sorted({(r["K"], r["N"], r["sparsity"], r["M"]) for r in records},
                  key=lambda t: (-t[0] * t[1], t[0], t[2], t[3]))
    by = {(r["K"], r["N"], r["sparsity"], r["M"], r["method"]): r for r in records}
    rows = []
    for key in keys:
        dense_ms = min(by[key + (m,)]["median_ms"] for m in ("dense_xW", "dense_WtXt"))
        row = [f"{key[0]}x{key[1]}", f"{key[2]:.0%}", key[3], f"{dense_ms:.2f}"]
        for m in methods:
            r = by.get(key + (m,))
            row.append("" if r is None else f"{r['speedup_vs_dense']:.2f}x")
        rows.append(row)
    mach = payload["machine"]
    head = (f"# Sparse matmul on {mach['backend']} ({payload['dtype']})\n\n"
            f"Speed-up over the dense baseline (the faster of `x @ W` and `(W^T x^T)^T`, "
            f"`W^T` stored), "
            f"medians of interleaved runs (the tile formats and BCOO / BCSR in separate "
            f"rounds, each against dense timed in the same rounds), each timed as a linear "
            f"layer (`product(x, W) + b` under `jax.jit`) after a "
            f"{mach.get('flush_mib', '?')} MiB read (twice the L3). "
            f"jax {mach['jax']}, "
            f"{mach['cpus']} CPUs, load "
            f"average {mach['loadavg_start']} at start, {mach.get('loadavg_end')} at end, "
            f"{payload['elapsed_s']} s.\n\n")
    st = sorted({(r["K"], r["N"], r["sparsity"], r["method"], r["storage_bytes"],
                  r["dense_bytes"]) for r in records if r["storage_bytes"]
                 and r["method"] in ("tw", "tvw", "block32", "bcoo", "bcsr")})
    srows = [[f"{k}x{n}", f"{s:.0%}", m, f"{b / d:.3f}"] for k, n, s, m, b, d in st]
    return (head + md_table(["shape", "sparsity", "M", "dense ms"] + methods, rows)
            + "\n## Storage (fraction of dense bytes)\n\n"
            + md_table(["shape", "sparsity", "format", "bytes / dense"], srows))
