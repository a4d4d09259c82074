"""Single flight: concurrent callers asking for the same key share one run of the work.

When a popular cache entry expires, the requests that arrive while it is being refilled wait for that one
refill instead of each querying (a burst of identical queries was the p99 of the API and of the relay).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable

import anyio


class _Run[V]:
    """One run of the work: its result once ``done`` is set and ``ok`` is True."""

    __slots__ = ("done", "ok", "value")

    value: V

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.ok = False


class SingleFlight[K: Hashable, V]:
    """Runs of work by key: while one runs, callers of the same key wait for it and share its result.

    A waiter runs the work itself (or joins a newer run) when the run it waited for failed or was cancelled,
    or when its ``accept`` refuses the shared result (say the result may predate a write it must see).
    """

    def __init__(self) -> None:
        self._runs: dict[K, _Run[V]] = {}

    def running(self, key: K) -> bool:
        """True while a run for ``key`` is in progress."""
        return key in self._runs

    async def run(self, key: K, work: Callable[[], Awaitable[V]], accept: Callable[[V], bool] | None = None) -> V:
        """The result of ``work()``, shared with every caller of ``key`` that arrives while it runs."""
        while (current := self._runs.get(key)) is not None:
            await current.done.wait()
            if current.ok and (accept is None or accept(current.value)):
                return current.value
        run: _Run[V] = _Run()
        self._runs[key] = run
        try:
            run.value = await work()
            run.ok = True
            return run.value
        finally:
            if self._runs.get(key) is run:
                del self._runs[key]
            run.done.set()
