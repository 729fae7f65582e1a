"""Following a file of lines (a JSON-lines log) across rotation, from a saved position.

``LineFollower.read()`` hands out the complete lines written since the last ``commit``, and
the position after them; the caller stores what the lines say *and* that position in one
spool transaction, then calls ``commit``. After a crash the saved position is where reading
resumes, so a line is neither lost nor read twice.

Rotation by rename and recreate (kube-apiserver's ``--audit-log-maxsize`` renames
``audit.log`` to ``audit-<time>.log``; logrotate's default renames it to ``audit.log.1``):
the follower keeps the renamed file open and reads it to its end. Then, before the new file at
``path``, it reads any rotated files that came after it (the log rotated more than once while
the follower was busy or stopped), oldest first. Rotated files are the regular files beside
``path`` named like it (``<stem>*<suffix>`` or ``<name>.*``, not compressed), ordered by
modification time and then name. After a restart the saved position's file is found by its
inode, wherever it was renamed to.

A file truncated in place (copy-truncate) is read again from its start, with a warning: lines
written between the copy and the truncation are lost by that method.
"""

from __future__ import annotations

import json
import os
import stat as stat_module
from dataclasses import dataclass
from pathlib import Path

from collectors.runtime.logs import get_logger

log = get_logger("files")

READ_SIZE = 1024 * 1024
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4")


@dataclass(frozen=True)
class Position:
    """A place in a file: which file (device and inode; its modification time and name then,
    to find its successors if it is gone) and the byte offset after the last line read."""

    dev: int
    ino: int
    offset: int
    mtime_ns: int = 0
    name: str = ""

    def dumps(self) -> str:
        return json.dumps(
            {
                "dev": self.dev,
                "ino": self.ino,
                "offset": self.offset,
                "mtime_ns": self.mtime_ns,
                "name": self.name,
            }
        )

    @classmethod
    def loads(cls, text: str | bytes) -> Position:
        data = json.loads(text)
        return cls(
            int(data["dev"]),
            int(data["ino"]),
            int(data["offset"]),
            int(data.get("mtime_ns", 0)),
            str(data.get("name", "")),
        )


Ids = tuple[int, int]
SortKey = tuple[int, str]  # (mtime_ns, name): the order rotated files were written in


def _ids(stat: os.stat_result) -> Ids:
    return stat.st_dev, stat.st_ino


