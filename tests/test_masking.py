"""tvwjax.masks over pytrees: selection, overrides, scopes, jit, NNX / Linen, errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tvwjax as tw


def mlp_params(seed=0):
    k = jax.random.split(jax.random.key(seed), 4)
    return {
        "embed": {"embedding": jax.random.normal(k[0], (50, 32))},
        "fc1": {"kernel": jax.random.normal(k[1], (32, 96)), "bias": jnp.zeros((96,))},
        "fc2": {"kernel": 3.0 * jax.random.normal(k[2], (96, 64)), "bias": jnp.zeros((64,))},
        "conv": {"kernel": jax.random.normal(k[3], (3, 3, 8, 16))},
    }


def test_default_selection_and_unpruned_leaves():
    p = mlp_params()
    m = tw.masks(p, tw.EW(), 0.75)
    assert m["embed"]["embedding"] is None
    assert m["fc1"]["bias"] is None
    assert m["fc1"]["kernel"].dtype == jnp.bool_ and m["fc1"]["kernel"].shape == (32, 96)
    assert m["conv"]["kernel"].shape == (3, 3, 8, 16)
    for path in ("fc1", "fc2", "conv"):
        assert abs(1 - float(m[path]["kernel"].mean()) - 0.75) < 1e-3


def test_conv_kernel_viewed_as_im2col():
    p = mlp_params()
    m = tw.masks(p, tw.NM(), 0.5)["conv"]["kernel"]
    view = np.asarray(m).reshape(72, 16)  # (kh*kw*Cin, Cout): groups of 4 along K
    assert (view.reshape(18, 4, 16).sum(axis=1) == 2).all()
    tw.check(m, tw.NM(), 0.5)


def test_where_and_overrides():
    p = mlp_params()
    m = tw.masks(p, tw.EW(), 0.5, where=lambda path, x: path == "fc2/kernel")
    assert m["fc1"]["kernel"] is None and m["fc2"]["kernel"] is not None
    m = tw.masks(p, tw.EW(), 0.5, overrides={"fc1/*": 0.9, "conv/*": None})
    assert abs(1 - float(m["fc1"]["kernel"].mean()) - 0.9) < 1e-3
    assert abs(1 - float(m["fc2"]["kernel"].mean()) - 0.5) < 1e-3
    assert m["conv"]["kernel"] is None


@pytest.mark.slow
def test_global_scope_differs_per_layer_and_total_matches():
    p = mlp_params()
    # Layers whose score distributions differ in shape (not only in scale).
    p["fc1"]["kernel"] = p["fc1"]["kernel"] * jnp.linspace(0.05, 3.0, 96)[None, :]
    p["conv"]["kernel"] = p["conv"]["kernel"] ** 3
    # fc2 is 3x larger in scale; normalisation keeps it from hogging the budget, but the
    # layers still end at different sparsities.
    for pattern in (tw.EW(), tw.TW(16), tw.TVW(16), tw.BW(8, 8), tw.VW(16), tw.TEW(16)):
        m = tw.masks(p, pattern, 0.75, scope="global")
        stats = tw.summary(m)
        per_layer = [stats[k]["sparsity"] for k in ("fc1/kernel", "fc2/kernel", "conv/kernel")]
        assert max(per_layer) - min(per_layer) > 0.005, (pattern, per_layer)
        assert abs(stats["total"]["sparsity"] - 0.75) < 0.02, (pattern, stats["total"])
        tw.check_tree(m, pattern)


def test_global_scope_normalises_scale():
    p = mlp_params()
    q = dict(p, fc2={"kernel": 1000.0 * p["fc2"]["kernel"], "bias": p["fc2"]["bias"]})
    a = tw.masks(p, tw.EW(), 0.75, scope="global")
    b = tw.masks(q, tw.EW(), 0.75, scope="global")
    np.testing.assert_array_equal(np.asarray(a["fc2"]["kernel"]), np.asarray(b["fc2"]["kernel"]))


def test_layer_bounds_limit_each_leaf():
    p = mlp_params()
    p["fc2"]["kernel"] = p["fc2"]["kernel"].at[:, :48].multiply(1e-3)  # most of it tiny
    free = tw.summary(tw.masks(p, tw.EW(), 0.6, scope="global"))
    bounded = tw.summary(tw.masks(p, tw.EW(), 0.6, scope="global", layer_bounds=(0.4, 0.7)))
    assert free["fc2/kernel"]["sparsity"] > 0.7
    for k in ("fc1/kernel", "fc2/kernel", "conv/kernel"):
        assert 0.4 - 1e-3 <= bounded[k]["sparsity"] <= 0.7 + 1e-3
    assert abs(bounded["total"]["sparsity"] - 0.6) < 0.01


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("pattern", [tw.EW(), tw.TW(16), tw.TVW(16), tw.NM()])
def test_jit_equals_eager(scope, pattern):
    p = mlp_params(1)
    s = 0.5 if isinstance(pattern, tw.NM) else 0.75
    eager = tw.masks(p, pattern, s, scope=scope)
    jitted = jax.jit(lambda q: tw.masks(q, pattern, s, scope=scope))(p)
    traced_s = jax.jit(lambda q, s: tw.masks(q, pattern, s, scope=scope))(p, jnp.float32(s))
    for other in (jitted, traced_s):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     eager, other)


def test_same_input_same_mask_every_run():
    p = mlp_params(2)
    runs = [tw.masks(p, tw.TVW(16), 0.75, scope="global") for _ in range(3)]
    for r in runs[1:]:
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     runs[0], r)


def test_custom_scores_and_taylor():
    p = mlp_params()
    grads = jax.tree.map(jnp.ones_like, p)
    acc = tw.taylor_accumulate(tw.taylor_init(p), grads, p)
    acc = tw.taylor_accumulate(acc, grads, p)
    np.testing.assert_allclose(np.asarray(acc["fc1"]["kernel"]),
                               2 * np.asarray(p["fc1"]["kernel"]) ** 2, rtol=1e-6)
    m = tw.masks(p, tw.EW(), 0.5, scores=acc)
    m_mag = tw.masks(p, tw.EW(), 0.5)
    # (g*w)^2 with g = 1 ranks like |w|.
    np.testing.assert_array_equal(np.asarray(m["fc1"]["kernel"]),
                                  np.asarray(m_mag["fc1"]["kernel"]))
    inv = jax.tree.map(lambda w: 1.0 / (jnp.abs(w) + 1e-3), p)
    m_inv = tw.masks(p, tw.EW(), 0.5, scores=inv)
    assert not np.array_equal(np.asarray(m_inv["fc1"]["kernel"]), np.asarray(m["fc1"]["kernel"]))


def test_linen_params():
    model = nn.Sequential([nn.Conv(8, (3, 3)), nn.relu, lambda x: x.reshape(x.shape[0], -1),
                           nn.Dense(32), nn.relu, nn.Dense(10)])
    params = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
    m = tw.masks(params, tw.TW(8), 0.75)
    assert m["params"]["layers_3"]["kernel"].shape == (512, 32)
    assert m["params"]["layers_0"]["kernel"].shape == (3, 3, 1, 8)
    assert m["params"]["layers_3"]["bias"] is None
    tw.check_tree(m, tw.TW(8))


def test_nnx_state():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(64, 128, rngs=rngs)
            self.b = nnx.Linear(128, 32, rngs=rngs)

    state = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
    m = tw.masks(state, tw.TVW(32), 0.75, scope="global")
    assert m["a"]["kernel"].get_value().shape == (64, 128)
    assert m["a"]["bias"].get_value() is None
    tw.check_tree(m, tw.TVW(32))
    pruned = tw.apply_masks(state, m)
    assert float(jnp.mean(pruned["a"]["kernel"].get_value() == 0)) >= 0.7
    np.testing.assert_array_equal(np.asarray(pruned["a"]["bias"].get_value()),
                                  np.asarray(state["a"]["bias"].get_value()))


def test_path_strings():
    p = {"layers": [{"kernel": jnp.ones((4, 4))}]}
    flat, _ = jax.tree_util.tree_flatten_with_path(p)
    assert tw.path_str(flat[0][0]) == "layers/0/kernel"


# -- errors ----------------------------------------------------------------------------------
def test_error_nan_scores_names_leaf():
    p = mlp_params()
    s = jax.tree.map(jnp.abs, p)
    s["fc2"]["kernel"] = s["fc2"]["kernel"].at[0, 0].set(jnp.nan)
    with pytest.raises(tw.ScoreError, match="fc2/kernel.*NaN or Inf"):
        tw.masks(p, tw.EW(), 0.5, scores=s)
    s["fc2"]["kernel"] = -jnp.ones((96, 64))
    with pytest.raises(tw.ScoreError, match="fc2/kernel.*non-negative"):
        tw.masks(p, tw.EW(), 0.5, scores=s)


def test_error_mismatched_scores_tree():
    p = mlp_params()
    with pytest.raises(tw.TreeMismatchError, match="structure of params"):
        tw.masks(p, tw.EW(), 0.5, scores={"fc1": p["fc1"]})
    bad = jax.tree.map(jnp.abs, p)
    bad["fc1"]["kernel"] = jnp.ones((3, 3))
    with pytest.raises(tw.TreeMismatchError, match="fc1/kernel.*shape"):
        tw.masks(p, tw.EW(), 0.5, scores=bad)


def test_error_selected_leaf_ndim():
    with pytest.raises(tw.ShapeError, match="fc1/bias.*ndim >= 2"):
        tw.masks(mlp_params(), tw.EW(), 0.5, where=lambda path, x: path.startswith("fc1"))


def test_error_integer_leaf():
    p = {"kernel": jnp.ones((8, 8), jnp.int32)}
    with pytest.raises(tw.DTypeError, match="kernel.*floating"):
        tw.masks(p, tw.EW(), 0.5, where=lambda path, x: True)


def test_error_nm_divisibility_names_leaf():
    p = {"fc": {"kernel": jnp.ones((30, 8))}, "ok": {"kernel": jnp.ones((32, 8))}}
    with pytest.raises(tw.ShapeError, match="fc/kernel.*divisible by m=4"):
        tw.masks(p, tw.NM(), 0.5, where=lambda path, leaf: path == "fc/kernel")
    # the default selection leaves it dense and reports why
    m = tw.masks(p, tw.NM(), 0.5)
    assert m["fc"]["kernel"] is None and m["ok"]["kernel"] is not None
    (skipped,) = tw.selection(p, tw.NM(), 0.5).skipped
    assert skipped.path == "fc/kernel" and "divisible by m=4" in skipped.reason


@pytest.mark.parametrize("kwargs,match", [
    ({"sparsity": 1.2}, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": "0.5"}, "sparsity must be a number"),
    ({"scope": "model"}, "scope must be"),
    ({"overrides": {"fcc1/*": 0.5}}, r"overrides: \['fcc1/\*'\] match no leaf"),
    ({"overrides": [("fc1/*", 0.5)]}, "overrides must be a mapping"),
    ({"layer_bounds": (0.1,)}, "layer_bounds must be a pair"),
    ({"layer_bounds": ("a", "b")}, r"layer_bounds\[0\] must be"),
    ({"layer_bounds": (0.8, 0.2)}, "layer_bounds"),
    ({"overrides": {"fc1/*": 2.0}}, r"fc1/kernel: override sparsity must be in \[0, 1\)"),
])
def test_error_bad_arguments(kwargs, match):
    args = {"sparsity": 0.5, **kwargs}
    with pytest.raises(tw.ConfigError, match=match):
        tw.masks(mlp_params(), tw.EW(), **args)


def test_error_not_a_pattern():
    with pytest.raises(tw.ConfigError, match="pattern must be a tvwjax Pattern"):
        tw.masks(mlp_params(), "TW", 0.5)


def test_errors_are_value_errors():
    assert issubclass(tw.ConfigError, ValueError) and issubclass(tw.DTypeError, TypeError)


# -- the documented rule for traced sparsities (Pattern.effective_sparsity) ------------------
@pytest.mark.parametrize("pattern", [tw.EW(), tw.BW(4, 4), tw.VW(4),
                                     tw.TW(tile=4), tw.TVW(tile=4)],
                         ids=lambda p: p.name)
def test_traced_out_of_range_sparsity_follows_the_documented_rule(pattern):
    """Eager raises; under jit a traced value is read, not raised on: NaN and negatives are
    dense, 1 or more keep each leaf's minimum (never an emptied leaf)."""
    rng = np.random.default_rng(0)
    params = {"a": {"kernel": jnp.asarray(rng.standard_normal((16, 12)), jnp.float32)}}
    traced = jax.jit(lambda s: tw.masks(params, pattern, s))
    for bad in (1.0, 1.5, float("nan"), -0.1):
        with pytest.raises(tw.ConfigError, match="sparsity"):
            tw.masks(params, pattern, bad)
    for bad in (float("nan"), -0.1, -5.0):
        assert bool(traced(bad)["a"]["kernel"].all()), bad
    top = traced(1.0)["a"]["kernel"]
    np.testing.assert_array_equal(top, traced(1.5)["a"]["kernel"])
    np.testing.assert_array_equal(top, traced(np.float32(np.inf))["a"]["kernel"])
    assert 0 < int(top.sum()) < top.size
    if isinstance(pattern, tw.TW):  # min_rows=1: every tile keeps its best row
        assert bool(top.any(axis=0).all())
    if isinstance(pattern, tw.TVW | tw.NM):  # below the floor reads as the floor
        np.testing.assert_array_equal(traced(0.2)["a"]["kernel"],
                                      tw.masks(params, pattern, pattern.floor)["a"]["kernel"])


