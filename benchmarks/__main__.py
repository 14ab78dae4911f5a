"""``python -m benchmarks <subcommand>``: see :mod:`benchmarks`."""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> module with ``add_arguments(parser)`` and ``run(args) -> int``.
SUBCOMMANDS: dict[str, str] = {
    "matmul": "benchmarks.matmul",
    "model": "benchmarks.model",
    "masks": "benchmarks.masks",
    "mask_memory": "benchmarks.mask_memory",
    "transform_overhead": "benchmarks.transform_overhead",
}


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one benchmark subcommand."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="tvwjax benchmarks (CPU by default)")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, path in SUBCOMMANDS.items():
        mod = importlib.import_module(path)
        modules[name] = mod
        summary = (mod.__doc__ or name).strip().splitlines()[0]
        p = sub.add_parser(name, help=summary.replace("%", "%%"))
        p.add_argument("--out", default="results", help="output folder (default: results)")
        p.add_argument("--quick", action="store_true", help="a small, fast subset")
        mod.add_arguments(p)
    args = parser.parse_args(argv)
    return int(modules[args.command].run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
