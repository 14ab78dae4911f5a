"""Flax NNX ``SparseLinear``: ``nnx.Linear`` whose kernel may be dense or compressed."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from tvwjax.nn._common import check_layer_args, dense_forward

Array = jax.Array
default_kernel_init = nnx.initializers.lecun_normal()
default_bias_init = nnx.initializers.zeros_init()


class SparseLinear(nnx.Module):
    """Drop-in for ``flax.nnx.Linear`` holding a dense or a compressed kernel.

    ``self.kernel`` is an ``nnx.Param`` whose value is a dense ``(in, out)`` array
    (training, identical to ``nnx.Linear``) or a compressed weight (inference, set by
    :func:`tvwjax.nn.compress_model`), in which case the call goes through
    :func:`tvwjax.matmul`.

    Args:
      in_features, out_features, use_bias, dtype, param_dtype, precision, kernel_init,
        bias_init, rngs: as in ``nnx.Linear``.
      backend: ``tvwjax.matmul`` backend for compressed kernels.

    Raises:
      ConfigError: ``in_features`` / ``out_features`` not positive integers, ``use_bias``
        not a bool, or an unknown ``backend`` (all at construction).
      ShapeError: when called, inputs without a last axis of ``in_features`` features.
    """

    _tvw_compressed_ok = True  # runs compressed kernels itself

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 dtype: Any = None, param_dtype: Any = jnp.float32, precision: Any = None,
                 kernel_init: Any = default_kernel_init,
                 bias_init: Any = default_bias_init, backend: str = "auto",
                 rngs: nnx.Rngs):
        sizes = check_layer_args("SparseLinear", {"in_features": in_features,
                                                  "out_features": out_features},
                                 use_bias, backend)
        in_features, out_features = sizes["in_features"], sizes["out_features"]
        self.in_features, self.out_features = in_features, out_features
        self.use_bias, self.dtype, self.param_dtype = use_bias, dtype, param_dtype
        self.precision, self.backend = precision, backend
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features),
                                            param_dtype))
        self.bias = (nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype))
                     if use_bias else None)

    def __call__(self, inputs: Array) -> Array:
        """``inputs @ kernel + bias`` over the last axis of ``inputs``."""
        bias = self.bias.get_value() if self.bias is not None else None
        return dense_forward(inputs, self.kernel.get_value(), bias, features=self.out_features,
                             dtype=self.dtype, precision=self.precision,
                             backend=self.backend, where="SparseLinear")


__all__ = ["SparseLinear"]
