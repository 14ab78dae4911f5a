"""tvwjax.checkpoint: resuming mid-schedule is bit-identical; compressed params round-trip."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tvwjax
from tvwjax import checkpoint
from tvwjax.errors import ConfigError, TreeMismatchError
from tvwjax.transform import PruneState

K, H, OUT = 32, 16, 8
STEPS, CUT = 12, 5
# Gradual schedule: masks recomputed at steps 2, 4, 6, 8, 10 -- the cut lies mid-ramp.
SCHEDULE = tvwjax.Polynomial(0.75, begin_step=2, end_step=10, frequency=2)


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {"l1": {"kernel": jax.random.normal(k1, (K, H)) * 0.3, "bias": jnp.zeros((H,))},
            "l2": {"kernel": jax.random.normal(k2, (H, OUT)) * 0.3, "bias": jnp.zeros((OUT,))}}


def _loss(p, x, y):
    h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
    return jnp.mean((h @ p["l2"]["kernel"] + p["l2"]["bias"] - y) ** 2)


def _data():
    kx, ky = jax.random.split(jax.random.key(1))
    return jax.random.normal(kx, (STEPS, 8, K)), jax.random.normal(ky, (STEPS, 8, OUT))


def _tx():
    return optax.chain(optax.adam(1e-2), tvwjax.prune(tvwjax.TW(tile=4), SCHEDULE))


@pytest.fixture(scope="module")
def step_fn():
    tx = _tx()

    @jax.jit
    def step(state, x, y):
        g = jax.grad(_loss)(state["params"], x, y)
        u, opt = tx.update(g, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], u), "opt_state": opt}

    return step


def _init():
    params = _params()
    return {"params": params, "opt_state": _tx().init(params)}


def _run(state, step_fn, start, stop):
    xs, ys = _data()
    for i in range(start, stop):
        state = step_fn(state, xs[i], ys[i])
    return state


def _assert_bit_identical(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_mid_schedule_is_bit_identical(tmp_path, step_fn):
    straight = _run(_init(), step_fn, 0, STEPS)

    half = _run(_init(), step_fn, 0, CUT)
    prune_state = half["opt_state"][1]
    assert int(prune_state.count) == CUT
    assert 0.0 < float(prune_state.sparsity) < 0.75  # really in the middle of the ramp
    checkpoint.save(tmp_path / "ckpt", half)

    # A fresh process would rebuild the template from init; its values must not leak in.
    restored = checkpoint.restore(tmp_path / "ckpt", _init())
    _assert_bit_identical(restored, half)
    assert isinstance(restored["opt_state"][1], PruneState)
    resumed = _run(restored, step_fn, CUT, STEPS)

    _assert_bit_identical(resumed["params"], straight["params"])
    _assert_bit_identical(tvwjax.get_masks(resumed["opt_state"]),
                          tvwjax.get_masks(straight["opt_state"]))
    _assert_bit_identical(resumed["opt_state"], straight["opt_state"])
    assert int(resumed["opt_state"][1].count) == STEPS
    # The run really pruned: final masks at the schedule's end sparsity, weights exactly 0.
    m = tvwjax.get_masks(straight["opt_state"])
    assert abs(tvwjax.summary(m)["total"]["sparsity"] - 0.75) < 0.1
    assert not np.any(np.asarray(straight["params"]["l1"]["kernel"])[~np.asarray(
        m["l1"]["kernel"])])


def test_restore_with_abstract_target(tmp_path, step_fn):
    state = _run(_init(), step_fn, 0, 3)
    checkpoint.save(tmp_path / "c", state)
    restored = checkpoint.restore(tmp_path / "c", jax.eval_shape(_init))
    _assert_bit_identical(restored, state)


def test_restore_rejects_mismatched_target(tmp_path):
    state = _init()
    checkpoint.save(tmp_path / "c", state)
    other = {"params": {"l1": state["params"]["l1"]}, "opt_state": state["opt_state"]}
    with pytest.raises(TreeMismatchError, match="l2/kernel"):
        checkpoint.restore(tmp_path / "c", other)
    wrong = jax.tree.map(lambda x: x, state)
    wrong["params"]["l1"]["kernel"] = jnp.zeros((K, H + 1))
    with pytest.raises(TreeMismatchError, match=r"params/l1/kernel: target has shape"):
        checkpoint.restore(tmp_path / "c", wrong)
    wrong["params"]["l1"]["kernel"] = jnp.zeros((K, H), jnp.bfloat16)
    with pytest.raises(TreeMismatchError, match="dtype bfloat16"):
        checkpoint.restore(tmp_path / "c", wrong)


def test_save_refuses_to_overwrite(tmp_path):
    checkpoint.save(tmp_path / "c", {"a": jnp.ones(3)})
    with pytest.raises(ConfigError, match="already exists"):
        checkpoint.save(tmp_path / "c", {"a": jnp.ones(3)})
    checkpoint.save(tmp_path / "c", {"a": jnp.zeros(3)}, force=True)
    np.testing.assert_array_equal(checkpoint.restore(tmp_path / "c")["a"], np.zeros(3))
    with pytest.raises(ConfigError, match="not a tvwjax checkpoint"):
        checkpoint.restore(tmp_path)


# -- compressed inference params ------------------------------------------------------------------
class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = tvwjax.nn.SparseDense(32, name="tw")(x)
        x = tvwjax.nn.SparseDense(32, name="tvw")(jnp.tanh(x))
        x = tvwjax.nn.SparseDense(32, name="nm")(jnp.tanh(x))
        x = tvwjax.nn.SparseDense(16, name="bw")(jnp.tanh(x))
        return tvwjax.nn.SparseDense(8, name="dense")(x)


def _compressed_params(dtype):
    params = _MLP().init(jax.random.key(2), jnp.ones((1, 32)))["params"]
    params = jax.tree.map(lambda x: x.astype(dtype), params)
    patterns = {"tw": (tvwjax.TW(tile=8), 0.5), "tvw": (tvwjax.TVW(tile=8), 0.75),
                "nm": (tvwjax.NM(), 0.5), "bw": (tvwjax.BW(rows=8, cols=8), 0.5)}
    out = dict(params)
    for name, (pat, s) in patterns.items():
        w = params[name]["kernel"]
        mask = pat.mask(jnp.abs(w).astype(jnp.float32), s)
        out[name] = {**params[name], "kernel": tvwjax.compress(w, mask, pat)}
    # An all-pruned weight: zero tiles, zero-size tables (stored in the metadata).
    w = params["dense"]["kernel"]
    out["dense"] = {**params["dense"],
                    "kernel": tvwjax.compress(w, np.zeros(w.shape, bool), tvwjax.TW(tile=8))}
    return params, out


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_compressed_params_round_trip_exactly(tmp_path, dtype):
    dense, params = _compressed_params(dtype)
    assert params["dense"]["kernel"].num_tiles == 0
    checkpoint.save(tmp_path / "c", params)
    for target in (None, params, jax.eval_shape(lambda: dense)):
        restored = checkpoint.restore(tmp_path / "c", target)
        # Identical format objects: same classes, tables and statics (=> same treedef, the
        # same jit cache entry), bit-identical values.
        assert jax.tree.structure(restored) == jax.tree.structure(params)
        for name in ("tw", "tvw", "nm", "bw", "dense"):
            a, b = restored[name]["kernel"], params[name]["kernel"]
            assert type(a) is type(b)
            assert a._aux() == b._aux()
        _assert_bit_identical(restored, params)
    x = jax.random.normal(jax.random.key(3), (4, 32), dtype)
    apply = jax.jit(_MLP().apply)
    np.testing.assert_array_equal(np.asarray(apply({"params": restored}, x)),
                                  np.asarray(apply({"params": params}, x)))


def test_compressed_target_of_another_format_is_rejected(tmp_path):
    _, params = _compressed_params(jnp.float32)
    checkpoint.save(tmp_path / "c", params)
    wrong = {**params, "tw": {**params["tw"], "kernel": params["bw"]["kernel"]}}
    with pytest.raises(TreeMismatchError, match="tw/kernel: target is a BlockSparse"):
        checkpoint.restore(tmp_path / "c", wrong)
