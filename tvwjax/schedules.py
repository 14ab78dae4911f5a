"""Pruning schedules: pure, jit-able functions of the optimizer step.

A schedule is a frozen (hashable) dataclass; calling it on a step returns
``(sparsity, update)``: the target sparsity at that step (float32 scalar) and whether the
masks are recomputed at that step (bool scalar). Steps count optimizer updates from 0.
Both values are computed with ``jnp`` only, so ``step`` may be a traced integer.

==================  ====================================================================
:class:`OneShot`    prune once to ``sparsity`` at ``step``, then fine-tune with fixed masks
:class:`Polynomial` gradual pruning of Zhu & Gupta (2017), cubic by default:
                    ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))**3``
:class:`Staged`     the recipe of Guo et al. (2020): prune to each level once, then
                    fine-tune for a number of steps before the next level
==================  ====================================================================

(Fine-tuning with fixed masks needs no schedule: see :func:`tvwjax.fixed_masks`.)

Patterns with a sparsity floor (``NM`` allows only ``0`` or ``1 - n/m``; ``TVW`` allows
``0`` or at least ``1 - n/m``): when the sparsity reaches the pattern as a traced value, a
target below the floor is *rounded up to the floor*. Early in a gradual ramp the schedule's
target can therefore be below what the masks really prune.
:meth:`Pattern.effective_sparsity <tvwjax.Pattern.effective_sparsity>` gives the sparsity
the masks actually have, and :class:`tvwjax.transform.PruneState` records it.
To make the ramp start at the floor instead of jumping to it, use
``Polynomial(final, initial_sparsity=1 - n/m, ...)``.

References:
  M. Zhu and S. Gupta, "To prune, or not to prune: exploring the efficacy of pruning for
  model compression", arXiv:1710.01878, 2017.
  C. Guo et al., "Accelerating Sparse DNN Models without Hardware-Support via Tile-Wise
  Sparsity", SC 2020.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from tvwjax import _validate as val
from tvwjax.errors import ConfigError
from tvwjax.patterns import Pattern

Array = jax.Array
Step = int | Array


def _check_sparsity(obj: Schedule, name: str) -> float:
    """Validate the sparsity field ``name`` of ``obj`` and store it as a Python float."""
    value = getattr(obj, name)
    if val.is_traced(value):
        raise ConfigError(f"{obj.name}: {name} must be a concrete number (a schedule is "
                          "static), got a traced value")
    v = val.sparsity(value, f"{obj.name}: {name}")
    object.__setattr__(obj, name, v)
    return v


def _step(step: Step) -> Array:
    """The step (an int, or an integer array of steps) as int32; floats, bools, strings and
    negative steps raise :class:`ConfigError`."""
    if isinstance(step, np.ndarray | jax.Array) and np.ndim(step) > 0:
        if not jnp.issubdtype(step.dtype, jnp.integer):
            raise ConfigError(f"schedule step must be an integer or an integer array, got "
                              f"dtype {step.dtype}")
        if not val.is_traced(step) and (np.asarray(step) < 0).any():
            raise ConfigError("schedule step must be an integer >= 0, got negative steps")
        return jnp.asarray(step, jnp.int32)
    if val.is_traced(step):
        if not jnp.issubdtype(step.dtype, jnp.integer):
            raise ConfigError(f"schedule step must be an integer scalar, got a traced "
                              f"{step.dtype} value")
        return step.astype(jnp.int32)
    return jnp.asarray(val.int_at_least(step, "schedule step", 0), jnp.int32)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Base class: ``schedule(step) -> (sparsity, update)``."""

    name: ClassVar[str] = "schedule"

    def __call__(self, step: Step) -> tuple[Array, Array]:
        """Target sparsity (float32) and mask-update flag (bool) at ``step``.

        Args:
          step: the optimizer step (0 for the first update); a Python int or traced int.

        Returns:
          ``(sparsity, update)`` scalars.
        """
        raise NotImplementedError

    # Every subclass has a ``final_sparsity`` (a field or a property): where it ends.

    def targets(self) -> tuple[float, ...]:
        """Static sparsities that are guaranteed to be reached (for validation)."""
        return (self.final_sparsity,)  # type: ignore[attr-defined]

    def validate_for(self, pattern: Pattern) -> None:
        """Raise :class:`ConfigError` if ``pattern`` cannot produce this schedule's targets."""
        for s in self.targets():
            pattern.validate_sparsity(float(s), f"{self.name}: sparsity")


@dataclasses.dataclass(frozen=True)
class OneShot(Schedule):
    """Prune once to ``sparsity`` at ``step``; masks stay fixed afterwards.

    Args:
      sparsity: target sparsity in ``[0, 1)``.
      step: the step at which the masks are computed (default 0, the first update).
    """

    sparsity: float
    step: int = 0
    name: ClassVar[str] = "OneShot"

    def __post_init__(self):
        _check_sparsity(self, "sparsity")
        val.int_field(self, "step", 0, "OneShot")

    @property
    def final_sparsity(self) -> float:
        return float(self.sparsity)

    def __call__(self, step: Step) -> tuple[Array, Array]:
        t = _step(step)
        s = jnp.where(t >= self.step, jnp.float32(self.sparsity), jnp.float32(0.0))
        return s, t == self.step


