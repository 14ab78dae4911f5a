"""Tile formats: tile-wise (:class:`TileWise`), tile-vector-wise (:class:`TileVectorWise`)
and block-sparse (:class:`BlockSparse`).

Layout (the contract of :mod:`pallas_kernels.layout`; ``K x N`` weight, ``y = x @ W``):

* ``values`` ``(T, Kp, G)``: tile ``t``'s compact block, its kept K rows in increasing
  original row order in rows ``[0, k_t)``, zeros after (TVW: 2:4-compressed, see below);
* ``rows`` ``(T, Kp)`` int32: original K index of each compact row; padding rows point at 0;
* ``cols`` ``(T, G)`` int32: original output column of each tile column; padding = ``N``;
* ``counts`` ``(T,)`` int32: ``k_t``.

Tiles are inferred from the mask: the columns with any kept entry, in order, grouped into
chunks of ``G`` (for TW-1D and TW-2D masks this is exactly the pattern's tiling). Inside a
TW chunk every row must be kept or pruned whole.

``TileVectorWise``: ``Kp`` is a multiple of 8 and each tile's compact block is N:M (2:4)
sparse along its compact rows, stored as ``values`` ``(T, Kp//2, G)`` and ``meta``
``(T, Kp//8, G)`` uint8 (per tile ``v, idx = nm_compress(block, block_mask)``,
``meta = pack_index(idx)``; see :mod:`pallas_kernels.nm_codec`). Decompression uses the
kernels' reference decoders, :func:`pallas_kernels.layout.tiles_to_dense` and
:func:`pallas_kernels.layout.tvw_compact_blocks`.

``BlockSparse``: ``br x bc`` blocks; tiles are the fixed block columns (``G = bc``, empty
ones included, so ``T = ceil(N / bc)``) and each tile's rows are whole blocks of ``br``
consecutive K rows. It is a :class:`TileWise` (same tables, same matmul).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.layout import tiles_to_dense, tvw_compact_blocks
from pallas_kernels.nm_codec import nm_compress, pack_index
from tvwjax._validate import nm_pair, positive_int, round_up
from tvwjax.errors import FormatError, PatternViolationError
from tvwjax.formats import _tables as _tab
from tvwjax.formats._base import CompressedWeight, check_dense_and_mask

Array = jax.Array


def infer_tiles(mask: np.ndarray, tile: int) -> list[np.ndarray]:
    """Columns of each tile: the columns with any kept entry, in order, in chunks of ``tile``."""
    kept = np.flatnonzero(mask.any(axis=0))
    return [kept[i:i + tile] for i in range(0, kept.size, tile)]


def check_whole_rows(mask: np.ndarray, tiles: list[np.ndarray], tile: int) -> None:
    """Raise :class:`PatternViolationError` if a row segment of a tile is partly kept."""
    for t, chunk in enumerate(tiles):
        sub = mask[:, chunk]
        n_kept = sub.sum(axis=1)
        bad = np.flatnonzero((n_kept > 0) & (n_kept < chunk.size))
        if bad.size:
            r = int(bad[0])
            raise PatternViolationError(
                f"mask: not tile-wise with tile={tile}: in tile {t} (columns "
                f"{int(chunk[0])}..{int(chunk[-1])}) row {r} is kept in {int(n_kept[r])} of "
                f"{chunk.size} columns ({bad.size} such rows); a row segment must be kept or "
                "pruned whole")


def build_tables(row_sets: list[np.ndarray], tiles: list[np.ndarray], n: int, tile: int,
                 row_multiple: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rows`` ``(T, Kp)``, ``cols`` ``(T, G)``, ``counts`` ``(T,)`` from per-tile sets."""
    t = len(tiles)
    counts = np.array([r.size for r in row_sets], np.int32).reshape(t)
    kp = round_up(max(int(counts.max(initial=0)), 1), row_multiple)
    rows = np.zeros((t, kp), np.int32)
    cols = np.full((t, tile), n, np.int32)
    for i, (r, c) in enumerate(zip(row_sets, tiles, strict=True)):
        rows[i, :r.size] = r
        cols[i, :c.size] = c
    return rows, cols, counts


