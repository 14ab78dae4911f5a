"""The scikit-learn digits task: data, a small CNN, a jitted training loop and evaluation.

Shared by the demo (:mod:`tvwjax.demo`), the notebooks in ``examples/`` and
``examples/digits.py`` (the accuracy table). Needs scikit-learn (the ``examples`` extra);
the 1797 8x8 images ship with it, nothing is downloaded.

* :func:`load_data` -- a fixed, stratified train/test split;
* :class:`CNN` -- conv 3x3 -> 2x2 average pool -> conv 3x3 -> dense -> dense, widths
  configurable (the defaults are the table's small CNN; the demo uses a wider one so that
  sparse inference has something to win, see :data:`WIDE`). Every layer multiplies through
  :func:`tvwjax.matmul`, so its kernels may be dense arrays (training) or compressed weights
  from :func:`tvwjax.nn.compress_params` (inference) -- the same module serves both;
* :func:`make_train_fn` -- a jitted ``lax.scan`` training loop for any Optax optimizer
  (e.g. one chained with :func:`tvwjax.prune`), :func:`pruning_tx` builds that chain;
* :func:`evaluate`, :func:`pruned_sparsity`.

The pruned layers are ``conv2`` (viewed as its ``(9*conv1, conv2)`` im2col matrix) and
``fc1`` (``(16*conv2, hidden)``): 99% of the weights. ``conv1`` (K = 9) and the classifier
``fc2`` stay dense, as is usual.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tvwjax.formats import CompressedWeight
from tvwjax.matmul import matmul
from tvwjax.patterns import Pattern
from tvwjax.schedules import Polynomial
from tvwjax.transform import prune

PyTree = Any
#: Names of the layers the recipes prune.
PRUNED = ("conv2", "fc1")


# -- data ------------------------------------------------------------------------------------
def load_data(seed: int = 0, test_fraction: float = 0.25
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as NHWC float32 images in ``[0, 1]``, split with a fixed seed.

    Args:
      seed: seed of the stratified train/test split (the tables always use 0).
      test_fraction: share of the 1797 images held out.

    Returns:
      ``(x_train, y_train, x_test, y_test)``; images ``(n, 8, 8, 1)``, labels int32.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, random_state=seed,
                                          stratify=y)
    return xtr, ytr, xte, yte


def batches(x: np.ndarray, y: np.ndarray, steps: int, batch: int, seed: int
            ) -> tuple[jax.Array, jax.Array]:
    """``steps`` shuffled mini-batches (epochs reshuffled with ``seed``), stacked.

    Returns:
      ``(xs, ys)`` of shapes ``(steps, batch, 8, 8, 1)`` and ``(steps, batch)``.
    """
    rng = np.random.default_rng(seed)
    need = steps * batch
    order = np.concatenate([rng.permutation(len(x)) for _ in range(need // len(x) + 1)])[:need]
    idx = order.reshape(steps, batch)
    return jnp.asarray(x[idx]), jnp.asarray(y[idx])


# -- model -----------------------------------------------------------------------------------
def _existing_or_new(module: nn.Module, name: str, init: Callable, shape: tuple[int, ...]
                     ) -> Any:
    """The variable ``name`` if the params already hold it (possibly compressed), else a new
    param: a compressed kernel has no array shape for ``self.param`` to check."""
    if module.has_variable("params", name):
        return module.get_variable("params", name)
    return module.param(name, init, shape)


class Conv3x3(nn.Module):
    """3x3 'SAME' convolution computed as its im2col matmul.

    The kernel has Flax's conv layout ``(3, 3, Cin, Cout)``; the layer multiplies the
    ``(B, H, W, 9*Cin)`` patches by its ``(9*Cin, Cout)`` view -- exactly the matrix the
    masks are built on -- through :func:`tvwjax.matmul`, so the kernel may also be a
    compressed ``(9*Cin, Cout)`` weight. (On CPU, ``nn.Conv`` inside ``lax.scan`` is ~10x
    slower than this.)
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(B, H, W, Cin) -> (B, H, W, features)``."""
        cin = x.shape[-1]
        kernel = _existing_or_new(self, "kernel", nn.initializers.lecun_normal(),
                                  (3, 3, cin, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        h, w = x.shape[1:3]
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        cols = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)],
                               axis=-1)
        if not isinstance(kernel, CompressedWeight):
            kernel = kernel.reshape(9 * cin, self.features)
        return matmul(cols, kernel) + bias


class Linear(nn.Module):
    """``nn.Dense`` (same params and init) multiplying through :func:`tvwjax.matmul`.

    A dense kernel takes the faster XLA form for the batch size (a fair dense baseline), a
    compressed one the tile path. :class:`tvwjax.nn.SparseDense` is the general drop-in;
    this one keeps the dense baseline of the speed comparisons honest at small batches.
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(..., K) -> (..., features)``."""
        kernel = _existing_or_new(self, "kernel", nn.initializers.lecun_normal(),
                                  (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return matmul(x, kernel) + bias


class CNN(nn.Module):
    """conv1 3x3x1->``conv1``, 2x2 average pool, conv2 3x3->``conv2``, fc1 -> ``hidden``,
    fc2 -> 10. Kernels may be dense or compressed (see :class:`Conv3x3`, :class:`Linear`)."""

    conv1: int = 32
    conv2: int = 64
    hidden: int = 128

    def pruned_layers(self) -> dict[str, tuple[int, int]]:
        """``{layer: (K, N)}``: the matrix views of the pruned kernels."""
        return {"conv2": (9 * self.conv1, self.conv2), "fc1": (16 * self.conv2, self.hidden)}

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(B, 8, 8, 1)`` images -> ``(B, 10)`` logits."""
        x = nn.relu(Conv3x3(self.conv1, name="conv1")(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(Conv3x3(self.conv2, name="conv2")(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(Linear(self.hidden, name="fc1")(x))
        return Linear(10, name="fc2")(x)


#: The accuracy table's CNN: conv2 288x64, fc1 1024x128 (about 150k weights).
SMALL_CNN = CNN()
#: The demo's CNN: conv2 288x256, fc1 4096x1024 (about 4.3M weights), wide enough that the
#: weight bytes, which sparsity saves, dominate inference at small batches on a CPU.
WIDE = CNN(conv1=32, conv2=256, hidden=1024)


def init_params(seed: int, model: CNN = SMALL_CNN) -> PyTree:
    """Initial parameters of ``model`` for ``seed``."""
    return model.init(jax.random.key(seed), jnp.zeros((1, 8, 8, 1)))["params"]


def loss_fn(params: PyTree, x: jax.Array, y: jax.Array, model: CNN = SMALL_CNN) -> jax.Array:
    """Mean softmax cross-entropy of ``model`` on a batch."""
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def make_train_fn(tx: optax.GradientTransformation, model: CNN = SMALL_CNN
                  ) -> Callable[[PyTree, PyTree, jax.Array, jax.Array],
                                tuple[PyTree, PyTree, jax.Array]]:
    """A jitted training loop ``train(params, opt_state, xs, ys)`` for optimizer ``tx``.

    ``xs`` is ``(steps, batch, 8, 8, 1)``, ``ys`` is ``(steps, batch)``; the loop is a
    ``lax.scan`` over the steps. Returns the final params, optimizer state and the
    per-step losses. Call it on consecutive chunks of batches to report progress: the
    optimizer state (and with it the pruning schedule's step count) carries over.
    """

    def step(carry, batch):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch, model)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    @jax.jit
    def train(params, opt_state, xs, ys):
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (xs, ys))
        return params, opt_state, losses

    return train


@functools.cache
def logits_fn(model: CNN = SMALL_CNN) -> Callable[[PyTree, jax.Array], jax.Array]:
    """The jitted ``logits(params, x)`` of ``model`` (params dense or compressed)."""
    return jax.jit(lambda params, x: model.apply({"params": params}, x))


def evaluate(params: PyTree, x: np.ndarray, y: np.ndarray, model: CNN = SMALL_CNN) -> float:
    """Top-1 accuracy of ``model`` with ``params`` (dense or compressed) on ``(x, y)``."""
    logits = logits_fn(model)(params, jnp.asarray(x))
    return float(np.mean(np.argmax(np.asarray(logits), -1) == y))


def pruned_sparsity(params: PyTree, layers: tuple[str, ...] = PRUNED) -> float:
    """Fraction of exactly-zero weights over the dense kernels of ``layers``."""
    zeros = sum(int(jnp.sum(params[n]["kernel"] == 0)) for n in layers)
    total = sum(params[n]["kernel"].size for n in layers)
    return zeros / total


# -- recipe ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Budget:
    """Training budget: dense pretraining, then gradual pruning and a fine-tune.

    Attributes:
      pretrain_steps: dense steps before pruning.
      prune_steps: steps of the cubic schedule, from 0 to the target sparsity.
      finetune_steps: steps with fixed masks afterwards.
      frequency: masks are recomputed every ``frequency`` steps while pruning.
      batch: training batch size.
      lr: peak Adam learning rate (cosine-decayed).
    """

    pretrain_steps: int = 500
    prune_steps: int = 300
    finetune_steps: int = 300
    frequency: int = 25
    batch: int = 64
    lr: float = 2e-3

    @property
    def steps(self) -> int:
        """Steps after the dense pretraining."""
        return self.prune_steps + self.finetune_steps


FULL = Budget()
SMALL = Budget(pretrain_steps=150, prune_steps=60, finetune_steps=60, frequency=10)


def inner_optimizer(budget: Budget, steps: int) -> optax.GradientTransformation:
    """Adam with a learning rate cosine-decayed over ``steps``."""
    return optax.adam(optax.cosine_decay_schedule(budget.lr, steps, alpha=0.05))


def pruning_tx(patterns: Mapping[str, Pattern] | None, sparsity: float, budget: Budget
               ) -> optax.GradientTransformation:
    """Adam chained with one :func:`tvwjax.prune` per layer of ``patterns``.

    Args:
      patterns: ``{layer: pattern}`` (per layer, since tile / block sizes may differ by
        width); ``None`` gives plain Adam (the dense baseline).
      sparsity: the final sparsity of each pruned layer.
      budget: the cubic schedule runs from 0 to ``sparsity`` over ``budget.prune_steps``
        (masks every ``budget.frequency`` steps); Adam decays over ``budget.steps``.

    Returns:
      ``optax.chain(adam, prune(...), ...)``.
    """
    inner = inner_optimizer(budget, budget.steps)
    if patterns is None:
        return inner
    sched = Polynomial(sparsity, begin_step=0, end_step=budget.prune_steps,
                       frequency=budget.frequency)
    parts = [inner]
    for layer, pattern in patterns.items():
        parts.append(prune(pattern, sched,
                           where=lambda path, leaf, _l=layer: path == f"{_l}/kernel"))
    return optax.chain(*parts)


__all__ = ["CNN", "FULL", "PRUNED", "SMALL", "SMALL_CNN", "WIDE", "Budget", "Conv3x3",
           "Linear", "batches", "evaluate", "init_params", "inner_optimizer", "load_data",
           "logits_fn", "loss_fn", "make_train_fn", "pruned_sparsity", "pruning_tx"]
