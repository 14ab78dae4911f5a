"""Sharded parameters (8 simulated CPU devices, a (data=2, model=4) mesh): masks, the prune
transform and compressed matmul give the single-device results and keep a sharded layout.

The checks run in a subprocess (``tests/sharding_check.py``) because
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` must be set before JAX initialises.
They run on a mesh with *explicit* axes (``jax.make_mesh``'s default, sharding in types) and
on one with *auto* axes (classic GSPMD propagation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("sharding_check.py")

# Every pattern, global scope for every pattern that has it, layer bounds and overrides.
LAYER_CASES = ("EW", "TW", "TVW", "NM", "BW", "VW", "TEW", "TW2D", "EW-override")
GLOBAL_CASES = ("EW-global", "TW-global", "TVW-global", "BW-global", "VW-global", "TEW-global",
                "TW2D-global", "EW-global-bounded", "TVW-global-bounded")


def _run(part: str) -> dict:
    """One part of ``sharding_check.py`` in a subprocess (the parts are separate tests so
    the test workers run them side by side)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                          " --xla_force_host_platform_device_count=8").strip())
    proc = subprocess.run([sys.executable, str(SCRIPT), part], capture_output=True, text=True,
                          env=env, timeout=1800, cwd=SCRIPT.parent.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(report: dict, families: tuple[str, ...]) -> None:
    """Sharded results equal the single-device ones (masks bit for bit) and stay sharded."""
    for family in families:
        assert any(f"/{family}/" in k for k in report), family
    bad = {k: v for k, v in report.items() if not v["equal"]}
    assert not bad, bad
    # Masks (and thus the pruning decisions) are bit-identical, not just close.
    assert all(v["max_abs"] == 0 for k, v in report.items() if "/masks" in k)
    replicated = {k: v for k, v in report.items() if v["replicated"]}
    assert not replicated, replicated
    for k, v in report.items():
        # Masks and updated params keep their parameter's layout on the explicit mesh.
        if k.startswith("explicit/masks") or k.startswith("explicit/prune"):
            assert v["spec"] == v["input_spec"], (k, v)
        # Compressed matmul keeps the batch split over "data".
        if "/matmul/" in k:
            assert "data" in v["spec"], (k, v)


@pytest.mark.slow
def test_explicit_mesh_layer_scope_prune_and_matmul():
    report = _run("explicit-layer")
    _check(report, ("masks", "prune", "matmul"))
    for name in LAYER_CASES:
        assert f"explicit/masks/{name}/a" in report, name
    assert not any("global" in k for k in report if "/masks/" in k)


@pytest.mark.slow
def test_explicit_mesh_global_scope():
    report = _run("explicit-global")
    _check(report, ("masks", "masks-jit"))
    for name in GLOBAL_CASES:
        assert f"explicit/masks/{name}/a" in report, name
    jit_cases = {k.split("/")[2] for k in report if k.startswith("explicit/masks-jit/")}
    assert jit_cases == {"EW-global", "TW2D-global", "TVW-global", "TVW-global-bounded"}


@pytest.mark.slow
def test_auto_mesh_one_case_per_family():
    report = _run("auto")
    _check(report, ("masks", "masks-jit", "prune", "matmul"))
    assert any("global" in k for k in report if "/masks/" in k)


@pytest.mark.slow
def test_mask_update_memory_follows_the_sharding():
    """The compiled mask-update step of ``chain(sgd, prune(...))`` on 8 devices needs at
    most 1.5x the per-device parameter bytes of temporary memory (issue 19): no leaf is
    gathered. Measured 2026-12-01 in this configuration: EW / TW / N:M 0.13x-0.14x, TVW
    0.89x (layer scope) and 0.91x (global scope); TVW reshards a leaf split along K by whole
    tiles of columns. Before the update step scored the weights entering it, TVW measured
    1.56x / 1.69x here. The issue's larger kernels: ``results/mask_memory.md``."""
    mem = _run("memory")
    assert set(mem) == {"EW-layer", "EW-global", "TW-global", "NM-layer", "TVW-layer",
                        "TVW-global"}
    for name, ratio in mem.items():
        assert ratio <= 1.5, (name, ratio)
