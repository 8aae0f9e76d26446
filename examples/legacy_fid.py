"""pyfanotify's "fid" example, ported: directory-entry events on afanotify.compat.

The original makes a FID group, marks the filesystem holding /home for
every FID event (create, delete, move, rename, attrib) and prints the events
grouped by path.  This port keeps that structure and every API call; the
only change to the calls is the import line.  The path comes from argv[1]
(or AFANOTIFY_EXAMPLE_PATH) so it can point at a private filesystem.

    python examples/legacy_fid.py /mnt/somewhere      # Ctrl-C to stop
"""

import os
import select
import sys

import afanotify.compat as fan  # was: import pyfanotify as fan

if __name__ == "__main__":
    watched = sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "AFANOTIFY_EXAMPLE_PATH", "/home")
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
