"""``make run``: seed the demo, then run web + Celery worker + Celery beat together. The web process is uvicorn
serving ``portal.asgi`` (the ASGI application production serves, the gateway's async views included); static
files come from WhiteNoise, as in production. A change to the code or a template restarts web, worker and beat
(``portal.codewatch``; ``--noreload`` turns it off).

With a ``tigerbeetle`` binary on PATH (or named by ``TIGERBEETLE_BIN``) and no ``TIGERBEETLE_ADDRESSES``,
it also runs a single TigerBeetle replica (data in ``$TOLLGATE_DATA_DIR/tigerbeetle/``, port
``TIGERBEETLE_PORT``, default 3000) and points the app at it; ``TIGERBEETLE_BIN=`` (empty) keeps the SQL
ledger. A process that dies is started again after a backoff (``portal.supervisor``, logged); Ctrl-C or SIGTERM
stops everything.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from portal import codewatch
from portal.supervisor import GaveUp, Supervisor

ROOT = Path(__file__).resolve().parent.parent
TIGERBEETLE_CACHE_GRID = "256MiB"
TIGERBEETLE_START_SECONDS = 60  # a production replica allocates its memory and opens its journal first
# One lookup of a non-existent account: the replica answers requests. The client retries for ever and
# logs every refused connection, so the caller bounds it and discards stderr.
_PING = ("import sys, tigerbeetle as tb\n"
         "c = tb.ClientSync(cluster_id=int(sys.argv[1]), replica_addresses=sys.argv[2])\n"
         "c.lookup_accounts([1])\n"
         "c.close()\n")


class LaunchError(Exception):
    """A clear reason ``make run`` cannot start; printed without a traceback."""


def _spawn(argv: list[str], env: dict[str, str], log: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    # Own session: the terminal's Ctrl-C reaches only us, and we stop the children in order.
    return subprocess.Popen(argv, cwd=ROOT, env=env, start_new_session=True, stdout=log,
                            stderr=subprocess.STDOUT if log else None)


def tigerbeetle_binary() -> str | None:
    """``TIGERBEETLE_BIN`` (empty: none, keep the SQL ledger), else ``tigerbeetle`` on PATH, else None."""
    named = os.environ.get("TIGERBEETLE_BIN")
    if named is None:
        return shutil.which("tigerbeetle")
    if not named.strip():
        return None
    found = shutil.which(named)
    if not found:
        raise LaunchError(f"TIGERBEETLE_BIN={named} is not an executable file")
    return str(Path(found).resolve())


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _wait_until_answers(replica: subprocess.Popen[bytes], python: str, cluster_id: str, address: str,
                        log: Path) -> None:
    deadline = time.monotonic() + TIGERBEETLE_START_SECONDS
    ping = subprocess.Popen([python, "-c", _PING, cluster_id, address], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while ping.poll() is None:
            if replica.poll() is not None:
                raise LaunchError(f"tigerbeetle exited with {replica.returncode} while starting; see {log}")
            if time.monotonic() > deadline:
                raise LaunchError(f"tigerbeetle did not answer on {address} within {TIGERBEETLE_START_SECONDS}s; see {log}")
            time.sleep(0.1)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.wait()
    if ping.returncode != 0:
        raise LaunchError(f"tigerbeetle on {address} refused a lookup (exit {ping.returncode}); see {log}")


def start_tigerbeetle(binary: str, env: dict[str, str], python: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Format ``$TOLLGATE_DATA_DIR/tigerbeetle/0_0.tigerbeetle`` once, start a production-mode replica on
    127.0.0.1:$TIGERBEETLE_PORT and wait until it answers. Returns the process, its address and data file."""
    port = int(env.get("TIGERBEETLE_PORT") or 3000)
    cluster_id = env.get("TIGERBEETLE_CLUSTER_ID") or "0"
    address = f"127.0.0.1:{port}"
    if _port_taken(port):
        raise LaunchError(f"port {port} for TigerBeetle is taken (another replica or `make run`?): stop it, or set "
                          "TIGERBEETLE_PORT to a free port, or TIGERBEETLE_ADDRESSES to use a running replica")
    data_dir = Path(env.get("TOLLGATE_DATA_DIR") or ROOT / "var") / "tigerbeetle"
    data_dir.mkdir(parents=True, exist_ok=True)
    data_file, log = data_dir / "0_0.tigerbeetle", data_dir / "tigerbeetle.log"
    if not data_file.exists():
        # Formatted beside it, renamed when complete: an interrupted format never leaves a half file.
        partial = data_dir / "0_0.tigerbeetle.formatting"
        partial.unlink(missing_ok=True)
        with log.open("ab") as out:
            done = subprocess.run([binary, "format", f"--cluster={cluster_id}", "--replica=0", "--replica-count=1",
                                   str(partial)], stdout=out, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise LaunchError(f"`tigerbeetle format` failed (exit {done.returncode}); see {log}")
        os.replace(partial, data_file)
    replica = spawn_replica(binary, address, data_file, env)
    try:
        _wait_until_answers(replica, python, cluster_id, address, log)
    except BaseException:
        _stop({"tigerbeetle": replica})
        raise
    return replica, address, data_file


def spawn_replica(binary: str, address: str, data_file: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A production-mode replica (no --development: 32 clients and full-size requests) on a formatted file."""
    with (data_file.parent / "tigerbeetle.log").open("ab") as out:
        return _spawn([binary, "start", f"--addresses={address}", f"--cache-grid={TIGERBEETLE_CACHE_GRID}",
                       str(data_file)], env, out)


def _stop(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for proc in children.values():
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ledger_start(env: dict[str, str], python: str, supervisor: Supervisor) -> tuple[str, Path | None]:
    """Start a TigerBeetle replica (supervised as ``tigerbeetle``, its address into ``env``) when there is a binary
    and no cluster or other backend of the user's own. Returns the banner's ledger line and the replica's data file."""
    wants_tigerbeetle = env.get("LEDGER_BACKEND", "tigerbeetle") in ("", "tigerbeetle")
    binary = tigerbeetle_binary() if wants_tigerbeetle and not env.get("TIGERBEETLE_ADDRESSES") else None
    if binary:
        replica, address, data_file = start_tigerbeetle(binary, env, python)
        supervisor.add("tigerbeetle", lambda: spawn_replica(binary, address, data_file, env), proc=replica)
        env["TIGERBEETLE_ADDRESSES"] = address
        return f"tigerbeetle {address}, replica started here (data {data_file})", data_file
    if env.get("TIGERBEETLE_ADDRESSES") and wants_tigerbeetle:
        return f"tigerbeetle {env['TIGERBEETLE_ADDRESSES']} (TIGERBEETLE_ADDRESSES)", None
    backend = env.get("LEDGER_BACKEND") or "sql"
    return (f"{backend} (tables in the database; a tigerbeetle binary on PATH or in TIGERBEETLE_BIN "
            "would run TigerBeetle)") if backend == "sql" else backend, None


def _mail_default(env: dict[str, str]) -> str:
    """Without mail settings, ``make run`` writes each email to a file in ``$TOLLGATE_DATA_DIR/mail/`` (an
    invoice email carries its PDF: printed, it would fill the terminal). Returns the banner's line."""
    if env.get("EMAIL_URL") or env.get("EMAIL_BACKEND"):
        return "as EMAIL_URL / EMAIL_BACKEND say"
    mail_dir = Path(env.get("TOLLGATE_DATA_DIR") or ROOT / "var") / "mail"
    mail_dir.mkdir(parents=True, exist_ok=True)
    env["EMAIL_URL"] = f"file://{mail_dir.resolve()}"
    return f"written to {mail_dir}/, one file per email (EMAIL_URL to send them)"


def web_command(python: str, host: str, port: int) -> list[str]:
    """The web process: uvicorn on ``portal.asgi`` (Django's ASGI handler speaks no lifespan protocol: off, so
    uvicorn does not log that it tried). A stop lets requests in flight finish for up to 10 s, within the
    supervisor's 15."""
    return [python, "-m", "uvicorn", "portal.asgi:application", "--host", host, "--port", str(port),
            "--lifespan", "off", "--timeout-graceful-shutdown", "10"]


def _banner(url: str, info: dict[str, Any], ledger_line: str, *, running: str, mail_line: str,
            reload_line: str) -> None:
    if not info:
        print(f"\n  Tollgate is starting on {url}   ({running}; Ctrl-C stops all)\n"
              f"  ledger                   : {ledger_line}\n"
              f"  emails                   : {mail_line}\n"
              f"  reload                   : {reload_line}\n", flush=True)
        return
    operator = f"{info['operator_login']['username']} / {info['operator_login']['password']}"
    customer = f"{info['customer_login']['username']} / {info['customer_login']['password']}"
    invoice = info.get("last_month_invoice")
    invoice_line = (f"  last month's invoice     : {url}{invoice}   (its PDF: {url}{invoice.rstrip('/')}.pdf)\n"
                    if invoice else "")
    print(f"""
  Tollgate is starting on {url}   ({running}; Ctrl-C stops all)

  pricing console          : {url}/console/   login {operator}  (admin: {url}/admin/)
  customer dashboard       : {url}/dashboard/   login {customer}  (customer acme-co)
  ingest API key           : {info['ingest_api_key']}
  read API key (acme-co)   : {info['read_api_key']}
{invoice_line}  API docs                 : {url}/api/docs
  ledger                   : {ledger_line}
  emails                   : {mail_line}
  reload                   : {reload_line}

  curl -X POST {url}/api/v1/events -H 'Authorization: Bearer {info['ingest_api_key']}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"event_id": "hello-1", "customer": "acme-co", "meter": "llm_tokens", "quantity": 1200,
            "timestamp": "'$(date -u +%Y-%m-%dT%H:%M:%SZ)'", "dimensions": {{"model": "gpt-4o"}}}}'
""", flush=True)


def _reload_start(wanted: bool) -> tuple[codewatch.CodeWatcher | None, str]:
    """The code watcher when reload is wanted and watchfiles is installed, and the banner's line."""
    if not wanted:
        return None, "off (--noreload)"
    if not codewatch.available():
        return None, "off (watchfiles is not installed: `make install` installs it)"
    watcher = codewatch.CodeWatcher(ROOT).start()
    folders = ", ".join(f"{path.name}/" for path in watcher.paths)
    return watcher, f"a change under {folders} restarts web, worker and beat"


def _serve(supervisor: Supervisor, app: tuple[str, ...], watcher: codewatch.CodeWatcher | None,
           stopping: Callable[[], bool]) -> None:
    """Until a stop: restart what died (after its backoff), and everything the code it runs changed under."""
    while not stopping():
        supervisor.check()
        changed = watcher.take() if watcher is not None else []
        if changed and not stopping():
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            print(f"{', '.join(changed[:3])}{more} changed: restarting web, worker and beat", flush=True)
            supervisor.restart(app)
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--no-seed", action="store_true")
    parser.add_argument("--noreload", action="store_true", help="no restart when the code changes")
    args = parser.parse_args()
    python = sys.executable
    env = dict(os.environ)
    mail_line = _mail_default(env)

    stopping, starting = False, True

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        if starting:  # formatting, waiting for the replica, seeding: abandon it, then stop what runs
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    data_file: Path | None = None
    watcher: codewatch.CodeWatcher | None = None
    supervisor = Supervisor(hint=lambda name: f" (its log: {data_file.parent / 'tigerbeetle.log'})"
                            if data_file and name == "tigerbeetle" else "")
    app = ("web", "worker", "beat")
    exit_code = 0
    try:
        ledger_line, data_file = _ledger_start(env, python, supervisor)

        info = {}
        if not args.no_seed:
            out = subprocess.run([python, "manage.py", "seed_demo", "--json"], cwd=ROOT, env=env, check=True,
                                 capture_output=True, text=True)
            info = json.loads(out.stdout.strip().splitlines()[-1])

        celery = [python, "-m", "celery", "-A", "portal"]
        commands = {"web": web_command(python, args.host, args.port),
                    "worker": [*celery, "worker", "-l", "info", "--concurrency", "2", "--without-heartbeat",
                               "--without-mingle", "--without-gossip"],
                    "beat": [*celery, "beat", "-l", "info"]}
        for name in app:
            supervisor.add(name, functools.partial(_spawn, commands[name], env))
        url = f"http://{args.host}:{args.port}"
        ledger_running = "tigerbeetle" in supervisor.children
        watcher, reload_line = _reload_start(not args.noreload)
        _banner(url, info, ledger_line, running="web + Celery worker + beat" + (" + TigerBeetle" if ledger_running else ""),
                mail_line=mail_line, reload_line=reload_line)

        starting = False
        _serve(supervisor, app, watcher, lambda: stopping)
    except KeyboardInterrupt:
        pass
    except GaveUp:
        exit_code = 1
    except LaunchError as exc:
        print(f"make run: {exc}", file=sys.stderr, flush=True)
        exit_code = 1
    except subprocess.CalledProcessError as exc:
        print(f"make run: {' '.join(map(str, exc.cmd[1:3]))} failed (exit {exc.returncode}):\n{exc.stderr or ''}",
              file=sys.stderr, flush=True)
        exit_code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave orphans behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if watcher is not None:
            watcher.close()
        if any(name in supervisor.children for name in app):
            supervisor.stop(app)  # the app first: requests in flight still reach the ledger
            print("stopped web, worker and beat", flush=True)
        if supervisor.children:
            supervisor.stop()
            print("stopped tigerbeetle", flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
