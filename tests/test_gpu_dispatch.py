"""``tvwjax.matmul(..., backend="gpu")`` picks the Pallas kernel by compute capability, and
``tvwjax.backends()`` reports the choice.

Without a GPU the choice is checked where it shows: the computation is exported for
``cuda`` with the compute capability set, and the kernel it launches is read out of the
lowered module (Mosaic GPU ``wgmma`` / sparse ``tcgen05``, or a Triton custom call)."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import pytest

import tvwjax
from tests.test_mosaic_kernels import _mosaic_modules
from tests.test_pallas_kernels import skip_cuda_lowering_without_gpu

matmul_mod = importlib.import_module("tvwjax.matmul")  # the module (tvwjax.matmul is the function)


@pytest.mark.parametrize(("fmt", "dtype", "cc", "expect"), [
    ("tw", jnp.bfloat16, (9, 0), "tw_matmul_hopper"),
    ("tw", jnp.float16, (9, 0), "tw_matmul_hopper"),
    ("tw", jnp.float32, (9, 0), "tw_matmul"),
    ("tw", jnp.bfloat16, (8, 0), "tw_matmul"),
    ("tw", jnp.bfloat16, (10, 0), "tw_matmul"),
    ("tvw", jnp.bfloat16, (10, 0), "tvw_matmul_blackwell"),
    ("tvw", jnp.bfloat16, (12, 0), "tvw_matmul_blackwell"),
    ("tvw", jnp.float32, (10, 0), "tvw_matmul"),
    ("tvw", jnp.bfloat16, (9, 0), "tvw_matmul"),
    ("tvw", jnp.float16, (8, 6), "tvw_matmul"),
    ("tw", jnp.bfloat16, None, "tw_matmul"),
])
def test_kernel_choice_by_capability(fmt, dtype, cc, expect):
    assert matmul_mod.gpu_kernel_for(fmt, dtype, cc) == expect
    assert expect in matmul_mod.GPU_KERNELS


def test_wide_tiles_stay_on_triton():
    assert matmul_mod.gpu_kernel_for("tw", jnp.bfloat16, (9, 0), tile_width=512) == "tw_matmul"


def test_backends_report_without_gpu():
    rep = tvwjax.backends()["tile_formats_gpu"]
    assert set(rep) == {"compute_capability", "tw", "tvw", "tw_float32", "tvw_float32",
                        "last_kernel"}
    if not any(d.platform == "gpu" for d in jax.devices()):
        assert rep["compute_capability"] is None and rep["tw"] is None


def _weights(dtype):
    w = jax.random.normal(jax.random.key(0), (256, 200), jnp.float32)
    out = {}
    for name, pattern in (("tw", tvwjax.TW(tile=128, column_share=0.0)),
                          ("tvw", tvwjax.TVW(tile=128))):
        mask = pattern.mask(jnp.abs(w), 0.75)
        out[name] = tvwjax.compress(w.astype(dtype), mask, pattern)
    return out


@pytest.mark.parametrize(("cc", "fmt", "marker"), [
    ((9, 0), "tw", "wgmma.mma_async"),
    ((10, 0), "tvw", "tcgen05.mma.sp"),
])
def test_gpu_backend_launches_the_mosaic_kernel(monkeypatch, cc, fmt, marker):
    monkeypatch.setattr(matmul_mod, "gpu_compute_capability", lambda: cc)
    cw = _weights(jnp.bfloat16)[fmt]
    x = jax.ShapeDtypeStruct((33, 256), jnp.bfloat16)
    _, texts = _mosaic_modules(lambda x: tvwjax.matmul(x, cw, backend="gpu"), x)
    assert len(texts) == 1 and marker in texts[0]
    expect = "tw_matmul_hopper" if fmt == "tw" else "tvw_matmul_blackwell"
    rep = tvwjax.backends()["tile_formats_gpu"]
    assert rep["last_kernel"] == expect


def test_gpu_backend_on_ampere_launches_triton(monkeypatch):
    monkeypatch.setattr(matmul_mod, "gpu_compute_capability", lambda: (8, 0))
    skip_cuda_lowering_without_gpu()
    cw = _weights(jnp.bfloat16)["tvw"]
    exp = jax.export.export(
        jax.jit(lambda x: tvwjax.matmul(x, cw, backend="gpu")), platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(jax.ShapeDtypeStruct((33, 256), jnp.bfloat16))
    text = exp.mlir_module()
    assert "__gpu$xla.gpu.triton" in text and "mosaic_gpu" not in text
    assert tvwjax.backends()["tile_formats_gpu"]["last_kernel"] == "tvw_matmul"
