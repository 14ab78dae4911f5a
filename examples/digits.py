"""A small CNN on scikit-learn's digits: data, model, training loop, and the accuracy table.

Shared by the demo (``examples/demo.py``) and the notebooks in ``examples/``. Needs
scikit-learn (the ``examples`` extra); the 1797 8x8 images ship with it, nothing is downloaded.

* :func:`load_data` -- a fixed, stratified train/test split;
* :class:`CNN` -- conv 3x3 -> 2x2 average pool -> conv 3x3 -> dense -> dense, widths
  configurable (the defaults are the table's small CNN; the demo uses a wider one so that
  sparse inference has something to win, see :data:`WIDE`). Every layer multiplies through
  :func:`tvwjax.matmul` (the dense layers are :class:`tvwjax.nn.SparseDense`), so its kernels
  may be dense arrays (training) or compressed weights from :func:`tvwjax.nn.compress_params`
  (inference) -- the same module serves both;
* :func:`make_train_fn` -- a jitted ``lax.scan`` training loop for any Optax optimizer
  (e.g. one chained with :func:`tvwjax.prune`), :func:`pruning_tx` builds that chain;
* :func:`evaluate`, :func:`pruned_sparsity`;
* :func:`pattern_for` (the table's per-layer pattern sizes) and :func:`run_table`, which
  produces the accuracy table.

Recipe (the same budget for every row): each seed trains the dense CNN for
``pretrain_steps``; from that checkpoint every pattern runs ``prune_steps`` of gradual
cubic pruning (Zhu & Gupta, 2017; masks updated every ``frequency`` steps) followed by
``finetune_steps`` with fixed masks, with a fresh Adam whose learning rate decays by
cosine. The dense row trains the same number of steps without pruning.

The pruned layers are ``conv2`` (3x3x32 -> 64, viewed as its 288 x 64 im2col matrix) and
``fc1`` (1024 x 128): 99% of the weights. ``conv1`` (K = 9, too small for 2:4) and the
classifier ``fc2`` stay dense, as is usual. Tile and block sizes scale with the layer width
the way the paper's sizes scale with BERT's 768 (tile 128 = N/6, block 32): TW / TVW tiles of
N/4 columns (16 for conv2, 32 for fc1), BW blocks of N/8 (8x8 and 16x16), VW vectors of 16.

Run ``python examples/digits.py`` (full table, writes ``results/digits.{md,json,png}``) or
``python examples/digits.py --small`` (or ``TVWJAX_DIGITS_SMALL=1``) for the test-suite size
(fewer steps, one seed, EW / BW / TVW at 75% only).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tvwjax.formats import CompressedWeight
from tvwjax.matmul import matmul
from tvwjax.nn import SparseDense
from tvwjax.patterns import BW, EW, NM, TVW, TW, VW, Pattern
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
        # A compressed kernel has no array shape for ``self.param`` to check: read it as is.
        if self.has_variable("params", "kernel"):
            kernel = self.get_variable("params", "kernel")
        else:
            kernel = self.param("kernel", nn.initializers.lecun_normal(),
                                (3, 3, cin, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        h, w = x.shape[1:3]
        xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        cols = jnp.concatenate([xp[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)],
                               axis=-1)
        if not isinstance(kernel, CompressedWeight):
            kernel = kernel.reshape(9 * cin, self.features)
        return matmul(cols, kernel) + bias


class CNN(nn.Module):
    """conv1 3x3x1->``conv1``, 2x2 average pool, conv2 3x3->``conv2``, fc1 -> ``hidden``,
    fc2 -> 10. Kernels may be dense or compressed (see :class:`Conv3x3` and
    :class:`tvwjax.nn.SparseDense`)."""

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
        x = nn.relu(SparseDense(self.hidden, name="fc1")(x))
        return SparseDense(10, name="fc2")(x)


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


def pruning_tx(pattern: Pattern | Mapping[str, Pattern] | None, sparsity: float,
               budget: Budget) -> optax.GradientTransformation:
    """``optax.chain(adam, tvwjax.prune(...))``: gradual cubic pruning, then fixed masks.

    Args:
      pattern: one pattern for every layer of :data:`PRUNED` (a single :func:`tvwjax.prune`,
        whose state holds all the masks for :func:`tvwjax.get_masks`); ``{layer: pattern}``
        for sizes that differ by layer width (one :func:`tvwjax.prune` per layer); ``None``
        for plain Adam (the dense baseline).
      sparsity: the final sparsity of each pruned layer.
      budget: the cubic schedule runs from 0 to ``sparsity`` over ``budget.prune_steps``
        (masks every ``budget.frequency`` steps); Adam decays by cosine over ``budget.steps``.

    Returns:
      ``optax.chain(adam, prune(...), ...)``.
    """
    inner = inner_optimizer(budget, budget.steps)
    if pattern is None:
        return inner
    sched = Polynomial(sparsity, begin_step=0, end_step=budget.prune_steps,
                       frequency=budget.frequency)
    groups = ([(pattern, PRUNED)] if isinstance(pattern, Pattern)
              else [(p, (layer,)) for layer, p in pattern.items()])
    parts = [prune(p, sched, where=lambda path, leaf, _k={f"{n}/kernel" for n in layers}:
                   path in _k) for p, layers in groups]
    return optax.chain(inner, *parts)


#: The table's pruned layers and their (K, N) matrix views.
PRUNED_LAYERS: dict[str, tuple[int, int]] = SMALL_CNN.pruned_layers()
#: Patterns of the table, and the sparsities each allows.
#: 97% is a stress level beyond the issue's 50 / 75 / 90% (digits saturates below it); VW
#: vectors of 16 cannot go past 93.75%, 2:4 is 50% only.
KINDS: dict[str, tuple[float, ...]] = {
    "EW": (0.5, 0.75, 0.9, 0.97), "BW": (0.5, 0.75, 0.9, 0.97), "VW": (0.5, 0.75, 0.9),
    "2:4": (0.5,), "TW": (0.5, 0.75, 0.9, 0.97), "TVW": (0.5, 0.75, 0.9, 0.97),
}
#: The small configuration's rows (test suite).
SMALL_KINDS: dict[str, tuple[float, ...]] = {"EW": (0.75,), "BW": (0.75,), "TVW": (0.75,)}


def pattern_for(kind: str, layer: str) -> Pattern:
    """The pattern ``kind`` with tile / block sizes scaled to ``layer``'s width."""
    n = PRUNED_LAYERS[layer][1]
    if kind == "EW":
        return EW()
    if kind == "BW":
        return BW(rows=n // 8, cols=n // 8)
    if kind == "VW":
        return VW(length=16)
    if kind == "2:4":
        return NM(2, 4)
    if kind == "TW":
        return TW(tile=n // 4)
    if kind == "TVW":
        return TVW(tile=n // 4)
    raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")


def pattern_label(kind: str) -> str:
    """Human-readable per-layer sizes of ``kind`` (for the table)."""
    labels = {"EW": "unstructured", "BW": "blocks 8x8 / 16x16", "VW": "vectors of 16 along K",
              "2:4": "2 of 4 along K", "TW": "TW-2D, tiles 16 / 32 cols",
              "TVW": "TW tiles 16 / 32 cols + 2:4"}
    return labels[kind]


# -- the table -------------------------------------------------------------------------------
def run_table(seeds: Sequence[int] = (0, 1, 2), budget: Budget = FULL,
              kinds: dict[str, tuple[float, ...]] | None = None,
              log: Callable[[str], None] | None = print) -> dict:
    """Train every (pattern, sparsity) row for every seed.

    Args:
      seeds: model-init / batch-order seeds (the data split is fixed).
      budget: steps and learning rate.
      kinds: ``{kind: sparsities}`` (default :data:`KINDS`).
      log: progress printer (``None``: silent).

    Returns:
      ``{"config": ..., "rows": [{"pattern", "sparsity", "acc": [per seed],
      "measured_sparsity": [...], ...}]}``.
    """
    kinds = KINDS if kinds is None else kinds
    xtr, ytr, xte, yte = load_data(0)
    t0 = time.perf_counter()
    pre_tx = inner_optimizer(budget, budget.pretrain_steps)
    pre_train = make_train_fn(pre_tx)
    pretrained = {}
    for seed in seeds:
        p = init_params(seed)
        xs, ys = batches(xtr, ytr, budget.pretrain_steps, budget.batch, seed)
        p, _, _ = pre_train(p, pre_tx.init(p), xs, ys)
        pretrained[seed] = p
        if log:
            log(f"pretrained seed {seed}: test acc {evaluate(p, xte, yte):.4f}")
    data = {s: batches(xtr, ytr, budget.steps, budget.batch, 1000 + s) for s in seeds}

    configs: list[tuple[str | None, float]] = [(None, 0.0)]
    configs += [(k, s) for k, ss in kinds.items() for s in ss]
    rows = []
    for kind, sparsity in configs:
        tx = pruning_tx(None if kind is None else
                        {layer: pattern_for(kind, layer) for layer in PRUNED_LAYERS},
                        sparsity, budget)
        train = make_train_fn(tx)
        accs, meas = [], []
        for seed in seeds:
            p = pretrained[seed]
            p, _, _ = train(p, tx.init(p), *data[seed])
            accs.append(evaluate(p, xte, yte))
            meas.append(pruned_sparsity(p))
        row = {"pattern": kind or "dense", "sizes": pattern_label(kind) if kind else "-",
               "sparsity": sparsity, "acc": accs, "acc_mean": float(np.mean(accs)),
               "acc_std": float(np.std(accs)), "measured_sparsity": float(np.mean(meas))}
        rows.append(row)
        if log:
            log(f"{row['pattern']:>5} @ {sparsity:.2f}: acc {row['acc_mean']:.4f} "
                f"± {row['acc_std']:.4f} (zeros {row['measured_sparsity']:.3f}) "
                f"[{time.perf_counter() - t0:.0f}s]")
    return {"config": {"budget": dataclasses.asdict(budget), "seeds": list(seeds),
                       "split": "load_digits, stratified 75/25, random_state=0",
                       "test_images": int(len(yte)),
                       "pruned_layers": {k: list(v) for k, v in PRUNED_LAYERS.items()},
                       "seconds": round(time.perf_counter() - t0, 1),
                       "jax": jax.__version__, "backend": jax.default_backend()},
            "rows": rows}


def to_markdown(result: dict) -> str:
    """The accuracy table as markdown (mean ± std over seeds, in percent)."""
    cfg = result["config"]
    b = cfg["budget"]
    lines = [
        f"Digits CNN, test accuracy (%) mean ± std over seeds {cfg['seeds']}; "
        f"{b['pretrain_steps']} dense steps, then {b['prune_steps']} steps of cubic "
        f"pruning (masks every {b['frequency']}) + {b['finetune_steps']} fine-tune steps, "
        f"batch {b['batch']}, Adam {b['lr']:g} cosine. Pruned: conv2 (288x64), fc1 (1024x128). "
        f"{cfg['test_images']} test images: one image is "
        f"{100 / cfg['test_images']:.2f} points.",
        "",
        "| pattern | sizes | target sparsity | measured zeros | accuracy |",
        "|---|---|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['pattern']} | {r['sizes']} | {100 * r['sparsity']:.0f}% | "
                     f"{100 * r['measured_sparsity']:.1f}% | "
                     f"{100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Accuracy vs sparsity per pattern (error bars: std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = result["rows"]
    dense = next(r for r in rows if r["pattern"] == "dense")
    ax.axhline(100 * dense["acc_mean"], color="k", ls="--", lw=1, label="dense")
    for kind in dict.fromkeys(r["pattern"] for r in rows if r["pattern"] != "dense"):
        rs = [r for r in rows if r["pattern"] == kind]
        ax.errorbar([100 * r["sparsity"] for r in rs], [100 * r["acc_mean"] for r in rs],
                    yerr=[100 * r["acc_std"] for r in rs], marker="o", capsize=3, label=kind,
                    alpha=0.8)
    ax.set_xlabel("sparsity of the pruned layers (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("scikit-learn digits CNN")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(result: dict, out_dir: Path, stem: str = "digits") -> None:
    """Write ``{stem}.md``, ``{stem}.json`` and ``{stem}.png`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.md").write_text(to_markdown(result))
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=1))
    plot(result, out_dir / f"{stem}.png")


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line: ``python examples/digits.py [--small] [--seeds 0 1 2] [--out results]``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true",
                    default=os.environ.get("TVWJAX_DIGITS_SMALL", "") not in ("", "0"),
                    help="the small configuration of the test suite")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    ap.add_argument("--stem", default="digits")
    args = ap.parse_args(argv)
    budget = SMALL if args.small else FULL
    seeds = args.seeds or ([0] if args.small else [0, 1, 2])
    result = run_table(seeds, budget, SMALL_KINDS if args.small else KINDS)
    write_results(result, args.out, args.stem)
    print(to_markdown(result))
    return result


if __name__ == "__main__":
    main()
