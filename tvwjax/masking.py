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

import dataclasses
import fnmatch
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from tvwjax import _validate as val
from tvwjax._select import exact_sum, from_key, max_key_where, order_key, size_where
from tvwjax._tree import (
    as_matrix,
    check_same_leaves,
    is_none,
    leaves_with_paths,
    path_difference,
    path_str,
    view_of,
)
from tvwjax.errors import ConfigError, DTypeError, ShapeError, TreeMismatchError
from tvwjax.patterns import Pattern
from tvwjax.scores import magnitude

PyTree = Any
WherePredicate = Callable[[str, Any], bool]


# -- leaf selection -----------------------------------------------------------------------------
def default_where(path: str, leaf: Any) -> bool:
    """Default leaf selection: floating arrays with ``ndim >= 2`` under a ``kernel`` key.

    >>> import jax.numpy as jnp
    >>> default_where("Dense_0/kernel", jnp.zeros((4, 3))), default_where("Dense_0/bias",
    ...                                                                   jnp.zeros(3))
    (True, False)
    """
    return (hasattr(leaf, "ndim") and leaf.ndim >= 2
            and jnp.issubdtype(leaf.dtype, jnp.floating)
            and "kernel" in path.split("/"))


class _Leaf:
    """A selected leaf: its path, 2-D score view (``n_in`` leading axes contracted) and
    sparsity."""

    def __init__(self, index, path, leaf, score, sparsity, fixed, n_in):
        self.index, self.path, self.leaf = index, path, leaf
        self.score = as_matrix(jnp.asarray(score, jnp.float32), n_in)
        self.sparsity, self.fixed = sparsity, fixed


@dataclasses.dataclass(frozen=True)
class LeafPlan:
    """One leaf of a :func:`selection` report.

    Attributes:
      path: the leaf's path string.
      shape: the leaf's shape.
      view: its ``(K, N)`` GEMM view (``None`` when unknown).
      sparsity: its target sparsity (``None`` in global scope, where one threshold decides,
        and for leaves that are not pruned).
      pruned: whether :func:`masks` prunes it.
      reason: why it is not pruned (``""`` when it is).
    """

    path: str
    shape: tuple[int, ...]
    view: tuple[int, int] | None
    sparsity: float | None
    pruned: bool
    reason: str


class Selection(tuple):
    """The :class:`LeafPlan` of every kernel-like leaf; ``str()`` is a markdown table."""

    @property
    def pruned(self) -> list[LeafPlan]:
        """The leaves that will be pruned."""
        return [lp for lp in self if lp.pruned]

    @property
    def skipped(self) -> list[LeafPlan]:
        """The kernel-like leaves that will not be pruned, each with its reason."""
        return [lp for lp in self if not lp.pruned]

    def __str__(self) -> str:
        lines = ["| leaf | shape | GEMM view (K, N) | sparsity | pruned |", "|---|---|---|---|---|"]
        for lp in self:
            view = "?" if lp.view is None else f"{lp.view[0]} x {lp.view[1]}"
            s = ("global" if lp.sparsity is None else f"{lp.sparsity:g}") if lp.pruned else "-"
            status = "yes" if lp.pruned else f"no: {lp.reason}"
            lines.append(f"| {lp.path} | {'x'.join(map(str, lp.shape))} | {view} | {s} | "
                         f"{status} |")
        return "\n".join(lines)


def _check_overrides(overrides: Any) -> None:
    if overrides is None:
        return
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides must be a mapping {{glob: sparsity or None}}, got "
                          f"{type(overrides).__name__}")
    for pat in overrides:
        if not isinstance(pat, str):
            raise ConfigError(f"overrides: keys must be glob strings, got {pat!r}")


