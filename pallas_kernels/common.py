"""Machinery shared by the tile-wise (TW) and tile-vector-wise (TVW) Pallas kernels.

The layout contract itself is in :mod:`pallas_kernels.layout`. This module holds what the
kernel wrappers do around their kernel body: validation of the tile arrays, padding
helpers and the column scatter of the compact kernel output (used by every kernel, Triton
and Mosaic GPU), and the Triton kernels' launch: their parameters (:class:`BlockConfig`, the
shared parts of the per-shape defaults, their validation), the padding of the tile arrays
to their block sizes, the x^T row-gather index math and the launch over the (M blocks,
tiles) grid. The Mosaic GPU kernels' own shared pieces are in
:mod:`pallas_kernels.mgpu_common`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.errors import KernelConfigError, KernelDTypeError, KernelShapeError

Array = jax.Array

#: Floating dtypes the kernels accept (inputs are promoted to a common one of these).
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
#: Smallest block edge fed to a Triton ``tt.dot`` (the MMA instruction minimum for 16-bit types).
MIN_DOT = 16


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """Static launch parameters of a kernel call (the kernels' ``config`` argument).

    A field left ``None`` takes the kernel's per-shape default
    (:func:`pallas_kernels.tw_block_config`, :func:`pallas_kernels.tvw_block_config`).

    Attributes:
      block_m: rows of ``x`` per program (power of two, >= 16).
      block_k: compact rows of a tile consumed per loop step (power of two; the kernel
        module sets its minimum).
      num_warps: Triton warps per program (power of two, <= 32).
      num_stages: Triton software-pipelining stages of the K loop (>= 1).
    """

    block_m: int | None = None
    block_k: int | None = None
    num_warps: int | None = None
    num_stages: int | None = None


@dataclasses.dataclass(frozen=True)
class TileCall:
    """One validated kernel call's static parameters (hashable: the ``custom_vjp``
    non-differentiable argument of the kernels).

    Attributes:
      name: kernel name (shows in profiles and in the lowered IR).
      n_out: ``N``, the output width.
      cfg: the launch parameters.
      row_divisors: for each weight array, compact rows per array row (TW values 1; TVW
        values 2, meta 8).
      interpret: run the kernel body on the CPU (``pallas_call(interpret=True)``).
    """

    name: str
    n_out: int
    cfg: BlockConfig
    row_divisors: tuple[int, ...]
    interpret: bool


def next_pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``)."""
    return 1 << max(0, int(n) - 1).bit_length()


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def default_block_config(m: int, g: int, block_k: int) -> BlockConfig:
    """The launch defaults both kernels share, around a kernel's own ``block_k`` choice.

    Heuristics, not tuned on hardware (no GPU was available):

    * ``block_m``: the next power of two of ``M`` clamped to [16, 64]; 128 when ``M >= 2048``
      and the tile is at most 64 wide (keeps the float32 accumulator <= 64 x 128 per
      program otherwise);
    * ``num_warps``: 4, or 8 when the accumulator ``block_m x G`` exceeds 64 x 64 elements;
    * ``num_stages``: 2 (the loads are pointer gathers; deeper pipelines cost registers).

    Args:
      m: rows of ``x``.
      g: tile width after padding to a power of two.
      block_k: the kernel's choice of compact rows per loop step.

    Returns:
      The complete :class:`BlockConfig`.
    """
    block_m = 128 if (m >= 2048 and g <= 64) else min(64, max(MIN_DOT, next_pow2(m)))
    num_warps = 8 if block_m * g > 64 * 64 else 4
    return BlockConfig(block_m=block_m, block_k=block_k, num_warps=num_warps, num_stages=2)


