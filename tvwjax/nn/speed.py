"""Per-layer choice between a compressed weight and its dense form, by measurement.

A compressed layer is not always faster than dense: at small widths (384-512 features) or
moderate sparsity the gather and tile bookkeeping can cost more than the FLOPs saved.
:func:`keep_faster` times every compressed leaf of a params tree against its (masked) dense
form at the batch size the model will serve, on this device, and keeps the compressed
weight only where it is faster, so a compressed model is never slower than dense layer by
layer. The result is an ordinary params tree (dense leaves are exactly ``decompress(w)``,
pruned weights still zero) and a :class:`SpeedReport` saying what was chosen and why.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tvwjax import _validate as val
from tvwjax._tree import leaves_with_paths, path_difference, path_str
from tvwjax.errors import ConfigError, TreeMismatchError
from tvwjax.formats import CompressedWeight, decompress
from tvwjax.matmul import BACKENDS, matmul

PyTree = Any


@dataclasses.dataclass(frozen=True)
class LayerChoice:
    """One compressed leaf: its path, GEMM shape, the medians measured and the choice."""

    path: str
    shape: tuple[int, int]
    format: str
    dense_ms: float
    compressed_ms: float
    kept: str  # "compressed" or "dense"

    @property
    def speedup(self) -> float:
        """Dense time over compressed time (> 1: the compressed form is faster)."""
        return self.dense_ms / self.compressed_ms if self.compressed_ms > 0 else float("inf")


class SpeedReport(tuple):
    """The :class:`LayerChoice` of every compressed leaf; prints as a markdown table."""

    @property
    def compressed(self) -> list[LayerChoice]:
        """The leaves kept compressed."""
        return [c for c in self if c.kept == "compressed"]

    @property
    def dense(self) -> list[LayerChoice]:
        """The leaves turned back to dense because that was faster."""
        return [c for c in self if c.kept == "dense"]

    def __str__(self) -> str:
        lines = ["| leaf | GEMM (K, N) | format | dense ms | compressed ms | speed-up | kept |",
                 "|---|---|---|---|---|---|---|"]
        for c in self:
            lines.append(f"| {c.path} | {c.shape[0]} x {c.shape[1]} | {c.format} | "
                         f"{c.dense_ms:.3f} | {c.compressed_ms:.3f} | {c.speedup:.2f}x | "
                         f"{c.kept} |")
        return "\n".join(lines)


def _median_ms(fns: list, args: list, repeats: int) -> list[float]:
    """Medians (ms) of ``repeats`` interleaved timed calls of each function, after warm-up."""
    for f, a in zip(fns, args, strict=True):
        jax.block_until_ready(f(*a))
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, (f, a) in enumerate(zip(fns, args, strict=True)):
            t0 = time.perf_counter()
            jax.block_until_ready(f(*a))
            times[i].append((time.perf_counter() - t0) * 1e3)
    return [float(np.median(t)) for t in times]


def keep_faster(params: PyTree, compressed: PyTree, rows: int, *, repeats: int = 7,
                backend: str = "auto", seed: int = 0) -> tuple[PyTree, SpeedReport]:
    """Keep each compressed leaf only where it multiplies faster than its dense form.

    Every :class:`~tvwjax.formats.CompressedWeight` leaf of ``compressed`` is timed with
    :func:`tvwjax.matmul` on a random ``(rows, K)`` input against the dense ``(K, N)`` form
    of the same weight, each as a layer with a bias (both ``jax.jit``-compiled, medians of
    ``repeats`` interleaved calls after a warm-up). Where the dense form is not slower, the
    leaf is replaced by ``decompress(w)`` reshaped to the leaf of ``params`` at the same
    path (a conv kernel gets its 4-D shape back; pruned weights stay exactly zero).

    Args:
      params: the dense params the compressed tree was made from (for the leaves' shapes
        and dtypes); same structure as ``compressed``.
      compressed: the output of :func:`tvwjax.nn.compress_params`.
      rows: the number of rows ``M`` the layers will see (batch x tokens, or batch x output
        pixels for a conv): the choice depends on it.
      repeats: timed calls per form (medians).
      backend: as in :func:`tvwjax.matmul`.
      seed: for the random timing input.

    Returns:
      ``(tree, report)``: ``compressed`` with the slower compressed leaves made dense, and
      a :class:`SpeedReport` (``print(report)`` gives a markdown table).

    Raises:
      ConfigError: ``rows`` / ``repeats`` not positive integers, an unknown ``backend``.
      TreeMismatchError: ``params`` and ``compressed`` differ in structure.

    >>> import jax, jax.numpy as jnp, tvwjax
    >>> params = {"fc": {"kernel": jax.random.normal(jax.random.key(0), (256, 256))}}
    >>> pattern = tvwjax.TW(tile=64)
    >>> small = tvwjax.nn.compress_params(params, tvwjax.masks(params, pattern, 0.75), pattern)
    >>> tree, report = tvwjax.nn.keep_faster(params, small, rows=8, repeats=3)
    >>> [c.kept in ("compressed", "dense") for c in report]
    [True]
    """
    rows = val.positive_int(rows, "keep_faster: rows")
    repeats = val.positive_int(repeats, "keep_faster: repeats")
    val.choice(backend, "keep_faster: backend", BACKENDS)
    dense_by_path = dict(leaves_with_paths(params)[0])
    kps, treedef = jax.tree_util.tree_flatten_with_path(
        compressed, is_leaf=lambda x: isinstance(x, CompressedWeight))
    flat = [(path_str(kp), leaf) for kp, leaf in kps]
    if [p for p, _ in flat] != list(dense_by_path):
        missing, extra = path_difference(list(dense_by_path), [p for p, _ in flat])
        raise TreeMismatchError(f"keep_faster: compressed must have the structure of params: "
                                f"missing {missing}, unexpected {extra}")
    # Timed as a layer (product plus a runtime bias), as it runs in a model: XLA runs a jitted
    # program of under 1000 FLOPs, such as a lone CPU-kernel custom call (counted as 0),
    # synchronously on the calling thread, which on small machines halves its threads.
    mm = jax.jit(lambda x, w, b: matmul(x, w, backend=backend) + b)
    key = jax.random.key(seed)
    out, choices = [], []
    for path, leaf in flat:
        if not isinstance(leaf, CompressedWeight):
            out.append(leaf)
            continue
        ref = dense_by_path[path]
        k, n = (int(s) for s in leaf.shape)
        if int(np.prod(np.shape(ref))) != k * n:
            raise ConfigError(f"keep_faster: {path}: the compressed weight is {k} x {n} but "
                              f"params holds shape {np.shape(ref)}")
        dense = decompress(leaf).astype(jnp.asarray(ref).dtype)
        key, sub = jax.random.split(key)
        x = jax.random.normal(sub, (rows, k), leaf.dtype)
        b = jnp.zeros((n,), leaf.dtype)
        t_dense, t_comp = _median_ms([mm, mm], [(x, dense, b), (x, leaf, b)], repeats)
        faster = t_comp < t_dense
        choices.append(LayerChoice(path, (k, n), type(leaf).__name__, t_dense, t_comp,
                                   "compressed" if faster else "dense"))
        out.append(leaf if faster else dense.reshape(np.shape(ref)))
    return jax.tree_util.tree_unflatten(treedef, out), SpeedReport(choices)


__all__ = ["LayerChoice", "SpeedReport", "keep_faster"]
