"""pyfanotify's "fid" example, ported to afanotify: directory-entry events of one filesystem.

Written for pyfanotify 0.3.0 and run unchanged but for the import line.
It makes a FID group, marks the whole filesystem holding argv[1] (else
/home, as in the original) for every directory-entry event (create,
delete, move, rename, attrib), and prints the events, one dict per
wake-up, keyed by the event's path tuple (old and new path for a rename).
Ctrl-C prints STOP and stops.

    python examples/legacy_fid.py /mnt/somewhere
"""

import select
import sys

import afanotify.pyfanotify as fan  # was: import pyfanotify as fan


def main(watched):
    fanot = fan.Fanotify(init_fid=True)
    fanot.mark(watched, is_type="fs", ev_types=fan.FAN_ALL_FID_EVENTS)
    fanot.start()

    cli = fan.FanotifyClient(fanot, path_pattern="*")
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
