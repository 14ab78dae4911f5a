"""``tvwjax.prune``: an Optax transformation that enforces a sparsity pattern during training.

Put it *after* the inner optimizer::

    tx = optax.chain(optax.adamw(1e-3), tvwjax.prune(tvwjax.TVW(tile=64),
                                                     tvwjax.Polynomial(0.75, 1000, 5000, 100)))

Its state holds the boolean masks (shaped like the pruned parameters, ``None`` for the
others) and the step count. On the steps where the schedule says so, the masks are
recomputed (inside ``jax.lax.cond``: on the other steps the mask code does not run) from
the weights the step is about to produce -- ``params + updates`` of the inner optimizer,
with already-pruned weights counted as zero -- or from scores passed to ``update`` as the
extra argument ``scores=`` (e.g. accumulated first-order Taylor scores, see
:mod:`tvwjax.scores`). The returned updates are ``where(keep, u, -p)``: after
``optax.apply_updates`` a pruned weight is ``p + (-p)``, which is exactly ``+0`` in IEEE
arithmetic for every float dtype (including bfloat16, and for float32 updates of bfloat16
parameters, whose sum is computed in float32 and cast back). Since the masking is the last
transformation of the chain, whatever the inner optimizer's momentum says, a pruned weight
stays exactly zero. A weight that a new mask keeps but the previous mask had pruned
restarts from zero (it is not given the inner optimizer's accumulated update).

References:
  M. Zhu and S. Gupta, "To prune, or not to prune", arXiv:1710.01878, 2017.
  C. Guo et al., "Accelerating Sparse DNN Models without Hardware-Support via Tile-Wise
  Sparsity", SC 2020.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from tvwjax.errors import ConfigError, TreeMismatchError
from tvwjax.masking import check_same_leaves, path_str
from tvwjax.masking import masks as compute_masks
from tvwjax.patterns import Pattern
from tvwjax.schedules import Schedule, effective_sparsity

PyTree = Any
ScoreFn = Callable[[PyTree], PyTree]


def _is_none(x) -> bool:
    return x is None


class PruneState(NamedTuple):
    """State of :func:`prune`.

    Attributes:
      count: number of updates so far (int32); the schedule is evaluated at this step.
      masks: bool pytree like the params (True = kept), ``None`` for unpruned leaves.
      sparsity: the effective target sparsity of the current masks (float32; after the
        NM / TVW floor rounding, see :func:`tvwjax.schedules.effective_sparsity`).
    """

    count: jax.Array
    masks: PyTree
    sparsity: jax.Array


def _ones_like_masks(params: PyTree, mask_template: PyTree) -> PyTree:
    """All-True masks (sharded like each param) where the template has a mask."""
    return jax.tree.map(
        lambda m, p: None if m is None else jnp.ones_like(p, dtype=bool),
        mask_template, params, is_leaf=_is_none)


def _masks_by_path(params: PyTree, given: PyTree, arg: str) -> PyTree:
    """Re-key user masks onto the structure of ``params`` by path string.

    Matching by path (not by tree structure) lets masks computed on ``nnx.state(model)``
    (``Variable`` nodes) be used with the pure arrays Optax sees, and vice versa.
    """
    flat_g = jax.tree_util.tree_flatten_with_path(given, is_leaf=_is_none)[0]
    by_path = {path_str(kp): m for kp, m in flat_g}
    flat_p, treedef = jax.tree_util.tree_flatten_with_path(params)
    p_paths = [path_str(kp) for kp, _ in flat_p]
    extra = sorted(set(by_path) - set(p_paths))
    if extra:
        raise TreeMismatchError(f"{arg}: masks for paths not in params: {extra[:5]}")
    out = []
    for path, (_, p) in zip(p_paths, flat_p, strict=True):
        m = by_path.get(path)
        if m is not None:
            if jnp.shape(m) != jnp.shape(p):
                raise TreeMismatchError(f"{arg}: {path}: mask shape {jnp.shape(m)} does not "
                                        f"match the parameter's {jnp.shape(p)}")
            m = jnp.asarray(m).astype(bool)
        out.append(m)
    return jax.tree_util.tree_unflatten(treedef, out)


def _check_updates(updates: PyTree, params: PyTree) -> None:
    """Updates must have the leaf paths and shapes of params (static, free under jit)."""
    check_same_leaves(updates, params, "prune: updates", none_ok=False)


def prune(
    pattern: Pattern | None,
    schedule: Schedule,
    *,
    scope: str = "layer",
    where: Callable[[str, Any], bool] | None = None,
    overrides: Mapping[str, float | None] | None = None,
    layer_bounds: tuple[float, float] | None = None,
    score_fn: ScoreFn | None = None,
    initial_masks: PyTree | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Enforce a sparsity ``pattern`` following ``schedule``; chain it after the optimizer.

    Args:
      pattern: a :class:`~tvwjax.patterns.Pattern` (``EW()``, ``TW(tile=64)``, ``TVW()``,
        ...). May be ``None`` only with a :class:`~tvwjax.schedules.Constant` schedule.
      schedule: a :class:`~tvwjax.schedules.Schedule` (``OneShot``, ``Polynomial`` (Zhu &
        Gupta, 2017), ``Staged`` (Guo et al., 2020), ``Constant``).
      scope: ``"layer"`` (every pruned leaf at the target) or ``"global"`` (one threshold
        over all pruned leaves, as in Guo et al.'s BERT experiments); see
        :func:`tvwjax.masks`.
      where: ``where(path, leaf) -> bool`` choosing the leaves to prune (default: floating
        ``kernel`` leaves with ``ndim >= 2``; conv kernels as ``(kh*kw*Cin, Cout)``).
      overrides: ``{glob: sparsity or None}`` per path, see :func:`tvwjax.masks`. Static
        values are used as given (not scheduled).
      layer_bounds: ``(min, max)`` per-leaf sparsity in global scope.
      score_fn: ``score_fn(weights) -> scores`` (default ``|w|``), applied to the weights
        the step produces. Ignored on a step whose ``update`` is given ``scores=``.
      initial_masks: masks to start from (a pytree like the params with ``None`` for
        unpruned leaves, e.g. from :func:`tvwjax.masks`); required by ``Constant``.
        Default: all weights kept.

    Returns:
      An ``optax.GradientTransformationExtraArgs``. Its ``update(updates, state, params,
      *, scores=None)`` needs ``params``; ``scores`` (a pytree like params of non-negative
      scores, e.g. Taylor scores) replaces ``score_fn`` for that step.

    Raises:
      ConfigError: a bad pattern, schedule, scope or missing ``initial_masks``, or a
        schedule target the pattern cannot produce.
    """
    if not isinstance(schedule, Schedule):
        raise ConfigError(f"prune: schedule must be a tvwjax Schedule (OneShot, Polynomial, "
                          f"Staged, Constant), got {schedule!r}")
    if pattern is None:
        if schedule.updates_masks:
            raise ConfigError(f"prune: pattern is required with a {schedule.name} schedule "
                              "(only Constant may omit it)")
    elif not isinstance(pattern, Pattern):
        raise ConfigError(f"prune: pattern must be a tvwjax Pattern (EW(), TW(), TVW(), ...), "
                          f"got {pattern!r}")
    if scope not in ("layer", "global"):
        raise ConfigError(f"prune: scope must be 'layer' or 'global', got {scope!r}")
    if score_fn is not None and not callable(score_fn):
        raise ConfigError(f"prune: score_fn must be callable, got {score_fn!r}")
    if not schedule.updates_masks and initial_masks is None:
        raise ConfigError("prune: initial_masks is required with a Constant schedule (the "
                          "masks to keep fixed, e.g. from tvwjax.masks(params, ...))")
    schedule.validate_for(pattern)

    def _template(params):
        # Which leaves get masks: the library's leaf selection and shape checks, traced
        # abstractly (no score is computed or copied to the host).
        if pattern is None:
            return None
        return jax.eval_shape(
            lambda p: compute_masks(p, pattern, 0.0, where=where, overrides=overrides), params)

    def init_fn(params: PyTree) -> PruneState:
        if initial_masks is not None:
            m = _masks_by_path(params, initial_masks, "initial_masks")
            if pattern is not None:
                selected = _template(params)
                flat_sel = jax.tree.leaves(selected, is_leaf=_is_none)
                flat_m = jax.tree.leaves(m, is_leaf=_is_none)
                for (kp, _), a, b in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                         flat_sel, flat_m, strict=True):
                    if (a is None) != (b is None):
                        raise TreeMismatchError(
                            f"initial_masks: {path_str(kp)}: "
                            f"{'has no mask but is' if b is None else 'has a mask but is not'}"
                            " selected for pruning by where/overrides")
            s0 = schedule.final_sparsity if not schedule.updates_masks else 0.0
            return PruneState(jnp.zeros([], jnp.int32), m, jnp.float32(s0))
        m = _ones_like_masks(params, _template(params))
        return PruneState(jnp.zeros([], jnp.int32), m, jnp.float32(0.0))

    def update_fn(updates: PyTree, state: PruneState, params: PyTree | None = None,
                  *, scores: PyTree | None = None, **extra_args) -> tuple[PyTree, PruneState]:
        del extra_args
        if params is None:
            raise ConfigError(
                "prune: update needs params (tx.update(grads, state, params)); the masks are "
                "computed from the weights. optax.chain, nnx.Optimizer.update and "
                "TrainState.apply_gradients pass them.")
        _check_updates(updates, params)
        old = state.masks
        target, do_update = schedule(state.count)

        if schedule.updates_masks:
            def recompute(_):
                # The weights this step would produce, with pruned weights at zero.
                cand = jax.tree.map(
                    lambda m, p, u: p if m is None else jnp.where(
                        m, jnp.asarray(p + u).astype(p.dtype), jnp.zeros((), p.dtype)),
                    old, params, updates, is_leaf=_is_none)
                if scores is not None:
                    sc = scores
                elif score_fn is not None:
                    sc = score_fn(cand)
                else:
                    sc = None
                if sc is not None:  # previously pruned weights score zero
                    sc = jax.tree.map(
                        lambda m, s: s if m is None else jnp.where(m, s, jnp.zeros((), s.dtype)),
                        old, sc, is_leaf=_is_none)
                new = compute_masks(cand, pattern, target, scores=sc, where=where,
                                    scope=scope, overrides=overrides,
                                    layer_bounds=layer_bounds)
                return new, effective_sparsity(pattern, target)

            new_masks, new_sparsity = jax.lax.cond(
                do_update, recompute, lambda _: (old, state.sparsity), None)
        else:
            new_masks, new_sparsity = old, state.sparsity

        def mask_update(new, prev, u, p):
            if new is None:
                return u
            keep = new & prev
            return jnp.where(keep, u, -p)

        out = jax.tree.map(mask_update, new_masks, old, updates, params, is_leaf=_is_none)
        return out, PruneState(optax.safe_int32_increment(state.count), new_masks,
                               new_sparsity)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def kept_fraction(mask_tree: PyTree) -> float:
    """Fraction of kept entries over all masks of a mask pytree (``None`` leaves skipped)."""
    leaves = [m for m in jax.tree.leaves(mask_tree) if m is not None]
    if not leaves:
        raise ConfigError("kept_fraction: the mask pytree has no masks")
    kept = sum(float(jnp.sum(m)) for m in leaves)
    return kept / sum(m.size for m in leaves)


def get_masks(opt_state: Any) -> PyTree:
    """Find the masks of the (first) :class:`PruneState` inside an optimizer state.

    Args:
      opt_state: an Optax state (e.g. of ``optax.chain(inner, prune(...))``), or an NNX
        ``Optimizer.opt_state`` (its pure arrays are read).

    Returns:
      The mask pytree of the first :class:`PruneState` found.

    Raises:
      ConfigError: no :class:`PruneState` in ``opt_state``.
    """
    try:
        from flax import nnx
        opt_state = nnx.as_pure(opt_state)
    except ImportError:  # flax is optional; plain Optax states pass through
        pass
    found = []

    def visit(x):
        if isinstance(x, PruneState):
            found.append(x)
            return True
        return False

    jax.tree.leaves(opt_state, is_leaf=visit)
    if not found:
        raise ConfigError("get_masks: opt_state has no PruneState (is prune() in the chain?)")
    return found[0].masks


__all__ = ["PruneState", "get_masks", "kept_fraction", "prune"]
