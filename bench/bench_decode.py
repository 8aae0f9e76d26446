"""Decode rates on synthetic buffers: the pure parser against the C walk + C builder.

    python build_ffi.py >/dev/null && PYTHONPATH=. python bench/bench_decode.py

Rows ``fid_batches`` and ``watch_tree`` (FID + DFID_NAME events spread over
10 directories): the decode with directory paths joined, as a group's batch
is; and a ``watch_tree`` decode of a batch wholly outside the tree (nothing
built) against that same decode followed by a Python prefix check.

Each buffer is decoded whole, as a read() of the kernel would hand it over;
the best of ``--repeat`` interleaved runs counts, with the garbage collector
off.  "C walk only" is ``afn_decode`` alone, without building a single Python
object: the floor of the fast path.
"""

from __future__ import annotations

import argparse
import gc
import struct
import time
from collections.abc import Callable

from afanotify._fastparse import Decoder
from afanotify._ffi import ffi, lib
from afanotify._parser import METADATA, parse_lenient
from afanotify.flags import FAN_EVENT_INFO_TYPE_DFID_NAME, Event


def fd_events(n: int) -> bytes:
    """``n`` fd-mode events, 24 bytes each, no info records."""
    return b"".join(
        METADATA.pack(24, 3, 0, 24, int(Event.CLOSE_WRITE), 3 + i % 1000, 1000 + i % 7)
        for i in range(n)
    )


def dfid_name_events(n: int, dirs: int = 0) -> bytes:
    """``n`` FID-mode CREATE events, each with one DFID_NAME record (8-byte handle).

    Each in its own directory, or spread over ``dirs`` directories.
    """
    out = []
    for i in range(n):
        name = f"file-{i:06d}.txt".encode() + b"\0"
        handle = (i % dirs if dirs else i).to_bytes(8, "little")
        body = struct.pack("=IIIi", 0x1234, 0x5678, 8, 1) + handle + name
        body += b"\0" * (-len(body) % 4)
        record = struct.pack("=BBH", FAN_EVENT_INFO_TYPE_DFID_NAME, 0, 4 + len(body)) + body
        out.append(METADATA.pack(24 + len(record), 3, 0, 24, int(Event.CREATE), -1, 1000))
        out.append(record)
    return b"".join(out)


def best(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """The best time of each function; runs are interleaved so load spikes hit all alike."""
    # As timeit: the collector off, so a collection triggered by one
    # decoder's garbage is not billed to the other.
    times: list[list[float]] = [[] for _ in fns]
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            for fn, record in zip(fns, times, strict=True):
                t0 = time.perf_counter()
                fn()
                record.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return [min(t) for t in times]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000, help="events per buffer")
    ap.add_argument("--repeat", type=int, default=9, help="runs per measurement; best counts")
    args = ap.parse_args(argv)
    n = args.events
    dec = Decoder(bufsize=65536)
    used, stop = ffi.new("size_t *"), ffi.new("size_t *")
    for label, buf in (("fd-mode", fd_events(n)), ("DFID_NAME", dfid_name_events(n))):
        assert parse_lenient(buf) == dec.decode(buf, len(buf))
        cbuf = ffi.from_buffer("unsigned char[]", buf)
        dec._reserve(len(buf))

        def walk(cbuf: object = cbuf, size: int = len(buf)) -> None:
            lib.afn_decode(
                cbuf, size, dec._out, dec._cap, 0,
                dec._arena, dec._arena_size, used, stop,
            )  # fmt: skip

        t_py, t_c, t_walk = best(
            [
                lambda buf=buf: parse_lenient(buf),  # type: ignore[misc]
                lambda buf=buf: dec.decode(buf, len(buf)),  # type: ignore[misc]
                walk,
            ],
            args.repeat,
        )
        print(f"{label}: {n} events, {len(buf)} bytes")
        print(f"  pure parser            {n / t_py:12,.0f} events/s")
        print(f"  C walk, C builder      {n / t_c:12,.0f} events/s   ratio {t_py / t_c:.2f}x")
        print(f"  C walk only            {n / t_walk:12,.0f} events/s")
    fid_rows(dec, n, args.repeat)
    return 0


def fid_rows(dec: Decoder, n: int, repeat: int) -> None:
    buf = dfid_name_events(n, dirs=10)
    dec._reserve(len(buf))

    def paths(h: object) -> str:
        return "/mnt/busy/d"

    tree = ("/mnt/w", "/mnt", "w", int(Event.CREATE))

    def prefix() -> None:
        events, _ = dec.decode(buf, len(buf), dir_path=paths)
        _ = [e for e in events if e.path is not None and e.path.startswith("/mnt/w/")]

    def in_c() -> None:
        events, _ = dec.decode(buf, len(buf), dir_path=paths, tree=tree)
        assert not events

    t_paths, t_prefix, t_tree = best(
        [lambda: dec.decode(buf, len(buf), dir_path=paths), prefix, in_c], repeat
    )
    print(f"DFID_NAME over 10 directories: {n} events")
    print(f"  fid_batches: with paths  {n / t_paths:12,.0f} events/s")
    print(f"  watch_tree: decode + Python prefix check {n / t_prefix:12,.0f} events/s")
    print(
        f"  watch_tree: in C (nothing built)         {n / t_tree:12,.0f} events/s"
        f"   ratio {t_prefix / t_tree:.2f}x"
    )


if __name__ == "__main__":
    raise SystemExit(main())
