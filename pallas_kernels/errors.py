"""Exceptions the Pallas kernels raise on inputs that break their layout contract.

``pallas_kernels`` depends on nothing but JAX and NumPy, so it has its own small hierarchy.
Every class is a :class:`ValueError` (:class:`KernelDTypeError` also a :class:`TypeError`);
messages name the parameter and say what was expected and what arrived.
"""

from __future__ import annotations


class KernelInputError(ValueError):
    """Base class of every input error raised by :mod:`pallas_kernels`."""


class KernelShapeError(KernelInputError):
    """An array has the wrong rank or shape for the tile layout."""


class KernelDTypeError(KernelInputError, TypeError):
    """An array has a dtype the kernels do not accept."""


class KernelConfigError(KernelInputError):
    """A static parameter (block size, warps, stages, ``n_out``, plane) is out of range."""


__all__ = ["KernelConfigError", "KernelDTypeError", "KernelInputError", "KernelShapeError"]
