"""One-shot reconstruction: exact least squares, never worse than masking, pattern kept."""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tvwjax
from tvwjax import calibration as cal
from tvwjax.errors import ConfigError, ShapeError, TreeMismatchError
from tvwjax.reconstruction import layer_error, one_shot, reconstruct, reconstruct_layer

PATTERNS = [
    (tvwjax.EW(), 0.5), (tvwjax.EW(), 0.75), (tvwjax.NM(2, 4), 0.5),
    (tvwjax.TW(tile=8), 0.5), (tvwjax.TW(tile=8), 0.75), (tvwjax.TVW(tile=8), 0.75),
    (tvwjax.BW(8, 8), 0.5), (tvwjax.VW(8), 0.5),
]


def _problem(k=32, n=24, m=200, seed=0, outlier=True):
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.2, 2.0, k)
    if outlier:
        scale[:3] *= 15.0  # a few outlier features, as in pretrained transformers
    x = (rng.standard_normal((m, k)) * scale).astype(np.float32)
    w = rng.standard_normal((k, n)).astype(np.float32)
    return x, w


def _lstsq(x, w, mask):
    x64, ref = x.astype(np.float64), np.zeros(w.shape)
    for j in range(w.shape[1]):
        s = np.flatnonzero(mask[:, j])
        if s.size:
            ref[s, j] = np.linalg.lstsq(x64[:, s], x64 @ w[:, j], rcond=None)[0]
    return ref


@pytest.mark.parametrize("pattern,s", PATTERNS, ids=lambda v: getattr(v, "name", str(v)))
def test_equals_numpy_lstsq(pattern, s):
    x, w = _problem()
    mask = np.asarray(pattern.mask(jnp.abs(w), s))
    new = np.asarray(reconstruct_layer(w, mask, x.T @ x, damping=0.0))
    ref = _lstsq(x, w, mask)
    np.testing.assert_allclose(new, ref, rtol=1e-3, atol=1e-4)
    tvwjax.check(mask, pattern, s)
    tvwjax.check(new != 0, pattern, None)
    assert np.all(new[~mask] == 0.0)


@pytest.mark.parametrize("pattern,s", PATTERNS, ids=lambda v: getattr(v, "name", str(v)))
def test_damped_never_worse_and_keeps_pattern(pattern, s):
    x, w = _problem(seed=1)
    g = x.T @ x
    mask = np.asarray(pattern.mask(jnp.abs(w), s))
    plain = np.where(mask, w, 0)
    e0 = float(layer_error(w, plain, g))
    for damping in (1e-3, 0.01, 0.1, 10.0):
        new = np.asarray(reconstruct_layer(w, mask, g, damping=damping))
        assert float(layer_error(w, new, g)) <= e0 * (1 + 1e-6)
        assert np.all(new[~mask] == 0.0)
        tvwjax.check(mask | (new != 0), pattern, s)  # the support stays inside the pattern
    # a real improvement on these data
    assert float(layer_error(w, reconstruct_layer(w, mask, g), g)) < 0.99 * e0


@pytest.mark.parametrize("pattern,s", [(tvwjax.EW(), 0.5), (tvwjax.NM(2, 4), 0.5),
                                       (tvwjax.TVW(tile=8), 0.75)],
                         ids=lambda v: getattr(v, "name", str(v)))
def test_sequential_obs_sweep(pattern, s):
    """SparseGPT-style sweep: pattern kept, error below masking, close to the exact refit."""
    x, w = _problem(k=40, n=24, seed=5)
    g = x.T @ x
    mask = np.asarray(pattern.mask(jnp.abs(w) * np.sqrt((x ** 2).sum(0))[:, None], s))
    e0 = float(layer_error(w, np.where(mask, w, 0), g))
    seq = np.asarray(reconstruct_layer(w, mask, g, method="sweep"))
    ex = np.asarray(reconstruct_layer(w, mask, g, method="exact"))
    e_seq, e_ex = float(layer_error(w, seq, g)), float(layer_error(w, ex, g))
    assert np.all(seq[~mask] == 0.0)
    tvwjax.check(mask | (seq != 0), pattern, s)
    assert e_ex <= e_seq * (1 + 1e-5) and e_seq < e0
    # with a cross target the sweep prunes the unconstrained optimum
    xref = x + 0.2 * np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    c = x.T @ xref
    seq_c = reconstruct_layer(w, mask, g, cross=c, method="sweep")
    plain = np.where(mask, w, 0)

    def err(v):
        return float(np.sum((xref @ w - x @ np.asarray(v)) ** 2))

    assert err(seq_c) <= err(plain) * (1 + 1e-5)


