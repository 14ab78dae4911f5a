"""Pieces shared by the tile-wise (TW) and tile-vector-wise (TVW) Pallas kernels.

Array layout contract (``y = x @ W``, ``W`` is ``K x N`` in Flax's (in, out) layout, ``G`` the
tile width, ``T`` the number of tiles, ``Kp`` the padded maximum number of kept rows per tile):

* ``rows`` ``(T, Kp)`` int32: the original K index of every compact row of a tile, kept rows in
  increasing order first, padding rows pointing at row 0 (their values are zero);
* ``cols`` ``(T, G)`` int32: the original output column of every tile column, padding columns
  equal to ``N`` (one past the end);
* TW ``values`` ``(T, Kp, G)``: each tile's compact dense block;
* TVW ``values`` ``(T, Kp // 2, G)`` and ``meta`` ``(T, Kp // 8, G)`` uint8: each tile's compact
  block 2:4-compressed along its compact rows by :mod:`tvwjax.nm_codec`.

This module holds what both kernels need: validation, the per-shape block-size defaults, the
padding of the tile tables to the kernel's block sizes, the x^T row-gather index math, the
column scatter of the compact kernel output, and the dense expansion used by the references.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from tvwjax.errors import ConfigError, DTypeError, ShapeError
from tvwjax.formats.tiles import tiles_to_dense
from tvwjax.nm_codec import nm_decompress, unpack_index

Array = jax.Array

#: Floating dtypes the kernels accept (inputs are promoted to a common one of these).
SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
#: Smallest block edge fed to a Triton ``tt.dot`` (the MMA instruction minimum for 16-bit types).
MIN_DOT = 16
#: Compact rows covered by one byte row of TVW metadata (4 value rows = 2 groups of 4 rows).
TVW_ROWS_PER_META = 8


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """Static launch parameters of one kernel call.

    Attributes:
      block_m: rows of ``x`` per program (power of two, >= 16).
      block_k: compact rows of a tile consumed per loop step (power of two; >= 16 for TW,
        >= 128 for TVW so that each of its 8 sub-products has a contraction of >= 16).
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining stages of the K loop.
    """

    block_m: int
    block_k: int
    num_warps: int
    num_stages: int


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def default_block_config(m: int, kp: int, g: int, *, tvw: bool) -> BlockConfig:
    """Per-shape defaults (heuristics, not tuned on hardware: no GPU was available).

    * ``block_m``: the next power of two of ``M`` clamped to [16, 64]; 128 when ``M >= 2048``
      and the tile is at most 64 wide (keeps the float32 accumulator <= 64 x 128 per program
      otherwise).
    * ``block_k`` (TW): the largest of 64, 32, 16 that divides ``Kp`` (so no padding copy of
      the weights is made); if none does, ``min(64, next_pow2(Kp))``.
    * ``block_k`` (TVW): 128 (each step runs 8 sub-products with a contraction of
      ``block_k / 8``, which must be >= 16); 256 when ``Kp`` is a multiple of 256 and
      ``M <= 64`` (decode-like calls are bound by the weight bytes: fewer, longer steps).
    * ``num_warps``: 4, or 8 when the accumulator ``block_m x G`` exceeds 64 x 64 elements.
    * ``num_stages``: 2 (the loads are pointer gathers; deeper pipelines cost registers).

    Args:
      m: rows of ``x``.
      kp: compact rows per tile (``rows.shape[1]``).
      g: tile width after padding to a power of two.
      tvw: whether the choice is for the TVW kernel.

    Returns:
      The :class:`BlockConfig`.
    """
    block_m = min(64, max(MIN_DOT, _next_pow2(m)))
    if m >= 2048 and g <= 64:
        block_m = 128
    if tvw:
        block_k = 256 if (kp % 256 == 0 and m <= 64) else 128
    else:
        divisors = [b for b in (64, 32, 16) if kp % b == 0]
        block_k = divisors[0] if divisors else min(64, max(MIN_DOT, _next_pow2(kp)))
    num_warps = 8 if block_m * g > 64 * 64 else 4
    return BlockConfig(block_m=block_m, block_k=block_k, num_warps=num_warps, num_stages=2)


def resolve_block_config(
    m: int,
    kp: int,
    g: int,
    *,
    tvw: bool,
    block_m: int | None,
    block_k: int | None,
    num_warps: int | None,
    num_stages: int | None,
) -> BlockConfig:
    """Fill unset launch parameters from :func:`default_block_config` and validate all four."""
    d = default_block_config(m, kp, g, tvw=tvw)
    cfg = BlockConfig(
        block_m=d.block_m if block_m is None else block_m,
        block_k=d.block_k if block_k is None else block_k,
        num_warps=d.num_warps if num_warps is None else num_warps,
        num_stages=d.num_stages if num_stages is None else num_stages,
    )
    min_k = MIN_DOT * TVW_ROWS_PER_META if tvw else MIN_DOT
    for name, value, low in (("block_m", cfg.block_m, MIN_DOT), ("block_k", cfg.block_k, min_k)):
        if not isinstance(value, int) or not _is_pow2(value) or value < low:
            raise ConfigError(f"{name} must be a power of two >= {low}, got {value!r}")
    if not isinstance(cfg.num_warps, int) or not _is_pow2(cfg.num_warps) or cfg.num_warps > 32:
        raise ConfigError(f"num_warps must be a power of two in [1, 32], got {cfg.num_warps!r}")
    if not isinstance(cfg.num_stages, int) or cfg.num_stages < 1:
        raise ConfigError(f"num_stages must be an integer >= 1, got {cfg.num_stages!r}")
    return cfg


def padded_tile_width(g: int) -> int:
    """Tile width the kernels run at: ``G`` rounded up to a power of two >= 16."""
    return max(MIN_DOT, _next_pow2(g))


def compute_dtype(x: Array, values: Array) -> jnp.dtype:
    """Validate the operand dtypes and return the dtype the product is computed and returned in.

    Raises:
      DTypeError: if either operand is not float32, bfloat16 or float16.
    """
    for name, arr in (("x", x), ("values", values)):
        if jnp.dtype(arr.dtype) not in SUPPORTED_DTYPES:
            raise DTypeError(
                f"{name} must be float32, bfloat16 or float16, got {jnp.dtype(arr.dtype)}"
            )
    return jnp.dtype(jnp.promote_types(x.dtype, values.dtype))


def _check_int(name: str, arr: Array, shape: tuple[int, ...], what: str) -> None:
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise DTypeError(f"{name} must be an integer array, got {jnp.dtype(arr.dtype)}")
    if tuple(arr.shape) != shape:
        raise ShapeError(f"{name} must have shape {shape} ({what}), got {tuple(arr.shape)}")


def validate_tiles(
    x: Array, rows: Array, cols: Array, n_out: int
) -> tuple[int, int, int, int, int]:
    """Check ``x``, ``rows``, ``cols`` and ``n_out`` against the layout contract.

    Returns:
      ``(M, K, T, Kp, G)``.

    Raises:
      ShapeError, DTypeError, ConfigError: naming the parameter and what was expected.
    """
    if x.ndim != 2:
        raise ShapeError(f"x must be 2-D (M, K), got shape {tuple(x.shape)}")
    m, k = x.shape
    if m < 1 or k < 1:
        raise ShapeError(f"x must have M >= 1 and K >= 1, got shape {tuple(x.shape)}")
    if rows.ndim != 2:
        raise ShapeError(f"rows must be 2-D (T, Kp), got shape {tuple(rows.shape)}")
    t, kp = rows.shape
    if t < 1 or kp < 1:
        raise ShapeError(f"rows must have T >= 1 and Kp >= 1, got shape {tuple(rows.shape)}")
    if cols.ndim != 2 or cols.shape[0] != t:
        raise ShapeError(f"cols must have shape (T={t}, G), got {tuple(cols.shape)}")
    _check_int("rows", rows, (t, kp), "tiles x kept rows")
    _check_int("cols", cols, (t, cols.shape[1]), "tiles x tile width")
    if not isinstance(n_out, (int, np.integer)) or n_out < 1:
        raise ConfigError(f"n_out must be a positive int (N, the output width), got {n_out!r}")
    return m, k, t, kp, cols.shape[1]


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


def prepare_xt(x: Array, block_m: int, dtype: jnp.dtype) -> Array:
    """``x^T`` ``(K, Mp)`` in ``dtype``, ``M`` zero-padded to a multiple of ``block_m``.

    The kernels gather rows of ``x^T``: gathers on the leading dimension lower in Triton,
    minor-dimension gathers do not.
    """
    m = x.shape[0]
    return pad_axis(x.astype(dtype).T, 1, round_up(m, block_m))


def prepare_tables(
    rows: Array, cols: Array, counts: Array | None, kp_to: int, g_to: int, n_out: int
) -> tuple[Array, Array, Array | None]:
    """Pad the index tables: ``rows`` to ``kp_to`` (pointing at row 0), ``cols`` to ``g_to``
    (pointing at ``n_out``, dropped by :func:`scatter_columns`); cast all to int32."""
    rows = pad_axis(rows.astype(jnp.int32), 1, kp_to, 0)
    cols = pad_axis(cols.astype(jnp.int32), 1, g_to, n_out)
    if counts is not None:
        counts = counts.astype(jnp.int32)
    return rows, cols, counts


def check_counts(counts: Array | None, t: int) -> None:
    """Validate the optional per-tile kept-row counts ``(T,)``."""
    if counts is not None:
        _check_int("counts", counts, (t,), "kept rows per tile")


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
    on the leading dimension of the ``(K, block_m)`` ``x^T`` block.
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


def launch_tile_kernel(
    kernel_body: Callable[..., None],
    x: Array,
    tile_arrays: Sequence[Array],
    rows: Array,
    cols: Array,
    counts: Array | None,
    *,
    n_out: int,
    cfg: BlockConfig,
    dtype: jnp.dtype,
    interpret: bool,
    name: str,
) -> Array:
    """Run a tile kernel over the grid (M blocks, tiles) and scatter its compact output.

    Args:
      kernel_body: ``kernel_body(xt_ref, *tile_refs, rows_ref, counts_ref, o_ref)``; ``xt_ref``
        is the ``(K, block_m)`` block of ``x^T``, each of ``tile_refs`` the current tile's slice
        of one of ``tile_arrays``, ``rows_ref`` its ``(Kp,)`` row table, ``counts_ref`` the full
        ``(T,)`` counts or ``None``, ``o_ref`` the ``(block_m, G)`` output block.
      x: ``(M, K)`` activations.
      tile_arrays: per-tile weight arrays, each ``(T, R, G)`` already padded (``G`` a power of
        two, matching ``cols``).
      rows, cols, counts: index tables already padded by :func:`prepare_tables`.
      n_out: ``N``, the output width.
      cfg: launch parameters.
      dtype: compute and output dtype.
      interpret: run the kernel body on the CPU (``pallas_call(interpret=True)``).
      name: kernel name (shows in profiles and in the lowered IR).

    Returns:
      ``(M, n_out)`` in ``dtype``.
    """
    m, k = x.shape
    t, kp = rows.shape
    g = cols.shape[1]
    xt = prepare_xt(x, cfg.block_m, dtype)
    grid = (xt.shape[1] // cfg.block_m, t)
    in_specs = [pl.BlockSpec((k, cfg.block_m), lambda i, j: (0, i))]
    in_specs += [
        pl.BlockSpec((None, a.shape[1], g), lambda i, j: (j, 0, 0)) for a in tile_arrays
    ]
    in_specs.append(pl.BlockSpec((None, kp), lambda i, j: (j, 0)))
    operands = [xt, *tile_arrays, rows]
    if counts is not None:
        in_specs.append(pl.BlockSpec((t,), lambda i, j: (0,)))
        operands.append(counts)
        body = kernel_body
    else:
        n_tile = len(tile_arrays)

        def body(*refs):
            kernel_body(*refs[: 2 + n_tile], None, *refs[2 + n_tile :])

    compact = pl.pallas_call(
        body,
        grid=grid,
        in_specs=in_specs,
        out_specs=pl.BlockSpec((cfg.block_m, g), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct((xt.shape[1], t * g), dtype),
        compiler_params=plgpu.CompilerParams(
            num_warps=cfg.num_warps, num_stages=cfg.num_stages
        ),
        interpret=interpret,
        name=name,
    )(*operands)
    return scatter_columns(compact[:m], cols, n_out)


def tvw_compact_blocks(values: Array, meta: Array) -> Array:
    """Decode TVW tile values ``(T, Kp//2, G)`` + ``meta`` ``(T, Kp//8, G)`` into the compact
    dense blocks ``(T, Kp, G)`` with :func:`tvwjax.nm_codec.nm_decompress`."""
    v_rows = values.shape[1]
    return jax.vmap(lambda v, mt: nm_decompress(v, unpack_index(mt, v_rows)))(values, meta)


__all__ = [
    "BlockConfig",
    "MIN_DOT",
    "SUPPORTED_DTYPES",
    "TVW_ROWS_PER_META",
    "check_counts",
    "compute_dtype",
    "default_block_config",
    "gather_xt_rows",
    "launch_tile_kernel",
    "num_k_steps",
    "pad_axis",
    "padded_tile_width",
    "prepare_tables",
    "prepare_xt",
    "resolve_block_config",
    "round_up",
    "scatter_columns",
    "tiles_to_dense",
    "tvw_compact_blocks",
    "validate_tiles",
]
