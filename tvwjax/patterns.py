"""Sparsity patterns of the tile-wise method, as frozen (hashable, jit-static) objects.

Orientation: a weight ``W`` is ``K x N`` (Flax ``(in, out)`` kernel layout), ``y = x @ W``;
``K`` is the contraction axis. Every pattern turns a ``(K, N)`` array of non-negative scores
and a target sparsity ``s`` (density ``d = 1 - s``) into a boolean keep-mask:

==========  ===============================================================================
``EW``      unstructured: the ``round(d*K*N)`` largest scores anywhere
``BW``      block: ``rows x cols`` blocks scored by their RMS, kept or dropped whole
``VW``      vector-wise: in every vector of ``length`` consecutive K entries of one column,
            the top ``round(d*length)``
``NM``      N:M (default 2:4) along K: ``n`` of every ``m`` consecutive K entries per column
``TW``      tile-wise: optional global column pruning (``column_share`` of the sparsity,
            in log-density), surviving columns grouped in order into tiles of ``tile``
            columns, then row *segments* (one row inside one tile) kept or dropped whole,
            ranked over the whole matrix so that tiles keep different numbers of rows.
            The default ``column_share=0`` is TW-1D (every tile keeps at least
            ``min_rows`` rows: no output feature loses all its weights); ``0.5`` is the
            paper's TW-2D, which prunes whole output columns
``TEW``     TW at ``s + delta`` plus the largest ``delta`` fraction of the remaining weights
``TVW``     TW at density ``min(1, d*m/n)`` with kept rows per tile rounded to a multiple of
            ``row_block``, then N:M along K over each tile's kept rows (in compact order)
==========  ===============================================================================

Sparsity conventions: ``s = 0`` always gives an all-True mask. ``NM`` only allows
``s in {0, 1 - n/m}``; ``TVW`` allows ``0`` or ``s >= 1 - n/m``. When the sparsity is a
traced value (schedules inside ``jit``) it cannot raise and is read by
:meth:`Pattern.effective_sparsity` (NaN -> 0, clipped below 1, rounded up to the floor).

Counting rule: every "keep ``round(d*T)``" above is computed in float32 as
``round_half_up(float32(1 - s) * T)`` and is at least 1 (a pruned leaf, vector or tile
keeps a unit). Concrete and traced sparsities go through the same compiled computation,
so eager and ``jit`` masks are identical. Ties are broken deterministically (see
:mod:`tvwjax._select`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from tvwjax import _select as sel
from tvwjax import _validate as val
from tvwjax._select import nm_select
from tvwjax.errors import ConfigError, ShapeError
from tvwjax.tiling import column_tiles, num_tiles, segment_sumsq

Array = jax.Array

_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class Pattern:
    """Base class of all sparsity patterns. Subclasses are frozen dataclasses.

    Everything the rest of the library needs to know about a pattern is asked of the pattern
    itself (no ``isinstance`` chains elsewhere): the sparsities it can produce
    (:attr:`floor`, :meth:`validate_sparsity`, :meth:`effective_sparsity`), whether global
    scope applies (:attr:`supports_global`), how global scope allocates
    (:meth:`units`, :attr:`allocation_scale`) and which compressed format holds its masks
    (:attr:`format`, :meth:`format_args`).
    """

    name: ClassVar[str] = "pattern"
    #: Name of the compressed format class in :mod:`tvwjax.formats` (``None``: none).
    format: ClassVar[str | None] = None
    #: Whether one global threshold can allocate this pattern's sparsity across leaves.
    supports_global: ClassVar[bool] = True

    @property
    def max_density(self) -> float:
        """Largest density the pattern produces with ``s > 0`` (``n/m`` for N:M and TVW)."""
        return 1.0

    @property
    def floor(self) -> float:
        """Smallest non-zero sparsity the pattern produces (``1 - n/m`` for NM, TVW; else 0)."""
        return 1.0 - self.max_density

    @property
    def allocation_scale(self) -> float:
        """Factor from the density of the allocation units to the final density (TVW
        allocates row segments at its TW level, then keeps ``n/m`` of them)."""
        return 1.0

    def format_args(self) -> dict:
        """Keyword arguments of the format's ``from_dense`` for this pattern."""
        return {}

    def _set_nm(self, n: int, m: int) -> None:
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "m", m)

    # -- public API -------------------------------------------------------------------------
    def mask(self, scores: Array, sparsity: float | Array, name: str = "scores", *,
             share: float = 1.0) -> Array:
        """Boolean keep-mask of a 2-D ``(K, N)`` score array at ``sparsity``.

        Args:
          scores: non-negative scores, shape ``(K, N)`` (``K`` = contraction axis).
          sparsity: fraction to prune in ``[0, 1)``: a number (Python, NumPy or a concrete
            JAX scalar, all checked alike) or a traced scalar (see
            :meth:`effective_sparsity` for how a traced value is read).
          name: what error messages call ``scores`` (e.g. a leaf path).
          share: this matrix's fraction, in ``(0, 1]``, of all the elements whose masks
            are computed together (:func:`tvwjax.masks` passes each leaf's). It sizes
            working memory only, never the mask: TVW selects a matrix that is a large share
            in pieces (less memory, longer compiles) and a small share in one.

        Returns:
          ``(K, N)`` bool array, True where the weight is kept.

        >>> import jax.numpy as jnp
        >>> m = EW().mask(jnp.arange(8.0).reshape(4, 2), 0.5)
        >>> m.astype(int).T.tolist()
        [[0, 0, 1, 1], [0, 0, 1, 1]]
        """
        scores = jnp.asarray(scores)
        if scores.ndim != 2:
            raise ShapeError(f"{name}: {self.name} masks need a 2-D (K, N) array, "
                             f"got shape {scores.shape}")
        self.validate_shape(scores.shape, name)
        val.finite_nonnegative(scores, name)
        sparsity = val.sparsity(sparsity, f"{name}: sparsity")
        share = val.number(share, f"{name}: share")
        if not 0.0 < share <= 1.0:
            raise ConfigError(f"{name}: share must be in (0, 1], got {share!r}")
        if not val.is_traced(sparsity):
            if self.validate_sparsity(sparsity, name) == 0.0:
                return jnp.ones(scores.shape, bool)
            sparsity = np.float32(sparsity)
        return _mask_jit(self, scores, sparsity, share)

    def validate_shape(self, shape: tuple[int, int], name: str = "scores") -> None:
        """Raise :class:`ShapeError` if a ``(K, N)`` matrix cannot follow this pattern."""
        if shape[0] < 1 or shape[1] < 1:
            raise ShapeError(f"{name}: cannot prune an empty matrix of shape {shape}")

    def validate_sparsity(self, sparsity: Any, name: str = "sparsity") -> float:
        """Raise :class:`ConfigError` unless the pattern can produce ``sparsity`` exactly;
        return it as a float. ``name`` labels the error message."""
        return val.sparsity(sparsity, f"{name}: sparsity" if name != "sparsity" else name)

    def effective_sparsity(self, sparsity: float | Array) -> Array:
        """The sparsity this pattern's masks really have for a (traced) target.

        A traced target cannot raise, so it is read by a documented rule: NaN reads as 0
        (dense), values below 0 as 0, values of 1 or more as the largest float32 below 1
        (each pruned leaf then keeps its minimum: one unit, or ``min_rows`` per TW tile);
        a value in ``(0, floor)`` is rounded up to the pattern's :attr:`floor` and ``NM``
        reads any non-zero target as its fixed sparsity. A concrete sparsity that passes
        :meth:`validate_sparsity` is read by the same rule (so eager and ``jit`` agree).

        Args:
          sparsity: the schedule's target.

        Returns:
          A float32 scalar.
        """
        s = jnp.asarray(sparsity, jnp.float32)
        s = jnp.clip(jnp.where(jnp.isnan(s), 0.0, s), 0.0, sel.BELOW_ONE)
        if self.floor == 0.0:
            return s
        return jnp.where(s > 0.0, jnp.maximum(s, jnp.float32(self.floor)), 0.0)

    def unit_grid(self, scores: Array) -> tuple[Array, Array | None]:
        """Allocation units for global scope, laid out like the leaf: ``(unit_scores,
        unit_sizes)`` of one shape (row-major order breaks ties), ``unit_sizes=None`` when
        every unit is one weight.

        A global threshold over the (normalised) unit scores of all leaves decides how much
        of each leaf is kept; each leaf's mask is then built at that density. The grid is
        never flattened, so units of a sharded leaf stay where the leaf's entries are.
        """
        return scores.astype(jnp.float32), None

    def units(self, scores: Array) -> tuple[Array, Array]:
        """The allocation units of :meth:`unit_grid`, flat: ``(unit_scores, unit_sizes)``."""
        u, z = self.unit_grid(scores)
        z = jnp.ones(u.shape, jnp.int32) if z is None else z
        return u.reshape(-1), z.reshape(-1)

    # -- implementation ----------------------------------------------------------------------
    def _mask(self, scores: Array, density: Array | float, share: float = 1.0) -> Array:
        """The ``(K, N)`` keep-mask at ``density`` (traced or concrete float32).

        ``share`` is this matrix's fraction of all the elements whose masks are computed
        together (see :meth:`mask`); only selections with per-element working buffers
        (TVW's N:M step) use it, to size the pieces they are cut into.
        """
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class EW(Pattern):
    """Unstructured (element-wise) sparsity: keep the largest scores anywhere."""

    name: ClassVar[str] = "EW"

    def _mask(self, scores, density, share=1.0):
        return sel.topk_mask(scores, sel.count(density, scores.size))


