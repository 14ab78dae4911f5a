"""The CPU-side parts of the GPU check (``python -m benchmarks.gpu_kernels``): it refuses to
run without a GPU, builds tile data of the requested sparsity, and its correctness check
(run here on the interpret-mode kernels) passes real kernels and catches a wrong one."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import gpu_kernels
from pallas_kernels import tiles_to_dense, tvw_compact_blocks


def test_exits_2_without_gpu(capsys, tmp_path):
    if gpu_kernels.has_gpu():
        pytest.skip("a GPU is present: the check would run")
    assert gpu_kernels.main(["--out", str(tmp_path)]) == 2
    assert "no GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9])
def test_tile_data_has_the_requested_sparsity(sparsity):
    rng = np.random.default_rng(0)
    k, n = 64, 200
    for tvw in (False, True):
        d = gpu_kernels.make_tiles(rng, k, n, sparsity, 128, jnp.float32, tvw=tvw)
        blocks = tvw_compact_blocks(d["values"], d["meta"]) if tvw else d["values"]
        w = tiles_to_dense(blocks, d["rows"], d["cols"], k, n, d["counts"])
        assert abs(float(jnp.mean(w == 0)) - sparsity) < 0.03


def test_check_cases_are_awkward():
    rng = np.random.default_rng(1)
    for m, k, n, g, kp in gpu_kernels.CHECK_CASES:
        assert n % g or m % 64  # a ragged last tile or M off the blocks
        d = gpu_kernels.make_tiles(rng, k, n, 0.5, g, jnp.float32, tvw=False, kp=kp,
                                   ragged_counts=True, empty_tile=1)
        counts = np.asarray(d["counts"])
        assert counts[1] == 0 and counts[0] == kp and np.any(counts % 64)


def test_available_kernels_by_capability():
    assert gpu_kernels.available_kernels((8, 0)) == ["tw_matmul", "tvw_matmul"]
    assert "tw_matmul_hopper" in gpu_kernels.available_kernels((9, 0))
    assert "tvw_matmul_blackwell" in gpu_kernels.available_kernels((10, 0))
    assert "tw_matmul_hopper" not in gpu_kernels.available_kernels((10, 0))


SMALL = ((5, 40, 37, 16, 24),)


def test_check_passes_the_interpret_mode_kernels():
    rows = gpu_kernels.check(["tw_matmul", "tvw_matmul", "tw_matmul_hopper"], cases=SMALL,
                             dtypes=("bfloat16", "float32"), interpret=True)
    assert len(rows) == 5  # the Hopper kernel skips float32
    assert all(r["ok"] for r in rows), rows


def test_check_catches_a_wrong_kernel():
    def off_by_one_column(d, x, interpret):
        y = gpu_kernels.KERNELS["tw_matmul"][1](d, x, interpret)
        return jnp.roll(y, 1, axis=1)

    rows = gpu_kernels.check(["tw_matmul"], cases=SMALL, dtypes=("float32",),
                             interpret=True, runners={"tw_matmul": ("tw", off_by_one_column)})
    assert rows and not any(r["ok"] for r in rows)
    md = gpu_kernels.to_markdown(rows, [dict(op="dense", M=16, K=64, N=64, sparsity=0.0,
                                             dtype="bfloat16", median_s=1e-5,
                                             ratio_vs_dense=1.0)], ["M=4096 K=768 N=768"],
                                 "test")
    assert "| tw_matmul | float32 | 5 | 40 | 37 | 16 | 24 |" in md and "| NO |" in md
    assert "| dense | 16 | 64 | 64 | 0.00 |" in md and "Not run (time budget, or failed)" in md


def _interpret(name):
    """A runner of ``name`` forced into interpret mode (the CPU stands in for the GPU)."""
    fmt, runner = gpu_kernels.KERNELS[name]
    return fmt, lambda d, x, interpret: runner(d, x, True)


@pytest.mark.parametrize(("cc", "kernels"), [
    ((9, 0), ["tw_matmul", "tvw_matmul", "tw_matmul_hopper"]),
    ((10, 0), ["tw_matmul", "tvw_matmul", "tvw_matmul_blackwell"]),
])
@pytest.mark.slow
def test_the_whole_check_runs_with_the_cpu_standing_in(monkeypatch, tmp_path, cc, kernels):
    """``run`` end to end (check, speed sweep, JSON + markdown) on tiny shapes, the kernels
    in interpret mode (the Blackwell one with its MMA emulated): what the one GPU run will
    execute, minus the GPU."""
    import json

    from pallas_kernels.tvw_matmul_blackwell import blackwell_forward
    from tests.test_mosaic_kernels import _emulated_tcgen05_call

    monkeypatch.setattr(gpu_kernels, "has_gpu", lambda: True)
    monkeypatch.setattr(gpu_kernels, "gpu_compute_capability", lambda: cc)
    monkeypatch.setattr(gpu_kernels, "device_name", lambda: "CPU standing in")
    monkeypatch.setattr(gpu_kernels, "CHECK_CASES", SMALL)
    monkeypatch.setattr(gpu_kernels, "CHECK_DTYPES", ("bfloat16",))
    monkeypatch.setattr(gpu_kernels, "QUICK_M", (3,))
    monkeypatch.setattr(gpu_kernels, "QUICK_KN", ((64, 40), (32, 24)))
    monkeypatch.setattr(gpu_kernels, "SPEED_SPARSITY", (0.75,))
    monkeypatch.setattr(gpu_kernels, "TILE", 16)
    for name in ("tw_matmul", "tvw_matmul", "tw_matmul_hopper"):
        monkeypatch.setitem(gpu_kernels.KERNELS, name, _interpret(name))
    monkeypatch.setitem(gpu_kernels.KERNELS, "tvw_matmul_blackwell", ("tvw", lambda d, x, _: (
        blackwell_forward(x, d["values"], d["meta"], d["rows"], d["cols"], d["counts"],
                          n_out=d["n"], block_m=64, kernel_call=_emulated_tcgen05_call))))
    # budget 0: the first (K, N, M) group runs whatever the budget, the next are "not run"
    rc = gpu_kernels.main(["--out", str(tmp_path), "--quick", "--repeats", "1",
                           "--budget-s", "0"])
    assert rc == 0
    payload = json.loads((tmp_path / "gpu_check.json").read_text())
    assert payload["kernels"] == kernels and payload["compute_capability"] == f"{cc[0]}.{cc[1]}"
    assert payload["check"] and all(r["ok"] for r in payload["check"])
    assert {r["kernel"] for r in payload["check"]} == set(kernels)
    # the library path (masks -> compress -> jit(matmul) and its gradient) ran and agreed
    lib = payload["library_path"]
    assert {(r["pattern"], r["dtype"]) for r in lib} == {
        (p, d) for p in ("TW", "TVW") for d in ("bfloat16", "float32")}
    assert all(r["ok"] and r["grad_max_abs_err"] <= r["tolerance"] for r in lib), lib
    ops = {r["op"] for r in payload["records"]}
    extra = ({"pregather_tw", "tvw_decoded_hopper"} if cc[0] == 9
             else {"tcgen05_convert", "pregather_tvw"})
    assert ops == {"dense", *kernels, *extra}
    assert all(r["median_s"] > 0 and r["M"] == 3 and r["K"] == 64 for r in payload["records"])
    assert payload["not_run"] == ["M=3 K=32 N=24"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "## Correctness" in md and "## Speed" in md and "Not run (time budget, or failed)" in md


def test_a_kernel_that_raises_is_reported_and_the_others_still_timed(monkeypatch, tmp_path):
    """On the one GPU run a kernel that fails to lower or launch must not cost the rest of
    the check: its rows carry the error, it is not timed, and the exit status is 1."""
    import json

    def broken(d, x, interpret):
        raise RuntimeError("Mosaic GPU lowering failed:\n  some long\n  message")

    monkeypatch.setattr(gpu_kernels, "has_gpu", lambda: True)
    monkeypatch.setattr(gpu_kernels, "gpu_compute_capability", lambda: (8, 0))
    monkeypatch.setattr(gpu_kernels, "device_name", lambda: "CPU standing in")
    monkeypatch.setattr(gpu_kernels, "CHECK_CASES", SMALL)
    monkeypatch.setattr(gpu_kernels, "CHECK_DTYPES", ("float32",))
    monkeypatch.setattr(gpu_kernels, "QUICK_M", (3,))
    monkeypatch.setattr(gpu_kernels, "QUICK_KN", ((64, 40),))
    monkeypatch.setattr(gpu_kernels, "SPEED_SPARSITY", (0.75,))
    monkeypatch.setattr(gpu_kernels, "TILE", 16)
    monkeypatch.setitem(gpu_kernels.KERNELS, "tw_matmul", _interpret("tw_matmul"))
    monkeypatch.setitem(gpu_kernels.KERNELS, "tvw_matmul", ("tvw", broken))
    rc = gpu_kernels.main(["--out", str(tmp_path), "--quick", "--repeats", "1"])
    assert rc == 1
    payload = json.loads((tmp_path / "gpu_check.json").read_text())
    bad = [r for r in payload["check"] if r["kernel"] == "tvw_matmul"]
    assert bad and all(not r["ok"] and r["error"].startswith("RuntimeError: Mosaic GPU "
                                                             "lowering failed: some long")
                       for r in bad)
    assert all(r["ok"] for r in payload["check"] if r["kernel"] == "tw_matmul")
    assert {r["op"] for r in payload["records"]} == {"dense", "tw_matmul"}
    assert payload["not_run"] == ["tvw_matmul (failed its check)"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "Errors:" in md and "- tvw_matmul float32 M=5" in md


def test_hopper_tuning_times_every_config_and_reports_the_ones_that_fail(monkeypatch):
    import functools

    from pallas_kernels import tw_matmul_hopper

    monkeypatch.setattr(gpu_kernels, "tw_matmul_hopper",
                        functools.partial(tw_matmul_hopper, interpret=True))
    monkeypatch.setattr(gpu_kernels, "TUNE_SHAPES", ((3, 64, 40, 0.75),))
    monkeypatch.setattr(gpu_kernels, "TILE", 16)
    monkeypatch.setattr(gpu_kernels, "HOPPER_CONFIGS", ((64, 16, 2), (64, 16, 3), (32, 16, 2)))
    recs = gpu_kernels.tune_hopper(repeats=1)
    assert [r["op"] for r in recs] == [
        "tw_matmul_hopper[block_m=64,block_k=16,stages=2]",
        "tw_matmul_hopper[block_m=64,block_k=16,stages=3]",
        "tw_matmul_hopper[block_m=32,block_k=16,stages=2]"]
    assert all(r["median_s"] > 0 and r["ratio_vs_dense"] > 0 for r in recs[:2])
    assert "block_m must be 64 or 128" in recs[2]["error"]  # reported, not raised