def check_selection_args(pattern: Any, scope: Any, where: Any, overrides: Any,
                         layer_bounds: Any, views: Any = None,
                         who: str = "") -> tuple[float, float]:
    """Validate the arguments :func:`masks` and :func:`tvwjax.prune` share; return the
    layer bounds as floats. ``who`` prefixes the messages (e.g. ``"prune: "``)."""
    val.mapping_or_none(views, f"{who}views")
    if not isinstance(pattern, Pattern):
        raise ConfigError(f"{who}pattern must be a tvwjax Pattern (EW(), TW(), TVW(), ...), "
                          f"got {pattern!r}")
    if scope not in ("layer", "global"):
        raise ConfigError(f"{who}scope must be 'layer' or 'global', got {scope!r}")
    if where is not None and not callable(where):
        raise ConfigError(f"{who}where must be a predicate where(path, leaf) -> bool, got "
                          f"{where!r}")
    _check_overrides(overrides)
    return _layer_bounds(layer_bounds)


def check_target(pattern: Pattern, sparsity: Any, scope: str,
                 layer_bounds: tuple[float, float], who: str = "") -> None:
    """Check a concrete target sparsity against the pattern and the layer bounds.

    Layer scope checks each leaf's sparsity where it is planned; in global scope the
    target itself must be one the pattern can produce (TVW: 0 or at least its floor), and
    ``layer_bounds`` must contain it (otherwise no allocation meets both). A traced target
    is read by :meth:`Pattern.effective_sparsity` instead.
    """
    if val.is_traced(sparsity) or scope != "global":
        return
    pattern.validate_sparsity(sparsity, who.removesuffix(": ") or "sparsity")
    lo, hi = layer_bounds
    if sparsity > 0 and not lo <= sparsity <= hi:
        raise ConfigError(f"{who}layer_bounds {(lo, hi)!r} exclude the target sparsity "
                          f"{sparsity!r}: every leaf would be "
                          f"{'above' if sparsity < lo else 'below'} it")


def _override(path: str, overrides: Mapping[str, float | None] | None, default):
    if overrides:
        for pat, value in overrides.items():
            if fnmatch.fnmatchcase(path, pat):
                return value, True
    return default, False


def _layer_bounds(bounds: Any) -> tuple[float, float]:
    if bounds is None:
        return (0.0, 1.0)
    if not isinstance(bounds, tuple | list) or len(bounds) != 2:
        raise ConfigError(f"layer_bounds must be a pair (min_sparsity, max_sparsity), got "
                          f"{bounds!r}")
    lo = val.sparsity(bounds[0], "layer_bounds[0]", upper_inclusive=True)
    hi = val.sparsity(bounds[1], "layer_bounds[1]", upper_inclusive=True)
    if val.is_traced(lo) or val.is_traced(hi) or lo > hi:
        raise ConfigError(f"layer_bounds must be two numbers with 0 <= min <= max <= 1, got "
                          f"{tuple(bounds)!r}")
    return (lo, hi)


# -- global allocation -----------------------------------------------------------------------
def _global_densities(leaves: list[jax.Array], pattern: Pattern, sparsity,
                      layer_bounds: tuple[float, float]) -> list[jax.Array]:
    """Per-leaf final densities from one threshold over normalised unit scores.

    Each leaf's units stay in the leaf's own layout (:meth:`Pattern.unit_grid`), normalised
    by the leaf's mean score, an order-independent sum
    (:func:`~tvwjax._select.exact_sum`), so a sharded leaf is normalised exactly as on one
    device; the threshold is :func:`allocate`'s.
    """
    units, divisors = [], []
    for score in leaves:
        units.append(pattern.unit_grid(score))
        mean = exact_sum(score) / jnp.float32(score.size)
        divisors.append(jnp.where(mean > 0, mean, 1.0))
    return allocate(units, [score.size for score in leaves], sparsity,
                    pattern.allocation_scale, layer_bounds, divisors)


