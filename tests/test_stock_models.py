"""Models written with stock Flax (Linen and NNX): GEMM views from the modules, safe defaults,
the selection report. Masks are checked by the independent validator in each kernel's real
GEMM view (attention query/key/value ``(in, heads*head_dim)``, output
``(heads*head_dim, out)``, conv ``(kh*kw*Cin, Cout)``)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_patterns import kept_count

import tvwjax
from tvwjax.errors import PatternViolationError, ShapeError


class ViT(nn.Module):
    """A small ViT-style model: a 7x7 stem conv (K = 147), a strided patch conv, one
    attention block with LayerNorm, an MLP with biases and a 10-class head."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(32, (7, 7), strides=(2, 2), name="stem")(x)
        x = nn.Conv(64, (2, 2), strides=(2, 2), name="patch")(x)
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        x = x + nn.MultiHeadDotProductAttention(num_heads=4, name="attn")(nn.LayerNorm()(x))
        y = nn.Dense(128, name="fc1")(nn.LayerNorm()(x))
        x = x + nn.Dense(64, name="fc2")(nn.gelu(y))
        return nn.Dense(10, name="head")(x.mean(1))


X = jnp.ones((2, 16, 16, 3))
WANT_VIEWS = {"stem/kernel": 3, "patch/kernel": 3, "attn/query/kernel": 1,
              "attn/key/kernel": 1, "attn/value/kernel": 1, "attn/out/kernel": 2,
              "fc1/kernel": 1, "fc2/kernel": 1, "head/kernel": 1}


@pytest.fixture(scope="module")
def vit():
    model = ViT()
    params = model.init(jax.random.key(0), X)["params"]
    # uneven column scales: a magnitude criterion would starve some output features
    params = jax.tree_util.tree_map_with_path(
        lambda kp, p: p * (1 + jnp.arange(p.shape[-1]) ** 2) if p.ndim >= 2 else p, params)
    return model, params, tvwjax.gemm_views(model, X)


def _gemm(mask, n_in):
    m = np.asarray(mask)
    return m.reshape(int(np.prod(m.shape[:n_in])), -1)


def test_linen_gemm_views_come_from_the_modules(vit):
    _, _, views = vit
    assert views == WANT_VIEWS


CASES = [(tvwjax.TW(tile=16), 0.5), (tvwjax.TW(tile=16), 0.75), (tvwjax.TVW(tile=16), 0.5),
         (tvwjax.TVW(tile=16), 0.75), (tvwjax.NM(), 0.5), (tvwjax.EW(), 0.5),
         (tvwjax.EW(), 0.75)]


@pytest.mark.parametrize("pattern,s", CASES, ids=lambda v: repr(v)[:20])
def test_masks_follow_the_pattern_in_the_real_gemm_view(vit, pattern, s):
    _, params, views = vit
    m = tvwjax.masks(params, pattern, s, views=views)
    flat = {lp.path: lp for lp in tvwjax.selection(params, pattern, s, views=views)}
    for path, n_in in WANT_VIEWS.items():
        leaf_mask = m
        for key in path.split("/"):
            leaf_mask = leaf_mask[key]
        if path == "stem/kernel" and isinstance(pattern, tvwjax.NM):
            assert leaf_mask is None and not flat[path].pruned  # K = 147: skipped
            continue
        g = _gemm(leaf_mask, n_in)
        assert flat[path].view == g.shape
        tvwjax.check(g, pattern, s, name=path)  # the independent validator, real view
        if isinstance(pattern, tvwjax.EW | tvwjax.NM):  # exact per leaf in layer scope
            assert int(g.sum()) == kept_count(s, g.size), path
        if isinstance(pattern, tvwjax.TW):  # TW-1D / TVW: no output feature left empty
            assert g.any(axis=0).all(), path
    tvwjax.check_tree(m, pattern, s, views=views)


