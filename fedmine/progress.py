"""Round progress for whoever listens (the CLI's progress bar); no-op otherwise.

The training flow calls :func:`report` after every round. The CLI registers a
listener for the duration of a run. Listeners run in the flow's thread and must
be quick.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

Listener = Callable[[int, int, dict], None]
_listeners: list[Listener] = []


def report(round_id: int, rounds: int, global_metrics: dict) -> None:
    for listener in list(_listeners):
        listener(round_id, rounds, global_metrics)


@contextmanager
def listening(listener: Listener):
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
