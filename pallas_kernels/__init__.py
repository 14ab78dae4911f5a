"""Pallas GPU kernels for tile-wise (TW) and tile-vector-wise (TVW) matmul.

Two backends: Mosaic GPU (``wgmma`` TW kernel for Hopper, sparse ``tcgen05`` TVW kernel for
Blackwell) and Triton (TW and TVW, the Ampere path and the float32 path; JAX deprecated the
Triton backend in 0.11 but still ships it). Stands alone: imports only JAX and NumPy. One
concept per module:

* :mod:`~pallas_kernels.layout`: the tile layout contract and the one reference decoder of
  each tile format (:func:`tiles_to_dense`, :func:`tvw_compact_blocks`), shared with
  ``tvwjax.formats``;
* :mod:`~pallas_kernels.nm_codec`: the N:M value/metadata codec;
* :mod:`~pallas_kernels.tw_matmul`, :mod:`~pallas_kernels.tvw_matmul`: one kernel each, with
  its block-size defaults, its ``custom_vjp`` and its plain-jnp ``*_reference``;
* :mod:`~pallas_kernels.tw_matmul_hopper`: the TW kernel on Hopper ``wgmma`` (Mosaic GPU);
* :mod:`~pallas_kernels.tvw_matmul_blackwell`: the TVW kernel on Blackwell's sparse
  ``tcgen05`` MMA (Mosaic GPU), fed by :mod:`~pallas_kernels.tcgen05_metadata` (the TVW
  values and metadata in the layout the sparse MMA reads);
* :mod:`~pallas_kernels.mgpu_common`: the activation pre-gather and launch pieces the
  Mosaic GPU kernels share;
* :mod:`~pallas_kernels.tile_vjp`: the backward every kernel shares (plain jnp, compact
  tile form) and the ``custom_vjp`` wrappers built on it;
* :mod:`~pallas_kernels.common`: validation, padding and the column scatter shared by all
  kernels, and the Triton launch;
* :mod:`~pallas_kernels.errors`: the exceptions (``ValueError`` / ``TypeError`` subclasses).

On a CPU the Triton kernels and the Hopper TW kernel run with ``interpret=True``; the
Blackwell TVW kernel cannot (no ``tcgen05`` / tensor memory in the interpreter) and is
checked by lowering it for ``cuda``. The ``*_reference`` functions are the references of
both backends.
"""

from pallas_kernels.common import BlockConfig
from pallas_kernels.errors import (
    KernelConfigError,
    KernelDTypeError,
    KernelInputError,
    KernelShapeError,
)
from pallas_kernels.layout import tiles_to_dense, tvw_compact_blocks
from pallas_kernels.tvw_matmul import tvw_block_config, tvw_matmul, tvw_matmul_reference
from pallas_kernels.tvw_matmul_blackwell import tvw_matmul_blackwell
from pallas_kernels.tw_matmul import tw_block_config, tw_matmul, tw_matmul_reference
from pallas_kernels.tw_matmul_hopper import tw_matmul_hopper

__all__ = [
    "BlockConfig",
    "KernelConfigError",
    "KernelDTypeError",
    "KernelInputError",
    "KernelShapeError",
    "tiles_to_dense",
    "tvw_block_config",
    "tvw_compact_blocks",
    "tvw_matmul",
    "tvw_matmul_blackwell",
    "tvw_matmul_reference",
    "tw_block_config",
    "tw_matmul",
    "tw_matmul_hopper",
    "tw_matmul_reference",
]
