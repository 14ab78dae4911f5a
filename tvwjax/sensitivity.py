"""Per-layer sparsity from measured sensitivity: spend the sparsity where it costs least.

A uniform target treats every layer alike, but what pruning a layer costs the model differs
by more than an order of magnitude between layers. On all-MiniLM-L6-v2, TW 50% (one-shot,
refit) of one layer alone lowers the embedding cosine to dense by 0.0007 for the last
block's query kernel and by 0.046 for its attention output kernel. This module measures that
and plans per-layer sparsities with the same overall sparsity:

1. :func:`layer_sensitivity` -- for every layer ``one_shot`` would prune and each candidate
   sparsity, prune that layer *alone* with the one-shot method (the selection and the refit
   of :func:`tvwjax.one_shot`, from the dense model's calibration statistics) and record by
   how much a user metric ``measure(params) -> float`` (lower is better) rises over the dense
   model's value. :func:`output_error` builds such a metric from the model's outputs on
   held-out batches.
2. :func:`plan_sparsity` -- one candidate per layer minimising the sum of the measured
   increases subject to the overall sparsity (weighted by layer size), solved exactly by
   dynamic programming over the multiple-choice knapsack. Summing per-layer increases assumes
   layers' damages add up, the assumption of the layer-wise allocations of Optimal Brain
   Compression (Frantar & Alistarh, 2022).
3. The plan's :attr:`SparsityPlan.overrides` go to the ``overrides`` argument of
   :func:`tvwjax.one_shot` (or :func:`tvwjax.masks`, :func:`tvwjax.prune`).

The measurement costs ``layers x candidates`` evaluations of ``measure`` (36 x 6 on MiniLM:
about 3 minutes on two CPU cores with 128 held-out sentences), or ``layers x anchors`` with
``anchors``: the other levels are then estimated from each layer's calibration output error
(its shape over the levels), scaled by the measured increase at the anchors (how much of
that layer's error reaches the metric). Use the cheap ``selection="score"`` for it even
when the final masks use ``selection="obs"``, and collect the dense statistics once for
both calls::

    stats = tvwjax.calibration.collect(inputs_fn, params, calib, gram=True)
    curves = tvwjax.layer_sensitivity(inputs_fn, params, pattern, calib, measure,
                                      anchors=(0.875,), stats=stats)
    plan = tvwjax.plan_sparsity(curves, params, 0.75)
    pruned, masks, _ = tvwjax.one_shot(inputs_fn, params, pattern, 0.75, calib,
                                       overrides=plan.overrides, selection="obs", stats=stats)

References:
  E. Frantar and D. Alistarh, "Optimal Brain Compression: A Framework for Accurate
  Post-Training Quantization and Pruning", NeurIPS 2022.
  E. Frantar and D. Alistarh, "SPDY: Accurate Pruning with Speedup Guarantees", ICML 2022.
"""

from __future__ import annotations

import dataclasses
import glob
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tvwjax import _validate as val
from tvwjax._tree import as_matrix, is_none, leaves_with_paths, n_in_for
from tvwjax.calibration import Batch, InputsFn, LayerStats, RowMaskFn, collect
from tvwjax.data_aware import data_scores, wanda
from tvwjax.errors import ConfigError, TreeMismatchError
from tvwjax.masking import _layer_bounds, masks
from tvwjax.masking import selection as select
from tvwjax.obs import obs_masks
from tvwjax.patterns import Pattern
from tvwjax.reconstruction import layer_error, reconstruct_layer

PyTree = Any
Measure = Callable[[PyTree], float]

#: Candidate sparsities :func:`layer_sensitivity` measures when none are given: those the
#: pattern accepts, and ``0`` (the layer left dense, free to measure) only for patterns whose
#: :attr:`~tvwjax.Pattern.floor` is 0 (EW, TW): a TVW or 2:4 plan keeps every layer in the
#: pattern unless ``0`` is asked for.
DEFAULT_LEVELS = (0.0, 0.25, 0.375, 0.5, 0.625, 0.75, 0.8125, 0.875, 0.9375)

#: :func:`plan_sparsity` solves its knapsack exactly on at most this many budget cells and
#: otherwise rounds each choice's pruned-weight count down to a coarser cell (the achieved
#: sparsity is then still at least the target).
MAX_CELLS = 1 << 18