def test_nm_on_attention_is_along_the_real_contraction_axis(vit):
    _, params, views = vit
    q = tvwjax.masks(params, tvwjax.NM(), 0.5, views=views)["attn"]["query"]["kernel"]
    tvwjax.check(_gemm(q, 1), tvwjax.NM(), 0.5)  # 2 of every 4 input features
    with pytest.raises(PatternViolationError):  # not "2 of every 4 heads" of the old view
        tvwjax.check(_gemm(q, 2), tvwjax.NM(), 0.5)


def test_without_views_attention_is_skipped_and_reported_not_misread(vit):
    _, params, _ = vit
    m = tvwjax.masks(params, tvwjax.TVW(tile=16), 0.75)
    assert m["attn"]["query"]["kernel"] is None and m["attn"]["out"]["kernel"] is None
    assert m["fc1"]["kernel"] is not None and m["stem"]["kernel"] is not None
    report = {lp.path: lp for lp in tvwjax.selection(params, tvwjax.TVW(tile=16), 0.75)}
    assert "views=" in report["attn/query/kernel"].reason
    assert "attn/query/kernel" in str(tvwjax.selection(params, tvwjax.TVW(tile=16), 0.75))
    with pytest.raises(ShapeError, match=r"attn/query/kernel: GEMM layout.*views="):
        tvwjax.masks(params, tvwjax.TVW(tile=16), 0.75,
                     where=lambda p, leaf: p == "attn/query/kernel")


def test_two_four_skips_a_stem_conv_with_k_147_and_says_why(vit):
    _, params, views = vit
    sel = tvwjax.selection(params, tvwjax.NM(), 0.5, views=views)
    stem = next(lp for lp in sel.skipped if lp.path == "stem/kernel")
    assert stem.view == (147, 32) and "divisible by m=4" in stem.reason
    assert {lp.path for lp in sel.pruned} == set(WANT_VIEWS) - {"stem/kernel"}
    with pytest.raises(ShapeError, match="stem/kernel.*divisible by m=4"):
        tvwjax.masks(params, tvwjax.NM(), 0.5, where=lambda p, leaf: p == "stem/kernel")


@pytest.mark.parametrize("pattern", [tvwjax.TW(tile=4), tvwjax.TVW(tile=4)],
                         ids=lambda p: p.name)
@pytest.mark.parametrize("s", [0.75, 0.9])
def test_default_tw_keeps_a_weight_in_every_output_feature(pattern, s):
    # one dominant column: a plain global ranking of row segments would empty other tiles
    w = jax.random.normal(jax.random.key(1), (64, 40)) * (1 + jnp.arange(40) ** 3)
    m = np.asarray(pattern.mask(jnp.abs(w), s))
    tvwjax.check(m, pattern, s)
    assert m.any(axis=0).all()
    assert abs((1 - m.mean()) - s) < 0.03
    bare = dataclasses.replace(pattern, min_rows=0)
    assert not np.asarray(bare.mask(jnp.abs(w), s)).any(axis=0).all()  # what min_rows prevents
    two_d = dataclasses.replace(pattern, column_share=0.5)  # TW-2D: still available, explicit
    assert not np.asarray(two_d.mask(jnp.abs(w), s)).any(axis=0).all()


def test_defaults_are_the_1d_variants():
    assert tvwjax.TW().column_share == 0.0 and tvwjax.TVW().column_share == 0.0
    assert tvwjax.TW().min_rows == 1


def test_prune_with_views_trains_a_stock_linen_model(vit):
    model, params, views = vit
    pattern = tvwjax.TVW(tile=16)
    tx = optax.chain(optax.adam(1e-3), tvwjax.prune(
        pattern, tvwjax.Polynomial(0.75, 0, 4, frequency=2), views=views))
    state = tx.init(params)
    x = jax.random.normal(jax.random.key(2), (4, 16, 16, 3))
    y = jax.nn.one_hot(jnp.arange(4) % 10, 10)

    @jax.jit
    def step(p, st):
        g = jax.grad(lambda q: optax.softmax_cross_entropy(model.apply({"params": q}, x),
                                                           y).mean())(p)
        u, st = tx.update(g, st, p)
        return optax.apply_updates(p, u), st

    for _ in range(5):
        params, state = step(params, state)
    m = tvwjax.get_masks(state)
    tvwjax.check_tree(m, pattern, 0.75, views=views)
    zeros = jax.tree.map(lambda mk, p: None if mk is None else bool(jnp.all(p[~mk] == 0)),
                         m, params, is_leaf=lambda v: v is None)
    assert all(jax.tree.leaves(zeros))
    for path, n_in in WANT_VIEWS.items():
        mk = m
        for key in path.split("/"):
            mk = mk[key]
        assert _gemm(mk, n_in).any(axis=0).all(), path


