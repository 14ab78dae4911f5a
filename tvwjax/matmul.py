"""``tvwjax.matmul``: ``x @ W`` for a dense or compressed ``W``, on the CPU or GPU (Pallas).

On the CPU (``backend="cpu"``) the tile formats run on the compiled kernel of
:mod:`tvwjax.cpu_kernel` (an XLA FFI custom call built by ``pip install``: the activation
gather fused into the GEMM's packing, AVX-512 / AVX2 micro-kernels, XLA's thread pool).
When the extension is unavailable (a source tree that was not built, or
``TVWJAX_CPU_KERNEL=0``), or when JAX sees more than one device (the custom call has no
partitioning rule, so sharded inputs would be gathered), they run on the XLA path below;
:func:`backends` says which.

The XLA path for the tile formats, measured on a 2-core CPU:

* the activations are gathered per tile **as columns of** ``x`` (``x[:, rows]``, shape
  ``(M, T, Kp)``): XLA's CPU gather runs several times faster this way than gathering rows
  of ``x^T``, as long as the gathered block stays in cache, so ``M`` is processed in chunks
  of 128 rows;
* one batched GEMM ``(T, M, k) @ (T, k, G)`` per *bucket* of tiles runs at dense speed per
  FLOP. At small ``M`` (weight bytes dominate) all tiles form one bucket read in place (no
  copy of the weights); at ``M >= 64`` tiles are bucketed by their kept-row count (at most
  4 buckets, counts rounded up to 8) so padding rows cost no FLOPs; bucket plans are built
  at trace time from the static index tables;
* from ``M >= 256`` a loop over tiles gathers each tile's kept rows of ``x^T`` (contiguous
  rows) and runs ``W_t^T x^T[rows_t]``: about 2x faster than the above at large ``M``;
* the per-tile outputs ``(M, T*G)`` are placed into the ``N`` output columns by one static
  column gather (skipped when it is the identity, as for TW-1D with ``G | N``).

TVW weights are decoded to their compact TW blocks first (no 2:4 hardware on a CPU); N:M
weights are decoded to dense. Dense weights use the faster of ``x @ W`` and ``(W^T x^T)^T``
for the given ``M``.

``backend="gpu"`` calls a Pallas kernel chosen by the GPU's compute capability
(:func:`gpu_kernel_for`): the Mosaic GPU kernels (:func:`pallas_kernels.tw_matmul_hopper` on
Hopper, :func:`pallas_kernels.tvw_matmul_blackwell` on Blackwell, 16-bit operands) or the
Triton kernels (:func:`pallas_kernels.tw_matmul`, :func:`pallas_kernels.tvw_matmul`: Ampere,
float32, and the format the device has no Mosaic kernel for); :func:`backends` says which.
``"interpret"`` runs the Triton kernels on the CPU in Pallas interpret mode (for tests).
The kernels are differentiable themselves (each has its ``custom_vjp``).
Inputs are validated here, with :mod:`tvwjax.errors`, before a kernel is called. Gradients
flow to ``x`` and to the compressed ``values`` (the only pytree leaf of a compressed weight).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import pallas_kernels
from pallas_kernels.common import SUPPORTED_DTYPES
from pallas_kernels.tw_matmul_hopper import MAX_TILE_WIDTH
from tvwjax import _validate as val
from tvwjax import cpu_kernel
from tvwjax.errors import ConfigError, DTypeError, ShapeError
from tvwjax.formats import CompressedWeight, StaticArray, TileVectorWise, decompress
from tvwjax.formats.tiles import TileFormat

Array = jax.Array

BACKENDS = ("auto", "cpu", "gpu", "interpret")
M_CHUNK = 128          # rows of x per gather + GEMM step (keeps the gather in cache)
BUCKET_MIN_M = 64      # from this M on, tiles are bucketed by kept-row count
MAX_BUCKETS = 4
BUCKET_ROUND = 8
DENSE_TRANSPOSED_MAX_M = 64
SCAN_MIN_M = 256       # from this M on, loop over tiles gathering rows of x^T


# -- plans ---------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Bucket:
    tiles: np.ndarray      # (Tb,) tile ids
    contiguous: bool       # tiles == arange(a, b)
    k: int                 # compact rows used (<= Kp)
    rows: np.ndarray       # (Tb, k) rows of x to gather


@dataclasses.dataclass(frozen=True)
class _Plan:
    buckets: tuple[_Bucket, ...]
    inv: np.ndarray        # (N,) position of each output column in the (T*G) result, or T*G
    identity: bool         # inv == arange(N): no output gather


def _partition(counts: np.ndarray, max_buckets: int, rnd: int) -> list[np.ndarray]:
    """Split tiles into <= max_buckets groups of similar counts minimising padded rows."""
    order = np.argsort(-counts, kind="stable")
    c = -(-counts[order] // rnd) * rnd
    t = c.size
    inf = float("inf")
    # cost[i][b]: best cost of the first i tiles (sorted desc) in b buckets.
    cost = np.full((t + 1, max_buckets + 1), inf)
    cut = np.zeros((t + 1, max_buckets + 1), np.int64)
    cost[0, 0] = 0.0
    for i in range(1, t + 1):
        for b in range(1, max_buckets + 1):
            for j in range(i):  # bucket = sorted tiles j..i-1, its k = c[j] (largest)
                v = cost[j, b - 1] + (i - j) * c[j]
                if v < cost[i, b]:
                    cost[i, b], cut[i, b] = v, j
    b = int(np.argmin(cost[t]))
    groups, i = [], t
    while i > 0:
        j = int(cut[i, b])
        groups.append(np.sort(order[j:i]))
        i, b = j, b - 1
    return groups[::-1]


@functools.lru_cache(maxsize=1024)
def _tile_plan(rows_s: StaticArray, cols_s: StaticArray, counts_s: StaticArray, n_out: int,
               bucketed: bool) -> _Plan:
    rows, cols, counts = rows_s.array, cols_s.array, counts_s.array
    t, kp = rows.shape
    g = cols.shape[1]
    if bucketed and t > 1:
        groups = _partition(counts, MAX_BUCKETS, BUCKET_ROUND)
    else:
        groups = [np.arange(t)]
    buckets = []
    for ids in groups:
        k = kp if not bucketed else min(kp, max(1, -(-int(counts[ids].max()) // BUCKET_ROUND)
                                                * BUCKET_ROUND))
        contiguous = bool(ids.size and np.array_equal(ids, np.arange(ids[0], ids[0] + ids.size)))
        buckets.append(_Bucket(ids, contiguous, k, np.ascontiguousarray(rows[ids, :k])))
    order = np.concatenate([b.tiles for b in buckets]) if buckets else np.zeros(0, np.int64)
    flat_cols = cols[order].reshape(-1)
    inv = np.full(n_out, order.size * g, np.int32)
    real = flat_cols < n_out
    inv[flat_cols[real]] = np.flatnonzero(real).astype(np.int32)
    identity = order.size * g >= n_out and np.array_equal(inv, np.arange(n_out))
    return _Plan(tuple(buckets), inv, bool(identity))


# -- the XLA tile GEMM -------------------------------------------------------------------------
def _tile_chunk(xc: Array, weights: list[Array], plan: _Plan, n_out: int,
                acc: jnp.dtype) -> Array:
    mc = xc.shape[0]
    parts = []
    for b, wb in zip(plan.buckets, weights, strict=True):
        g = xc.at[:, b.rows].get(mode="promise_in_bounds")            # (mc, Tb, k)
        g = jnp.transpose(g, (1, 0, 2))                                # (Tb, mc, k)
        parts.append(lax.dot_general(g, wb, (((2,), (1,)), ((0,), (0,))),
                                     preferred_element_type=acc))     # (Tb, mc, G)
    y = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)
    y = jnp.transpose(y, (1, 0, 2)).reshape(mc, -1)                    # (mc, T*G)
    return _place(y, plan, n_out)


def _place(y: Array, plan: _Plan, n_out: int) -> Array:
    """Move the per-tile outputs ``(M, T*G)`` to their ``N`` output columns (pruned -> 0)."""
    if plan.identity:
        return y[:, :n_out]
    y = jnp.concatenate([y, jnp.zeros((y.shape[0], 1), y.dtype)], axis=1)
    return y.at[:, plan.inv].get(mode="promise_in_bounds")


def _tiles_scan(x2d: Array, values: Array, rows: np.ndarray, acc: jnp.dtype) -> Array:
    """Large-``M`` form: a loop over tiles, each gathering its kept rows of ``x^T``
    (contiguous rows of ``M`` values, one ``(Kp, M)`` block that stays in cache) and running
    ``W_t^T @ x^T[rows_t]``; returns ``(M, T*G)``. Measured on 2 cores at K = N = 4096,
    TW 75%: about 2x faster than the chunked column gather + batched GEMM at M >= 512."""
    xt = x2d.T

    def body(_, inp):
        r, v = inp
        g = xt.at[r].get(mode="promise_in_bounds")                      # (Kp, M)
        return None, lax.dot_general(v, g, (((0,), (0,)), ((), ())),
                                     preferred_element_type=acc)       # (G, M)

    _, ys = lax.scan(body, None, (jnp.asarray(rows), values))          # (T, G, M)
    return ys.reshape(-1, x2d.shape[0]).T


def _map_chunks(f, x2d: Array, chunk: int) -> Array:
    """Apply ``f`` to row chunks of ``x2d`` (``M < SCAN_MIN_M``: a few chunks, unrolled)."""
    m = x2d.shape[0]
    if m <= chunk:
        return f(x2d)
    return jnp.concatenate([f(x2d[i:i + chunk]) for i in range(0, m, chunk)], axis=0)


def _kept_rows_only_grad(values: Array, counts: np.ndarray) -> Array:
    """Identity on ``values`` ``(T, Kp, G)`` whose gradient is zero on each tile's padding
    rows (``>= counts[t]``): padding rows point at row 0 of ``x``, and fine-tuning must not
    turn their zero values into weights. Free in the forward pass."""
    valid = np.arange(values.shape[1])[None, :, None] < np.asarray(counts)[:, None, None]
    if valid.all():
        return values

    @jax.custom_vjp
    def ident(v):
        return v

    ident.defvjp(lambda v: (v, None),
                 lambda _, g: (jnp.where(jnp.asarray(valid), g, jnp.zeros((), g.dtype)),))
    return ident(values)


def _tiles_xla(x2d: Array, cw: TileFormat, out_dtype) -> Array:
    m = x2d.shape[0]
    n_out = int(cw.shape[1])
    if cw.num_tiles == 0 or m == 0:
        return jnp.zeros((m, n_out), out_dtype)
    values = _kept_rows_only_grad(cw.compact_values(), cw.counts).astype(out_dtype)
    acc = jnp.float32 if jnp.dtype(out_dtype).itemsize < 4 else out_dtype
    if m >= SCAN_MIN_M:
        plan = _tile_plan(cw.static_table("rows"), cw.static_table("cols"),
                          cw.static_table("counts"), n_out, False)
        y = _tiles_scan(x2d.astype(out_dtype), values, cw.rows, acc)
        return _place(y, plan, n_out).astype(out_dtype)
    plan = _tile_plan(cw.static_table("rows"), cw.static_table("cols"),
                      cw.static_table("counts"), n_out, m >= BUCKET_MIN_M)
    kp = values.shape[1]
    weights = []
    for b in plan.buckets:
        if b.contiguous:
            wb = values[int(b.tiles[0]):int(b.tiles[0]) + b.tiles.size]
        else:
            wb = jnp.take(values, jnp.asarray(b.tiles, jnp.int32), axis=0)
        weights.append(wb if b.k == kp else wb[:, :b.k])
    x2d = x2d.astype(out_dtype)
    y = _map_chunks(lambda xc: _tile_chunk(xc, weights, plan, n_out, acc), x2d, M_CHUNK)
    return y.astype(out_dtype)


def dense_matmul(x2d: Array, w: Array) -> Array:
    """``x2d @ w`` in the faster XLA form for the CPU: ``(W^T x^T)^T`` for small ``M``."""
    out_dtype = jnp.result_type(x2d.dtype, w.dtype)
    acc = jnp.float32 if jnp.dtype(out_dtype).itemsize < 4 else out_dtype
    x2d, w = x2d.astype(out_dtype), w.astype(out_dtype)
    if x2d.shape[0] <= DENSE_TRANSPOSED_MAX_M:
        y = lax.dot_general(w, x2d, (((0,), (1,)), ((), ())), preferred_element_type=acc).T
    else:
        y = lax.dot_general(x2d, w, (((1,), (0,)), ((), ())), preferred_element_type=acc)
    return y.astype(out_dtype)


def _xla_matmul(x2d: Array, w: Any) -> Array:
    out_dtype = jnp.result_type(x2d.dtype, w.dtype)
    if isinstance(w, TileFormat):
        return _tiles_xla(x2d, w, out_dtype)
    if isinstance(w, CompressedWeight):
        return dense_matmul(x2d, decompress(w))
    return dense_matmul(x2d, w)


# -- Pallas backends ---------------------------------------------------------------------------
#: Pallas kernels by name (the names :func:`backends` reports).
GPU_KERNELS = {
    "tw_matmul": "Triton (Ampere path; float32 anywhere)",
    "tvw_matmul": "Triton, 2:4 decoded in registers (half the weight bytes, dense MMA)",
    "tw_matmul_hopper": "Mosaic GPU, wgmma (sm_90)",
    "tvw_matmul_blackwell": "Mosaic GPU, sparse tcgen05 MMA with 2:4 metadata (sm_100+)",
}
_last_gpu_kernel: list[str | None] = [None]


def gpu_compute_capability() -> tuple[int, int] | None:
    """``(major, minor)`` of the first GPU JAX sees, or ``None`` without a GPU."""
    try:
        devices = jax.devices("gpu")
    except RuntimeError:
        return None
    cc = getattr(devices[0], "compute_capability", None) if devices else None
    if not cc:
        return None
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


def gpu_kernel_for(fmt: str, dtype: Any, capability: tuple[int, int] | None,
                   tile_width: int = 128) -> str:
    """The Pallas kernel ``matmul(..., backend="gpu")`` runs (``backend="auto"`` on a GPU).

    Args:
      fmt: ``"tw"`` (TW weights, and TVW weights with an N:M other than 2:4, run on their
        decoded compact blocks) or ``"tvw"`` (2:4 TVW weights).
      dtype: the promoted dtype of ``x`` and the weight values.
      capability: the GPU's compute capability ``(major, minor)`` (``None``: unknown).
      tile_width: the weight's tile width ``G`` (the Hopper kernel holds at most 256).

    Returns:
      A key of :data:`GPU_KERNELS`: the sparse ``tcgen05`` kernel for 2:4 TVW on Blackwell
      (compute capability 10 or more), the ``wgmma`` kernel for TW on Hopper (9.x), both
      for bfloat16 / float16 operands; the Triton kernels otherwise (Ampere, float32, TVW on
      Hopper, TW on Blackwell).

    >>> gpu_kernel_for("tw", jnp.bfloat16, (9, 0)), gpu_kernel_for("tvw", jnp.float32, (10, 0))
    ('tw_matmul_hopper', 'tvw_matmul')
    """
    mma = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    major = capability[0] if capability else 0
    if fmt == "tvw":
        return "tvw_matmul_blackwell" if mma and major >= 10 else "tvw_matmul"
    wgmma_fits = tile_width <= MAX_TILE_WIDTH
    return "tw_matmul_hopper" if mma and major == 9 and wgmma_fits else "tw_matmul"


def _kernel_matmul(x2d: Array, cw: TileFormat, interpret: bool) -> Array:
    """``x2d @ cw`` with the Pallas kernel of ``cw``'s format (differentiable).

    A 2:4 :class:`TileVectorWise` runs a TVW kernel on its compressed values; other N:M
    ratios run a TW kernel on their decoded compact blocks (the CPU path's form). On a GPU
    the kernel is chosen by :func:`gpu_kernel_for`; ``interpret`` runs the Triton kernels in
    Pallas interpret mode on the CPU.
    """
    for name, dtype in (("x", x2d.dtype), ("w", cw.values.dtype)):
        if jnp.dtype(dtype) not in SUPPORTED_DTYPES:
            raise DTypeError(f"{name}: the Pallas kernels take float32, bfloat16 or float16, "
                             f"got dtype {dtype}; use backend='cpu'")
    n_out = int(cw.shape[1])
    rows, cols, counts = (jnp.asarray(cw.rows), jnp.asarray(cw.cols), jnp.asarray(cw.counts))
    tvw = isinstance(cw, TileVectorWise) and tuple(cw.nm) == (2, 4)
    dtype = jnp.promote_types(x2d.dtype, cw.values.dtype)
    name = (("tvw_matmul" if tvw else "tw_matmul") if interpret
            else gpu_kernel_for("tvw" if tvw else "tw", dtype, gpu_compute_capability(),
                                cols.shape[1]))
    _last_gpu_kernel[0] = name
    kw = dict(n_out=n_out, counts=counts)
    if name == "tvw_matmul_blackwell":
        return pallas_kernels.tvw_matmul_blackwell(x2d, cw.values, jnp.asarray(cw.meta), rows,
                                                   cols, **kw)
    if name == "tvw_matmul":
        return pallas_kernels.tvw_matmul(x2d, cw.values, jnp.asarray(cw.meta), rows, cols,
                                         interpret=interpret, **kw)
    if name == "tw_matmul_hopper":
        return pallas_kernels.tw_matmul_hopper(x2d, cw.compact_values(), rows, cols, **kw)
    return pallas_kernels.tw_matmul(x2d, cw.compact_values(), rows, cols,
                                    interpret=interpret, **kw)


# -- public entry point ------------------------------------------------------------------------
def _check_inputs(x: Any, w: Any) -> tuple[Array, Any, tuple[int, int]]:
    """``x`` as a JAX array, ``w`` (compressed, or a dense JAX array) and ``w``'s ``(K, N)``.

    NumPy arrays and nested sequences of numbers are accepted for ``x`` and a dense ``w``
    (read as ``jnp.asarray`` reads them); anything else raises a :mod:`tvwjax.errors`
    exception naming the argument.
    """
    if isinstance(w, CompressedWeight):
        shape = tuple(int(s) for s in w.shape)
        wdt = w.values.dtype
    else:
        try:
            w = val.array(w, "w")
        except ConfigError:
            raise ConfigError(f"w must be a dense (K, N) array or a compressed weight, got "
                              f"{type(w).__name__}") from None
        if w.ndim != 2:
            raise ShapeError(f"w: expected a 2-D (K, N) weight, got shape {tuple(w.shape)}")
        if 0 in tuple(w.shape):
            raise ShapeError(f"w: empty weight of shape {tuple(w.shape)}; expected K >= 1 and "
                             "N >= 1")
        shape = tuple(int(s) for s in w.shape)
        wdt = w.dtype
    if not jnp.issubdtype(wdt, jnp.floating):
        raise DTypeError(f"w: expected floating-point values, got dtype {wdt}")
    x = val.array(x, "x")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise DTypeError(f"x: expected a floating-point array (float32, bfloat16, float16), "
                         f"got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != shape[0]:
        raise ShapeError(f"x: last dimension must equal w's K = {shape[0]} (w has shape "
                         f"{shape}), got x of shape {tuple(x.shape)}")
    return x, w, shape


def matmul(x: Array, w: Any, backend: str = "auto") -> Array:
    """``x @ W`` where ``W`` is dense or compressed (``TileWise``, ``TileVectorWise``,
    ``NMSparse``, ``BlockSparse``).

    Args:
      x: ``(..., K)`` activations, any number of leading batch dims (zero rows are fine);
        float32, bfloat16 or float16; a JAX or NumPy array (or nested lists of numbers).
      w: a dense ``(K, N)`` array (JAX or NumPy) or a
        :class:`~tvwjax.formats.CompressedWeight`.
      backend: ``"cpu"`` (the compiled CPU kernel; XLA gather + batched GEMM when it is
        unavailable, see :func:`backends`), ``"gpu"`` (Pallas kernels, picked by the GPU's
        compute capability: :func:`gpu_kernel_for`), ``"interpret"`` (the Triton Pallas
        kernels in interpret mode on the CPU, slow) or ``"auto"`` (``"gpu"`` when
        ``jax.default_backend() == "gpu"``, else ``"cpu"``).
        Weights without a kernel (dense, N:M) always take the XLA path.

    Returns:
      ``(..., N)`` in the promoted dtype of ``x`` and ``w``, accumulated in float32;
      equal to ``x @ decompress(w)`` within the dtype's rounding (zeros when ``x`` has no
      rows, on every backend). Differentiable with respect to ``x`` and ``w``'s values.

    Raises:
      ConfigError: unknown ``backend``, ``x`` not an array (``None``, a string, ...) or
        unsupported ``w``.
      DTypeError: integer ``x`` or ``w``; with ``backend="gpu"`` / ``"interpret"`` and a
        tile format, a dtype other than float32, bfloat16 or float16.
      ShapeError: ``x.shape[-1] != K`` or ``w`` not 2-D.

    >>> import jax, jax.numpy as jnp, tvwjax
    >>> w = jax.random.normal(jax.random.key(0), (96, 64))
    >>> pattern = tvwjax.TW(tile=32, column_share=0.0)
    >>> mask = pattern.mask(jnp.abs(w), 0.75)
    >>> cw = tvwjax.compress(w, mask, pattern)
    >>> x = jnp.ones((5, 96))
    >>> y = jax.jit(tvwjax.matmul)(x, cw)
    >>> y.shape, bool(jnp.allclose(y, x @ jnp.where(mask, w, 0), atol=1e-4))
    ((5, 64), True)
    """
    val.choice(backend, "backend", BACKENDS)
    x, w, (k, n) = _check_inputs(x, w)
    lead = x.shape[:-1]
    x2d = x.reshape(-1, k)
    if backend == "auto":
        backend = "gpu" if jax.default_backend() == "gpu" else "cpu"
    if x2d.shape[0] == 0:  # no rows (e.g. an empty batch): the same answer on every path
        y = jnp.zeros((0, n), jnp.result_type(x.dtype, w.dtype))
    elif backend in ("gpu", "interpret") and isinstance(w, TileFormat):
        if w.num_tiles == 0:
            y = jnp.zeros((x2d.shape[0], n), jnp.result_type(x.dtype, w.dtype))
        else:
            y = _kernel_matmul(x2d, w, backend == "interpret")
    elif (isinstance(w, TileFormat) and cpu_kernel.unsupported(x2d, w) is None
          and jax.device_count() == 1):
        # The custom call has no partitioning rule yet: with several devices (a mesh) the
        # XLA path runs, which XLA's partitioner shards like any other computation.
        y = cpu_kernel.tw_matmul_cpu(x2d, w)
    else:
        y = _xla_matmul(x2d, w)
    return y.reshape(*lead, n)


def backends() -> dict[str, Any]:
    """Which implementation :func:`matmul` runs for each kind of weight on this machine.

    Returns:
      ``{"default_backend": jax.default_backend(), "tile_formats_cpu": "ffi" | "xla",
      "cpu_kernel": tvwjax.cpu_kernel.report(), "tile_formats_gpu": {...},
      "dense_and_nm": "xla"}``. ``tile_formats_gpu`` holds ``"compute_capability"``
      (``None`` without a GPU), the kernel TW and 2:4 TVW weights run on this GPU for
      bfloat16 / float16 and for float32 operands (keys ``"tw"``, ``"tvw"``,
      ``"tw_float32"``, ``"tvw_float32"``, names of :data:`GPU_KERNELS`; ``None`` without a
      GPU) and ``"last_kernel"``, the kernel the last GPU / interpret call traced.

    >>> import tvwjax
    >>> sorted(tvwjax.backends())[:2]
    ['cpu_kernel', 'default_backend']
    """
    rep = cpu_kernel.report()
    kernel = rep["kernel"] if jax.device_count() == 1 else "xla"
    cc = gpu_compute_capability()
    gpu: dict[str, Any] = {"compute_capability": None if cc is None else f"{cc[0]}.{cc[1]}"}
    for fmt in ("tw", "tvw"):
        gpu[fmt] = None if cc is None else gpu_kernel_for(fmt, jnp.bfloat16, cc)
        gpu[f"{fmt}_float32"] = None if cc is None else gpu_kernel_for(fmt, jnp.float32, cc)
    gpu["last_kernel"] = _last_gpu_kernel[0]
    return {"default_backend": jax.default_backend(), "tile_formats_cpu": kernel,
            "cpu_kernel": rep, "tile_formats_gpu": gpu, "dense_and_nm": "xla"}


__all__ = ["BACKENDS", "GPU_KERNELS", "backends", "dense_matmul", "gpu_compute_capability",
           "gpu_kernel_for", "matmul"]