def output_error(apply_fn: Callable[[PyTree, Batch], Any], params: PyTree,
                 batches: Iterable[Batch]) -> Measure:
    """A metric for :func:`layer_sensitivity`: relative squared error of the model's outputs.

    ``measure(p) = sum_b ||f(p, b) - f(params, b)||^2 / sum_b ||f(params, b)||^2`` over the
    given batches, with ``f = apply_fn`` (every floating-point leaf of its output counts).
    The dense outputs are computed once; ``apply_fn`` is jit-compiled.

    Args:
      apply_fn: ``apply_fn(params, batch) -> outputs`` (e.g.
        ``lambda p, b: model.apply(p, *b)``).
      params: the dense parameters (the reference).
      batches: held-out calibration batches (a finite iterable; kept in memory).

    Returns:
      ``measure(params) -> float`` (0 at the dense parameters).

    >>> import jax, flax.linen as nn
    >>> model = nn.Dense(4)
    >>> x = jax.random.normal(jax.random.key(0), (8, 3))
    >>> p = model.init(jax.random.key(1), x)
    >>> err = output_error(lambda v, b: model.apply(v, b), p, [x])
    >>> err(p)
    0.0
    """
    batches = list(batches)
    if not batches:
        raise ConfigError("output_error: batches is empty")
    fn = jax.jit(apply_fn)

    def floats(tree):
        return [jnp.asarray(x, jnp.float32) for x in jax.tree.leaves(tree)
                if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]

    refs = [floats(fn(params, b)) for b in batches]
    if not any(refs):
        raise ConfigError("output_error: apply_fn returned no floating-point output")
    total = float(sum(jnp.sum(jnp.square(r)) for ref in refs for r in ref))
    if not total > 0:
        raise ConfigError("output_error: the dense outputs are all zero; the relative "
                          "error is undefined")

    @jax.jit
    def sq(out, ref):
        return sum(jnp.sum(jnp.square(o - r)) for o, r in zip(out, ref, strict=True))

    def measure(p: PyTree) -> float:
        return float(sum(sq(floats(fn(p, b)), ref) for b, ref in zip(batches, refs,
                                                                      strict=True))) / total

    return measure


def admissible_levels(pattern: Pattern,
                      candidates: Iterable[float] = DEFAULT_LEVELS) -> list[float]:
    """The candidate sparsities a layer of ``pattern`` can be planned at, sorted and unique.

    A candidate is kept when the pattern accepts it (:meth:`~tvwjax.Pattern.validate_sparsity`,
    which also normalises it); ``0`` (the layer left dense) only when the pattern's
    :attr:`~tvwjax.Pattern.floor` is 0 (EW, TW: a TVW or 2:4 layer stays in its pattern), and
    values outside ``[0, 1)`` or in ``(0, floor)`` are dropped. This is the rule behind the
    default ``levels`` of :func:`layer_sensitivity`; use it to build levels around a target.

    >>> import tvwjax
    >>> from tvwjax.sensitivity import admissible_levels
    >>> admissible_levels(tvwjax.TVW(tile=64), [0.0, 0.25, 0.5, 0.625, 0.75, 1.0])
    [0.5, 0.625, 0.75]
    >>> admissible_levels(tvwjax.TW(tile=64), [0.0, 0.25, 0.5])
    [0.0, 0.25, 0.5]
    """
    out = set()
    for s in candidates:
        if not 0.0 <= s < 1.0 or 0.0 < s < pattern.floor or (s == 0.0 and pattern.floor > 0.0):
            continue
        try:
            out.add(pattern.validate_sparsity(round(float(s), 6)))
        except ConfigError:
            continue
    return sorted(out)


def _levels(pattern: Pattern, levels: Sequence[float] | None) -> list[float]:
    if levels is None:
        return admissible_levels(pattern)
    if isinstance(levels, str) or not isinstance(levels, Sequence) or not levels:
        raise ConfigError(f"layer_sensitivity: levels must be a non-empty sequence of sparsities, "
                          f"got {levels!r}")
    out = [pattern.validate_sparsity(s, f"layer_sensitivity: levels[{i}]")
           for i, s in enumerate(levels)]
    if len(set(out)) != len(out):
        raise ConfigError(f"layer_sensitivity: levels has duplicates: {list(levels)!r}")
    return sorted(out)


