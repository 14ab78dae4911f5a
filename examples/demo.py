"""The main job: train, prune (TVW by default), compress and time a digits CNN on this machine.

``python examples/demo.py`` from the repository root (``--help`` for the flags):

1. trains the digits CNN (:data:`digits.WIDE`: conv2 288x256, fc1 4096x1024) dense;
2. from that checkpoint, prunes ``conv2`` and ``fc1`` to ``--sparsity`` with ``--pattern``
   through the Optax transform -- ``optax.chain(adam, tvwjax.prune(pattern, Polynomial))``,
   gradual cubic pruning then a fine-tune with fixed masks -- and does the same for one or
   two comparison patterns at the same sparsity (``--compare``);
3. compresses each pruned model with :func:`tvwjax.nn.compress_params` (the format of the
   pattern: ``TileVectorWise``, ``TileWise``, ``NMSparse``, ``BlockSparse``; EW, VW and TEW
   have no compressed format here and run as dense weights with zeros);
4. runs jit-compiled inference of every model (test accuracy, then the latency of one batch
   of ``--batch`` images, medians of interleaved rounds, ratios taken in the same run) and
   prints one table.

Bad flags exit with status 2 and a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import numpy as np

from tvwjax.errors import TvwError
from tvwjax.formats import CompressedWeight
from tvwjax.nn import compress_params
from tvwjax.patterns import BW, EW, NM, TEW, TVW, TW, VW, Pattern
from tvwjax.transform import get_masks

if __package__ in (None, ""):  # python examples/demo.py: the repository root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import interleaved_medians  # noqa: E402
from examples import digits  # noqa: E402

PyTree = Any
PATTERNS = ("EW", "BW", "VW", "NM", "TW", "TEW", "TVW")


def make_pattern(name: str, tile: int) -> Pattern:
    """The pattern called ``name`` with the demo's sizes.

    Args:
      name: one of :data:`PATTERNS`.
      tile: tile width (TW, TEW, TVW) in output columns.

    Returns:
      ``EW()``, ``BW(32, 32)``, ``VW(16)``, ``NM(2, 4)``, ``TW(tile)``, ``TEW(tile, 0.05)``
      or ``TVW(tile)``.

    Raises:
      ValueError: unknown ``name``; ConfigError: a bad ``tile``.
    """
    makers: dict[str, Callable[[], Pattern]] = {
        "EW": EW, "BW": lambda: BW(32, 32), "VW": lambda: VW(16), "NM": lambda: NM(2, 4),
        "TW": lambda: TW(tile=tile), "TEW": lambda: TEW(tile=tile, delta=0.05),
        "TVW": lambda: TVW(tile=tile)}
    if name not in makers:
        raise ValueError(f"unknown pattern {name!r}; choose from {', '.join(PATTERNS)}")
    return makers[name]()


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated demo configuration (see :func:`parse_args`)."""

    pattern: str
    sparsity: float
    steps: int
    seed: int
    tile: int
    batch: int
    compare: tuple[str, ...]
    repeats: int

    @property
    def budget(self) -> digits.Budget:
        """The step split: 40% dense pretraining, 35% gradual pruning, 25% fine-tuning."""
        pre = max(1, round(0.4 * self.steps))
        prune_steps = max(1, round(0.35 * self.steps))
        fine = max(1, self.steps - pre - prune_steps)
        return digits.Budget(pretrain_steps=pre, prune_steps=prune_steps,
                             finetune_steps=fine, frequency=max(1, prune_steps // 12))


class _Parser(argparse.ArgumentParser):
    """``argparse`` with a one-line error message (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> _Parser:
    p = _Parser(prog="examples/demo.py",
                description="Train the digits CNN dense, prune it (TVW by default) with the "
                            "Optax transform, compress it and compare accuracy, stored bytes "
                            "and jit inference speed with the dense model.")
    p.add_argument("--pattern", default="TVW", type=str.upper, metavar="NAME",
                   help=f"sparsity pattern, one of {', '.join(PATTERNS)} (default TVW)")
    p.add_argument("--sparsity", type=float, default=None,
                   help="target sparsity of conv2 and fc1 in (0, 1) (default 0.75; 0.5 for NM)")
    p.add_argument("--steps", type=int, default=900,
                   help="training steps in all: 40%% dense, 35%% pruning, 25%% fine-tuning "
                        "(default 900, at least 10)")
    p.add_argument("--seed", type=int, default=0, help="init and batch-order seed")
    p.add_argument("--tile", type=int, default=128,
                   help="tile width in output columns for TW / TEW / TVW (default 128)")
    p.add_argument("--batch", type=int, default=16,
                   help="images per inference call in the speed measurement (default 16)")
    p.add_argument("--compare", default="auto",
                   help="comma-separated comparison patterns at the same sparsity, 'none', or "
                        "'auto' (TW and EW, or TVW and EW when --pattern is TW)")
    p.add_argument("--repeats", type=int, default=15,
                   help="timed rounds of the speed measurement (default 15)")
    return p


def _validate(p: Pattern, name: str, sparsity: float) -> None:
    for layer, shape in digits.WIDE.pruned_layers().items():
        p.validate_shape(shape, f"{name} on {layer} {shape[0]}x{shape[1]}")
    p.validate_sparsity(sparsity, f"--sparsity for {name}")


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Parse and validate the command line; on a bad flag, exit 2 with one line on stderr."""
    parser = _parser()
    a = parser.parse_args(argv)
    if a.pattern not in PATTERNS:
        parser.error(f"unknown --pattern {a.pattern!r}; choose from {', '.join(PATTERNS)}")
    sparsity = a.sparsity if a.sparsity is not None else (0.5 if a.pattern == "NM" else 0.75)
    if not (math.isfinite(sparsity) and 0.0 < sparsity < 1.0):
        parser.error(f"--sparsity must be in (0, 1), got {sparsity:g}")
    if a.steps < 10:
        parser.error(f"--steps must be at least 10, got {a.steps}")
    if a.batch < 1:
        parser.error(f"--batch must be positive, got {a.batch}")
    if a.repeats < 2:
        parser.error(f"--repeats must be at least 2, got {a.repeats}")
    try:
        _validate(make_pattern(a.pattern, a.tile), a.pattern, sparsity)
    except (TvwError, ValueError) as e:
        parser.error(str(e))
    if a.compare.lower() == "auto":
        wanted = ["TVW" if a.pattern == "TW" else "TW", "EW"]
        compare = []
        for name in wanted:
            if name == a.pattern:
                continue
            try:
                _validate(make_pattern(name, a.tile), name, sparsity)
            except (TvwError, ValueError):
                continue  # e.g. TVW below 50%: the automatic choice just leaves it out
            compare.append(name)
    elif a.compare.lower() == "none":
        compare = []
    else:
        compare = [c.strip().upper() for c in a.compare.split(",") if c.strip()]
        for name in compare:
            if name not in PATTERNS:
                parser.error(f"unknown --compare pattern {name!r}; choose from "
                             f"{', '.join(PATTERNS)}")
            try:
                _validate(make_pattern(name, a.tile), name, sparsity)
            except (TvwError, ValueError) as e:
                parser.error(str(e))
        compare = [c for c in dict.fromkeys(compare) if c != a.pattern]
    return Config(pattern=a.pattern, sparsity=sparsity, steps=a.steps, seed=a.seed,
                  tile=a.tile, batch=a.batch, compare=tuple(compare), repeats=a.repeats)


# -- the job ------------------------------------------------------------------------------
def _chunk(steps: int) -> int:
    """Largest divisor of ``steps`` not above ``steps // 10`` (one compile, ~10 updates)."""
    cap = max(1, steps // 10)
    return next(c for c in range(cap, 0, -1) if steps % c == 0)


def train_with_progress(tx, params: PyTree, xs: jax.Array, ys: jax.Array, desc: str,
                        model: digits.CNN = digits.WIDE) -> tuple[PyTree, PyTree]:
    """Run ``tx`` over the batches ``(xs, ys)`` in equal jitted chunks with a tqdm bar.

    Returns:
      The trained params and the final optimizer state.
    """
    from tqdm.auto import tqdm

    train = digits.make_train_fn(tx, model)
    state = tx.init(params)
    steps = xs.shape[0]
    c = _chunk(steps)
    with tqdm(total=steps, desc=desc, unit="step", file=sys.stderr, leave=True) as bar:
        for i in range(0, steps, c):
            params, state, losses = train(params, state, xs[i:i + c], ys[i:i + c])
            bar.set_postfix(loss=f"{float(losses[-1]):.3f}")
            bar.update(c)
    return params, state


def param_bytes(params: PyTree) -> int:
    """Stored bytes of a (possibly compressed) params tree: compressed weights count their
    :meth:`~tvwjax.formats.CompressedWeight.storage_bytes` (values + indices, no padding)."""
    leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, CompressedWeight))
    return int(sum(x.storage_bytes() if isinstance(x, CompressedWeight)
                   else np.asarray(x).nbytes for x in leaves))


def _format_name(params: PyTree) -> str:
    kinds = {type(x).__name__ for x in jax.tree.leaves(
        params, is_leaf=lambda x: isinstance(x, CompressedWeight))
        if isinstance(x, CompressedWeight)}
    return ", ".join(sorted(kinds)) or "dense"


def run(cfg: Config, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run the whole job for ``cfg``; return one row per model (dense first).

    Each row has ``name``, ``format``, ``acc`` (test accuracy of the model as run, i.e. of
    the compressed model), ``sparsity`` (zeros of conv2 + fc1), ``bytes`` (stored bytes of
    all params), ``seconds`` (median latency of one batch of ``cfg.batch`` images) and
    ``max_diff`` (largest |logit| difference between the compressed and the masked dense
    model on the test set; 0 for models run dense).
    """
    from tqdm.auto import tqdm

    log = log or (lambda s: print(s, file=sys.stderr))
    model = digits.WIDE
    budget = cfg.budget
    xtr, ytr, xte, yte = digits.load_data(0)
    params = digits.init_params(cfg.seed, model)
    pre_tx = digits.inner_optimizer(budget, budget.pretrain_steps)
    dense, _ = train_with_progress(pre_tx, params,
                                *digits.batches(xtr, ytr, budget.pretrain_steps, budget.batch,
                                                cfg.seed), "dense training", model)
    data = digits.batches(xtr, ytr, budget.steps, budget.batch, 1000 + cfg.seed)
    logits = digits.logits_fn(model)
    dense_logits = np.asarray(logits(dense, jnp.asarray(xte)))
    rows = [{"name": "dense", "format": "dense", "params": dense,
             "acc": float(np.mean(dense_logits.argmax(-1) == yte)), "sparsity": 0.0,
             "max_diff": 0.0}]

    for name in (cfg.pattern, *cfg.compare):
        pattern = make_pattern(name, cfg.tile)
        tx = digits.pruning_tx(pattern, cfg.sparsity, budget)
        pruned, state = train_with_progress(
            tx, dense, *data, f"{name} {100 * cfg.sparsity:g}% prune + fine-tune", model)
        zeros = digits.pruned_sparsity(pruned)
        stored = None
        if pattern.format is not None:
            t0 = time.perf_counter()
            run_params = compress_params(pruned, get_masks(state), pattern)
            log(f"compressed {name} in {time.perf_counter() - t0:.1f}s: "
                f"{_format_name(run_params)}")
            if jax.default_backend() == "cpu" and _format_name(run_params) == "TileVectorWise":
                # No 2:4 hardware on a CPU: store TVW, run its TW part (decoded once).
                stored = param_bytes(run_params)
                run_params = compress_params(pruned, get_masks(state), pattern,
                                             decode_nm=True)
        else:
            run_params = pruned
        out = np.asarray(logits(run_params, jnp.asarray(xte)))
        ref = out if run_params is pruned else np.asarray(logits(pruned, jnp.asarray(xte)))
        rows.append({"name": f"{name} {100 * cfg.sparsity:g}%",
                     "format": ("TileVectorWise (runs as its TileWise part on the CPU)"
                                if stored is not None else _format_name(run_params))
                     if run_params is not pruned
                     else "dense with zeros (no compressed format)",
                     "stored": stored,
                     "params": run_params, "acc": float(np.mean(out.argmax(-1) == yte)),
                     "sparsity": zeros, "max_diff": float(np.max(np.abs(out - ref)))})

    x = jnp.asarray(np.resize(xte, (cfg.batch, *xte.shape[1:])))
    fns = {r["name"]: (lambda p=r["params"]: logits(p, x)) for r in rows}
    total = len(fns) * (2 + cfg.repeats)
    with tqdm(total=total, desc=f"timing batch {cfg.batch}", unit="call", file=sys.stderr,
              leave=True) as bar:
        def ticking(f):
            def g():
                out = f()
                bar.update(1)
                return out
            return g
        times = interleaved_medians({k: ticking(f) for k, f in fns.items()},
                                    repeats=cfg.repeats, warmup=1, budget_s=60.0)
    for r in rows:
        r["seconds"] = times[r["name"]]
        r["bytes"] = r.get("stored") or param_bytes(r["params"])
    return rows


def format_table(rows: Sequence[dict[str, Any]], cfg: Config) -> str:
    """The markdown table of :func:`run`'s rows (ratios against the first, dense, row)."""
    base = rows[0]
    lines = [
        f"| model | format | test accuracy | sparsity conv2+fc1 | stored bytes | vs dense | "
        f"ms / batch of {cfg.batch} | speed vs dense |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['format']} | {100 * r['acc']:.2f}% | "
            f"{100 * r['sparsity']:.1f}% | {r['bytes'] / 1e6:.2f} MB | "
            f"{r['bytes'] / base['bytes']:.3f} | {1e3 * r['seconds']:.2f} | "
            f"{base['seconds'] / r['seconds']:.2f}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point of ``python examples/demo.py``.

    Args:
      argv: arguments (default ``sys.argv[1:]``).

    Returns:
      0 on success (bad flags exit with status 2 before any work).
    """
    cfg = parse_args(argv)
    model = digits.WIDE
    shapes = ", ".join(f"{k} {a}x{b}" for k, (a, b) in model.pruned_layers().items())
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    t0 = time.perf_counter()
    rows = run(cfg)
    b = cfg.budget
    print(f"tvwjax demo: digits CNN ({shapes}), {b.pretrain_steps} dense steps, then "
          f"{b.prune_steps} steps of cubic pruning + {b.finetune_steps} fine-tune steps "
          f"(batch {b.batch}, seed {cfg.seed}); tile {cfg.tile}; 449 test images")
    print()
    print(format_table(rows, cfg))
    print()
    diffs = max(r["max_diff"] for r in rows)
    end = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"Speed: jit inference of the whole CNN on one batch of {cfg.batch} images, median "
          f"of up to {cfg.repeats} interleaved rounds, ratios from this run. Compressed and "
          f"masked dense logits agree to {diffs:.1e}. Stored bytes count the stored format. "
          f"No 2:4 hardware on a CPU: TVW is stored 2:4-compressed but runs as its TW part "
          f"(decoded once at load, so at TW speed for twice the density); the 2:4 half "
          f"speeds up only on sparse tensor cores.")
    print(f"jax {jax.__version__} {jax.default_backend()}, {os.cpu_count()} CPUs, load "
          f"average {load[0]:.1f} -> {end[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{time.perf_counter() - t0:.0f} s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