def allocate(units: list[tuple[jax.Array, jax.Array | None]], totals: list[int], sparsity,
             scale: float, layer_bounds: tuple[float, float],
             divisors: list[jax.Array] | None = None) -> list[jax.Array]:
    """Per-leaf final densities from one threshold over all leaves' allocation units.

    Args:
      units: per leaf ``(unit_scores, unit_sizes)`` in any layout (``unit_sizes=None``: one
        weight per unit), e.g. :meth:`Pattern.unit_grid`.
      totals: per leaf its number of weights.
      sparsity: the target sparsity over all leaves (a number or a traced scalar).
      scale: final density per unit density (:attr:`Pattern.allocation_scale`).
      layer_bounds: ``(min, max)`` sparsity of every leaf.
      divisors: per leaf a positive scalar its unit scores are divided by before they are
        compared across leaves (``None``: compared as they are).

    Returns:
      Per leaf a float32 scalar density.

    The threshold is found by bisection over ordered float bits, each pass one count per
    leaf (a local count and a scalar all-reduce on a sharded leaf): no unit array is
    concatenated, sorted or copied, and dividing by a positive divisor is monotone, so it
    is applied to the scalar threshold, never to the units.
    """
    keys = [order_key(u) for u, _ in units]
    sizes = [z for _, z in units]
    sum_total = float(sum(totals))
    totals = jnp.asarray([float(t) for t in totals], jnp.float32)
    min_s, max_s = layer_bounds
    lo = jnp.clip((1.0 - max_s) / scale, 0.0, 1.0) * totals
    hi = jnp.clip((1.0 - min_s) / scale, 0.0, 1.0) * totals
    density = 1.0 - jnp.asarray(sparsity, jnp.float32)
    budget = jnp.clip(density / scale, 0.0, 1.0) * sum_total

    divs = None if divisors is None else jnp.stack(divisors).astype(jnp.float32)

    def raw_thresholds(t):
        # Per leaf, the smallest unit key whose normalised key ``order_key(u / divisor)``
        # reaches t: one scalar bisection per leaf, all leaves side by side (one loop,
        # however many leaves).
        x = max_key_where(lambda x: order_key(
            from_key(x + jnp.uint32(0x80000000)) / divs) < t, 31, divs.shape)
        return jnp.where(t <= jnp.uint32(0x80000000), jnp.uint32(0),
                         x + jnp.uint32(0x80000001))

    def kept_at(t):
        if divs is None:
            cuts = [t] * len(keys)
        else:
            raw = raw_thresholds(t)
            cuts = [raw[i] for i in range(len(keys))]
        kept = jnp.stack([size_where(key >= cut, z)
                          for key, z, cut in zip(keys, sizes, cuts, strict=True)])
        return jnp.clip(kept.astype(jnp.float32), lo, hi)

    # The largest threshold whose kept total still reaches the budget (bisection, no sort).
    t = max_key_where(lambda t: jnp.sum(kept_at(t)) >= budget)
    dens = kept_at(t) / totals * scale
    dens = jnp.where(density >= 1.0, 1.0, dens)
    return [dens[i] for i in range(len(units))]


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


def _masks_core(scores, sparsities, target, *, pattern, scope, layer_bounds, fixed, shares):
    """Masks of the selected leaves' 2-D score views (one compiled computation).

    The selection runs where the scores lie: every step is elementwise, a reduction, or
    work inside one tile or N:M group, so XLA's SPMD partitioner splits it along the
    parameters' sharding and the collectives are scalar (or per-tile) all-reduces; no leaf
    is gathered. Scores sharded over *explicit* mesh axes are handed to the selection with
    those axes made automatic (``jax.sharding.auto_axes``), and each mask comes back in its
    leaf's layout.
    """
    shardings = [_explicit_sharding(sc) for sc in scores]
    explicit = [sp for sp in shardings if sp is not None]
    select = functools.partial(_select_all, pattern=pattern, scope=scope,
                               layer_bounds=layer_bounds, fixed=fixed, shares=shares)
    if not explicit:
        return select(scores, sparsities, target)
    mesh = explicit[0].mesh
    out = [sp or jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
           for sp in shardings]
    return jax.sharding.auto_axes(select, out_sharding=out)(scores, sparsities, target)


def _couples_leaves(pattern: Pattern, scope: str, fixed: tuple[bool, ...]) -> bool:
    """Whether one leaf's mask depends on the others' scores: global scope over more than
    one leaf whose sparsity is not fixed."""
    return scope == "global" and sum(not f for f in fixed) > 1 and pattern.supports_global