def gather_blocks(w: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  counts: np.ndarray) -> np.ndarray:
    """Compact blocks ``(T, Kp, G)`` of ``w``: zeros on padding rows and columns."""
    k, n = w.shape
    wp = np.zeros((k + 1, n + 1), w.dtype)
    wp[:k, :n] = w
    r = np.where(np.arange(rows.shape[1])[None, :] < counts[:, None], rows, k)
    return wp[r[:, :, None], cols[:, None, :]]


def _nm_row_set(sub: np.ndarray, n: int, m: int, t: int) -> np.ndarray:
    """Compact rows of one TVW tile: the rows kept in any column, such that every group of
    ``m`` consecutive compact rows keeps at most ``n`` per column.

    The union of kept rows usually is the TW row set. When some TW row is pruned in *every*
    column of the tile (likely with narrow tiles), the groups would shift; then the union is
    split by dynamic programming into groups of at most ``m`` kept rows, each group closed
    early being completed with unused rows from the gap before the next kept row (where
    the missing TW rows are).
    """
    union = np.flatnonzero(sub.any(axis=1))
    pad = (-union.size) % m
    grouped = np.concatenate([union, np.full(pad, -1)]).reshape(-1, m)
    counts = np.where(grouped[..., None] >= 0, sub[np.maximum(grouped, 0)], False).sum(axis=1)
    if not (counts > n).any():
        return union
    return _nm_regroup(sub, union, n, m, t)


def _nm_regroup(sub: np.ndarray, union: np.ndarray, n: int, m: int, t: int) -> np.ndarray:
    """Dynamic programme behind :func:`_nm_row_set`.

    A group holds ``j <= m`` consecutive kept rows plus ``m - j`` filler rows (rows pruned
    in the whole tile) taken from the gap before it (``a``, the part the previous group left
    free), from inside its span (``b``) or from the gap after it (``c``). State
    ``(i, u)``: groups start at kept row ``i`` and ``u`` rows of the gap before it are used.
    """
    size = union.size
    lo = np.concatenate([[-1], union[:-1]])
    gap_before = union - lo - 1                       # free rows below kept row i
    ok = np.zeros((size + 1, m + 1), bool)
    ok[size, :] = True
    pick = np.zeros((size + 1, m + 1, 4), np.int64)  # j, a, b, c
    for i in range(size - 1, -1, -1):
        for j in range(min(m, size - i), 0, -1):
            if sub[union[i:i + j]].sum(axis=0).max() > n:
                continue
            inner = int(union[i + j - 1] - union[i]) + 1 - j
            for u in range(m + 1):
                if ok[i, u]:
                    continue
                if i + j == size:
                    ok[i, u], pick[i, u] = True, (j, 0, 0, 0)
                    continue
                need = m - j
                a = min(need, max(int(gap_before[i]) - u, 0))
                b = min(need - a, inner)
                c = need - a - b
                if c <= gap_before[i + j] and ok[i + j, c]:
                    ok[i, u], pick[i, u] = True, (j, a, b, c)
    if not ok[0, 0]:
        raise PatternViolationError(
            f"mask: not tile-vector-wise {n}:{m}: the kept rows of tile {t} cannot be split "
            f"into groups of {m} consecutive compact rows keeping at most {n} per column")
    out: list[int] = []
    in_union = np.zeros(sub.shape[0] + 1, bool)
    in_union[union] = True
    i, u = 0, 0
    while i < size:
        j, a, b, c = (int(v) for v in pick[i, u])
        first, last = int(union[i]), int(union[i + j - 1])
        group = list(range(first - a, first)) + union[i:i + j].tolist()
        group += [r for r in range(first, last) if not in_union[r]][:b]
        group += list(range(last + 1, last + 1 + c))
        out += sorted(group)
        i, u = i + j, c
    return np.asarray(out, np.int64)


