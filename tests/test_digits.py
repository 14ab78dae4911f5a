"""examples/digits.py: the importable pieces and a small configuration of the table."""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import examples.digits as digits


def test_split_is_fixed_and_stratified():
    a = digits.load_data(0)
    b = digits.load_data(0)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    xtr, ytr, xte, yte = a
    assert xtr.shape[1:] == (8, 8, 1) and len(xtr) + len(xte) == 1797
    assert xtr.max() <= 1.0 and set(np.unique(yte)) == set(range(10))


def test_im2col_conv_matches_flax_conv():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    ours = digits.Conv3x3(5)
    p = ours.init(jax.random.key(1), x)
    ref = nn.Conv(5, (3, 3)).apply(p, x)
    np.testing.assert_allclose(ours.apply(p, x), ref, rtol=1e-5, atol=1e-5)


def test_pruned_layers_have_the_stated_matrix_shapes():
    params = digits.init_params(0)
    for name, (k, n) in digits.PRUNED_LAYERS.items():
        kern = params[name]["kernel"]
        assert kern.reshape(-1, kern.shape[-1]).shape == (k, n)


def test_pattern_sizes_scale_with_layer_width():
    assert digits.pattern_for("TVW", "conv2").tile == 16
    assert digits.pattern_for("TVW", "fc1").tile == 32
    assert digits.pattern_for("BW", "fc1").rows == 16
    with pytest.raises(ValueError, match="kind"):
        digits.pattern_for("XX", "fc1")


@pytest.mark.slow
def test_small_table_runs_and_writes_results(tmp_path):
    kinds = {"EW": (0.75,), "TVW": (0.75,)}
    result = digits.run_table((0,), digits.SMALL, kinds, log=None)
    digits.write_results(result, tmp_path, "digits_small")
    for ext in ("md", "json", "png"):
        assert (tmp_path / f"digits_small.{ext}").stat().st_size > 0
    loaded = json.loads((tmp_path / "digits_small.json").read_text())
    rows = {r["pattern"]: r for r in loaded["rows"]}
    assert set(rows) == {"dense", "EW", "TVW"}
    assert rows["dense"]["measured_sparsity"] < 0.01
    assert rows["EW"]["measured_sparsity"] == pytest.approx(0.75, abs=0.002)
    assert rows["TVW"]["measured_sparsity"] == pytest.approx(0.75, abs=0.02)
    for r in rows.values():
        assert r["acc_mean"] > 0.85, r
    md = (tmp_path / "digits_small.md").read_text()
    assert "| TVW |" in md and "tiles 16 / 32" in md


def test_train_fn_with_any_optimizer_learns():
    import optax

    xtr, ytr, xte, yte = digits.load_data(0)
    tx = optax.sgd(0.1, momentum=0.9)
    p = digits.init_params(1)
    xs, ys = digits.batches(xtr, ytr, 60, 32, 0)
    p, _, losses = digits.make_train_fn(tx)(p, tx.init(p), xs, ys)
    assert float(jnp.mean(losses[-10:])) < float(jnp.mean(losses[:10]))
    assert digits.evaluate(p, xte, yte) > 0.5
