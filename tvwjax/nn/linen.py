"""Flax Linen ``SparseDense``: ``nn.Dense`` whose kernel may be dense or compressed."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tvwjax.nn._common import check_inputs, check_layer_args, dense_forward

Array = jax.Array
default_kernel_init = nn.initializers.lecun_normal()


class SparseDense(nn.Module):
    """Drop-in for ``flax.linen.Dense`` holding a dense or a compressed kernel.

    Training: the ``kernel`` param is a dense ``(K, N)`` array created by ``kernel_init``
    (masks are applied by the optimizer transform), and the layer computes exactly what
    ``nn.Dense`` computes. Inference: replace ``params[...]["kernel"]`` by a compressed
    weight (:func:`tvwjax.nn.compress_params`); the layer then calls
    :func:`tvwjax.matmul` (jit-compatible, differentiable w.r.t. the compressed values).

    Attributes:
      features: output features ``N``.
      use_bias, dtype, param_dtype, precision, kernel_init, bias_init: as in ``nn.Dense``
        (``precision`` applies to dense kernels).
      backend: ``tvwjax.matmul`` backend for compressed kernels (``"auto"``).

    Raises:
      ConfigError: at construction, ``features`` not a positive integer (Python, NumPy or
        concrete JAX), ``use_bias`` not a bool, or an unknown ``backend``.
      ShapeError: when called, inputs without a last axis of ``K >= 1`` features, or a
        kernel that does not fit them.
    """

    features: int
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Any = default_kernel_init
    bias_init: Any = nn.initializers.zeros_init()
    backend: str = "auto"

    def __post_init__(self) -> None:
        """Check the attributes when the module is constructed (not at its first call)."""
        sizes = check_layer_args("SparseDense", {"features": self.features}, self.use_bias,
                                 self.backend)
        object.__setattr__(self, "features", sizes["features"])
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        """``inputs @ kernel + bias`` over the last axis of ``inputs``."""
        where = "/".join(self.scope.path) or "SparseDense"
        inputs = check_inputs(inputs, where)
        if self.has_variable("params", "kernel"):
            kernel = self.get_variable("params", "kernel")
        else:
            kernel = self.param("kernel", self.kernel_init,
                                (jnp.shape(inputs)[-1], self.features), self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        return dense_forward(inputs, kernel, bias, features=self.features, dtype=self.dtype,
                             precision=self.precision, backend=self.backend, where=where)


__all__ = ["SparseDense"]