@dataclasses.dataclass(frozen=True)
class Polynomial(Schedule):
    """Gradual polynomial pruning (Zhu & Gupta, 2017), cubic by default.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** power`` for
    ``t0 <= t <= t0 + n*dt``; ``0`` before ``t0`` (dense) and ``s_f`` after. Masks are
    recomputed at ``t0, t0 + dt, t0 + 2 dt, ...`` and always at ``end_step``, so the final
    sparsity is reached even when ``end_step - begin_step`` is not a multiple of ``dt``.

    Args:
      final_sparsity: ``s_f`` in ``[0, 1)``.
      begin_step: ``t0``, the first pruning step.
      end_step: ``t0 + n*dt``, the step at which ``s_f`` is reached (``> begin_step``).
      frequency: ``dt``, steps between mask updates (``>= 1``).
      initial_sparsity: ``s_i`` (default 0), the sparsity at ``begin_step``.
      power: the exponent (3 = cubic, 1 = linear).
    """

    final_sparsity: float
    begin_step: int
    end_step: int
    frequency: int = 100
    initial_sparsity: float = 0.0
    power: float = 3.0
    name: ClassVar[str] = "Polynomial"

    def __post_init__(self):
        _check_sparsity(self, "final_sparsity")
        _check_sparsity(self, "initial_sparsity")
        val.int_field(self, "begin_step", 0, "Polynomial")
        val.int_field(self, "end_step", 0, "Polynomial")
        val.int_field(self, "frequency", 1, "Polynomial")
        if self.end_step <= self.begin_step:
            raise ConfigError(f"Polynomial: end_step must be greater than begin_step, got "
                              f"begin_step={self.begin_step}, end_step={self.end_step}")
        if self.initial_sparsity > self.final_sparsity:
            raise ConfigError(f"Polynomial: initial_sparsity must be <= final_sparsity, got "
                              f"{self.initial_sparsity!r} > {self.final_sparsity!r}")
        object.__setattr__(self, "power", val.number(self.power, "Polynomial: power"))
        if not math.isfinite(self.power) or self.power <= 0:
            raise ConfigError(f"Polynomial: power must be a positive number, got {self.power!r}")

    def targets(self) -> tuple[float, ...]:
        return (float(self.final_sparsity),)

    def __call__(self, step: Step) -> tuple[Array, Array]:
        t = _step(step)
        span = self.end_step - self.begin_step
        progress = jnp.clip((t - self.begin_step).astype(jnp.float32) / span, 0.0, 1.0)
        s_f, s_i = jnp.float32(self.final_sparsity), jnp.float32(self.initial_sparsity)
        s = s_f + (s_i - s_f) * (1.0 - progress) ** self.power
        s = jnp.where(t < self.begin_step, jnp.float32(0.0), s)
        in_range = (t >= self.begin_step) & (t <= self.end_step)
        on_grid = ((t - self.begin_step) % self.frequency == 0) | (t == self.end_step)
        return s, in_range & on_grid


@dataclasses.dataclass(frozen=True)
class Staged(Schedule):
    """Staged pruning (Guo et al., 2020): prune to each level once, then fine-tune.

    Level ``i`` is applied at ``begin_step + sum(finetune_steps[:i])`` and held for
    ``finetune_steps[i]`` steps; after the last level training continues at the last level.

    Args:
      levels: increasing sparsities, e.g. ``(0.25, 0.5, 0.75)``.
      finetune_steps: steps of fine-tuning after each level: one int for all levels or one
        per level.
      begin_step: the step of the first level (dense before it).
    """

    levels: tuple[float, ...]
    finetune_steps: int | tuple[int, ...]
    begin_step: int = 0
    name: ClassVar[str] = "Staged"

    def __post_init__(self):
        if not isinstance(self.levels, tuple | list) or len(self.levels) == 0:
            raise ConfigError(f"Staged: levels must be a non-empty tuple of sparsities, got "
                              f"{self.levels!r}")
        object.__setattr__(self, "levels", tuple(
            val.sparsity(x, f"Staged: levels[{i}]") for i, x in enumerate(self.levels)))
        if any(val.is_traced(x) for x in self.levels):
            raise ConfigError("Staged: levels must be concrete numbers (a schedule is static)")
        if any(b < a for a, b in zip(self.levels, self.levels[1:], strict=False)):
            raise ConfigError(f"Staged: levels must be non-decreasing, got {self.levels!r}")
        ft = self.finetune_steps
        if isinstance(ft, list):
            ft = tuple(ft)
            object.__setattr__(self, "finetune_steps", ft)
        if isinstance(ft, tuple):
            if len(ft) != len(self.levels):
                raise ConfigError(f"Staged: finetune_steps must have one entry per level "
                                  f"({len(self.levels)}), got {len(ft)}")
            object.__setattr__(self, "finetune_steps", tuple(
                val.int_at_least(k, f"Staged: finetune_steps[{i}]", 1) for i, k in enumerate(ft)))
        else:
            val.int_field(self, "finetune_steps", 1, "Staged")
        val.int_field(self, "begin_step", 0, "Staged")

    @property
    def final_sparsity(self) -> float:
        return self.levels[-1]

    def targets(self) -> tuple[float, ...]:
        return self.levels

    @property
    def level_steps(self) -> tuple[int, ...]:
        """The step at which each level is applied."""
        ft = self.finetune_steps
        ft = ft if isinstance(ft, tuple) else (ft,) * len(self.levels)
        return tuple(int(x) for x in self.begin_step + np.concatenate([[0], np.cumsum(ft)[:-1]]))

    def __call__(self, step: Step) -> tuple[Array, Array]:
        t = _step(step)
        starts = jnp.asarray(self.level_steps, jnp.int32)
        idx = jnp.sum(t >= starts) - 1  # -1 before the first level
        levels = jnp.asarray(self.levels, jnp.float32)
        s = jnp.where(idx >= 0, levels[jnp.maximum(idx, 0)], jnp.float32(0.0))
        return s, jnp.any(t == starts)


__all__ = ["OneShot", "Polynomial", "Schedule", "Staged"]
