"""Per-layer sparsity plans from measured sensitivity (tvwjax.sensitivity)."""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tvwjax
from tvwjax import sensitivity as sens
from tvwjax.calibration import linen_inputs
from tvwjax.errors import ConfigError, TreeMismatchError


def _brute_force(curves, sizes, target):
    total = sum(sizes.values())
    best = None
    for combo in itertools.product(*[list(c.items()) for c in curves.values()]):
        s = sum(lv * sizes[k] for (lv, _), k in zip(combo, curves, strict=True)) / total
        if s >= target - 1e-12:
            cost = sum(c for _, c in combo)
            best = cost if best is None else min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_plan_is_the_exact_optimum(seed):
    rng = np.random.default_rng(seed)
    levels = [0.0, 0.25, 0.5, 0.625, 0.75, 0.875]
    for _ in range(40):
        n = int(rng.integers(1, 5))
        params = {f"l{i}": {"kernel": np.zeros((int(rng.integers(1, 9)) * 8,
                                                int(rng.integers(1, 9)) * 3))}
                  for i in range(n)}
        curves = {f"l{i}/kernel": {float(s): float(rng.random() * s) for s in rng.choice(
            levels, size=int(rng.integers(1, 5)), replace=False)} for i in range(n)}
        sizes = {f"l{i}/kernel": params[f"l{i}"]["kernel"].size for i in range(n)}
        target = float(rng.choice([0.3, 0.5, 0.6]))
        best = _brute_force(curves, sizes, target)
        if best is None:
            with pytest.raises(ConfigError, match="out of reach"):
                sens.plan_sparsity(curves, params, target)
            continue
        plan = sens.plan_sparsity(curves, params, target)
        assert plan.predicted == pytest.approx(best, abs=1e-12)
        assert plan.sparsity >= target - 1e-12
        assert all(plan.sparsities[k] in curves[k] for k in curves)
        total = sum(sizes.values())
        assert plan.sparsity == pytest.approx(
            sum(plan.sparsities[k] * sizes[k] for k in curves) / total)


def test_plan_on_coarse_cells_still_reaches_the_target(monkeypatch):
    monkeypatch.setattr(sens, "MAX_CELLS", 7)
    rng = np.random.default_rng(0)
    params = {f"l{i}": np.zeros((13 * (i + 1), 7)) for i in range(5)}
    curves = {f"l{i}": {s: float(rng.random() * s) for s in (0.0, 0.3, 0.55, 0.8)}
              for i in range(5)}
    for target in (0.2, 0.41, 0.5, 0.7):
        plan = sens.plan_sparsity(curves, params, target)
        assert plan.sparsity >= target
        assert plan.predicted >= _brute_force(curves, {k: v.size for k, v in params.items()},
                                              target) - 1e-12


def test_plan_reads_numbers_of_any_type_alike():
    params = {"a": np.zeros((4, 4)), "b": np.zeros((4, 12))}
    curves = {"a": {0.25: 0.1, 0.5: 0.2, 0.75: 0.9}, "b": {0.25: 0.0, 0.5: 0.01, 0.75: 0.05}}
    want = sens.plan_sparsity(curves, params, 0.5, layer_bounds=(0.25, 0.75))
    for t, b in [(np.float32(0.5), (np.float32(0.25), np.float64(0.75))),
                 (jnp.float32(0.5), [0.25, jnp.float32(0.75)]), (np.float64(0.5), None)]:
        assert sens.plan_sparsity(curves, params, t, layer_bounds=b) == want
    np_curves = {k: {np.float32(s): np.float64(c) for s, c in v.items()}
                 for k, v in curves.items()}
    assert sens.plan_sparsity(np_curves, params, 0.5).sparsities == want.sparsities


