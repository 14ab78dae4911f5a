"""The GPU check: correctness of every Pallas GPU kernel, then dense vs TW vs TVW speed.

Run once on a machine with an NVIDIA GPU, from a source checkout (no install needed)::

    PYTHONPATH=. python -m benchmarks.gpu_kernels --out results

1. **Correctness**: every kernel this GPU can run (:func:`available_kernels`: the Triton TW and
   TVW kernels everywhere, the Mosaic GPU ``wgmma`` TW kernel on Hopper, the sparse
   ``tcgen05`` TVW kernel on Blackwell) against its plain-jnp reference at awkward shapes
   (``M`` of 1 and 70 and 300, kept-row counts that are not multiples of the blocks, an empty
   tile, a ragged last tile) in bfloat16, float16 and (Triton) float32. Then the library
   path (:func:`library_path`): ``tvwjax.masks`` -> ``tvwjax.compress`` -> ``jit(tvwjax.matmul)``
   and its gradient, TW and TVW, bfloat16 and float32, with the kernel that ran.
2. **Speed** (bfloat16): dense ``x @ W`` (XLA/cuBLAS, the faster of ``x @ W`` and
   ``(W^T x^T)^T``), then every available kernel at 50/75/90% sparsity, for ``M`` in
   {16, 256, 4096} and ``(K, N)`` = 4096 x 4096 and the BERT-base shapes 768 x 768,
   768 x 3072, 3072 x 768. For the Mosaic GPU kernels the activation pre-gather
   (``pregather_tw`` / ``pregather_tvw``) and the tcgen05 operand conversion
   (``tcgen05_convert``) are also timed alone: both are inside the kernels' own timings. On
   Hopper, ``tvw_decoded_hopper`` times the alternative TVW path (2:4 decoded by XLA, then
   the ``wgmma`` TW kernel) beside the Triton TVW kernel ``tvw_matmul``. Medians of
   ``--repeats`` samples after warm-up, each 20 calls in one compiled loop
   (:func:`median_time`: GPU time per call, no host dispatch); the sweep stops when
   ``--budget-s`` is spent
   (the rows not run are listed), so that the whole check stays under 4 minutes on an
   H100/H200.

3. **Hopper tuning** (not with ``--quick``): the ``wgmma`` TW kernel at each
   ``(block_m, block_k, stages)`` of :data:`HOPPER_CONFIGS` (:func:`tune_hopper`).

Writes ``<out>/gpu_check.json`` (``device``, ``compute_capability``, ``jax``, ``check`` rows
``{kernel, dtype, M, K, N, G, Kp, max_abs_err, tolerance, ok}``, speed ``records``
``{op, M, K, N, sparsity, dtype, median_s, ratio_vs_dense}``, ``not_run``) and
``<out>/gpu_check.md``. Exit status: 2 without a GPU (nothing written), 1 when a kernel
failed its check, else 0. TW tiles keep ``(1 - s) K`` rows each (random); TVW at ``s``
keeps ``2 (1 - s) K`` rows per tile, then 2:4 inside them. Tile width 128.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks._timing import machine_info, write_results
from pallas_kernels import (
    tvw_compact_blocks,
    tvw_matmul,
    tvw_matmul_blackwell,
    tvw_matmul_reference,
    tw_matmul,
    tw_matmul_hopper,
    tw_matmul_reference,
)
from pallas_kernels.mgpu_common import gather_tile_activations
from pallas_kernels.nm_codec import nm_compress, pack_index
from pallas_kernels.tcgen05_metadata import tcgen05_operands
from tvwjax._select import nm_select
from tvwjax.matmul import gpu_compute_capability

SPEED_M = (16, 256, 4096)
SPEED_KN = ((4096, 4096), (768, 768), (768, 3072), (3072, 768))
SPEED_SPARSITY = (0.5, 0.75, 0.9)
QUICK_M = (16, 4096)
QUICK_KN = ((4096, 4096),)
TILE = 128
#: ``(M, K, N, G, Kp)`` of the correctness check: M of 1 / 70 / 300 (not multiples of the
#: blocks), ragged last tiles (N % G != 0), Kp and the counts not multiples of the blocks.
CHECK_CASES = ((1, 200, 300, 128, 136), (70, 256, 250, 128, 200), (300, 512, 200, 64, 264))
#: Operand dtypes of the correctness check (float32: the Triton kernels only).
CHECK_DTYPES = ("bfloat16", "float16", "float32")
#: Relative tolerance (of max |reference|) per dtype (both sides accumulate in float32).
CHECK_RTOL = {"float32": 1e-4, "bfloat16": 2e-2, "float16": 4e-3}

#: kernel name -> ("tw" | "tvw", runner(tiles, x, interpret) -> y).
KERNELS: dict[str, tuple[str, Callable[..., jax.Array]]] = {
    "tw_matmul": ("tw", lambda d, x, interpret: tw_matmul(
        x, d["values"], d["rows"], d["cols"], n_out=d["n"], counts=d["counts"],
        interpret=interpret)),
    "tw_matmul_hopper": ("tw", lambda d, x, interpret: tw_matmul_hopper(
        x, d["values"], d["rows"], d["cols"], n_out=d["n"], counts=d["counts"],
        interpret=interpret)),
    "tvw_matmul": ("tvw", lambda d, x, interpret: tvw_matmul(
        x, d["values"], d["meta"], d["rows"], d["cols"], n_out=d["n"], counts=d["counts"],
        interpret=interpret)),
    "tvw_matmul_blackwell": ("tvw", lambda d, x, interpret: tvw_matmul_blackwell(
        x, d["values"], d["meta"], d["rows"], d["cols"], n_out=d["n"], counts=d["counts"])),
}
#: kernels that only take 16-bit operands
MMA_ONLY = ("tw_matmul_hopper", "tvw_matmul_blackwell")


def has_gpu() -> bool:
    """Whether JAX sees a CUDA/ROCm GPU."""
    try:
        return len(jax.devices("gpu")) > 0
    except RuntimeError:
        return False


def available_kernels(capability: tuple[int, int] | None) -> list[str]:
    """The kernels a GPU of this compute capability runs: the Triton kernels always, the
    ``wgmma`` TW kernel on Hopper (9.x), the sparse ``tcgen05`` TVW kernel from 10.0."""
    major = capability[0] if capability else 0
    names = ["tw_matmul", "tvw_matmul"]
    if major == 9:
        names.append("tw_matmul_hopper")
    if major >= 10:
        names.append("tvw_matmul_blackwell")
    return names


def median_time(fn: Callable[..., jax.Array], x: jax.Array, *rest, repeats: int,
                loop: int = 20, **kwargs) -> float:
    """Median GPU seconds per call of ``fn(x, *rest, **kwargs)``.

    The call runs ``loop`` times inside one compiled ``fori_loop`` (so neither the host's
    dispatch nor its round trip is counted per call; on the GPU machine a jitted call costs
    about 35 us of host time, more than many of these kernels): iteration ``i`` reads
    ``x + 0 * acc`` (``acc`` the loop carry, so XLA cannot hoist the call out of the loop) and
    adds the sum of the result(s) to ``acc``. That add and that sum are timed with every op,
    the dense baseline included. ``repeats`` samples after one untimed (compiling) call.
    Array leaves of ``rest`` and ``kwargs`` are arguments of the compiled loop; other leaves
    (ints, flags) are static.
    """
    leaves, treedef = jax.tree.flatten((rest, kwargs))
    dynamic = [i for i, leaf in enumerate(leaves) if isinstance(leaf, jax.Array)]

    @jax.jit
    def looped(x, arrays):
        full = list(leaves)
        for i, a in zip(dynamic, arrays, strict=True):
            full[i] = a
        args, kw = jax.tree.unflatten(treedef, full)

        def step(_, acc):
            y = fn(x + (acc * 0).astype(x.dtype), *args, **kw)
            return acc + sum(jnp.sum(leaf.astype(jnp.float32)) for leaf in jax.tree.leaves(y))

        return lax.fori_loop(0, loop, step, jnp.zeros((), jnp.float32))

    arrays = [leaves[i] for i in dynamic]
    jax.block_until_ready(looped(x, arrays))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(looped(x, arrays))
        times.append((time.perf_counter() - t0) / loop)
    return statistics.median(times)


def make_tiles(rng: np.random.Generator, k: int, n: int, sparsity: float, g: int, dtype, *,
               tvw: bool, kp: int | None = None, ragged_counts: bool = False,
               empty_tile: int | None = None) -> dict:
    """Random tile data of the kernels' layout contract.

    Without ``kp``: every tile keeps the rows of the given total sparsity (TVW: twice as many
    rows, then 2:4 inside them). With ``kp`` and ``ragged_counts``: tile ``i`` keeps a random
    count in ``[1, kp]`` (tile 0 all ``kp``), tile ``empty_tile`` none. The last tile is
    ragged when ``g`` does not divide ``n``. Returns ``values`` (and ``meta``), ``rows``,
    ``cols``, ``counts``, ``n``.
    """
    t = -(-n // g)
    if kp is None:
        density_rows = min(1.0, 2 * (1 - sparsity)) if tvw else 1 - sparsity
        mult = 8 if tvw else 1
        kp = max(mult, int(round(density_rows * k / mult)) * mult)
    counts = np.full(t, kp, np.int32)
    if ragged_counts:
        counts[1:] = rng.integers(1, kp + 1, t - 1)
    if empty_tile is not None:
        counts[empty_tile] = 0
    rows = np.zeros((t, kp), np.int32)
    cols = np.full((t, g), n, np.int32)
    blocks = np.zeros((t, kp, g), np.float32)
    for i in range(t):
        rows[i, : counts[i]] = np.sort(rng.choice(k, counts[i], replace=False))
        c = np.arange(i * g, min(n, (i + 1) * g))
        cols[i, : len(c)] = c
        blocks[i, : counts[i], : len(c)] = rng.standard_normal((counts[i], len(c)))
    out = {"rows": jnp.asarray(rows), "cols": jnp.asarray(cols),
           "counts": jnp.asarray(counts), "n": n}
    if tvw:
        comp = [nm_compress(jnp.asarray(b), nm_select(jnp.abs(jnp.asarray(b))) & (b != 0))
                for b in blocks]
        out["values"] = jnp.stack([v for v, _ in comp]).astype(dtype)
        out["meta"] = jnp.stack([pack_index(ix) for _, ix in comp])
    else:
        out["values"] = jnp.asarray(blocks, dtype)
    return out


def reference(fmt: str, d: dict, x: jax.Array) -> jax.Array:
    """The plain-jnp reference of a kernel of format ``fmt`` (shared with the CPU path)."""
    if fmt == "tvw":
        return tvw_matmul_reference(x, d["values"], d["meta"], d["rows"], d["cols"],
                                    n_out=d["n"], counts=d["counts"])
    return tw_matmul_reference(x, d["values"], d["rows"], d["cols"], n_out=d["n"],
                               counts=d["counts"])


def check(kernels: Sequence[str], *, cases: Sequence[tuple[int, ...]] = CHECK_CASES,
          dtypes: Sequence[str] = CHECK_DTYPES, interpret: bool = False,
          runners: dict | None = None, seed: int = 0) -> list[dict]:
    """Run every kernel against its reference on every case and dtype.

    Args:
      kernels: names of :data:`KERNELS`.
      cases: ``(M, K, N, G, Kp)`` shapes (ragged counts, tile 1 empty).
      dtypes: operand dtypes (float32 is skipped for the 16-bit-only Mosaic GPU kernels).
      interpret: run the kernels in interpret mode (CPU; not the Blackwell kernel).
      runners: overrides of :data:`KERNELS` (tests).
      seed: seed of the random data.

    Returns:
      One row per (kernel, case, dtype): ``max_abs_err`` of the kernel vs the reference,
      ``tolerance`` (``CHECK_RTOL`` x max |reference|) and ``ok``.
    """
    table = {**KERNELS, **(runners or {})}
    rng = np.random.default_rng(seed)
    rows = []
    for m, k, n, g, kp in cases:
        for dname in dtypes:
            dtype = jnp.dtype(dname)
            x = jnp.asarray(rng.standard_normal((m, k)), dtype)
            data = {fmt: make_tiles(rng, k, n, 0.5, g, dtype, tvw=fmt == "tvw", kp=kp,
                                    ragged_counts=True, empty_tile=1) for fmt in ("tw", "tvw")}
            for name in kernels:
                if name in MMA_ONLY and dname == "float32":
                    continue
                fmt, run_kernel = table[name]
                ref = np.asarray(reference(fmt, data[fmt], x), np.float32)
                tol = CHECK_RTOL[dname] * max(1.0, float(np.abs(ref).max()))
                row = dict(kernel=name, dtype=dname, M=m, K=k, N=n, G=g, Kp=kp)
                try:
                    # float32 at full precision (the default lets GPU dots use TF32, as
                    # XLA's own float32 dots do; the library path checks that form)
                    with jax.default_matmul_precision(
                            "float32" if dname == "float32" else None):
                        out = np.asarray(run_kernel(data[fmt], x, interpret), np.float32)
                except Exception as e:  # noqa: BLE001 - a kernel that fails to build or run
                    rows.append(dict(row, max_abs_err=float("inf"), tolerance=tol, ok=False,
                                     error=_describe(e)))
                    print(f"check: {name} {dname} M={m} K={k} N={n} failed: {_describe(e)}",
                          file=sys.stderr, flush=True)
                    continue
                err = float(np.abs(out - ref).max()) if out.shape == ref.shape else float("inf")
                rows.append(dict(row, max_abs_err=err, tolerance=tol, ok=bool(err <= tol)))
    return rows


def _describe(e: BaseException, limit: int = 600) -> str:
    """``Type: message`` of an exception, the message cut to ``limit`` characters (a
    lowering error's message can hold a whole MLIR module)."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:limit]}{' ...' if len(text) > limit else ''}"


#: ``(M, K, N)`` of the library-path check (M off the blocks, N a ragged last tile).
LIBRARY_SHAPE = (33, 512, 300)


def library_path(seed: int = 0) -> list[dict]:
    """``tvwjax.matmul`` as users call it on this GPU: masks from :func:`tvwjax.masks`,
    :func:`tvwjax.compress`, then ``jit(matmul)`` with ``backend="auto"`` (the Pallas kernel
    :func:`tvwjax.matmul.gpu_kernel_for` picks) and its gradient with respect to ``x``, both
    against float32 products with the masked dense weight.

    Returns one row per (pattern, dtype): ``kernel`` (the kernel that ran, from
    :func:`tvwjax.backends`), ``max_abs_err`` / ``grad_max_abs_err``, ``tolerance``, ``ok``
    and, when the call raised, ``error``.
    """
    import tvwjax

    m, k, n = LIBRARY_SHAPE
    rng = np.random.default_rng(seed)
    x32 = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    w32 = jnp.asarray(rng.standard_normal((k, n)), jnp.float32)
    g32 = jnp.asarray(rng.standard_normal((m, n)), jnp.float32)
    rows = []
    for pname, pattern in (("TW", tvwjax.TW(tile=128)), ("TVW", tvwjax.TVW(tile=128))):
        mask = tvwjax.masks({"kernel": w32}, pattern, 0.75)["kernel"]
        for dname in ("bfloat16", "float32"):
            dtype = jnp.dtype(dname)
            x, w = x32.astype(dtype), w32.astype(dtype)
            wd = jnp.where(mask, w, 0).astype(jnp.float32)
            ref = np.asarray(x.astype(jnp.float32) @ wd)
            ref_grad = np.asarray(g32 @ wd.T)
            tol = CHECK_RTOL[dname] * max(1.0, float(np.abs(ref).max()))
            grad_tol = CHECK_RTOL[dname] * max(1.0, float(np.abs(ref_grad).max()))
            row = dict(pattern=pname, dtype=dname, M=m, K=k, N=n)
            try:
                cw = tvwjax.compress(w, mask, pattern)
                y = jax.jit(tvwjax.matmul)(x, cw)
                kernel = tvwjax.backends()["tile_formats_gpu"]["last_kernel"]
                gx = jax.jit(jax.grad(lambda x, cw: jnp.sum(
                    tvwjax.matmul(x, cw).astype(jnp.float32) * g32)))(x, cw)
                err = float(np.abs(np.asarray(y, np.float32) - ref).max())
                gerr = float(np.abs(np.asarray(gx, np.float32) - ref_grad).max())
                rows.append(dict(row, kernel=kernel, max_abs_err=err, grad_max_abs_err=gerr,
                                 tolerance=tol, ok=bool(err <= tol and gerr <= grad_tol)))
            except Exception as e:  # noqa: BLE001 - reported in the table
                rows.append(dict(row, kernel=None, max_abs_err=float("inf"),
                                 grad_max_abs_err=float("inf"), tolerance=tol, ok=False,
                                 error=_describe(e)))
                print(f"library: {pname} {dname} failed: {_describe(e)}", file=sys.stderr,
                      flush=True)
    return rows


def speed(kernels: Sequence[str], ms: Sequence[int], kns: Sequence[tuple[int, int]],
          sparsities: Sequence[float], *, repeats: int, budget_s: float,
          seed: int = 0) -> tuple[list[dict], list[str]]:
    """Time dense and every kernel (bfloat16); returns ``(records, not_run)``.

    The ``(K, N, M)`` groups run in order until ``budget_s`` is spent (the first always
    runs); the labels of the groups left out are ``not_run``."""
    rng = np.random.default_rng(seed)
    dtype = jnp.dtype(jnp.bfloat16)
    records: list[dict] = []
    not_run: list[str] = []
    start = time.perf_counter()
    dense_a = jax.jit(lambda x, w: x @ w)
    dense_b = jax.jit(lambda x, w: (w.T @ x.T).T)
    pregather = jax.jit(lambda x, r, c, kp: gather_tile_activations(
        x, r, c, -(-x.shape[0] // 64) * 64, kp, x.dtype), static_argnums=3)
    convert = jax.jit(lambda v, mt: tcgen05_operands(v, mt, dtype))
    decode = jax.jit(tvw_compact_blocks)
    for k, n in kns:
        w = jnp.asarray(rng.standard_normal((k, n)), dtype)
        tiles = {(s, fmt): make_tiles(rng, k, n, s, TILE, dtype, tvw=fmt == "tvw")
                 for s in sparsities for fmt in ("tw", "tvw")}
        for m in ms:
            label = f"M={m} K={k} N={n}"
            if records and time.perf_counter() - start > budget_s:  # one group at least
                not_run.append(label)
                continue
            x = jnp.asarray(rng.standard_normal((m, k)), dtype)
            t_dense = min(median_time(dense_a, x, w, repeats=repeats),
                          median_time(dense_b, x, w, repeats=repeats))
            base = dict(M=m, K=k, N=n, dtype=dtype.name)
            records.append(dict(op="dense", sparsity=0.0, median_s=t_dense,
                                ratio_vs_dense=1.0, **base))
            for s in sparsities:
                ops: dict[str, tuple[Callable[..., jax.Array], tuple]] = {}
                for name in kernels:
                    fmt, run_kernel = KERNELS[name]
                    ops[name] = (lambda x, d, run=run_kernel: run(d, x, False),
                                 (x, tiles[(s, fmt)]))
                if "tw_matmul_hopper" in kernels:
                    d = tiles[(s, "tw")]
                    ops["pregather_tw"] = (pregather, (
                        x, d["rows"], d["counts"], -(-d["rows"].shape[1] // 64) * 64))
                    # TVW on Hopper the other way: 2:4 decoded by XLA, then the wgmma kernel
                    ops["tvw_decoded_hopper"] = (lambda x, d: KERNELS["tw_matmul_hopper"][1](
                        {**d, "values": decode(d["values"], d["meta"])}, x, False),
                        (x, tiles[(s, "tvw")]))
                if "tvw_matmul_blackwell" in kernels:
                    d = tiles[(s, "tvw")]
                    ops["tcgen05_convert"] = (convert, (d["values"], d["meta"]))
                    ops["pregather_tvw"] = (pregather, (
                        x, d["rows"], d["counts"], -(-d["rows"].shape[1] // 128) * 128))
                timed = {}
                for op, (fn, op_args) in ops.items():
                    try:
                        timed[op] = median_time(fn, *op_args, repeats=repeats)
                    except Exception as e:  # noqa: BLE001 - reported, the sweep goes on
                        not_run.append(f"{op} at {label} s={s}: {_describe(e, 300)}")
                        print(f"speed: {op} at {label} s={s} failed: {_describe(e)}",
                              file=sys.stderr, flush=True)
                for op, t_op in timed.items():
                    records.append(dict(op=op, sparsity=s, median_s=t_op,
                                        ratio_vs_dense=t_op / t_dense, **base))
                print(f"{label} s={s}: dense {t_dense * 1e6:.1f} us, " + ", ".join(
                    f"{op} {t * 1e6:.1f} us" for op, t in timed.items()), flush=True)
    return records, not_run


#: ``(block_m, block_k, stages)`` of the ``wgmma`` TW kernel timed by :func:`tune_hopper`.
HOPPER_CONFIGS = ((128, 64, 2), (128, 64, 3), (128, 64, 4), (64, 64, 4), (128, 128, 3),
                  (64, 128, 4))
#: ``(M, K, N, sparsity)`` of :func:`tune_hopper`.
TUNE_SHAPES = ((256, 4096, 4096, 0.75), (4096, 4096, 4096, 0.75))


def tune_hopper(repeats: int, seed: int = 1) -> list[dict]:
    """Time the ``wgmma`` TW kernel at each of :data:`HOPPER_CONFIGS` on
    :data:`TUNE_SHAPES` (bfloat16; ``op`` names the config, ``ratio_vs_dense`` against the
    dense product of the same shape). A config that fails to compile is reported with
    ``error`` instead of a time."""
    rng = np.random.default_rng(seed)
    dtype = jnp.dtype(jnp.bfloat16)
    dense = jax.jit(lambda x, w: x @ w)
    records = []
    for m, k, n, s in TUNE_SHAPES:
        x = jnp.asarray(rng.standard_normal((m, k)), dtype)
        w = jnp.asarray(rng.standard_normal((k, n)), dtype)
        d = make_tiles(rng, k, n, s, TILE, dtype, tvw=False)
        t_dense = median_time(dense, x, w, repeats=repeats)
        base = dict(M=m, K=k, N=n, sparsity=s, dtype=dtype.name)
        for bm, bk, st in HOPPER_CONFIGS:
            op = f"tw_matmul_hopper[block_m={bm},block_k={bk},stages={st}]"
            fn = jax.jit(functools.partial(tw_matmul_hopper, n_out=n, block_m=bm, block_k=bk,
                                           stages=st))
            try:
                t_op = median_time(fn, x, d["values"], d["rows"], d["cols"],
                                   counts=d["counts"], repeats=repeats)
                records.append(dict(op=op, median_s=t_op, ratio_vs_dense=t_op / t_dense,
                                    **base))
            except Exception as e:  # noqa: BLE001 - reported, the sweep goes on
                records.append(dict(op=op, median_s=float("nan"),
                                    ratio_vs_dense=float("nan"), error=_describe(e, 300),
                                    **base))
            print(f"tune M={m} {op}: {records[-1]['median_s'] * 1e6:.1f} us "
                  f"(dense {t_dense * 1e6:.1f} us)", flush=True)
    return records


def to_markdown(check_rows: Sequence[dict], records: Sequence[dict], not_run: Sequence[str],
                device: str, library_rows: Sequence[dict] = ()) -> str:
    """The check, the library path and the speed table as Markdown (times in microseconds)."""
    lines = [f"# GPU check on {device}", "", "## Correctness (kernel vs plain-jnp reference)",
             "", "| kernel | dtype | M | K | N | G | Kp | max abs err | tolerance | ok |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in check_rows:
        lines.append(f"| {r['kernel']} | {r['dtype']} | {r['M']} | {r['K']} | {r['N']} | "
                     f"{r['G']} | {r['Kp']} | {r['max_abs_err']:.3g} | {r['tolerance']:.3g} | "
                     f"{'yes' if r['ok'] else 'NO'} |")
    if library_rows:
        lines += ["", "## Library path (masks, compress, jit(tvwjax.matmul) and its gradient "
                  "vs the masked dense product)", "",
                  "| pattern | dtype | M | K | N | kernel | max abs err | grad max abs err | "
                  "tolerance | ok |", "|---|---|---:|---:|---:|---|---:|---:|---:|---|"]
        for r in library_rows:
            lines.append(f"| {r['pattern']} | {r['dtype']} | {r['M']} | {r['K']} | {r['N']} | "
                         f"{r['kernel']} | {r['max_abs_err']:.3g} | "
                         f"{r['grad_max_abs_err']:.3g} | {r['tolerance']:.3g} | "
                         f"{'yes' if r['ok'] else 'NO'} |")
    lines += ["", "## Speed (bfloat16; ratio_vs_dense = median / dense median, below 1 = "
              "faster than dense)", "",
              "| op | M | K | N | sparsity | dtype | median (us) | ratio_vs_dense |",
              "|---|---:|---:|---:|---:|---|---:|---:|"]
    for r in records:
        lines.append(f"| {r['op']} | {r['M']} | {r['K']} | {r['N']} | {r['sparsity']:.2f} | "
                     f"{r['dtype']} | {r['median_s'] * 1e6:.1f} | {r['ratio_vs_dense']:.3f} |")
    errors = [r for r in [*check_rows, *library_rows, *records] if r.get("error")]
    if errors:
        lines += ["", "Errors:", ""] + [
            f"- {r.get('kernel') or r.get('pattern') or r.get('op')} {r['dtype']} M={r['M']} "
            f"K={r['K']} "
            f"N={r['N']}: {r['error']}" for r in errors]
    if not_run:
        lines += ["", "Not run (time budget, or failed): " + "; ".join(not_run)]
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CLI options besides ``--out`` and ``--quick``."""
    p.add_argument("--repeats", type=int, default=7,
                   help="timed samples per median (each 20 calls in one compiled loop)")
    p.add_argument("--budget-s", type=float, default=130.0,
                   help="seconds after which the speed sweep stops (default 130)")


def device_name() -> str:
    """The first GPU's device kind (e.g. ``"NVIDIA H200"``)."""
    return jax.devices("gpu")[0].device_kind


def run(args: argparse.Namespace) -> int:
    """Run the check and the speed sweep; write ``<out>/gpu_check.{json,md}``. Returns the
    exit status (2 without a GPU, 1 when a kernel failed its check)."""
    if not has_gpu():
        print("gpu_kernels: no GPU visible to JAX (jax.devices('gpu') is empty); the GPU check "
              "runs the Pallas GPU kernels and needs an NVIDIA GPU.", file=sys.stderr)
        return 2
    quick = bool(getattr(args, "quick", False))
    device = device_name()
    cc = gpu_compute_capability()
    kernels = available_kernels(cc)
    t0 = time.perf_counter()
    check_rows = check(kernels, cases=CHECK_CASES, dtypes=CHECK_DTYPES)
    failed = [r for r in check_rows if not r["ok"]]
    print(f"check: {len(check_rows) - len(failed)}/{len(check_rows)} ok "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    library_rows = library_path()
    library_failed = [r for r in library_rows if not r["ok"]]
    print(f"library path: {len(library_rows) - len(library_failed)}/{len(library_rows)} ok, "
          f"kernels {sorted({str(r['kernel']) for r in library_rows})}", flush=True)
    # a kernel that failed its check is not timed (a wrong result's speed means nothing)
    broken = sorted({r["kernel"] for r in failed})
    records, not_run = speed([k for k in kernels if k not in broken],
                             QUICK_M if quick else SPEED_M, QUICK_KN if quick else SPEED_KN,
                             SPEED_SPARSITY, repeats=args.repeats, budget_s=args.budget_s)
    not_run = [f"{k} (failed its check)" for k in broken] + not_run
    if "tw_matmul_hopper" in kernels and "tw_matmul_hopper" not in broken and not quick:
        records += tune_hopper(args.repeats)
    payload = {"machine": machine_info(), "device": device,
               "compute_capability": None if cc is None else f"{cc[0]}.{cc[1]}",
               "jax": jax.__version__, "kernels": kernels, "quick": quick,
               "check": check_rows, "library_path": library_rows, "records": records,
               "not_run": not_run,
               "total_s": time.perf_counter() - t0}
    write_results(args.out, "gpu_check", payload,
                  to_markdown(check_rows, records, not_run, device, library_rows))
    print(f"wrote {args.out}/gpu_check.json and .md ({payload['total_s']:.0f} s)")
    return 1 if failed or library_failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.gpu_kernels``: parse the command line and :func:`run`."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results", help="output folder (default: results)")
    p.add_argument("--quick", action="store_true", help="one weight shape, two M")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