@dataclasses.dataclass(frozen=True)
class BW(Pattern):
    """Block sparsity: ``rows x cols`` blocks scored by the RMS of their scores.

    Blocks start at the origin; blocks on the ragged bottom/right edge are smaller and are
    scored on their real entries. Blocks are kept in score order while the kept element
    count stays within ``round(d*K*N)``; a budget smaller than the best block keeps that
    block (a pruned leaf never loses every weight).
    """

    rows: int = 32
    cols: int = 32
    name: ClassVar[str] = "BW"
    format: ClassVar[str | None] = "BlockSparse"

    def __post_init__(self):
        val.int_field(self, "rows", 1, "BW")
        val.int_field(self, "cols", 1, "BW")

    def format_args(self) -> dict:
        return {"block": (self.rows, self.cols)}

    def _blocks(self, scores):
        k, n = scores.shape
        def pad(x, value):
            return sel.pad_to(sel.pad_to(x, self.rows, 0, value), self.cols, 1, value)

        p = pad(scores.astype(jnp.float32), 0.0)
        valid = pad(jnp.ones((k, n), jnp.int32), 0)
        kb, nb = p.shape[0] // self.rows, p.shape[1] // self.cols
        sizes = valid.reshape(kb, self.rows, nb, self.cols).sum(axis=(1, 3))
        bscore = sel.rms(p.reshape(kb, self.rows, nb, self.cols), (1, 3), sizes)
        return bscore, sizes

    def unit_grid(self, scores):
        return self._blocks(scores)

    def _mask(self, scores, density, share=1.0):
        k, n = scores.shape
        bscore, sizes = self._blocks(scores)
        keep = sel.budget_mask(bscore, sizes, sel.count(density, k * n))
        full = jnp.repeat(jnp.repeat(keep, self.rows, axis=0), self.cols, axis=1)
        return full[:k, :n]


