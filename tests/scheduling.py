"""How the suite is shared between its two pytest-xdist processes (`-n 2` in pyproject.toml).

Most of the suite's time is spent waiting on servers, Celery workers and a browser, so two
processes overlap it on two cores. Tests go to a process in groups, whole (`process_group`):

- a module's tests share its module-scoped servers and data, so a module is a group;
- all of tests/workers share one Redis server, S3 server and Celery worker per process
  (tests/workers/conftest.py), so the package is one group.

Groups are handed out in the order `order_groups` gives them, each to the first process that
runs short of work: the worker suite first (the longest; it trains the run's two bundles as it
starts), then the training modules, which do not need those bundles and keep the other core
busy meanwhile, then the other slow modules, and the quick ones last, to even out the end.
"""

from __future__ import annotations

import pytest
from xdist.scheduler import LoadScopeScheduling

WORKERS = "tests/workers"


def process_group(nodeid: str) -> str:
    """The group of the test `nodeid`: its module's path, or tests/workers for any there."""
    path = nodeid.split("::")[0]
    return WORKERS if path.startswith(WORKERS + "/") else path


def order_groups(items: list[pytest.Item]) -> None:
    """Sort `items` (in place, stably) so that the groups come in the order to hand them out."""
    slow: set[str] = set()
    needs_bundles: set[str] = set()
    for item in items:
        group = process_group(item.nodeid)
        if item.get_closest_marker("slow"):
            slow.add(group)
        if "trained" in getattr(item, "fixturenames", ()):
            needs_bundles.add(group)

    def rank(item: pytest.Item) -> int:
        group = process_group(item.nodeid)
        if group == WORKERS:
            return 0
        if group not in slow:
            return 3
        return 2 if group in needs_bundles else 1

    items.sort(key=rank)


class ProcessGroups(LoadScopeScheduling):
    """pytest-xdist's scope scheduling with `process_group` as the scope, groups handed out in
    collection order (`--no-loadscope-reorder`; `order_groups` sorted it)."""

    def _split_scope(self, nodeid: str) -> str:
        return process_group(nodeid)