class LineFollower:
    """Lines appended to ``path``, at most ``max_lines`` at a time, from ``position`` (None:
    the start of the file, or its end with ``from_end``)."""

    def __init__(
        self,
        path: Path,
        position: Position | None = None,
        *,
        max_lines: int = 500,
        from_end: bool = False,
    ) -> None:
        self.path = path
        self.max_lines = max_lines
        self._fd: int | None = None
        self._ids: Ids | None = None
        self._name = ""  # the name the open file had when it was opened or last seen
        self._offset = 0
        self._saved = position
        self._from_end = from_end and position is None
        self._pending: tuple[list[bytes], Position] | None = None

    # -- the files -----------------------------------------------------------------------

    def _siblings(self) -> list[tuple[SortKey, Path, Ids]]:
        "Rotated copies of ``path`` beside it, oldest first."
        stem, suffix, name = self.path.stem, self.path.suffix, self.path.name
        found: list[tuple[SortKey, Path, Ids]] = []
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return found
        for entry in entries:
            other = entry.name
            if other == name or not other.startswith(stem) or other.endswith(COMPRESSED):
                continue
            if not (other.endswith(suffix) or other.startswith(name + ".")):
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat_module.S_ISREG(stat.st_mode):
                found.append(((stat.st_mtime_ns, other), Path(entry.path), _ids(stat)))
        found.sort()
        return found

    def _open_file(self, path: Path, offset: int) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        stat = os.fstat(fd)
        self.close()
        self._fd = fd
        self._ids = _ids(stat)
        self._name = path.name
        if stat.st_size < offset:
            log.warning(
                "file shorter than the saved position; reading it from its start", path=str(path)
            )
            offset = 0
        self._offset = offset
        return True

    def _open(self) -> bool:
        "Open the file to read (resolving a saved position); False while ``path`` is missing."
        saved, self._saved = self._saved, None
        if saved is not None:
            if self._resume(saved):
                return True
            log.warning(
                "the saved position's file is gone; reading what came after it", path=str(self.path)
            )
            if self._open_next((saved.mtime_ns, saved.name), exclude=(saved.dev, saved.ino)):
                return True
        if not self._open_file(self.path, 0):
            return False
        if self._from_end:
            self._offset = os.fstat(self._require_fd()).st_size
            self._from_end = False
        return True

    def _resume(self, saved: Position) -> bool:
        "Open the saved position's file (``path`` or a renamed copy), at its offset."
        wanted = (saved.dev, saved.ino)
        try:
            if _ids(self.path.stat()) == wanted:
                return self._open_file(self.path, saved.offset)
        except FileNotFoundError:
            pass
        for _key, path, ids in self._siblings():
            if ids == wanted and self._open_file(path, saved.offset):
                log.info("finishing a rotated file first", path=str(path), offset=saved.offset)
                return True
        return False

    def _open_next(self, after: SortKey, exclude: Ids) -> bool:
        "Open the oldest rotated file written after ``after`` (not ``exclude``, not ``path``)."
        try:
            current: Ids | None = _ids(self.path.stat())
        except FileNotFoundError:
            current = None
        for key, path, ids in self._siblings():
            if key > after and ids not in (exclude, current) and self._open_file(path, 0):
                log.info("reading a rotated file", path=str(path))
                return True
        return False

    def _require_fd(self) -> int:
        assert self._fd is not None, "no file open"
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- reading -------------------------------------------------------------------------

    def read(self) -> tuple[list[bytes], Position] | None:
        """The next complete lines (without their newlines, blank ones skipped) and the
        position after them; the same again until ``commit``. None: nothing new yet."""
        if self._pending is not None:
            return self._pending
        if self._fd is None and not self._open():
            return None
        lines, end = self._lines_from(self._offset, final=False)
        while not lines and end == self._offset:
            moved = self._move_on()
            if moved is None:
                return None
            lines, end = self._lines_from(self._offset, final=moved == "finish")
        fd = self._require_fd()
        stat = os.fstat(fd)
        position = Position(stat.st_dev, stat.st_ino, end, stat.st_mtime_ns, self._name)
        self._pending = (lines, position)
        return self._pending

    def commit(self, position: Position) -> None:
        "The lines up to ``position`` are stored: read on from there."
        self._pending = None
        if self._ids == (position.dev, position.ino):
            self._offset = position.offset

    def _lines_from(self, offset: int, *, final: bool) -> tuple[list[bytes], int]:
        """Complete lines from ``offset`` (up to ``max_lines``) and the offset after them;
        ``final``: the bytes after the last newline count as a line too."""
        fd = self._require_fd()
        size = READ_SIZE
        while True:
            data = os.pread(fd, size, offset)
            cut = data.rfind(b"\n")
            if cut >= 0 or len(data) < size:
                break
            size *= 2  # a line longer than what was read: read more
        lines: list[bytes] = []
        start = 0
        while start <= cut and len(lines) < self.max_lines:
            stop = data.index(b"\n", start)
            line = data[start:stop].strip()
            if line:
                lines.append(line)
            start = stop + 1
        if final and start > cut and len(lines) < self.max_lines and start < len(data):
            tail = data[start:].strip()
            if tail:
                lines.append(tail)
            start = len(data)
        return lines, offset + start

    def _move_on(self) -> str | None:
        """Nothing more to read here: find what to read next. ``"finish"``: the rotated file's
        last bytes (no newline after them); ``"next"``: another file is open; None: wait."""
        try:
            current = self.path.stat()
        except FileNotFoundError:
            current = None  # renamed away, the new one not created yet
        # After looking at ``path``: a writer that renamed the file writes to it no more, so
        # its size now is final (looked at first, lines appended before the rename could be
        # left behind).
        own = os.fstat(self._require_fd())
        if current is not None and _ids(current) == self._ids:
            if current.st_size < self._offset:
                log.warning(
                    "file truncated in place; reading it again from its start", path=str(self.path)
                )
                self._offset = 0
                return "next"
            return None
        # The open file was rotated away (or is an older rotated file being finished).
        if own.st_size > self._offset:
            return "finish"
        exclude = _ids(own)
        name = self._name
        for key, _path, ids in self._siblings():
            if ids == exclude:
                name = key[1]  # its name now
        if self._open_next((own.st_mtime_ns, name), exclude):
            return "next"
        if current is None:
            return None
        if not self._open_file(self.path, 0):
            return None
        log.info("file rotated; following the new one", path=str(self.path))
        return "next"
