"""pyfanotify's "simple" example, ported: legacy code on afanotify.compat.

The original watches /home as a mount point, calls a function every second,
and prints the events whose path matches, grouped by path.  This port keeps
that structure and every API call; the only change to the calls is the
import line.  The watched mount point comes from argv[1] (or the
AFANOTIFY_EXAMPLE_PATH variable) so it can point at a private tmpfs.

    python examples/legacy_simple.py /mnt/somewhere      # Ctrl-C to stop
"""

import os
import select
import sys

import afanotify.compat as fan  # was: import pyfanotify as fan


def tick(period):
    print(f"tick: called every {period} s", flush=True)


if __name__ == "__main__":
    watched = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "AFANOTIFY_EXAMPLE_PATH", "/home")
    period = 1
    fanot = fan.Fanotify(fn=tick, fn_args=(period,), fn_timeout=period)
    fanot.mark(watched, is_type="mp")
    fanot.start()

    cli = fan.FanotifyClient(fanot, path_pattern=watched.rstrip("/") + "/*")
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