def resolve_block_config(config: BlockConfig | None, default: BlockConfig, *,
                         min_block_k: int) -> BlockConfig:
    """Fill the unset fields of ``config`` from ``default`` and validate all four.

    Raises:
      KernelConfigError: naming the parameter and the allowed values.
    """
    if config is None:
        config = BlockConfig()
    if not isinstance(config, BlockConfig):
        raise KernelConfigError(f"config must be a BlockConfig or None, got "
                                f"{type(config).__name__}")
    given = {k: v for k, v in dataclasses.asdict(config).items() if v is not None}
    cfg = dataclasses.replace(default, **given)
    for name, value, low in (("block_m", cfg.block_m, MIN_DOT),
                             ("block_k", cfg.block_k, min_block_k)):
        if not isinstance(value, int) or not _is_pow2(value) or value < low:
            raise KernelConfigError(f"{name} must be a power of two >= {low}, got {value!r}")
    if not isinstance(cfg.num_warps, int) or not _is_pow2(cfg.num_warps) or cfg.num_warps > 32:
        raise KernelConfigError(
            f"num_warps must be a power of two in [1, 32], got {cfg.num_warps!r}")
    if not isinstance(cfg.num_stages, int) or cfg.num_stages < 1:
        raise KernelConfigError(
            f"num_stages must be an integer >= 1, got {cfg.num_stages!r}")
    return cfg


def padded_tile_width(g: int) -> int:
    """Tile width the kernels run at: ``G`` rounded up to a power of two >= 16."""
    return max(MIN_DOT, next_pow2(g))


def compute_dtype(x: Array, values: Array) -> jnp.dtype:
    """Validate the operand dtypes and return the dtype the product is computed and returned in.

    Raises:
      KernelDTypeError: if either operand is not float32, bfloat16 or float16.
    """
    for name, arr in (("x", x), ("values", values)):
        if jnp.dtype(arr.dtype) not in SUPPORTED_DTYPES:
            raise KernelDTypeError(
                f"{name} must be float32, bfloat16 or float16, got {jnp.dtype(arr.dtype)}"
            )
    return jnp.dtype(jnp.promote_types(x.dtype, values.dtype))


def _check_int(name: str, arr: Array, shape: tuple[int, ...], what: str) -> None:
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise KernelDTypeError(f"{name} must be an integer array, got {jnp.dtype(arr.dtype)}")
    if tuple(arr.shape) != shape:
        raise KernelShapeError(
            f"{name} must have shape {shape} ({what}), got {tuple(arr.shape)}")


def validate_tiles(x: Array, rows: Array, cols: Array, counts: Array | None,
                   n_out: int) -> tuple[int, int, int, int, int]:
    """Check ``x``, the index tables and ``n_out`` against the layout contract.

    Returns:
      ``(M, K, T, Kp, G)``.

    Raises:
      KernelShapeError, KernelDTypeError, KernelConfigError: naming the parameter and what
        was expected.
    """
    if x.ndim != 2:
        raise KernelShapeError(f"x must be 2-D (M, K), got shape {tuple(x.shape)}")
    m, k = x.shape
    if m < 1 or k < 1:
        raise KernelShapeError(f"x must have M >= 1 and K >= 1, got shape {tuple(x.shape)}")
    if rows.ndim != 2:
        raise KernelShapeError(f"rows must be 2-D (T, Kp), got shape {tuple(rows.shape)}")
    t, kp = rows.shape
    if t < 1 or kp < 1:
        raise KernelShapeError(
            f"rows must have T >= 1 and Kp >= 1, got shape {tuple(rows.shape)}")
    if cols.ndim != 2 or cols.shape[0] != t:
        raise KernelShapeError(f"cols must have shape (T={t}, G), got {tuple(cols.shape)}")
    _check_int("rows", rows, (t, kp), "tiles x kept rows")
    _check_int("cols", cols, (t, cols.shape[1]), "tiles x tile width")
    if counts is not None:
        _check_int("counts", counts, (t,), "kept rows per tile")
    if isinstance(n_out, bool) or not isinstance(n_out, int | np.integer) or n_out < 1:
        raise KernelConfigError(
            f"n_out must be a positive int (N, the output width), got {n_out!r}")
    return m, k, t, kp, cols.shape[1]


