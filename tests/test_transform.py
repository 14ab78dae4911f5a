"""tvwjax.transform.prune: exact zeros after every step, schedules, optimizers, Flax loops."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_patterns import kept_count

from tvwjax.errors import ConfigError, TreeMismatchError
from tvwjax.masking import masks as compute_masks
from tvwjax.patterns import EW, NM, TVW, TW, Pattern
from tvwjax.schedules import OneShot, Polynomial, Staged
from tvwjax.scores import taylor_accumulate, taylor_init
from tvwjax.summary import summary
from tvwjax.transform import PruneState, fixed_masks, get_masks, prune

K, N = 32, 16


def _params(dtype=jnp.float32, seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"l1": {"kernel": jax.random.normal(k1, (K, N), dtype),
                   "bias": jnp.zeros((N,), dtype)},
            "l2": {"kernel": jax.random.normal(k2, (N, 4), dtype) * 0.3}}


def _loss(p, x, y):
    h = jnp.tanh(x @ p["l1"]["kernel"] + p["l1"]["bias"])
    return jnp.mean((h @ p["l2"]["kernel"] - y).astype(jnp.float32) ** 2)


def _data(steps, seed=1, dtype=jnp.float32):
    kx, ky = jax.random.split(jax.random.key(seed))
    return (jax.random.normal(kx, (steps, 8, K), dtype),
            jax.random.normal(ky, (steps, 8, 4), dtype))


def _make_step(tx):
    @jax.jit
    def step(params, state, x, y):
        g = jax.grad(_loss)(params, x, y)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state
    return step


def _only_l1(path, leaf):
    return path == "l1/kernel"


def _check_zeros(params, mask_tree):
    for m, p in zip(jax.tree.leaves(mask_tree), jax.tree.leaves(
            jax.tree.map(lambda m, p: None if m is None else p, mask_tree, params,
                         is_leaf=lambda x: x is None)), strict=True):
        assert p.shape == m.shape
        pruned = np.asarray(p)[~np.asarray(m)]
        assert np.all(pruned == 0), f"{np.count_nonzero(pruned)} pruned weights are non-zero"


def _train(tx, steps: int, check_zeros: bool = True):
    """Run ``steps`` jitted training steps; after each, check the pruned weights are exactly
    zero (unless told not to) and yield ``(t, params, state)``."""
    params = _params()
    state = tx.init(params)
    step = _make_step(tx)
    xs, ys = _data(steps)
    for t in range(steps):
        params, state = step(params, state, xs[t], ys[t])
        jax.block_until_ready(params)
        if check_zeros:
            _check_zeros(params, get_masks(state))
        yield t, params, state


OPTIMIZERS = {
    "adam": lambda: optax.adam(0.05, b1=0.99),
    "adamw": lambda: optax.adamw(0.05, weight_decay=0.1),
    "sgd_momentum": lambda: optax.sgd(0.05, momentum=0.99, nesterov=True),
    "lion": lambda: optax.lion(0.01, b1=0.99),
    "adafactor": lambda: optax.adafactor(0.05, min_dim_size_to_factor=8),
    "inject_adam": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=0.05, b1=0.99),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_pruned_weights_exactly_zero_after_every_step(name):
    sched = Polynomial(0.75, begin_step=2, end_step=10, frequency=3)
    tx = optax.chain(OPTIMIZERS[name](), prune(EW(), sched))
    for t, _, state in _train(tx, 12):
        m = get_masks(state)
        assert m["l1"]["bias"] is None
        # kept fraction follows the schedule: EW keeps exactly the counting rule's count
        last_update = max([s for s in range(2, t + 1) if bool(sched(s)[1])], default=None)
        expect = 0.0 if last_update is None else float(sched(last_update)[0])
        for leaf in (m["l1"]["kernel"], m["l2"]["kernel"]):
            assert int(leaf.sum()) == kept_count(expect, leaf.size), (t, expect)
    assert summary(get_masks(state))["total"]["sparsity"] == pytest.approx(0.75)


def test_momentum_never_resurrects_pruned_weights():
    """One-shot prune, then many steps of high-momentum Adam: zeros stay exactly zero and
    the masks never change, even though the inner updates of pruned weights are non-zero."""
    inner = optax.adam(0.1, b1=0.999)
    tx = optax.chain(inner, prune(TW(tile=4), OneShot(0.5, step=3)))
    params = _params()
    state = tx.init(params)
    xs, ys = _data(25)

    @jax.jit
    def step(params, state, x, y):
        g = jax.grad(_loss)(params, x, y)
        inner_u, _ = inner.update(g, state[0], params)
        u, state = tx.update(g, state, params)
        return optax.apply_updates(params, u), state, inner_u

    masks_after = None
    for t in range(25):
        params, state, inner_u = step(params, state, xs[t], ys[t])
        m = get_masks(state)
        _check_zeros(params, m)
        if t == 3:
            masks_after = m
        if t > 3:
            pruned = ~np.asarray(m["l1"]["kernel"])
            assert np.abs(np.asarray(inner_u["l1"]["kernel"])[pruned]).max() > 0
            for a, b in zip(jax.tree.leaves(m), jax.tree.leaves(masks_after), strict=True):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_low_precision_params_land_exactly_on_zero(dtype):
    tx = optax.chain(optax.adam(0.05), prune(EW(), OneShot(0.5)))
    params = _params(dtype)
    state = tx.init(params)
    step = _make_step(tx)
    xs, ys = _data(5, dtype=dtype)
    for t in range(5):
        params, state = step(params, state, xs[t], ys[t])
        assert params["l1"]["kernel"].dtype == dtype
        _check_zeros(params, get_masks(state))
        assert int(jnp.sum(params["l1"]["kernel"] == 0)) >= K * N // 2


def test_float32_updates_of_bfloat16_params_land_on_zero():
    params = {"kernel": (jax.random.normal(jax.random.key(3), (16, 8)) * 100).astype(
        jnp.bfloat16)}
    tx = prune(EW(), OneShot(0.5))
    state = tx.init(params)
    u = {"kernel": jax.random.normal(jax.random.key(4), (16, 8), jnp.float32) * 1e-3}
    out, state = jax.jit(tx.update)(u, state, params)
    new = optax.apply_updates(params, out)
    m = np.asarray(state.masks["kernel"])
    assert np.all(np.asarray(new["kernel"], np.float32)[~m] == 0)
    assert np.signbit(np.asarray(new["kernel"], np.float32)[~m]).sum() == 0  # +0, not -0


@pytest.mark.parametrize("jit", [False, True])
def test_masks_are_computed_from_the_weights_entering_the_step(jit):
    """The updating step scores ``params`` (not ``params + updates``: that would keep every
    leaf's update alive until the mask switch ran, 1.12x the step time on a BERT-base stack),
    then applies its update to the kept weights and zeroes the rest."""
    params = {"kernel": jnp.asarray([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])}
    tx = prune(EW(), OneShot(0.5))
    state = tx.init(params)
    # the update would flip the ranking: it does not change which weights are kept
    u = {"kernel": jnp.asarray([[20.0, 20.0], [20.0, 20.0], [0.5, 0.5], [0.0, 0.0]])}
    out, state = (jax.jit(tx.update) if jit else tx.update)(u, state, params)
    np.testing.assert_array_equal(state.masks["kernel"],
                                  [[False, False], [False, False], [True, True], [True, True]])
    np.testing.assert_array_equal(optax.apply_updates(params, out)["kernel"],
                                  [[0.0, 0.0], [0.0, 0.0], [5.5, 6.5], [7.0, 8.0]])


@pytest.mark.parametrize("pattern", [TVW(tile=4), NM(2, 4), TW(tile=4)],
                         ids=lambda p: p.name)
def test_structured_patterns_follow_schedule(pattern: Pattern):
    sched = Staged((0.5, 0.75) if not isinstance(pattern, NM) else (0.5,), finetune_steps=4)
    tx = optax.chain(optax.sgd(0.05, momentum=0.9),
                     prune(pattern, sched, where=_only_l1))
    for t, params, state in _train(tx, 10):
        m = get_masks(state)["l1"]["kernel"]
        assert get_masks(state)["l2"]["kernel"] is None
        want = compute_masks({"kernel": params["l1"]["kernel"]}, pattern,
                             float(sched(t)[0]))["kernel"].mean()
        assert float(m.mean()) == pytest.approx(float(want), abs=0.02)
        assert float(m.mean()) == pytest.approx(1 - float(sched(t)[0]), abs=0.07)


def test_tvw_ramp_below_floor_rounds_up_and_state_records_it():
    sched = Polynomial(0.75, 0, 8, frequency=2)
    tx = prune(TVW(tile=4), sched)
    params = {"kernel": jax.random.normal(jax.random.key(0), (K, N))}
    state = tx.init(params)
    upd = jax.jit(tx.update)
    zero = jax.tree.map(jnp.zeros_like, params)
    seen = []
    for _ in range(9):
        out, state = upd(zero, state, params)
        params = optax.apply_updates(params, out)
        seen.append(float(state.sparsity))
        assert float(1 - state.masks["kernel"].mean()) == pytest.approx(seen[-1], abs=0.07)
    assert seen[0] == 0.0  # s_0 = 0: dense
    assert seen[2] == 0.5  # s_2 = 0.75 (1 - 0.75^3) = 0.43 < floor 0.5: rounded up
    assert seen[-1] == pytest.approx(0.75)
    assert seen == [float(TVW().effective_sparsity(sched(min(t, 8) // 2 * 2)[0]))
                    for t in range(9)]


def test_taylor_scores_extra_arg_change_the_masks():
    params = _params()
    xs, ys = _data(4)
    acc = taylor_init(params)
    for t in range(4):
        acc = taylor_accumulate(acc, jax.grad(_loss)(params, xs[t], ys[t]), params)
    tx = prune(EW(), OneShot(0.5), where=_only_l1)
    state = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    _, s_mag = jax.jit(tx.update)(zero, state, params)
    _, s_tay = jax.jit(tx.update)(zero, state, params, scores=acc)
    m_mag, m_tay = s_mag.masks["l1"]["kernel"], s_tay.masks["l1"]["kernel"]
    assert int(m_mag.sum()) == int(m_tay.sum()) == K * N // 2
    assert bool(jnp.any(m_mag != m_tay))
    np.testing.assert_array_equal(
        m_tay, compute_masks(params, EW(), 0.5, scores=acc, where=_only_l1)["l1"]["kernel"])
    # Taylor scores through optax.chain's extra args
    chain = optax.chain(optax.sgd(0.0), prune(EW(), OneShot(0.5), where=_only_l1))
    _, cs = chain.update(zero, chain.init(params), params, scores=acc)
    np.testing.assert_array_equal(get_masks(cs)["l1"]["kernel"], m_tay)


@pytest.mark.parametrize("pattern", [EW(), TW(tile=4)], ids=["ew", "tw"])
def test_eager_and_jitted_updates_are_identical(pattern):
    # Eagerly (concrete step) the masks are recomputed directly so that masks() checks the
    # scores; under jit inside lax.cond. Both must give the same masks, updates and state.
    tx = optax.chain(optax.adam(0.05), prune(pattern, Polynomial(0.75, 1, 5, frequency=2)))
    params_e = params_j = _params()
    state_e = state_j = tx.init(params_e)
    update_j = jax.jit(tx.update)
    xs, ys = _data(7)
    for t in range(7):
        g_e, g_j = (jax.grad(_loss)(p, xs[t], ys[t]) for p in (params_e, params_j))
        u_e, state_e = tx.update(g_e, state_e, params_e)
        u_j, state_j = update_j(g_j, state_j, params_j)
        params_e, params_j = optax.apply_updates(params_e, u_e), optax.apply_updates(
            params_j, u_j)
        assert jax.tree.structure(state_e) == jax.tree.structure(state_j)
        for a, b in zip(jax.tree.leaves((params_e, state_e)),
                        jax.tree.leaves((params_j, state_j)), strict=True):
            assert a.dtype == b.dtype
            # float32 rounding, compounded over the steps: XLA fuses Adam's arithmetic under
            # jit (FMA contraction, vector sqrt/div on AVX-512) and not eagerly; 1e-7 absolute
            # is below one ulp of a weight near 1 and failed on an AVX-512 Xeon (1.6e-7).
            # The masks below must still match exactly.
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
        for m_e, m_j in zip(jax.tree.leaves(get_masks(state_e)),
                            jax.tree.leaves(get_masks(state_j)), strict=True):
            np.testing.assert_array_equal(m_e, m_j)
    assert float(state_e[1].sparsity) == pytest.approx(0.75)
    _check_zeros(params_e, get_masks(state_e))


def test_eager_update_checks_concrete_scores():
    # Eagerly the scores are concrete: NaN scores raise (naming the leaf) instead of masking
    # silently; on a step without a mask update they are not read.
    from tvwjax.errors import ScoreError

    params = _params()
    tx = prune(EW(), OneShot(0.5, step=1), where=_only_l1)
    zero = jax.tree.map(jnp.zeros_like, params)
    bad = jax.tree.map(lambda x: jnp.full(x.shape, jnp.nan), params)
    _, state = tx.update(zero, tx.init(params), params, scores=bad)   # step 0: no update
    with pytest.raises(ScoreError, match="l1/kernel"):
        tx.update(zero, state, params, scores=bad)


def test_score_fn_is_used():
    params = _params()
    # negated order: keep the *smallest* magnitudes
    tx = prune(EW(), OneShot(0.5), where=_only_l1,
               score_fn=lambda w: jax.tree.map(lambda x: 1.0 / (1e-3 + jnp.abs(x)), w))
    _, st = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    m = np.asarray(st.masks["l1"]["kernel"])
    w = np.abs(np.asarray(params["l1"]["kernel"]))
    assert w[m].max() <= w[~m].min()


def test_fixed_masks_for_fine_tuning():
    params = _params()
    fixed = compute_masks(params, TW(tile=4), 0.75)
    tx = optax.chain(optax.adam(0.05), fixed_masks(fixed))
    state = tx.init(params)
    step = _make_step(tx)
    xs, ys = _data(5)
    for t in range(5):
        params, state = step(params, state, xs[t], ys[t])
        _check_zeros(params, fixed)
        for a, b in zip(jax.tree.leaves(get_masks(state)), jax.tree.leaves(fixed), strict=True):
            np.testing.assert_array_equal(a, b)
    assert int(state[1].count) == 5


def test_errors_for_bad_config():
    with pytest.raises(ConfigError, match="schedule"):
        prune(EW(), 0.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pattern"):
        prune("EW", OneShot(0.5))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="pattern must be"):
        prune(None, OneShot(0.5))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="scope"):
        prune(EW(), OneShot(0.5), scope="model")
    with pytest.raises(ConfigError, match="score_fn"):
        prune(EW(), OneShot(0.5), score_fn=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="sparsity"):
        prune(NM(), OneShot(0.75))
    tx = prune(EW(), OneShot(0.5))
    params = _params()
    with pytest.raises(ConfigError, match="needs params"):
        tx.update(params, tx.init(params))
    bad = {"l1": {"kernel": jnp.ones((3, 3), bool)}}
    with pytest.raises(TreeMismatchError, match="l1/kernel"):
        fixed_masks(bad).init(params)
    with pytest.raises(ConfigError, match="no mask matches"):
        fixed_masks({"l1": {"kernel": None}}).init(params)
    # a prune state used with another model's params names the leaf
    other = {"l9": params["l1"], "l2": params["l2"]}
    with pytest.raises(TreeMismatchError, match="l9/kernel|l1/kernel"):
        tx.update(jax.tree.map(jnp.zeros_like, other), tx.init(params), other)
    with pytest.raises(ConfigError, match="get_masks"):
        get_masks(optax.adam(1.0).init(params))


def test_global_scope_runs_in_the_transform():
    tx = prune(EW(), OneShot(0.6), scope="global")
    params = _params()
    _, st = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    assert summary(st.masks)["total"]["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert isinstance(st, PruneState)


# -- Flax ------------------------------------------------------------------------------------
def test_nnx_optimizer_loop():
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(K, N, rngs=rngs)
            self.l2 = nnx.Linear(N, 4, rngs=rngs)

        def __call__(self, x):
            return self.l2(jnp.tanh(self.l1(x)))

    model = MLP(nnx.Rngs(0))
    sched = Polynomial(0.75, 1, 7, frequency=2)
    tx = optax.chain(optax.adam(0.05, b1=0.99), prune(TVW(tile=4), sched))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def train_step(model, opt, x, y):
        grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
        opt.update(model, grads)

    xs, ys = _data(10)
    for t in range(10):
        train_step(model, opt, xs[t], ys[t])
        m = get_masks(opt.opt_state)
        for layer in ("l1", "l2"):
            k = np.asarray(getattr(model, layer).kernel[...])
            mk = np.asarray(m[layer]["kernel"])
            assert mk.shape == k.shape and np.all(k[~mk] == 0)
        assert m["l1"]["bias"] is None
    assert float(1 - m["l1"]["kernel"].mean()) == pytest.approx(0.75, abs=0.07)


def test_nnx_fixed_masks_from_variable_state():
    """Masks computed on nnx.state(model) (Variable nodes) match Optax's pure arrays."""
    from flax import nnx

    model = nnx.Linear(K, N, rngs=nnx.Rngs(1))
    fixed = compute_masks(nnx.state(model, nnx.Param), EW(), 0.5)
    opt = nnx.Optimizer(model, optax.chain(optax.sgd(0.1, momentum=0.9),
                                           fixed_masks(fixed)),
                        wrt=nnx.Param)
    x = jnp.ones((4, K))
    for _ in range(3):
        opt.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))
    assert int(jnp.sum(model.kernel[...] == 0)) == K * N // 2


