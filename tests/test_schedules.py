"""Schedules: values at given steps against their formulas, jit-ability, validation."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tvwjax.errors import ConfigError
from tvwjax.patterns import EW, NM, TVW
from tvwjax.schedules import (
    OneShot,
    Polynomial,
    Staged,
)


def _eval(schedule, steps):
    s, u = jax.vmap(jax.jit(schedule))(jnp.asarray(steps, jnp.int32))
    return np.asarray(s), np.asarray(u)


def test_polynomial_matches_zhu_gupta_formula():
    sched = Polynomial(0.8, begin_step=100, end_step=1100, frequency=100, initial_sparsity=0.1)
    steps = np.arange(0, 1400)
    s, u = _eval(sched, steps)
    t = np.clip(steps, 100, 1100)
    want = 0.8 + (0.1 - 0.8) * (1 - (t - 100) / 1000.0) ** 3
    want[steps < 100] = 0.0
    np.testing.assert_allclose(s, want, rtol=1e-6, atol=1e-7)
    assert list(steps[u]) == list(range(100, 1101, 100))
    assert s[1100] == pytest.approx(0.8) and s[-1] == pytest.approx(0.8)


def test_polynomial_power_and_unaligned_end():
    sched = Polynomial(0.5, begin_step=0, end_step=10, frequency=4, power=1)
    s, u = _eval(sched, np.arange(12))
    np.testing.assert_allclose(s[:11], 0.5 * np.arange(11) / 10, rtol=1e-6)
    assert list(np.nonzero(u)[0]) == [0, 4, 8, 10]  # the end step always updates


def test_one_shot():
    s, u = _eval(OneShot(0.75, step=5), np.arange(10))
    assert list(np.nonzero(u)[0]) == [5]
    np.testing.assert_array_equal(s, np.where(np.arange(10) >= 5, 0.75, 0.0).astype(np.float32))


def test_staged_levels_and_finetune_steps():
    sched = Staged((0.25, 0.5, 0.75), finetune_steps=10, begin_step=3)
    assert sched.level_steps == (3, 13, 23)
    s, u = _eval(sched, np.arange(40))
    assert list(np.nonzero(u)[0]) == [3, 13, 23]
    want = np.select([np.arange(40) >= 23, np.arange(40) >= 13, np.arange(40) >= 3],
                     [0.75, 0.5, 0.25], 0.0)
    np.testing.assert_allclose(s, want)
    per = Staged((0.5, 0.9), finetune_steps=(2, 5))
    assert per.level_steps == (0, 2)
    assert per.final_sparsity == 0.9


def test_schedules_are_hashable_and_frozen():
    a = Polynomial(0.75, 0, 100, 10)
    assert hash(a) == hash(Polynomial(0.75, 0, 100, 10))
    assert len({a, OneShot(0.5), Staged((0.5,), 3), OneShot(0.5, step=2)}) == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.final_sparsity = 0.1  # type: ignore[misc]


@pytest.mark.parametrize("make, arg", [
    (lambda: OneShot(1.0), "sparsity"),
    (lambda: OneShot(0.5, step=-1), "step"),
    (lambda: OneShot("0.5"), "sparsity"),
    (lambda: Polynomial(0.5, 10, 10), "end_step"),
    (lambda: Polynomial(0.5, 0, 10, frequency=0), "frequency"),
    (lambda: Polynomial(0.5, 0, 10, initial_sparsity=0.6), "initial_sparsity"),
    (lambda: Polynomial(0.5, 0, 10, power=0), "power"),
    (lambda: Polynomial(float("nan"), 0, 10), "final_sparsity"),
    (lambda: Staged((), 5), "levels"),
    (lambda: Staged((0.5, 0.25), 5), "levels"),
    (lambda: Staged((0.5, 0.75), (5,)), "finetune_steps"),
    (lambda: Staged((0.5,), 0), "finetune_steps"),
    (lambda: OneShot(np.float32(1.5)), "sparsity"),
    (lambda: OneShot(jnp.float32(float("nan"))), "sparsity"),
    (lambda: Staged((0.5, True), 5), "levels"),
])
def test_bad_arguments_name_the_argument(make, arg):
    with pytest.raises(ConfigError, match=arg):
        make()


def test_validate_for_patterns_with_a_floor():
    Polynomial(0.75, 0, 10).validate_for(TVW())  # ramp from 0: rounded up, allowed
    with pytest.raises(ConfigError, match="TVW"):
        Polynomial(0.3, 0, 10).validate_for(TVW())
    with pytest.raises(ConfigError):
        Staged((0.25, 0.5), 5).validate_for(TVW())
    with pytest.raises(ConfigError):
        OneShot(0.75).validate_for(NM())
    OneShot(0.5).validate_for(NM())
    Staged((0.1, 0.9), 5).validate_for(EW())


def test_effective_sparsity_rounds_up_to_the_floor():
    assert TVW().floor == 0.5 and EW().floor == 0.0 and NM().floor == 0.5
    f = jax.jit(lambda s: TVW().effective_sparsity(s))
    assert float(f(0.0)) == 0.0 and float(f(0.1)) == 0.5 and float(f(0.8)) == pytest.approx(0.8)
    assert float(NM().effective_sparsity(0.2)) == 0.5
    assert float(EW().effective_sparsity(0.2)) == pytest.approx(0.2)
    # traced values are clipped to [0, 1) (1 or more: the largest float32 below 1, so a
    # leaf keeps its minimum); NaN reads as dense
    g = jax.jit(lambda s: EW().effective_sparsity(s))
    below_one = float(np.nextafter(np.float32(1), np.float32(0)))
    assert float(g(-0.1)) == 0.0 and float(g(1.5)) == below_one and float(g(jnp.nan)) == 0.0


def test_concrete_scalars_are_stored_as_floats():
    s = OneShot(jnp.float32(0.5))
    assert type(s.sparsity) is float and hash(s) == hash(OneShot(0.5))
    assert type(Polynomial(np.float64(0.75), 0, 10).final_sparsity) is float
