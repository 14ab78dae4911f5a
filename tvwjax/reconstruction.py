"""One-shot reconstruction: refit the kept weights of each layer under a fixed mask.

After a mask ``M`` is chosen, the kept weights of a layer ``y = x @ W`` are refit on
calibration inputs ``X`` (rows = tokens) to minimise the layer's output error

    E(W') = ||X W - X (M * W')||_F^2,

a linear least-squares problem whose normal equations only need the Gram matrix
``G = X^T X`` (:mod:`tvwjax.calibration`). Columns (output features) are independent; for
column ``j`` with kept rows ``S``:

    (G_SS + lambda I) w'_S = ((G + lambda I) w)_S ,       w'_P = 0 (pruned rows),

i.e. the minimiser of ``E + lambda ||w'_S - w_S||^2`` (damping ``lambda`` = ``damping`` x
mean of ``diag(G)``, as in SparseGPT, Frantar & Alistarh 2023). This is the exact
multi-weight Optimal Brain Surgeon update (Hassibi & Stork, 1992) for the given mask.
Because ``w'_S = w_S`` (the plainly masked weights) is feasible, the damped optimum never has
a larger error than plain masking; a per-column safeguard additionally keeps the masked
weights wherever the float32 solve would not reduce the error (or is not finite).

Columns with the *same* kept set share one system: a tile-wise (TW) mask has one kept row
set per tile, so TW costs one ``K_t x K_t`` Cholesky solve per tile with the tile's ``G``
columns as right-hand sides. EW, 2:4 and TVW masks give (almost) one system per column. All
systems of a layer are gathered, padded to one size (padding rows are identity), batched in
memory-bounded chunks and solved by a jit-compiled, Jacobi-scaled float32 Cholesky.

:func:`reconstruct` does this for a whole model *sequentially* (as SparseGPT and Wanda do):
layers are visited in execution order and each layer's Gram matrix is computed on the
inputs produced by the model whose earlier layers are already pruned and refit, so later
layers compensate for the errors of earlier ones. With ``match="dense"`` the target is the
dense model's layer output (``min ||X_dense W - X_pruned W'||^2``, using the cross-Gram
``X_pruned^T X_dense``) rather than the pruned inputs' own dense output.

References:
  B. Hassibi and D. G. Stork, "Second order derivatives for network pruning: Optimal Brain
  Surgeon", NeurIPS 1992.
  E. Frantar and D. Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
  One-Shot", ICML 2023.
  M. Sun, Z. Liu, A. Bair and J. Z. Kolter, "A Simple and Effective Pruning Approach for Large
  Language Models" (Wanda), arXiv:2306.11695, 2023.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tvwjax import _validate as val
from tvwjax._tree import as_matrix, leaves_with_paths, n_in_for, path_str
from tvwjax.calibration import (
    Batch,
    InputsFn,
    LayerStats,
    RowMaskFn,
    collect,
    collect_pair,
    layer_groups,
)
from tvwjax.data_aware import ScoreFn, data_scores, wanda
from tvwjax.errors import CalibrationWarning, ConfigError, ShapeError, TreeMismatchError
from tvwjax.masking import masks
from tvwjax.obs import obs_masks, obs_sweep
from tvwjax.patterns import Pattern

PyTree = Any
Array = jax.Array

_HI = jax.lax.Precision.HIGHEST


def _view_for(shape: tuple[int, ...], gram: Any) -> int:
    """The GEMM view (``n_in``) of a kernel that its ``(K, K)`` Gram matrix fits: the
    calibration capture decides which axes are contracted (attention: ``(in, H, D)`` has
    ``K = in``, ``(H, D, out)`` has ``K = H*D``). Falls back to ``ndim - 1`` (then the shape
    check reports the mismatch)."""
    k = jnp.shape(gram)[0] if jnp.ndim(gram) == 2 else None
    n_in = n_in_for(tuple(shape), k) if k is not None else None
    return len(shape) - 1 if n_in is None else n_in


def _pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def _bucket(x: int) -> int:
    """Round up to 2^j or 1.5 * 2^j (at least 32): few distinct compiled system sizes."""
    p = _pow2(max(x, 32))
    return 3 * p // 4 if 3 * p // 4 >= x and p >= 64 else p


# -- jit-compiled pieces -----------------------------------------------------------------------
@jax.jit
def _solve_chunk(h: Array, rhs: Array, rows: Array, rvalid: Array, cols: Array,
                 cvalid: Array) -> Array:
    """Solve ``h[S, S] x = rhs[S, C]`` for a batch of (row set, column set) systems.

    ``rows`` ``(c, k)`` / ``cols`` ``(c, r)`` hold padded indices with validity masks;
    padding rows become identity equations with zero right-hand side.
    """
    k = rows.shape[1]
    a = h[rows[:, :, None], rows[:, None, :]]
    vv = rvalid[:, :, None] & rvalid[:, None, :]
    eye = jnp.eye(k, dtype=jnp.float32)
    a = jnp.where(vv, a, eye)
    b = rhs[rows[:, :, None], cols[:, None, :]]
    b = jnp.where(rvalid[:, :, None] & cvalid[:, None, :], b, 0.0)
    d = jax.lax.rsqrt(jnp.maximum(jnp.diagonal(a, axis1=1, axis2=2), 1e-30))  # Jacobi scaling
    a = a * d[:, :, None] * d[:, None, :]
    b = b * d[:, :, None]
    chol = jnp.linalg.cholesky(a)
    y = jax.lax.linalg.triangular_solve(chol, b, left_side=True, lower=True)
    x = jax.lax.linalg.triangular_solve(chol, y, left_side=True, lower=True, transpose_a=True)
    return x * d[:, :, None]


@jax.jit
def _scatter(w: Array, rows: Array, rvalid: Array, cols: Array, cvalid: Array,
             vals: Array) -> Array:
    k, n = w.shape
    r = jnp.where(rvalid, rows, k)[:, :, None]
    c = jnp.where(cvalid, cols, n)[:, None, :]
    r, c = jnp.broadcast_arrays(r, c)
    return w.at[r, c].set(vals, mode="drop")


@jax.jit
def _column_objective(x: Array, g: Array, t: Array) -> Array:
    """Per-column ``x^T G x - 2 x^T t`` (the error up to a column constant)."""
    return jnp.sum(x * (jnp.matmul(g, x, precision=_HI) - 2.0 * t), axis=0)


@jax.jit
def _finish(w_plain: Array, w_new: Array, g: Array, t: Array) -> Array:
    e_plain = _column_objective(w_plain, g, t)
    e_new = _column_objective(w_new, g, t)
    ok = jnp.all(jnp.isfinite(w_new), axis=0) & (e_new <= e_plain)
    return jnp.where(ok[None, :], w_new, w_plain)


@functools.partial(jax.jit, static_argnames="width")
def _obs_sweep(w: Array, m: Array, h: Array, width: int) -> Array:
    """The OBS sweep with the fixed mask ``m`` (:func:`tvwjax.obs.obs_sweep`)."""
    return obs_sweep(w, m, h, width)[0]


# -- one layer ---------------------------------------------------------------------------------
def layer_error(w_ref: Array, w: Array, gram: Array) -> Array:
    """Calibration output error ``||X w_ref - X w||_F^2 = tr((w_ref - w)^T G (w_ref - w))``.

    Args:
      w_ref: reference kernel ``(K, N)`` (e.g. the dense weights).
      w: the kernel to compare (e.g. masked or reconstructed), same shape.
      gram: ``X^T X`` ``(K, K)``.

    Returns:
      A float32 scalar.
    """
    n_in = _view_for(jnp.shape(w), gram)
    d = (as_matrix(jnp.asarray(w_ref, jnp.float32), n_in)
         - as_matrix(jnp.asarray(w, jnp.float32), n_in))
    return jnp.sum(d * jnp.matmul(jnp.asarray(gram, jnp.float32), d, precision=_HI))


def _groups(m: np.ndarray, include_full: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Columns with identical kept-row sets: ``[(rows, cols), ...]``."""
    k, _ = m.shape
    cnt = m.sum(axis=0)
    active = np.flatnonzero((cnt > 0) & ((cnt < k) | include_full))
    if active.size == 0:
        return []
    uniq, inv = np.unique(m[:, active].T, axis=0, return_inverse=True)
    inv = np.asarray(inv).reshape(-1)
    return [(np.flatnonzero(u), active[inv == i]) for i, u in enumerate(uniq)]