class TileFormat(CompressedWeight):
    """Shared behaviour of the tile formats (tables ``rows``, ``cols``, ``counts``)."""

    table_fields = ("rows", "cols", "counts")
    static_fields = ("shape", "tile")
    table_dtypes = {"rows": np.int32, "cols": np.int32, "counts": np.int32}

    @classmethod
    def _check_fields(cls, tables, statics):
        """``rows`` ``(T, Kp)``, ``cols`` ``(T, G)``, ``counts`` ``(T,)`` as in the module
        docstring: counts in ``[0, Kp]``, kept rows in ``[0, K)`` strictly increasing,
        padding rows 0, columns in ``[0, N]`` with ``N`` as padding, real columns first and
        strictly increasing over the tiles, ``G == tile``."""
        fixed = super()._check_fields(tables, statics)
        where = cls.__name__
        k, n = fixed["shape"]
        g = fixed["tile"] = _tab.static_int(statics["tile"], where, "tile")
        rows, cols, counts = tables["rows"], tables["cols"], tables["counts"]
        _tab.ndim_is(rows, 2, where, "rows", "(T, Kp)")
        t, kp = rows.shape
        _tab.shape_is(cols, (t, g), where, "cols", f" (T={t} tiles from rows, tile={g})")
        _tab.shape_is(counts, (t,), where, "counts", f" (T={t} tiles from rows)")
        _tab.counts_in_range(counts, kp, where)
        _tab.rows_follow_contract(rows, counts, k, where)
        _tab.cols_follow_contract(cols, n, where)
        return fixed

    @classmethod
    def _leaf_shapes(cls, tables, statics):
        t, kp = tables["rows"].shape
        return {"values": (t, kp, statics["tile"])}

    @property
    def num_tiles(self) -> int:
        return int(self.rows.shape[0])

    def compact_values(self) -> Array:
        """The dense compact blocks ``(T, Kp, G)`` (what a TW GEMM consumes)."""
        raise NotImplementedError

    def _stored_rows(self) -> np.ndarray:
        """Compact value rows each tile must store (``k_t``; TVW: its N:M share)."""
        return self.counts.astype(np.int64)

    def storage_bytes(self) -> int:
        """Unpadded bytes: per tile ``k_t x g_t`` values (TVW: N:M-compressed, plus 2-bit
        indices), ``k_t`` int32 row indices, ``g_t`` int32 column indices, and the counts."""
        g_t = (self.cols < self.shape[1]).sum(axis=1).astype(np.int64)
        item = np.dtype(self.values.dtype).itemsize
        total = int((self._stored_rows() * g_t).sum()) * item
        total += int((self.counts.astype(np.int64) + g_t).sum()) * 4 + self.counts.nbytes
        return total + self._meta_bytes(g_t)

    def _meta_bytes(self, g_t: np.ndarray) -> int:
        return 0

    def _decompress(self) -> Array:
        k, n = self.shape
        return tiles_to_dense(self.compact_values(), self.rows, self.cols, k, n, self.counts)


