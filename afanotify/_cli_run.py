"""What the ``watch`` and ``guard`` commands share: checking paths, running until stopped."""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio


def _check_paths(parser: argparse.ArgumentParser, paths: Sequence[str]) -> None:
    for p in paths:
        try:
            os.stat(p)
        except FileNotFoundError:
            parser.error(f"argument PATH: no such file or directory: {p!r}")
        except NotADirectoryError:
            parser.error(f"argument PATH: a component is not a directory: {p!r}")
        except PermissionError:
            parser.error(f"argument PATH: permission denied: {p!r}")


async def _run_until_stopped(
    work: Callable[[], Any], timeout: float | None, announce: Callable[[], None]
) -> str:
    """Run ``work()`` until it returns, the timeout passes, or SIGINT/SIGTERM; says which.

    ``announce()`` runs once the signal handlers are in place, so a signal
    sent after the announcement always gets a clean stop.
    """
    import asyncio  # here: ``watch`` imports this module and runs no asyncio loop

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    caught: list[str] = []

    def on_signal(name: str) -> None:
        caught.append(name)
        stop.set()

    sigs = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in sigs}
    for sig in sigs:
        loop.add_signal_handler(sig, on_signal, sig.name)
    task: asyncio.Task[Any] = asyncio.ensure_future(work())
    stopper = asyncio.ensure_future(stop.wait())
    try:
        announce()
        done, _ = await asyncio.wait(
            {task, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for sig in sigs:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous[sig] or signal.SIG_DFL)
        for t in (task, stopper):
            if not t.done():
                t.cancel()
        await asyncio.gather(task, stopper, return_exceptions=True)
    if task in done:
        task.result()  # re-raise a failure
        return "done"
    if caught:
        return caught[0]
    return "timeout"
