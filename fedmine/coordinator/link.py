"""The coordinator's end of the conversation with each organisation.

This module owns :class:`Link`, through which every call of the protocol table
reaches one party (in process or behind a Flight server, both answer
``call(name, *args, **kwargs)``), and :class:`EngineProxy`, the party as the
engine's booster sees it. A :class:`Link` counts bytes and seconds and is the
one place where a party's failure becomes a :class:`~fedmine.errors.PartyError`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from fedmine import protocol
from fedmine.errors import PartyError


def payload_bytes(value: Any) -> int:
    """Bytes a value takes on the wire (arrays by buffer size, text as UTF-8)."""
    if value is None:
        return 0
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, dict):
        return sum(payload_bytes(k) + payload_bytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(payload_bytes(v) for v in value)
    if hasattr(value, "__dict__"):  # records (bin mapper, trees, parameters): their fields
        return payload_bytes(vars(value))
    return 8


class Link:
    """The coordinator's end of the conversation with one party.

    Counts bytes both ways and the seconds spent waiting for answers; it is
    the one place where a party's failure becomes a :class:`PartyError`.
    Safe to use from several threads.
    """

    def __init__(self, party: Any) -> None:
        self.party = party
        self.name = party.name
        self.bytes_sent = 0  # party -> coordinator
        self.bytes_received = 0  # coordinator -> party
        self.calls = 0
        self.seconds = 0.0
        self.failed = False  # the party failed to answer (transport or party error)
        self.answered: set[str] = set()  # calls this party answered (the privacy receipt lists what they disclose)
        self._lock = threading.Lock()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One call of the protocol table to this party; its answer (bytes and seconds counted)."""
        t0 = time.perf_counter()
        sent = payload_bytes(list(args)) + payload_bytes(kwargs)
        try:
            answer = self.party.call(method, *args, **kwargs)
        except PartyError:
            self.failed = True
            raise
        except Exception as exc:  # the one conversion point for party failures
            from fedmine.errors import FedmineError

            if isinstance(exc, FedmineError):  # bad input found by the party: keep its message
                raise
            self.failed = True
            raise PartyError(f"party {self.name}: {method} failed: {type(exc).__name__}: {exc}") from exc
        size = payload_bytes(answer)
        with self._lock:
            self.calls += 1
            self.answered.add(method)
            self.bytes_received += sent
            self.bytes_sent += size
            self.seconds += time.perf_counter() - t0
        return answer


class EngineProxy:
    """A party as the engine sees it: each engine call of the protocol table goes through the party's :class:`Link`."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def __getattr__(self, name: str):
        entry = protocol.CALLS.get(name)
        if name.startswith("_") or entry is None or entry.side != protocol.ENGINE:
            raise AttributeError(name)
        return lambda *args, **kwargs: self.link.call(name, *args, **kwargs)

    def describe(self) -> dict[str, Any]:
        return self.link.call("describe")