class TileWise(TileFormat):
    """Tile-wise compressed weight (Guo et al., SC 2020): dense compact block per tile.

    Fields: ``values`` ``(T, Kp, G)`` (the only pytree leaf), tables ``rows``, ``cols``,
    ``counts`` (static numpy), ``shape`` ``(K, N)``, ``tile`` ``G``. Build with
    :meth:`from_dense` or :func:`tvwjax.compress`.
    """

    @classmethod
    def from_dense(cls, w, mask, tile: int = 128) -> TileWise:
        """Compress ``w * mask`` (eager; shapes depend on the mask).

        Raises:
          PatternViolationError: a row segment inside an inferred tile is partly kept.
        """
        tile = positive_int(tile, "tile")
        w, mask = check_dense_and_mask(w, mask)
        tiles = infer_tiles(mask, tile)
        check_whole_rows(mask, tiles, tile)
        row_sets = [np.flatnonzero(mask[:, c[0]]) for c in tiles]
        rows, cols, counts = build_tables(row_sets, tiles, w.shape[1], tile)
        values = gather_blocks(np.where(mask, w, 0).astype(w.dtype), rows, cols, counts)
        return cls(values=jnp.asarray(values), rows=rows, cols=cols, counts=counts,
                   shape=tuple(w.shape), tile=int(tile))

    def compact_values(self) -> Array:
        return self.values


