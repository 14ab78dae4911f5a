"""Pallas GPU kernels (Triton backend) for tile-wise (TW) and tile-vector-wise (TVW) matmul.

Each kernel sits in its own module beside a plain-jnp ``*_reference``; ``common`` holds the
pieces both share (validation, block-size defaults, padding, gather index math, column
scatter, the dense expansion of tile data). On a CPU the kernels run with ``interpret=True``.
"""

from pallas_kernels.common import (
    BlockConfig,
    default_block_config,
    tiles_to_dense,
    tvw_compact_blocks,
)
from pallas_kernels.tvw_matmul import tvw_matmul, tvw_matmul_reference
from pallas_kernels.tw_matmul import tw_matmul, tw_matmul_reference

__all__ = [
    "BlockConfig",
    "default_block_config",
    "tiles_to_dense",
    "tvw_compact_blocks",
    "tvw_matmul",
    "tvw_matmul_reference",
    "tw_matmul",
    "tw_matmul_reference",
]
