"""How many times this process's lineage forked, to notice being a child.

``generation`` is bumped in every forked child, so that an object can tell it
was made by another process (its parent) without asking the kernel for the
pid on each use: compare a stored ``_fork.generation`` with the current one.
"""

from __future__ import annotations

import os

generation = 0


def _after_fork() -> None:
    global generation
    generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
