"""Flax layers: SparseDense / SparseLinear equal dense layers with masked weights, dense or
compressed, under jit; conversion of params + masks; fine-tuning the compressed values."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import tvwjax
from tvwjax.errors import PatternViolationError, ShapeError, TreeMismatchError
from tvwjax.formats import CompressedWeight, TileVectorWise, TileWise
from tvwjax.nn import SparseDense, SparseLinear, compress_model, compress_params
from tvwjax.patterns import TVW, TW


class SparseMLP(nn.Module):
    dtype: object = None

    @nn.compact
    def __call__(self, x):
        h = nn.relu(SparseDense(96, dtype=self.dtype)(x))
        return SparseDense(40, use_bias=False, dtype=self.dtype)(h)


class DenseMLP(nn.Module):
    dtype: object = None

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(96, dtype=self.dtype)(x))
        return nn.Dense(40, use_bias=False, dtype=self.dtype)(h)


X = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 64)), jnp.float32)


@pytest.mark.parametrize("pattern", [TW(tile=32), TVW(tile=32)], ids=["tw", "tvw"])
@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
def test_linen_matches_dense_with_masked_weights(pattern, dtype):
    sparse, dense = SparseMLP(dtype), DenseMLP(dtype)
    params = dense.init(jax.random.key(0), X)["params"]
    # Same param tree layout: SparseDense is a drop-in for nn.Dense.
    sp_params = sparse.init(jax.random.key(0), X)["params"]
    assert jax.tree.map(jnp.shape, sp_params) == {
        k.replace("Dense", "SparseDense"): v for k, v in jax.tree.map(jnp.shape, params).items()}
    params = {k.replace("Dense", "SparseDense"): v for k, v in params.items()}
    masks = tvwjax.masks(params, pattern, 0.75)
    masked = tvwjax.apply_masks(params, masks)
    ref = dense.apply({"params": {k.replace("SparseDense", "Dense"): v
                                  for k, v in masked.items()}}, X)
    np.testing.assert_array_equal(np.asarray(sparse.apply({"params": masked}, X)),
                                  np.asarray(ref))
    cparams = compress_params(params, masks, pattern)
    kinds = {type(v["kernel"]) for v in cparams.values()}
    assert kinds == {TileVectorWise if isinstance(pattern, TVW) else TileWise}
    y = jax.jit(sparse.apply)({"params": cparams}, X)
    tol = 1e-5 if dtype is None else 3e-2
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref, np.float32),
                               atol=tol * 10, rtol=tol)
    assert y.dtype == ref.dtype
    if isinstance(pattern, TVW):  # the CPU execution form: TVW decoded once to its TW part
        cpu = compress_params(params, masks, pattern, decode_nm=True)
        assert {type(v["kernel"]) for v in cpu.values()} == {TileWise}
        np.testing.assert_allclose(np.asarray(jax.jit(sparse.apply)({"params": cpu}, X)),
                                   np.asarray(y), rtol=1e-6, atol=1e-6)


def test_linen_fine_tune_compressed_values():
    model = SparseMLP()
    params = model.init(jax.random.key(1), X)["params"]
    cparams = compress_params(params, tvwjax.masks(params, TW(tile=32), 0.75), TW(tile=32))
    opt = optax.adam(1e-2)
    state = opt.init(cparams)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(lambda p: jnp.mean(model.apply({"params": p}, X) ** 2))(p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    losses = []
    for _ in range(5):
        cparams, state, loss = step(cparams, state)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert isinstance(cparams["SparseDense_0"]["kernel"], TileWise)


class NNXNet(nnx.Module):
    def __init__(self, rngs, linear=SparseLinear):
        self.a = linear(64, 96, rngs=rngs)
        self.b = linear(96, 40, use_bias=False, rngs=rngs)

    def __call__(self, x):
        return self.b(jax.nn.relu(self.a(x)))


@pytest.mark.parametrize("pattern", [TW(tile=32), TVW(tile=32)], ids=["tw", "tvw"])
def test_nnx_matches_dense_with_masked_weights(pattern):
    sparse = NNXNet(nnx.Rngs(0))
    dense = NNXNet(nnx.Rngs(0), linear=nnx.Linear)
    state = nnx.state(sparse, nnx.Param)
    masks = tvwjax.masks(state, pattern, 0.75)
    nnx.update(dense, tvwjax.apply_masks(nnx.state(dense, nnx.Param), masks))
    nnx.update(sparse, tvwjax.apply_masks(state, masks))
    ref = dense(X)
    np.testing.assert_array_equal(np.asarray(sparse(X)), np.asarray(ref))
    compress_model(sparse, masks, pattern)
    assert isinstance(sparse.a.kernel.get_value(), CompressedWeight)
    y = nnx.jit(lambda m, x: m(x))(sparse, X)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-4, rtol=1e-5)


def test_conversion_errors_name_the_leaf():
    params = SparseMLP().init(jax.random.key(0), X)["params"]
    masks = tvwjax.masks(params, TW(tile=32), 0.75)
    bad = jax.tree.map(lambda m: m, masks, is_leaf=lambda v: v is None)
    k = np.asarray(bad["SparseDense_0"]["kernel"]).copy()
    r, c = np.argwhere(k)[0]
    k[r, c] = False
    bad["SparseDense_0"]["kernel"] = k
    with pytest.raises(PatternViolationError, match="SparseDense_0/kernel: mask"):
        compress_params(params, bad, TW(tile=32))
    with pytest.raises(TreeMismatchError, match="mask_tree"):
        compress_params(params, {"SparseDense_0": masks["SparseDense_0"]}, TW(tile=32))


def test_layer_checks_kernel_against_features():
    model = SparseMLP()
    params = model.init(jax.random.key(0), X)["params"]
    cparams = compress_params(params, tvwjax.masks(params, TW(tile=32), 0.75), TW(tile=32))
    swapped = {"SparseDense_0": dict(cparams["SparseDense_0"],
                                     kernel=cparams["SparseDense_1"]["kernel"]),
               "SparseDense_1": cparams["SparseDense_1"]}
    with pytest.raises(ShapeError, match="SparseDense_0"):
        model.apply({"params": swapped}, X)
