"""``examples/demo.py``: a tiny run prints the table; bad flags exit 2 with one line on stderr."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from examples import demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_run_prints_one_table(capsys):
    rc = demo.main(["--steps", "12", "--repeats", "2", "--batch", "4", "--compare", "TW",
                    "--seed", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| model | format | test accuracy | sparsity conv2+fc1 |")
    assert "ms / batch of 4" in table[0]
    rows = {cells[0]: cells for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    assert list(rows) == ["dense", "TVW 75%", "TW 75%"]
    assert rows["dense"][5] == "1.000" and rows["dense"][7] == "1.00x"
    assert rows["TVW 75%"][1].startswith("TileVectorWise") and rows["TW 75%"][1] == "TileWise"
    for name in ("TVW 75%", "TW 75%"):
        sparsity = float(rows[name][3].rstrip("%"))
        assert 74.0 <= sparsity <= 78.0, rows[name]
        assert float(rows[name][5]) < 0.3, rows[name]          # stored bytes vs dense
        assert re.fullmatch(r"\d+\.\d\dx", rows[name][7]), rows[name]
    assert "agree to" in out and "load average" in out


def test_config_budget_and_defaults():
    cfg = demo.parse_args([])
    assert (cfg.pattern, cfg.sparsity, cfg.tile, cfg.compare) == ("TVW", 0.75, 128, ("TW", "EW"))
    b = cfg.budget
    assert b.pretrain_steps + b.prune_steps + b.finetune_steps == cfg.steps
    nm = demo.parse_args(["--pattern", "nm"])
    assert nm.pattern == "NM" and nm.sparsity == 0.5 and nm.compare == ("TW", "EW")
    tw = demo.parse_args(["--pattern", "TW", "--sparsity", "0.4"])
    assert tw.compare == ("EW",)          # TVW cannot go below 50%: left out of 'auto'


@pytest.mark.parametrize("argv, needle", [
    (["--sparsity", "1.5"], "--sparsity must be in (0, 1)"),
    (["--pattern", "XYZ"], "unknown --pattern 'XYZ'"),
    (["--pattern", "NM", "--sparsity", "0.75"], "fixed at 0.5"),
    (["--pattern", "TVW", "--sparsity", "0.3"], "at least 0.5"),
    (["--steps", "abc"], "invalid int value"),
    (["--compare", "NM"], "fixed at 0.5"),
], ids=["sparsity-1.5", "unknown-pattern", "nm-75", "tvw-30", "steps-abc", "compare-nm"])
def test_bad_flags_exit_2_with_one_line(argv, needle):
    # run as the README does: a script, from the repository root (not on sys.path then)
    p = subprocess.run([sys.executable, "examples/demo.py", *argv], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("examples/demo.py: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in p.stderr and p.stdout == ""
