"""The real ``git`` executable, driven for the GitOps follower: a local bare clone that
fetches one branch of a repository, lists commits and trees, and reads blobs.

Every command runs with a timeout, no terminal prompts (``GIT_TERMINAL_PROMPT=0``, SSH in
batch mode) and ``LC_ALL=C``; a command that fails raises ``GitError`` with git's own message,
with any credentials in it removed. A token for an HTTPS remote (``--repo-token-file``) goes to
git in its environment as an ``http.extraHeader`` (``GIT_CONFIG_COUNT``), never on its command
line, so it shows neither in ``ps`` nor in a log line.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

GIT = "git"
DEFAULT_TIMEOUT = 300.0
_POLL = 0.1
_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")


class GitError(Exception):
    "A git command failed; the message is git's, credentials removed."


def redact_url(url: str) -> str:
    """``url`` without the user and password of its authority (``https://tok@host/r`` ->
    ``https://host/r``): what may be shown in logs, contexts and errors."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    text = re.sub(r"(\w+://)[^/@\s]+@", r"\1", text)  # user:password@ in any URL
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


@dataclass(frozen=True)
class Commit:
    sha: str
    parents: tuple[str, ...]
    author_name: str
    author_email: str
    committed_at: str  # strict ISO 8601 (%cI)
    subject: str

    @property
    def first_parent(self) -> str | None:
        return self.parents[0] if self.parents else None


@dataclass(frozen=True)
class TreeFile:
    blob: str
    size: int


def basic_auth_header(credentials: str) -> str:
    """``Authorization`` for ``USER:PASSWORD``, or for a bare token (user ``x-access-token``,
    what GitHub takes for app and personal tokens)."""
    if ":" not in credentials:
        credentials = f"x-access-token:{credentials}"
    return "Basic " + base64.b64encode(credentials.encode()).decode()


class Git:
    """Commands on the bare repository at ``git_dir`` (made by ``init``).

    ``auth_header``: an ``Authorization`` header value sent to HTTP(S) remotes.
    ``stop``: when set, a running command is killed and ``GitError`` raised.
    """

    def __init__(
        self,
        git_dir: Path,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        auth_header: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.git_dir = git_dir
        self.timeout = timeout
        self.stop = stop or threading.Event()
        self._secrets: tuple[str, ...] = ()
        env = {
            "GIT_TERMINAL_PROMPT": "0",
            "GCM_INTERACTIVE": "never",
            "LC_ALL": "C",
            "GIT_DIR": str(git_dir),
        }
        if "GIT_SSH_COMMAND" not in os.environ:
            env["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes"
        if auth_header is not None:
            count = int(os.environ.get("GIT_CONFIG_COUNT", "0") or 0)
            env["GIT_CONFIG_COUNT"] = str(count + 1)
            env[f"GIT_CONFIG_KEY_{count}"] = "http.extraHeader"
            env[f"GIT_CONFIG_VALUE_{count}"] = f"Authorization: {auth_header}"
            self._secrets = (auth_header, auth_header.split(" ", 1)[-1])
        self._env: Mapping[str, str] = {**os.environ, **env}

    # -- running ---------------------------------------------------------------------------

    def _run(
        self, args: tuple[str, ...], timeout: float | None, input: bytes | None
    ) -> tuple[int, bytes, bytes]:
        limit = self.timeout if timeout is None else timeout
        try:
            process = subprocess.Popen(
                [GIT, *args],
                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(self._env),
            )
        except OSError as exc:
            raise GitError(f"cannot run {GIT}: {exc.strerror}") from None
        deadline = time.monotonic() + limit
        pending_input = input
        while True:
            try:
                out, err = process.communicate(pending_input, timeout=_POLL)
                return process.returncode, out, err
            except subprocess.TimeoutExpired:
                pending_input = None  # communicate keeps writing what it started
                if self.stop.is_set() or time.monotonic() > deadline:
                    process.kill()
                    process.communicate()
                    why = "stopped" if self.stop.is_set() else f"timed out after {limit:g} s"
                    raise GitError(f"git {args[0]} {why}") from None

    def run(self, *args: str, timeout: float | None = None, input: bytes | None = None) -> bytes:
        """``git ARGS``'s standard output. :raises GitError: it failed, timed out or was
        stopped."""
        code, out, err = self._run(args, timeout, input)
        if code != 0:
            message = err.decode(errors="replace").strip() or f"exit status {code}"
            raise GitError(_scrub(f"git {args[0]}: {message}", self._secrets))
        return out

    def text(self, *args: str) -> str:
        return self.run(*args).decode(errors="replace")

    # -- the clone -------------------------------------------------------------------------

    def init(self) -> None:
        "Make the bare repository when it is not there yet (automatic gc off: we keep bases)."
        if (self.git_dir / "HEAD").exists():
            return
        self.git_dir.parent.mkdir(parents=True, exist_ok=True)
        self.run("init", "--quiet", "--bare", str(self.git_dir))
        self.run("config", "gc.auto", "0")

    def fetch(self, url: str, branch: str) -> str | None:
        """Fetch ``branch`` of ``url`` (history included; a force-push replaces the ref).
        The commit it points at, or None when the remote has no such branch."""
        if url.startswith("-"):
            raise GitError(f"{url!r} is not a repository URL or path")
        ref = f"refs/remotes/origin/{branch}"
        try:
            self.run(
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--",
                url,
                f"+refs/heads/{branch}:{ref}",
            )
        except GitError as exc:
            if "couldn't find remote ref" in str(exc):
                return None
            raise
        return self.resolve(ref)

    def resolve(self, ref: str) -> str | None:
        "The commit ``ref`` names, or None."
        try:
            sha = self.text("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
        except GitError:
            return None
        return sha or None

    def has_commit(self, sha: str) -> bool:
        if not _SHA.match(sha):
            return False
        return self.resolve(sha) == sha

    def is_ancestor(self, ancestor: str, commit: str) -> bool:
        "Whether ``ancestor`` is ``commit`` or one of its ancestors (False when unknown)."
        code, _, _ = self._run(("merge-base", "--is-ancestor", ancestor, commit), None, None)
        return code == 0

    def update_ref(self, ref: str, sha: str) -> None:
        self.run("update-ref", ref, sha)

    def commit(self, sha: str) -> Commit:
        commits = self._log("--no-walk", sha)
        if not commits:
            raise GitError(f"no commit {sha}")
        return commits[0]

    def first_parent_commits(
        self, tip: str, exclude: str | None, paths: tuple[str, ...] = ()
    ) -> list[Commit]:
        """Commits on the first-parent line to ``tip``, oldest first, that are not reachable
        from ``exclude`` (all of them when None), limited to those changing ``paths``."""
        args = ["--first-parent", "--reverse", tip]
        if exclude is not None:
            args.append(f"^{exclude}")
        return self._log(*args, "--", *paths)

    def _log(self, *args: str) -> list[Commit]:
        fields = "%H%x00%P%x00%an%x00%ae%x00%cI%x00%s%x00"
        out = self.text("log", f"--format={fields}", *args)
        parts = out.split("\0")
        commits = []
        for start in range(0, len(parts) - 6 + 1, 6):
            sha, parents, name, email, date, subject = parts[start : start + 6]
            commits.append(Commit(sha.strip(), tuple(parents.split()), name, email, date, subject))
        return commits

    def tree(self, commit: str, prefix: str = "") -> dict[str, TreeFile]:
        "Regular files of ``commit`` (under ``prefix``): path -> blob and size."
        args = ["ls-tree", "-r", "-l", "-z", "--full-tree", commit]
        if prefix:
            args += ["--", prefix]
        found: dict[str, TreeFile] = {}
        for entry in self.run(*args).split(b"\0"):
            if not entry:
                continue
            meta, _, path = entry.partition(b"\t")
            mode, kind, blob, size = meta.split()
            if kind != b"blob" or mode not in (b"100644", b"100755"):
                continue  # symlinks and submodules are not entity files
            found[path.decode(errors="replace")] = TreeFile(blob.decode(), int(size))
        return found

    @contextmanager
    def blobs(self) -> Iterator[BlobReader]:
        "A ``git cat-file --batch`` process for reading many blobs."
        try:
            process = subprocess.Popen(
                [GIT, "cat-file", "--batch"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=dict(self._env),
            )
        except OSError as exc:
            raise GitError(f"cannot run {GIT}: {exc.strerror}") from None
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            yield BlobReader(process.stdin, process.stdout)
        finally:
            process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()


class BlobReader:
    "Reads blobs by id through one ``git cat-file --batch``."

    def __init__(self, requests: IO[bytes], answers: IO[bytes]) -> None:
        self._requests = requests
        self._answers = answers

    def read(self, blob: str) -> bytes:
        ":raises GitError: no such blob."
        self._requests.write(blob.encode() + b"\n")
        self._requests.flush()
        header = self._answers.readline().split()
        if len(header) != 3:
            raise GitError(f"git cat-file: {blob} is missing")
        size = int(header[2])
        data = self._answers.read(size + 1)  # the content and its newline
        return data[:size]
