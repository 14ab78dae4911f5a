"""Second-order (Optimal Brain Surgeon) mask selection for one-shot EW, N:M, TW and TVW.

Given the Gram matrix ``G = X^T X`` of a layer's calibration inputs and the damped Hessian
``H = G + lambda I`` of its squared output error ``E(W') = tr((W - W')^T H (W - W'))``,
removing a set ``P`` of input rows from a group of output columns ``C`` with optimal
compensation by the remaining rows costs (Hassibi & Stork, 1992)

    dE = tr(W_PC^T ([H^-1]_PP)^-1 W_PC),

and for one row ``r`` the group saliency ``||w_rC||^2 / [H^-1]_rr``. The masks chosen here
minimise that error instead of ranking first-order scores (``|w| * ||x_k||``):

* **TW** (and the TW level of **TVW**): every tile's row segments are removed greedily one
  at a time, each time the segment of least saliency, with ``H^-1`` and the tile's weights
  updated exactly after each removal (group OBS; ``H^-1`` is downdated in blocks of rank
  ``block`` so the work is matrix products). Each tile yields a removal path with its
  error increases; made non-decreasing along the path, they are the segments' scores, so
  the pattern's own rule (:meth:`tvwjax.TW.mask`: budget, ``min_rows``, ``row_block``)
  keeps a prefix of each path and allocates rows across tiles by the least total error.
  Global scope allocates across layers by one threshold on the same error increases,
  relative to each layer's output energy ``tr(W^T H W)``, within ``layer_bounds``.
* **TVW**'s N:M part: inside each tile's kept rows (in compact order), SparseGPT's sweep
  with N:M selection, starting from the least-squares weights of the kept rows.
* **EW** and **N:M**: SparseGPT (Frantar & Alistarh, 2023): a blocked OBS sweep over the
  rows that picks each block's (EW) or group's (N:M) mask by ``w^2 / [U]_ii^2`` on the
  partly updated weights, so the comparison with TW / TVW is like for like.

Only masks come out; :func:`tvwjax.reconstruct` then refits the kept weights
(``tvwjax.one_shot(..., selection="obs")`` runs both). Everything runs jit-compiled, batched
over tiles with ``vmap`` in chunks bounded by ``chunk_bytes``.

References:
  B. Hassibi and D. G. Stork, "Second order derivatives for network pruning: Optimal Brain
  Surgeon", NeurIPS 1992.
  E. Frantar and D. Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
  One-Shot", ICML 2023.
  E. Frantar, S. P. Singh and D. Alistarh, "Optimal Brain Compression", NeurIPS 2022.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tvwjax import _select as sel
from tvwjax import _validate as val
from tvwjax._tree import as_matrix, leaves_with_paths, view_of
from tvwjax.errors import ConfigError, ShapeError
from tvwjax.patterns import EW, NM, TVW, TW, Pattern
from tvwjax.tiling import num_tiles

PyTree = Any
Array = jax.Array

_HI = jax.lax.Precision.HIGHEST
_TINY = 1e-20


def damped_hessian(gram: Array, damping: float) -> tuple[Array, Array]:
    """``(H, lambda)`` with ``H = G + lambda I`` and ``lambda = damping * mean(diag(G))``
    (SparseGPT's relative damping; a tiny positive ``lambda`` if that is 0)."""
    g = jnp.asarray(gram, jnp.float32)
    lam = damping * jnp.mean(jnp.diag(g))
    lam = jnp.where(lam > 0, lam, 1e-6 * jnp.mean(jnp.diag(g)) + 1e-12)
    return g + lam * jnp.eye(g.shape[0], dtype=jnp.float32), lam


ChooseFn = Callable[[Array, Array, Array, Array, Array], Array]
"""``choose(block, i, wb, mb, ub) -> mb``: the keep-mask of a sweep block, updated before
row ``i`` of block ``block`` is visited (``wb``: the block's current, Jacobi-scaled weights;
``ub``: the block's diagonal block of the upper Cholesky factor ``U`` of ``H^-1``, so
``wb[j]**2 / ub[j, j]**2`` is the OBS error of pruning ``wb[j]`` given the rows visited)."""


def _fixed_mask(block, i, wb, mb, ub):  # the mask is given: nothing to choose
    del block, i, wb, ub
    return mb


def obs_sweep(w: Array, m: Array, h: Array, width: int,
              choose: ChooseFn = _fixed_mask) -> tuple[Array, Array]:
    """SparseGPT's blocked OBS sweep (rows of ``w`` = input features).

    Rows are visited in order; the pruned entries of row ``i`` are set to zero and their
    error is compensated on the rows not yet visited through the upper Cholesky factor of
    ``H^-1`` (Frantar & Alistarh, 2023, Algorithm 1). Kept entries are frozen once visited.
    With the default ``choose`` the mask ``m`` is fixed; a ``choose`` function selects it
    during the sweep from the OBS saliencies of the partly updated weights (SparseGPT's
    adaptive mask selection, see :mod:`tvwjax.obs`), starting from ``m``. ``K`` must be a
    multiple of ``width``. Traceable (call it inside ``jit``).

    Returns:
      ``(weights, mask)``: the swept weights (zero where pruned) and the mask used.
    """
    hs, d = _scaled_h(h)
    return _sweep(w / d[:, None], m, _inverse(hs), d, width, choose)


def _sweep(ws: Array, m: Array, hinv: Array, d: Array, width: int,
           choose: ChooseFn) -> tuple[Array, Array]:
    """:func:`obs_sweep` given the Jacobi scaling ``d``, the scaled weights ``ws = w / d``
    and the scaled ``H^-1``."""
    k, n = ws.shape
    u = jnp.linalg.cholesky(hinv).T  # upper: H^-1 = U^T U
    rows = jnp.arange(k)
    local = jnp.arange(width)

    def block_step(b, carry):
        wcur, mcur = carry
        i1 = b * width
        wb = jax.lax.dynamic_slice(wcur, (i1, 0), (width, n))
        mb = jax.lax.dynamic_slice(mcur, (i1, 0), (width, n))
        ub = jax.lax.dynamic_slice(u, (i1, i1), (width, width))

        def inner(i, carry):
            wb, mb, err = carry
            mb = choose(b, i, wb, mb, ub)
            wi = wb[i]
            q = jnp.where(mb[i], wi, 0.0)
            e = (wi - q) / ub[i, i]
            upd = jnp.where((local > i)[:, None], ub[i][:, None] * e[None, :], 0.0)
            wb = (wb - upd).at[i].set(q)
            return wb, mb, err.at[i].set(e)

        wb, mb, err = jax.lax.fori_loop(0, width, inner,
                                        (wb, mb, jnp.zeros((width, n), jnp.float32)))
        wcur = jax.lax.dynamic_update_slice(wcur, wb, (i1, 0))
        mcur = jax.lax.dynamic_update_slice(mcur, mb, (i1, 0))
        urow = jax.lax.dynamic_slice(u, (i1, 0), (width, k))
        later = (rows >= i1 + width)[:, None]
        wcur = wcur - jnp.where(later, jnp.matmul(urow.T, err, precision=_HI), 0.0)
        return wcur, mcur

    out, mask = jax.lax.fori_loop(0, k // width, block_step, (ws, m))
    return jnp.where(mask, out * d[:, None], 0.0), mask


def _sweep_width(k: int, m: int = 1) -> int:
    """Block width of a sweep over ``k`` rows: at most 128, a multiple of 8 and of ``m``."""
    step = 8 * m // math.gcd(8, m)
    return val.round_up(min(128, val.round_up(k, 8)), step)


def _padded(w: Array, h: Array, width: int) -> tuple[Array, Array, Array]:
    """``w`` and ``h`` padded to a multiple of ``width`` rows (padding rows: identity
    equations, zero weights) and the validity of each row."""
    k, n = w.shape
    kp = val.round_up(k, width)
    hp = jnp.eye(kp, dtype=jnp.float32).at[:k, :k].set(h)
    wp = jnp.zeros((kp, n), jnp.float32).at[:k].set(w)
    return wp, hp, jnp.arange(kp) < k


# -- EW and N:M: SparseGPT ---------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames="width")
def _ew_sweep(w: Array, h: Array, valid: Array, keep: Array,
              width: int) -> tuple[Array, Array]:
    """EW mask by SparseGPT: at the start of block ``b`` keep its ``keep[b]`` entries of
    largest OBS saliency (padding rows always kept and counted in ``keep``)."""

    def fresh(b, wb, ub, i1):
        sal = jnp.square(wb) / jnp.square(jnp.diagonal(ub))[:, None]
        ok = jax.lax.dynamic_slice(valid, (i1,), (width,))
        return sel.topk_mask(jnp.where(ok[:, None], sal, jnp.inf), keep[b])

    def choose(b, i, wb, mb, ub):
        return jax.lax.cond(i == 0, lambda: fresh(b, wb, ub, b * width), lambda: mb)

    return _with_error(w, h, *obs_sweep(w, jnp.ones(w.shape, bool), h, width, choose))


def _with_error(w: Array, h: Array, w_new: Array, mask: Array) -> tuple[Array, Array]:
    """``(mask, tr((w - w_new)^T H (w - w_new)))``."""
    diff = w - w_new
    return mask, jnp.sum(diff * jnp.matmul(h, diff, precision=_HI))


@functools.partial(jax.jit, static_argnames="width")
def _fixed_sweep(w: Array, h: Array, mask: Array, width: int) -> tuple[Array, Array]:
    """The error of a given mask after the OBS sweep."""
    return _with_error(w, h, *obs_sweep(w, mask, h, width))


def _nm_choose(n: int, m: int) -> ChooseFn:
    """N:M selection at the first row of every group of ``m`` rows (SparseGPT, ``prunem``)."""

    def choose(b, i, wb, mb, ub):
        def fresh():
            g = jax.lax.dynamic_slice(wb, (i, 0), (m, wb.shape[1]))
            u = jax.lax.dynamic_slice(jnp.diagonal(ub), (i,), (m,))
            grp = sel.nm_select(jnp.square(g) / jnp.square(u)[:, None], n, m)
            return jax.lax.dynamic_update_slice(mb, grp, (i, 0))

        return jax.lax.cond(i % m == 0, fresh, lambda: mb)

    return choose


@functools.partial(jax.jit, static_argnames=("n", "m", "width"))
def _nm_sweep(w: Array, h: Array, n: int, m: int, width: int) -> tuple[Array, Array]:
    return _with_error(w, h, *obs_sweep(w, jnp.ones(w.shape, bool), h, width,
                                        _nm_choose(n, m)))


def _ew_keep_per_block(k: int, kp: int, n: int, width: int, sparsity: float) -> np.ndarray:
    """Kept entries per sweep block: the pattern's count ``round(d*K*N)`` spread over the
    blocks in proportion to their real rows, plus each block's padding entries."""
    d = np.float32(1.0) - np.float32(sparsity)
    total = min(max(int(np.floor(np.float64(d * np.float32(k * n)) + 0.5)), 1), k * n)
    ends = np.minimum(np.arange(1, kp // width + 1) * width, k)
    cum = np.floor(total * ends / k + 0.5).astype(np.int64)
    real = np.diff(np.concatenate([[0], cum]))
    pad = (np.arange(1, kp // width + 1) * width - np.maximum(ends, np.arange(kp // width) * width))
    return (real + pad * n).astype(np.int32)


# -- TW: group OBS removal paths, one per tile --------------------------------------------------
def _tile_path(hinv: Array, wt: Array, steps: int, block: int) -> tuple[Array, Array]:
    """Greedy group-OBS removal of the rows of one tile.

    Args:
      hinv: ``H^-1`` (``K x K``, Jacobi-scaled), shared by all tiles.
      wt: the tile's weights ``(K, G)`` in the same scaling.
      steps: rows to remove (``K - min_rows``).
      block: rank of each blocked downdate of ``H^-1``.

    Returns:
      ``(order, cost)``, each ``(ceil(steps / block) * block,)``: the row removed at each
      step and the error increase it caused (``inf`` past ``steps``).
    """
    k, g = wt.shape
    n_blocks = -(-steps // block)

    def block_step(bi, carry):
        hi, wt, d, alive, order, cost = carry

        def step(j, c):
            vb, wt, d, alive, order, cost = c
            p = bi * block + j
            active = p < steps
            sal = jnp.sum(jnp.square(wt), axis=1) / jnp.maximum(d, _TINY)
            sal = jnp.where(alive, sal, jnp.inf)
            r = jnp.argmin(sal)
            hcol = hi[:, r] - jnp.matmul(vb, vb[r], precision=_HI)
            inv = jax.lax.rsqrt(jnp.maximum(hcol[r], _TINY))
            v = jnp.where(alive & active, hcol * inv, 0.0)
            wt = wt - v[:, None] * (wt[r] * inv)[None, :]
            wt = wt.at[r].set(jnp.where(active, 0.0, wt[r]))
            d = d - jnp.square(v)
            alive = alive.at[r].set(alive[r] & ~active)
            order = order.at[p].set(r.astype(jnp.int32))
            cost = cost.at[p].set(jnp.where(active, sal[r], jnp.inf))
            return vb.at[:, j].set(v), wt, d, alive, order, cost

        vb = jnp.zeros((k, block), jnp.float32)
        vb, wt, d, alive, order, cost = jax.lax.fori_loop(
            0, block, step, (vb, wt, d, alive, order, cost))
        hi = hi - jnp.matmul(vb, vb.T, precision=_HI)
        return hi, wt, d, alive, order, cost

    size = n_blocks * block
    init = (hinv, wt, jnp.diag(hinv), jnp.ones((k,), bool), jnp.zeros((size,), jnp.int32),
            jnp.full((size,), jnp.inf, jnp.float32))
    _, _, _, _, order, cost = jax.lax.fori_loop(0, n_blocks, block_step, init)
    return order, cost


@functools.partial(jax.jit, static_argnames=("steps", "block"))
def _paths(hinv: Array, wts: Array, steps: int, block: int) -> tuple[Array, Array]:
    """:func:`_tile_path` for a chunk of tiles ``wts`` ``(c, K, G)``, batched by ``vmap``."""
    return jax.vmap(lambda wt: _tile_path(hinv, wt, steps, block))(wts)


@functools.partial(jax.jit, static_argnames="k")
def _segment_costs(order: Array, cost: Array, scale: Array, k: int) -> Array:
    """Per-row scores of one tile from its path: the running maximum of the error increase
    (non-decreasing along the path, so a threshold keeps a path prefix), relative to the
    layer's energy ``scale``; rows never removed get the largest finite float32."""
    mono = jax.lax.cummax(cost / scale, axis=0)
    mono = jnp.where(jnp.isfinite(mono), mono, jnp.finfo(jnp.float32).max)
    out = jnp.full((k,), jnp.finfo(jnp.float32).max, jnp.float32)
    return out.at[order].min(mono, mode="drop")


def _scaled(w: Array, h: Array) -> tuple[Array, Array, Array]:
    """Jacobi-scaled ``(w, H^-1)`` and the layer's energy ``tr(w^T H w)``."""
    hs, d = _scaled_h(h)
    ws = w / d[:, None]
    energy = jnp.sum(ws * jnp.matmul(hs, ws, precision=_HI))
    return ws, _inverse(hs), energy


_scaled_jit = jax.jit(_scaled)


def tile_row_scores(w: Array, h: Array, tile: int, min_rows: int = 1, *, block: int = 32,
                    chunk_bytes: int = 1 << 28) -> Array:
    """Second-order scores of the row segments of a TW layer: ``(K, T)``.

    Each tile's rows are removed greedily by group OBS (see the module docstring); a row's
    score is the running maximum of the relative error increases ``dE / tr(w^T H w)`` along
    its tile's path up to its removal, and the ``min_rows`` rows a tile keeps to the end get
    the largest finite float32. Larger = keep.

    Args:
      w: ``(K, N)`` kernel view. h: the damped Hessian ``(K, K)``.
      tile: tile width ``G``. min_rows: rows each tile keeps (its path stops there).
      block: rank of the blocked ``H^-1`` downdates. chunk_bytes: memory bound per chunk of
        tiles processed together.
    """
    k, n = w.shape
    t = num_tiles(n, tile)
    ws, hinv, energy = _scaled_jit(jnp.asarray(w, jnp.float32), jnp.asarray(h, jnp.float32))
    wt = jnp.zeros((k, t * tile), jnp.float32).at[:, :n].set(ws)
    wt = wt.reshape(k, t, tile).transpose(1, 0, 2)  # (T, K, G)
    steps = max(0, k - min(k, min_rows))
    if steps == 0:
        return jnp.full((k, t), jnp.finfo(jnp.float32).max, jnp.float32)
    block = max(1, min(block, steps))
    per = 4 * (3 * k * k + 3 * k * tile + k * block)
    chunk = _chunk(t, per, chunk_bytes)
    out = []
    for s in range(0, t, chunk):
        part = wt[s:s + chunk]
        if part.shape[0] < chunk:  # one compiled shape per layer
            part = jnp.concatenate([part, jnp.zeros((chunk - part.shape[0], k, tile))])
        order, cost = _paths(hinv, part, steps, block)
        out.append(jax.vmap(lambda o, c: _segment_costs(o, c, energy, k))(order, cost))
    return jnp.concatenate(out)[:t].T


# -- TW: exchange refinement of each tile's kept rows --------------------------------------------
def _compact(keep: Array, size: int) -> tuple[Array, Array]:
    """The first ``size`` rows of a tile in compact order (its kept rows first, in row
    order, then pruned rows) and which of them are kept. With ``size`` at least the tile's
    kept count, the kept rows' subsystem ``H_SS`` is ``size x size`` instead of ``K x K``
    (the pruned rows inside it become identity equations)."""
    idx = jnp.argsort(~keep, stable=True)[:size]
    return idx, keep[idx]


def _compact_size(keeps: Array, k: int, multiple: int = 64) -> int:
    """The compact size of a layer's tiles: the largest kept count, rounded up to a
    multiple of ``multiple`` (few compiled sizes), at most ``K``."""
    return min(k, val.round_up(max(1, int(jnp.max(jnp.sum(keeps, axis=1)))), multiple))


def _exchange_init(hs: Array, wt: Array, keep: Array, size: int) -> tuple[Array, ...]:
    """The state of one tile's exchange rounds (:func:`_tiles_exchange`):
    ``(A, C, W*, res, s, keep, B, energy, done)``.

    ``A = (H_SS)^-1`` embedded (zero outside the kept set ``S``), ``C = A H``, the optimal
    kept weights ``W* = A B`` with ``B = H w``, ``res = B - H W*`` and
    ``s_r = H_rr - h_r^T A h_r``. They start from the kept rows' subsystem
    (:func:`_compact`, ``size`` at least the kept count): ``O(size^3 + size^2 K)`` instead
    of ``O(K^3)``.
    """
    k, g = wt.shape
    idx, ok = _compact(keep, size)
    both = ok[:, None] & ok[None, :]
    eye = jnp.eye(size, dtype=jnp.float32)
    hrows = hs[idx]  # (size, K)
    lh = jnp.linalg.cholesky(jnp.where(both, hrows[:, idx], eye))
    a_s = jnp.where(both, jax.scipy.linalg.cho_solve((lh, True), eye), 0.0)
    b = jnp.matmul(hs, wt, precision=_HI)
    a = jnp.zeros((k, k), jnp.float32).at[idx[:, None], idx[None, :]].set(a_s)
    c = jnp.zeros((k, k), jnp.float32).at[idx].set(jnp.matmul(a_s, hrows, precision=_HI))
    wstar = jnp.zeros((k, g), jnp.float32).at[idx].set(jnp.matmul(a_s, b[idx], precision=_HI))
    sch = jnp.diag(hs) - jnp.sum(hs * c, axis=0)
    res = b - jnp.matmul(hs, wstar, precision=_HI)
    return a, c, wstar, res, sch, keep, b, jnp.sum(wt * b), jnp.asarray(False)


def _exchange_round(hs: Array, state: tuple[Array, ...], cands: int) -> tuple[Array, ...]:
    """One exchange round of one tile: the best (add ``r``, drop ``q``) pair among the
    ``cands`` rows of largest add gain, committed if it lowers the error by more than
    ``1e-6`` of the tile's energy; otherwise the state is returned unchanged, with
    ``done`` set."""
    a, c, wstar, res, sch, keep, b, energy, _ = state
    k = a.shape[0]
    idx = jnp.arange(k)
    sch = jnp.maximum(sch, _TINY)
    gain = jnp.where(keep, -jnp.inf, jnp.sum(jnp.square(res), axis=1) / sch)
    gain_top, rs = jax.lax.top_k(gain, cands)

    def with_added(r, gr):
        u = jnp.where(idx == r, 1.0, 0.0) - c[:, r]
        a_d = jnp.diag(a) + jnp.square(u) / sch[r]
        w_new = wstar + u[:, None] * (jnp.matmul(u, b, precision=_HI) / sch[r])[None, :]
        cost = jnp.sum(jnp.square(w_new), axis=1) / jnp.maximum(a_d, _TINY)
        cost = jnp.where(keep & (idx != r), cost, jnp.inf)  # dropping r undoes the add
        q = jnp.argmin(cost)
        return gr - cost[q], q

    better, qs = jax.vmap(with_added)(rs, gain_top)
    better = jnp.where(jnp.isfinite(gain_top), better, -jnp.inf)
    j = jnp.argmax(better)
    r, q = rs[j], qs[j]
    go = better[j] > 1e-6 * energy
    sr = sch[r]
    # add r: A1 = A + u u^T / s_r (C1 = A1 H, W1 = A1 B, res1 = B - H W1 with it); then drop
    # q: A2 = A1 - a1 a1^T / a1_q with a1 = A1[:, q] (the same for C and W). Both updates of
    # A, and both of C, are one pass over it, from vectors.
    u = jnp.where(idx == r, 1.0, 0.0) - c[:, r]
    a1q = a[:, q] + u * (u[q] / sr)
    aqq = jnp.maximum(a1q[q], _TINY)
    aq = a1q / aqq
    hv = jnp.matmul(hs, jnp.stack([u, aq], axis=1), precision=_HI)
    hu, haq = hv[:, 0], hv[:, 1]
    ub = jnp.matmul(u, b, precision=_HI) / sr
    c1q = c[q] + hu * (u[q] / sr)

    def on(v):  # exact zeros (not 0 * v) when the round commits nothing
        return jnp.where(go, v, 0.0)

    a = a + jnp.outer(on(u), on(u / sr)) - jnp.outer(on(aq), on(a1q))
    c = c + jnp.outer(on(u), on(hu / sr)) - jnp.outer(on(aq), on(c1q))
    w1 = wstar + jnp.outer(u, ub)
    w2 = (w1 - jnp.outer(aq, w1[q])).at[q].set(0.0)
    res2 = res - jnp.outer(hu, ub) + jnp.outer(haq, w1[q])
    # s_j = H_jj - h_j^T A h_j: -(h_j^T u)^2 / s_r for the add, +(h_j^T a1)^2 / a1_q for the drop
    sch2 = sch - jnp.square(hu) / sr + aqq * jnp.square(haq)
    keep2 = keep.at[r].set(True).at[q].set(False)
    pick = functools.partial(jnp.where, go)
    return (a, c, pick(w2, wstar), pick(res2, res), pick(sch2, sch), pick(keep2, keep), b,
            energy, ~go)


@functools.partial(jax.jit, static_argnames=("iters", "cands", "size"))
def _tiles_exchange(hs: Array, wts: Array, keeps: Array, iters: int, cands: int,
                    size: int) -> Array:
    """Improve each tile's kept row set (``keeps`` ``(c, K)``) by exact OBS exchanges
    (add a row, drop a row); returns the new kept sets (same sizes).

    Adding row ``r`` lowers a tile's error by ``||res_r||^2 / s_r`` and then dropping row
    ``q`` raises it by ``||W*'_q||^2 / A'_qq`` (both exact; see :func:`_exchange_init`). Each
    round takes the ``cands`` rows of largest add gain, pairs each with its best drop, and
    commits the best pair if it lowers the error (every ``r``, ``q`` pair if ``cands`` covers
    the pruned rows: a 1-swap local optimum). ``A``, ``C`` and ``s`` are kept up to date by
    rank-one updates. At most ``iters`` rounds; they stop once no tile has an exchange that
    lowers its error (the loop runs over the batched rounds, so a finished tile costs its
    round's passes but no copies).
    """
    state = jax.vmap(lambda wt, kp: _exchange_init(hs, wt, kp, size))(wts, keeps)
    _, state = jax.lax.while_loop(
        lambda cr: (cr[0] < iters) & ~jnp.all(cr[1][-1]),
        lambda cr: (cr[0] + 1, jax.vmap(lambda st: _exchange_round(hs, st, cands))(cr[1])),
        (0, state))
    return state[5]


# -- TVW: N:M inside the kept rows of each tile -------------------------------------------------
def _tile_nm(hs: Array, ws: Array, keep: Array, n: int, m: int, width: int,
             size: int) -> tuple[Array, Array]:
    """N:M mask of one tile inside its kept rows (compact order) by SparseGPT's sweep,
    starting from the least-squares weights of the kept rows; and the tile's output error
    ``tr((w - w')^T H (w - w'))`` with the swept weights ``w'``.

    One Cholesky factor serves both the least-squares weights and ``H^-1`` (one solve with
    both right-hand sides), so the LAPACK calls of the tiles batched by ``vmap`` form a
    single chain. Two batched LAPACK calls that XLA:CPU may run at the same time deadlock
    its intra-op thread pool when they occupy all of its threads (jaxlib 0.10: each blocks a
    worker waiting for batch tasks queued on the same pool; seen on 2 cores).

    The sweep runs over the first ``size`` rows in compact order (:func:`_compact`; ``size``
    at least the kept count and a multiple of ``m``): the pruned rows after them are
    identity equations with zero weights, which change nothing.
    """
    k, g = ws.shape
    perm, kp = _compact(keep, size)
    both = kp[:, None] & kp[None, :]
    hrows = hs[perm]  # (size, K)
    hp = jnp.where(both, hrows[:, perm], jnp.eye(size, dtype=jnp.float32))
    rhs = jnp.where(kp[:, None], jnp.matmul(hrows, ws, precision=_HI), 0.0)
    rhs, hp, _ = _padded(rhs, hp, width)
    hps, d = _scaled_h(hp)
    lh = jnp.linalg.cholesky(hps)
    eye = jnp.eye(hp.shape[0], dtype=jnp.float32)
    sol = jax.scipy.linalg.cho_solve((lh, True), jnp.concatenate([rhs * d[:, None], eye], 1))
    w1, mask = _sweep(sol[:, :g], jnp.ones(rhs.shape, bool), sol[:, g:], d, width,
                      _nm_choose(n, m))
    mask = mask[:size] & kp[:, None]
    w_new = jnp.zeros((k, g), jnp.float32).at[perm].set(jnp.where(mask, w1[:size], 0.0))
    diff = ws - w_new
    return (jnp.zeros((k, g), bool).at[perm].set(mask),
            jnp.sum(diff * jnp.matmul(hs, diff, precision=_HI)))


@functools.partial(jax.jit, static_argnames=("n", "m", "width", "size"))
def _tiles_nm(hs: Array, wts: Array, keeps: Array, n: int, m: int, width: int,
              size: int) -> tuple[Array, Array]:
    return jax.vmap(lambda wt, kp: _tile_nm(hs, wt, kp, n, m, width, size))(wts, keeps)


def _scaled_h(h: Array) -> tuple[Array, Array]:
    d = jax.lax.rsqrt(jnp.maximum(jnp.diag(h), 1e-30))
    return h * d[:, None] * d[None, :], d


def _inverse(hs: Array) -> Array:
    """``hs^-1`` of a (Jacobi-scaled) positive definite matrix, by Cholesky."""
    lh = jnp.linalg.cholesky(hs)
    return jax.scipy.linalg.cho_solve((lh, True), jnp.eye(hs.shape[0], dtype=jnp.float32))


# -- one layer ---------------------------------------------------------------------------------
def _supported(pattern: Pattern, name: str) -> None:
    if type(pattern) not in (EW, NM, TW, TVW):
        raise ConfigError(f"{name}: second-order selection supports the patterns EW, NM, TW "
                          f"and TVW, got {pattern!r}")
    if isinstance(pattern, TW) and pattern.column_share != 0:
        raise ConfigError(f"{name}: second-order selection needs TW/TVW with "
                          f"column_share=0 (TW-1D), got column_share={pattern.column_share}")


def _tw_level(pattern: TW) -> TW:
    """The TW pattern of a TW / TVW pattern's row level (TVW: its TW part)."""
    return TW(tile=pattern.tile, row_block=pattern.row_block, min_rows=pattern.min_rows)


def _layer_scores(pattern: Pattern, w2: Array, h: Array, chunk_bytes: int) -> Array | None:
    """Per-element second-order keep scores (larger = keep) of a TW / TVW / EW layer, in
    units of relative output error (comparable across layers); None for N:M."""
    if isinstance(pattern, TW):
        tw = _tw_level(pattern)
        floor = min(w2.shape[0], val.round_up(tw.min_rows, tw.row_block))
        seg = tile_row_scores(w2, h, tw.tile, floor, chunk_bytes=chunk_bytes)
        tile_id = jnp.arange(w2.shape[1]) // tw.tile
        # square roots: the pattern's segment score (root mean square) gives back seg
        return jnp.sqrt(seg)[:, tile_id]
    if isinstance(pattern, EW):
        ws, hinv, energy = _scaled_jit(w2, h)
        return jnp.square(ws) / jnp.maximum(jnp.diag(hinv), _TINY)[:, None] / energy
    return None


def _needs_scores(pattern: Pattern, sparsity: float) -> bool:
    """Whether a layer-scope mask needs the TW row scores (TW; TVW below its floor)."""
    if isinstance(pattern, TVW):
        return sparsity > pattern.floor + 1e-9
    return isinstance(pattern, TW)


def _layer_mask(pattern: Pattern, w2: Array, h: Array, sparsity: float,
                scores: Array | None, chunk_bytes: int, exchanges: int = 0,
                cands: int = 8) -> Array:
    """The second-order mask of one ``(K, N)`` layer at ``sparsity`` (concrete)."""
    k, n = w2.shape
    if sparsity == 0:
        return jnp.ones((k, n), bool)
    act = jnp.abs(w2) * jnp.sqrt(jnp.diag(h))[:, None]  # Wanda's order, from the Gram
    if isinstance(pattern, NM | EW):
        # SparseGPT's mask, or the activation-score mask if that one has the lower output
        # error after the same OBS sweep (the rule TVW's rows follow, see below)
        width = _sweep_width(k, pattern.m if isinstance(pattern, NM) else 1)
        wp, hp, valid = _padded(w2, h, width)
        if isinstance(pattern, NM):
            mask, err = _nm_sweep(wp, hp, pattern.n, pattern.m, width)
        else:
            keep = _ew_keep_per_block(k, wp.shape[0], n, width, sparsity)
            mask, err = _ew_sweep(wp, hp, valid, jnp.asarray(keep), width)
        alt = pattern.mask(act, sparsity)
        alt_p = jnp.ones(wp.shape, bool).at[:k].set(alt)
        _, err_alt = _fixed_sweep(wp, hp, alt_p, width)
        return alt if float(err_alt) < float(err) else mask[:k]
    tw = _tw_level(pattern)
    d_tw = 1.0 - sparsity
    if isinstance(pattern, TVW):
        d_tw = min(1.0, float(np.float32(1.0) - np.float32(sparsity)) * pattern.m / pattern.n)
    rows = tw.mask(scores, 1.0 - d_tw) if d_tw < 1.0 else jnp.ones((k, n), bool)
    t = num_tiles(n, tw.tile)
    keeps = rows[:, jnp.arange(t) * tw.tile].T  # (T, K): the kept rows of each tile
    hs, dsc = _scaled_h(h)
    ws = w2 / dsc[:, None]
    wt = jnp.zeros((k, t * tw.tile), jnp.float32).at[:, :n].set(ws)
    wt = wt.reshape(k, t, tw.tile).transpose(1, 0, 2)
    if exchanges > 0 and d_tw < 1.0:
        per = 4 * (6 * k * k + 4 * k * tw.tile)
        size = _compact_size(keeps, k)
        keeps = _chunked(lambda wp, kp: _tiles_exchange(
            hs, wp, kp, exchanges, min(k, max(1, cands)), size), wt, keeps, per, chunk_bytes)
    if not isinstance(pattern, TVW):
        return keeps.T[:, jnp.minimum(jnp.arange(n) // tw.tile, t - 1)]
    width = _sweep_width(k, pattern.m)
    per = 4 * (4 * k * k + 4 * val.round_up(k, width) * tw.tile)

    def nm_inside(kp_all):
        size = _compact_size(kp_all, k, math.lcm(64, pattern.m))  # a multiple of m or K
        masks, err = _chunked(lambda wp, kp: _tiles_nm(hs, wp, kp, pattern.n, pattern.m,
                                                        width, size), wt, kp_all, per,
                              chunk_bytes)
        # finished before the next candidate is dispatched: two batched LAPACK chains that
        # XLA:CPU runs at the same time can deadlock its pool (see _tile_nm)
        return masks, jax.block_until_ready(err)

    masks, err = nm_inside(keeps)
    if d_tw < 1.0:
        # The row paths ignore that N:M will halve every kept row; rows ranked by the
        # activation score (Wanda: |w| * sqrt(H_kk)) are the other candidate. Per tile,
        # the same number of rows by that score competes with the path's rows (tiles are
        # independent in the output error, and equal counts keep the sparsity exact); and
        # the activation score's own TW mask (its own rows per tile) competes with the
        # result for the whole layer: the lower output error after the N:M sweep wins.
        seg = tw._segments(act, None)[0].T  # (T, K): the pattern's own row-segment scores
        rank = jnp.argsort(jnp.argsort(-seg, axis=1, stable=True), axis=1, stable=True)
        matched = rank < jnp.sum(keeps, axis=1, keepdims=True)
        masks_m, err_m = nm_inside(matched)
        better = err_m < err
        masks = jnp.where(better[:, None, None], masks_m, masks)
        err = jnp.where(better, err_m, err)
        alt = tw.mask(act, 1.0 - d_tw)[:, jnp.arange(t) * tw.tile].T
        masks_alt, err_alt = nm_inside(alt)
        if float(jnp.sum(err_alt)) < float(jnp.sum(err)):
            masks = masks_alt
    return masks.transpose(1, 0, 2).reshape(k, t * tw.tile)[:, :n]


def _chunk(t: int, per: int, chunk_bytes: int) -> int:
    """Tiles per chunk: at most ``chunk_bytes // per`` (at least 1), the ``t`` tiles spread
    evenly over the fewest chunks (6 tiles at a bound of 4 run as 3 + 3, not 4 + 4 with two
    padding tiles)."""
    bound = max(1, min(t, chunk_bytes // per))
    return -(-t // -(-t // bound))


def _chunked(fn: Callable[[Array, Array], Any], wt: Array, keeps: Array, per: int,
             chunk_bytes: int) -> Any:
    """``fn`` over the tiles ``(wt[i], keeps[i])`` in chunks of at most ``chunk_bytes``
    (``per`` bytes a tile), each chunk padded to one compiled size."""
    t = wt.shape[0]
    chunk = _chunk(t, per, chunk_bytes)
    out = []
    for s in range(0, t, chunk):
        wpart, kpart = wt[s:s + chunk], keeps[s:s + chunk]
        pad = chunk - wpart.shape[0]
        if pad:
            wpart = jnp.concatenate([wpart, jnp.zeros((pad, *wpart.shape[1:]))])
            kpart = jnp.concatenate([kpart, jnp.ones((pad, *kpart.shape[1:]), bool)])
        out.append(fn(wpart, kpart))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs)[:t], *out)


def obs_mask(w: Array, gram: Array, pattern: Pattern, sparsity: float, *,
             damping: float = 0.01, exchanges: int = 32, candidates: int = 8,
             chunk_bytes: int = 1 << 28, name: str = "w") -> Array:
    """Second-order keep-mask of one layer (see the module docstring).

    Args:
      w: the kernel (its GEMM view ``(K, N)`` is the one ``gram`` fits).
      gram: ``X^T X`` of the layer's calibration inputs, ``(K, K)``.
      pattern: ``EW()``, ``NM()``, ``TW(...)`` or ``TVW(...)`` (TW / TVW with
        ``column_share=0``).
      sparsity: target sparsity (a number; the pattern's rules apply).
      damping: ``lambda`` relative to the mean of ``diag(X^T X)``.
      exchanges: TW / TVW: at most this many exact add-one / drop-one exchanges per tile
        after the greedy removal path (0: the path alone).
      candidates: rows of largest add gain tried in each exchange round (each paired with
        its best drop; ``candidates >= K`` searches every single swap).
      chunk_bytes: memory bound per chunk of tiles processed together.
      name: what error messages call ``w``.

    Returns:
      A bool mask shaped like ``w`` that follows ``pattern`` at ``sparsity``.

    >>> import numpy as np, tvwjax
    >>> from tvwjax.obs import obs_mask
    >>> rng = np.random.default_rng(0)
    >>> x = rng.standard_normal((256, 32)).astype(np.float32)
    >>> w = rng.standard_normal((32, 16)).astype(np.float32)
    >>> m = obs_mask(w, x.T @ x, tvwjax.TVW(tile=8), 0.75)
    >>> tvwjax.check(m, tvwjax.TVW(tile=8), 0.75); float(1 - m.mean())
    0.75
    """
    _supported(pattern, name)
    w2, h, sparsity = _layer_inputs(w, gram, pattern, sparsity, damping, name)
    scores = (_layer_scores(pattern, w2, h, chunk_bytes) if _needs_scores(pattern, sparsity)
              else None)
    exchanges = val.int_at_least(exchanges, f"{name}: exchanges", 0)
    candidates = val.int_at_least(candidates, f"{name}: candidates", 1)
    m = _layer_mask(pattern, w2, h, sparsity, scores, chunk_bytes, exchanges, candidates)
    return m.reshape(jnp.shape(w))


def _layer_inputs(w, gram, pattern, sparsity, damping, name):
    if not (isinstance(damping, int | float) and not isinstance(damping, bool)
            and math.isfinite(damping) and damping >= 0):
        raise ConfigError(f"{name}: damping must be a finite number >= 0, got {damping!r}")
    sparsity = val.sparsity(sparsity, f"{name}: sparsity")
    if val.is_traced(sparsity):
        raise ConfigError(f"{name}: second-order selection needs a concrete sparsity")
    sparsity = float(sparsity)
    shape = tuple(jnp.shape(w))
    k = jnp.shape(gram)[0] if jnp.ndim(gram) == 2 else None
    n_in = next((i for i in range(1, len(shape)) if math.prod(shape[:i]) == k), None)
    if n_in is None or jnp.shape(gram) != (k, k):
        raise ShapeError(f"{name}: gram has shape {jnp.shape(gram)}, expected (K, K) with K "
                         f"the input features of a GEMM view of the kernel {shape}")
    w2 = as_matrix(jnp.asarray(w, jnp.float32), n_in)
    pattern.validate_shape(tuple(w2.shape), name)
    pattern.validate_sparsity(sparsity, name)
    h, _ = damped_hessian(gram, damping)
    return w2, h, sparsity


# -- a whole model -----------------------------------------------------------------------------
def obs_masks(params: PyTree, stats: Mapping[str, Any], pattern: Pattern, sparsity: float, *,
              where: Callable[[str, Any], bool] | None = None, scope: str = "layer",
              overrides: Mapping[str, float | None] | None = None,
              layer_bounds: tuple[float, float] | None = None,
              views: Mapping[str, int] | None = None, damping: float = 0.01,
              exchanges: int = 32, candidates: int = 8, chunk_bytes: int = 1 << 28,
              progress: Callable[[str], None] | None = None) -> PyTree:
    """Second-order masks for every selected leaf of ``params`` (as :func:`tvwjax.masks`).

    Args:
      params: the parameter pytree.
      stats: ``{kernel_path: LayerStats}`` with Gram matrices
        (:func:`tvwjax.calibration.collect` with ``gram=True``).
      pattern: ``EW()``, ``NM()``, ``TW(...)`` or ``TVW(...)`` (``column_share=0``).
      sparsity: target sparsity (a number).
      where, scope, overrides, layer_bounds, views: as :func:`tvwjax.masks`; in global scope
        the threshold is over relative output-error increases (no per-layer normalisation
        is needed) and ``layer_bounds`` bound each leaf's sparsity.
      damping: relative damping of the Hessian.
      exchanges, candidates: the exchange refinement of TW / TVW rows (:func:`obs_mask`).
      chunk_bytes: memory bound per chunk of tiles.
      progress: optional callback receiving a message per leaf.

    Returns:
      A pytree like ``params``: bool masks on the pruned leaves, ``None`` elsewhere.

    Raises:
      ConfigError: an unsupported pattern, a traced sparsity, or a selected leaf without a
        Gram matrix (names the path). ShapeError: a Gram matrix that fits no GEMM view.
    """
    from tvwjax.masking import allocate, selection

    name = "obs_masks"
    _supported(pattern, name)
    exchanges = val.int_at_least(exchanges, f"{name}: exchanges", 0)
    candidates = val.int_at_least(candidates, f"{name}: candidates", 1)
    if val.is_traced(sparsity):
        raise ConfigError(f"{name}: sparsity must be a number, got a traced value")
    plan = selection(params, pattern, sparsity, where=where, scope=scope, overrides=overrides,
                     layer_bounds=layer_bounds, views=views)
    sparsity = float(val.sparsity(sparsity))
    flat, treedef = leaves_with_paths(params)
    index = {p: i for i, (p, _) in enumerate(flat)}
    layers = []
    for lp in plan.pruned:
        st = stats.get(lp.path)
        if st is None or getattr(st, "gram", None) is None:
            raise ConfigError(f"{lp.path}: no Gram matrix in stats (collect the calibration "
                              "statistics with gram=True, and capture every pruned layer)")
        leaf = flat[index[lp.path]][1]
        n_in, _ = view_of(lp.path, tuple(leaf.shape), views)
        if lp.view is None or jnp.shape(st.gram) != (lp.view[0], lp.view[0]):
            raise ShapeError(f"{lp.path}: Gram matrix has shape {jnp.shape(st.gram)}, "
                             f"expected ({lp.view[0]}, {lp.view[0]}) for the GEMM view "
                             f"{lp.view} of the kernel {tuple(leaf.shape)}")
        s_leaf = lp.sparsity if lp.sparsity is not None else sparsity
        w2, h, _ = _layer_inputs(as_matrix(jnp.asarray(leaf, jnp.float32), n_in), st.gram,
                                 pattern, s_leaf, damping, lp.path)
        fixed = scope == "layer" or lp.sparsity is not None
        layers.append([lp.path, leaf, w2, h, s_leaf, fixed])
    if progress is not None:
        progress(f"second-order scores of {len(layers)} layers")
    pool = [i for i, lay in enumerate(layers) if not lay[5]]
    glob = scope == "global" and len(pool) > 1 and pattern.supports_global
    scores = [_layer_scores(pattern, w2, h, chunk_bytes)
              if glob or _needs_scores(pattern, s) else None
              for _, _, w2, h, s, _ in layers]
    if glob:
        tw = _tw_level(pattern) if isinstance(pattern, TW) else None
        units = tw.units if tw is not None else pattern.units
        bounds = (0.0, 1.0) if layer_bounds is None else tuple(layer_bounds)
        # Second-order unit scores are relative output-error increases, comparable
        # across layers as they are: no per-layer normalisation.
        dens = allocate([units(scores[i]) for i in pool],
                        [scores[i].size for i in pool], sparsity,
                        pattern.allocation_scale, bounds)
        for i, dn in zip(pool, dens, strict=True):
            s_i = min(max(1.0 - float(dn), 0.0), sel.BELOW_ONE)
            layers[i][4] = max(s_i, pattern.floor) if s_i > 0 else 0.0
    out: list[Any] = [None] * len(flat)
    for (path, leaf, w2, h, s_leaf, _), sc in zip(layers, scores, strict=True):
        if progress is not None:
            progress(f"{path}: {pattern.name} at {s_leaf:.3f}")
        m = _layer_mask(pattern, w2, h, s_leaf, sc, chunk_bytes, exchanges, candidates)
        out[index[path]] = m.reshape(leaf.shape)
    return jax.tree_util.tree_unflatten(treedef, out)


__all__ = ["damped_hessian", "obs_mask", "obs_masks", "obs_sweep", "tile_row_scores"]
