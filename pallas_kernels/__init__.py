"""Pallas GPU kernels (Triton backend) for tile-wise (TW) and tile-vector-wise (TVW) matmul.

Stands alone: imports only JAX and NumPy. One concept per module:

* :mod:`~pallas_kernels.layout`: the tile layout contract and the one reference decoder of
  each tile format (:func:`tiles_to_dense`, :func:`tvw_compact_blocks`), shared with
  ``tvwjax.formats``;
* :mod:`~pallas_kernels.nm_codec`: the N:M value/metadata codec;
* :mod:`~pallas_kernels.tw_matmul`, :mod:`~pallas_kernels.tvw_matmul`: one kernel each, with
  its block-size defaults, its ``custom_vjp`` and its plain-jnp ``*_reference``;
* :mod:`~pallas_kernels.tile_vjp`: the backward both kernels share (plain jnp, compact tile
  form);
* :mod:`~pallas_kernels.common`: validation, launch parameters, padding and the launch
  itself, shared by both kernels;
* :mod:`~pallas_kernels.errors`: the exceptions (``ValueError`` / ``TypeError`` subclasses).

On a CPU the kernels run with ``interpret=True``.
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
from pallas_kernels.tw_matmul import tw_block_config, tw_matmul, tw_matmul_reference

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
    "tvw_matmul_reference",
    "tw_block_config",
    "tw_matmul",
    "tw_matmul_reference",
]
