"""pyfanotify's "simple" example, ported to afanotify: events under one mount, grouped by path.

Written for pyfanotify 0.3.0 and run unchanged but for the import line.
It marks a mount point (argv[1], else /home as in the original), runs a
function every second in the forked child that pyfanotify (and
afanotify.pyfanotify) give ``fn``, and prints the events whose path is
under the mount point, one dict per wake-up, keyed by the event's path
tuple, each event's mask turned into names.  Ctrl-C prints STOP and stops.

    python examples/legacy_simple.py /mnt/somewhere
"""

import select
import sys

import afanotify.pyfanotify as fan  # was: import pyfanotify as fan


def every(period):
    print(f"fn: called every {period} s")


def main(watched):
    period = 1
    fanot = fan.Fanotify(fn=every, fn_args=(period,), fn_timeout=period)
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


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/home")
