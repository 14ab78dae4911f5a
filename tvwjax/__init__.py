"""tvwjax: tile-wise (TW) and tile-vector-wise (TVW) sparsity for JAX, Flax and Optax."""

from tvwjax import errors
from tvwjax.check import check, check_tree, is_valid
from tvwjax.errors import (
    ConfigError,
    DTypeError,
    PatternViolationError,
    ScoreError,
    ShapeError,
    TreeMismatchError,
    TvwError,
)
from tvwjax.masking import apply_masks, as_matrix, default_where, masks, path_str
from tvwjax.patterns import BW, EW, NM, TEW, TVW, TW, TW1D, VW, Pattern
from tvwjax.plot import plot_mask, plot_masks
from tvwjax.scores import magnitude, taylor_accumulate, taylor_init, taylor_scores
from tvwjax.summary import format_summary, summary

__version__ = "0.1.0"

__all__ = [
    "BW", "EW", "NM", "TEW", "TVW", "TW", "TW1D", "VW", "Pattern",
    "ConfigError", "DTypeError", "PatternViolationError", "ScoreError", "ShapeError",
    "TreeMismatchError", "TvwError", "errors",
    "apply_masks", "as_matrix", "default_where", "masks", "path_str",
    "magnitude", "taylor_accumulate", "taylor_init", "taylor_scores",
    "check", "check_tree", "is_valid", "format_summary", "summary", "plot_mask", "plot_masks",
]
