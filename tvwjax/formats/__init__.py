"""Compressed weight formats (pytrees with static index tables) and ``compress``/``decompress``.

One concept per module: :mod:`._base` (the pytree machinery and input checks),
:mod:`._tables` (the checks of index tables against the layout contract), :mod:`.tiles`
(TW, TVW and block-sparse tiles), :mod:`.nm` (N:M), :mod:`.api` (dispatch from a pattern to
its format).
"""

from tvwjax.formats._base import CompressedWeight, StaticArray
from tvwjax.formats.api import FORMATS, compress, decompress
from tvwjax.formats.nm import NMSparse
from tvwjax.formats.tiles import BlockSparse, TileVectorWise, TileWise

__all__ = ["FORMATS", "BlockSparse", "CompressedWeight", "NMSparse", "StaticArray",
           "TileVectorWise", "TileWise", "compress", "decompress"]
