"""Exception types raised by tvwjax.

Every error the library raises on bad input is a subclass of :class:`TvwError`, which is
itself a :class:`ValueError` (or :class:`TypeError` for dtype problems), so existing
``except ValueError`` handlers keep working. Messages name the parameter or the pytree leaf
path and say what was expected and what arrived.

=========================  ==============================================================
type                       raised when
=========================  ==============================================================
``ConfigError``            a pattern, schedule or function argument is out of range or
                           inconsistent (sparsity outside [0, 1), tile <= 0, ...)
``ShapeError``             an array has the wrong rank or shape, or a dimension is not
                           divisible as the pattern requires
``DTypeError``             an array has an unsupported dtype (integer weights, complex)
``ScoreError``             scores contain NaN or Inf, or are negative
``TreeMismatchError``      two pytrees that must share a structure do not
``PatternViolationError``  a mask does not follow the pattern it is claimed to follow
``FormatError``            a compressed weight's index tables or values are inconsistent
                           or out of range (constructor, ``replace``, checkpoint restore)
=========================  ==============================================================
"""

from __future__ import annotations


class TvwError(ValueError):
    """Base class of every tvwjax input error."""


class ConfigError(TvwError):
    """A configuration value is out of range or inconsistent."""


class ShapeError(TvwError):
    """An array has the wrong rank or shape, or a dimension is not divisible."""


class DTypeError(TvwError, TypeError):
    """An array has an unsupported dtype."""


class ScoreError(TvwError):
    """Scores contain NaN or Inf, or negative values."""


class TreeMismatchError(TvwError):
    """Two pytrees that must have the same structure do not."""


class PatternViolationError(TvwError):
    """A mask breaks the sparsity pattern it is checked against."""


class FormatError(TvwError):
    """A compressed weight's index tables or values are inconsistent or out of range."""


class PruneOrderWarning(UserWarning):
    """A pruning transform saw pruned weights that are not zero: it is chained before the
    optimizer instead of after it."""


class CalibrationWarning(UserWarning):
    """A one-shot refit ran on too few calibration rows (tokens) for its layers' input width:
    it then fits the calibration text more than the layer."""


__all__ = [
    "ConfigError",
    "DTypeError",
    "FormatError",
    "PatternViolationError",
    "PruneOrderWarning",
    "CalibrationWarning",
    "ScoreError",
    "ShapeError",
    "TreeMismatchError",
    "TvwError",
]