def test_linen_train_state_loop():
    import flax.linen as nn
    from flax.training import train_state

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4)(jnp.tanh(nn.Dense(N)(x)))

    model = MLP()
    params = model.init(jax.random.key(0), jnp.ones((1, K)))["params"]
    tx = optax.chain(optax.adamw(0.05), prune(TW(tile=4), Staged((0.5, 0.75), 3)))
    st = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def train_step(st, x, y):
        grads = jax.grad(lambda p: jnp.mean((st.apply_fn({"params": p}, x) - y) ** 2))(
            st.params)
        return st.apply_gradients(grads=grads)

    xs, ys = _data(8)
    for t in range(8):
        st = train_step(st, xs[t], ys[t])
        m = get_masks(st.opt_state)
        _check_zeros(st.params, m)
    assert float(1 - m["Dense_0"]["kernel"].mean()) == pytest.approx(0.75, abs=0.05)


def test_mask_state_is_sharded_like_params():
    """On 4 (fake CPU) devices the masks in the state take the params' sharding."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, optax
        from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
        from tvwjax.patterns import EW
        from tvwjax.schedules import OneShot
        from tvwjax.transform import prune, get_masks
        mesh = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Auto,))
        sh = NamedSharding(mesh, P(None, "x"))
        params = {"kernel": jax.device_put(jax.random.normal(jax.random.key(0), (64, 32)), sh)}
        tx = optax.chain(optax.adam(1e-2), prune(EW(), OneShot(0.5)))
        st = tx.init(params)
        m0 = get_masks(st)["kernel"]
        assert m0.sharding.is_equivalent_to(sh, 2), m0.sharding
        step = jax.jit(lambda p, s: tx.update(p, s, p))
        u, st = step(params, st)
        m1 = get_masks(st)["kernel"]
        assert m1.sharding.is_equivalent_to(sh, 2), m1.sharding
        assert len(m1.addressable_shards) == 4 and m1.addressable_shards[0].data.shape == (64, 8)
        print("OK")
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


def test_wrong_order_warns_and_the_wrapper_cannot_be_wrong():
    import warnings

    from tvwjax import PruneOrderWarning, pruned

    sched = OneShot(0.5)
    wrong = optax.chain(prune(EW(), sched), optax.adam(0.05))
    with pytest.warns(PruneOrderWarning, match="before the optimizer"):
        for _ in _train(wrong, 3, check_zeros=False):
            pass
    for tx in (optax.chain(optax.adam(0.05), prune(EW(), sched)),
               pruned(optax.adam(0.05), EW(), sched)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", PruneOrderWarning)
            for _ in _train(tx, 3):
                pass
    # extra args (Taylor scores) reach the prune step through the wrapper
    params = _params()
    xs, ys = _data(1)
    acc = taylor_accumulate(taylor_init(params), jax.grad(_loss)(params, xs[0], ys[0]), params)
    tx = pruned(optax.sgd(0.0), EW(), OneShot(0.5), where=_only_l1)
    _, st = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params,
                      scores=acc)
    np.testing.assert_array_equal(
        get_masks(st)["l1"]["kernel"],
        compute_masks(params, EW(), 0.5, scores=acc, where=_only_l1)["l1"]["kernel"])


@pytest.mark.parametrize("pattern", [TVW(tile=16), EW(), None], ids=["TVW", "EW", "fixed"])
def test_a_donated_training_step_copies_no_weight_sized_buffer(pattern):
    """Under jit with donated params and state, the step neither copies a parameter nor a
    mask: the mask update and the order check are one ``lax.switch`` returning a byte per
    weight, and the updates depend on the check's result (a branch returning the old masks,
    or a conditional reading the parameters that nothing waits for, made XLA copy both on
    every step)."""
    import re

    params = {f"l{i}": {"kernel": jnp.ones((96, 80)) * (i + 1)} for i in range(3)}
    tail = (fixed_masks(compute_masks(params, EW(), 0.5)) if pattern is None
            else prune(pattern, Polynomial(0.75, 2, 10, frequency=4)))
    tx = optax.chain(optax.adam(1e-3), tail)

    def step(p, st, x):
        g = jax.grad(lambda p: sum(jnp.sum(jnp.tanh(x @ v["kernel"])) for v in p.values()))(p)
        u, st = tx.update(g, st, p)
        return optax.apply_updates(p, u), st

    hlo = jax.jit(step, donate_argnums=(0, 1)).lower(
        params, tx.init(params), jnp.ones((4, 96))).compile().as_text()
    # (the skip branch's zero bytes are a copy of a broadcast: a fill, not a copy of state)
    copies = re.findall(r"= (?:f32|pred)\[96,80\]\{[0-9,]*\} copy\([^)]*\)", hlo)
    assert not copies, copies
    assert "conditional(" in hlo  # the mask update / check still skipped on other steps
