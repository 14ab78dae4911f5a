"""GPU benchmark: dense ``jnp.dot`` (cuBLAS) vs the TW and TVW Pallas kernels.

Run on a machine with an NVIDIA GPU (Ampere or Hopper for the Triton backend), from the
repository root (the kernels run from the source tree)::

    python -m benchmarks.gpu_kernels [--quick] [--out results]

It sweeps ``M`` (rows of ``x``) and ``(K, N)`` weight shapes at 50% and 75% sparsity and writes
``<out>/bench_gpu_kernels.{json,md}``:

* JSON: ``{"machine", "device", "dtype", "quick", "records"}``, ``records`` a list of rows
  ``{op, M, K, N, sparsity, dtype, median_s, ratio_vs_dense}``; ``op`` is ``dense``, ``tw``
  or ``tvw``; ``median_s`` the median wall time of one call over ``--repeats`` timed calls
  (after warm-up, ``block_until_ready``); ``ratio_vs_dense = median_s / median_s(dense)`` at
  the same shape (below 1 = faster);
* Markdown: the same rows as a table.

The dense baseline is the faster of ``x @ W`` and ``(W.T @ x.T).T``. TW tiles keep
``(1 - s) * K`` rows each (chosen at random); TVW at sparsity ``s`` keeps ``2 (1 - s) K``
rows per tile and then 2:4 inside them (50% TVW = all rows + 2:4; 75% = half the rows + 2:4).
Tile width ``G`` = 128 by default. Weights are random: timings do not depend on values.

Exits with status 2 and a message when no GPU is present. Not run in CI. As a module of
``benchmarks`` it provides ``add_arguments(parser)`` and ``run(args)``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import machine_info, write_results
from pallas_kernels import tvw_matmul, tw_matmul
from pallas_kernels.nm_codec import nm_compress, pack_index
from tvwjax._select import nm_select

DEFAULT_M = (1, 16, 128, 1024, 4096)
DEFAULT_KN = ((768, 768), (768, 3072), (3072, 768), (4096, 4096))
DEFAULT_SPARSITY = (0.5, 0.75)
QUICK_M = (1, 128, 1024)
QUICK_KN = ((768, 3072), (4096, 4096))


def has_gpu() -> bool:
    """Whether JAX sees a CUDA/ROCm GPU."""
    try:
        return len(jax.devices("gpu")) > 0
    except RuntimeError:
        return False


def median_time(
    fn: Callable[..., jax.Array], *args, repeats: int, warmup: int = 3, **kwargs
) -> float:
    """Median seconds of ``fn(*args, **kwargs)`` (blocked until ready) over ``repeats`` calls."""
    for _ in range(warmup):
        fn(*args, **kwargs).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args, **kwargs).block_until_ready()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _tile_rows(rng: np.random.Generator, k: int, kt: int, t: int, kp: int) -> np.ndarray:
    rows = np.zeros((t, kp), np.int32)
    for i in range(t):
        rows[i, :kt] = np.sort(rng.choice(k, kt, replace=False))
    return rows


def make_tiles(
    rng: np.random.Generator, k: int, n: int, sparsity: float, g: int, dtype, *, tvw: bool
) -> dict[str, jax.Array]:
    """Random tile data of the kernels' layout contract at the given total sparsity."""
    t = -(-n // g)
    density_rows = min(1.0, 2 * (1 - sparsity)) if tvw else 1 - sparsity
    mult = 8 if tvw else 1
    kt = max(mult, int(round(density_rows * k / mult)) * mult)
    kp = kt
    rows = _tile_rows(rng, k, kt, t, kp)
    cols = np.full((t, g), n, np.int32)
    for i in range(t):
        c = np.arange(i * g, min(n, (i + 1) * g))
        cols[i, : len(c)] = c
    blocks = rng.standard_normal((t, kp, g)).astype(np.float32)
    blocks *= (cols < n)[:, None, :]
    out = {"rows": jnp.asarray(rows), "cols": jnp.asarray(cols)}
    if tvw:
        vals, metas = [], []
        for b in blocks:
            b = jnp.asarray(b)
            v, idx = nm_compress(b, nm_select(jnp.abs(b)))
            vals.append(v)
            metas.append(pack_index(idx))
        out["values"] = jnp.stack(vals).astype(dtype)
        out["meta"] = jnp.stack(metas)
    else:
        out["values"] = jnp.asarray(blocks, dtype)
    return out


def run_sweep(
    ms: Sequence[int],
    kns: Sequence[tuple[int, int]],
    sparsities: Sequence[float],
    dtype,
    *,
    tile: int,
    repeats: int,
    seed: int = 0,
) -> list[dict]:
    """Time dense, TW and TVW at every (M, K, N, sparsity); returns the JSON rows."""
    rng = np.random.default_rng(seed)
    dname = jnp.dtype(dtype).name
    rows_out: list[dict] = []
    dense_a = jax.jit(lambda x, w: x @ w)
    dense_b = jax.jit(lambda x, w: (w.T @ x.T).T)
    for k, n in kns:
        w = jnp.asarray(rng.standard_normal((k, n)), dtype)
        tiles = {
            (s, tvw): make_tiles(rng, k, n, s, tile, dtype, tvw=tvw)
            for s in sparsities
            for tvw in (False, True)
        }
        for m in ms:
            x = jnp.asarray(rng.standard_normal((m, k)), dtype)
            t_dense = min(
                median_time(dense_a, x, w, repeats=repeats),
                median_time(dense_b, x, w, repeats=repeats),
            )
            for s in sparsities:
                rows_out.append(dict(op="dense", M=m, K=k, N=n, sparsity=s, dtype=dname,
                                     median_s=t_dense, ratio_vs_dense=1.0))
                tw = tiles[(s, False)]
                t_tw = median_time(tw_matmul, x, tw["values"], tw["rows"], tw["cols"],
                                   n_out=n, repeats=repeats)
                tv = tiles[(s, True)]
                t_tvw = median_time(tvw_matmul, x, tv["values"], tv["meta"], tv["rows"],
                                    tv["cols"], n_out=n, repeats=repeats)
                for op, t_op in (("tw", t_tw), ("tvw", t_tvw)):
                    rows_out.append(dict(op=op, M=m, K=k, N=n, sparsity=s, dtype=dname,
                                         median_s=t_op, ratio_vs_dense=t_op / t_dense))
                print(f"M={m} K={k} N={n} s={s}: dense {t_dense * 1e6:.1f} us, "
                      f"tw {t_tw * 1e6:.1f} us, tvw {t_tvw * 1e6:.1f} us", flush=True)
    return rows_out


def to_markdown(rows: Sequence[dict], device: str) -> str:
    """The rows as a Markdown table (times in microseconds)."""
    lines = [
        f"GPU benchmark on {device}; ratio_vs_dense = median time / dense median time "
        "(below 1 = faster than dense).",
        "",
        "| op | M | K | N | sparsity | dtype | median (us) | ratio_vs_dense |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['M']} | {r['K']} | {r['N']} | {r['sparsity']:.2f} | "
            f"{r['dtype']} | {r['median_s'] * 1e6:.1f} | {r['ratio_vs_dense']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _kn_list(text: str) -> list[tuple[int, int]]:
    out = []
    for pair in text.split(","):
        k, n = pair.lower().split("x")
        out.append((int(k), int(n)))
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CLI options of ``gpu_kernels`` (besides ``--out`` and ``--quick``)."""
    p.add_argument("--m", type=_int_list, default=None,
                   help=f"rows of x, e.g. 1,16,128 (default {','.join(map(str, DEFAULT_M))})")
    p.add_argument("--kn", type=_kn_list, default=None,
                   help="weight shapes, e.g. 768x768,768x3072")
    p.add_argument("--sparsity", type=float, nargs="+", default=list(DEFAULT_SPARSITY))
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--tile", type=int, default=128, help="tile width G")
    p.add_argument("--repeats", type=int, default=50)


def run(args: argparse.Namespace) -> int:
    """Run the sweep; write ``<out>/bench_gpu_kernels.{json,md}``. Returns the exit status
    (2 when no GPU is present)."""
    if not has_gpu():
        print("gpu_kernels: no GPU visible to JAX (jax.devices('gpu') is empty); this benchmark "
              "times the Triton-backend Pallas kernels and only runs on an NVIDIA GPU. "
              "Use the CPU benchmark (python -m benchmarks matmul) instead.", file=sys.stderr)
        return 2
    quick = bool(getattr(args, "quick", False))
    ms = args.m or list(QUICK_M if quick else DEFAULT_M)
    kns = args.kn or list(QUICK_KN if quick else DEFAULT_KN)
    device = jax.devices("gpu")[0].device_kind
    rows = run_sweep(ms, kns, args.sparsity, jnp.dtype(args.dtype), tile=args.tile,
                     repeats=args.repeats)
    payload = {"machine": machine_info(), "device": device, "dtype": args.dtype,
               "quick": quick, "records": rows}
    write_results(args.out, "bench_gpu_kernels", payload, to_markdown(rows, device))
    print(f"wrote {args.out}/bench_gpu_kernels.json and .md")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.gpu_kernels``: parse the command line and :func:`run`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--quick", action="store_true", help="a small, fast subset")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
