"""Draw masks so the pattern can be seen (needs matplotlib, the ``examples`` extra)."""

from __future__ import annotations

from typing import Any

import numpy as np


def plot_mask(mask: Any, ax: Any = None, title: str | None = None, max_size: int = 256) -> Any:
    """Draw a ``(K, N)`` mask: kept weights dark, pruned light; K (contraction) down.

    Args:
      mask: boolean array (``ndim >= 2``, viewed as ``(prod(shape[:-1]), shape[-1])``).
      ax: a matplotlib Axes to draw on (a new figure if None).
      title: axes title (default: shape and sparsity).
      max_size: show at most this many rows and columns (the top-left corner).

    Returns:
      The matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    m = np.asarray(mask).astype(bool)
    m = m.reshape(-1, m.shape[-1])
    full_shape = m.shape
    m = m[:max_size, :max_size]
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4 * m.shape[0] / max(m.shape[1], 1) + 0.5))
    ax.imshow(m, cmap="Greys", interpolation="nearest", vmin=0, vmax=1, aspect="auto")
    if title is None:
        title = f"{full_shape[0]}x{full_shape[1]}, sparsity {100 * (1 - m.mean()):.1f}%"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("N (output columns)")
    ax.set_ylabel("K (input rows)")
    return ax


def plot_masks(masks_by_name: dict[str, Any], ncols: int = 4, max_size: int = 128) -> Any:
    """A grid of :func:`plot_mask` panels, one per ``{name: mask}``; returns the Figure."""
    import matplotlib.pyplot as plt

    n = len(masks_by_name)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, (name, m) in zip(axes.ravel(), masks_by_name.items(), strict=False):
        mm = np.asarray(m).astype(bool)
        plot_mask(mm, ax=ax, title=f"{name} ({100 * (1 - mm.mean()):.0f}%)", max_size=max_size)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    return fig


__all__ = ["plot_mask", "plot_masks"]
