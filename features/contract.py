"""The rules every stage shares, in one place and free of heavy imports (the model's config, the Airflow
DAG's helpers and the Spark jobs all read them): the event vocabulary and the point-in-time cut-off.

A feature, a training example or a candidate list "as of" night D sees only events with
``event_ts < cutoff(D)`` = D + 1 day, 00:00 UTC: the whole of day D and nothing after it.
"""
from __future__ import annotations

import datetime as dt

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "return")


def cutoff(as_of: dt.date) -> dt.datetime:
    """The first instant *not* visible as of ``as_of``: ``as_of + 1 day`` at 00:00 (UTC, naive)."""
    return dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time())
