"""Flax layers over dense or compressed kernels and the dense -> compressed conversion.

``SparseDense`` (Linen) and ``SparseLinear`` (NNX) are drop-ins for ``nn.Dense`` /
``nnx.Linear``; :func:`compress_params` / :func:`compress_model` turn a trained model's
params and masks into compressed params for jit-compiled inference; :func:`keep_faster`
keeps each layer compressed only where that is faster than dense on this device.
"""

from tvwjax.nn.convert import compress_model, compress_params
from tvwjax.nn.linen import SparseDense
from tvwjax.nn.nnx import SparseLinear
from tvwjax.nn.speed import LayerChoice, SpeedReport, keep_faster
from tvwjax.nn.stock import compressed_kernels

__all__ = ["LayerChoice", "SparseDense", "SparseLinear", "SpeedReport", "compress_model",
           "compress_params", "compressed_kernels", "keep_faster"]
