"""Admission in the API process: who is in flight, and a gate a full-weight swap closes.

A full swap must never mix weights inside one response, so it closes the gate (new requests
wait), waits until no request is in flight, swaps, smoke-tests and opens the gate again. The
smoke test itself passes the gate (``bypass``).
"""

from __future__ import annotations

import asyncio


class AdmissionGate:
    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.in_flight = 0
        self.waiting = 0

    async def enter(self, bypass: bool = False) -> None:
        if not bypass:
            while not self._open.is_set():
                self.waiting += 1
                try:
                    await self._open.wait()
                finally:
                    self.waiting -= 1
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    async def drained(self) -> None:
        await self._idle.wait()