def _anchors(pattern: Pattern, anchors: Sequence[float] | None,
             lv: list[float]) -> list[float] | None:
    if anchors is None:
        return None
    if isinstance(anchors, str) or not isinstance(anchors, Sequence) or not anchors:
        raise ConfigError(f"layer_sensitivity: anchors must be a non-empty sequence of "
                          f"sparsities among the levels, got {anchors!r}")
    out = []
    for i, a in enumerate(anchors):
        a = pattern.validate_sparsity(a, f"layer_sensitivity: anchors[{i}]")
        match = [s for s in lv if math.isclose(s, a, abs_tol=1e-9)]
        if not match or match[0] == 0.0:
            raise ConfigError(f"layer_sensitivity: anchors[{i}] = {a:g} is not one of the "
                              f"non-zero levels {[s for s in lv if s > 0]}")
        out.append(match[0])
    return sorted(set(out))


def _columns(x: Any, gram: Any, cols: np.ndarray | None) -> Any:
    """The GEMM view ``(K, N)`` of a kernel (``K`` from its Gram matrix), those columns."""
    k = jnp.shape(gram)[0]
    x2 = as_matrix(x, n_in_for(tuple(jnp.shape(x)), k) or jnp.ndim(x) - 1)
    return x2 if cols is None else x2[:, cols]


def _sample_columns(w: Any, gram: Any, limit: int | None) -> tuple[Any, np.ndarray | None]:
    """The kernel's GEMM view on at most ``limit`` evenly spaced output columns (they span
    every tile), and those columns (``None``: all)."""
    n = _columns(w, gram, None).shape[1]
    cols = None
    if limit is not None and n > limit:
        cols = np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))
    return _columns(jnp.asarray(w, jnp.float32), gram, cols), cols


def _interpolate(ratios: list[tuple[float, float]], s: float) -> float:
    """Piecewise-linear in the level through ``(anchor, ratio)`` points, constant beyond."""
    xs, ys = zip(*ratios, strict=True)
    return float(np.interp(s, xs, ys))


def _replace(leaves: list[Any], treedef: Any, i: int, value: Any) -> PyTree:
    new = list(leaves)
    new[i] = value
    return jax.tree_util.tree_unflatten(treedef, new)