@dataclasses.dataclass(frozen=True)
class VW(Pattern):
    """Vector-wise sparsity: vectors of ``length`` consecutive K entries inside one column.

    Every vector keeps its top ``round(d*length)`` entries, and at least one; a ragged last
    vector of length ``r`` keeps ``round(d*r)`` (at least one). So VW prunes at most
    ``1 - 1/length`` of a leaf.
    """

    length: int = 16
    name: ClassVar[str] = "VW"

    def __post_init__(self):
        val.int_field(self, "length", 1, "VW")

    def _mask(self, scores, density, share=1.0):
        k, n = scores.shape
        ln = self.length
        p = sel.pad_to(scores.astype(jnp.float32), ln, 0, -jnp.inf)
        nv = p.shape[0] // ln
        lens = np.full((nv,), ln)
        lens[-1] = k - (nv - 1) * ln
        kv = sel.count(density, lens)
        ranks = sel.group_rank(p, ln).reshape(nv, ln, n)
        return (ranks < kv[:, None, None]).reshape(nv * ln, n)[:k]


@dataclasses.dataclass(frozen=True)
class NM(Pattern):
    """N:M sparsity along the contraction axis K: ``n`` of every ``m`` consecutive rows."""

    n: int = 2
    m: int = 4
    name: ClassVar[str] = "NM"
    format: ClassVar[str | None] = "NMSparse"
    supports_global: ClassVar[bool] = False

    def __post_init__(self):
        self._set_nm(*val.nm_pair(self.n, self.m, "NM"))

    @property
    def max_density(self) -> float:
        return self.n / self.m

    @property
    def sparsity(self) -> float:
        """The only non-zero sparsity this pattern produces, ``1 - n/m``."""
        return 1.0 - self.n / self.m

    def format_args(self) -> dict:
        return {"n": self.n, "m": self.m}

    def effective_sparsity(self, sparsity):
        s = super().effective_sparsity(sparsity)
        return jnp.where(s > 0.0, jnp.float32(self.floor), 0.0)

    def validate_shape(self, shape, name="scores"):
        super().validate_shape(shape, name)
        if shape[0] % self.m:
            raise ShapeError(f"{name}: {self.n}:{self.m} sparsity needs K (axis 0, the "
                             f"contraction axis) divisible by m={self.m}, got K={shape[0]}")

    def validate_sparsity(self, sparsity, name="sparsity"):
        s = super().validate_sparsity(sparsity, name)
        if s != 0.0 and abs(s - self.sparsity) > 1e-6:
            raise ConfigError(f"{name}: {self.n}:{self.m} sparsity is fixed at "
                              f"{self.sparsity:g} (or 0 for dense), got {s!r}")
        return s

    def unit_grid(self, scores):
        raise ConfigError("NM has a fixed per-leaf sparsity; global scope does not apply")

    def _mask(self, scores, density, share=1.0):
        return nm_select(scores, self.n, self.m)


