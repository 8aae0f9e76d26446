"""pyfanotify's "all_mountpoints" example, ported: re-marking mounts from the periodic fn.

The original runs a function every 10 s that finds one process per mount
namespace, enters each namespace (with the pysetns package) and marks every
mount point listed in its /proc/<pid>/mounts; the client prints FAN_ACCESS
events grouped by path.  This port keeps that structure and the same API
calls (the only change to them is the import line), with two differences
that keep it safe to run anywhere:

* it marks only mount points under a prefix, from argv[1] or
  AFANOTIFY_EXAMPLE_PREFIX (default "/": every mount, as the original);
* instead of entering another namespace it marks the mount through
  /proc/<pid>/root/<mountpoint>, and it looks at other namespaces only when
  AFANOTIFY_EXAMPLE_ALL_NAMESPACES=1 (without pysetns, nothing else needed).

    python examples/legacy_all_mountpoints.py /mnt      # Ctrl-C to stop
"""

import os
import select
import sys

import afanotify.compat as fan  # was: import pyfanotify as fan

PREFIX = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("AFANOTIFY_EXAMPLE_PREFIX", "/")
ALL_NAMESPACES = os.environ.get("AFANOTIFY_EXAMPLE_ALL_NAMESPACES") == "1"


def wanted(fsname, mountpoint):
    if PREFIX == "/":
        return fsname.startswith("/")  # block-device mounts, as the original
    top = PREFIX.rstrip("/")
    return mountpoint == top or mountpoint.startswith(top + "/")


def mark_mounts(pid, root):
    try:
        with open(f"/proc/{pid}/mounts") as table:
            lines = table.readlines()
    except OSError:
        return
    for line in lines:
        fsname, mountpoint = line.split()[:2]
        if wanted(fsname, mountpoint):
            fanot.mark(root + mountpoint, is_type="mp")


def get_mounts():
    """One pid per mount namespace, keyed by the namespace."""
    own = os.readlink("/proc/self/ns/mnt")
    if not ALL_NAMESPACES:
        return {own: "self"}
    found = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found.setdefault(os.readlink(f"/proc/{pid}/ns/mnt"), pid)
            except OSError:
                pass
    found[own] = "self"
    return found


def mounts_upd():
    global _old_mounts

    mounts = get_mounts()
    if mounts != _old_mounts:
        _old_mounts = mounts
        for pid in mounts.values():
            mark_mounts(pid, "" if pid == "self" else f"/proc/{pid}/root")
        print("marked", flush=True)


if __name__ == "__main__":
    _old_mounts = None
    period = 10
    fanot = fan.Fanotify(fn=mounts_upd, fn_timeout=period)
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