def _select_all(scores, sparsities, target, *, pattern, scope, layer_bounds, fixed, shares):
    """The masks of :func:`_masks_core`, placement aside (``shares``: each leaf's fraction
    of the elements selected in the :func:`masks` call, see :meth:`Pattern.mask`)."""
    sparsities = list(sparsities)
    pool = [i for i, f in enumerate(fixed) if not f]
    if _couples_leaves(pattern, scope, fixed):
        dens = _global_densities([scores[i] for i in pool], pattern, target, layer_bounds)
        for i, d in zip(pool, dens, strict=True):
            sparsities[i] = 1.0 - d
        return [pattern.mask(sc, sp, share=sh)
                for sc, sp, sh in zip(scores, sparsities, shares, strict=True)]
    out = []
    for sc, sp, sh in zip(scores, sparsities, shares, strict=True):
        if out:  # one leaf at a time: its working buffers are freed before the next starts
            _, sc = jax.lax.optimization_barrier((out[-1], sc))
        out.append(pattern.mask(sc, sp, share=sh))
    return out


_core = jax.jit(_masks_core,
                static_argnames=("pattern", "scope", "layer_bounds", "fixed", "shares"))


# -- public entry point -----------------------------------------------------------------------
def _plan(flat, pattern, sparsity, where, scope, overrides, views, report):
    """The leaves :func:`masks` prunes: ``(index, path, leaf, sparsity, fixed, n_in)``.

    With the default ``where``, leaves the pattern cannot apply to (an unknown GEMM layout,
    ``K`` not divisible by ``m`` for N:M, ...) are skipped; with an explicit ``where`` they
    raise. ``report`` (a list or None) receives a :class:`LeafPlan` per kernel-like leaf.
    """
    explicit_where = where is not None
    where = where or default_where
    used_globs: set[str] = set()
    plan = []

    def note(path, leaf, view, s, pruned, reason):
        if report is not None:
            report.append(LeafPlan(path, tuple(leaf.shape), view,
                                   s if pruned and isinstance(s, float) and
                                   not (scope == "global" and s == sparsity) else None,
                                   pruned, reason))

    for i, (path, leaf) in enumerate(flat):
        if not where(path, leaf):
            if default_where(path, leaf):
                note(path, leaf, None, None, False, "not selected by where")
            continue
        leaf_sparsity, fixed = _override(path, overrides, sparsity)
        if fixed:
            used_globs.add(next(g for g in overrides if fnmatch.fnmatchcase(path, g)))
        if leaf_sparsity is None:
            note(path, leaf, None, None, False, "override None")
            continue
        leaf_sparsity = val.sparsity(leaf_sparsity, f"{path}: override sparsity")
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
        n_in, reason = view_of(path, tuple(leaf.shape), views)
        view = None
        if n_in is not None:
            view = (math.prod(leaf.shape[:n_in]), math.prod(leaf.shape[n_in:]))
            try:
                pattern.validate_shape(view, path)
            except ShapeError as e:
                reason = str(e).removeprefix(f"{path}: ")
        if reason:
            if explicit_where:
                raise ShapeError(f"{path}: {reason}")
            note(path, leaf, view, None, False, reason)
            continue
        if isinstance(leaf_sparsity, float) and (fixed or scope == "layer"):
            pattern.validate_sparsity(leaf_sparsity, path)
        note(path, leaf, view, leaf_sparsity, True, "")
        plan.append((i, path, leaf, leaf_sparsity, fixed, n_in))
    unused = [g for g in (overrides or {}) if g not in used_globs]
    if unused:
        raise ConfigError(f"overrides: {unused} match no leaf selected by where (selected: "
                          f"{[p for p, leaf in flat if where(p, leaf)][:5]}...)")
    return plan