@settings(max_examples=25, deadline=None)
@given(k=st.sampled_from([8, 16]), n=st.sampled_from([4, 8]), m=st.integers(1, 40),
       seed=st.integers(0, 10_000), density=st.floats(0.05, 0.95))
def test_property_never_increases_error(k, n, m, seed, density):
    """Random masks, rank-deficient Gram matrices included (m < k)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k)).astype(np.float32) * rng.uniform(0.01, 10, k)
    w = rng.standard_normal((k, n)).astype(np.float32)
    mask = rng.random((k, n)) < density
    g = (x.T @ x).astype(np.float32)
    new = np.asarray(reconstruct_layer(w, mask, g, damping=0.01,
                                       method="sweep" if seed % 2 else "exact"))
    e0 = float(layer_error(w, np.where(mask, w, 0), g))
    e1 = float(layer_error(w, new, g))
    assert e1 <= e0 + 1e-5 * (e0 + float(layer_error(w, np.zeros_like(w), g))) + 1e-6
    assert np.all(new[~mask] == 0.0)
    assert np.all(np.isfinite(new))


def test_tw_solves_are_shared_per_tile():
    """TW: every column of a tile gets the same least-squares system (one solve per tile)."""
    from tvwjax.reconstruction import _groups
    x, w = _problem(k=32, n=32)
    pat = tvwjax.TW(tile=8)
    mask = np.asarray(pat.mask(jnp.abs(w), 0.5))
    groups = _groups(mask, include_full=False)
    assert len(groups) <= 4
    assert all(len(c) == 8 for _, c in groups)


def test_cross_target_matches_lstsq():
    """cross = X^T X_ref fits X (mask*w') to X_ref w."""
    x, w = _problem(seed=3)
    rng = np.random.default_rng(9)
    xref = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
    mask = np.asarray(tvwjax.TW(tile=8).mask(jnp.abs(w), 0.5))
    new = np.asarray(reconstruct_layer(w, mask, x.T @ x, cross=x.T @ xref, damping=0.0))
    x64 = x.astype(np.float64)
    for j in range(w.shape[1]):
        s = np.flatnonzero(mask[:, j])
        if s.size:
            ref = np.linalg.lstsq(x64[:, s], xref.astype(np.float64) @ w[:, j], rcond=None)[0]
            np.testing.assert_allclose(new[s, j], ref, rtol=1e-3, atol=1e-4)


def test_errors():
    x, w = _problem(k=8, n=4)
    g = x.T @ x
    with pytest.raises(ShapeError, match="gram"):
        reconstruct_layer(w, np.ones_like(w, bool), g[:4, :4])
    with pytest.raises(ShapeError, match="mask"):
        reconstruct_layer(w, np.ones((3, 3), bool), g)
    with pytest.raises(ConfigError, match="damping"):
        reconstruct_layer(w, np.ones_like(w, bool), g, damping=-1.0)
    with pytest.raises(ConfigError, match="method"):
        reconstruct_layer(w, np.ones_like(w, bool), g, method="fast")


class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        q, k = nn.Dense(16, name="q")(x), nn.Dense(16, name="k")(x)
        h = nn.gelu(q) * jnp.tanh(k)
        return nn.Dense(8, name="out")(h)


def _net_setup():
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.2, 2, 16).astype(np.float32)
    scale[:2] *= 10
    xs = [(rng.standard_normal((6, 10, 16)) * scale).astype(np.float32) for _ in range(4)]
    model = Net()
    v = model.init(jax.random.key(0), xs[0])
    return model, v, [(x,) for x in xs]


@pytest.mark.parametrize("sequential,match,group_by", [
    (True, "self", None), (False, "self", None), (True, "dense", None),
    (True, "self", lambda p: "all")])
