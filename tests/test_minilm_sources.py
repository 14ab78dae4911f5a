"""The offline sentence sources of the calibration-robustness experiments (examples/)."""

from __future__ import annotations

import pytest

from tvwjax.errors import ConfigError


def test_sources_split_disjointly_and_deterministically():
    from examples import minilm_sources as ms

    for source in ("sklearn", "numpy", "scipy"):
        train, held = ms.load(source), ms.load(source, split="heldout")
        assert len(train) > 300 and len(held) > 100, source
        assert not set(train) & set(held), source
        assert ms.load(source, 7) == train[:7]


def test_a_mixture_interleaves_its_sources_without_repeats():
    from examples import minilm_sources as ms

    parts = [ms.load(s) for s in ("sklearn", "numpy", "scipy")]
    mix = ms.load("sklearn+numpy+scipy")
    assert len(mix) == len(set(mix)) == len(set().union(*map(set, parts)))
    assert mix[:6] == [parts[0][0], parts[1][0], parts[2][0], parts[0][1], parts[1][1],
                       parts[2][1]]
    assert not set(mix) & set(ms.load("sklearn+numpy+scipy", split="heldout"))


@pytest.mark.parametrize("source,n,match", [
    ("wiki", None, "source must be one of"), ("numpy+wiki", None, "source must be one of"),
    ("numpy+numpy", None, "twice"), ("numpy", 10**6, "exceeds")])
def test_bad_sources_are_named(source, n, match):
    from examples import minilm_sources as ms

    with pytest.raises(ConfigError, match=match):
        ms.load(source, n)
    with pytest.raises(ConfigError, match="split must be one of"):
        ms.load("scipy", 3, split="test")
