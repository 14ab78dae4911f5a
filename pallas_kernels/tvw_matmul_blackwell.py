"""Tile-vector-wise (TVW) sparse matmul on Blackwell sparse tensor cores (Pallas Mosaic GPU).

TVW is TW at the memory level and 2:4 at the register level of the sparse tensor core. Per
tile the kernel computes ``y_t^T = W_t^T x_t^T`` with ``tcgen05_mma``:

* ``A`` = ``W_t^T``, 2:4 sparse along K: 128 tile columns x ``block_k / 2`` **values** per
  step (half the compact block) plus their 2-bit positions, copied to tensor memory with
  ``async_copy_sparse_metadata_to_tmem`` and passed as ``a_sparse_metadata``. The TVW
  values and metadata are converted to that layout by
  :func:`pallas_kernels.tcgen05_metadata.tcgen05_operands`;
* ``B`` = ``x_t^T``: ``block_k`` kept activation rows of the tile x ``block_m`` rows of
  ``x``, from the pre-gathered activations
  (:func:`pallas_kernels.mgpu_common.gather_tile_activations`), read transposed;
* the float32 accumulator ``128 x block_m`` lives in tensor memory (TMEM).

One program per (``block_m`` rows of ``x``, tile, 128 tile columns). The K loop runs
``ceil(k_t / block_k)`` steps (``k_t`` read at run time), TMA copies double-buffered: the
copies of step ``s + 1`` are issued after the MMA of step ``s - 1`` completed and overlap
the MMA of step ``s``. The result goes TMEM -> registers -> shared memory -> the compact
transposed output ``(T * G_pad, M_pad)``, then (XLA) transposed and placed in the ``N``
output columns.

**Cannot run in interpret mode**: Mosaic GPU's interpreter has no ``tcgen05`` MMA, no
tensor memory and no sparse-metadata copy; compiled, it needs an sm_100 GPU. On a CPU the
kernel is checked by lowering it for ``cuda`` (the tests read the sparse ``tcgen05.mma.sp``
instruction and the half-size value copies out of the lowered module); the operand
conversion is tested against an independent decoder. Reference:
:func:`pallas_kernels.tvw_matmul_reference`; backward: the shared TVW backward of
:mod:`pallas_kernels.tile_vjp`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.common import (
    pad_axis,
    round_up,
    scatter_columns,
    validate_tiles,
    validate_weight,
)
from pallas_kernels.errors import KernelConfigError
from pallas_kernels.mgpu_common import (
    MosaicCall,
    full_counts,
    gather_tile_activations,
    mma_dtype,
    swizzled,
)
from pallas_kernels.tcgen05_metadata import META_BLOCK, tcgen05_operands
from pallas_kernels.tile_vjp import tvw_custom_vjp
from pallas_kernels.tvw_matmul import ROWS_PER_META

Array = jax.Array

#: Compact rows per K step: one 128 x 128 block of metadata.
BLOCK_K = META_BLOCK


def tvw_blackwell_kernel(xg_ref, a_ref, meta_ref, counts_ref, o_ref, a_smem, b_smem, m_smem,
                         o_smem, load_bar, mma_bar, acc_tmem, meta_tmem) -> None:
    """Kernel body: one ``(128, block_m)`` block of ``y_t^T`` (128 columns of one tile).

    Args:
      xg_ref: ``(M_pad, T * Kp_pad)`` pre-gathered activations in GMEM.
      a_ref: ``(T, G_pad, Kp_pad / 2)`` 2:4 values of ``W_t^T`` in GMEM.
      meta_ref: ``(T, G_pad / 128, Kp_pad / 128, 128, 64)`` uint2 formatted positions.
      counts_ref: ``(T,)`` kept rows per tile.
      o_ref: ``(T * G_pad, M_pad)`` compact transposed output.
      a_smem, b_smem, m_smem: two slots of the value / activation / metadata boxes.
      o_smem: ``(128, block_m)`` output staging buffer.
      load_bar: per slot, completed by that slot's three TMA copies.
      mma_bar: completed by each MMA (awaited once per MMA, in order).
      acc_tmem: ``(128, block_m)`` float32 accumulator in TMEM.
      meta_tmem: ``(128, 64)`` uint2 metadata of the current step in TMEM.
    """
    block_m = o_smem.shape[1]
    g_pad = a_ref.shape[1]
    kp = xg_ref.shape[1] // a_ref.shape[0]
    mi, ti, gi = lax.axis_index("m"), lax.axis_index("t"), lax.axis_index("g")
    steps = lax.div(jnp.clip(counts_ref[ti], 0, kp) + (BLOCK_K - 1), BLOCK_K)
    rows_a = pl.ds(gi * META_BLOCK, META_BLOCK)

    def fetch(step, slot):
        plgpu.copy_gmem_to_smem(
            xg_ref.at[pl.ds(mi * block_m, block_m), pl.ds(ti * kp + step * BLOCK_K, BLOCK_K)],
            b_smem.at[slot], load_bar.at[slot])
        plgpu.copy_gmem_to_smem(a_ref.at[ti, rows_a, pl.ds(step * (BLOCK_K // 2), BLOCK_K // 2)],
                                a_smem.at[slot], load_bar.at[slot])
        plgpu.copy_gmem_to_smem(meta_ref.at[ti, pl.ds(gi, 1), pl.ds(step, 1)], m_smem.at[slot],
                                load_bar.at[slot])

    @pl.when(steps > 0)
    def _():
        fetch(0, 0)

    def step_body(step, carry):
        slot = lax.rem(step, 2)

        @pl.when(step > 0)
        def _():  # MMA step - 1 is done: its slot and the metadata in TMEM are free
            plgpu.barrier_wait(mma_bar)

        @pl.when(step + 1 < steps)
        def _():
            fetch(step + 1, 1 - slot)

        plgpu.barrier_wait(load_bar.at[slot])
        plgpu.async_copy_sparse_metadata_to_tmem(m_smem.at[slot], meta_tmem)
        plgpu.tcgen05_mma(acc_tmem, a_smem.at[slot],
                          plgpu.transpose_ref(b_smem.at[slot], (1, 0)), mma_bar,
                          a_sparse_metadata=meta_tmem, accumulate=step > 0)
        return carry

    lax.fori_loop(0, steps, step_body, None)

    @pl.when(steps > 0)
    def _():
        plgpu.barrier_wait(mma_bar)

    acc = plgpu.async_load_tmem(acc_tmem)
    plgpu.wait_load_tmem()
    acc = jnp.where(steps > 0, acc, jnp.zeros_like(acc))  # empty tile: TMEM never written
    o_smem[...] = acc.astype(o_smem.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(
        o_smem, o_ref.at[pl.ds(ti * g_pad + gi * META_BLOCK, META_BLOCK),
                         pl.ds(mi * block_m, block_m)])
    plgpu.wait_smem_to_gmem(0)


def tcgen05_call(xg: Array, a_values: Array, a_meta: Array, counts: Array, *, block_m: int,
                 name: str = "tvw_matmul_blackwell") -> Array:
    """Launch :func:`tvw_blackwell_kernel` on prepared operands.

    Args:
      xg: ``(M_pad, T * Kp_pad)`` pre-gathered activations (``M_pad`` a multiple of
        ``block_m``; :func:`~pallas_kernels.mgpu_common.gather_tile_activations`).
      a_values, a_meta: the operands of :func:`~pallas_kernels.tcgen05_metadata.tcgen05_operands`.
      counts: ``(T,)`` int32 kept rows per tile.
      block_m: rows of ``x`` per program.
      name: the kernel name.

    Returns:
      ``y^T`` per tile: ``(T * G_pad, M_pad)`` in the dtype of ``xg``.
    """
    m_pad = xg.shape[0]
    t, g_pad = a_values.shape[:2]
    dtype = xg.dtype
    kernel = plgpu.kernel(
        tvw_blackwell_kernel,
        out_type=jax.ShapeDtypeStruct((t * g_pad, m_pad), dtype),
        grid=(m_pad // block_m, t, g_pad // META_BLOCK),
        grid_names=("m", "t", "g"),
        scratch_types=[
            plgpu.SMEM((2, META_BLOCK, BLOCK_K // 2), dtype,
                       transforms=swizzled(BLOCK_K // 2, dtype)),
            plgpu.SMEM((2, block_m, BLOCK_K), dtype, transforms=swizzled(BLOCK_K, dtype)),
            plgpu.SMEM((2, 1, 1, META_BLOCK, BLOCK_K // 2), jnp.uint2),
            plgpu.SMEM((META_BLOCK, block_m), dtype, transforms=swizzled(block_m, dtype)),
            plgpu.Barrier(num_arrivals=3, num_barriers=2),
            plgpu.Barrier(orders_tensor_core=True),
            plgpu.TMEM((META_BLOCK, block_m), jnp.float32),
            plgpu.TMEM((META_BLOCK, BLOCK_K // 2), jnp.uint2,
                       layout=plgpu.TMEMLayout.SPARSE_METADATA_LAYOUT),
        ],
        # Lane semantics (0.10's default; 0.11 defaults to Warpgroup): the one this kernel
        # is lowered and tested with on both versions.
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane),
        kernel_name=name,
    )
    return kernel(xg, a_values, a_meta, counts)


def blackwell_forward(x: Array, values: Array, meta: Array, rows: Array, cols: Array,
                      counts: Array | None, *, n_out: int, block_m: int,
                      kernel_call: Callable[..., Array] = tcgen05_call) -> Array:
    """The forward pass around the kernel: operand conversion, activation pre-gather,
    ``kernel_call(xg, a_values, a_meta, counts, block_m=...)`` (``y^T`` per tile), then
    the transpose and the placement in the ``N`` output columns. ``kernel_call`` is
    replaceable so that the data path can be tested on a CPU with an emulated MMA."""
    m = x.shape[0]
    t, kp = rows.shape
    dtype = jnp.promote_types(x.dtype, values.dtype)
    a_values, a_meta = tcgen05_operands(values, meta, dtype)
    g_pad, kp_pad = a_values.shape[1], 2 * a_values.shape[2]
    xg = gather_tile_activations(x, rows, counts, round_up(m, block_m), kp_pad, dtype)
    out_t = kernel_call(xg, a_values, a_meta, full_counts(counts, t, kp), block_m=block_m)
    return scatter_columns(out_t.T[:m], pad_axis(cols.astype(jnp.int32), 1, g_pad, n_out),
                           n_out)


def _launch(x: Array, values: Array, meta: Array, rows: Array, cols: Array,
            counts: Array | None, call: MosaicCall) -> Array:
    return blackwell_forward(x, values, meta, rows, cols, counts, n_out=call.n_out,
                             block_m=call.block_m,
                             kernel_call=functools.partial(tcgen05_call, name=call.name))


_tvw_matmul_blackwell = tvw_custom_vjp(_launch)


@functools.partial(jax.jit, static_argnames=["n_out", "block_m"])
def tvw_matmul_blackwell(x: Array, values: Array, meta: Array, rows: Array, cols: Array, *,
                         n_out: int, counts: Array | None = None,
                         block_m: int | None = None) -> Array:
    """Tile-vector-wise sparse ``x @ W`` from TVW (2:4) tile data on Blackwell sparse tensor
    cores (``tcgen05`` MMA with 2:4 metadata; sm_100). Not runnable in interpret mode.

    Differentiable with respect to ``x`` and the compressed ``values`` (the shared TVW
    backward of :mod:`pallas_kernels.tile_vjp`).

    Args:
      x: ``(M, K)`` activations, any ``M >= 1``.
      values: ``(T, Kp / 2, G)`` 2:4-compressed compact blocks (layout:
        :mod:`pallas_kernels.layout`).
      meta: ``(T, Kp / 8, G)`` uint8 packed positions.
      rows: ``(T, Kp)`` int original K row of each compact row (``Kp`` a multiple of 8).
      cols: ``(T, G)`` int original output column of each tile column (padding = ``n_out``).
      n_out: ``N``, the width of the output (static).
      counts: optional ``(T,)`` int kept rows per tile (each tile then runs
        ``ceil(k_t / 128)`` steps).
      block_m: rows of ``x`` per program (the MMA's N): 64 or 128; default 64 up to
        ``M = 64``, else 128.

    Returns:
      ``(M, n_out)`` in the promoted dtype of ``x`` and ``values`` (bfloat16 or float16),
      accumulated in float32.

    Raises:
      KernelShapeError, KernelDTypeError, KernelConfigError: on inputs that break the layout
        contract, float32 operands or a bad ``block_m``.
    """
    m, _, t, kp, g = validate_tiles(x, rows, cols, counts, n_out)
    validate_weight("values", values, t, kp, g, 2)
    validate_weight("meta", meta, t, kp, g, ROWS_PER_META, jnp.dtype(jnp.uint8))
    mma_dtype(x, values, "tvw_matmul_blackwell")
    block_m = (64 if m <= 64 else 128) if block_m is None else block_m
    if block_m not in (64, 128):
        raise KernelConfigError(f"block_m must be 64 or 128, got {block_m!r}")
    call = MosaicCall("tvw_matmul_blackwell", int(n_out), block_m, BLOCK_K, False)
    return _tvw_matmul_blackwell(x, values, meta, rows, cols, counts, call)


__all__ = ["BLOCK_K", "blackwell_forward", "tcgen05_call", "tvw_blackwell_kernel",
           "tvw_matmul_blackwell"]
