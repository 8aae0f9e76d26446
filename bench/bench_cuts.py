"""The C builder's cost per event when a batch is cut again and again.

    python build_ffi.py >/dev/null && PYTHONPATH=.:tests python bench/bench_cuts.py

A batch of FID-only events (a ``REPORT_FID`` group during ``rm -r``: file
events between directory deletes) is built in runs: every directory change
is a cut, after which the builder goes on with the rest of the batch.  Work
done per run over the rest of the batch makes the whole build quadratic;
this prints nanoseconds per event for growing batches, with and without a
cut at every other event.  Flat rows are linear.  Best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import gc
import time

from test_fastparse_differential import FID, event, fid_rec

from afanotify._fastparse import Decoder
from afanotify.flags import Event


def batch(n: int, cuts: bool) -> bytes:
    parts = []
    for i in range(n):
        rec = fid_rec(FID, b"o%06d" % i)
        dir_delete = cuts and i % 2 == 0
        mask = Event.DELETE | Event.ONDIR if dir_delete else Event.CREATE
        parts.append(event(rec, fd=-1, mask=int(mask)))
    return b"".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    gc.disable()
    print(f"{'events':>8} {'cut every other':>16} {'ns per event':>13}")
    for n in (1000, 2000, 4000, 8000, 16000):
        for cuts in (False, True):
            buf = batch(n, cuts)
            dec = Decoder()
            best = float("inf")
            for _ in range(args.repeat):
                t = time.perf_counter()
                dec.decode(
                    buf, len(buf), dir_path=lambda h: "/d", object_path=lambda h, gone: "/x",
                    on_cut=lambda ev, i: None,
                )  # fmt: skip
                best = min(best, time.perf_counter() - t)
            print(f"{n:>8} {cuts!s:>16} {best / n * 1e9:>13.0f}")


if __name__ == "__main__":
    main()
