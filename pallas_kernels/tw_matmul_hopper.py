"""Tile-wise (TW) sparse matmul ``y = x @ W`` on Hopper tensor cores (Pallas Mosaic GPU).

One program per (``block_m`` rows of ``x``, tile). Its K loop runs ``ceil(k_t / block_k)``
steps, ``k_t`` the tile's kept-row count read at run time, so a tile costs what it keeps.
Each step brings two boxes into shared memory with TMA copies, through a ring of ``stages``
slots (the copies of steps ``s + 1 .. s + stages - 1`` are in flight while step ``s``
multiplies; a slot is refilled once the ``wgmma`` that read it has retired):

* ``block_m x block_k`` of the tile's pre-gathered activations
  (:func:`pallas_kernels.mgpu_common.gather_tile_activations`: the kept columns of ``x``,
  gathered by XLA before the kernel, zeros on padding rows);
* ``block_k x G`` of the tile's compact weight block;

and issues one ``wgmma`` (bfloat16 / float16 operands, float32 accumulator in registers).
The ``block_m x G`` result goes through shared memory to the compact ``(M, T*G)`` output with
a TMA store; the output columns are then placed (pruned columns zero) as for the Triton
kernel.

Runs in Mosaic GPU interpret mode on a CPU (``interpret=True``: TMA copies, barriers and
``wgmma`` are simulated); compiled, it needs an sm_90 GPU (``wgmma`` is Hopper-only).
The float32 path stays on the Triton kernel (:func:`pallas_kernels.tw_matmul`).
:func:`pallas_kernels.tw_matmul_reference` is its reference, its backward the shared
:func:`pallas_kernels.tile_vjp.tile_matmul_vjp`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.common import (
    pad_axis,
    padded_tile_width,
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
    interpret_params,
    mma_dtype,
    swizzled,
)
from pallas_kernels.tile_vjp import tw_custom_vjp

Array = jax.Array

#: ``wgmma`` rows per warpgroup instruction: ``block_m`` is a multiple of it.
WGMMA_M = 64
#: Widest tile a single ``wgmma`` accumulator holds (the instruction's maximum N).
MAX_TILE_WIDTH = 256


def hopper_block_sizes(m: int) -> tuple[int, int]:
    """Default ``(block_m, block_k)`` of :func:`tw_matmul_hopper` for ``x`` with ``m`` rows:
    ``block_m`` 64 up to ``m = 64`` (decode-like calls waste less padding), else 128;
    ``block_k`` 64 (a 128-byte swizzled row of 16-bit values)."""
    return (WGMMA_M if m <= WGMMA_M else 2 * WGMMA_M), 64


#: Shared memory a program of :func:`tw_matmul_hopper` may fill (of the 227 KiB an sm_90
#: block can hold), for the default number of pipeline stages.
SMEM_BUDGET = 200 * 1024


def hopper_stages(block_m: int, block_k: int, g: int, itemsize: int = 2) -> int:
    """Default pipeline depth: the most of 4, 3, 2 stages whose slots (``block_m x block_k``
    activations and ``block_k x G`` weights each) and output staging buffer fit in
    :data:`SMEM_BUDGET`."""
    per_stage = (block_m * block_k + block_k * g) * itemsize
    out = block_m * g * itemsize
    return next((s for s in (4, 3) if s * per_stage + out <= SMEM_BUDGET), 2)


def tw_hopper_kernel(xg_ref, values_ref, counts_ref, o_ref, a_smem, b_smem, o_smem,
                     load_bar, *, block_k: int) -> None:
    """Kernel body: one ``(block_m, G)`` output block of one tile.

    Args:
      xg_ref: ``(M_pad, T * Kp)`` pre-gathered activations in GMEM.
      values_ref: ``(T, Kp, G)`` compact weight blocks in GMEM.
      counts_ref: ``(T,)`` kept rows per tile in GMEM.
      o_ref: ``(M_pad, T * G)`` compact output in GMEM.
      a_smem, b_smem: the ``stages`` slots of the activation / weight boxes.
      o_smem: the ``(block_m, G)`` output staging buffer.
      load_bar: one barrier per slot, completed by that slot's two TMA copies.
      block_k: compact rows per step.
    """
    block_m, g = o_smem.shape
    stages = a_smem.shape[0]
    kp = values_ref.shape[1]
    mi, ti = lax.axis_index("m"), lax.axis_index("t")
    steps = lax.div(jnp.clip(counts_ref[ti], 0, kp) + (block_k - 1), block_k)

    def fetch(step, slot):
        plgpu.copy_gmem_to_smem(
            xg_ref.at[pl.ds(mi * block_m, block_m), pl.ds(ti * kp + step * block_k, block_k)],
            a_smem.at[slot], load_bar.at[slot])
        plgpu.copy_gmem_to_smem(values_ref.at[ti, pl.ds(step * block_k, block_k), :],
                                b_smem.at[slot], load_bar.at[slot])

    def accumulate(acc_ref):
        for first in range(min(stages - 1, kp // block_k)):  # fill the ring
            pl.when(first < steps)(functools.partial(fetch, first, first))

        def step_body(step, carry):
            slot = lax.rem(step, stages)
            plgpu.barrier_wait(load_bar.at[slot])
            plgpu.wgmma(acc_ref, a_smem.at[slot], b_smem.at[slot])
            plgpu.wgmma_wait(1)  # the MMA of step - 1 retired: its slot may be refilled
            ahead = step + stages - 1

            @pl.when(ahead < steps)
            def _():
                fetch(ahead, lax.rem(ahead, stages))

            return carry

        lax.fori_loop(0, steps, step_body, None)
        plgpu.wgmma_wait(0)
        return acc_ref[...]

    acc = pl.run_scoped(accumulate, plgpu.ACC((block_m, g), jnp.float32))
    o_smem[...] = acc.astype(o_smem.dtype)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_smem, o_ref.at[pl.ds(mi * block_m, block_m), pl.ds(ti * g, g)])
    plgpu.wait_smem_to_gmem(0)


def _launch(x: Array, values: Array, rows: Array, cols: Array, counts: Array | None,
            call: MosaicCall) -> Array:
    m = x.shape[0]
    t = rows.shape[0]
    dtype = jnp.promote_types(x.dtype, values.dtype)
    g = padded_tile_width(cols.shape[1])
    kp = round_up(rows.shape[1], call.block_k)
    m_pad = round_up(m, call.block_m)
    xg = gather_tile_activations(x, rows, counts, m_pad, kp, dtype)
    w = pad_axis(pad_axis(values.astype(dtype), 1, kp), 2, g)
    cols = pad_axis(cols.astype(jnp.int32), 1, g, call.n_out)
    kernel = plgpu.kernel(
        functools.partial(tw_hopper_kernel, block_k=call.block_k),
        out_type=jax.ShapeDtypeStruct((m_pad, t * g), dtype),
        grid=(m_pad // call.block_m, t),
        grid_names=("m", "t"),
        scratch_types=[
            plgpu.SMEM((call.stages, call.block_m, call.block_k), dtype,
                       transforms=swizzled(call.block_k, dtype)),
            plgpu.SMEM((call.stages, call.block_k, g), dtype, transforms=swizzled(g, dtype)),
            plgpu.SMEM((call.block_m, g), dtype, transforms=swizzled(g, dtype)),
            plgpu.Barrier(num_arrivals=2, num_barriers=call.stages),
        ],
        compiler_params=plgpu.CompilerParams(
            lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
        interpret=interpret_params(call.interpret),
        kernel_name=call.name,
    )
    compact = kernel(xg, w, full_counts(counts, t, rows.shape[1]))
    return scatter_columns(compact[:m], cols, call.n_out)


_tw_matmul_hopper = tw_custom_vjp(_launch)


@functools.partial(jax.jit,
                   static_argnames=["n_out", "block_m", "block_k", "stages", "interpret"])
def tw_matmul_hopper(x: Array, values: Array, rows: Array, cols: Array, *, n_out: int,
                     counts: Array | None = None, block_m: int | None = None,
                     block_k: int | None = None, stages: int | None = None,
                     interpret: bool = False) -> Array:
    """Tile-wise sparse ``x @ W`` from TW tile data on Hopper ``wgmma`` (layout:
    :mod:`pallas_kernels.layout`).

    Differentiable with respect to ``x`` and ``values`` (shared backward
    :func:`pallas_kernels.tile_vjp.tile_matmul_vjp`).

    Args:
      x: ``(M, K)`` activations, any ``M >= 1``.
      values: ``(T, Kp, G)`` compact tile blocks (``G <= 256``).
      rows: ``(T, Kp)`` int original K row of each compact row.
      cols: ``(T, G)`` int original output column of each tile column (padding = ``n_out``).
      n_out: ``N``, the width of the output (static).
      counts: optional ``(T,)`` int kept rows per tile: each tile then runs
        ``ceil(k_t / block_k)`` steps and its padding rows count for nothing; without it
        every tile runs over all ``Kp`` rows (padding values must then be zero).
      block_m: rows of ``x`` per program, 64 or 128 (default: :func:`hopper_block_sizes`).
      block_k: compact rows per step, a power of two in [16, 128] (default 64).
      stages: shared-memory slots of the copy pipeline, 2 to 6 (default:
        :func:`hopper_stages`, the most of 4, 3, 2 that fit).
      interpret: run in Mosaic GPU interpret mode (CPU, slow; for tests).

    Returns:
      ``(M, n_out)`` in the promoted dtype of ``x`` and ``values`` (bfloat16 or float16),
      accumulated in float32.

    Raises:
      KernelShapeError, KernelDTypeError, KernelConfigError: on inputs that break the layout
        contract, float32 operands, ``G > 256`` or bad block sizes.
    """
    m, _, t, kp, g = validate_tiles(x, rows, cols, counts, n_out)
    validate_weight("values", values, t, kp, g, 1)
    mma_dtype(x, values, "tw_matmul_hopper")
    if padded_tile_width(g) > MAX_TILE_WIDTH:
        raise KernelConfigError(f"values: tile width G must be <= {MAX_TILE_WIDTH} for one "
                                f"wgmma accumulator, got {g}")
    default_m, default_k = hopper_block_sizes(m)
    block_m = default_m if block_m is None else block_m
    block_k = default_k if block_k is None else block_k
    if block_m not in (WGMMA_M, 2 * WGMMA_M):
        raise KernelConfigError(f"block_m must be 64 or 128, got {block_m!r}")
    if block_k not in (16, 32, 64, 128):
        raise KernelConfigError(f"block_k must be 16, 32, 64 or 128, got {block_k!r}")
    if stages is None:
        stages = hopper_stages(block_m, block_k, padded_tile_width(g))
    if stages not in range(2, 7):
        raise KernelConfigError(f"stages must be 2 to 6, got {stages!r}")
    call = MosaicCall("tw_matmul_hopper", int(n_out), block_m, block_k, interpret, stages)
    return _tw_matmul_hopper(x, values, rows, cols, counts, call)


__all__ = ["MAX_TILE_WIDTH", "SMEM_BUDGET", "WGMMA_M", "hopper_block_sizes", "hopper_stages",
           "tw_hopper_kernel", "tw_matmul_hopper"]