def validate_weight(name: str, arr: Array, t: int, kp: int, g: int, row_divisor: int,
                    dtype: jnp.dtype | None = None) -> None:
    """Check one weight array of a tile call: shape ``(T, Kp // row_divisor, G)`` and, when
    given, its dtype.

    Raises:
      KernelShapeError: ``Kp`` not a multiple of ``row_divisor`` or a wrong shape.
      KernelDTypeError: the dtype differs from ``dtype``.
    """
    if kp % row_divisor:
        raise KernelShapeError(
            f"rows must have Kp (axis 1) a multiple of {row_divisor} for {name}, got {kp}")
    want = (t, kp // row_divisor, g)
    if tuple(arr.shape) != want:
        rows_txt = "Kp" if row_divisor == 1 else f"Kp // {row_divisor}"
        raise KernelShapeError(f"{name} must have shape (T, {rows_txt}, G) = {want} to match "
                               f"rows/cols, got {tuple(arr.shape)}")
    if dtype is not None and jnp.dtype(arr.dtype) != jnp.dtype(dtype):
        raise KernelDTypeError(f"{name} must be {jnp.dtype(dtype)}, got {arr.dtype}")


def pad_axis(a: Array, axis: int, size: int, value: int | float = 0) -> Array:
    """Pad ``a`` along ``axis`` at the end up to ``size`` with ``value`` (no-op if there)."""
    extra = size - a.shape[axis]
    if extra == 0:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, extra)
    return jnp.pad(a, widths, constant_values=value)


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def num_k_steps(counts_ref, tile: Array, kp: int, block_k: int) -> Array | int:
    """Loop trip count over a tile's compact rows: ``ceil(k_t / block_k)`` when the per-tile
    counts are given (a dynamic bound: tiles with fewer kept rows do fewer steps), otherwise
    ``Kp / block_k`` (padding rows are zero, so running over them is exact, only slower)."""
    if counts_ref is None:
        return kp // block_k
    count = jnp.clip(counts_ref[tile], 0, kp)
    return jax.lax.div(count + (block_k - 1), block_k)  # count >= 0: truncation = floor


def gather_xt_rows(xt_ref, rows_ref, start: Array | int, size: int, stride: int = 1) -> Array:
    """Rows of ``x^T`` for the compact rows ``start, start + stride, ...`` (``size`` of them).

    ``rows_ref`` is the tile's ``(Kp,)`` row table; the result is ``(size, block_m)``: a gather
    on the leading dimension of the ``(K, block_m)`` ``x^T`` block (the one Triton lowers).
    """
    idx = rows_ref[pl.ds(start, size, stride)]
    return xt_ref[idx, :]


def scatter_columns(compact: Array, cols: Array, n_out: int) -> Array:
    """Place the kernel's compact ``(M, T*G)`` output at its original columns.

    Column ``c`` of tile ``t`` goes to ``cols[t, c]``; padding columns (``cols == n_out``) are
    dropped and pruned output columns stay zero. Returns ``(M, n_out)``.
    """
    m = compact.shape[0]
    out = jnp.zeros((m, n_out), compact.dtype)
    return out.at[:, cols.reshape(-1)].set(compact, mode="drop", unique_indices=True)


def prepare_call(name: str, x: Array, weights: Sequence[tuple[str, Array, int, jnp.dtype | None]],
                 rows: Array, cols: Array, counts: Array | None, *, n_out: int,
                 default_config: Callable[[int, int, int], BlockConfig], min_block_k: int,
                 config: BlockConfig | None, interpret: bool) -> TileCall:
    """Validate a kernel call and resolve its static parameters.

    Args:
      name: the kernel's name.
      x: ``(M, K)`` activations.
      weights: ``(name, array, row_divisor, dtype)`` of each weight array, the float
        values first (``dtype`` ``None``: any of :data:`SUPPORTED_DTYPES`).
      rows, cols, counts, n_out: the index tables and output width (layout contract).
      default_config: the kernel's per-shape defaults, ``(M, Kp, padded G) -> BlockConfig``.
      min_block_k: the kernel's smallest ``block_k``.
      config: the caller's launch parameters (``None`` fields: the defaults).
      interpret: run in Pallas interpret mode.

    Returns:
      The :class:`TileCall`.

    Raises:
      KernelShapeError, KernelDTypeError, KernelConfigError: naming the parameter.
    """
    m, _, t, kp, g = validate_tiles(x, rows, cols, counts, n_out)
    for w_name, arr, div, dtype in weights:
        validate_weight(w_name, arr, t, kp, g, div, dtype)
    compute_dtype(x, weights[0][1])
    gp = padded_tile_width(g)
    cfg = resolve_block_config(config, default_config(m, kp, gp), min_block_k=min_block_k)
    return TileCall(name=name, n_out=int(n_out), cfg=cfg,
                    row_divisors=tuple(div for _, _, div, _ in weights), interpret=interpret)


