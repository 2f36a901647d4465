"""``make run``: seed the demo, then run web + Celery worker + Celery beat together.

Ctrl-C (or SIGTERM) stops all three; if one of them dies, the others are stopped too.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _spawn(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
    # Own session: the terminal's Ctrl-C reaches only us, and we stop the children in order.
    return subprocess.Popen(argv, cwd=ROOT, start_new_session=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--no-seed", action="store_true")
    args = parser.parse_args()
    python = sys.executable

    info = {}
    if not args.no_seed:
        out = subprocess.run([python, "manage.py", "seed_demo", "--json"], cwd=ROOT, check=True,
                             capture_output=True, text=True)
        info = json.loads(out.stdout.strip().splitlines()[-1])

    celery = [python, "-m", "celery", "-A", "portal"]
    children = {
        "web": _spawn("web", [python, "manage.py", "runserver", f"{args.host}:{args.port}", "--noreload"]),
        "worker": _spawn("worker", [*celery, "worker", "-l", "info", "--concurrency", "2", "--without-heartbeat",
                                    "--without-mingle", "--without-gossip"]),
        "beat": _spawn("beat", [*celery, "beat", "-l", "info"]),
    }
    url = f"http://{args.host}:{args.port}"
    operator = f"{info['operator_login']['username']} / {info['operator_login']['password']}" if info else ""
    customer = f"{info['customer_login']['username']} / {info['customer_login']['password']}" if info else ""
    if info:
        print(f"""
  Tollgate is starting on {url}   (web + Celery worker + beat; Ctrl-C stops all three)

  pricing console          : {url}/console/   login {operator}  (admin: {url}/admin/)
  customer dashboard       : {url}/dashboard/   login {customer}  (customer acme-co)
  ingest API key           : {info['ingest_api_key']}
  read API key (acme-co)   : {info['read_api_key']}
  API docs                 : {url}/api/docs

  curl -X POST {url}/api/v1/events -H 'Authorization: Bearer {info['ingest_api_key']}' \\
       -H 'Content-Type: application/json' \\
       -d '{{"event_id": "hello-1", "customer": "acme-co", "meter": "llm_tokens", "quantity": 1200,
            "timestamp": "'$(date -u +%Y-%m-%dT%H:%M:%SZ)'", "dimensions": {{"model": "gpt-4o"}}}}'
""", flush=True)

    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    exit_code = 0
    while not stopping:
        for name, proc in children.items():
            if proc.poll() is not None:
                print(f"{name} exited with {proc.returncode}; stopping the others", file=sys.stderr, flush=True)
                stopping, exit_code = True, 1
                break
        time.sleep(0.2)

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
    print("stopped web, worker and beat", flush=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
