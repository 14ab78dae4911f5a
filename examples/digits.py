"""A small CNN on scikit-learn's digits, trained dense and with every sparsity pattern.

The data split, the CNN, the jitted training loop and evaluation live in the package
(:mod:`tvwjax.digits`, shared with ``tvwjax-demo`` and the notebooks) and are re-exported
here; this script adds the table's per-layer pattern sizes (:func:`pattern_for`),
:func:`pruning_tx` (Adam chained with one :func:`tvwjax.prune` per layer) and
:func:`run_table`, which produces the accuracy table.

Recipe (the same budget for every row): each seed trains the dense CNN for
``pretrain_steps``; from that checkpoint every pattern runs ``prune_steps`` of gradual
cubic pruning (Zhu & Gupta, 2017; masks updated every ``frequency`` steps) followed by
``finetune_steps`` with fixed masks, with a fresh Adam whose learning rate decays by
cosine. The dense row trains the same number of steps without pruning.

The pruned layers are ``conv2`` (3x3x32 -> 64, viewed as a 288 x 64 matrix) and ``fc1``
(1024 x 128): 99% of the weights. ``conv1`` (K = 9, too small for 2:4) and the classifier
``fc2`` stay dense, as is usual. Tile and block sizes scale with the layer width the way the
paper's sizes scale with BERT's 768 (tile 128 = N/6, block 32): TW / TVW tiles of N/4
columns (16 for conv2, 32 for fc1), BW blocks of N/8 (8x8 and 16x16), VW vectors of 16.

Run ``python examples/digits.py`` (full table, writes ``results/digits.{md,json,png}``) or
``python examples/digits.py --small`` (or ``TVWJAX_DIGITS_SMALL=1``) for the test-suite size
(fewer steps, one seed, EW / BW / TVW at 75% only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

if __package__ in (None, ""):  # run as a script from a checkout: make tvwjax importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tvwjax.digits import (  # noqa: E402,F401 (re-exported for the tests and notebooks)
    CNN,
    FULL,
    SMALL,
    Budget,
    Conv3x3,
    batches,
    evaluate,
    inner_optimizer,
    load_data,
    loss_fn,
    make_train_fn,
)
from tvwjax.digits import init_params as _init_params  # noqa: E402
from tvwjax.digits import pruned_sparsity as _pruned_sparsity  # noqa: E402
from tvwjax.digits import pruning_tx as _pruning_tx  # noqa: E402
from tvwjax.patterns import BW, EW, NM, TVW, TW, VW, Pattern  # noqa: E402

PyTree = Any

#: Pruned layers and their (K, N) matrix views.
PRUNED_LAYERS: dict[str, tuple[int, int]] = CNN().pruned_layers()
#: Patterns of the table, and the sparsities each allows.
#: 97% is a stress level beyond the issue's 50 / 75 / 90% (digits saturates below it); VW
#: vectors of 16 cannot go past 93.75%, 2:4 is 50% only.
KINDS: dict[str, tuple[float, ...]] = {
    "EW": (0.5, 0.75, 0.9, 0.97), "BW": (0.5, 0.75, 0.9, 0.97), "VW": (0.5, 0.75, 0.9),
    "2:4": (0.5,), "TW": (0.5, 0.75, 0.9, 0.97), "TVW": (0.5, 0.75, 0.9, 0.97),
}
#: The small configuration's rows (test suite).
SMALL_KINDS: dict[str, tuple[float, ...]] = {"EW": (0.75,), "BW": (0.75,), "TVW": (0.75,)}


def init_params(seed: int) -> PyTree:
    """Initial parameters of the table's CNN for ``seed``."""
    return _init_params(seed, CNN())


def pruned_sparsity(params: PyTree) -> float:
    """Fraction of exactly-zero weights over the pruned layers' kernels."""
    return _pruned_sparsity(params, tuple(PRUNED_LAYERS))


# -- patterns and optimizers ---------------------------------------------------------------
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


def pruning_tx(kind: str | None, sparsity: float, budget: Budget
               ) -> optax.GradientTransformation:
    """Adam chained with one :func:`tvwjax.prune` per pruned layer (``None``: dense).

    Each layer gets its own transform because the tile / block sizes differ per layer;
    they share the gradual cubic schedule from 0 to ``sparsity`` over ``prune_steps``
    (see :func:`tvwjax.digits.pruning_tx`).
    """
    patterns = None if kind is None else {layer: pattern_for(kind, layer)
                                          for layer in PRUNED_LAYERS}
    return _pruning_tx(patterns, sparsity, budget)


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
        tx = pruning_tx(kind, sparsity, budget)
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
