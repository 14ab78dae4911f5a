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


@pytest.fixture(scope="module")
def full_report() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                          " --xla_force_host_platform_device_count=8").strip())
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          env=env, timeout=1800, cwd=SCRIPT.parent.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def report(full_report) -> dict:
    return {k: v for k, v in full_report.items() if k != "__memory__"}


def test_every_family_is_checked_on_both_mesh_kinds(report):
    for mode in ("explicit", "auto"):
        keys = [k for k in report if k.startswith(mode + "/")]
        for family in ("masks/", "masks-jit/", "prune/", "matmul/"):
            assert any(k.startswith(f"{mode}/{family}") for k in keys), (mode, family)
        assert any("global" in k for k in keys if "/masks/" in f"/{k}")
    # Every pattern, global scope for every pattern that has it, layer bounds and overrides.
    for name in ("EW", "TW", "TVW", "NM", "BW", "VW", "TEW", "TW2D", "EW-override",
                 "EW-global", "TW-global", "TVW-global", "BW-global", "VW-global",
                 "TEW-global", "TW2D-global", "EW-global-bounded", "TVW-global-bounded"):
        assert f"explicit/masks/{name}/a" in report, name


def test_sharded_results_equal_single_device(report):
    bad = {k: v for k, v in report.items() if not v["equal"]}
    assert not bad, bad
    # Masks (and thus the pruning decisions) are bit-identical, not just close.
    assert all(v["max_abs"] == 0 for k, v in report.items() if k.endswith("masks") or
               "/masks" in k)


def test_outputs_stay_sharded(report):
    replicated = {k: v for k, v in report.items() if v["replicated"]}
    assert not replicated, replicated
    # Masks and updated params keep their parameter's layout on the explicit mesh.
    for k, v in report.items():
        if k.startswith("explicit/masks") or k.startswith("explicit/prune"):
            assert v["spec"] == v["input_spec"], (k, v)
    # Compressed matmul keeps the batch split over "data".
    for k, v in report.items():
        if "/matmul/" in k:
            assert "data" in v["spec"], (k, v)


def test_mask_update_memory_follows_the_sharding(full_report):
    """The compiled mask-update step of ``chain(sgd, prune(...))`` on 8 devices needs at
    most 1.5x the per-device parameter bytes of temporary memory (issue 19): no leaf is
    gathered. Measured 2026-12-01 in this configuration: EW / TW / N:M 0.13x-0.14x, TVW
    0.89x (layer scope) and 0.91x (global scope); TVW reshards a leaf split along K by whole
    tiles of columns. Before the update step scored the weights entering it, TVW measured
    1.56x / 1.69x here. The issue's larger kernels: ``results/mask_memory.md``."""
    mem = full_report["__memory__"]
    assert set(mem) == {"EW-layer", "EW-global", "TW-global", "NM-layer", "TVW-layer",
                        "TVW-global"}
    for name, ratio in mem.items():
        assert ratio <= 1.5, (name, ratio)
