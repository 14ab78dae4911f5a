"""Calibration statistics equal a direct computation (Linen and NNX); data-aware scores."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tvwjax
from tvwjax import calibration as cal
from tvwjax.data_aware import data_scores, obs_saliency, wanda
from tvwjax.errors import ConfigError, ShapeError


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(8, name="a")(x))
        h2 = nn.Dense(8, name="a2")(h)
        return nn.Dense(3, name="b")(jnp.tanh(h2) + h)


class NMLP(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(6, 8, rngs=rngs)
        self.layers = nnx.List([nnx.Linear(8, 5, rngs=rngs)])

    def __call__(self, x):
        return self.layers[0](nnx.relu(self.a(x)))


def _rng_batches(n=3, shape=(4, 5, 6), seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(shape).astype(np.float32) * rng.uniform(0.1, 4, shape[-1])
          .astype(np.float32) for _ in range(n)]
    masks = [rng.random(shape[:-1]) > 0.3 for _ in range(n)]
    return xs, masks


def _direct(rows_list):
    x = np.concatenate(rows_list, 0).astype(np.float64)
    return x.shape[0], (x * x).sum(0), x.T @ x


def test_linen_stats_equal_direct():
    xs, ms = _rng_batches()
    model = MLP()
    v = model.init(jax.random.key(0), xs[0])
    p = v["params"]
    batches = [(x, m) for x, m in zip(xs, ms, strict=True)]

    def apply_only_x(vars_, x, m):
        return model.apply(vars_, x)

    stats = cal.collect(cal.linen_inputs(model), v, [(x,) for x in xs], gram=True)
    # Direct: recompute each layer's inputs by hand.
    rows_a, rows_a2, rows_b = [], [], []
    for x in xs:
        xa = x.reshape(-1, 6)
        h = jax.nn.gelu(xa @ p["a"]["kernel"] + p["a"]["bias"], approximate=True)
        h2 = h @ p["a2"]["kernel"] + p["a2"]["bias"]
        rows_a.append(xa)
        rows_a2.append(np.asarray(h))
        rows_b.append(np.asarray(jnp.tanh(h2) + h))
    for key, rows in (("params/a/kernel", rows_a), ("params/a2/kernel", rows_a2),
                      ("params/b/kernel", rows_b)):
        n, ss, g = _direct(rows)
        s = stats[key]
        assert float(s.count) == n
        np.testing.assert_allclose(s.sumsq, ss, rtol=1e-5)
        np.testing.assert_allclose(s.gram, g, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(cal.feature_rms(s), np.sqrt(ss / n), rtol=1e-5)
    assert sorted(stats) == ["params/a/kernel", "params/a2/kernel", "params/b/kernel"]
    del batches, apply_only_x


def test_row_mask_excludes_padding_rows():
    xs, ms = _rng_batches()
    model = nn.Dense(4)
    v = model.init(jax.random.key(1), xs[0])
    batches = [(x, m) for x, m in zip(xs, ms, strict=True)]
    inputs_fn = cal.linen_inputs(model)

    def fn(vars_, batch):  # the mask is not a model argument: drop it
        return inputs_fn(vars_, (batch[0],))

    stats = cal.collect(fn, v, batches, row_mask=lambda b: b[1])
    s = stats["params/kernel"]
    rows = [x[m] for x, m in zip(xs, ms, strict=True)]
    n, ss, g = _direct(rows)
    assert float(s.count) == n
    np.testing.assert_allclose(s.sumsq, ss, rtol=1e-5)
    np.testing.assert_allclose(s.gram, g, rtol=1e-5, atol=1e-4)


def test_row_mask_shape_error_names_layer():
    xs, _ = _rng_batches(1)
    model = nn.Dense(4)
    v = model.init(jax.random.key(1), xs[0])
    with pytest.raises(ShapeError, match="params/kernel"):
        cal.collect(cal.linen_inputs(model), v, [(xs[0],)],
                    row_mask=lambda b: jnp.ones((3, 3)))


def test_nnx_stats_equal_direct_and_model_untouched():
    xs, _ = _rng_batches(2)
    model = NMLP(nnx.Rngs(0))
    graphdef, st = nnx.split(model)
    stats = cal.collect(cal.nnx_inputs(graphdef), st, [(x,) for x in xs])
    assert type(model.a) is nnx.Linear  # the caller's model is not modified
    assert sorted(stats) == ["a/kernel", "layers/0/kernel"]
    ra = [x.reshape(-1, 6) for x in xs]
    rh = [np.asarray(nnx.relu(model.a(jnp.asarray(r)))) for r in ra]
    for key, rows in (("a/kernel", ra), ("layers/0/kernel", rh)):
        n, ss, g = _direct(rows)
        np.testing.assert_allclose(stats[key].sumsq, ss, rtol=1e-5)
        np.testing.assert_allclose(stats[key].gram, g, rtol=1e-5, atol=1e-4)
        assert float(stats[key].count) == n
    # Paths line up with tvwjax.masks on the NNX state.
    state = nnx.state(model, nnx.Param)
    sc = data_scores(state, stats, wanda)
    mk = tvwjax.masks(state, tvwjax.EW(), 0.5, scores=sc)
    assert mk["a"]["kernel"] is not None


def test_streaming_equals_one_big_batch():
    xs, _ = _rng_batches(4, shape=(2, 3, 6))
    model = MLP()
    v = model.init(jax.random.key(0), xs[0])
    many = cal.collect(cal.linen_inputs(model), v, [(x,) for x in xs])
    one = cal.collect(cal.linen_inputs(model), v, [(np.concatenate(xs, 0),)])
    for k in many:
        np.testing.assert_allclose(many[k].gram, one[k].gram, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(many[k].sumsq, one[k].sumsq, rtol=1e-5)


def test_layer_groups_shared_inputs():
    class QKV(nn.Module):
        @nn.compact
        def __call__(self, x):
            q, k, v = (nn.Dense(4, name=n)(x) for n in ("q", "k", "v"))
            return nn.Dense(4, name="o")(q * k + v)

    m = QKV()
    x = jnp.ones((2, 4))
    v = m.init(jax.random.key(0), x)
    groups = cal.layer_groups(cal.linen_inputs(m), v, (x,))
    assert groups == [["params/q/kernel", "params/k/kernel", "params/v/kernel"],
                      ["params/o/kernel"]]


def test_collect_errors():
    model = nn.Dense(4)
    v = model.init(jax.random.key(1), jnp.ones((2, 3)))
    with pytest.raises(ConfigError, match="empty"):
        cal.collect(cal.linen_inputs(model), v, [])
    with pytest.raises(ConfigError, match="nope"):
        cal.collect(cal.linen_inputs(model), v, [(jnp.ones((2, 3)),)], paths=["nope"])


def test_wanda_scores_and_masks():
    xs, _ = _rng_batches(2)
    model = MLP()
    v = model.init(jax.random.key(0), xs[0])
    stats = cal.collect(cal.linen_inputs(model), v, [(x,) for x in xs])
    sc = data_scores(v, stats, wanda)
    w = v["params"]["a"]["kernel"]
    norm = np.sqrt(np.sum(np.concatenate([x.reshape(-1, 6) for x in xs]) ** 2, 0))
    np.testing.assert_allclose(sc["params"]["a"]["kernel"], np.abs(w) * norm[:, None],
                               rtol=1e-5)
    # biases get |w|; masks accept the tree for every pattern
    np.testing.assert_allclose(sc["params"]["a"]["bias"], np.abs(v["params"]["a"]["bias"]))
    for pat, s in ((tvwjax.EW(), 0.5), (tvwjax.TW(tile=4), 0.5), (tvwjax.BW(4, 4), 0.5)):
        mk = tvwjax.masks(v, pat, s, scores=sc)
        tvwjax.check(np.asarray(mk["params"]["a"]["kernel"]), pat, s)
    # a user function and the OBS saliency
    sc2 = data_scores(v, stats, lambda w2, st: jnp.abs(w2) * cal.feature_rms(st)[:, None])
    assert sc2["params"]["b"]["kernel"].shape == v["params"]["b"]["kernel"].shape
    o = obs_saliency(w, stats["params/a/kernel"])
    assert o.shape == w.shape and bool(jnp.all(o >= 0))
    assert wanda(w, stats["params/a/kernel"]).shape == w.shape


def test_data_scores_missing_stats_names_path():
    model = MLP()
    v = model.init(jax.random.key(0), jnp.ones((2, 6)))
    with pytest.raises(ConfigError, match="params/a/kernel: no calibration"):
        data_scores(v, {}, wanda)
    stats = cal.collect(cal.linen_inputs(model), v, [(jnp.ones((2, 6)),)])
    with pytest.raises(ShapeError, match="score function"):
        data_scores(v, stats, lambda w2, st: jnp.ones((1, 1)))
