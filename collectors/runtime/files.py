"""Following a file of lines (a JSON-lines log) across rotation, from a saved position.

``LineFollower.read()`` hands out the complete lines written since the last ``commit``, and
the position after them; the caller stores what the lines say *and* that position in one
spool transaction, then calls ``commit``. After a crash the saved position is where reading
resumes, so a line is neither lost nor read twice.

Rotation by rename and recreate (what kube-apiserver's ``--audit-log-maxsize`` does): the
follower keeps the renamed file open, reads it to its end, then opens the new file at ``path``
from its start. After a restart it finds the renamed file by its inode in the same directory
and finishes it first. A file truncated in place (copy-truncate) is read again from its start,
with a warning: lines written between the copy and the truncation are lost by that method.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from collectors.runtime.logs import get_logger

log = get_logger("files")

READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Position:
    "A place in a file: which file (device and inode) and the byte offset after the last line."

    dev: int
    ino: int
    offset: int

    def dumps(self) -> str:
        return json.dumps({"dev": self.dev, "ino": self.ino, "offset": self.offset})

    @classmethod
    def loads(cls, text: str | bytes) -> Position:
        data = json.loads(text)
        return cls(int(data["dev"]), int(data["ino"]), int(data["offset"]))


def _ids(stat: os.stat_result) -> tuple[int, int]:
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
        self._ids: tuple[int, int] | None = None
        self._offset = 0
        self._saved = position
        self._from_end = from_end and position is None
        self._pending: tuple[list[bytes], Position] | None = None

    # -- opening -------------------------------------------------------------------------

    def _open(self) -> bool:
        "Open the file to read (resolving a saved position); False while ``path`` is missing."
        saved, self._saved = self._saved, None
        if saved is not None:
            renamed = self._find_by_inode(saved)
            if renamed is not None:
                self._use(renamed, saved.offset)
                return True
            log.warning(
                "the file of the saved position is gone; reading from the start",
                path=str(self.path),
            )
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        self._fd = fd
        stat = os.fstat(fd)
        self._ids = _ids(stat)
        self._offset = stat.st_size if self._from_end else 0
        self._from_end = False
        return True

    def _find_by_inode(self, saved: Position) -> Path | None:
        "The file the saved position names: ``path`` itself, or a renamed copy beside it."
        try:
            if _ids(self.path.stat()) == (saved.dev, saved.ino):
                return self.path
        except FileNotFoundError:
            pass
        try:
            entries = list(os.scandir(self.path.parent))
        except OSError:
            return None
        for entry in entries:
            try:
                if entry.is_file() and _ids(entry.stat()) == (saved.dev, saved.ino):
                    return Path(entry.path)
            except OSError:
                continue
        return None

    def _use(self, path: Path, offset: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        stat = os.fstat(fd)
        self._fd = fd
        self._ids = _ids(stat)
        if stat.st_size < offset:
            log.warning(
                "file shorter than the saved position; reading from its start", path=str(path)
            )
            offset = 0
        self._offset = offset
        if path != self.path:
            log.info("finishing a rotated file first", path=str(path), offset=offset)

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
        assert self._fd is not None
        assert self._ids is not None
        lines, end = self._lines_from(self._fd, self._offset, final=False)
        if not lines and end == self._offset:
            if not self._switch_if_rotated():
                return None
            assert self._fd is not None
            assert self._ids is not None
            if self._switched_to_new:
                lines, end = self._lines_from(self._fd, self._offset, final=False)
            else:  # the rotated file's last bytes, without a newline: a line all the same
                lines, end = self._lines_from(self._fd, self._offset, final=True)
            if not lines and end == self._offset:
                return None
        position = Position(self._ids[0], self._ids[1], end)
        self._pending = (lines, position)
        return self._pending

    def commit(self, position: Position) -> None:
        "The lines up to ``position`` are stored: read on from there."
        self._pending = None
        if self._ids == (position.dev, position.ino):
            self._offset = position.offset

    def skip(self) -> None:
        "Drop the pending lines without storing them (they could not be used at all)."
        if self._pending is not None:
            self.commit(self._pending[1])

    def _lines_from(self, fd: int, offset: int, *, final: bool) -> tuple[list[bytes], int]:
        "Complete lines from ``offset`` (up to ``max_lines``) and the offset after them."
        size = READ_SIZE
        while True:
            data = os.pread(fd, size, offset)
            cut = data.rfind(b"\n")
            if cut >= 0 or len(data) < size:
                break
            size *= 2  # a line longer than what was read: read more
        if cut < 0:
            if final and data:
                return [data], offset + len(data)
            return [], offset
        lines: list[bytes] = []
        start = 0
        end = offset
        while start <= cut and len(lines) < self.max_lines:
            stop = data.index(b"\n", start)
            line = data[start:stop].strip()
            if line:
                lines.append(line)
            start = stop + 1
            end = offset + start
        if final and start > cut and len(lines) < self.max_lines and start < len(data):
            lines.append(data[start:].strip())
            end = offset + len(data)
        return lines, end

    _switched_to_new = False

    def _switch_if_rotated(self) -> bool:
        """When ``path`` is now another file (or this one was truncated), move on: True if
        there may be something new to read."""
        self._switched_to_new = False
        assert self._fd is not None
        own = os.fstat(self._fd)
        try:
            current = self.path.stat()
        except FileNotFoundError:
            current = None  # renamed away, the new one not created yet
        if current is not None and _ids(current) == self._ids:
            if current.st_size < self._offset:
                log.warning(
                    "file truncated in place; reading it again from the start", path=str(self.path)
                )
                self._offset = 0
                return True
            return False
        if own.st_size > self._offset:
            return True  # finish the rotated file first (its last line has no newline)
        if current is None:
            return False
        self.close()
        fd = os.open(self.path, os.O_RDONLY)
        self._fd = fd
        self._ids = _ids(os.fstat(fd))
        self._offset = 0
        self._switched_to_new = True
        log.info("file rotated; following the new one", path=str(self.path))
        return True
