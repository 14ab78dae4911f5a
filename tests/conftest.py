"""Test-session configuration: tests marked ``slow`` run first.

The README's command runs the suite on two pytest-xdist workers with ``--dist worksteal``:
each worker starts with half of the tests in collection order, and a worker that runs out
takes half of what the other has not started. Starting the long tests (half a minute to a
minute each, or a subprocess) first leaves only short ones to be shared at the end, so both
workers finish together instead of one running a long test alone.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A stable sort: within each group the collection order (and module grouping) stays.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
