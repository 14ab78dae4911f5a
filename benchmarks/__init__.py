"""Benchmarks of tvwjax, run from the repository root (CPU by default)::

    python -m benchmarks matmul [--quick]              # sparse matmul vs dense, BCOO, blocks
    python -m benchmarks model [--quick]               # BERT-base-shaped encoder end to end
    python -m benchmarks masks [--quick]               # mask derivation vs one training step
    python -m benchmarks transform_overhead [--quick]  # prune() in a training step
    python -m benchmarks mask_memory [--quick]         # mask-update memory on 1-8 devices

Each writes ``<out>/<name>.{json,md}`` (``--out``, default ``results``). Subcommands live in
their own modules, registered in :data:`benchmarks.__main__.SUBCOMMANDS`; a module provides
``add_arguments(parser)`` and ``run(args) -> int``, and the shared timing and reporting
helpers are in :mod:`benchmarks._timing`.
"""
