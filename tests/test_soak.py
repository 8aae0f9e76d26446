"""The soak in the suite: 100,000 events through one group (bench/bench_soak.py runs 1,000,000)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import CHILD_CWD, REPO, child_env

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(300)]


def test_100000_events_all_arrive_fds_return_and_rss_stays_flat() -> None:
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_soak.py"), "--events", "100000", "--json"],
        env=child_env(), cwd=CHILD_CWD, capture_output=True, text=True, timeout=280,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout)
    assert got["received"] == 100000 and got["missing"] == 0 and got["duplicates"] == 0
    assert got["lost"] == got["overflows"] == got["fd_errors"] == 0
    assert got["fds_after_close"] == got["fds_before"]
    # flat: within 10% of the warmed-up RSS (the events are consumed as they come)
    assert got["rss_growth"] <= 1.1, got
