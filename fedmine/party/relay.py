"""A computation at one organisation that needs the others' answers, carried by the coordinator.

This module owns :class:`Relay`. Organisations only answer calls (their party
servers are called by the coordinator, never by each other), yet a vertical
label holder must ask the feature owners for encrypted histograms in the
middle of growing a tree. So the label holder's work runs in a thread of its
own; whenever it needs the owners (``ask``), it hands its requests out as the
answer to the coordinator's current call, and the coordinator carries them to
the organisations they name and brings the answers back with its next call::

    coordinator                               organisation (Relay)
    call: vertical_round()          ----->    start(work): work(ask) runs until ask(requests)
                                    <-----    {"requests": [[org, call, args, kwargs], ...]}
    each request to its organisation
    call: vertical_resume(answers)  ----->    resume(answers): ask returns them; work goes on
                                    <-----    {"requests": ...} ... {"result": value}

The coordinator carries only calls of the protocol table that the table lets
a label holder ask for (checked on its side). An exception in the work ends
the conversation: the call that was waiting for it raises it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from fedmine.errors import PartyError


class _Stop(Exception):
    """Sent into a waiting ``ask`` when the conversation is abandoned."""


class Relay:
    """One conversation at a time between a thread of work and the coordinator's calls.

    Parameters
    ----------
    name : the organisation's name (in messages).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._out: queue.Queue = queue.Queue()
        self._in: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """A conversation is waiting for answers."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, work: Callable[[Callable[[list], list]], Any]) -> dict[str, Any]:
        """Run ``work(ask)`` until it asks for answers or ends; its first message."""
        self.abandon()
        self._out, self._in = queue.Queue(), queue.Queue()
        out, inbox = self._out, self._in

        def ask(requests: list) -> list:
            out.put({"requests": [[o, name, list(args), dict(kwargs)] for o, name, args, kwargs in requests]})
            answer = inbox.get()
            if isinstance(answer, _Stop):
                raise answer
            return answer

        def run() -> None:
            try:
                out.put({"result": work(ask)})
            except _Stop:
                pass
            except BaseException as exc:  # handed to the waiting call, which raises it
                out.put({"error": exc})

        self._thread = threading.Thread(target=run, name=f"relay-{self.name}", daemon=True)
        self._thread.start()
        return self._next()

    def resume(self, answers: list) -> dict[str, Any]:
        """The answers to the last requests, in order; the work's next message."""
        if not self.busy:
            raise PartyError(f"party {self.name}: vertical_resume with no conversation waiting for answers")
        self._in.put(list(answers))
        return self._next()

    def abandon(self) -> None:
        """Stop a conversation that waits for answers (a training started over)."""
        if self.busy:
            self._in.put(_Stop())
            assert self._thread is not None
            self._thread.join(timeout=10)
        self._thread = None

    def _next(self) -> dict[str, Any]:
        message = self._out.get()
        if "error" in message:
            self._thread = None
            raise message["error"]
        if "result" in message:
            self._thread = None
        return message