def layer_sensitivity(inputs_fn: InputsFn, params: PyTree, pattern: Pattern,
                batches: Iterable[Batch], measure: Measure, *,
                levels: Sequence[float] | None = None,
                anchors: Sequence[float] | None = None, estimate_columns: int | None = 128,
                where: Callable[[str, Any], bool] | None = None,
                views: Mapping[str, int] | None = None, row_mask: RowMaskFn | None = None,
                selection: str = "score", refit: bool = True, damping: float = 0.01,
                stats: Mapping[str, LayerStats] | None = None,
                progress: Callable[[str], None] | None = None) -> dict[str, dict[float, float]]:
    """Measured cost of pruning each layer alone, at each candidate sparsity.

    For every leaf that :func:`tvwjax.one_shot` would prune (``where``, ``views``) and each
    level, the leaf alone is masked (``selection="score"``: Wanda scores and the pattern's
    mask; ``"obs"``: :func:`tvwjax.obs.obs_masks`) from the dense model's calibration
    statistics, refit (:func:`tvwjax.reconstruct_layer`, if ``refit``), and
    ``measure(params with that leaf replaced) - measure(params)`` is recorded. Level ``0``
    (left dense) is recorded as 0 without a measurement. With ``anchors``, ``measure`` runs
    only at those levels and the rest are estimated from the layer's own calibration error
    (see below): on all-MiniLM-L6-v2 (TVW 75%, eight levels) a plan from one anchor at
    87.5% lost 0.004 of summed cost against every level measured (uniform: 0.43, planned
    0.314 measured, 0.318 anchored) for an eighth of the ``measure`` calls.

    Args:
      inputs_fn: inputs function of the model (:mod:`tvwjax.calibration`).
      params: dense parameters.
      pattern: the sparsity pattern the plan is for.
      batches: calibration batches (for the masks and the refit).
      measure: ``measure(params) -> float``, lower is better (e.g. :func:`output_error` on
        held-out batches, or the model's own loss).
      levels: candidate sparsities (each validated by the pattern); default: those of
        :data:`DEFAULT_LEVELS` the pattern accepts (:func:`admissible_levels`).
      anchors: measure only at these levels (each one of the non-zero ``levels``) and
        estimate the others: the layer's calibration output error after the same masks and
        refit, ``||X W - X W'||^2`` (:func:`tvwjax.reconstruction.layer_error`, from the
        Gram matrix: no forward pass), times the layer's ratio of measured increase to that
        error at the anchors (piecewise linear between anchors, constant beyond). The
        ratio carries how much of a layer's error reaches the metric, which varies by
        orders of magnitude between layers; the local error carries the shape of the
        curve. One anchor evaluates ``measure`` once per layer instead of once per level;
        a layer whose anchors leave its outputs unchanged is measured at every level, and
        a negative increase at an anchor (the metric's noise) scales as 0.
        Default ``None``: every level is measured.
      estimate_columns: with ``anchors``, the calibration errors are computed on at most
        this many evenly spaced output columns of the layer's GEMM view (the refit of
        columns is independent, and the ratio to the measured cost is taken on the same
        columns), so an estimated level costs a fraction of a refit; ``None``: all columns.
      where, views, row_mask, damping: as :func:`tvwjax.one_shot`.
      selection: ``"score"`` (fast, default) or ``"obs"``.
      refit: refit the kept weights, as ``one_shot(refit=True)``.
      stats: the dense model's statistics on ``batches`` (``tvwjax.calibration.collect(...,
        gram=True)``) to reuse, e.g. also for :func:`tvwjax.one_shot` ``(stats=...)``;
        ``None``: collected here.
      progress: optional callback receiving a line per leaf.

    Returns:
      ``{path: {level: increase of measure}}`` for :func:`plan_sparsity`.

    Raises:
      ConfigError: bad ``levels``, ``anchors`` or ``selection``, no leaf selected, a
        non-finite measure.

    >>> import jax, flax.linen as nn, tvwjax
    >>> from tvwjax.calibration import linen_inputs
    >>> class MLP(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         return nn.Dense(8)(nn.relu(nn.Dense(64)(x)))
    >>> model = MLP()
    >>> x = jax.random.normal(jax.random.key(0), (1024, 32))
    >>> p = model.init(jax.random.key(1), x)
    >>> err = tvwjax.sensitivity.output_error(lambda v, b: model.apply(v, b), p, [x[:256]])
    >>> curves = tvwjax.layer_sensitivity(linen_inputs(model), p,
    ...     tvwjax.TW(tile=8), [(x,)], err, levels=(0.0, 0.5, 0.75))
    >>> sorted(curves)
    ['params/Dense_0/kernel', 'params/Dense_1/kernel']
    >>> curves["params/Dense_0/kernel"][0.0]
    0.0
    >>> # measured at 75% only, 50% estimated from the layers' calibration errors
    >>> est = tvwjax.layer_sensitivity(linen_inputs(model), p, tvwjax.TW(tile=8), [(x,)], err,
    ...                                levels=(0.0, 0.5, 0.75), anchors=(0.75,))
    >>> est["params/Dense_0/kernel"][0.75] == curves["params/Dense_0/kernel"][0.75]
    True
    """
    if selection not in ("score", "obs"):
        raise ConfigError(f"layer_sensitivity: selection must be 'score' or 'obs', got "
                          f"{selection!r}")
    if not callable(measure):
        raise ConfigError(f"layer_sensitivity: measure must be callable, got "
                          f"{type(measure).__name__}")
    lv = _levels(pattern, levels)
    anchor_levels = _anchors(pattern, anchors, lv)
    if estimate_columns is not None:
        estimate_columns = val.positive_int(estimate_columns,
                                            "layer_sensitivity: estimate_columns")
    batches = list(batches)
    flat, treedef = leaves_with_paths(params)
    paths = [p for p, _ in flat]
    leaves = [v for _, v in flat]
    # the leaves one_shot prunes (where, views, the pattern's shapes), as masks() decides
    top = max(lv)
    chosen = [lp.path for lp in select(params, pattern, top if top > 0 else 0.5, where=where,
                                       views=views).pruned]
    if not chosen:
        raise ConfigError("layer_sensitivity: no leaf is selected for pruning (check where / "
                          "views)")
    need_gram = refit or selection == "obs" or anchor_levels is not None
    if stats is None:
        stats = collect(inputs_fn, params, batches, row_mask=row_mask, gram=need_gram)
        source = "no calibration inputs were captured for {} (the inputs function must " \
                 "record every pruned layer)"
    elif not isinstance(stats, Mapping):
        raise ConfigError(f"layer_sensitivity: stats must be a mapping {{path: LayerStats}} "
                          f"from tvwjax.calibration.collect, got {type(stats).__name__}")
    else:
        source = "stats has no entry for {}"
    missing = [p for p in chosen if p not in stats]
    if missing:
        raise ConfigError("layer_sensitivity: " + source.format(missing[0]))
    if need_gram:
        no_gram = [p for p in chosen if getattr(stats[p], "gram", None) is None]
        if no_gram:
            raise ConfigError(f"layer_sensitivity: stats[{no_gram[0]!r}] has no Gram matrix; "
                              "the refit and the estimates need collect(..., gram=True)")
    scores = (data_scores(params, stats, wanda, where=where) if selection == "score"
              else None)
    base = float(measure(params))
    if not math.isfinite(base):
        raise ConfigError(f"layer_sensitivity: measure(params) is not finite ({base})")
    out: dict[str, dict[float, float]] = {}
    for path in chosen:
        i = paths.index(path)
        w = leaves[i]
        only = (lambda p, _x, _path=path: p == _path)

        def mask_of(s, _i=i, _only=only):
            if selection == "score":
                mk = masks(params, pattern, s, scores=scores, where=_only, views=views)
            else:
                mk = obs_masks(params, stats, pattern, s, where=_only, views=views,
                               damping=damping)
            return jax.tree.leaves(mk, is_leaf=is_none)[_i]

        def pruned(w_, m, _path=path):
            """The one-shot layer: masked, refit if ``refit`` (float32)."""
            if refit:
                return reconstruct_layer(w_, m, stats[_path].gram, damping=damping,
                                         name=_path)
            return jnp.where(m, jnp.asarray(w_, jnp.float32), 0.0)

        def cost(s, new, _w=w, _i=i, _path=path):
            new = new.astype(jnp.asarray(_w).dtype)
            value = float(measure(_replace(leaves, treedef, _i, new)))
            if not math.isfinite(value):
                raise ConfigError(f"layer_sensitivity: measure is not finite ({value}) with "
                                  f"{_path} at sparsity {s:g}")
            return value - base

        nonzero = [s for s in lv if s != 0.0]
        if anchor_levels is None:
            measured = {s: cost(s, pruned(w, mask_of(s))) for s in nonzero}
        else:
            g = stats[path].gram
            w2, cols = _sample_columns(w, g, estimate_columns)
            measured, local = {}, {}
            for a in anchor_levels:
                new = pruned(w, mask_of(a))
                measured[a] = cost(a, new)
                if cols is None:
                    local[a] = float(layer_error(w2, _columns(new, g, None), g))
            for s in nonzero:  # the same refit on the sampled columns alone
                if s not in local:
                    m2 = _columns(mask_of(s), g, cols)
                    local[s] = float(layer_error(w2, pruned(w2, m2), g))
            # a metric that improved at an anchor (noise) scales nothing: ratio 0, not < 0
            ratios = [(a, max(measured[a], 0.0) / local[a]) for a in anchor_levels
                      if local[a] > 0]
            for s in nonzero:
                if s in measured:
                    continue
                if ratios:
                    measured[s] = local[s] * _interpolate(ratios, s)
                else:  # the anchors left the layer's outputs unchanged: nothing to scale
                    measured[s] = cost(s, pruned(w, mask_of(s)))
        row = {s: (0.0 if s == 0.0 else measured[s]) for s in lv}
        out[path] = row
        if progress is not None:
            progress(f"{path}: " + ", ".join(f"{s:g}: {v:.4g}" for s, v in row.items()))
    return out


