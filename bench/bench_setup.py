#!/usr/bin/env python3
"""Setup time: how long until a whole tree is watched, fanotify against inotify.

    sudo python bench/bench_setup.py [--dirs 1000,10000] [--reps 5]

For each tree size, a private tmpfs gets a tree of that many directories
(100 per parent).  Then, in this process, with reps interleaved:

- afanotify: ``Fanotify(REPORT_DFID_NAME | REPORT_FID)`` and one filesystem
  mark: the whole tree is covered;
- inotify: ``inotify_init1`` and one ``inotify_add_watch`` per directory,
  found by walking the tree with ``os.scandir``: what recursive inotify
  watchers (watchdog, asyncinotify users, inotifywait -r) have to do.  Called
  through ctypes, so both sides pay Python's overhead.

Printed per size: wall and CPU milliseconds, median and min-max over the
reps, and the ratio inotify / afanotify per rep (median, min-max).  The tmpfs
is unmounted afterwards.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from afanotify import Event, Fanotify, InitFlag

_libc = ctypes.CDLL(None, use_errno=True)
_IN_CREATE, _IN_DELETE, _IN_MOVE, _IN_CLOSE_WRITE = 0x100, 0x200, 0xC0, 0x8
_IN_MASK = _IN_CREATE | _IN_DELETE | _IN_MOVE | _IN_CLOSE_WRITE
_FAN_EVENTS = Event.CREATE | Event.DELETE | Event.MOVE | Event.CLOSE_WRITE | Event.ONDIR


def make_tree(root: str, ndirs: int) -> None:
    made = 0
    parent = 0
    while made < ndirs:
        base = os.path.join(root, f"p{parent}")
        os.mkdir(base)
        made += 1
        for i in range(min(99, ndirs - made)):
            os.mkdir(os.path.join(base, f"d{i}"))
            made += 1
        parent += 1


# Each setup returns its closer: closing is not part of the setup time (a
# fanotify group's release waits for an SRCU grace period in the kernel).


def with_fanotify(root: str) -> Callable[[], None]:
    fan = Fanotify(InitFlag.REPORT_DFID_NAME | InitFlag.REPORT_FID)
    try:
        fan.mark(root, _FAN_EVENTS, "filesystem")
    except BaseException:
        fan.close()
        raise
    return fan.close


def with_inotify(root: str) -> Callable[[], None]:
    fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    try:
        stack = [root]
        while stack:
            d = stack.pop()
            if _libc.inotify_add_watch(fd, os.fsencode(d), _IN_MASK) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {d}")
            with os.scandir(d) as it:
                stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
    except BaseException:
        os.close(fd)
        raise
    return lambda: os.close(fd)


def timed(fn: Callable[[str], Callable[[], None]], root: str) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    close = fn(root)
    w1, c1 = time.perf_counter(), time.process_time()
    close()
    return (w1 - w0) * 1e3, (c1 - c0) * 1e3


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dirs", default="1000,10000", help="comma list of tree sizes")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_setup: needs root (a private tmpfs, a filesystem mark)", file=sys.stderr)
        return 1
    print(f"# {os.uname().release}, {os.cpu_count()} CPUs, {args.reps} reps; "
          "ms as median (min-max)")
    print("| directories | afanotify wall ms | afanotify CPU ms | inotify wall ms "
          "| inotify CPU ms | wall ratio inotify/afanotify | CPU ratio |")
    print("|---|---|---|---|---|---|---|")
    for ndirs in (int(x) for x in args.dirs.split(",")):
        mnt = tempfile.mkdtemp(prefix="afanotify-bench-setup-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "bench-setup", mnt],
                       check=True)
        try:
            make_tree(mnt, ndirs)
            fan_w, fan_c, ino_w, ino_c, rw, rc = [], [], [], [], [], []
            with_fanotify(mnt)()  # warm the dentry cache and the imports
            with_inotify(mnt)()
            for rep in range(args.reps):
                order = [("f", with_fanotify), ("i", with_inotify)]
                if rep % 2:
                    order.reverse()
                got = {k: timed(fn, mnt) for k, fn in order}
                fan_w.append(got["f"][0])
                fan_c.append(got["f"][1])
                ino_w.append(got["i"][0])
                ino_c.append(got["i"][1])
                rw.append(got["i"][0] / got["f"][0])
                rc.append(got["i"][1] / max(got["f"][1], 1e-3))  # CPU clock ticks ~1 us
            print(f"| {ndirs:,} | {summary(fan_w)} | {summary(fan_c)} | {summary(ino_w)} "
                  f"| {summary(ino_c)} | {summary(rw)} | {summary(rc)} |")
        finally:
            subprocess.run(["umount", "-l", mnt], check=False)
            os.rmdir(mnt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
