"""Fault injection for the chaos tests (tests/test_chaos.py): ``point(name)`` SIGKILLs this process's
whole process group (the driver, its JVM and Python workers, no clean-up) when the environment variable
``WARMSTART_CHAOS_KILL_AT`` names that point. Unset (always, outside tests) it costs one dict lookup.

The points sit where a death is most dangerous: after a stage's data is written and before the pointer
that makes it visible (the published row, the registry's LATEST) or the lineage record."""
from __future__ import annotations

import os
import signal

ENV = "WARMSTART_CHAOS_KILL_AT"


def point(name: str) -> None:
    """Die here, at once and without clean-up, when ``WARMSTART_CHAOS_KILL_AT`` is ``name``."""
    if os.environ.get(ENV) == name:
        os.killpg(os.getpgrp(), signal.SIGKILL)
