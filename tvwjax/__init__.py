"""tvwjax: tile-wise (TW) and tile-vector-wise (TVW) sparsity for JAX, Flax and Optax.

The flat public API:

* patterns -- :class:`EW`, :class:`BW`, :class:`VW`, :class:`NM`, :class:`TW` (1-D by default),
  :class:`TEW`, :class:`TVW`;
* masks -- :func:`masks` (any pytree, layer or global scope), :func:`apply_masks`,
  scores :func:`magnitude`, :func:`taylor_init`, :func:`taylor_accumulate`;
* validation -- :func:`check`, :func:`check_tree`, :func:`summary`, :func:`plot_mask`;
* training -- the Optax transforms :func:`prune` (with the schedules :class:`OneShot`,
  :class:`Polynomial`, :class:`Staged`) and :func:`fixed_masks`;
* execution -- :func:`compress`, :func:`decompress`, :func:`matmul`, the formats
  :class:`TileWise`, :class:`TileVectorWise`, :class:`NMSparse`, :class:`BlockSparse`, and the
  Flax modules in :mod:`tvwjax.nn`;
* one-shot pruning -- :func:`one_shot`, :func:`reconstruct`, :func:`reconstruct_layer` with
  the statistics of :mod:`tvwjax.calibration` and the scores of :mod:`tvwjax.data_aware`;
  per-layer sparsities from measured sensitivity: :func:`layer_sensitivity`,
  :func:`plan_sparsity` (:mod:`tvwjax.sensitivity`).
"""

from tvwjax import (
    calibration,
    checkpoint,
    data_aware,
    errors,
    nn,
    schedules,
    sensitivity,
    transform,
)
from tvwjax._tree import as_matrix, path_str
from tvwjax.check import check, check_tree
from tvwjax.errors import (
    CalibrationWarning,
    ConfigError,
    DTypeError,
    FormatError,
    PatternViolationError,
    PruneOrderWarning,
    ScoreError,
    ShapeError,
    TreeMismatchError,
    TvwError,
)
from tvwjax.formats import (
    BlockSparse,
    CompressedWeight,
    NMSparse,
    TileVectorWise,
    TileWise,
    compress,
    decompress,
)
from tvwjax.masking import LeafPlan, Selection, apply_masks, default_where, masks, selection
from tvwjax.matmul import backends, matmul
from tvwjax.patterns import BW, EW, NM, TEW, TVW, TW, VW, Pattern
from tvwjax.plot import plot_mask, plot_masks
from tvwjax.reconstruction import one_shot, reconstruct, reconstruct_layer
from tvwjax.schedules import OneShot, Polynomial, Schedule, Staged
from tvwjax.scores import magnitude, taylor_accumulate, taylor_init, taylor_scores
from tvwjax.sensitivity import SparsityPlan, layer_sensitivity, plan_sparsity
from tvwjax.summary import format_summary, summary
from tvwjax.transform import PruneState, fixed_masks, get_masks, prune, pruned
from tvwjax.views import gemm_views

__version__ = "0.1.0"

__all__ = [
    # patterns
    "BW", "EW", "NM", "TEW", "TVW", "TW", "VW", "Pattern",
    # errors
    "CalibrationWarning", "ConfigError", "DTypeError", "FormatError", "PatternViolationError",
    "PruneOrderWarning",
    "ScoreError", "ShapeError",
    "TreeMismatchError", "TvwError", "errors",
    # masks and scores
    "LeafPlan", "Selection", "apply_masks", "as_matrix", "default_where", "gemm_views", "masks",
    "path_str", "selection",
    "magnitude", "taylor_accumulate", "taylor_init", "taylor_scores",
    # validation and inspection
    "check", "check_tree", "format_summary", "summary", "plot_mask", "plot_masks",
    # training
    "OneShot", "Polynomial", "PruneState", "Schedule", "Staged", "fixed_masks", "get_masks",
    "prune", "pruned", "schedules", "transform",
    # execution
    "BlockSparse", "CompressedWeight", "NMSparse", "TileVectorWise", "TileWise", "compress",
    "backends", "decompress", "matmul", "nn",
    # data-aware one-shot pruning and checkpoints
    "calibration", "checkpoint", "data_aware", "one_shot", "reconstruct", "reconstruct_layer",
    "SparsityPlan", "layer_sensitivity", "plan_sparsity", "sensitivity",
]
