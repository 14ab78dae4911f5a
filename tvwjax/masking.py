"""``tvwjax.masks``: sparsity masks for a whole parameter pytree, as one pure function.

Works on any pytree: plain dicts, Linen ``params`` and ``nnx.State`` (whose leaves sit under
a ``value`` attribute). Leaves are addressed by *path strings*: the pytree keys joined by
``/`` (``"Dense_0/kernel"``, ``"layers/0/linear/kernel"``); the trailing ``value`` of an NNX
variable is dropped.

Which leaves are pruned is chosen by ``where(path, leaf)``; by default every floating leaf
with ``ndim >= 2`` whose path has a ``kernel`` key. Kernels with more than two dims are
viewed as ``(prod(shape[:-1]), shape[-1])`` -- a conv kernel ``(kh, kw, Cin, Cout)`` becomes
its im2col matrix ``(kh*kw*Cin, Cout)``, whose contraction axis is the first.

``scope="layer"`` prunes each leaf exactly at its sparsity. ``scope="global"`` ranks the
pattern's allocation units (elements, blocks, row segments) of all selected leaves against
one threshold, after dividing each leaf's scores by their mean (so layers of different scale
compete fairly), as in the paper's BERT experiments: layers end at different sparsities while
the total matches the target. ``layer_bounds=(min_s, max_s)`` keeps any single leaf from
being starved or left dense. Each leaf's mask is then built with its pattern at the density
the threshold gave it.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tvwjax._select import max_key_where, order_key
from tvwjax.errors import ConfigError, DTypeError, ScoreError, ShapeError, TreeMismatchError
from tvwjax.patterns import NM, Pattern, allocation_scale
from tvwjax.scores import magnitude

PyTree = Any
Path = tuple
WherePredicate = Callable[[str, Any], bool]


# -- paths and leaf selection --------------------------------------------------------------
def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(path: Path) -> str:
    """Readable ``/``-joined path of a pytree key path (NNX's trailing ``value`` dropped)."""
    names = [_key_name(k) for k in path]
    if len(names) > 1 and names[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
        names = names[:-1]
    return "/".join(names)


def default_where(path: str, leaf: Any) -> bool:
    """Default leaf selection: floating arrays with ``ndim >= 2`` under a ``kernel`` key."""
    return (hasattr(leaf, "ndim") and leaf.ndim >= 2
            and jnp.issubdtype(leaf.dtype, jnp.floating)
            and "kernel" in path.split("/"))


def as_matrix(x: jax.Array) -> jax.Array:
    """The ``(K, N)`` view of a kernel: ``(prod(shape[:-1]), shape[-1])``."""
    return x.reshape(-1, x.shape[-1])


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_scores(path: str, score: jax.Array) -> None:
    if not _is_concrete(score):
        return
    s = np.asarray(score)
    if not np.all(np.isfinite(s)):
        bad = int(np.size(s) - np.count_nonzero(np.isfinite(s)))
        raise ScoreError(f"{path}: scores contain {bad} NaN or Inf value(s); "
                         "expected finite, non-negative scores")
    if np.any(s < 0):
        raise ScoreError(f"{path}: scores must be non-negative (use |w| or a squared "
                         f"score), got minimum {float(s.min())!r}")


def _static_sparsity(value, where: str) -> float | jax.Array:
    if isinstance(value, jax.Array | np.ndarray) and not _is_concrete(value):
        return value
    if isinstance(value, bool) or not isinstance(value, float | int | np.floating | np.integer
                                                 | np.ndarray | jax.Array):
        raise ConfigError(f"{where}: sparsity must be a number in [0, 1), got {value!r}")
    v = float(value)
    if not math.isfinite(v) or not 0.0 <= v < 1.0:
        raise ConfigError(f"{where}: sparsity must be in [0, 1), got {v!r}")
    return v


class _Leaf:
    """A selected leaf: its path, 2-D score view and sparsity."""

    def __init__(self, index, path, leaf, score, sparsity, fixed):
        self.index, self.path, self.leaf = index, path, leaf
        self.score = as_matrix(jnp.asarray(score, jnp.float32))
        self.sparsity, self.fixed = sparsity, fixed


def _override(path: str, overrides: Mapping[str, float | None] | None, default):
    if overrides:
        for pat, value in overrides.items():
            if fnmatch.fnmatchcase(path, pat):
                return value, True
    return default, False


# -- global allocation -----------------------------------------------------------------------
def _global_densities(leaves: list[jax.Array], pattern: Pattern, sparsity,
                      layer_bounds: tuple[float, float]) -> list[jax.Array]:
    """Per-leaf final densities from one threshold over normalised unit scores."""
    scale = allocation_scale(pattern)
    units, sizes, ids = [], [], []
    for i, score in enumerate(leaves):
        u, z = pattern.units(score)
        mean = jnp.mean(score)
        u = u / jnp.where(mean > 0, mean, 1.0)
        units.append(u)
        sizes.append(z.astype(jnp.int32))
        ids.append(jnp.full(u.shape, i, jnp.int32))
    u, z, ids = jnp.concatenate(units), jnp.concatenate(sizes), jnp.concatenate(ids)
    n_leaves = len(leaves)
    totals = jnp.asarray([float(score.size) for score in leaves], jnp.float32)
    min_s, max_s = layer_bounds
    lo = jnp.clip((1.0 - max_s) / scale, 0.0, 1.0) * totals
    hi = jnp.clip((1.0 - min_s) / scale, 0.0, 1.0) * totals
    density = 1.0 - jnp.asarray(sparsity, jnp.float32)
    budget = jnp.clip(density / scale, 0.0, 1.0) * jnp.sum(totals)

    key = order_key(u)

    def kept_at(t):
        kept = jax.ops.segment_sum(jnp.where(key >= t, z, 0), ids, num_segments=n_leaves)
        return jnp.clip(kept.astype(jnp.float32), lo, hi)

    # The largest threshold whose kept total still reaches the budget (bisection, no sort).
    t = max_key_where(lambda t: jnp.sum(kept_at(t)) >= budget)
    kept = kept_at(t)
    dens = kept / totals * scale
    dens = jnp.where(density >= 1.0, 1.0, dens)
    return [dens[i] for i in range(n_leaves)]


def _explicit_sharding(x: jax.Array):
    """The sharding of ``x``'s type if it is sharded over *explicit* mesh axes, else None.

    (Auto-axis and single-device arrays carry no sharding in their type; XLA's sharding
    propagation handles them.)
    """
    sharding = jax.typeof(x).sharding
    spec = getattr(sharding, "spec", None)
    if spec is None or all(p is None for p in spec):
        return None
    return sharding


def _masks_core(scores, sparsities, target, *, pattern, scope, layer_bounds, fixed):
    """Masks of the selected leaves' 2-D score views (one compiled computation).

    Scores sharded over explicit mesh axes are replicated for the selection (sorts, prefix
    sums and the global threshold need the whole leaf; under auto axes XLA does the same),
    and each mask is resharded back to its leaf's layout.
    """
    specs = [_explicit_sharding(sc) for sc in scores]
    scores = [sc if sp is None else jax.sharding.reshard(
        sc, jax.sharding.NamedSharding(sp.mesh, jax.sharding.PartitionSpec()))
        for sc, sp in zip(scores, specs, strict=True)]
    sparsities = list(sparsities)
    pool = [i for i, f in enumerate(fixed) if not f]
    if scope == "global" and len(pool) > 1 and not isinstance(pattern, NM):
        dens = _global_densities([scores[i] for i in pool], pattern, target, layer_bounds)
        for i, d in zip(pool, dens, strict=True):
            sparsities[i] = 1.0 - d
    out = [pattern.mask(sc, sp) for sc, sp in zip(scores, sparsities, strict=True)]
    return [m if sp is None else jax.sharding.reshard(m, sp)
            for m, sp in zip(out, specs, strict=True)]


_core = jax.jit(_masks_core, static_argnames=("pattern", "scope", "layer_bounds", "fixed"))
_core_static = jax.jit(
    lambda scores, *, sparsities, target, **kw: _masks_core(scores, sparsities, target, **kw),
    static_argnames=("sparsities", "target", "pattern", "scope", "layer_bounds", "fixed"))


# -- public entry point -----------------------------------------------------------------------
def masks(
    params: PyTree,
    pattern: Pattern,
    sparsity: float | jax.Array,
    *,
    scores: PyTree | None = None,
    where: WherePredicate | None = None,
    scope: str = "layer",
    overrides: Mapping[str, float | None] | None = None,
    layer_bounds: tuple[float, float] | None = None,
    unpruned: str = "none",
) -> PyTree:
    """Sparsity masks for every selected leaf of ``params``.

    Args:
      params: any pytree of arrays (dict, Linen params, ``nnx.State``).
      pattern: a :class:`~tvwjax.patterns.Pattern` (``EW()``, ``TW(tile=64)``, ``TVW()``, ...).
      sparsity: target fraction of pruned weights in ``[0, 1)``; may be traced.
      scores: a pytree like ``params`` of non-negative scores (default: ``|params|``).
      where: ``where(path, leaf) -> bool`` choosing the leaves to prune (default
        :func:`default_where`). A leaf it selects must have ``ndim >= 2``.
      scope: ``"layer"`` (each leaf at exactly its sparsity) or ``"global"`` (one threshold
        over all selected leaves' normalised unit scores).
      overrides: ``{glob: sparsity}`` on path strings (first match wins); a leaf whose
        override is ``None`` is not pruned. Overridden leaves keep their own sparsity in
        global scope and are left out of the shared threshold.
      layer_bounds: ``(min_sparsity, max_sparsity)`` per leaf in global scope
        (default ``(0, 1)``: unbounded).
      unpruned: what leaves that are not pruned get: ``"none"`` (``None``, the default;
        use ``is_leaf=lambda x: x is None`` when mapping) or ``"ones"`` (an all-True mask).

    Returns:
      A pytree with the structure of ``params``: bool masks (True = kept) shaped like each
      pruned leaf, and ``None`` or all-True masks elsewhere.

    Raises:
      ConfigError, ShapeError, DTypeError, ScoreError, TreeMismatchError (see
      :mod:`tvwjax.errors`), each naming the leaf path.
    """
    if not isinstance(pattern, Pattern):
        raise ConfigError(f"pattern must be a tvwjax Pattern (EW(), TW(), TVW(), ...), "
                          f"got {pattern!r}")
    if scope not in ("layer", "global"):
        raise ConfigError(f"scope must be 'layer' or 'global', got {scope!r}")
    if unpruned not in ("none", "ones"):
        raise ConfigError(f"unpruned must be 'none' or 'ones', got {unpruned!r}")
    if layer_bounds is None:
        layer_bounds = (0.0, 1.0)
    else:
        lo, hi = (float(b) for b in layer_bounds)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"layer_bounds must satisfy 0 <= min <= max <= 1, got "
                              f"{tuple(layer_bounds)!r}")
        layer_bounds = (lo, hi)
    sparsity = _static_sparsity(sparsity, "sparsity")

    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    if scores is None:
        score_leaves = [None] * len(flat)
    else:
        s_flat, s_def = jax.tree_util.tree_flatten_with_path(scores)
        if s_def != treedef:
            raise TreeMismatchError(f"scores must have the structure of params; got {s_def} "
                                    f"for params {treedef}")
        score_leaves = [s for _, s in s_flat]

    out: list[Any] = [None] * len(flat)
    explicit_where = where is not None
    where = where or default_where
    selected: list[_Leaf] = []
    for i, (kp, leaf) in enumerate(flat):
        path = path_str(kp)
        if not where(path, leaf):
            continue
        leaf_sparsity, fixed = _override(path, overrides, sparsity)
        if leaf_sparsity is None:
            continue
        leaf_sparsity = _static_sparsity(leaf_sparsity, f"{path}: override")
        if not hasattr(leaf, "ndim"):
            raise ShapeError(f"{path}: selected leaf is not an array ({type(leaf).__name__})")
        if explicit_where and leaf.ndim < 2:
            raise ShapeError(f"{path}: selected leaf has shape {leaf.shape}; only arrays "
                             "with ndim >= 2 (kernels) can be pruned")
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise DTypeError(f"{path}: can only prune floating-point weights, got "
                             f"dtype {leaf.dtype}")
        if leaf.size == 0:
            raise ShapeError(f"{path}: cannot prune an empty array of shape {leaf.shape}")
        score = score_leaves[i]
        if score is None:
            score = magnitude(leaf)
        elif jnp.shape(score) != leaf.shape:
            raise TreeMismatchError(f"{path}: scores have shape {jnp.shape(score)}, "
                                    f"expected the leaf's shape {leaf.shape}")
        _check_scores(path, score)
        lf = _Leaf(i, path, leaf, score, leaf_sparsity, fixed)
        pattern.validate_shape(lf.score.shape, path)
        if isinstance(leaf_sparsity, float) and (fixed or scope == "layer"):
            pattern.validate_sparsity(leaf_sparsity, path)
        selected.append(lf)

    if selected:
        kwargs = dict(pattern=pattern, scope=scope, layer_bounds=layer_bounds,
                      fixed=tuple(lf.fixed for lf in selected))
        score_list = [lf.score for lf in selected]
        sparsities = [lf.sparsity for lf in selected]
        if all(isinstance(v, float) for v in sparsities) and isinstance(sparsity, float):
            mask_list = _core_static(score_list, sparsities=tuple(sparsities),
                                     target=sparsity, **kwargs)
        else:
            mask_list = _core(score_list, [jnp.asarray(v, jnp.float32) for v in sparsities],
                              jnp.asarray(sparsity, jnp.float32), **kwargs)
        for lf, m in zip(selected, mask_list, strict=True):
            out[lf.index] = m.reshape(lf.leaf.shape)
    if unpruned == "ones":
        for i, (_, leaf) in enumerate(flat):
            if out[i] is None:
                out[i] = jnp.ones(jnp.shape(leaf), bool)
    return jax.tree_util.tree_unflatten(treedef, out)


def path_difference(want: list[str], got: list[str], limit: int = 5
                    ) -> tuple[list[str], list[str]]:
    """The first ``limit`` paths of ``want`` missing from ``got``, and of ``got`` not in
    ``want`` (for error messages about mismatched pytrees)."""
    w, g = set(want), set(got)
    return [p for p in want if p not in g][:limit], [p for p in got if p not in w][:limit]


def check_same_leaves(tree: PyTree, params: PyTree, what: str, *, none_ok: bool) -> None:
    """Raise :class:`TreeMismatchError` unless ``tree`` has the leaf paths and leaf shapes of
    ``params`` (``None`` leaves allowed where ``none_ok``). Static: costs nothing under jit."""
    is_leaf = (lambda x: x is None) if none_ok else None
    t_flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    p_flat = jax.tree_util.tree_flatten_with_path(params)[0]
    t_paths, p_paths = [path_str(kp) for kp, _ in t_flat], [path_str(kp) for kp, _ in p_flat]
    if t_paths != p_paths:
        missing, extra = path_difference(p_paths, t_paths)
        raise TreeMismatchError(f"{what} must have the structure of params"
                                f"{' (a mask or None per leaf)' if none_ok else ''}: missing "
                                f"{missing}, unexpected {extra}")
    for path, (_, t), (_, p) in zip(p_paths, t_flat, p_flat, strict=True):
        if t is not None and jnp.shape(t) != jnp.shape(p):
            raise TreeMismatchError(f"{what}: {path}: shape {jnp.shape(t)} differs from the "
                                    f"parameter's {jnp.shape(p)}")


def apply_masks(params: PyTree, mask_tree: PyTree) -> PyTree:
    """``params * mask`` on every leaf with a mask (``None`` masks leave the leaf as is).

    Raises:
      TreeMismatchError: ``mask_tree`` does not have the leaf paths of ``params``, or a
        mask's shape differs from its leaf's (no broadcasting).
    """
    check_same_leaves(mask_tree, params, "mask_tree", none_ok=True)
    return jax.tree.map(
        lambda m, p: p if m is None else jnp.where(m, p, jnp.zeros((), p.dtype)),
        mask_tree, params, is_leaf=lambda x: x is None)


__all__ = ["apply_masks", "as_matrix", "default_where", "masks", "path_str"]