def reconstruct_layer(w: Array, mask: Array, gram: Array, *, damping: float = 0.01,
                      cross: Array | None = None, method: str = "auto",
                      chunk_bytes: int = 1 << 28, name: str = "w") -> Array:
    """Refit the kept weights of one layer under a fixed mask (exact damped least squares).

    Minimises ``||X w - X (mask * w')||^2 + lambda ||w'_S - w_S||^2`` column by column
    (multi-weight OBS, Hassibi & Stork 1992; damping as in SparseGPT, Frantar & Alistarh
    2023). Columns sharing a kept-row set (a TW tile) are solved as one system.

    ``method="exact"`` solves every distinct kept-row set exactly (batched Cholesky).
    ``method="sweep"`` runs SparseGPT's blocked OBS sweep with the given mask instead:
    ``O(K^3 + K^2 N)`` however many distinct sets there are, but approximate (kept weights
    only compensate pruned weights of earlier rows). ``"auto"`` picks exact unless its cost
    (``sum of |S|^3 / 3`` over distinct sets) exceeds ``max(2e9, 4 (K^3 + K^2 N))`` flops --
    in practice exact for TW / BW and for small EW / 2:4 layers, sweep for large
    unstructured ones. Either way the per-column safeguard keeps the masked weights where
    the refit would not lower the error.

    Args:
      w: kernel ``(K, N)`` (or any shape whose :func:`tvwjax.as_matrix` view is ``(K, N)``).
      mask: bool keep-mask shaped like ``w``; must be concrete (it fixes the systems).
      gram: ``X^T X`` ``(K, K)`` of the layer's calibration inputs.
      damping: ``lambda`` relative to ``mean(diag(gram))`` (``>= 0``; 0 = plain least
        squares, which needs a non-singular ``gram``).
      cross: optional ``X^T X_ref`` ``(K, K)``: fit ``X (mask * w')`` to ``X_ref w`` instead
        of ``X w`` (inputs of the dense model, see :func:`reconstruct`).
      method: ``"auto"``, ``"exact"`` or ``"sweep"`` (see above).
      chunk_bytes: memory bound for one batch of gathered systems.
      name: what error messages call ``w`` (e.g. a kernel path).

    Returns:
      The refit kernel (float32, shape of ``w``): exactly 0 where ``mask`` is False; columns
      where the solve would not lower the (undamped) error keep the masked weights.

    Raises:
      ShapeError: inconsistent shapes. ConfigError: negative ``damping``.
    """
    if not (isinstance(damping, int | float) and math.isfinite(damping) and damping >= 0):
        raise ConfigError(f"{name}: damping must be a finite number >= 0, got {damping!r}")
    if method not in ("auto", "exact", "sweep"):
        raise ConfigError(f"{name}: method must be 'auto', 'exact' or 'sweep', "
                          f"got {method!r}")
    shape = jnp.shape(w)
    n_in = _view_for(shape, gram)
    w2 = as_matrix(jnp.asarray(w, jnp.float32), n_in)
    if jnp.shape(mask) != shape:
        raise ShapeError(f"{name}: mask has shape {jnp.shape(mask)}, expected {shape}")
    m = np.asarray(as_matrix(jnp.asarray(mask), n_in), bool)
    k, n = w2.shape
    g = jnp.asarray(gram, jnp.float32)
    if g.shape != (k, k):
        raise ShapeError(f"{name}: gram has shape {g.shape}, expected ({k}, {k}) for a "
                         f"kernel with K={k} input features")
    if cross is not None and jnp.shape(cross) != (k, k):
        raise ShapeError(f"{name}: cross has shape {jnp.shape(cross)}, expected ({k}, {k})")
    lam = damping * jnp.mean(jnp.diag(g))
    h = g + lam * jnp.eye(k, dtype=jnp.float32)
    c = g if cross is None else jnp.asarray(cross, jnp.float32)
    t = jnp.matmul(c, w2, precision=_HI)  # target X^T (X_ref w)
    rhs = t + lam * w2
    w_plain = jnp.where(m, w2, 0.0)
    w_new = w_plain
    groups = _groups(m, include_full=cross is not None)
    if method == "auto":
        cost = sum(len(r) ** 3 / 3 for r, _ in groups)
        method = "exact" if cost <= max(2e9, 4.0 * (k ** 3 + k * k * n)) else "sweep"
    if method == "sweep" and groups:
        if damping == 0:
            lam = jnp.maximum(lam, 1e-6 * jnp.mean(jnp.diag(g)) + 1e-12)
            h = g + lam * jnp.eye(k, dtype=jnp.float32)
            rhs = t + lam * w2
        width = min(128, val.round_up(k, 8))
        kp = val.round_up(k, width)
        hp = jnp.eye(kp, dtype=jnp.float32).at[:k, :k].set(h)
        # the unconstrained optimum (= w without a cross target) is what the sweep prunes
        lh = jnp.linalg.cholesky(h)
        w_star = jax.scipy.linalg.cho_solve((lh, True), rhs) if cross is not None else w2
        wp = jnp.zeros((kp, n), jnp.float32).at[:k].set(w_star)
        mp = jnp.ones((kp, n), bool).at[:k].set(jnp.asarray(m))
        w_new = _obs_sweep(wp, mp, hp, width=width)[:k]
        groups = []
    if groups:
        kmax = _bucket(max(len(r) for r, _ in groups))
        rmax = _pow2(max(len(c_) for _, c_ in groups))
        per = 4 * kmax * (3 * kmax + 2 * rmax)
        chunk = max(1, min(len(groups), chunk_bytes // per))
        chunk = 1 << int(math.floor(math.log2(chunk)))
        n_pad = val.round_up(len(groups), chunk)  # len(groups) >= 1
        rows = np.zeros((n_pad, kmax), np.int32)
        rval = np.zeros((n_pad, kmax), bool)
        cols = np.zeros((n_pad, rmax), np.int32)
        cval = np.zeros((n_pad, rmax), bool)
        for i, (r, c_) in enumerate(groups):
            rows[i, :len(r)], rval[i, :len(r)] = r, True
            cols[i, :len(c_)], cval[i, :len(c_)] = c_, True
        for s in range(0, n_pad, chunk):
            sl = slice(s, s + chunk)
            args = (jnp.asarray(rows[sl]), jnp.asarray(rval[sl]), jnp.asarray(cols[sl]),
                    jnp.asarray(cval[sl]))
            vals = _solve_chunk(h, rhs, *args)
            w_new = _scatter(w_new, *args, vals)
    out = _finish(w_plain, w_new, g, t)
    return jnp.where(m, out, 0.0).reshape(shape)


# -- whole model, sequential -------------------------------------------------------------------
def _leaf_index(tree: PyTree, is_leaf=None) -> tuple[list[str], list[Any], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [path_str(kp) for kp, _ in flat], [v for _, v in flat], treedef


#: :func:`reconstruct` warns (:class:`~tvwjax.errors.CalibrationWarning`) when a layer is refit
#: on fewer calibration rows (tokens) than this many per input feature. On all-MiniLM-L6-v2
#: (inputs 384 / 1536), TW 50% calibrated on text from another source than the evaluation's
#: scored 0.69 cosine to dense on 2.5k tokens (1.6 rows per input of the FFN output layer)
#: and 0.76 on 21k tokens (14 per input); 61k tokens added 0.005 (examples/minilm_obs.py).
MIN_ROWS_PER_INPUT = 8


def reconstruct(inputs_fn: InputsFn, params: PyTree, mask_tree: PyTree,
                batches: Iterable[Batch], *, row_mask: RowMaskFn | None = None,
                damping: float = 0.01, sequential: bool = True, match: str = "self",
                group_by: Callable[[str], Any] | None = None, method: str = "auto",
                chunk_bytes: int = 1 << 28,
                progress: Callable[[str], None] | None = None,
                stats: Mapping[str, LayerStats] | None = None) -> tuple[PyTree, dict]:
    """Prune ``params`` with ``mask_tree`` and refit every pruned layer on calibration data.

    Layers are visited in execution order (groups of layers that read the same input, such
    as query/key/value, share one calibration pass). With ``sequential=True`` each group's
    Gram matrix comes from the model whose earlier layers are already pruned and refit
    (SparseGPT-style sequential calibration); XLA drops the part of the forward pass after
    the group, so a pass costs a prefix of the model.

    Args:
      inputs_fn: from :func:`tvwjax.calibration.linen_inputs` / ``nnx_inputs``; reuse the
        same object across calls so compiled passes are reused.
      params: dense parameters (Linen variables or ``nnx.State``).
      mask_tree: masks from :func:`tvwjax.masks` (``None`` for unpruned leaves), same
        structure as ``params``.
      batches: calibration batches (a list; it is iterated once per layer group).
      row_mask: ``row_mask(batch)`` -> weights over the inputs' leading axes (padding = 0).
      damping: relative damping of :func:`reconstruct_layer`.
      sequential: compute each group's statistics on the already-pruned model (True) or all
        on the dense model at once (False).
      match: ``"self"`` -- fit ``X_pruned W`` (the layer's dense output on its actual
        inputs); ``"dense"`` -- fit ``X_dense W`` (the dense model's layer output; needs a
        second forward pass and the cross-Gram). Only with ``sequential=True``.
      group_by: ``group_by(path) -> key``: consecutive layer groups with the same key share
        one calibration pass (e.g. ``lambda p: p.split("/")[1]`` = one pass per transformer
        block, as SparseGPT and Wanda do: fewer passes, but layers of a block see inputs
        from the block's dense layers). Default: one pass per shared-input group.
      method: solver of :func:`reconstruct_layer` (``"auto"``, ``"exact"``,
        ``"sweep"``).
      chunk_bytes: memory bound per batch of solves.
      progress: optional callback receiving a message per layer group.
      stats: the dense model's statistics on ``batches`` with Gram matrices
        (:func:`tvwjax.calibration.collect` with the same ``row_mask``), used instead of a
        pass where they are what the pass would collect: every group with
        ``sequential=False``; the first group (whose inputs no refit has changed yet) with
        ``sequential=True`` and ``match="self"``. Layers without a Gram matrix in it are
        collected as usual.

    Returns:
      ``(new_params, report)``: pruned, refit params (pruned entries exactly 0, dtype of
      ``params`` kept) and ``{path: {"masked": e0, "reconstructed": e1, "rows": r,
      "inputs": k}}`` with the layer's relative calibration errors ``E / ||X_ref W||^2``
      before and after the refit, the calibration rows (tokens) it was refit on and its
      input width.

    Raises:
      ConfigError: bad ``match``, empty ``batches``, or a masked layer that ``inputs_fn``
        never captures. TreeMismatchError: masks that do not fit ``params``.

    Warns:
      CalibrationWarning: some layers were refit on fewer than :data:`MIN_ROWS_PER_INPUT`
        calibration rows per input feature (the refit then fits the calibration text more
        than the layer; give more calibration tokens).
    """
    new, report, _ = _reconstruct(inputs_fn, params, mask_tree, batches, row_mask=row_mask,
                                  damping=damping, sequential=sequential, match=match,
                                  group_by=group_by, method=method, chunk_bytes=chunk_bytes,
                                  progress=progress, stats=stats)
    _warn_few_rows(report, stacklevel=3)
    return new, report


SelectFn = Callable[[Mapping[str, LayerStats], list[str]], Mapping[str, Array]]


def _reconstruct(inputs_fn: InputsFn, params: PyTree, mask_tree: PyTree,
                 batches: Iterable[Batch], *, row_mask: RowMaskFn | None, damping: float,
                 sequential: bool, match: str, group_by: Callable[[str], Any] | None,
                 progress: Callable[[str], None] | None,
                 stats: Mapping[str, LayerStats] | None, method: str = "auto",
                 chunk_bytes: int = 1 << 28, select: SelectFn | None = None
                 ) -> tuple[PyTree, dict, dict[str, Array]]:
    """:func:`reconstruct`, and the masks it refit with. With ``select`` (``sequential``,
    ``match="self"``), ``select(group_stats, paths)`` chooses the masks of each group's
    layers from that group's statistics, replacing those of ``mask_tree`` (which then only
    says which leaves are pruned)."""
    if match not in ("self", "dense"):
        raise ConfigError(f"match must be 'self' or 'dense', got {match!r}")
    if match == "dense" and not sequential:
        raise ConfigError("match='dense' needs sequential=True (with sequential=False the "
                          "inputs are the dense model's and 'self' is the same fit)")
    if stats is not None and not isinstance(stats, Mapping):
        raise ConfigError(f"reconstruct: stats must be a mapping {{path: LayerStats}} from "
                          f"tvwjax.calibration.collect, got {type(stats).__name__}")
    batches = list(batches)
    if not batches:
        raise ConfigError("reconstruct: batches is empty; give at least one batch")
    p_paths, p_leaves, p_def = _leaf_index(params)
    m_paths, m_leaves, _ = _leaf_index(mask_tree, is_leaf=lambda x: x is None)
    if m_paths != p_paths:
        raise TreeMismatchError("mask_tree must have the structure of params (masks from "
                                "tvwjax.masks(params, ...))")
    masked = {p: m for p, m in zip(m_paths, m_leaves, strict=True) if m is not None}
    for p, m in masked.items():
        leaf = p_leaves[p_paths.index(p)]
        if jnp.shape(m) != jnp.shape(leaf):
            raise TreeMismatchError(f"{p}: mask shape {jnp.shape(m)} != parameter shape "
                                    f"{jnp.shape(leaf)}")
    groups = [[p for p in grp if p in masked]
              for grp in layer_groups(inputs_fn, params, batches[0])]
    groups = [grp for grp in groups if grp]
    if group_by is not None:
        merged: list[list[str]] = []
        for grp in groups:
            if merged and group_by(merged[-1][0]) == group_by(grp[0]):
                merged[-1].extend(grp)
            else:
                merged.append(list(grp))
        groups = merged
    captured = {p for grp in groups for p in grp}
    missing = sorted(set(masked) - captured)
    if missing:
        raise ConfigError(f"reconstruct: no calibration inputs for masked layer(s) {missing[:5]}"
                          "; inputs_fn must capture every pruned kernel")

    leaves = list(p_leaves)
    index = {p: i for i, p in enumerate(p_paths)}

    def current():
        return jax.tree_util.tree_unflatten(p_def, leaves)

    def given(paths) -> bool:  # the caller's dense statistics cover these layers
        return stats is not None and all(
            getattr(stats.get(p), "gram", None) is not None for p in paths)

    dense_stats = None
    if not sequential:
        dense_stats = (stats if given(captured) else
                       collect(inputs_fn, params, batches, row_mask=row_mask,
                               paths=sorted(captured), gram=True))
    report: dict[str, dict[str, float]] = {}
    for gi, grp in enumerate(groups):
        if progress is not None:
            progress(f"group {gi + 1}/{len(groups)}: {', '.join(grp)}")
        if match == "dense":
            pair = collect_pair(inputs_fn, current(), params, batches, grp, row_mask=row_mask)
        elif not sequential:
            group_stats = dense_stats
        elif gi == 0 and given(grp):  # nothing refit yet: the dense model's inputs
            group_stats = stats
        else:
            group_stats = collect(inputs_fn, current(), batches, row_mask=row_mask, paths=grp)
        if select is not None:
            chosen = select(group_stats, list(grp))
            for p in grp:
                if jnp.shape(chosen[p]) != jnp.shape(masked[p]):
                    raise ShapeError(f"{p}: selected mask shape {jnp.shape(chosen[p])} != "
                                     f"parameter shape {jnp.shape(masked[p])}")
                masked[p] = chosen[p]
        for p in grp:
            i = index[p]
            w = p_leaves[i]
            if match == "dense":
                ps = pair[p]
                g, cross, gref, rows = ps.gram_a, ps.cross, ps.gram_b, ps.count
            else:
                st = group_stats[p]
                g, cross, gref, rows = st.gram, None, st.gram, st.count
            new = reconstruct_layer(w, masked[p], g, damping=damping, cross=cross,
                                    method=method, chunk_bytes=chunk_bytes, name=p)
            report[p] = _errors(w, masked[p], new, g, cross, gref)
            report[p].update(rows=float(rows), inputs=int(g.shape[0]))
            leaves[i] = new.astype(jnp.asarray(w).dtype)
    return current(), report, masked


def _warn_few_rows(report: Mapping[str, Mapping[str, float]], stacklevel: int) -> None:
    """Warn when layers were refit on few calibration rows; ``stacklevel`` points the
    warning at the user's call (3: the public function calling this one)."""
    short = sorted((r["rows"] / r["inputs"], p) for p, r in report.items()
                   if r["rows"] < MIN_ROWS_PER_INPUT * r["inputs"])
    if not short:
        return
    ratio, worst = short[0]
    r = report[worst]
    warnings.warn(
        f"reconstruct: {len(short)} of {len(report)} layers were refit on fewer than "
        f"{MIN_ROWS_PER_INPUT} calibration rows per input feature (fewest: {worst!r}, "
        f"{r['rows']:.0f} rows for {r['inputs']} inputs, {ratio:.1f} per input). The refit then "
        "fits the calibration text more than the layer, and the pruned model generalizes "
        "worse to other text; calibrate on more tokens (report[path]['rows'] has the counts).",
        CalibrationWarning, stacklevel=stacklevel)


@jax.jit
def _errors_jit(w, plain, new, g, c, gref):
    def err(x):
        # ||X_ref w - X x||^2 = w^T Gref w - 2 x^T C w + x^T G x
        return (jnp.sum(w * jnp.matmul(gref, w, precision=_HI))
                - 2.0 * jnp.sum(x * jnp.matmul(c, w, precision=_HI))
                + jnp.sum(x * jnp.matmul(g, x, precision=_HI)))
    ref = jnp.sum(w * jnp.matmul(gref, w, precision=_HI))
    return err(plain) / ref, err(new) / ref


def _errors(w, mask, new, g, cross, gref) -> dict[str, float]:
    n_in = _view_for(jnp.shape(w), g)
    w2 = as_matrix(jnp.asarray(w, jnp.float32), n_in)
    m2 = as_matrix(jnp.asarray(mask), n_in)
    c = g if cross is None else cross
    e0, e1 = _errors_jit(w2, jnp.where(m2, w2, 0.0), as_matrix(new, n_in), g, c, gref)
    return {"masked": float(e0), "reconstructed": float(e1)}


# -- the whole recipe --------------------------------------------------------------------------
def one_shot(inputs_fn: InputsFn, params: PyTree, pattern: Pattern, sparsity: float,
             batches: Iterable[Batch], *, score: str | ScoreFn = "activation",
             refit: bool = True, row_mask: RowMaskFn | None = None,
             where: Callable[[str, Any], bool] | None = None, scope: str = "layer",
             layer_bounds: tuple[float, float] | None = None,
             overrides: Mapping[str, float | None] | None = None, damping: float = 0.01,
             sequential: bool = True, match: str = "self",
             group_by: Callable[[str], Any] | None = None,
             progress: Callable[[str], None] | None = None,
             views: Mapping[str, int] | None = None,
             selection: str = "score",
             stats: Mapping[str, LayerStats] | None = None,
             sequential_masks: bool = False) -> tuple[PyTree, PyTree, dict]:
    """One-shot pruning of a pretrained model: data-aware masks, then optional refit.

    1. Calibration statistics of every captured layer on the dense model
       (:func:`tvwjax.calibration.collect`: sums of squares, plus Gram matrices for
       ``selection="obs"``).
    2. Masks. ``selection="score"`` (default): scores ``"magnitude"`` (``|w|``),
       ``"activation"`` (Wanda, ``|w| * ||x_k||``) or a user function
       ``fn(w2d, stats) -> scores``, then :func:`tvwjax.masks` with the given pattern, scope,
       per-layer bounds and overrides. ``selection="obs"``: second-order selection from the
       Gram matrices (:func:`tvwjax.obs.obs_masks`: group-OBS removal paths per TW tile,
       SparseGPT for EW / N:M and for TVW's N:M part), same scope, bounds and overrides.
    3. If ``refit``: :func:`reconstruct` (sequential, damped least squares per tile/column).

    With ``sequential_masks=True`` step 2 moves into step 3, as in SparseGPT: each layer
    group's masks are chosen from the statistics of its calibration pass, i.e. on the
    inputs the already pruned and refit earlier layers produce, instead of all masks from
    the dense model's statistics (the same passes; no pass over the whole dense model
    first unless ``stats`` are given, which then serve the first group).

    Args:
      inputs_fn: inputs function of the model (see :mod:`tvwjax.calibration`).
      params: dense parameters.
      pattern: the sparsity pattern (``EW()``, ``NM()``, ``TW(tile=64)``, ``TVW(tile=64)``).
      sparsity: target sparsity.
      batches: calibration batches (a list).
      score: ``"magnitude"``, ``"activation"`` or a score function (``selection="score"``
        only).
      refit: run the reconstruction.
      row_mask, damping, sequential, match, group_by, progress: see :func:`reconstruct`.
      where, scope, layer_bounds, overrides, views: see :func:`tvwjax.masks` (pass
        ``views=tvwjax.gemm_views(model, ...)`` to prune attention kernels; calibration
        captures their inputs in the same view).
      selection: ``"score"`` or ``"obs"`` (patterns ``EW``, ``NM``, ``TW`` / ``TVW`` with
        ``column_share=0``).
      stats: the dense model's statistics on ``batches`` to reuse instead of collecting them
        (step 1): ``tvwjax.calibration.collect(inputs_fn, params, batches,
        row_mask=row_mask, gram=True)`` serves both selections (``"score"`` reads only the
        sums of squares), e.g. the ones a :func:`tvwjax.layer_sensitivity` plan was
        measured with. They must come from these ``params`` and ``batches``.
      sequential_masks: choose each group's masks on the pruned model's inputs (above).
        Needs ``refit``, ``sequential``, ``match="self"``, a data-aware selection (not
        ``score="magnitude"``) and ``scope="layer"`` (global scope ranks all layers at
        once; give per-layer sparsities with ``overrides``, e.g. from
        :func:`tvwjax.plan_sparsity`).

    Returns:
      ``(params, masks, report)``: pruned (and refit) parameters, the masks, and the
      per-layer error report of :func:`reconstruct` (empty without ``refit``).

    Warns:
      CalibrationWarning: as :func:`reconstruct`: layers refit on fewer than
        :data:`MIN_ROWS_PER_INPUT` calibration rows per input feature. On MiniLM the
        amount of calibration text mattered more than its source (see the README).

    >>> import jax, flax.linen as nn, tvwjax
    >>> from tvwjax.calibration import linen_inputs
    >>> model = nn.Dense(32)
    >>> x = jax.random.normal(jax.random.key(0), (512, 48))  # 512 rows: > 8 per input
    >>> variables = model.init(jax.random.key(1), x)
    >>> pruned, m, report = tvwjax.one_shot(linen_inputs(model), variables,
    ...                                     tvwjax.TW(tile=8, column_share=0.0), 0.5, [(x,)])
    >>> float(1 - m["params"]["kernel"].mean())
    0.5
    >>> e = report["params/kernel"]
    >>> bool(e["reconstructed"] <= e["masked"])
    True
    """
    batches = list(batches)
    if selection not in ("score", "obs"):
        raise ConfigError(f"one_shot: selection must be 'score' or 'obs', got {selection!r}")
    if stats is not None and not isinstance(stats, Mapping):
        raise ConfigError(f"one_shot: stats must be a mapping {{path: LayerStats}} from "
                          f"tvwjax.calibration.collect, got {type(stats).__name__}")
    named = score if isinstance(score, str) else None
    if selection == "obs" and named != "activation":
        raise ConfigError(f"one_shot: score={score!r} applies to selection='score'; "
                          "selection='obs' chooses masks from the Gram matrices")
    if not (named in ("magnitude", "activation") or callable(score)):
        raise ConfigError(f"score must be 'magnitude', 'activation' or a callable, "
                          f"got {score!r}")
    if val.flag(sequential_masks, "one_shot: sequential_masks"):
        return _one_shot_sequential(inputs_fn, params, pattern, sparsity, batches,
                                    score=score, refit=refit, row_mask=row_mask, where=where,
                                    scope=scope, layer_bounds=layer_bounds,
                                    overrides=overrides, damping=damping,
                                    sequential=sequential, match=match, group_by=group_by,
                                    progress=progress, views=views, selection=selection,
                                    stats=stats)
    if selection == "obs":
        if stats is None:
            stats = collect(inputs_fn, params, batches, row_mask=row_mask, gram=True)
        mask_tree = obs_masks(params, stats, pattern, sparsity, where=where, scope=scope,
                              layer_bounds=layer_bounds, overrides=overrides, views=views,
                              damping=damping, progress=progress)
        scores = None
    elif score == "magnitude":
        scores = None
    else:  # "activation" or a score function
        fn = wanda if score == "activation" else score
        if stats is None:
            stats = collect(inputs_fn, params, batches, row_mask=row_mask, gram=False)
        scores = data_scores(params, stats, fn, where=where)
    if selection == "score":
        mask_tree = masks(params, pattern, sparsity, scores=scores, where=where, scope=scope,
                          layer_bounds=layer_bounds, overrides=overrides, views=views)
    if not refit:
        from tvwjax.masking import apply_masks
        return apply_masks(params, mask_tree), mask_tree, {}
    new, report, _ = _reconstruct(inputs_fn, params, mask_tree, batches, row_mask=row_mask,
                                  damping=damping, sequential=sequential, match=match,
                                  group_by=group_by, progress=progress, stats=stats)
    _warn_few_rows(report, stacklevel=3)
    return new, mask_tree, report


def _one_shot_sequential(inputs_fn, params, pattern, sparsity, batches, *, score, refit,
                         row_mask, where, scope, layer_bounds, overrides, damping, sequential,
                         match, group_by, progress, views, selection, stats):
    """:func:`one_shot` with ``sequential_masks=True`` (``selection``, ``score`` and
    ``stats`` checked there)."""
    why = ("refit=False" if not refit else "sequential=False" if not sequential else
           f"match={match!r}" if match != "self" else
           f"scope={scope!r}" if scope != "layer" else
           "score='magnitude'" if selection == "score" and score == "magnitude" else None)
    if why is not None:
        raise ConfigError(
            f"one_shot: sequential_masks=True chooses each layer group's masks from its "
            f"calibration pass in the sequential refit; it needs refit=True, "
            f"sequential=True, match='self', scope='layer' and a data-aware selection, "
            f"got {why}")
    from tvwjax.masking import selection as plan_selection

    plan = plan_selection(params, pattern, sparsity, where=where, scope=scope,
                          overrides=overrides, layer_bounds=layer_bounds, views=views)
    pruned = {lp.path for lp in plan.pruned}
    flat, treedef = leaves_with_paths(params)
    # which leaves are pruned; each group's masks replace these in the refit
    placeholder = jax.tree_util.tree_unflatten(
        treedef, [jnp.ones(jnp.shape(v), bool) if p in pruned else None for p, v in flat])
    fn = wanda if score == "activation" else score

    def select(group_stats, paths):
        group = set(paths)

        def only(path, leaf):
            return path in group and (where is None or where(path, leaf))

        # the plan above checked every override; each group passes on its own
        group_overrides = (None if overrides is None else
                           {p: v for p, v in overrides.items() if p in group})

        if selection == "obs":
            mt = obs_masks(params, group_stats, pattern, sparsity, where=only,
                           overrides=group_overrides, layer_bounds=layer_bounds, views=views,
                           damping=damping, progress=progress)
        else:
            mt = masks(params, pattern, sparsity,
                       scores=data_scores(params, group_stats, fn, where=only), where=only,
                       layer_bounds=layer_bounds, overrides=group_overrides, views=views)
        chosen = dict(leaves_with_paths(mt)[0])
        return {p: chosen[p] for p in paths}

    new, report, chosen = _reconstruct(inputs_fn, params, placeholder, batches,
                                       row_mask=row_mask, damping=damping, sequential=True,
                                       match="self", group_by=group_by, progress=progress,
                                       stats=stats, select=select)
    _warn_few_rows(report, stacklevel=4)  # one_shot -> here -> the warning
    mask_tree = jax.tree_util.tree_unflatten(
        treedef, [chosen.get(p) if p in pruned else None for p, _ in flat])
    return new, mask_tree, report


__all__ = ["layer_error", "one_shot", "reconstruct", "reconstruct_layer"]
