"""Benchmark CLI: ``python -m tvwjax.bench {matmul,model} [--quick] [--out DIR]``.

Subcommands live in their own modules, registered in :data:`tvwjax.bench.__main__.SUBCOMMANDS`
(name -> module path); a module provides ``add_arguments(parser)`` and ``run(args) -> int``.
"""