def selection(
    params: PyTree,
    pattern: Pattern,
    sparsity: float,
    *,
    where: WherePredicate | None = None,
    scope: str = "layer",
    overrides: Mapping[str, float | None] | None = None,
    layer_bounds: tuple[float, float] | None = None,
    views: Mapping[str, int] | None = None,
) -> Selection:
    """What :func:`masks` (and :func:`tvwjax.prune`) will do with these arguments, before
    training: every kernel-like leaf with its GEMM view, target sparsity, and why it is
    skipped if it is. Nothing is computed on the values.

    Args: as :func:`masks`.

    Returns:
      A :class:`Selection`: a tuple of :class:`LeafPlan`, printed as a markdown table.

    >>> import jax.numpy as jnp, tvwjax
    >>> params = {"stem": {"kernel": jnp.ones((7, 7, 3, 64))},
    ...           "fc": {"kernel": jnp.ones((64, 10)), "bias": jnp.zeros(10)}}
    >>> print(tvwjax.selection(params, tvwjax.NM(), 0.5))
    | leaf | shape | GEMM view (K, N) | sparsity | pruned |
    |---|---|---|---|---|
    | fc/kernel | 64x10 | 64 x 10 | 0.5 | yes |
    | stem/kernel | 7x7x3x64 | 147 x 64 | - | no: 2:4 sparsity needs K ... got K=147 |
    """
    layer_bounds = check_selection_args(pattern, scope, where, overrides, layer_bounds, views)
    sparsity = val.sparsity(sparsity)
    check_target(pattern, sparsity, scope, layer_bounds)
    report: list[LeafPlan] = []
    _plan(leaves_with_paths(params)[0], pattern, sparsity, where, scope, overrides, views,
          report)
    return Selection(report)


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
    views: Mapping[str, int] | None = None,
) -> PyTree:
    """Sparsity masks for every selected leaf of ``params``.

    Args:
      params: any pytree of arrays (dict, Linen params, ``nnx.State``).
      pattern: a :class:`~tvwjax.patterns.Pattern` (``EW()``, ``TW(tile=64)``, ``TVW()``, ...).
      sparsity: target fraction of pruned weights in ``[0, 1)``; may be traced (read by
        :meth:`Pattern.effective_sparsity <tvwjax.Pattern.effective_sparsity>`).
      scores: a pytree like ``params`` of non-negative scores (default: ``|params|``).
      where: ``where(path, leaf) -> bool`` choosing the leaves to prune (default
        :func:`default_where`). A leaf it selects must have ``ndim >= 2``.
      scope: ``"layer"`` (each leaf at exactly its sparsity) or ``"global"`` (one threshold
        over all selected leaves' normalised unit scores; patterns with a fixed sparsity,
        such as ``NM``, are built per leaf).
      overrides: ``{glob: sparsity}`` on path strings (first match wins); a leaf whose
        override is ``None`` is not pruned. Overridden leaves keep their own sparsity in
        global scope and are left out of the shared threshold. A glob that matches no
        selected leaf raises (a typo must not pass silently).
      layer_bounds: ``(min_sparsity, max_sparsity)`` per leaf in global scope
        (default ``(0, 1)``: unbounded).
      views: ``{path or glob: n_in}``: the GEMM view of kernels whose layout the shape
        cannot tell, ``n_in`` leading axes contracted (from :func:`tvwjax.gemm_views`, which
        reads it off the model's modules). Without it, 2-D kernels are ``(in, out)`` and 4-D
        ones ``(kh, kw, Cin, Cout)`` conv kernels viewed as ``(kh*kw*Cin, Cout)``; other
        ranks are skipped by the default ``where`` and rejected by an explicit one.

    With the default ``where``, a kernel the pattern cannot apply to (an unknown layout,
    ``K`` not divisible by 4 for 2:4, ...) is left dense; :func:`selection` reports which
    and why. With an explicit ``where`` it raises.

    Returns:
      A pytree with the structure of ``params``: bool masks (True = kept) shaped like each
      pruned leaf, ``None`` elsewhere (map with ``is_leaf=lambda x: x is None``).

    Raises:
      ConfigError, ShapeError, DTypeError, ScoreError, TreeMismatchError (see
      :mod:`tvwjax.errors`), each naming the leaf path.

    >>> import jax, jax.numpy as jnp, tvwjax
    >>> params = {"dense": {"kernel": jax.random.normal(jax.random.key(0), (64, 32)),
    ...                     "bias": jnp.zeros(32)}}
    >>> m = tvwjax.masks(params, tvwjax.TVW(tile=16, column_share=0.0), 0.75)
    >>> m["dense"]["bias"] is None, float(1 - m["dense"]["kernel"].mean())
    (True, 0.75)
    """
    layer_bounds = check_selection_args(pattern, scope, where, overrides, layer_bounds, views)
    sparsity = val.sparsity(sparsity)
    check_target(pattern, sparsity, scope, layer_bounds)

    flat, treedef = leaves_with_paths(params)
    if scores is None:
        score_leaves = [None] * len(flat)
    else:
        s_flat, _ = leaves_with_paths(scores)
        if [p for p, _ in s_flat] != [p for p, _ in flat]:
            missing, extra = path_difference([p for p, _ in flat], [p for p, _ in s_flat])
            raise TreeMismatchError(f"scores must have the structure of params: missing "
                                    f"{missing}, unexpected {extra}")
        score_leaves = [sc for _, sc in s_flat]

    out: list[Any] = [None] * len(flat)
    selected: list[_Leaf] = []
    for i, path, leaf, leaf_sparsity, fixed, n_in in _plan(
            flat, pattern, sparsity, where, scope, overrides, views, report=None):
        score = score_leaves[i]
        if score is None:
            score = magnitude(leaf)
        elif jnp.shape(score) != leaf.shape:
            raise TreeMismatchError(f"{path}: scores have shape {jnp.shape(score)}, "
                                    f"expected the leaf's shape {leaf.shape}")
        val.finite_nonnegative(score, path)
        selected.append(_Leaf(i, path, leaf, score, leaf_sparsity, fixed, n_in))

    if selected:
        score_list = [lf.score for lf in selected]
        total = sum(math.prod(jnp.shape(sc)) for sc in score_list)
        shares = tuple(math.prod(jnp.shape(sc)) / total for sc in score_list)
        kwargs = dict(pattern=pattern, scope=scope, layer_bounds=layer_bounds,
                      fixed=tuple(lf.fixed for lf in selected), shares=shares)
        sparsities = [lf.sparsity for lf in selected]
        # Concrete and traced sparsities take the same computation (the sparsities are
        # arguments, read by Pattern.effective_sparsity): eager and jit masks are identical.
        sparsity_list = [jnp.asarray(v, jnp.float32) for v in sparsities]
        target = jnp.asarray(sparsity, jnp.float32)
        if _couples_leaves(pattern, scope, kwargs["fixed"]) or any(
                val.is_traced(a) for a in (*score_list, *sparsity_list, target)):
            mask_list = _core(score_list, sparsity_list, target, **kwargs)
        else:
            # Independent leaves, outside a trace: one compiled computation per distinct
            # leaf (shape, dtype, placement), run leaf after leaf. One program over all
            # leaves compiled for as long as it had leaves: TVW on BERT-base's 72 linear
            # layers took about two minutes, where these are three shapes.
            mask_list = [_core([sc], [sp], target, pattern=pattern, scope=scope,
                               layer_bounds=layer_bounds, fixed=(lf.fixed,), shares=(sh,))[0]
                         for sc, sp, lf, sh in zip(score_list, sparsity_list, selected, shares,
                                                   strict=True)]
        for lf, m in zip(selected, mask_list, strict=True):
            out[lf.index] = m.reshape(lf.leaf.shape)
    return jax.tree_util.tree_unflatten(treedef, out)


def apply_masks(params: PyTree, mask_tree: PyTree) -> PyTree:
    """``params * mask`` on every leaf with a mask (``None`` masks leave the leaf as is).

    Masks must be boolean or hold only 0 and 1 (a float mask of 0.3 is an error, not True).

    Raises:
      TreeMismatchError: ``mask_tree`` does not have the leaf paths of ``params``, or a
        mask's shape differs from its leaf's (no broadcasting).
      DTypeError: a mask that is neither boolean nor 0/1.

    >>> import jax.numpy as jnp
    >>> apply_masks({"w": jnp.ones((2, 2))}, {"w": jnp.eye(2, dtype=bool)})["w"].tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    check_same_leaves(mask_tree, params, "mask_tree", none_ok=True)

    def one(kp, m, p):
        if m is None:
            return p
        m = val.bool_mask(m, f"mask_tree: {path_str(kp)}")
        return jnp.where(m, p, jnp.zeros((), p.dtype))

    return jax.tree_util.tree_map_with_path(one, mask_tree, params, is_leaf=is_none)


__all__ = ["LeafPlan", "Selection", "apply_masks", "check_selection_args", "default_where",
           "masks", "selection"]
