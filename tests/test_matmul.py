"""tvwjax.matmul: equals the masked dense product for every format, dtype and batch rank;
gradients w.r.t. x and the compressed values; Pallas backends in interpret mode; errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvwjax.errors import ConfigError, DTypeError, ShapeError
from tvwjax.formats import compress, decompress
from tvwjax.matmul import BUCKET_MIN_M, M_CHUNK, SCAN_MIN_M, matmul
from tvwjax.patterns import BW, NM, TVW, TW

K, N = 72, 100
FORMATS = {
    "tw2d": (TW(tile=16), 0.75),
    "tw1d": (TW(tile=16), 0.6),
    "tvw": (TVW(tile=16), 0.75),
    "nm": (NM(), 0.5),
    "block": (BW(8, 16), 0.5),
}
TOL = {jnp.float32: 1e-4, jnp.bfloat16: 3e-2, jnp.float16: 5e-3}


def _weight(name, dtype=jnp.float32, shape=(K, N), seed=0):
    pattern, s = FORMATS[name]
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    m = np.asarray(pattern.mask(jnp.abs(jnp.asarray(w)), s))
    w = np.asarray(jnp.asarray(w, dtype))
    return compress(w, m, pattern), jnp.asarray(np.where(m, w, 0), dtype)


def _check(y, x, wd, dtype):
    ref = jnp.matmul(x.astype(jnp.float32), wd.astype(jnp.float32),
                     precision=jax.lax.Precision.HIGHEST)
    scale = float(jnp.max(jnp.abs(ref))) + 1.0
    assert y.dtype == dtype and y.shape == ref.shape
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref), atol=TOL[dtype] * scale,
                               rtol=TOL[dtype])


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (BUCKET_MIN_M + 3,)])
def test_matches_masked_dense(name, dtype, lead):
    cw, wd = _weight(name, dtype)
    x = jnp.asarray(np.random.default_rng(1).standard_normal(lead + (K,)), dtype)
    _check(jax.jit(matmul)(x, cw), x, wd, dtype)


@pytest.mark.parametrize("name", ["tw2d", "tvw"])
def test_two_chunks_and_buckets(name):
    """M over two chunks (ragged last chunk) with the bucketed plan."""
    cw, wd = _weight(name)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((M_CHUNK + 7, K)), jnp.float32)
    _check(jax.jit(matmul)(x, cw), x, wd, jnp.float32)


@pytest.mark.parametrize("name", ["tw1d", "tw2d", "tvw", "block"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_large_m_tile_loop(name, dtype):
    """From SCAN_MIN_M rows on, the loop over tiles gathering rows of x^T."""
    cw, wd = _weight(name, dtype)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((SCAN_MIN_M + 5, K)), dtype)
    _check(jax.jit(matmul)(x, cw), x, wd, dtype)


def test_tvw_decoded_to_tile_wise_is_the_same_weight():
    cw, wd = _weight("tvw")
    tw_form = cw.to_tile_wise()
    assert type(tw_form).__name__ == "TileWise"
    np.testing.assert_array_equal(np.asarray(decompress(tw_form)), np.asarray(decompress(cw)))
    x = jnp.asarray(np.random.default_rng(4).standard_normal((9, K)), jnp.float32)
    _check(matmul(x, tw_form), x, wd, jnp.float32)


def test_dense_weight_and_mixed_dtypes():
    _, wd = _weight("tw2d")
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, K)), jnp.bfloat16)
    y = matmul(x, wd)
    assert y.dtype == jnp.float32
    _check(y, x, wd, jnp.float32)
    cw, _ = _weight("tw2d")
    assert matmul(x, cw).dtype == jnp.float32


def test_all_pruned_weight_gives_zeros():
    cw = compress(np.ones((8, 8), np.float32), np.zeros((8, 8), bool), TW(tile=4))
    np.testing.assert_array_equal(np.asarray(matmul(jnp.ones((3, 8)), cw)), np.zeros((3, 8)))


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("backend", ["cpu", "interpret"])
def test_no_rows_give_zeros_and_zero_gradients(name, backend):
    # An empty batch (x with no rows) is a valid input on every backend, eager and jitted,
    # and differentiable: zero gradients of the right shapes.
    cw, _ = _weight(name, jnp.bfloat16)
    for lead in [(0,), (2, 0)]:
        x = jnp.ones((*lead, K), jnp.bfloat16)
        for f in (matmul, jax.jit(matmul, static_argnames="backend")):
            y = f(x, cw, backend=backend)
            assert y.shape == (*lead, N) and y.dtype == jnp.bfloat16
            assert not np.any(np.asarray(y, np.float32))
    gx, gw = jax.grad(lambda x, w: jnp.sum(matmul(x, w, backend=backend)), argnums=(0, 1))(
        jnp.ones((0, K), jnp.bfloat16), cw)
    assert gx.shape == (0, K)
    assert gw.values.shape == cw.values.shape and not np.any(np.asarray(gw.values, np.float32))


def test_numpy_inputs_equal_jax_inputs():
    cw, wd = _weight("tw2d")
    x = np.random.default_rng(6).standard_normal((5, K)).astype(np.float32)
    for w in (cw, np.asarray(wd)):
        np.testing.assert_array_equal(np.asarray(matmul(x, w)),
                                      np.asarray(matmul(jnp.asarray(x), w)))


@pytest.mark.parametrize("name", FORMATS)
def test_gradients_match_masked_dense(name):
    cw, wd = _weight(name)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((3, 7, K)), jnp.float32)

    def loss_c(x, cw):
        return jnp.sum(jnp.sin(matmul(x, cw)))

    def loss_d(x, w):
        return jnp.sum(jnp.sin(x @ w))

    gx, gcw = jax.jit(jax.grad(loss_c, argnums=(0, 1)))(x, cw)
    rx, rw = jax.grad(loss_d, argnums=(0, 1))(x, wd)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(rx), atol=1e-4)
    assert type(gcw) is type(cw)
    # The gradient w.r.t. the values, decompressed, is the masked dense gradient.
    mask = np.asarray(decompress(cw.replace(values=jnp.ones_like(cw.values)))) != 0
    np.testing.assert_allclose(np.asarray(decompress(gcw)), np.where(mask, rw, 0),
                               atol=1e-4)


@settings(max_examples=6, deadline=None)
@given(k=st.integers(4, 40), n=st.integers(1, 50), m=st.sampled_from([1, 9, 70]),
       tile=st.sampled_from([4, 8, 16]), s=st.sampled_from([0.5, 0.75, 0.9]),
       seed=st.integers(0, 10**6))
def test_property_tw_matmul(k, n, m, tile, s, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    pattern = TW(tile=tile)
    mask = np.asarray(pattern.mask(jnp.abs(jnp.asarray(w)), s))
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    _check(matmul(x, compress(w, mask, pattern)), x, jnp.asarray(np.where(mask, w, 0)),
           jnp.float32)


# -- Pallas backends (interpret mode on the CPU) --------------------------------------------------
@pytest.mark.parametrize("name", ["tw2d", "tw1d", "block", "tvw"])
def test_interpret_backend(name):
    """The Pallas kernels (interpret mode), called directly, and their own gradients."""
    cw, wd = _weight(name, shape=(64, 40))
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 3, 64)), jnp.float32)
    _check(matmul(x, cw, backend="interpret"), x, wd, jnp.float32)
    gx, gcw = jax.grad(lambda x, cw: jnp.sum(matmul(x, cw, backend="interpret") ** 2),
                       argnums=(0, 1))(x, cw)
    rx, rcw = jax.grad(lambda x, cw: jnp.sum(matmul(x, cw, backend="cpu") ** 2),
                       argnums=(0, 1))(x, cw)
    np.testing.assert_allclose(np.asarray(gx), np.asarray(rx), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(gcw.values), np.asarray(rcw.values), rtol=1e-4,
                               atol=1e-4)


def test_interpret_backend_other_nm_ratio_runs_the_tw_kernel():
    """A 1:4 TVW weight has no TVW kernel: the TW kernel runs on its decoded compact blocks
    (gradients still reach the 1:4 values)."""
    pattern = TVW(tile=16, n=1, m=4)
    w = np.random.default_rng(6).standard_normal((64, 40)).astype(np.float32)
    mask = np.asarray(pattern.mask(jnp.abs(jnp.asarray(w)), 0.85))
    cw = compress(w, mask, pattern)
    assert cw.nm == (1, 4)
    x = jnp.asarray(np.random.default_rng(7).standard_normal((3, 64)), jnp.float32)
    _check(matmul(x, cw, backend="interpret"), x, jnp.asarray(np.where(mask, w, 0)),
           jnp.float32)
    g = jax.grad(lambda c: jnp.sum(matmul(x, c, backend="interpret") ** 2))(cw)
    r = jax.grad(lambda c: jnp.sum(matmul(x, c, backend="cpu") ** 2))(cw)
    np.testing.assert_allclose(np.asarray(g.values), np.asarray(r.values), rtol=1e-4,
                               atol=1e-4)


def test_auto_backend_is_cpu_here():
    if jax.default_backend() == "gpu":
        pytest.skip("auto picks the GPU kernels on a GPU")
    cw, wd = _weight("tw2d")
    x = jnp.ones((2, K))
    np.testing.assert_array_equal(np.asarray(matmul(x, cw)),
                                  np.asarray(matmul(x, cw, backend="cpu")))


# -- errors --------------------------------------------------------------------------------------
def test_bad_inputs_name_the_parameter():
    cw, wd = _weight("tw2d")
    with pytest.raises(ShapeError, match="x: last dimension"):
        matmul(jnp.ones((2, K + 1)), cw)
    with pytest.raises(ShapeError, match="x: last dimension"):
        matmul(jnp.ones(()), wd)
    with pytest.raises(DTypeError, match="x:"):
        matmul(jnp.ones((2, K), jnp.int32), cw)
    with pytest.raises(DTypeError, match="w:"):
        matmul(jnp.ones((2, K)), jnp.ones((K, N), jnp.int32))
    with pytest.raises(ShapeError, match="w:"):
        matmul(jnp.ones((2, K)), jnp.ones((K, N, 1)))
    with pytest.raises(ConfigError, match="w must be"):
        matmul(jnp.ones((2, K)), "W")
    with pytest.raises(ConfigError, match="backend"):
        matmul(jnp.ones((2, K)), cw, backend="tpu")


@pytest.mark.parametrize("name", ["tw2d", "tvw"])
def test_padding_rows_get_no_gradient(name):
    """Padding rows point at row 0 of x: fine-tuning must leave their values at zero."""
    cw, _ = _weight(name)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((6, K)), jnp.float32)
    g = jax.grad(lambda c: jnp.sum(matmul(x, c) ** 2))(cw)
    if name == "tw2d":
        valid = np.arange(cw.values.shape[1])[None, :, None] < cw.counts[:, None, None]
        assert (~valid).any()
        assert np.all(np.asarray(g.values)[~np.broadcast_to(valid, g.values.shape)] == 0)
    # After a large step, the weight still equals its decompressed form in products.
    stepped = cw.replace(values=cw.values - 10.0 * g.values)
    y = matmul(x, stepped)
    ref = x @ decompress(stepped)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-4, atol=1e-3)
