"""Where tracked events wait for the emitter: in memory (bounded), or in a SQLite spool on disk that outlives
the process. Both hand out events oldest first and forget them only once the server has answered for them,
so a batch cut off mid-send is sent again with the same event_ids. Not thread-safe: the callers hold a lock."""

from __future__ import annotations

import json
import sqlite3
import time
from collections import deque
from typing import Any, Protocol

from ._core import finalize


class Store(Protocol):
    def put(self, event: dict[str, Any]) -> int | None:
        """Keep the event; its sequence number, or None when full."""

    def take(self, n: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to n events not handed out yet, oldest first."""

    def ack(self, seqs: list[int]) -> None:
        """Forget these events: the server answered for them (or they are given up)."""

    def untake(self, seqs: list[int]) -> None:
        """These events, handed out but not acked, are handed out again (first) by the next take."""

    def waiting(self) -> int:
        """Events not handed out yet."""

    def pending(self) -> int:
        """Events not acked yet (waiting or being sent)."""

    def oldest_age(self) -> float:
        """Seconds the oldest waiting event has waited (0 when none)."""

    def last_seq(self) -> int:
        """The sequence number of the latest event put (or found in the spool)."""

    def oldest_pending(self) -> int | None:
        """The lowest sequence number not acked yet (None when nothing is pending)."""

    def close(self) -> None: ...


class MemoryStore:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queue: deque[tuple[int, float, dict[str, Any]]] = deque()
        self._taken: list[tuple[int, float, dict[str, Any]]] = []
        self._seq = 0

    def put(self, event: dict[str, Any]) -> int | None:
        if len(self._queue) + len(self._taken) >= self.capacity:
            return None
        self._seq += 1
        self._queue.append((self._seq, time.monotonic(), event))
        return self._seq

    def take(self, n: int) -> list[tuple[int, dict[str, Any]]]:
        out: list[tuple[int, dict[str, Any]]] = []
        while self._queue and len(out) < n:
            item = self._queue.popleft()
            self._taken.append(item)
            out.append((item[0], item[2]))
        return out

    def ack(self, seqs: list[int]) -> None:
        gone = set(seqs)
        self._taken = [item for item in self._taken if item[0] not in gone]

    def untake(self, seqs: list[int]) -> None:
        back = set(seqs)
        returned = sorted((item for item in self._taken if item[0] in back), key=lambda item: item[0])
        self._taken = [item for item in self._taken if item[0] not in back]
        self._queue.extendleft(reversed(returned))

    def waiting(self) -> int:
        return len(self._queue)

    def pending(self) -> int:
        return len(self._queue) + len(self._taken)

    def oldest_age(self) -> float:
        return time.monotonic() - self._queue[0][1] if self._queue else 0.0

    def last_seq(self) -> int:
        return self._seq

    def oldest_pending(self) -> int | None:
        seqs = [item[0] for item in self._taken]
        if self._queue:
            seqs.append(self._queue[0][0])
        return min(seqs) if seqs else None

    def close(self) -> None:
        pass


class SpoolStore:
    """A SQLite file (WAL): each put is committed before it returns, so an event whose ``track()`` returned
    survives the process being killed. One process per spool file."""

    def __init__(self, path: str, capacity: int) -> None:
        self.capacity = capacity
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable against a process crash; fsync at checkpoints
        self._db.execute("CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "payload TEXT NOT NULL, enqueued_at REAL NOT NULL)")
        row = self._db.execute("SELECT count(*), coalesce(max(seq), 0) FROM spool").fetchone()
        self._count, self._seq = int(row[0]), int(row[1])
        self._taken: list[int] = []
        self._cursor = 0  # the highest seq handed out

    def put(self, event: dict[str, Any]) -> int | None:
        if self._count >= self.capacity:
            return None
        cur = self._db.execute("INSERT INTO spool (payload, enqueued_at) VALUES (?, ?)",
                               (json.dumps(finalize(event), separators=(",", ":")), time.time()))
        self._count += 1
        self._seq = int(cur.lastrowid or 0)
        return self._seq

    def take(self, n: int) -> list[tuple[int, dict[str, Any]]]:
        # past the cursor, skipping what another sender holds (the cursor went back for events handed back)
        held = set(self._taken)
        rows = self._db.execute("SELECT seq, payload FROM spool WHERE seq > ? ORDER BY seq LIMIT ?",
                                (self._cursor, n + len(held))).fetchall()
        out = [(int(seq), json.loads(payload)) for seq, payload in rows if seq not in held][:n]
        if out:
            self._cursor = out[-1][0]
            self._taken.extend(seq for seq, _ in out)
        return out

    def ack(self, seqs: list[int]) -> None:
        if not seqs:
            return
        for start in range(0, len(seqs), 500):
            chunk = seqs[start:start + 500]
            cur = self._db.execute(f"DELETE FROM spool WHERE seq IN ({','.join('?' * len(chunk))})", chunk)  # noqa: S608
            self._count -= cur.rowcount
        gone = set(seqs)
        self._taken = [seq for seq in self._taken if seq not in gone]

    def untake(self, seqs: list[int]) -> None:
        if seqs:
            self._cursor = min(self._cursor, min(seqs) - 1)
        back = set(seqs)
        self._taken = [seq for seq in self._taken if seq not in back]

    def waiting(self) -> int:
        return self._count - len(self._taken)

    def pending(self) -> int:
        return self._count

    def oldest_age(self) -> float:
        row = self._db.execute("SELECT enqueued_at FROM spool WHERE seq > ? ORDER BY seq LIMIT 1", (self._cursor,)).fetchone()
        return max(0.0, time.time() - float(row[0])) if row else 0.0

    def last_seq(self) -> int:
        return self._seq

    def oldest_pending(self) -> int | None:
        row = self._db.execute("SELECT min(seq) FROM spool").fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def close(self) -> None:
        self._db.close()


def open_store(spool_path: str | None, max_queue: int, max_spool: int) -> MemoryStore | SpoolStore:
    return SpoolStore(spool_path, max_spool) if spool_path else MemoryStore(max_queue)
