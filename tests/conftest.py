"""Test-session configuration: tests marked ``slow`` run first.

The README's command runs the suite on two pytest-xdist workers, which take tests in
collection order. Starting the long tests (half a minute to a minute each, or a subprocess)
first lets the short ones fill in around them, so both workers finish together instead of
one running a long test alone at the end.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A stable sort: within each group the collection order (and module grouping) stays.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