def test_model_reconstruct_sequential(sequential, match, group_by):
    model, v, batches = _net_setup()
    inputs_fn = cal.linen_inputs(model)
    pat = tvwjax.TW(tile=4)
    mk = tvwjax.masks(v, pat, 0.5)
    new, report = reconstruct(inputs_fn, v, mk, batches, sequential=sequential, match=match,
                              group_by=group_by)
    assert set(report) == {"params/q/kernel", "params/k/kernel", "params/out/kernel"}
    for p, r in report.items():
        assert r["reconstructed"] <= r["masked"] * (1 + 1e-5), p
    for name in ("q", "k", "out"):
        kern = np.asarray(new["params"][name]["kernel"])
        m = np.asarray(mk["params"][name]["kernel"])
        assert np.all(kern[~m] == 0.0)
        tvwjax.check(m, pat, 0.5)
    # the pruned model is closer to the dense one than the plainly masked one
    xs = np.concatenate([b[0] for b in batches])
    dense = model.apply(v, xs)
    e_plain = float(jnp.mean((model.apply(tvwjax.apply_masks(v, mk), xs) - dense) ** 2))
    e_rec = float(jnp.mean((model.apply(new, xs) - dense) ** 2))
    assert e_rec < e_plain


def test_one_shot_and_errors():
    model, v, batches = _net_setup()
    inputs_fn = cal.linen_inputs(model)
    new, mk, report = one_shot(inputs_fn, v, tvwjax.TVW(tile=4), 0.75, batches)
    assert report and all(r["reconstructed"] <= r["masked"] + 1e-6 for r in report.values())
    tvwjax.check_tree(mk, tvwjax.TVW(tile=4), 0.75)
    p2, _, rep2 = one_shot(inputs_fn, v, tvwjax.EW(), 0.5, batches, score="magnitude",
                           refit=False)
    assert rep2 == {}
    with pytest.raises(ConfigError, match="score"):
        one_shot(inputs_fn, v, tvwjax.EW(), 0.5, batches, score="nope")
    # the same errors whatever the type of a bad score (no array comparison)
    with pytest.raises(ConfigError, match="score must be 'magnitude', 'activation' or a"):
        one_shot(inputs_fn, v, tvwjax.EW(), 0.5, batches, score=np.ones(3))
    with pytest.raises(ConfigError, match="applies to selection='score'"):
        one_shot(inputs_fn, v, tvwjax.EW(), 0.5, batches, score=jnp.ones(3), selection="obs")
    with pytest.raises(ConfigError, match="match"):
        reconstruct(inputs_fn, v, mk, batches, match="x")
    with pytest.raises(TreeMismatchError):
        reconstruct(inputs_fn, v, {"params": {}}, batches)
    # a masked layer the inputs function never captures
    only_q = cal.linen_inputs(model, where=lambda p, leaf: p.endswith("q/kernel"))
    with pytest.raises(ConfigError, match="out/kernel"):
        reconstruct(only_q, v, mk, batches)


