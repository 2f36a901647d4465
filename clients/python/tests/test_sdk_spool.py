"""The on-disk spool: events tracked during an outage outlive the process (a clean restart, or SIGKILL right
after track() returned) and the next client drains them, each stored once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from sdk_fakes import FaultProxy, Server, stored_ids
from tollgate_client import Tollgate

FAST: dict[str, Any] = {"backoff_base": 0.05, "backoff_max": 0.2, "flush_interval": 0.05}
PACKAGE = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
from tollgate_client import Tollgate
tg = Tollgate(base_url=sys.argv[1], api_key=sys.argv[2], spool_path=sys.argv[3], backoff_base=0.05, backoff_max=0.2)
ids = [tg.track(customer="acme-co", meter="llm_tokens", quantity=i) for i in range(int(sys.argv[4]))]
print(json.dumps(ids), flush=True)
time.sleep(60)
"""

EXITS = """
import json, sys
from tollgate_client import Tollgate
tg = Tollgate(base_url=sys.argv[1], api_key=sys.argv[2], flush_interval=30)  # only the exit sends them
print(json.dumps([tg.track(customer="acme-co", meter="llm_tokens", quantity=1) for _ in range(5)]), flush=True)
"""


def test_the_spool_survives_a_restart_and_the_next_client_drains_it_and_a_full_spool_drops(
        server: Server, proxy: FaultProxy, tmp_path: Path) -> None:
    spool = str(tmp_path / "events.sqlite3")
    proxy.down = True
    first = Tollgate(base_url=proxy.url, api_key=server.ingest_key, spool_path=spool, max_queue=10, **FAST)
    assert first.settings.overflow == "spool"
    ids = [first.track(customer="acme-co", meter="llm_tokens", quantity=i) for i in range(50)]  # past max_queue
    assert first.stats.dropped == 0
    first.close(timeout=0.3)  # the outage outlasts the process
    assert first.stats.lost == 0 and stored_ids() == []

    proxy.down = False
    second = Tollgate(base_url=proxy.url, api_key=server.ingest_key, spool_path=spool, **FAST)
    assert second.pending() == 50
    assert second.flush(timeout=20)
    assert second.pending() == 0
    second.close()
    assert sorted(stored_ids()) == sorted(ids)

    # a full spool drops the newest, with a count
    proxy.down = True
    small = Tollgate(base_url=proxy.url, api_key=server.ingest_key, spool_path=str(tmp_path / "small.sqlite3"), max_spool=3,
                     **{**FAST, "flush_interval": 30})
    kept = [small.track(customer="acme-co", meter="llm_tokens", quantity=i) for i in range(5)][:3]
    assert small.pending() == 3 and small.stats.dropped == 2
    proxy.down = False
    assert small.flush(timeout=20)
    small.close()
    assert sorted(stored_ids()) == sorted(ids + kept)


def test_sigkill_after_track_loses_nothing_with_a_spool_and_a_plain_exit_flushes(server: Server, proxy: FaultProxy,
                                                                           tmp_path: Path) -> None:
    spool = str(tmp_path / "events.sqlite3")
    proxy.faults = ["503"] * 1000  # the server refuses while the child runs
    env = {**os.environ, "PYTHONPATH": str(PACKAGE)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, proxy.url, server.ingest_key, spool, "300"],
                             stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert child.stdout is not None
        ids: list[Any] = json.loads(child.stdout.readline())
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert len(ids) == 300 and stored_ids() == []

    proxy.faults = []
    with Tollgate(base_url=proxy.url, api_key=server.ingest_key, spool_path=spool, **FAST) as tg:
        assert tg.flush(timeout=20)
    assert sorted(stored_ids()) == sorted(ids)
    assert len(stored_ids()) == len(set(stored_ids()))

    # without a spool, a script that tracks and simply ends sends its events at exit (atexit)
    done = subprocess.run([sys.executable, "-c", EXITS, proxy.url, server.ingest_key], capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    assert sorted(stored_ids()) == sorted(ids + json.loads(done.stdout))