def test_plan_uniform_and_bounds():
    params = {"a": np.zeros((4, 4)), "b": np.zeros((4, 12))}
    curves = {"a": {0.25: 0.1, 0.5: 0.2, 0.75: 0.9}, "b": {0.25: 0.0, 0.5: 0.01, 0.75: 0.05}}
    plan = sens.plan_sparsity(curves, params, 0.5)
    assert plan.sparsities == {"a": 0.25, "b": 0.75}
    assert plan.uniform == pytest.approx(0.21)
    assert plan.predicted == pytest.approx(0.15)
    bounded = sens.plan_sparsity(curves, params, 0.5, layer_bounds=(0.5, 0.5))
    assert bounded.sparsities == {"a": 0.5, "b": 0.5}
    # a target that no measured level of one layer matches: no uniform figure
    assert sens.plan_sparsity(curves, params, 0.4).uniform is None


def test_plan_errors_name_the_problem():
    params = {"a": np.zeros((4, 4))}
    with pytest.raises(ConfigError, match="out of reach.*0.5"):
        sens.plan_sparsity({"a": {0.25: 0.0, 0.5: 1.0}}, params, 0.6)
    with pytest.raises(TreeMismatchError, match="'b'"):
        sens.plan_sparsity({"b": {0.5: 0.0}}, params, 0.5)
    with pytest.raises(ConfigError, match=r"curves\['a'\]\[0.5\] is not finite"):
        sens.plan_sparsity({"a": {0.5: float("nan")}}, params, 0.5)
    with pytest.raises(ConfigError, match="no measured level within layer_bounds"):
        sens.plan_sparsity({"a": {0.5: 0.0}}, params, 0.1, layer_bounds=(0.6, 0.9))
    with pytest.raises(ConfigError, match="layer_bounds"):
        sens.plan_sparsity({"a": {0.5: 0.0}}, params, 0.5, layer_bounds=(0.9, 0.1))
    with pytest.raises(ConfigError, match="plan_sparsity: sparsity"):
        sens.plan_sparsity({"a": {0.5: 0.0}}, params, "0.5")
    with pytest.raises(ConfigError, match="plan_sparsity: sparsity"):
        sens.plan_sparsity({"a": {0.5: 0.0}}, params, np.float32(1.5))
    with pytest.raises(ConfigError, match="layer_bounds"):
        sens.plan_sparsity({"a": {0.5: 0.0}}, params, 0.5, layer_bounds=0.5)
    with pytest.raises(ConfigError, match="non-empty mapping"):
        sens.plan_sparsity({}, params, 0.5)
    with pytest.raises(ConfigError, match=r"curves\['a'\] must map"):
        sens.plan_sparsity({"a": [0.5]}, params, 0.5)


def test_overrides_reproduce_the_plan_in_masks():
    """Paths with glob characters are matched exactly; level 0 leaves the layer dense."""
    key = jax.random.key(0)
    params = {"blk[0]": {"kernel": jax.random.normal(key, (64, 32))},
              "blk[1]": {"kernel": jax.random.normal(key, (64, 32))},
              "head*": {"kernel": jax.random.normal(key, (64, 16))}}
    curves = {"blk[0]/kernel": {0.0: 0.0, 0.75: 0.1}, "blk[1]/kernel": {0.0: 0.0, 0.75: 0.5},
              "head*/kernel": {0.0: 0.0, 0.5: 0.01, 0.75: 0.02}}
    plan = sens.plan_sparsity(curves, params, 0.4)
    assert plan.sparsities == {"blk[0]/kernel": 0.75, "blk[1]/kernel": 0.0,
                               "head*/kernel": 0.5}
    m = tvwjax.masks(params, tvwjax.TW(tile=8), 0.5, overrides=plan.overrides)
    assert m["blk[1]"]["kernel"] is None
    assert float(1 - m["blk[0]"]["kernel"].mean()) == 0.75
    assert float(1 - m["head*"]["kernel"].mean()) == 0.5


