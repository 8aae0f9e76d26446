"""pyfanotify's "all_mountpoints" example, ported to afanotify: every mount of every namespace.

Written for pyfanotify 0.3.0 and run unchanged but for the import line.
Every 10 s its ``fn`` (which runs in a forked single-threaded child that
shares the group) finds one process per mount namespace; when that set
changed, it enters each namespace with pysetns (``setns(2)``, which only a
single-threaded process may do for a mount namespace) and marks the mount
points of block devices listed there.  The client prints FAN_ACCESS
events, one dict per wake-up, keyed by the event's path tuple.  Ctrl-C
prints STOP and stops.

Unlike the original, it marks only the mount points under a prefix
(argv[1]; "/" marks them all, as the original does), so that it can be
tried on mounts of one's own.  Needs root and the pysetns package.

    python examples/legacy_all_mountpoints.py /mnt
"""

import errno
import os
import select
import sys

import pysetns as ns

import afanotify.pyfanotify as fan  # was: import pyfanotify as fan

PREFIX = sys.argv[1].rstrip("/") + "/" if len(sys.argv) > 1 else "/"


def wanted(fsname, mountpoint):
    return fsname.startswith("/") and (PREFIX == "/" or (mountpoint + "/").startswith(PREFIX))


def mark_target(space):
    # Runs inside the target's namespaces: its mount table, seen from there.
    for table in (f"/proc/{space.target_pid}/mounts", "/proc/self/mounts"):
        try:
            with open(table) as f:
                rows = [row.split() for row in f]
        except OSError:
            continue
        for fsname, mountpoint, *_ in rows:
            if wanted(fsname, mountpoint):
                fanot.mark(mountpoint, is_type="mp")
        return 0
    # No table: worth another try without the mount namespace.
    return errno.EAGAIN if space.namespaces & ns.NS_MNT else errno.ENOENT


def mark_namespace(pid, kinds):
    space = ns.Namespace(pid, kinds, keep_caps=True)
    space.enter(mark_target, space)
    if space.errors:
        fanot._debug("NS errors: %s", space.errors)
    return space.retry


def one_pid_per_namespace():
    found = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found.setdefault(os.readlink(f"/proc/{pid}/ns/mnt"), pid)
            except OSError:
                pass
    return found


def remark():
    global known
    spaces = one_pid_per_namespace()
    if spaces == known:
        return
    known = spaces
    for pid in spaces.values():
        try:
            if mark_namespace(pid, ns.NS_PID | ns.NS_MNT | ns.NS_USER):
                mark_namespace(pid, ns.NS_PID | ns.NS_USER)
        except Exception as exc:
            fanot._debug("mark_namespace(%s) failed: %s", pid, exc)


if __name__ == "__main__":
    known = None
    fanot = fan.Fanotify(fn=remark, fn_timeout=10)
    fanot.start()

    cli = fan.FanotifyClient(fanot, path_pattern="*", ev_types=fan.FAN_ACCESS)
    poller = select.poll()
    poller.register(cli.sock.fileno(), select.POLLIN)
    try:
        while poller.poll():
            by_path = {}
            for event in cli.get_events():
                event.ev_types = fan.evt_to_str(event.ev_types)
                by_path.setdefault(event.path, []).append(event)
            if by_path:
                print(by_path, flush=True)
    except KeyboardInterrupt:
        print("STOP", flush=True)

    cli.close()
    fanot.stop()
