"""A model written with stock Flax, pruned without rewriting it (notebook 04 and its test).

``TinyViT`` is an ordinary Linen model: a strided patch conv, one pre-norm attention block
(``nn.MultiHeadDotProductAttention``), an MLP with biases and a 10-class head, on the 8x8
scikit-learn digits. :func:`train` trains it dense and then with
``tvwjax.pruned(adam, pattern, Polynomial(...), views=tvwjax.gemm_views(model, x))``, all
with tvwjax's defaults (TW-1D / TVW, every selected kernel, layer scope).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import tvwjax


class TinyViT(nn.Module):
    """Patch conv (2x2, stride 2: 16 tokens of 64) with learned positions, one attention
    block, MLP, head."""

    width: int = 64
    heads: int = 4

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.width, (2, 2), strides=(2, 2), name="patch")(x[..., None])
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        x = x + self.param("pos", nn.initializers.normal(0.02), (h * w, c))
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attn")(
            nn.LayerNorm(name="ln1")(x))
        y = nn.Dense(2 * self.width, name="fc1")(nn.LayerNorm(name="ln2")(x))
        x = x + nn.Dense(self.width, name="fc2")(nn.gelu(y))
        return nn.Dense(10, name="head")(nn.LayerNorm(name="ln3")(x).mean(axis=1))


def load_digits(seed: int = 0) -> tuple[np.ndarray, ...]:
    """sklearn's 8x8 digits scaled to [0, 1]: ``(x_train, x_test, y_train, y_test)``."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    d = _load()
    x = (d.images / 16.0).astype(np.float32)
    return tuple(train_test_split(x, d.target, test_size=0.25, random_state=seed,
                                  stratify=d.target))


def accuracy(model: nn.Module, params: Any, x: np.ndarray, y: np.ndarray) -> float:
    logits = jax.jit(model.apply)({"params": params}, jnp.asarray(x))
    return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y)))


def train(model: nn.Module, params: Any, tx: optax.GradientTransformation, x: np.ndarray,
          y: np.ndarray, steps: int, batch: int = 64, seed: int = 0) -> tuple[Any, Any]:
    """``steps`` of minibatch cross-entropy training; returns ``(params, opt_state)``."""
    state = tx.init(params)

    @jax.jit
    def step(p, st, xb, yb):
        def loss(q):
            return optax.softmax_cross_entropy_with_integer_labels(
                model.apply({"params": q}, xb), yb).mean()
        g = jax.grad(loss)(p)
        u, st = tx.update(g, st, p)
        return optax.apply_updates(p, u), st

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(x), batch)
        params, state = step(params, state, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
    return params, state


def dense_then_pruned(pattern: tvwjax.Pattern, sparsity: float, *, dense_steps: int,
                      prune_steps: int, finetune_steps: int, seed: int = 0) -> dict:
    """Train TinyViT dense, then prune it with the defaults; returns the models, masks,
    views and accuracies (``"dense"`` and ``"pruned"``)."""
    xtr, xte, ytr, yte = load_digits(seed)
    model = TinyViT()
    params = model.init(jax.random.key(seed), jnp.asarray(xtr[:2]))["params"]
    views = tvwjax.gemm_views(model, jnp.asarray(xtr[:2]))
    dense, _ = train(model, params, optax.adam(3e-3), xtr, ytr, dense_steps, seed=seed)
    sched = tvwjax.Polynomial(sparsity, 0, prune_steps, frequency=max(1, prune_steps // 10))
    tx = tvwjax.pruned(optax.adam(1e-3), pattern, sched, views=views)
    pruned, state = train(model, dense, tx, xtr, ytr, prune_steps + finetune_steps,
                          seed=seed + 1)
    return {"model": model, "views": views, "dense_params": dense, "params": pruned,
            "masks": tvwjax.get_masks(state), "x_test": xte, "y_test": yte,
            "dense": accuracy(model, dense, xte, yte),
            "pruned": accuracy(model, pruned, xte, yte)}


__all__ = ["TinyViT", "accuracy", "dense_then_pruned", "load_digits", "train"]