def test_compress_params_uses_the_view(vit):
    _, params, views = vit
    pattern = tvwjax.TW(tile=16)
    m = tvwjax.masks(params, pattern, 0.75, views=views)
    small = tvwjax.nn.compress_params(params, m, pattern, views=views)
    q = small["attn"]["query"]["kernel"]
    assert isinstance(q, tvwjax.TileWise) and q.shape == (64, 64)
    dense = np.asarray(tvwjax.apply_masks(params, m)["attn"]["query"]["kernel"])
    np.testing.assert_array_equal(np.asarray(tvwjax.decompress(q)), dense.reshape(64, 64))
    with pytest.raises(tvwjax.ConfigError, match=r"attn/\w+/kernel.*views="):
        tvwjax.nn.compress_params(params, m, pattern)


class NNXNet(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 32, (3, 3), strides=2, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=32, qkv_features=32,
                                           decode=False, rngs=rngs)
        self.norm = nnx.LayerNorm(32, rngs=rngs)
        self.head = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        h = self.conv(x)
        h = h.reshape(h.shape[0], -1, h.shape[-1])
        h = h + self.attn(self.norm(h))
        return self.head(h.mean(1))


@pytest.mark.parametrize("pattern,s", [(tvwjax.TVW(tile=8), 0.75), (tvwjax.NM(), 0.5),
                                       (tvwjax.EW(), 0.5)], ids=lambda v: repr(v)[:12])
def test_nnx_stock_model_views_and_masks(pattern, s):
    model = NNXNet(nnx.Rngs(0))
    views = tvwjax.gemm_views(model)
    assert views == {"conv/kernel": 3, "attn/query/kernel": 1, "attn/key/kernel": 1,
                     "attn/value/kernel": 1, "attn/out/kernel": 2, "head/kernel": 1}
    state = nnx.state(model, nnx.Param)
    m = tvwjax.masks(state, pattern, s, views=views)
    tvwjax.check_tree(m, pattern, s, views=views)
    report = tvwjax.selection(state, pattern, s, views=views)
    assert {lp.path for lp in report.pruned} == set(views) - (
        {"conv/kernel"} if isinstance(pattern, tvwjax.NM) else set())  # K = 27 for 2:4
    nnx.update(model, tvwjax.apply_masks(state, m))
    assert model(jnp.ones((2, 8, 8, 3))).shape == (2, 10)


