"""``make run``'s reload: a thread watches the project's code and templates (inotify, through watchfiles) and
says what changed since it was last asked; the launcher then restarts web, worker and beat
(``Supervisor.restart``). The processes themselves run as they would without it, so the supervisor still
sees each one die (uvicorn's own ``--reload`` would put a reloader between them, which does not notice its
server dying)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

# What a running process has read: Python modules and templates (Django caches compiled templates even with
# DEBUG on, and only runserver's own reloader would clear them). Static files need no restart: WhiteNoise
# looks them up on each request while DEBUG is on.
SUFFIXES = (".py", ".html", ".txt", ".css", ".json")
FOLDERS = ("billing", "ledger", "portal", "templates")


def _wanted(path: str) -> bool:
    name = Path(path).name
    return name.endswith(SUFFIXES) and not name.startswith((".", "#", "~")) and "__pycache__" not in path


class CodeWatcher:
    """Watches ``folders`` from ``start()`` until ``close()``; ``take()`` returns the changed paths (relative
    to ``root`` when under it) seen since the previous call, sorted, empty when none."""

    def __init__(self, root: Path, folders: Iterable[str] = FOLDERS, debounce_ms: int = 400) -> None:
        self.root = root
        self.paths = [root / folder for folder in folders if (root / folder).is_dir()]
        self.debounce_ms = debounce_ms
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._changed: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="codewatch", daemon=True)
        self.ready = threading.Event()  # set once the watches are in place

    def start(self) -> CodeWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        import watchfiles

        for changes in watchfiles.watch(*self.paths, watch_filter=lambda _change, path: _wanted(path),
                                        debounce=self.debounce_ms, step=50, stop_event=self._stop,
                                        rust_timeout=500, yield_on_timeout=True, raise_interrupt=False):
            self.ready.set()  # the first timeout (or change) comes once the watches are in place
            if changes:
                with self._lock:
                    self._changed.update(self._relative(path) for _change, path in changes)

    def _relative(self, path: str) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return path

    def take(self) -> list[str]:
        with self._lock:
            changed, self._changed = sorted(self._changed), set()
        return changed

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def available() -> bool:
    """watchfiles is a development dependency (requirements.lock): without it, ``make run`` runs without reload."""
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        return False
    return True
