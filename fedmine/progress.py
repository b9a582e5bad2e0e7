"""Round progress for whoever listens (the CLI's progress bar); no-op otherwise.

The training flow calls :func:`report` after every round. The CLI registers a
listener for the duration of a run. Listeners run in the flow's thread and must
be quick. A listener that returns True asks the training to stop after this
round (``fedmine tune`` prunes a trial so); the model is kept as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

Listener = Callable[[int, int, dict], bool | None]
_listeners: list[Listener] = []


def report(round_id: int, rounds: int, global_metrics: dict) -> bool:
    """Tell every listener about a round; True when one of them asks the training to stop."""
    stop = False
    for listener in list(_listeners):
        stop = bool(listener(round_id, rounds, global_metrics)) or stop
    return stop


@contextmanager
def listening(listener: Listener):
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
