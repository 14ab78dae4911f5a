"""Sparsity summaries of mask (or parameter) pytrees."""

from __future__ import annotations

from typing import Any

import numpy as np

from tvwjax._tree import leaves_with_paths


def summary(tree: Any, *, zeros_of_params: bool = False) -> dict[str, dict[str, Any]]:
    """Per-leaf and total sparsity of a pytree of masks (or of weights).

    Args:
      tree: a pytree of boolean masks (``None`` leaves are skipped), or of weights when
        ``zeros_of_params`` is True (then exact zeros count as pruned).
      zeros_of_params: count zeros of weight leaves instead of False entries of masks.

    Returns:
      ``{path: {"shape", "kept", "total", "sparsity"}, ..., "total": {"kept", "total",
      "sparsity"}}``.

    >>> import jax.numpy as jnp
    >>> s = summary({"a": jnp.array([[True, False], [False, False]]), "b": None})
    >>> s["a"]["sparsity"], s["total"]["kept"]
    (0.75, 1)
    """
    out: dict[str, dict[str, Any]] = {}
    kept_all = total_all = 0
    for path, leaf in leaves_with_paths(tree)[0]:
        if leaf is None or not hasattr(leaf, "shape"):
            continue
        a = np.asarray(leaf)
        if zeros_of_params:
            if a.ndim < 2:
                continue
            kept = int(np.count_nonzero(a))
        else:
            kept = int(np.count_nonzero(a.astype(bool)))
        total = int(a.size)
        out[path] = {"shape": tuple(a.shape), "kept": kept, "total": total,
                             "sparsity": 1.0 - kept / max(total, 1)}
        kept_all += kept
        total_all += total
    out["total"] = {"kept": kept_all, "total": total_all,
                    "sparsity": 1.0 - kept_all / max(total_all, 1)}
    return out


def format_summary(stats: dict[str, dict[str, Any]]) -> str:
    """A markdown table of :func:`summary`'s result."""
    lines = ["| leaf | shape | kept | sparsity |", "|---|---|---:|---:|"]
    for path, s in stats.items():
        shape = "x".join(map(str, s.get("shape", ()))) or "-"
        lines.append(f"| {path} | {shape} | {s['kept']:,} / {s['total']:,} | "
                     f"{100 * s['sparsity']:.2f}% |")
    return "\n".join(lines)


__all__ = ["format_summary", "summary"]