@dataclasses.dataclass(frozen=True)
class TW(Pattern):
    """Tile-wise sparsity (Guo et al., SC 2020).

    Args:
      tile: tile width ``G`` in output columns (default 128, as in the paper).
      column_share: share of the log-density taken by global column pruning:
        column density ``d**column_share``, the rest by row segments. The default ``0``
        is TW-1D: no output column is pruned whole. ``0.5`` is the paper's TW-2D, which
        splits equally (75% -> 50% of the columns x 50% of the row segments), as in the
        reference code; it removes whole output features (ask for it explicitly).
      row_block: kept rows per tile are rounded to a multiple of this (1 = no rounding).
      min_rows: every tile (of surviving columns) keeps at least this many rows (rounded
        up to ``row_block``), so no output feature is left without a weight; ``0`` lets a
        tile lose all its rows. The guarantee takes its rows from the same budget, so the
        sparsity is unchanged unless the budget is smaller than the guarantee itself
        (above ``1 - min_rows/K``), where the guarantee wins.
    """

    tile: int = 128
    column_share: float = 0.0
    row_block: int = 1
    min_rows: int = 1
    name: ClassVar[str] = "TW"
    format: ClassVar[str | None] = "TileWise"

    def __post_init__(self):
        owner = type(self).__name__
        val.int_field(self, "tile", 1, owner)
        val.int_field(self, "row_block", 1, owner)
        val.int_field(self, "min_rows", 0, owner)
        share = val.number(self.column_share, f"{owner}: column_share")
        object.__setattr__(self, "column_share", share)
        if not 0.0 <= share <= 1.0:
            raise ConfigError(f"{type(self).__name__}: column_share must be in [0, 1], "
                              f"got {self.column_share!r}")

    def format_args(self) -> dict:
        return {"tile": self.tile}

    def validate_shape(self, shape, name="scores"):
        super().validate_shape(shape, name)
        if self.row_block > 1 and shape[0] < self.row_block:
            raise ShapeError(f"{name}: {type(self).__name__} keeps rows in multiples of "
                             f"row_block={self.row_block}, so K (axis 0) must be at least "
                             f"{self.row_block}, got K={shape[0]}")

    def _segments(self, scores: Array, col_keep: Array | None):
        """Row-segment scores ``(K, T)`` (RMS of each row inside each tile), the tile of
        every column ``(N,)`` (``T`` for a pruned column) and the tile widths ``(T,)``.

        Without column pruning (``col_keep=None``) the tiles are consecutive columns and
        the segments a reshape and a sum over each tile (local to wherever the tile lies);
        with it, a segment sum over the surviving columns' tile ids.
        """
        k, n = scores.shape
        t = num_tiles(n, self.tile)
        sq = jnp.square(scores.astype(jnp.float32))
        if col_keep is None:
            tile_id, width = column_tiles(jnp.ones((n,), bool), self.tile)
            ss = jnp.sum(sel.pad_to(sq, self.tile, 1, 0.0).reshape(k, t, self.tile), axis=2)
        else:
            tile_id, width = column_tiles(col_keep, self.tile)
            ss = segment_sumsq(scores, tile_id, t)
        return jnp.sqrt(ss / jnp.maximum(width, 1)[None, :]), tile_id, width

    def _columns(self, scores: Array, density: Array) -> Array | None:
        """The columns that survive column pruning (``None``: no column pruning).

        Column scores are the RMS over K from an order-independent sum
        (:func:`~tvwjax._select.exact_sum`), so a leaf sharded along K ranks its columns
        exactly as on one device.
        """
        if self.column_share <= 0:
            return None
        k, n = scores.shape
        d_col = density ** self.column_share
        n_col = jnp.maximum(sel.count(d_col, n), 1)
        cscore = jnp.sqrt(sel.exact_sum(jnp.square(scores.astype(jnp.float32)), 0) / k)
        return sel.topk_mask(cscore, n_col)

    def _tw_keep(self, scores, density):
        """Column keep (``None``: all), tile id ``(N,)`` and segment keep ``(K, T)``."""
        k, n = scores.shape
        col_keep = self._columns(scores, density)
        seg, tile_id, width = self._segments(scores, col_keep)
        sizes = jnp.broadcast_to(width[None, :], seg.shape)
        rb = self.row_block
        floor_rows = min(k, val.round_up(self.min_rows, rb))
        rank = sel.rank_desc(seg, axis=0) if (rb > 1 or floor_rows > 1) else None
        ranked = seg
        if floor_rows > 0:  # each tile's best rows first: no tile (output feature) left empty
            first = (rank < floor_rows if rank is not None
                     else jnp.arange(k)[:, None] == jnp.argmax(seg, axis=0)[None, :])
            ranked = jnp.where(first & (width > 0)[None, :], jnp.inf, seg)
        budget = sel.count(density, k * n)
        if floor_rows > 0:  # the guarantee wins over a budget too small to honour it
            budget = jnp.maximum(budget, floor_rows * jnp.sum(width, dtype=jnp.int32))
        keep = sel.budget_mask(ranked, sizes, budget)
        if rb > 1:
            c = jnp.sum(keep, axis=0, dtype=jnp.int32)
            c = (2 * c + rb) // (2 * rb) * rb  # to the nearest multiple of rb, half up
            c = jnp.maximum(c, floor_rows)
            c = jnp.where(width > 0, jnp.clip(c, 0, (k // rb) * rb), 0)
            keep = rank < c[None, :]
        return col_keep, tile_id, keep

    def _per_column(self, table: Array, tile_id: Array, n: int, contiguous: bool,
                    fill) -> Array:
        """``(K, N)``: the ``(K, T)`` per-tile ``table`` read at every column's tile
        (``fill`` for pruned columns). Consecutive tiles: a broadcast and a reshape (local
        to each tile); otherwise a gather by tile id."""
        k, t = table.shape
        if contiguous:
            full = jnp.broadcast_to(table[:, :, None], (k, t, self.tile))
            return full.reshape(k, t * self.tile)[:, :n]
        ext = jnp.concatenate([table, jnp.full((k, 1), fill, table.dtype)], axis=1)
        return ext[:, tile_id]

    def unit_grid(self, scores):
        seg, _, width = self._segments(scores, None)
        return seg, jnp.broadcast_to(width[None, :], seg.shape)

    def _mask(self, scores, density, share=1.0):
        col_keep, tile_id, keep = self._tw_keep(scores, density)
        return self._per_column(keep, tile_id, scores.shape[1], col_keep is None, False)


@dataclasses.dataclass(frozen=True)
class TEW(TW):
    """TW + EW: a TW mask at ``s + delta``, plus the largest remaining weights.

    The restored weights bring the kept count back to exactly ``round(d*K*N)``; they are
    the highest-scoring weights the TW mask pruned. Needs a sparse residual at run time.
    """

    delta: float = 0.05
    name: ClassVar[str] = "TEW"
    format: ClassVar[str | None] = None  # needs a sparse residual beside its TW part

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "delta", val.number(self.delta, "TEW: delta"))
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"TEW: delta must be in (0, 1), got {self.delta!r}")

    def validate_sparsity(self, sparsity, name="sparsity"):
        s = super().validate_sparsity(sparsity, name)
        if s != 0.0 and s + self.delta >= 1.0:
            raise ConfigError(f"{name}: TEW needs sparsity + delta < 1, got sparsity={s!r}, "
                              f"delta={self.delta!r}")
        return s

    def _mask(self, scores, density, share=1.0):
        k, n = scores.shape
        tw_density = jnp.maximum(density - jnp.float32(self.delta), 0.0)
        base = TW._mask(self, scores, tw_density)
        restore = sel.count(density, k * n) - jnp.sum(base, dtype=jnp.int32)
        rest = sel.topk_mask(jnp.where(base, -jnp.inf, scores.astype(jnp.float32)), restore)
        return base | rest


@dataclasses.dataclass(frozen=True)
class TVW(TW):
    """Tile-vector-wise sparsity: TW, then N:M (2:4) along K inside each tile's kept rows.

    Total density = TW density x ``n/m`` (75% TVW = 50% TW + 2:4). Kept rows per tile are a
    multiple of ``row_block`` (default 4, must be a multiple of ``m``) so that the N:M
    groups of consecutive kept rows never straddle tiles.
    """

    row_block: int = 4
    n: int = 2
    m: int = 4
    name: ClassVar[str] = "TVW"
    format: ClassVar[str | None] = "TileVectorWise"

    @property
    def max_density(self) -> float:
        return self.n / self.m

    def __post_init__(self):
        super().__post_init__()
        self._set_nm(*val.nm_pair(self.n, self.m, "TVW", max_m=4))
        if self.row_block % self.m:
            raise ConfigError(f"TVW: row_block must be a multiple of m={self.m}, "
                              f"got {self.row_block}")

    @property
    def allocation_scale(self) -> float:
        return self.n / self.m

    def format_args(self) -> dict:
        return {"tile": self.tile, "n": self.n, "m": self.m}

    def validate_sparsity(self, sparsity, name="sparsity"):
        s = super().validate_sparsity(sparsity, name)
        floor = self.floor
        if 0.0 < s < floor - 1e-6:
            raise ConfigError(f"{name}: TVW sparsity must be 0 or at least {floor:g} "
                              f"(its {self.n}:{self.m} part alone prunes that much), got {s!r}")
        return s

    def _mask(self, scores, density, share=1.0):
        k = scores.shape[0]
        tw_density = jnp.minimum(1.0, density * jnp.float32(self.m / self.n))
        col_keep, tile_id, keep = self._tw_keep(scores, tw_density)
        # Per tile, the rows in compact order (kept rows first, in row order) and each
        # row's compact position: small (K, T) tables.
        perm = jnp.argsort(~keep, axis=0, stable=True).astype(jnp.int32)
        pos = jnp.argsort(perm, axis=0).astype(jnp.int32)
        perm = sel.pad_to(perm, self.m, 0, k)  # rows past K (the padding) never win
        if col_keep is not None:  # pruned columns: tiles are not consecutive columns
            return self._group_nm(scores, perm, pos, keep, tile_id, False)
        devices = jax.sharding.get_abstract_mesh()
        if devices.empty or devices.size == 1:
            return self._chunked_nm(scores, perm, pos, keep, share)
        mesh, axes = _column_axes(scores.shape[1], self.tile)
        if mesh is None:  # columns that do not split into whole tiles over any mesh axis:
            # one pass, placed by XLA's partitioner
            return self._group_nm(scores, perm, pos, keep, tile_id, True)
        # The rows of an N:M group lie anywhere along K: split the leaf by whole tiles of
        # columns over the devices (an all-to-all at most, the same bytes per device),
        # where each device reads its own rows. A leaf already split by columns over the
        # same axes needs no data movement on the way in; the mask goes back to the
        # leaf's layout on the way out.
        spec = jax.sharding.PartitionSpec(None, axes)
        return jax.shard_map(functools.partial(self._chunked_nm, share=share), mesh=mesh,
                             in_specs=spec, out_specs=spec)(scores, perm, pos, keep)

    def _chunked_nm(self, scores, perm, pos, keep, share=1.0):
        """:meth:`_group_nm` piece by piece: slices of consecutive tiles (and, when there
        are fewer tiles than slices, of rows inside them), one after the other, so that
        its working buffers (keys, rival keys, ranks) are a fraction of the leaf and the
        peak stays near the mask plus one piece. The slices are static and chained by
        optimisation barriers on the small per-tile tables (a loop, or a barrier on the
        scores, would make XLA materialise the scores, which otherwise fuse into their
        consumers). Each piece is unrolled code, compiled for as long as a whole leaf's
        selection, so the leaf is cut only as far as memory asks (:func:`_pieces`)."""
        k, n = scores.shape
        t = keep.shape[1]
        pieces = _pieces(k * n, share)
        n_tiles = min(t, pieces)
        n_rows = min(k, -(-pieces // n_tiles))
        cuts = [round(i * t / n_tiles) for i in range(n_tiles + 1)]
        rcuts = [round(i * k / n_rows) for i in range(n_rows + 1)]
        columns, last = [], None
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
            cols = scores[:, lo * self.tile:min(hi * self.tile, n)]
            rows = []
            for r0, r1 in zip(rcuts[:-1], rcuts[1:], strict=True):
                if last is not None:  # the previous piece is done before this one starts
                    last, perm, pos, keep = jax.lax.optimization_barrier(
                        (last, perm, pos, keep))
                    (rows or columns[-1])[-1] = last
                last = self._group_nm(cols, perm[:, lo:hi], pos[r0:r1, lo:hi],
                                      keep[r0:r1, lo:hi], None, True, r0)
                rows.append(last)
            columns.append(rows)
        parts = [jnp.concatenate(rows, axis=0) if len(rows) > 1 else rows[0]
                 for rows in columns]
        return jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    def _group_nm(self, scores, perm, pos, keep, tile_id, contiguous, row0=0):
        """N:M along K over each tile's compact rows: the ``(R, N)`` mask of rows
        ``row0 .. row0 + R`` from all rows' scores ``(K, N)`` and the per-tile tables
        (``perm`` of all rows, padded to a multiple of ``m``; ``pos`` and ``keep`` of
        these ``R`` rows).

        Row ``r`` competes with the rows at the other positions of its group of ``m``
        consecutive compact positions; each rival's key is read from its row of the same
        column (a gather along K by a small per-tile table, the order keys taken after
        it), so no compacted copy of the weights and no copy of their keys is made.
        """
        k, n = scores.shape
        m = self.m
        mine = sel.order_key(scores[row0:row0 + pos.shape[0]])
        me = self._per_column(pos, tile_id, n, contiguous, 0)
        slot = me % m
        rank = jnp.zeros(mine.shape, jnp.int32)
        for q in range(m):
            rival_row = jnp.take_along_axis(perm, pos // m * m + q, axis=0)  # (R, T)
            row = self._per_column(rival_row, tile_id, n, contiguous, k)
            rival = sel.order_key(jnp.take_along_axis(scores, jnp.minimum(row, k - 1), axis=0))
            rival = jnp.where(row < k, rival, jnp.uint32(0))
            beats = jnp.where(q < slot, rival >= mine, (q > slot) & (rival > mine))
            rank = rank + beats.astype(jnp.int32)
        kept = self._per_column(keep, tile_id, n, contiguous, False)
        return kept & (rank < self.n)


#: Pieces of a leaf :meth:`TVW._chunked_nm` selects one after the other (at most).
_CHUNKS = 8
#: Elements of a leaf per piece below which :meth:`TVW._chunked_nm` cuts fewer pieces.
_PIECE = 1 << 15
#: A piece holds at most this fraction of the elements selected together (``share``).
_SHARE_PER_PIECE = 1 / 16


def _pieces(elements: int, share: float) -> int:
    """How many pieces :meth:`TVW._chunked_nm` cuts a leaf of ``elements`` into: enough
    that each holds at most :data:`_SHARE_PER_PIECE` of the elements selected together
    (the leaf is ``share`` of them), at most :data:`_CHUNKS`, and none smaller than
    :data:`_PIECE` elements.

    A piece's buffers are a few times its elements, so a leaf that is half of what is
    selected (the sharded memory check's two kernels) is cut in 8, bounding the update
    step's temporaries near the parameters' size, while each of BERT-base's 72 kernels
    (at most 3% of them) is selected in one piece: its training step with ``prune(TVW())``
    compiled 4x faster at the same temporary memory (two layers: 18.4 s -> 4.4 s).
    """
    by_share = math.ceil(share / _SHARE_PER_PIECE - 1e-9)
    return max(1, min(_CHUNKS, -(-elements // _PIECE), by_share))


def _column_axes(n: int, tile: int) -> tuple[jax.sharding.AbstractMesh | None, tuple[str, ...]]:
    """The mesh of the computation being traced and the axes to split ``n`` columns over
    in whole tiles: minor axes first (parameters are usually split over the model axes,
    the last ones), each taken while the tiles still divide evenly. ``(None, ())`` on
    one device, on explicit axes, or when no axis divides the tiles."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or n % tile:
        return None, ()
    if any(t != jax.sharding.AxisType.Auto for t in mesh.axis_types):
        return None, ()
    axes, ways = [], 1
    for name in reversed(mesh.axis_names):
        size = mesh.shape[name]
        if size > 1 and (n // tile) % (ways * size) == 0:
            axes.append(name)
            ways *= size
    return (mesh, tuple(axes)) if axes else (None, ())


@functools.partial(jax.jit, static_argnums=(0, 3))
def _mask_jit(pattern: Pattern, scores: Array, sparsity: Array, share: float = 1.0) -> Array:
    """The one mask computation, eager or traced: the sparsity read by
    :meth:`Pattern.effective_sparsity`, float32 arithmetic throughout (one compiled
    computation per pattern, shape and share; the sparsity is an argument, not a
    constant)."""
    s = pattern.effective_sparsity(sparsity)
    return jnp.where(s <= 0.0, jnp.ones(scores.shape, bool),
                     pattern._mask(scores, 1.0 - s, share))


PATTERNS: dict[str, type[Pattern]] = {
    "EW": EW, "BW": BW, "VW": VW, "NM": NM, "TW": TW, "TEW": TEW, "TVW": TVW,
}

__all__ = ["BW", "EW", "NM", "PATTERNS", "TEW", "TVW", "TW", "VW", "Pattern"]
