"""WAL checkpoints on a connection and a thread of their own, beside the writer.

With SQLite's automatic checkpoint, the commit that takes the WAL past 1,000 frames also
copies them into the database file and fsyncs it: ~7 ms here, every ~300 messages, while
every message waiting for that batch waits too (a fifth of all commit time, and the commit
p99). A ``PASSIVE`` checkpoint from another connection does the same copy without taking
the write lock, so batches keep committing meanwhile.

:class:`Checkpointer` runs one after the writer has committed (``poke``), at most every
``interval_s``, once the WAL file has room for :data:`START_FRAMES` frames: the size SQLite's
automatic checkpoint keeps it to. Below that nothing is copied, so a lightly used daemon
writes its WAL as before. When nothing was committed during the copy (a quiet moment), the
next write transaction starts the WAL from its beginning again. Under steady load some
commit always comes in meanwhile, so the WAL keeps growing until it reaches
:data:`BACKSTOP_FRAMES`, where the writer's own automatic checkpoint fires. By then this
thread has copied all but the last few frames, so that checkpoint is short, and the WAL
starts over after it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading

__all__ = ["BACKSTOP_FRAMES", "Checkpointer"]

log = logging.getLogger(__name__)

START_FRAMES = 1_000  # SQLite's default wal_autocheckpoint
BACKSTOP_FRAMES = 10_000  # the writer's own wal_autocheckpoint (~40 MB of WAL)
WAL_HEADER_BYTES, FRAME_HEADER_BYTES = 32, 24
INTERVAL_S = 0.05
CATCH_UP_ROUNDS = 2  # one more when commits came in during the first


class Checkpointer:
    """A thread that checkpoints ``path``'s WAL when poked; :meth:`stop` ends it."""

    def __init__(self, path: str, *, interval_s: float = INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self.start_frames = START_FRAMES
        self._page_size: int | None = None
        self.checkpoints = 0  # completed checkpoint calls, for tests and curiosity
        self._failing = False  # a failure is logged once, until a checkpoint works again
        # Set after each round of checkpoints (tests wait for it; the daemon does not).
        self.caught_up = threading.Event()
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._serve, daemon=True,
                                            name=f"orrad-checkpoint:{self.path}")
            self._thread.start()

    def poke(self) -> None:
        """Frames were committed: checkpoint soon (cheap; any thread)."""
        self._wanted.set()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            self._wanted.set()
            thread.join()

    def _serve(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:  # the writer's automatic checkpoint still runs
            log.warning("state database %s: no checkpoint thread (%s)", self.path, exc)
            return
        try:
            while True:
                self._wanted.wait()
                if self._stopping.is_set():
                    return
                self._wanted.clear()
                if self._wal_frames(conn) >= self.start_frames:
                    self._catch_up(conn)
                self.caught_up.set()
                # At most one checkpoint per interval: each copies what came meanwhile.
                if self._stopping.wait(self.interval_s):
                    return
        finally:
            conn.close()

    def _wal_frames(self, conn: sqlite3.Connection) -> int:
        """How many frames the WAL file has room for (its size: a WAL that starts over
        keeps its size and is written again from the beginning)."""
        try:
            if self._page_size is None:
                self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            size = os.path.getsize(self.path + "-wal")
        except (OSError, sqlite3.Error):
            return 0
        return max(0, size - WAL_HEADER_BYTES) // (self._page_size + FRAME_HEADER_BYTES)

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        for _ in range(CATCH_UP_ROUNDS):
            try:
                busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                # A full disk or a damaged file: the writer's own operations report it; the
                # backstop checkpoint takes over.
                if not self._failing:
                    log.warning("state database %s: checkpoint failed: %s", self.path, exc)
                    self._failing = True
                return
            self._failing = False
            self.checkpoints += 1
            if busy or frames <= 0 or copied >= frames:
                return
