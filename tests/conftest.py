"""Test-suite configuration: the longest tests are collected first.

``pytest -n 2`` (the README's command) hands tests to its two workers in collection order.
A long test collected late (the sharding check's subprocess, about 2-3 minutes on two
busy cores) can leave one worker running it alone at the end; collected first, it overlaps
with the many short tests instead. The order of every other test is unchanged, and a
module's tests stay together (``test_sharding.py`` shares one subprocess between them).
"""

from __future__ import annotations

import pytest

#: Node-id prefixes of the longest tests, in the order they are collected first.
LONG_FIRST = (
    "tests/test_sharding.py::",
    "tests/test_notebooks.py::test_notebook_runs",
    "tests/test_minilm_prune.py::test_quick_run",
    "tests/test_mask_properties.py::test_eager_jit_traced_and_prune_agree",
    "tests/test_demo.py::",
)


def _rank(item: pytest.Item) -> int:
    for i, prefix in enumerate(LONG_FIRST):
        if item.nodeid.startswith(prefix):
            return i
    return len(LONG_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: the rest keep their order