class _TwoBranches(nn.Module):
    """y = A(x) + 0.02 * B(x): pruning B costs the output far less than pruning A."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(64, name="inner")(x))
        return nn.Dense(16, name="A")(h) + 0.02 * nn.Dense(16, name="B")(h)


@pytest.fixture(scope="module")
def two_branches():
    model = _TwoBranches()
    x = jax.random.normal(jax.random.key(0), (1024, 48))
    params = model.init(jax.random.key(1), x)
    heldout = jax.random.normal(jax.random.key(2), (256, 48))
    measure = sens.output_error(lambda p, b: model.apply(p, b), params, [heldout])
    return model, params, x, measure


def test_output_error(two_branches):
    model, params, x, measure = two_branches
    assert measure(params) == 0.0
    half = jax.tree.map(lambda v: 0.5 * v, params)
    heldout = jax.random.normal(jax.random.key(2), (256, 48))
    out, out_half = model.apply(params, heldout), model.apply(half, heldout)
    want = float(jnp.sum((out_half - out) ** 2) / jnp.sum(out ** 2))
    assert measure(half) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ConfigError, match="batches is empty"):
        sens.output_error(lambda p, b: model.apply(p, b), params, [])
    with pytest.raises(ConfigError, match="all zero"):
        sens.output_error(lambda p, b: 0.0 * model.apply(p, b), params, [x])


@pytest.mark.parametrize("selection", ["score", "obs"])
def test_sensitivity_ranks_layers_and_the_plan_beats_uniform(two_branches, selection):
    model, params, x, measure = two_branches
    pattern = tvwjax.TW(tile=8)
    curves = sens.layer_sensitivity(linen_inputs(model), params, pattern, [(x,)], measure,
                              levels=(0.0, 0.25, 0.5, 0.75), selection=selection)
    assert sorted(curves) == ["params/A/kernel", "params/B/kernel", "params/inner/kernel"]
    for row in curves.values():
        assert sorted(row) == [0.0, 0.25, 0.5, 0.75]
        assert row[0.0] == 0.0
        assert row[0.75] > row[0.25] > 0.0
    for s in (0.25, 0.5, 0.75):  # the 0.02-scaled branch is far cheaper to prune
        assert curves["params/B/kernel"][s] < 0.05 * curves["params/A/kernel"][s]
    plan = sens.plan_sparsity(curves, params, 0.5)
    assert plan.sparsities["params/B/kernel"] == 0.75
    assert plan.predicted < plan.uniform
    inputs_fn = linen_inputs(model)
    uniform, _, _ = tvwjax.one_shot(inputs_fn, params, pattern, 0.5, [(x,)],
                                    selection=selection)
    planned, m, _ = tvwjax.one_shot(inputs_fn, params, pattern, 0.5, [(x,)],
                                    overrides=plan.overrides, selection=selection)
    kept = sum(int(v.sum()) for v in jax.tree.leaves(m))
    total = sum(v.size for v in jax.tree.leaves(m))
    dense_left = sum(params["params"][n]["kernel"].size for n in ("A", "B", "inner")
                     if plan.sparsities[f"params/{n}/kernel"] == 0.0)
    assert 1 - kept / (total + dense_left) == pytest.approx(plan.sparsity)
    assert measure(planned) < measure(uniform)


def test_sensitivity_without_refit_prunes_only_the_masked_weights(two_branches):
    model, params, x, measure = two_branches
    curves = sens.layer_sensitivity(linen_inputs(model), params, tvwjax.TW(tile=8), [(x,)], measure,
                              levels=(0.5,), refit=False, where=lambda p, _: p.endswith("A/kernel"))
    refit = sens.layer_sensitivity(linen_inputs(model), params, tvwjax.TW(tile=8), [(x,)], measure,
                             levels=(0.5,), where=lambda p, _: p.endswith("A/kernel"))
    assert list(curves) == ["params/A/kernel"]
    assert refit["params/A/kernel"][0.5] < curves["params/A/kernel"][0.5]


def test_sensitivity_errors(two_branches):
    model, params, x, measure = two_branches
    fn = linen_inputs(model)
    with pytest.raises(ConfigError, match="selection must be"):
        sens.layer_sensitivity(fn, params, tvwjax.EW(), [(x,)], measure, selection="hessian")
    with pytest.raises(ConfigError, match="measure must be callable"):
        sens.layer_sensitivity(fn, params, tvwjax.EW(), [(x,)], 0.5)
    with pytest.raises(ConfigError, match=r"levels\[1\]"):
        sens.layer_sensitivity(fn, params, tvwjax.NM(2, 4), [(x,)], measure, levels=(0.0, 0.3))
    with pytest.raises(ConfigError, match="duplicates"):
        sens.layer_sensitivity(fn, params, tvwjax.EW(), [(x,)], measure, levels=(0.5, 0.5))
    with pytest.raises(ConfigError, match="non-empty sequence"):
        sens.layer_sensitivity(fn, params, tvwjax.EW(), [(x,)], measure, levels=0.5)
    with pytest.raises(ConfigError, match="no leaf is selected"):
        sens.layer_sensitivity(fn, params, tvwjax.EW(), [(x,)], measure,
                         where=lambda p, _: False)
    with pytest.raises(ConfigError, match="not finite.*params/A/kernel"):
        sens.layer_sensitivity(fn, params, tvwjax.EW(), [(x,)],
                         lambda p: 0.0 if p is params else float("nan"), levels=(0.5,))


def test_default_levels_follow_the_pattern():
    assert sens._levels(tvwjax.NM(2, 4), None) == [0.5]
    assert sens._levels(tvwjax.EW(), None) == list(sens.DEFAULT_LEVELS)
    assert sens._levels(tvwjax.TW(tile=8), None)[0] == 0.0
    assert sens._levels(tvwjax.TVW(tile=8), None)[0] == 0.5  # dense only when asked for
    assert sens._levels(tvwjax.TVW(tile=8), (0.0, 0.75)) == [0.0, 0.75]


def test_admissible_levels_keep_what_the_pattern_accepts():
    tvw = tvwjax.TVW(tile=8)
    # dense and (0, floor) dropped for TVW; 1.0 and negatives always; duplicates merged
    assert sens.admissible_levels(tvw, [0.75, 0.0, 0.3, 1.0, -0.1, 0.5, 0.75]) == [0.5, 0.75]
    assert sens.admissible_levels(tvwjax.TW(tile=8), [0.5, 0.0, 0.25]) == [0.0, 0.25, 0.5]
    assert sens.admissible_levels(tvwjax.NM(2, 4), [0.0, 0.25, 0.5, 0.75]) == [0.5]
    # float noise from arithmetic on a target lands on the same level
    assert sens.admissible_levels(tvwjax.TW(tile=8), [0.1 + 0.2, 0.3]) == [0.3]
    assert sens.admissible_levels(tvwjax.EW(), np.float32([0.5, 0.25])) == [0.25, 0.5]
    assert sens.admissible_levels(tvw, []) == []


class _OneLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(24, name="only")(x)


def test_anchored_curves_equal_measured_ones_when_the_metric_is_the_layer_error():
    """One linear layer measured on its own calibration inputs: the metric *is* the layer's
    calibration error (up to the constant ``||X W + b||^2``), so the anchored estimate
    must reproduce every measured level."""
    model = _OneLayer()
    x = jax.random.normal(jax.random.key(3), (512, 40)) * jnp.linspace(0.2, 3.0, 40)
    params = model.init(jax.random.key(4), x)
    measure = sens.output_error(lambda p, b: model.apply(p, b), params, [x])
    fn, pattern, levels = linen_inputs(model), tvwjax.TW(tile=8), (0.25, 0.5, 0.625, 0.75)
    full = sens.layer_sensitivity(fn, params, pattern, [(x,)], measure, levels=levels)
    for anchors in [(0.5,), (0.25, 0.75), levels]:
        est = sens.layer_sensitivity(fn, params, pattern, [(x,)], measure, levels=levels,
                                     anchors=anchors)
        for s in levels:
            assert est["params/only/kernel"][s] == pytest.approx(
                full["params/only/kernel"][s], rel=2e-3)


def _counting(measure):
    """``measure`` and the list its calls are appended to."""
    calls = []

    def counted(p):
        calls.append(1)
        return measure(p)

    return counted, calls


def test_anchors_measure_once_per_layer_and_scale_the_layer_error(two_branches):
    model, params, x, measure = two_branches
    counted, calls = _counting(measure)
    fn, pattern, levels = linen_inputs(model), tvwjax.TW(tile=8), (0.0, 0.25, 0.5, 0.75)
    est = sens.layer_sensitivity(fn, params, pattern, [(x,)], counted, levels=levels,
                                 anchors=(0.5,))
    assert len(calls) == 1 + 3  # the dense value, then one anchor per layer
    full = sens.layer_sensitivity(fn, params, pattern, [(x,)], measure, levels=levels)
    stats = tvwjax.calibration.collect(fn, params, [(x,)], gram=True)
    scores = tvwjax.data_aware.data_scores(params, stats, tvwjax.data_aware.wanda)
    for path, row in est.items():
        assert row[0.0] == 0.0
        assert row[0.5] == pytest.approx(full[path][0.5], rel=1e-6)  # measured
        name = path.split("/")[1]
        w = params["params"][name]["kernel"]
        gram = stats[path].gram
        local = {}
        for s in (0.25, 0.5, 0.75):  # an independent layer error of the same masks + refit
            m = tvwjax.masks(params, pattern, s, scores=scores,
                             where=lambda p, _x, _path=path: p == _path)
            new = tvwjax.reconstruct_layer(w, m["params"][name]["kernel"], gram)
            d = np.asarray(w - new, np.float64)
            local[s] = float(np.sum(d * (np.asarray(gram, np.float64) @ d)))
        for s in (0.25, 0.75):
            assert row[s] == pytest.approx(row[0.5] * local[s] / local[0.5], rel=1e-3)
    # the estimate keeps the ranking and the plan of the measured curves
    assert sens.plan_sparsity(est, params, 0.5).sparsities == sens.plan_sparsity(
        full, params, 0.5).sparsities


def test_anchors_interpolate_between_anchors_and_hold_beyond():
    assert sens._interpolate([(0.5, 2.0)], 0.25) == 2.0
    assert sens._interpolate([(0.25, 1.0), (0.75, 3.0)], 0.5) == 2.0
    assert sens._interpolate([(0.25, 1.0), (0.75, 3.0)], 0.875) == 3.0
    assert sens._interpolate([(0.25, 1.0), (0.75, 3.0)], 0.125) == 1.0


def test_a_layer_its_anchors_leave_unchanged_is_measured_at_every_level(two_branches):
    """A kernel whose inputs are all zero has no calibration error to scale: measured."""
    model, params, x, measure = two_branches
    counted, calls = _counting(measure)
    zero_x = jnp.zeros_like(x)
    curves = sens.layer_sensitivity(linen_inputs(model), params, tvwjax.TW(tile=8),
                                    [(zero_x,)], counted, levels=(0.25, 0.5),
                                    anchors=(0.5,), refit=False,
                                    where=lambda p, _: p.endswith("inner/kernel"))
    assert len(calls) == 1 + 2
    assert curves["params/inner/kernel"][0.25] > 0.0


def test_anchor_errors(two_branches):
    model, params, x, measure = two_branches
    fn = linen_inputs(model)
    run = lambda **kw: sens.layer_sensitivity(fn, params, tvwjax.TW(tile=8), [(x,)],  # noqa: E731
                                              measure, levels=(0.0, 0.5, 0.75), **kw)
    with pytest.raises(ConfigError, match=r"anchors\[0\] = 0.625 is not one of"):
        run(anchors=(0.625,))
    with pytest.raises(ConfigError, match=r"anchors\[1\] = 0 is not one of"):
        run(anchors=(0.5, 0.0))
    with pytest.raises(ConfigError, match="anchors must be a non-empty sequence"):
        run(anchors=())
    with pytest.raises(ConfigError, match="anchors must be a non-empty sequence"):
        run(anchors=0.5)
    with pytest.raises(ConfigError, match=r"anchors\[0\]"):
        run(anchors=("0.5",))
    assert run(anchors=(np.float32(0.5),)) == run(anchors=(0.5,))


def test_estimated_levels_use_the_refit_of_evenly_spaced_columns(two_branches):
    """``estimate_columns`` samples the GEMM view's output columns; the estimate is the
    anchor's measured cost times the ratio of the sampled columns' refit errors."""
    model, params, x, measure = two_branches
    fn, pattern = linen_inputs(model), tvwjax.TVW(tile=8)
    levels = (0.5, 0.625, 0.75, 0.875)
    path = "params/inner/kernel"  # (48, 64): 64 output columns, 8 sampled
    est = sens.layer_sensitivity(fn, params, pattern, [(x,)], measure, levels=levels,
                                 anchors=(0.75,), estimate_columns=8,
                                 where=lambda p, _: p == path)[path]
    full = sens.layer_sensitivity(fn, params, pattern, [(x,)], measure, levels=(0.75,),
                                  where=lambda p, _: p == path)[path]
    assert est[0.75] == pytest.approx(full[0.75], rel=1e-6)
    stats = tvwjax.calibration.collect(fn, params, [(x,)], gram=True)
    scores = tvwjax.data_aware.data_scores(params, stats, tvwjax.data_aware.wanda)
    w = np.asarray(params["params"]["inner"]["kernel"])
    g = np.asarray(stats[path].gram, np.float64)
    cols = [0, 9, 18, 27, 36, 45, 54, 63]
    local = {}
    for s in levels:
        m = tvwjax.masks(params, pattern, s, scores=scores, where=lambda p, _: p == path)
        m = np.asarray(m["params"]["inner"]["kernel"])[:, cols]
        new = np.asarray(tvwjax.reconstruct_layer(w[:, cols], m, stats[path].gram),
                         np.float64)
        d = w[:, cols] - new
        local[s] = float(np.sum(d * (g @ d)))
    for s in (0.5, 0.625, 0.875):
        assert est[s] == pytest.approx(est[0.75] * local[s] / local[0.75], rel=1e-3)
    # every column: a different (the full-layer) estimate
    every = sens.layer_sensitivity(fn, params, pattern, [(x,)], measure, levels=levels,
                                   anchors=(0.75,), estimate_columns=None,
                                   where=lambda p, _: p == path)[path]
    assert every[0.75] == est[0.75] and every[0.5] != est[0.5]
    with pytest.raises(ConfigError, match="estimate_columns"):
        sens.layer_sensitivity(fn, params, pattern, [(x,)], measure, levels=levels,
                               anchors=(0.75,), estimate_columns=0)


def test_sensitivity_reuses_given_statistics(two_branches):
    model, params, x, measure = two_branches
    fn, pattern = linen_inputs(model), tvwjax.TW(tile=8)
    stats = tvwjax.calibration.collect(fn, params, [(x,)], gram=True)
    kw = dict(levels=(0.25, 0.5, 0.75), anchors=(0.5,))
    want = sens.layer_sensitivity(fn, params, pattern, [(x,)], measure, **kw)
    assert sens.layer_sensitivity(fn, params, pattern, [(x,)], measure, stats=stats,
                                  **kw) == want
    with pytest.raises(ConfigError, match="stats has no entry for params/A/kernel"):
        sens.layer_sensitivity(fn, params, pattern, [(x,)], measure, stats={
            k: v for k, v in stats.items() if k != "params/A/kernel"}, **kw)
    no_gram = tvwjax.calibration.collect(fn, params, [(x,)], gram=False)
    with pytest.raises(ConfigError, match=r"stats\['params/.*'\] has no Gram matrix"):
        sens.layer_sensitivity(fn, params, pattern, [(x,)], measure, stats=no_gram, **kw)
    with pytest.raises(ConfigError, match="stats must be a mapping"):
        sens.layer_sensitivity(fn, params, pattern, [(x,)], measure, stats=3, **kw)


def test_an_anchor_where_the_metric_improved_estimates_no_negative_costs(two_branches):
    model, params, x, measure = two_branches
    est = sens.layer_sensitivity(linen_inputs(model), params, tvwjax.TW(tile=8), [(x,)],
                                 lambda p: -measure(p), levels=(0.25, 0.5, 0.75),
                                 anchors=(0.5,))
    for row in est.values():
        assert row[0.5] < 0.0  # measured as it is
        assert row[0.25] == 0.0 and row[0.75] == 0.0
