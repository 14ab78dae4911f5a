"""tvwjax.nn.keep_faster: the per-layer choice between compressed and dense, by measurement."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tvwjax
from tvwjax.nn import keep_faster


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(16, (3, 3))(x)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(10)(nn.relu(nn.Dense(64)(x)))


@pytest.fixture(scope="module")
def net():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 4)), jnp.float32)
    params = _Net().init(jax.random.key(0), x)["params"]
    pattern = tvwjax.TW(tile=8)
    masks = tvwjax.masks(params, pattern, 0.75)
    small = tvwjax.nn.compress_params(params, masks, pattern)
    return x, params, masks, small


def test_every_compressed_leaf_is_measured_and_the_faster_form_kept(net):
    _, params, masks, small = net
    tree, report = keep_faster(params, small, rows=16, repeats=3)
    compressed = {p for p, leaf in jax.tree_util.tree_flatten_with_path(
        small, is_leaf=lambda x: isinstance(x, tvwjax.CompressedWeight))[0]
        if isinstance(leaf, tvwjax.CompressedWeight)}
    assert len(report) == len(compressed) == 3  # conv + two dense kernels
    for c in report:
        assert c.dense_ms > 0 and c.compressed_ms > 0
        assert c.kept == ("compressed" if c.compressed_ms < c.dense_ms else "dense")
    assert len(report.compressed) + len(report.dense) == len(report)
    assert str(report).startswith("| leaf | GEMM (K, N) |")
    # Leaves turned dense are exactly the masked dense weights, in the leaf's own shape.
    dense_masked = tvwjax.apply_masks(params, masks)
    flat = dict(tvwjax.nn.speed.leaves_with_paths(dense_masked)[0])
    for c in report.dense:
        leaf = tree
        for key in c.path.split("/"):
            leaf = leaf[key]
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat[c.path]))


def test_the_model_runs_and_agrees_whatever_was_chosen(net):
    x, params, masks, small = net
    want = _Net().apply({"params": tvwjax.apply_masks(params, masks)}, x)
    for rows in (1, 256):
        tree, _ = keep_faster(params, small, rows=rows, repeats=2)
        with tvwjax.nn.compressed_kernels():
            got = jax.jit(_Net().apply)({"params": tree}, x)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_forced_choices():
    """A tiny layer at M=1 vs a large sparse layer at large M: the measurement must keep the
    dense form where the compressed one cannot win and vice versa (both are far apart)."""
    rng = np.random.default_rng(1)
    params = {"big": {"kernel": jnp.asarray(rng.standard_normal((1024, 1024)), jnp.float32)}}
    pattern = tvwjax.TW(tile=128)
    small = tvwjax.nn.compress_params(params, tvwjax.masks(params, pattern, 0.95), pattern)
    _, report = keep_faster(params, small, rows=512, repeats=3)
    assert report[0].kept == "compressed", str(report)  # 20x fewer FLOPs


@pytest.mark.parametrize(("kwargs", "error", "needle"), [
    ({"rows": 0}, tvwjax.ConfigError, "rows"),
    ({"rows": 2.5}, tvwjax.ConfigError, "rows"),
    ({"rows": 4, "repeats": 0}, tvwjax.ConfigError, "repeats"),
    ({"rows": 4, "backend": "tpu"}, tvwjax.ConfigError, "backend"),
])
def test_bad_arguments(net, kwargs, error, needle):
    _, params, _, small = net
    with pytest.raises(error, match=needle):
        keep_faster(params, small, **kwargs)


def test_tree_mismatch(net):
    _, params, _, small = net
    with pytest.raises(tvwjax.TreeMismatchError, match="structure of params"):
        keep_faster({"other": params}, small, rows=4)
