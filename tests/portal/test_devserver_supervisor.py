"""``make run`` keeps its processes running: a child that dies is started again after a backoff (logged), one
that keeps dying at once is given up on, and SIGTERM to ``make`` alone (what a script or a supervisor sends)
stops every child."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from portal.supervisor import GaveUp, Supervisor
from tests.portal.processes import free_port, pids_where

ROOT = Path(__file__).resolve().parents[2]


def _spawn(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def _run(supervisor: Supervisor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        supervisor.check()
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_child_that_dies_is_restarted_with_a_growing_backoff_and_the_others_are_left_alone() -> None:
    out = io.StringIO()
    supervisor = Supervisor(initial_backoff=0.1, max_backoff=0.4, stable_seconds=30, max_quick_failures=100, out=out)
    flaky = supervisor.add("flaky", lambda: _spawn("import sys, time; time.sleep(0.1); sys.exit(3)"))
    steady = supervisor.add("steady", lambda: _spawn("import time; time.sleep(60)"))
    steady_pid = steady.proc.pid  # type: ignore[union-attr]
    try:
        _run(supervisor, 2.5)

        assert flaky.restarts >= 3, out.getvalue()
        delays = [float(d) for d in re.findall(r"flaky exited with 3 after [\d.]+s; restarting it in ([\d.]+)s",
                                               out.getvalue())]
        assert delays[:4] == [0.1, 0.2, 0.4, 0.4], out.getvalue()  # doubled, then capped
        assert steady.proc.pid == steady_pid and steady.restarts == 0  # type: ignore[union-attr]
        assert "steady" not in out.getvalue()
    finally:
        pids = supervisor.pids()
        supervisor.stop()
    assert supervisor.children == {}
    assert not any(_alive(pid) for pid in pids)


def test_a_child_that_ran_long_enough_starts_again_from_the_shortest_backoff() -> None:
    out = io.StringIO()
    supervisor = Supervisor(initial_backoff=0.1, max_backoff=5, stable_seconds=0.3, out=out)
    child = supervisor.add("slow", lambda: _spawn("import sys, time; time.sleep(0.4); sys.exit(1)"))
    try:
        _run(supervisor, 2.2)
    finally:
        supervisor.stop()
    assert child.restarts >= 2
    assert set(re.findall(r"restarting it in ([\d.]+)s", out.getvalue())) == {"0.1"}, out.getvalue()


def test_a_child_that_keeps_dying_at_once_is_given_up_on() -> None:
    out = io.StringIO()
    supervisor = Supervisor(initial_backoff=0.01, max_backoff=0.02, stable_seconds=30, max_quick_failures=3, out=out)
    supervisor.add("broken", lambda: _spawn("raise SystemExit(2)"))
    with pytest.raises(GaveUp):
        _run(supervisor, 10)
    supervisor.stop()
    assert out.getvalue().count("restarting it in") == 3
    assert "broken exited with 2" in out.getvalue() and "giving up" in out.getvalue()


def test_stop_kills_the_group_of_a_child_that_ignores_sigterm() -> None:
    supervisor = Supervisor(stop_timeout=0.5)
    stubborn = supervisor.add("stubborn", lambda: _spawn(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"))
    time.sleep(0.5)  # the handler is in place
    pid = stubborn.proc.pid  # type: ignore[union-attr]
    supervisor.stop()
    assert not _alive(pid)


def _wait_for(path: Path) -> str:
    deadline = time.monotonic() + 10
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return path.read_text().strip()


def test_what_a_dead_child_left_in_its_group_is_killed_before_it_is_restarted(tmp_path: Path) -> None:
    # a server that forked a worker of its own (which would keep the port) and then died
    pid_file = tmp_path / "grandchild"
    code = ("import subprocess, sys, time\n"
            "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            f"open({str(pid_file)!r}, 'w').write(str(g.pid))\n"
            "time.sleep(0.3)\n"
            "sys.exit(1)\n")
    out = io.StringIO()
    supervisor = Supervisor(initial_backoff=30, out=out)
    supervisor.add("server", lambda: _spawn(code))
    try:
        grandchild = int(_wait_for(pid_file))
        assert _alive(grandchild)
        _run(supervisor, 1.5)
        assert "server exited with 1" in out.getvalue()
        assert not _alive(grandchild)
    finally:
        supervisor.stop()


def test_restart_starts_children_again_at_once_and_forgets_their_quick_exits() -> None:
    out = io.StringIO()
    supervisor = Supervisor(initial_backoff=30, stable_seconds=30, out=out)
    web = supervisor.add("web", lambda: _spawn("import time; time.sleep(60)"))
    beat = supervisor.add("beat", lambda: _spawn("import time; time.sleep(60)"))
    other = supervisor.add("other", lambda: _spawn("import time; time.sleep(60)"))
    old = {name: c.proc.pid for name, c in supervisor.children.items()}  # type: ignore[union-attr]
    web.quick_failures, web.restart_at = 3, time.monotonic() + 30  # waiting for a backoff after a broken edit
    try:
        supervisor.restart(["web", "beat"])
        assert web.proc is not None and web.proc.poll() is None and web.proc.pid != old["web"]
        assert beat.proc is not None and beat.proc.pid != old["beat"] and not _alive(old["beat"])
        assert (web.quick_failures, web.restart_at, web.restarts, beat.restarts) == (0, None, 1, 1)
        assert other.proc.pid == old["other"] and other.restarts == 0  # type: ignore[union-attr]
        _run(supervisor, 0.3)
        assert out.getvalue() == ""  # a restart is no exit to report
    finally:
        supervisor.stop()


def test_the_code_watcher_reports_changed_code_and_templates_only(tmp_path: Path) -> None:
    from portal.codewatch import CodeWatcher

    for folder in ("portal", "templates"):
        (tmp_path / folder).mkdir()
    watcher = CodeWatcher(tmp_path, folders=("portal", "templates", "missing"), debounce_ms=50).start()
    try:
        assert watcher.ready.wait(10)
        (tmp_path / "portal" / "views.py").write_text("x = 1\n")
        (tmp_path / "templates" / "page.html").write_text("<p>hi</p>\n")
        (tmp_path / "portal" / "notes.log").write_text("ignored\n")
        (tmp_path / "portal" / ".views.py.swp").write_text("ignored\n")
        deadline = time.monotonic() + 10
        seen: set[str] = set()
        while len(seen) < 2 and time.monotonic() < deadline:
            seen.update(watcher.take())
            time.sleep(0.05)
        time.sleep(0.3)
        seen.update(watcher.take())
        assert seen == {"portal/views.py", "templates/page.html"}
        assert watcher.take() == []
    finally:
        watcher.close()


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[1])


def _children_of(pid: int) -> list[int]:
    return pids_where(lambda entry: _ppid(int(entry.name)) == pid)


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.slow
def test_make_run_restarts_a_killed_web_server_and_sigterm_to_make_alone_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    data_dir = str(tmp_path / "var")
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "TIGERBEETLE_ADDRESSES",
                                                              "LEDGER_BACKEND", "DJANGO_SETTINGS_MODULE", "REQUIRE_SERVICES"}}
    env.update({"TOLLGATE_DATA_DIR": data_dir, "PYTHONUNBUFFERED": "1", "TIGERBEETLE_BIN": ""})
    log = tmp_path / "run.log"
    base = f"http://127.0.0.1:{port}"

    def using_data_dir() -> list[int]:
        return pids_where(lambda entry: data_dir.encode() in (entry / "environ").read_bytes())

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    with log.open("wb") as out:  # a session of its own, so that only our signal reaches make
        make = subprocess.Popen(["make", "--no-print-directory", "run", f"PORT={port}"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not ("ingest API key" in log.read_text() and healthy()):
            assert make.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        devserver = next(pid for pid in _children_of(make.pid) if b"portal.devserver" in _cmdline(pid))
        web = next(pid for pid in _children_of(devserver) if b"uvicorn" in _cmdline(pid))

        os.kill(web, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not ("web exited with -9" in log.read_text() and healthy()):
            assert make.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        assert "restarting it in 1s" in log.read_text()
        new_web = [pid for pid in _children_of(devserver) if b"uvicorn" in _cmdline(pid)]
        assert new_web and web not in new_web

        make.send_signal(signal.SIGTERM)  # make alone: no Ctrl-C to the whole group
        make.wait(timeout=60)
        deadline = time.monotonic() + 20
        while using_data_dir() and time.monotonic() < deadline:
            time.sleep(0.2)
        left = using_data_dir()
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
        for pid in using_data_dir():  # never leave orphans, even when the test fails
            os.kill(pid, signal.SIGKILL)
    assert left == [], log.read_text()
    assert "stopped web, worker and beat" in log.read_text()