def test_one_shot_reuses_given_statistics():
    """Statistics collected once (with Gram matrices) serve both selections and give the
    same result as one_shot collecting its own; wrong ones are named."""
    model, v, batches = _net_setup()
    inputs_fn = cal.linen_inputs(model)
    stats = cal.collect(inputs_fn, v, batches, gram=True)
    for selection, pattern in (("score", tvwjax.TVW(tile=4)),
                               ("obs", tvwjax.TW(tile=4, column_share=0.0))):
        want, want_m, _ = one_shot(inputs_fn, v, pattern, 0.75, batches, selection=selection)
        got, got_m, _ = one_shot(inputs_fn, v, pattern, 0.75, batches, selection=selection,
                                 stats=stats)
        for a, b in zip(jax.tree.leaves(want_m), jax.tree.leaves(got_m), strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    no_gram = cal.collect(inputs_fn, v, batches, gram=False)
    with pytest.raises(ConfigError, match="no Gram matrix"):
        one_shot(inputs_fn, v, tvwjax.EW(), 0.5, batches, selection="obs", stats=no_gram)
    with pytest.raises(ConfigError, match="one_shot: stats must be a mapping"):
        one_shot(inputs_fn, v, tvwjax.EW(), 0.5, batches, stats=[stats])
    with pytest.raises(ConfigError, match="no calibration statistics"):
        one_shot(inputs_fn, v, tvwjax.EW(), 0.5, batches, stats={})


@pytest.mark.parametrize("sequential", [True, False])
def test_reconstruct_uses_the_dense_statistics_where_a_pass_would_collect_them(
        sequential, monkeypatch):
    """Given dense statistics, the sequential refit skips the first group's pass (nothing is
    refit before it) and the non-sequential refit skips its one pass; the result is the
    same. Statistics without Gram matrices are not used."""
    from tvwjax import reconstruction

    model, v, batches = _net_setup()
    inputs_fn = cal.linen_inputs(model)
    mk = tvwjax.masks(v, tvwjax.TW(tile=4), 0.5)
    calls = []
    real = reconstruction.collect
    monkeypatch.setattr(reconstruction, "collect",
                        lambda *a, **k: calls.append(k.get("paths")) or real(*a, **k))
    want, _ = reconstruct(inputs_fn, v, mk, batches, sequential=sequential)
    n_passes = len(calls)
    assert n_passes == (2 if sequential else 1)  # groups (q, k) and (out,)
    calls.clear()
    dense = real(inputs_fn, v, batches, gram=True)
    got, _ = reconstruct(inputs_fn, v, mk, batches, sequential=sequential, stats=dense)
    assert len(calls) == n_passes - 1
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    calls.clear()
    reconstruct(inputs_fn, v, mk, batches, sequential=sequential,
                stats=real(inputs_fn, v, batches, gram=False))
    assert len(calls) == n_passes
    with pytest.raises(ConfigError, match="reconstruct: stats must be a mapping"):
        reconstruct(inputs_fn, v, mk, batches, stats=[dense])


def test_nnx_one_shot():
    from flax import nnx

    class M(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(16, 16, rngs=rngs)
            self.b = nnx.Linear(16, 8, rngs=rngs)

        def __call__(self, x):
            return self.b(nnx.gelu(self.a(x)))

    model = M(nnx.Rngs(0))
    rng = np.random.default_rng(0)
    xs = [(rng.standard_normal((32, 16)) * np.linspace(0.1, 5, 16)).astype(np.float32)
          for _ in range(3)]
    graphdef, state = nnx.split(model)
    new_state, mk, report = one_shot(cal.nnx_inputs(graphdef), state, tvwjax.TW(tile=4), 0.5,
                                     [(x,) for x in xs], score="magnitude")
    assert set(report) == {"a/kernel", "b/kernel"}
    # guaranteed per layer; the model-level gain below holds here but is not a theorem
    assert all(r["reconstructed"] <= r["masked"] for r in report.values())
    pruned = nnx.merge(graphdef, new_state)
    x = np.concatenate(xs)
    masked = nnx.merge(graphdef, tvwjax.apply_masks(state, mk))
    e_rec = float(jnp.mean((pruned(x) - model(x)) ** 2))
    e_plain = float(jnp.mean((masked(x) - model(x)) ** 2))
    assert e_rec < e_plain
    k = np.asarray(pruned.a.kernel[...])
    assert np.all(k[~np.asarray(mk["a"]["kernel"])] == 0.0)


def test_few_calibration_rows_per_input_warn_and_the_report_counts_them():
    """The refit needs many more calibration rows than inputs; below MIN_ROWS_PER_INPUT per
    input feature reconstruct says so, naming the worst layer, and the report carries the
    counts either way."""
    from tvwjax.calibration import linen_inputs
    from tvwjax.errors import CalibrationWarning
    from tvwjax.reconstruction import MIN_ROWS_PER_INPUT

    class Two(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(8, name="wide")(nn.relu(nn.Dense(64, name="narrow")(x)))

    model = Two()
    k = 16
    few = jax.random.normal(jax.random.key(0), (MIN_ROWS_PER_INPUT * k, k))
    variables = model.init(jax.random.key(1), few)
    pat = tvwjax.TW(tile=4, column_share=0.0)
    # narrow: 128 rows for 16 inputs (8 per input: enough); wide: 128 rows for 64 inputs.
    with pytest.warns(CalibrationWarning, match=r"1 of 2 layers .*'params/wide/kernel', "
                                                 r"128 rows for 64 inputs, 2\.0 per input"):
        _, _, report = tvwjax.one_shot(linen_inputs(model), variables, pat, 0.5, [(few,)])
    assert report["params/narrow/kernel"]["rows"] == 128.0
    assert report["params/narrow/kernel"]["inputs"] == k
    assert report["params/wide/kernel"]["inputs"] == 64
    # the warning points at the caller's line, whichever entry point ran the refit
    masks_ = tvwjax.masks(variables, pat, 0.5)
    for call in (lambda: tvwjax.one_shot(linen_inputs(model), variables, pat, 0.5, [(few,)]),
                 lambda: tvwjax.one_shot(linen_inputs(model), variables, pat, 0.5, [(few,)],
                                         sequential_masks=True),
                 lambda: tvwjax.reconstruct(linen_inputs(model), variables, masks_, [(few,)])):
        with pytest.warns(CalibrationWarning) as caught:
            call()
        assert [w.filename for w in caught] == [__file__]
    many = jax.random.normal(jax.random.key(2), (MIN_ROWS_PER_INPUT * 64, k))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        tvwjax.one_shot(linen_inputs(model), variables, pat, 0.5, [(many,)])


@pytest.mark.parametrize("selection,pattern", [("score", tvwjax.TVW(tile=4)),
                                               ("obs", tvwjax.TW(tile=4, column_share=0.0))])
def test_sequential_masks_choose_each_group_on_the_pruned_models_inputs(selection, pattern):
    """sequential_masks=True: the first group's masks come from the dense model's inputs,
    the next group's from the inputs of the model whose first group is pruned and refit
    (checked against masks chosen independently on those inputs)."""
    from tvwjax.data_aware import data_scores, wanda
    from tvwjax.obs import obs_masks

    model, v, batches = _net_setup()
    inputs_fn = cal.linen_inputs(model)
    new, mk, report = one_shot(inputs_fn, v, pattern, 0.75, batches, selection=selection,
                               sequential_masks=True)
    tvwjax.check_tree(mk, pattern, 0.75)
    assert set(report) == {"params/q/kernel", "params/k/kernel", "params/out/kernel"}
    _, dense_mk, _ = one_shot(inputs_fn, v, pattern, 0.75, batches, selection=selection)
    for name in ("q", "k"):
        np.testing.assert_array_equal(mk["params"][name]["kernel"],
                                      dense_mk["params"][name]["kernel"])
    # the inputs of `out` once q and k are pruned and refit (out's refit changes nothing
    # upstream of it)
    partial = jax.tree.map(lambda a: a, v)
    for name in ("q", "k"):
        partial["params"][name]["kernel"] = new["params"][name]["kernel"]
    st = cal.collect(inputs_fn, partial, batches, gram=True)

    def only_out(path, leaf):
        return path.endswith("out/kernel")

    if selection == "obs":
        want = obs_masks(v, st, pattern, 0.75, where=only_out)
    else:
        want = tvwjax.masks(v, pattern, 0.75, scores=data_scores(v, st, wanda, where=only_out),
                            where=only_out)
    got = np.asarray(mk["params"]["out"]["kernel"])
    np.testing.assert_array_equal(got, want["params"]["out"]["kernel"])
    assert (got != np.asarray(dense_mk["params"]["out"]["kernel"])).any()
    kern = np.asarray(new["params"]["out"]["kernel"])
    assert np.all(kern[~got] == 0.0)


def test_sequential_masks_errors_name_what_is_missing():
    model, v, batches = _net_setup()
    inputs_fn = cal.linen_inputs(model)
    tw = tvwjax.TW(tile=4)
    for kw, what in [(dict(scope="global"), "scope='global'"), (dict(refit=False), "refit=False"),
                     (dict(sequential=False), "sequential=False"),
                     (dict(match="dense"), "match='dense'"),
                     (dict(score="magnitude"), "score='magnitude'")]:
        with pytest.raises(ConfigError, match=r"sequential_masks=True .* got " + what):
            one_shot(inputs_fn, v, tw, 0.5, batches, sequential_masks=True, **kw)
    for bad in (1, "yes", None):
        with pytest.raises(ConfigError, match="one_shot: sequential_masks must be True or "
                                              "False"):
            one_shot(inputs_fn, v, tw, 0.5, batches, sequential_masks=bad)
    # NumPy booleans are booleans
    _, mk, _ = one_shot(inputs_fn, v, tw, 0.5, batches, sequential_masks=np.bool_(True))
    tvwjax.check_tree(mk, tw, 0.5)


def test_sequential_masks_follow_per_layer_overrides():
    """Per-layer sparsities (a plan's overrides, None = left dense) hold group by group."""
    model, v, batches = _net_setup()
    inputs_fn = cal.linen_inputs(model)
    tw = tvwjax.TW(tile=4, column_share=0.0)
    over = {"params/q/kernel": 0.5, "params/k/kernel": None, "params/out/kernel": 0.25}
    for selection in ("score", "obs"):
        new, mk, report = one_shot(inputs_fn, v, tw, 0.75, batches, selection=selection,
                                   overrides=over, sequential_masks=True)
        assert mk["params"]["k"]["kernel"] is None and "params/k/kernel" not in report
        np.testing.assert_array_equal(new["params"]["k"]["kernel"], v["params"]["k"]["kernel"])
        tvwjax.check(mk["params"]["q"]["kernel"], tw, 0.5)
        tvwjax.check(mk["params"]["out"]["kernel"], tw, 0.25)