@dataclasses.dataclass(frozen=True)
class SparsityPlan:
    """Per-layer sparsities chosen by :func:`plan_sparsity`.

    Attributes:
      sparsities: ``{path: sparsity}`` (0 = left dense).
      sparsity: the achieved overall sparsity, weighted by layer size (>= the target).
      predicted: the sum of the measured increases of the chosen levels.
      uniform: the same sum with every layer at the target sparsity, when the target is one
        of every layer's measured levels (else ``None``).
    """

    sparsities: dict[str, float]
    sparsity: float
    predicted: float
    uniform: float | None

    @property
    def overrides(self) -> dict[str, float | None]:
        """The plan as ``overrides`` for :func:`tvwjax.one_shot` / :func:`tvwjax.masks`:
        exact-path globs, ``None`` for layers left dense."""
        return {glob.escape(p): (None if s == 0.0 else s) for p, s in self.sparsities.items()}


def plan_sparsity(curves: Mapping[str, Mapping[float, float]], params: PyTree,
                  sparsity: float, *,
                  layer_bounds: tuple[float, float] | None = None) -> SparsityPlan:
    """Choose one measured level per layer: least total increase at the overall sparsity.

    Minimises ``sum_l curves[l][s_l]`` subject to ``sum_l s_l n_l >= sparsity * sum_l n_l``
    (``n_l`` the layer's number of weights) by dynamic programming over the pruned-weight
    budget: exact when the budget fits :data:`MAX_CELLS` cells of the layers' common
    divisor, otherwise on coarser cells with each choice's count rounded down (so the
    achieved sparsity never falls short of the target).

    Args:
      curves: ``{path: {level: cost}}`` (:func:`layer_sensitivity`; any finite costs).
      params: the parameter pytree the paths refer to (for the layer sizes).
      sparsity: the overall target over the layers in ``curves``.
      layer_bounds: optional ``(min, max)`` sparsity of each layer: levels outside are not
        chosen.

    Returns:
      A :class:`SparsityPlan`; pass ``plan.overrides`` to :func:`tvwjax.one_shot`.

    Raises:
      ConfigError: a bad target, bounds or curve; no choice reaches the target.
      TreeMismatchError: a path of ``curves`` that is not a leaf of ``params``.

    >>> import numpy as np
    >>> params = {"a": np.zeros((4, 4)), "b": np.zeros((4, 12))}
    >>> curves = {"a": {0.25: 0.1, 0.5: 0.2, 0.75: 0.9}, "b": {0.25: 0.0, 0.5: 0.01,
    ...                                                          0.75: 0.05}}
    >>> plan = plan_sparsity(curves, params, 0.5)
    >>> plan.sparsities, plan.sparsity
    ({'a': 0.25, 'b': 0.75}, 0.625)
    """
    target = val.sparsity(sparsity, "plan_sparsity: sparsity")
    lo, hi = _layer_bounds(layer_bounds)
    if not isinstance(curves, Mapping) or not curves:
        raise ConfigError("plan_sparsity: curves must be a non-empty mapping "
                          "{path: {level: cost}} (see layer_sensitivity)")
    sizes_all = {p: int(np.size(v)) for p, v in leaves_with_paths(params)[0]}
    paths = list(curves)
    options: list[list[tuple[float, float]]] = []
    for p in paths:
        if p not in sizes_all:
            raise TreeMismatchError(f"plan_sparsity: curves has {p!r}, which is not a leaf "
                                    "of params")
        row = curves[p]
        if not isinstance(row, Mapping):
            raise ConfigError(f"plan_sparsity: curves[{p!r}] must map level -> cost, got "
                              f"{type(row).__name__}")
        opts = []
        for s, c in row.items():
            s = val.sparsity(s, f"plan_sparsity: curves[{p!r}] level")
            c = float(c)
            if not math.isfinite(c):
                raise ConfigError(f"plan_sparsity: curves[{p!r}][{s:g}] is not finite ({c})")
            if lo - 1e-12 <= s <= hi + 1e-12:
                opts.append((s, c))
        if not opts:
            raise ConfigError(f"plan_sparsity: {p}: no measured level within layer_bounds "
                              f"{layer_bounds!r} (levels {sorted(row)})")
        options.append(sorted(opts))
    sizes = [sizes_all[p] for p in paths]
    total = sum(sizes)
    need_w = target * total
    best_w = sum(max(s for s, _ in o) * n for o, n in zip(options, sizes, strict=True))
    if best_w < need_w * (1 - 1e-9):
        raise ConfigError(f"plan_sparsity: the target {target:g} is out of reach: the highest "
                          f"levels give {best_w / total:.4g}")
    # each choice's pruned weights on a 2^-16 grid of the layer's size, in budget cells
    q = 1 << 16
    counts = [[round(s * q) * n for s, _ in o] for o, n in zip(options, sizes, strict=True)]
    need = math.ceil(round(need_w * q, 6))
    unit = math.gcd(*[c for row in counts for c in row], need) or 1
    exact = need // unit <= MAX_CELLS
    if not exact:  # coarse cells: rounding down loses < 1 cell per layer; repaired below
        unit = math.ceil(need / MAX_CELLS)
    cells = [[c // unit for c in row] for row in counts]
    top = need // unit if exact else max(0, need // unit - len(paths))
    picks = _knapsack(options, cells, top)
    if not exact:
        _repair(picks, options, counts, need)
    chosen = {p: options[li][picks[li]][0] for li, p in enumerate(paths)}
    achieved = sum(chosen[p] * n for p, n in zip(paths, sizes, strict=True)) / total
    predicted = sum(options[li][picks[li]][1] for li in range(len(paths)))
    uniform = None
    if all(target in dict(o) for o in options):
        uniform = sum(dict(o)[target] for o in options)
    return SparsityPlan(chosen, achieved, predicted, uniform)


def _knapsack(options: list[list[tuple[float, float]]], cells: list[list[int]],
              top: int) -> list[int]:
    """Index of the chosen option per layer: least total cost with the cells summing to at
    least ``top`` (multiple-choice knapsack, dynamic programming over cells ``0..top``)."""
    cost = np.full(top + 1, np.inf)
    cost[0] = 0.0
    choice = np.zeros((len(options), top + 1), np.int16)
    cap_from = []  # per layer: (option, previous cell) that reaches the top cell
    for li, (opts, cl) in enumerate(zip(options, cells, strict=True)):
        new = np.full(top + 1, np.inf)
        best_cap = (np.inf, 0, 0)
        for j, ((_, c), u) in enumerate(zip(opts, cl, strict=True)):
            cand = np.full(top + 1, np.inf)
            u = min(u, top)
            cand[u:top] = cost[:top - u] + c
            b = int(np.argmin(cost[top - u:])) + top - u  # any cell >= top - u reaches top
            if cost[b] + c < best_cap[0]:
                best_cap = (cost[b] + c, j, b)
            better = cand < new
            new = np.where(better, cand, new)
            choice[li] = np.where(better, j, choice[li])
        new[top] = best_cap[0]
        choice[li, top] = best_cap[1]
        cap_from.append(best_cap[2])
        cost = new
    if not np.isfinite(cost[top]):  # unreachable: the caller checked the highest levels
        raise AssertionError("plan_sparsity: the budget grid lost the target")
    picks = [0] * len(options)
    b = top
    for li in range(len(options) - 1, -1, -1):
        j = int(choice[li, b])
        picks[li] = j
        b = cap_from[li] if b == top else b - min(cells[li][j], top)
    return picks


def _repair(picks: list[int], options: list[list[tuple[float, float]]],
            counts: list[list[int]], need: int) -> None:
    """Raise levels (in place) until the pruned count reaches ``need``: each step the move
    with the least cost increase per extra pruned weight (after a coarse-grid solve)."""
    have = sum(counts[li][j] for li, j in enumerate(picks))
    while have < need:
        best = None
        for li, j in enumerate(picks):
            for k, (_, c) in enumerate(options[li]):
                gain = counts[li][k] - counts[li][j]
                if gain > 0:
                    rate = (c - options[li][j][1]) / gain
                    if best is None or rate < best[0]:
                        best = (rate, li, k)
        _, li, k = best  # the caller checked that the highest levels reach the target
        have += counts[li][k] - counts[li][picks[li]]
        picks[li] = k
