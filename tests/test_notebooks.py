"""The example notebooks run top to bottom (small configuration) and are committed clean."""

from __future__ import annotations

import time
from pathlib import Path

import nbclient  # the test extra installs these; a missing one must fail, not skip
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.ipynb"))


def test_the_four_notebooks_exist():
    assert NOTEBOOKS == ["01_masks.ipynb", "02_training.ipynb", "03_inference.ipynb",
                         "04_own_model.ipynb"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (name, cell.id)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_matches_its_generator(name):
    from examples import make_notebooks

    built = make_notebooks.build(make_notebooks.NOTEBOOKS[name])
    on_disk = nbformat.read(EXAMPLES / name, as_version=4)
    assert [c.source for c in on_disk.cells] == [c.source for c in built.cells], (
        f"{name} is stale: run python examples/make_notebooks.py")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, monkeypatch):
    """Execute every cell with TVWJAX_SMALL=1; any cell error fails the test.

    The kernel is ``python3``; jupyter_client starts a kernel spec whose command is
    ``python`` with ``sys.executable``, i.e. this venv's interpreter, so the notebook sees
    the same installed tvwjax as the tests.
    """
    monkeypatch.setenv("TVWJAX_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(EXAMPLES)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - t0
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "small configuration" in text, text[:500]
    print(f"{name}: {seconds:.1f} s")
