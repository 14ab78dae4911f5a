"""Machinery shared by the Mosaic GPU kernels (Hopper TW, Blackwell TVW).

Both kernels run on the tile layout of :mod:`pallas_kernels.layout` and share, around their
kernel bodies:

* the **activation pre-gather** (:func:`gather_tile_activations`): Mosaic GPU has no
  row-gather into shared memory on Hopper (TMA moves rectangular boxes; its gather4 mode is
  Blackwell-only), so the kept activation columns of every tile are gathered by XLA before
  the kernel, once per call, into an ``(M_pad, T * Kp_pad)`` array (tile ``t``'s columns
  ``[t * Kp_pad, (t + 1) * Kp_pad)``: one XLA gather, no transpose) the kernels read with
  rectangular TMA copies. Its cost (``T * M * Kp`` elements written and read again) is part
  of every timing of these kernels; the GPU check also times it alone;
* the static launch description (:class:`MosaicCall`), the dtype check (the tensor-core
  MMAs take bfloat16 / float16, accumulating in float32), shared-memory swizzle transforms
  and the switch to Mosaic GPU interpret mode.

Interpret mode: ``interpret=True`` runs a kernel in Mosaic GPU's interpreter (it simulates
shared memory, TMA copies, barriers and ``wgmma``). That interpreter lives at a private path
in JAX 0.10 and 0.11 (``jax._src.pallas.mosaic_gpu.interpret``); it is imported only when
interpret mode is asked for. It cannot run ``tcgen05`` MMAs or tensor memory (TMEM).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental.pallas import mosaic_gpu as plgpu

from pallas_kernels.common import pad_axis
from pallas_kernels.errors import KernelDTypeError
from pallas_kernels.layout import kept_row_index

Array = jax.Array

#: Operand dtypes of the tensor-core MMAs (``wgmma``, ``tcgen05``); accumulation is float32.
MMA_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@dataclasses.dataclass(frozen=True)
class MosaicCall:
    """One validated Mosaic GPU kernel call's static parameters (hashable: the
    non-differentiable argument of the kernels' ``custom_vjp``).

    Attributes:
      name: kernel name (shows in profiles and in the lowered module).
      n_out: ``N``, the output width.
      block_m: rows of ``x`` per program.
      block_k: compact rows of a tile per pipeline step.
      interpret: run the kernel in Mosaic GPU interpret mode on the CPU.
      stages: shared-memory slots of the copy pipeline (copies run up to ``stages - 1``
        steps ahead of the MMA).
    """

    name: str
    n_out: int
    block_m: int
    block_k: int
    interpret: bool
    stages: int = 2


def mma_dtype(x: Array, values: Array, kernel: str) -> jnp.dtype:
    """The dtype ``x`` and ``values`` promote to, checked to be an MMA operand dtype.

    Raises:
      KernelDTypeError: the promoted dtype is not bfloat16 or float16 (float32 inputs run
        on the Triton kernels).
    """
    dtype = jnp.dtype(jnp.promote_types(x.dtype, values.dtype))
    if dtype not in MMA_DTYPES:
        raise KernelDTypeError(
            f"{kernel}: x and values must promote to bfloat16 or float16 (the tensor-core "
            f"operand types), got x {jnp.dtype(x.dtype)} and values "
            f"{jnp.dtype(values.dtype)} -> {dtype}; use the Triton kernels for float32")
    return dtype


def swizzled(minor: int, dtype: jnp.dtype) -> tuple[Any, ...]:
    """Shared-memory transforms (8-row tiling + the largest swizzle that fits) for a buffer
    whose minor dimension holds ``minor`` elements of ``dtype``: the layout MMA operands and
    TMA copies want."""
    bits = jnp.dtype(dtype).itemsize * 8
    swizzle = plgpu.find_swizzle(minor * bits)
    return (plgpu.TilingTransform((8, swizzle * 8 // bits)), plgpu.SwizzleTransform(swizzle))


def interpret_params(interpret: bool) -> Any:
    """The ``interpret=`` argument of ``plgpu.kernel``: ``None`` (compile for the GPU) or
    Mosaic GPU's interpreter parameters (the private import is done only here)."""
    if not interpret:
        return None
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

    return InterpretGPUParams()


def gather_tile_activations(x: Array, rows: Array, counts: Array | None, m_pad: int,
                            kp_pad: int, dtype: jnp.dtype) -> Array:
    """The activations every tile reads: ``xg[i, t * kp_pad + j] = x[i, rows[t, j]]``.

    Padding rows of a tile (``j >= counts[t]``, and ``j >= Kp`` up to ``kp_pad``) and
    padding rows of ``x`` (``i >= M`` up to ``m_pad``) are zero, so a kernel may run over
    them in whole blocks whatever the padding values of the weights.

    Args:
      x: ``(M, K)`` activations.
      rows: ``(T, Kp)`` original K row of each compact row.
      counts: optional ``(T,)`` kept rows per tile.
      m_pad: rows of the result (``>= M``, a multiple of the kernel's ``block_m``).
      kp_pad: compact rows of the result (``>= Kp``, a multiple of the kernel's ``block_k``).
      dtype: the dtype of the result.

    Returns:
      ``(m_pad, T * kp_pad)`` in ``dtype``.
    """
    k = x.shape[1]
    r = pad_axis(kept_row_index(rows, counts, k), 1, kp_pad, k)
    xp = pad_axis(x.astype(dtype), 0, m_pad)
    return jnp.take(xp, r.reshape(-1), axis=1, mode="fill", fill_value=0)


def full_counts(counts: Array | None, t: int, kp: int) -> Array:
    """``counts`` as int32, or every tile's ``Kp`` when it is ``None`` (the kernels always
    read a count: without one they run over all compact rows)."""
    if counts is None:
        return jnp.full((t,), kp, jnp.int32)
    return jnp.asarray(counts).astype(jnp.int32)


__all__ = ["MMA_DTYPES", "MosaicCall", "full_counts", "gather_tile_activations",
           "interpret_params", "mma_dtype", "swizzled"]