def test_nonzero_sparsity_never_empties_a_leaf():
    """A selected leaf at any valid sparsity keeps at least one unit, also when the budget is
    smaller than one BW block, one VW vector's share or one TW row segment."""
    w = jnp.asarray(np.random.default_rng(1).standard_normal((128, 10)), jnp.float32)
    for pattern, s in [(tw.BW(64, 64), 0.75), (tw.EW(), 0.999), (tw.VW(16), 0.99),
                       (tw.TW(tile=8, min_rows=0), 0.999)]:
        m = tw.masks({"k": {"kernel": w}}, pattern, s)["k"]["kernel"]
        assert int(m.sum()) >= 1, pattern
        tw.check(m, pattern, s)


def test_global_scope_checks_its_target():
    rng = np.random.default_rng(2)
    params = {n: {"kernel": jnp.asarray(rng.standard_normal((32, 16)), jnp.float32)}
              for n in "ab"}
    with pytest.raises(tw.ConfigError, match="at least 0.5"):
        tw.masks(params, tw.TVW(tile=8), 0.3, scope="global")
    with pytest.raises(tw.ConfigError, match="layer_bounds .* exclude the target"):
        tw.masks(params, tw.EW(), 0.3, scope="global", layer_bounds=(0.5, 0.9))
    with pytest.raises(tw.ConfigError, match="layer_bounds .* exclude the target"):
        tw.masks(params, tw.EW(), 0.8, scope="global", layer_bounds=(0.1, 0.6))
    m = tw.masks(params, tw.EW(), 0.6, scope="global", layer_bounds=(0.5, 0.7))
    for leaf in jax.tree.leaves(m):
        assert 0.5 - 1e-6 <= 1 - float(leaf.mean()) <= 0.7 + 1e-6