def launch_tile_kernel(kernel_body: Callable[..., None], x: Array, weights: Sequence[Array],
                       rows: Array, cols: Array, counts: Array | None,
                       call: TileCall) -> Array:
    """Pad the tile arrays to the call's block sizes, run the kernel over the grid
    (M blocks, tiles) and scatter its compact output to the ``N`` output columns.

    Padding: ``G`` to a power of two >= 16 (``cols`` with ``n_out``, dropped by
    :func:`scatter_columns`), ``Kp`` to a multiple of ``block_k`` (``rows`` with row 0,
    the weights with zeros), ``M`` to a multiple of ``block_m``: a copy of an array on every
    call where its size changes. ``rows`` entries must lie in ``[0, K)``: they cannot be
    checked under jit, and out-of-range rows read garbage on a GPU.

    Args:
      kernel_body: ``kernel_body(xt_ref, *weight_refs, rows_ref, counts_ref, o_ref, *,
        block_k)``; ``xt_ref`` is the ``(K, block_m)`` block of ``x^T`` (the kernels gather
        its rows: leading-dimension gathers lower in Triton, minor-dimension ones do not),
        each of ``weight_refs`` the current tile's slice of one weight array, ``rows_ref`` its
        ``(Kp,)`` row table, ``counts_ref`` the full ``(T,)`` counts or ``None``, ``o_ref``
        the ``(block_m, G)`` output block.
      x: ``(M, K)`` activations.
      weights: the weight arrays ``(T, Kp // row_divisor, G)`` in ``call.row_divisors`` order.
      rows, cols, counts: the index tables, as validated by :func:`prepare_call`.
      call: the static parameters.

    Returns:
      ``(M, n_out)`` in the promoted dtype of ``x`` and the first weight array.
    """
    cfg = call.cfg
    dtype = jnp.promote_types(x.dtype, weights[0].dtype)
    m, k = x.shape
    t = rows.shape[0]
    g = padded_tile_width(cols.shape[1])
    kp = round_up(rows.shape[1], cfg.block_k)
    weights = [pad_axis(pad_axis(w, 1, kp // div), 2, g)
               for w, div in zip(weights, call.row_divisors, strict=True)]
    rows = pad_axis(rows.astype(jnp.int32), 1, kp, 0)
    cols = pad_axis(cols.astype(jnp.int32), 1, g, call.n_out)
    xt = pad_axis(x.astype(dtype).T, 1, round_up(m, cfg.block_m))
    in_specs = [pl.BlockSpec((k, cfg.block_m), lambda i, j: (0, i))]
    in_specs += [pl.BlockSpec((None, w.shape[1], g), lambda i, j: (j, 0, 0)) for w in weights]
    in_specs.append(pl.BlockSpec((None, kp), lambda i, j: (j, 0)))
    operands = [xt, *weights, rows]
    body = functools.partial(kernel_body, block_k=cfg.block_k)
    if counts is not None:
        in_specs.append(pl.BlockSpec((t,), lambda i, j: (0,)))
        operands.append(counts.astype(jnp.int32))
    else:
        n_refs = 2 + len(weights)
        inner = body

        def body(*refs):
            inner(*refs[:n_refs], None, *refs[n_refs:])

    compact = pl.pallas_call(
        body,
        grid=(xt.shape[1] // cfg.block_m, t),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((cfg.block_m, g), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((xt.shape[1], t * g), dtype),
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps,
                                             num_stages=cfg.num_stages),
        interpret=call.interpret,
        name=call.name,
    )(*operands)
    return scatter_columns(compact[:m], cols, call.n_out)


__all__ = [
    "BlockConfig",
    "MIN_DOT",
    "SUPPORTED_DTYPES",
    "TileCall",
    "compute_dtype",
    "default_block_config",
    "gather_xt_rows",
    "launch_tile_kernel",
    "next_pow2",
    "num_k_steps",
    "pad_axis",
    "padded_tile_width",
    "prepare_call",
    "resolve_block_config",
    "round_up",
    "scatter_columns",
    "validate_tiles",
    "validate_weight",
]