class BlockSparse(TileWise):
    """Block-sparse weight (``br x bc`` blocks) in the :class:`TileWise` layout.

    Tiles are the fixed block columns (``G = bc``); a tile's rows are its kept blocks'
    rows. ``block = (br, bc)`` is static.
    """

    static_fields = ("shape", "tile", "block")

    @classmethod
    def _check_fields(cls, tables, statics):
        """The :class:`TileWise` contract, plus: ``tile == bc``, one tile per block column
        (``T = ceil(N / bc)``, tile ``j`` holding columns ``j*bc ..``) and each tile's rows
        whole blocks of ``br`` consecutive rows (the last block of rows may be ragged)."""
        fixed = super()._check_fields(tables, statics)
        where = cls.__name__
        k, n = fixed["shape"]
        br, bc = fixed["block"] = _tab.static_pair(statics["block"], where, "block")
        if fixed["tile"] != bc:
            raise FormatError(f"{where}: tile must equal the block columns {bc}, got "
                              f"tile={fixed['tile']}")
        rows, cols, counts = tables["rows"], tables["cols"], tables["counts"]
        nb, kb = -(-n // bc), -(-k // br)
        if rows.shape[0] != nb:
            raise FormatError(f"{where}: rows table has {rows.shape[0]} tiles, expected "
                              f"ceil(N / bc) = {nb} (one per block column)")
        want = np.arange(nb * bc).reshape(nb, bc)
        want = np.where(want < n, want, n)
        bad = cols != want
        if bad.any():
            tt, j = (int(v) for v in np.argwhere(bad)[0])
            raise FormatError(f"{where}: cols table has {int(cols[tt, j])} at tile {tt}, "
                              f"column {j}, expected {int(want[tt, j])} (tile {tt} is block "
                              f"column {tt})")
        kept = np.arange(rows.shape[1])[None, :] < counts[:, None]
        tile_of = np.broadcast_to(np.arange(nb)[:, None], rows.shape)
        key = tile_of[kept].astype(np.int64) * kb + rows[kept] // br
        got = np.bincount(key, minlength=nb * kb).reshape(nb, kb)
        size = np.minimum(br, k - np.arange(kb) * br)
        bad = (got > 0) & (got != size[None, :])
        if bad.any():
            tt, b = (int(v) for v in np.argwhere(bad)[0])
            raise FormatError(f"{where}: rows table of tile {tt} holds {int(got[tt, b])} of "
                              f"the {int(size[b])} rows of block row {b} (rows {b * br}..), "
                              "expected whole blocks")
        return fixed

    @classmethod
    def from_dense(cls, w, mask, block: tuple[int, int] = (32, 32)) -> BlockSparse:
        """Compress ``w * mask`` where ``mask`` keeps or drops whole ``br x bc`` blocks.

        Raises:
          PatternViolationError: a block is partly kept.
        """
        br, bc = block
        br, bc = positive_int(br, "block rows"), positive_int(bc, "block cols")
        w, mask = check_dense_and_mask(w, mask)
        k, n = w.shape
        kb, nb = -(-k // br), -(-n // bc)
        pad = np.zeros((kb * br, nb * bc), np.int32)
        pad[:k, :n] = mask
        valid = np.zeros_like(pad)
        valid[:k, :n] = 1
        kept = pad.reshape(kb, br, nb, bc).sum(axis=(1, 3))
        size = valid.reshape(kb, br, nb, bc).sum(axis=(1, 3))
        bad = np.argwhere((kept > 0) & (kept < size))
        if bad.size:
            i, j = (int(v) for v in bad[0])
            raise PatternViolationError(
                f"mask: not block-sparse with blocks {br}x{bc}: block ({i}, {j}) (rows "
                f"{i * br}.., columns {j * bc}..) keeps {int(kept[i, j])} of {int(size[i, j])} "
                f"entries ({len(bad)} such blocks)")
        tiles = [np.arange(j * bc, min((j + 1) * bc, n)) for j in range(nb)]
        row_sets = [np.concatenate([np.arange(i * br, min((i + 1) * br, k))
                                    for i in np.flatnonzero(kept[:, j])] or
                                   [np.zeros(0, np.int64)]) for j in range(nb)]
        rows, cols, counts = build_tables(row_sets, tiles, n, bc)
        values = gather_blocks(np.where(mask, w, 0).astype(w.dtype), rows, cols, counts)
        return cls(values=jnp.asarray(values), rows=rows, cols=cols, counts=counts,
                   shape=(k, n), tile=bc, block=(br, bc))


class TileVectorWise(TileFormat):
    """Tile-vector-wise weight: TW tiles whose compact rows are N:M (2:4) compressed.

    Fields: ``values`` ``(T, Kp*n/m, G)`` (the only leaf), ``meta`` ``(T, ceil(Kp*n/m/4), G)``
    uint8 packed 2-bit indices, ``rows``/``cols``/``counts`` as in :class:`TileWise`
    (``Kp`` a multiple of 8), ``shape``, ``tile``, ``nm = (n, m)``.
    """

    table_fields = ("rows", "cols", "counts", "meta")
    static_fields = ("shape", "tile", "nm")
    table_dtypes = {**TileFormat.table_dtypes, "meta": np.uint8}

    @classmethod
    def _check_fields(cls, tables, statics):
        """The tile contract of :class:`TileWise`, plus: ``Kp`` a multiple of 8 and of
        ``m``, ``meta`` ``(T, ceil(Kp*n/m/4), G)`` whose positions are ``< m`` and distinct
        within each group of ``n``."""
        fixed = super()._check_fields(tables, statics)
        where = cls.__name__
        n, m = fixed["nm"] = _tab.nm_static(statics["nm"], where)
        t, kp = tables["rows"].shape
        if kp % 8 or kp % m:
            raise FormatError(f"{where}: rows table has Kp={kp} padded rows per tile, "
                              f"expected a multiple of 8 and of m={m}")
        vr = kp * n // m
        _tab.shape_is(tables["meta"], (t, -(-vr // 4), fixed["tile"]), where, "meta",
                      f" (T={t}, ceil(Kp*n/m/4) for Kp={kp}, nm={(n, m)}, tile)")
        _tab.positions_follow_contract(tables["meta"], vr, n, m, where)
        return fixed

    @classmethod
    def _leaf_shapes(cls, tables, statics):
        t, kp = tables["rows"].shape
        n, m = statics["nm"]
        return {"values": (t, kp * n // m, statics["tile"])}

    @classmethod
    def from_dense(cls, w, mask, tile: int = 128, n: int = 2, m: int = 4) -> TileVectorWise:
        """Compress ``w * mask`` (eager). A tile's rows are the rows kept in any of its
        columns; in every group of ``m`` consecutive compact rows each column may keep at
        most ``n`` (fewer are stored as explicit zeros).

        Raises:
          ConfigError: ``tile`` is not a positive integer or ``n``, ``m`` not integers with
            ``1 <= n < m <= 4``.
          PatternViolationError: a group of ``m`` compact rows keeps more than ``n`` in a column.
        """
        tile = positive_int(tile, "tile")
        n, m = nm_pair(n, m, "nm", max_m=4)
        w, mask = check_dense_and_mask(w, mask)
        k, nn = w.shape
        tiles = infer_tiles(mask, tile)
        row_sets = [_nm_row_set(mask[:, c], n, m, t) for t, c in enumerate(tiles)]
        rows, cols, counts = build_tables(row_sets, tiles, nn, tile, row_multiple=8)
        t, kp = rows.shape
        vals = gather_blocks(np.where(mask, w, 0).astype(w.dtype), rows, cols, counts)
        keep = gather_blocks(mask, rows, cols, counts)
        per_group = keep.reshape(t, kp // m, m, tile).sum(axis=2)
        bad = np.argwhere(per_group > n)
        if bad.size:
            ti, g, c = (int(v) for v in bad[0])
            raise PatternViolationError(
                f"mask: not tile-vector-wise {n}:{m}: in tile {ti}, compact rows "
                f"{g * m}..{g * m + m - 1} (original rows {rows[ti, g * m:(g + 1) * m].tolist()})"
                f" keep {int(per_group[ti, g, c])} entries of column {int(cols[ti, c])}; at most "
                f"{n} of every {m} are allowed")
        # NumPy in, NumPy out: each leaf's own Kp would compile the codec's ops anew.
        flat_v = np.ascontiguousarray(vals.transpose(1, 0, 2).reshape(kp, t * tile))
        flat_m = np.ascontiguousarray(keep.transpose(1, 0, 2).reshape(kp, t * tile))
        v, idx = nm_compress(flat_v, flat_m, n, m)
        meta = pack_index(idx)
        vr = kp * n // m
        v = jnp.asarray(v).reshape(vr, t, tile).transpose(1, 0, 2)
        meta = meta.reshape(meta.shape[0], t, tile).transpose(1, 0, 2)
        return cls(values=v, meta=meta, rows=rows, cols=cols, counts=counts,
                   shape=(k, nn), tile=int(tile), nm=(int(n), int(m)))

    def _stored_rows(self) -> np.ndarray:
        n, m = self.nm
        return -(-self.counts.astype(np.int64) // m) * n

    def _meta_bytes(self, g_t: np.ndarray) -> int:
        return int((-(-self._stored_rows() // 4) * g_t).sum())

    def compact_values(self) -> Array:
        """Decode the N:M blocks to dense compact blocks ``(T, Kp, G)`` with
        :func:`pallas_kernels.layout.tvw_compact_blocks` (elementwise ops only)."""
        # The barrier keeps XLA from constant-folding the decoded indices into large
        # boolean constants (measured: 3x slower than decoding the packed bytes at run time).
        if self.num_tiles == 0:  # all pruned (the decoder's reshapes need a tile)
            return jnp.zeros(self.rows.shape + (self.tile,), self.values.dtype)
        meta = jax.lax.optimization_barrier(jnp.asarray(self.meta))
        return tvw_compact_blocks(self.values, meta, *self.nm)

    def to_tile_wise(self) -> TileWise:
        """The same weight as a :class:`TileWise` of its decoded compact blocks.

        A CPU has no 2:4 hardware: decoding the N:M values on every call costs more than
        the GEMM it feeds, so on the CPU TVW runs as its TW part (at twice TVW's density).
        Decode once at load time with this method (memory: the TW compact blocks; the
        stored/serialised form stays the N:M-compressed one).
        """
        return TileWise(values=self.compact_values(), rows=self.static_table("rows"),
                        cols=self.static_table("cols"), counts=self.static_table("counts"),
                        shape=self.shape, tile=self.tile)


__all__ = ["BlockSparse", "TileFormat", "TileVectorWise", "TileWise", "build_tables",
           "check_whole_rows", "gather_blocks", "infer_tiles"]