def test_layer_scope_compiles_once_per_leaf_shape_not_per_tree():
    """Outside a trace, independent leaves run one compiled computation per distinct leaf
    (a deep stack of same-shape layers compiles a few small programs, not one that grows
    with the depth); the masks equal the one-program masks under jit, and global scope
    (coupled leaves) still selects over the whole tree at once."""
    from tvwjax import masking

    keys = jax.random.split(jax.random.key(3), 6)
    shapes = [(32, 48), (48, 32), (32, 32)]
    p = {f"l{i}": {"kernel": jax.random.normal(k, shapes[i % 3])} for i, k in enumerate(keys)}
    masking._core.clear_cache()
    eager = tw.masks(p, tw.EW(), 0.75)
    assert masking._core._cache_size() == len(shapes)
    traced = jax.jit(lambda q: tw.masks(q, tw.EW(), 0.75))(p)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(traced), strict=True):
        np.testing.assert_array_equal(a, b)
    masking._core.clear_cache()
    g = tw.masks(p, tw.EW(), 0.75, scope="global")
    assert masking._core._cache_size() == 1
    kept = sum(int(m.sum()) for m in jax.tree.leaves(g))
    total = sum(m.size for m in jax.tree.leaves(g))
    assert kept == round(0.25 * total)


def _count_primitive(jaxpr, name: str) -> int:
    """Equations of primitive ``name`` in a (closed) jaxpr, counted in every call of every
    nested jaxpr (the printed form shows a repeated sub-jaxpr once)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == name
        for v in eqn.params.values():
            for sub in v if isinstance(v, tuple | list) else (v,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    n += _count_primitive(sub, name)
    return n


def test_a_leaf_that_is_a_small_share_of_the_tree_is_selected_in_one_piece():
    """``masks`` tells each leaf its share of the selected elements: TVW cuts a leaf into
    pieces (unrolled code, compiled as long as a whole selection each) only when the leaf is
    a large part of what is selected, where the pieces bound the temporary memory. Sixteen
    65k-element leaves: one piece each (only the barriers chaining the leaves); two of them:
    two pieces each. The masks are the lone-matrix ones either way."""
    keys = jax.random.split(jax.random.key(5), 16)
    many = {f"l{i}": {"kernel": jnp.abs(jax.random.normal(k, (128, 512)))}
            for i, k in enumerate(keys)}
    two = {k: many[k] for k in ("l0", "l1")}
    pat = tw.TVW(tile=64)

    def barriers(tree):
        jaxpr = jax.make_jaxpr(lambda q: tw.masks(q, pat, 0.75))(tree)
        return _count_primitive(jaxpr, "optimization_barrier")

    assert barriers(many) == 15      # 16 leaves chained, no piece inside any
    assert barriers(two) == 1 + 2    # 2 leaves chained, each in 2 pieces
    got = jax.jit(lambda q: tw.masks(q, pat, 0.75))(two)
    for name, leaf in two.items():
        np.testing.assert_array_equal(got[name]["kernel"], pat.mask(leaf["kernel"], 0.75))