def test_einsum_views():
    class E(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Einsum((8, 4, 6), "bti,ihd->bthd", name="proj")(x)

    assert tvwjax.gemm_views(E(), jnp.ones((2, 3, 8))) == {"proj/kernel": 1}


def test_none_leaves_round_trip():
    params = {"a": {"kernel": jax.random.normal(jax.random.key(0), (32, 16)), "bias": None}}
    m = tvwjax.masks(params, tvwjax.TW(tile=8), 0.5)
    assert m["a"]["bias"] is None
    out = tvwjax.apply_masks(params, m)
    assert out["a"]["bias"] is None
    small = tvwjax.nn.compress_params(params, m, tvwjax.TW(tile=8))
    assert isinstance(small["a"]["kernel"], tvwjax.TileWise) and small["a"]["bias"] is None


@pytest.mark.parametrize("pattern,s", [(tvwjax.TW(tile=16), 0.75), (tvwjax.TVW(tile=16), 0.75),
                                       (tvwjax.NM(), 0.5)], ids=lambda v: repr(v)[:12])
def test_linen_model_runs_compressed_unchanged(vit, pattern, s):
    """Every pruned matrix compressed (attention and conv included); the user's own model
    class under jit equals masked dense."""
    model, params, views = vit
    m = tvwjax.masks(params, pattern, s, views=views)
    small = tvwjax.nn.compress_params(params, m, pattern, views=views)
    pruned = {lp.path for lp in tvwjax.selection(params, pattern, s, views=views).pruned}
    compressed = {path for path, leaf in tvwjax._tree.leaves_with_paths(
        small, none_leaves=False)[0] if path.endswith("/values")}
    assert {p.removesuffix("/values") for p in compressed} == pruned
    x = jax.random.normal(jax.random.key(3), (2, 16, 16, 3))
    ref = model.apply({"params": tvwjax.apply_masks(params, m)}, x)
    with tvwjax.nn.compressed_kernels():
        y = jax.jit(model.apply)({"params": small}, x)
    scale = float(jnp.max(jnp.abs(ref)))
    np.testing.assert_allclose(np.asarray(y) / scale, np.asarray(ref) / scale, atol=1e-5)


def test_linen_compressed_on_the_interpret_backend(vit):
    model, params, views = vit
    pattern = tvwjax.TVW(tile=16)
    keep_small = {"fc1/kernel": None, "fc2/kernel": None}  # interpret mode is slow: every
    # other layer kind (conv, attention, dense head) runs its Pallas kernel
    m = tvwjax.masks(params, pattern, 0.75, views=views, overrides=keep_small)
    small = tvwjax.nn.compress_params(params, m, pattern, views=views)
    x = jax.random.normal(jax.random.key(4), (1, 16, 16, 3))
    ref = model.apply({"params": tvwjax.apply_masks(params, m)}, x)
    with tvwjax.nn.compressed_kernels(backend="interpret"):
        y = model.apply({"params": small}, x)
    scale = float(jnp.max(jnp.abs(ref)))
    np.testing.assert_allclose(np.asarray(y) / scale, np.asarray(ref) / scale, atol=1e-5)


def test_nnx_model_compressed_in_place_runs_under_nnx_jit():
    model = NNXNet(nnx.Rngs(0))
    views = tvwjax.gemm_views(model)
    pattern = tvwjax.TW(tile=8)
    state = nnx.state(model, nnx.Param)
    m = tvwjax.masks(state, pattern, 0.75, views=views)
    nnx.update(model, tvwjax.apply_masks(state, m))
    x = jax.random.normal(jax.random.key(5), (2, 8, 8, 3))
    ref = model(x)
    tvwjax.nn.compress_model(model, m, pattern, views=views)
    assert isinstance(model.attn.query.kernel.get_value(), tvwjax.TileWise)
    assert isinstance(model.conv.kernel.get_value(), tvwjax.TileWise)
    y = nnx.jit(lambda mod, v: mod(v))(model, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-5)


def test_compressed_kernel_in_an_unsupported_layer_says_so():
    class E(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Einsum((8, 16), "bi,ij->bj", name="proj")(x)

    model, x = E(), jnp.ones((2, 8))
    params = model.init(jax.random.key(0), x)["params"]
    views = tvwjax.gemm_views(model, x)
    m = tvwjax.masks(params, tvwjax.TW(tile=8), 0.5, views=views)
    small = tvwjax.nn.compress_params(params, m, tvwjax.TW(tile=8), views=views)
    with pytest.raises(tvwjax.ConfigError, match="proj/kernel.*Einsum"):
        with tvwjax.nn.compressed_kernels():
            model.apply({"params": small}, x)


@pytest.mark.slow
def test_defaults_keep_toy_accuracy_within_two_points_of_dense():
    """A stock ViT-style model on the digits: dense, then TW 75% with every default (1-D,
    all kernels, layer scope) through the wrapper form."""
    from examples.own_model import dense_then_pruned

    r = dense_then_pruned(tvwjax.TW(tile=16), 0.75, dense_steps=300, prune_steps=200,
                          finetune_steps=100)
    tvwjax.check_tree(r["masks"], tvwjax.TW(tile=16), 0.75, views=r["views"])
    for path, n_in in r["views"].items():
        mk = r["masks"]
        for key in path.split("/"):
            mk = mk[key]
        assert _gemm(mk, n_in).any(axis=0).all(), path  # every output feature keeps weights
    assert r["dense"] > 0.85
    assert r["pruned"] >= r["dense"] - 0.02, (r["dense"], r["pruned"])


class WithBatchNormAndBoxes(nn.Module):
    """BatchNorm batch_stats and logically partitioned (boxed) kernels."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        init = nn.with_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
        x = nn.Conv(16, (3, 3), strides=(2, 2), kernel_init=init, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        x = nn.Dense(32, kernel_init=init, name="fc")(nn.relu(x).reshape(x.shape[0], -1))
        return nn.Dense(10, name="head")(x)


def test_batch_stats_and_boxed_params():
    model, x = WithBatchNormAndBoxes(), jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    variables = model.init(jax.random.key(1), x)
    views = tvwjax.gemm_views(model, x)
    assert views == {"conv/kernel": 3, "fc/kernel": 1, "head/kernel": 1}
    params, stats = variables["params"], variables["batch_stats"]
    assert isinstance(params["fc"]["kernel"], nn.Partitioned)
    pattern = tvwjax.TVW(tile=8)
    tx = tvwjax.pruned(optax.adam(1e-2), pattern, tvwjax.OneShot(0.75), views=views)
    state = tx.init(params)

    @jax.jit
    def step(p, bs, st):
        def loss(q):
            out, upd = model.apply({"params": q, "batch_stats": bs}, x, train=True,
                                   mutable=["batch_stats"])
            return jnp.mean(out ** 2), upd["batch_stats"]
        g, bs = jax.grad(loss, has_aux=True)(p)
        u, st = tx.update(g, st, p)
        return optax.apply_updates(p, u), bs, st

    for _ in range(3):
        params, stats, state = step(params, stats, state)
    m = tvwjax.get_masks(state)
    tvwjax.check_tree(m, pattern, 0.75, views=views)
    assert isinstance(params["fc"]["kernel"], nn.Partitioned)
    kernel = params["fc"]["kernel"].unbox()
    assert bool(jnp.all(kernel[~m["fc"]["kernel"].unbox()] == 0))
    small = tvwjax.nn.compress_params(params, m, pattern, views=views)
    ref = model.apply({"params": params, "batch_stats": stats}, x)
    with tvwjax.nn.compressed_kernels():
        y = jax.jit(lambda p, v: model.apply({"params": p, "batch_stats": stats}, v))(small, x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-5)


def test_one_shot_calibrates_and_refits_attention_in_its_view():
    from tvwjax.calibration import collect, linen_inputs

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = x + nn.MultiHeadDotProductAttention(num_heads=4, name="attn")(x)
            return nn.Dense(10, name="head")(x.mean(1))

    model, x = Block(), jax.random.normal(jax.random.key(0), (4, 12, 32))
    variables = model.init(jax.random.key(1), x)
    views = tvwjax.gemm_views(model, x)
    batches = [(jax.random.normal(jax.random.key(i), (8, 12, 32)),) for i in range(2)]
    stats = collect(linen_inputs(model), variables, batches)
    assert stats["params/attn/query/kernel"].sumsq.shape == (32,)   # K = in
    assert stats["params/attn/out/kernel"].sumsq.shape == (32,)     # K = heads * head_dim
    pattern = tvwjax.TW(tile=8)
    _, m, report = tvwjax.one_shot(linen_inputs(model), variables, pattern, 0.5, batches,
                                   views=views)
    tvwjax.check_tree(m, pattern, 0.5, views=views)
    assert {p.removeprefix("params/") for p in report} == set(views)
    for e in report.values():
        assert e["reconstructed"] <= e["masked"] + 1e-6
