"""Counting files as they land in place, seen from outside the process that writes them.

Why an outside observer: the worker's own ledger is written by the code under test, and a
ledger that refuses (or merges) a second record of a step cannot show that the step's effect
happened twice. The kernel can: inotify reports every rename into place (IN_MOVED_TO) and every
file closed after writing (IN_CLOSE_WRITE), whichever process, attempt or worker did it. So the
chaos proof counts effects here, in the test process, and fails on any file landing twice.

Linux only; inotify is reached through ctypes on libc, so there is no new dependency.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

# From <sys/inotify.h>.
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

WATCH_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ONLYDIR
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
_BUFFER = 1 << 16


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_init1.restype = ctypes.c_int
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    libc.inotify_add_watch.restype = ctypes.c_int
    return libc


class LandingObserver:
    """Counts, per path relative to `base`, the non-hidden files that land in the watched folders.

    A landing is a rename into place or a close after writing; names starting with "." are
    temporary files (such as `.<name>.partial`) and are not counted. Folders created under a
    watched folder are watched as they appear, hidden ones excepted: a hidden folder is a
    temporary one (`.<name>.partial`, its files landing under their final path when it is renamed
    into place) or one to watch by name (such as `environments/DEV/.rollback`). Use as a context
    manager, or start() and stop().
    """

    def __init__(self, base: Path, folders: Iterable[str]) -> None:
        self.base = base
        self.folders = list(folders)
        # Why the counts may be incomplete (the kernel dropped events, the thread failed); None if they are not.
        self.problem: str | None = None
        self._counts: Counter[str] = Counter()
        # Files a folder scan counted, by path: (inode, mtime) as the scan saw them.
        self._scanned: dict[str, tuple[int, int]] = {}
        self._dirs: dict[int, Path] = {}  # watch descriptor -> folder
        self._lock = threading.Lock()
        self._libc = _libc()
        self._fd = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None

    # --- public --------------------------------------------------------------

    def start(self) -> LandingObserver:
        """Watch every folder (and its subfolders) before returning, so nothing after this call is missed.

        The folders must exist: a folder created later by the code under test could take its
        first file before a watch was on it.
        """
        self._fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._wake_r, self._wake_w = os.pipe()
        try:
            for folder in self.folders:
                path = self.base / folder
                if not path.is_dir():
                    raise FileNotFoundError(f"create {path} before watching it")
                # What is there already was there before the observation: not a landing.
                self._watch_tree(path, count_existing=False)
        except BaseException:
            self._close()
            raise
        self._thread = threading.Thread(target=self._run, name="landing-observer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Read every event the kernel has queued, then stop. Call it once the writers are done."""
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=30)
        self._thread = None
        self._close()

    def _close(self) -> None:
        for fd in (self._fd, self._wake_r, self._wake_w):
            os.close(fd)
        self._fd = self._wake_r = self._wake_w = -1

    def counts(self) -> dict[str, int]:
        """Landings so far per relative path, such as {"environments/DEV/frontend-1.0": 1}."""
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def __enter__(self) -> LandingObserver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- the watching thread -----------------------------------------------------

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                self._drain()
                if self._wake_r in ready:
                    # stop() is called after the writers finished, so every event they caused is
                    # already queued; the drain above read them all, until the queue was empty.
                    return
        except Exception as err:  # a dead thread would under-count in silence: say so instead
            self.problem = f"the observer failed: {err!r}"

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self._fd, _BUFFER)  # read(2) on the inotify descriptor
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
                offset += _EVENT.size + length
                self._handle(wd, mask, raw.rstrip(b"\0").decode(errors="surrogateescape"))

    def _handle(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            self.problem = "the inotify queue overflowed: events were dropped"
            return
        folder = self._dirs.get(wd)
        if mask & IN_IGNORED:
            self._dirs.pop(wd, None)  # the folder went away
            return
        if folder is None or not name:
            return
        path = folder / name
        if mask & IN_ISDIR:
            if mask & (IN_CREATE | IN_MOVED_TO) and not name.startswith("."):
                # Files may have landed in it before the watch: the scan counts them.
                self._watch_tree(path, count_existing=True)
            return
        if name.startswith(".") or not mask & (IN_MOVED_TO | IN_CLOSE_WRITE):
            return
        key = self._key(path)
        seen = self._scanned.pop(key, None)
        if seen is not None and seen == _identity(path):
            # The scan of a new folder already counted this very file (it landed between the
            # watch being added and the scan): the same landing, not a second one.
            return
        with self._lock:
            self._counts[key] += 1

    def _watch_tree(self, top: Path, count_existing: bool) -> None:
        pending = [top]
        while pending:
            here = pending.pop()
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(here), WATCH_MASK)
            if wd < 0:
                err = ctypes.get_errno()
                if err in (errno.ENOENT, errno.ENOTDIR):
                    continue  # removed again before we could watch it
                raise OSError(err, f"inotify_add_watch {here}: {os.strerror(err)}")
            if self._dirs.get(wd) == here:
                continue  # watched and scanned already (seen by a parent's scan, then by its event)
            self._dirs[wd] = here
            # Listed only once the watch is on, so a file landing meanwhile is seen by the scan,
            # its event, or both (the identity check in _handle counts that once).
            try:
                entries = list(os.scandir(here))
            except FileNotFoundError:
                continue  # removed again: what it held has gone with it
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif count_existing and (identity := _identity(Path(entry.path))) is not None:
                    key = self._key(Path(entry.path))
                    self._scanned[key] = identity
                    with self._lock:
                        self._counts[key] += 1

    def _key(self, path: Path) -> str:
        return path.relative_to(self.base).as_posix()


def _identity(path: Path) -> tuple[int, int] | None:
    """Which version of a file this is: a rename brings a new inode, a rewrite a new mtime."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns
