"""A program written for pyfanotify 0.3.0 that reads events through asyncio's add_reader.

It runs unchanged on afanotify but for the import line.  It watches the
mount point argv[1] for FAN_CLOSE_WRITE, registers the client's socket
with the event loop, and prints one line per event: the event's names and
its path, decoded from 0.3.0's bytes.  SIGINT (Ctrl-C) prints STOP and stops.

    python examples/legacy_add_reader.py /mnt/somewhere
"""

import asyncio
import signal
import sys

import afanotify.pyfanotify as fan  # was: import pyfanotify as fan


async def main(watched):
    fanot = fan.Fanotify()
    fanot.mark(watched, is_type="mp", ev_types=fan.FAN_CLOSE_WRITE)
    fanot.start()
    cli = fan.FanotifyClient(fanot, path_pattern=watched.rstrip("/") + "/*")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def readable():
        for event in cli.get_events():
            print(fan.evt_to_str(event.ev_types), event.path[0].decode(), flush=True)

    loop.add_reader(cli.sock.fileno(), readable)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(cli.sock.fileno())
        cli.close()
        fanot.stop()
    print("STOP", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
