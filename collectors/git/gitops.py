"""The GitOps follower: one repository's branch, fetched with the real ``git`` on an interval,
its entity files turned into ENTITY events commit by commit.

Each round fetches the branch into a local bare clone, then walks the first-parent line from
the last processed commit to the new tip (only commits that touch the entity files' directory
are looked at; a merge counts as one commit, compared with its first parent). For each
commit, the entity files of its tree are compared with the state after the previous one, by
blob: changed files are parsed, and entities added, changed or removed become CREATE, UPDATE
or DELETE events (an entity that only moved to another file is no change). A file that does
not parse becomes a FAILURE event naming it and the error; its entities stay as they were
until it parses again.

The state (the last processed commit and every entity file's blob and entities) is kept in
the spool's state table, written in the transaction that spools the events it led to: a
restart resumes exactly after the last commit it recorded. Because each commit is compared
with that stored state, not with its parent, a force-push that rewrote history is handled:
the first new commit is compared with the last processed tree, so what did not change is not
recorded again, and what the rewrite removed is recorded as deleted.

Idempotency keys: ``gitops:<repo id>:<commit>:<blueprint>/<identifier>`` (``...:file:<path>``
for a FAILURE), with ``:from:<base>`` added when the base the commit was compared with is not
one of its ancestors (after a force-push), so such a comparison never collides with an
earlier one of the same commit.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clients import pb
from collectors.git.entities import (
    EntityChange,
    EntityFileError,
    EntityGlob,
    FileState,
    changed_paths,
    diff_entities,
    duplicates,
    entity_map,
    parse_entities,
)
from collectors.git.repo import (
    BlobReader,
    Commit,
    Git,
    GitError,
    TreeFile,
    basic_auth_header,
    redact_url,
)
from collectors.runtime import Runtime, SpoolFull
from collectors.runtime.limits import MAX_SHORT_TEXT_CHARS, fit_event
from collectors.runtime.snapshots import encode_struct

SCOPE = "git.gitops"
STATE_VERSION = 1
FLUSH_EVENTS = 500  # events per spool transaction, at most (one commit's may be more)
FLUSH_COMMITS = 100
PROCESSED_REF = "refs/auditlog/processed"
FAILURE_LOG_SECONDS = 30.0
ORIGINS = {"GITHUB_GITOPS": pb.ORIGIN_GITHUB_GITOPS, "BITBUCKET_GITOPS": pb.ORIGIN_BITBUCKET_GITOPS}
OPERATIONS = {
    "CREATE": pb.OPERATION_CREATE,
    "UPDATE": pb.OPERATION_UPDATE,
    "DELETE": pb.OPERATION_DELETE,
}
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


def is_remote(url: str) -> bool:
    "A URL (``https://``, ``git://``, ``file://``, ``ssh://``) or ``user@host:path``."
    return "://" in url or _SCP_LIKE.match(url) is not None


def display_name(url: str) -> str:
    "``github.com/acme/catalog`` for ``https://tok@github.com/acme/catalog.git``."
    if "://" in url:
        shown = redact_url(url).split("://", 1)[1]
    elif _SCP_LIKE.match(url):
        shown = url.split("@", 1)[1].replace(":", "/", 1)
    else:
        shown = url
    return shown.removesuffix("/").removesuffix(".git")


def default_origin(url: str) -> str:
    return "BITBUCKET_GITOPS" if "bitbucket" in url.lower() else "GITHUB_GITOPS"


@dataclass(frozen=True)
class Repository:
    """One followed repository: where, which branch, how often, which files, which origin."""

    url: str  # local paths absolute
    branch: str = "main"
    interval: float = 60.0
    glob: str = ".auditlog/**/*.{yml,yaml,json}"
    origin: str = "GITHUB_GITOPS"
    name: str = ""  # as shown in context.repo; default from the URL
    token_file: Path | None = None

    @property
    def shown(self) -> str:
        return self.name or display_name(self.url)

    @property
    def id(self) -> str:
        "Short and stable: the state's key and part of every idempotency key."
        text = f"{redact_url(self.url)}\0{self.branch}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class State:
    commit: str
    files: dict[str, FileState]

    def dumps(self) -> bytes:
        data = {
            "version": STATE_VERSION,
            "commit": self.commit,
            "files": {path: state.to_json() for path, state in self.files.items()},
        }
        return zlib.compress(json.dumps(data, separators=(",", ":")).encode())

    @classmethod
    def loads(cls, raw: bytes) -> State:
        data = json.loads(zlib.decompress(raw))
        files = {path: FileState.from_json(value) for path, value in data["files"].items()}
        return cls(str(data["commit"]), files)


@dataclass
class Status:
    "What /stats shows for one repository."

    repo: str
    branch: str
    commit: str = ""
    last_fetch: str = ""
    last_error: str = ""
    commits: int = 0
    entity_events: int = 0
    file_failures: int = 0

    def document(self) -> dict[str, Any]:
        return {
            "repo": self.repo,
            "branch": self.branch,
            "commit": self.commit,
            "last_fetch": self.last_fetch,
            "last_error": self.last_error,
            "commits": self.commits,
            "entity_events": self.entity_events,
            "file_failures": self.file_failures,
        }


def _key_part(text: str) -> str:
    "An entity key or path as part of an idempotency key (hashed when long)."
    if len(text) <= 300:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _commit_time(commit: Commit, now: datetime) -> datetime:
    try:
        moment = datetime.fromisoformat(commit.committed_at)
    except ValueError:
        return now
    return min(moment, now)


class GitOpsFollower:
    def __init__(
        self,
        runtime: Runtime,
        repo: Repository,
        clone_dir: Path,
        *,
        replay_history: bool = False,
        git_timeout: float = 300.0,
        max_file_bytes: int = 1024 * 1024,
        token: Callable[[], str | None] | None = None,
    ) -> None:
        self.runtime = runtime
        self.repo = repo
        self.glob = EntityGlob(repo.glob)
        self.clone_dir = clone_dir
        self.replay_history = replay_history
        self.git_timeout = git_timeout
        self.max_file_bytes = max_file_bytes
        self.token = token or (lambda: None)
        self.origin = ORIGINS[repo.origin]
        self.status = Status(repo.shown, repo.branch)
        self.log = runtime.logger("gitops")
        self._parsed: dict[tuple[str, bool], list[dict[str, Any]] | str] = {}
        self._failing_since: float | None = None
        self._failure_logged = 0.0
        self._missing_branch_logged = False

    def git(self, stop: threading.Event | None = None) -> Git:
        """Git for one round; the token file is read again each time (a rotated token is
        picked up). :raises GitError: the token file cannot be read."""
        try:
            token = self.token()
        except Exception as exc:  # StartupError from the token file, mostly
            raise GitError(str(exc)) from None
        auth = basic_auth_header(token) if token else None
        return Git(self.clone_dir, timeout=self.git_timeout, auth_header=auth, stop=stop)

    # -- state -------------------------------------------------------------------------------

    def saved_state(self) -> State | None:
        raw = self.runtime.spool.get_state(SCOPE, self.repo.id)
        return None if raw is None else State.loads(raw)

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        state = self.saved_state()
        if state is not None:
            self.status.commit = state.commit
        while not stop.is_set():
            try:
                self.poll(self.git(stop))
            except SpoolFull:
                # What fitted is recorded; wait for room, then go on from there.
                self.runtime.count("gitops_paused")
                while not stop.is_set():
                    if self.runtime.spool.wait_for_room(FLUSH_EVENTS, timeout=1.0):
                        break
                continue
            except GitError as exc:
                if stop.is_set():
                    return
                self._failed(str(exc))
            stop.wait(self.repo.interval)

    def _failed(self, error: str) -> None:
        if "could not read Username" in error or "Authentication failed" in error:
            error += (
                "; the server wants credentials it did not get or refused: check the token"
                " file (--repo-token-file, or token_file in --repositories)"
            )
        self.runtime.count("gitops_fetch_failures")
        self.status.last_error = error
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failure_logged >= FAILURE_LOG_SECONDS:
            self._failure_logged = now
            self.log.warning(
                "cannot follow the repository; will try again",
                repo=self.repo.shown,
                branch=self.repo.branch,
                error=error,
            )

    def _fetched(self) -> None:
        self.runtime.count("gitops_fetches")
        self.status.last_fetch = datetime.now(UTC).isoformat(timespec="seconds")
        self.status.last_error = ""
        if self._failing_since is not None:
            self.log.info(
                "following the repository again",
                repo=self.repo.shown,
                after_seconds=round(time.monotonic() - self._failing_since, 1),
            )
            self._failing_since = None
            self._failure_logged = 0.0

    def poll(self, git: Git) -> None:
        """One round: fetch, then record every commit since the last processed one.

        :raises GitError: git failed (nothing recorded past the last complete transaction).
        :raises SpoolFull: the spool is full; the round stopped at the last transaction that fit.
        """
        tip = git.fetch(self.repo.url, self.repo.branch)
        self._fetched()
        if tip is None:
            if not self._missing_branch_logged:
                self.log.warning(
                    "the branch is not there (yet)", repo=self.repo.shown, branch=self.repo.branch
                )
                self._missing_branch_logged = True
            return
        self._missing_branch_logged = False
        state = self.saved_state()
        if state is None:
            if not self.replay_history:
                self._baseline(git, tip)
                return
            state = State("", {})
            commits = git.first_parent_commits(tip, None, self._paths())
        elif state.commit == tip:
            return
        elif git.has_commit(state.commit):
            commits = git.first_parent_commits(tip, state.commit, self._paths())
        else:  # the clone was lost and the old tip is gone: compare the new tip with the state
            commits = []
        if not commits or commits[-1].sha != tip:
            commits.append(git.commit(tip))
        self._process(git, state, commits)

    def _paths(self) -> tuple[str, ...]:
        return (self.glob.prefix,) if self.glob.prefix else ()

    def _baseline(self, git: Git, tip: str) -> None:
        "First start without --replay-history: the tip's entities are the starting point."
        files: dict[str, FileState] = {}
        with git.blobs() as blobs:
            for path, entry in self._tree(git, tip).items():
                parsed = self._parse(blobs, path, entry)
                if isinstance(parsed, str):
                    self.log.warning("entity file does not parse", path=path, error=parsed)
                    files[path] = FileState(entry.blob, [], parsed)
                else:
                    files[path] = FileState(entry.blob, parsed)
        state = State(tip, files)
        with self.runtime.spool.transaction() as tx:
            tx.set_state(SCOPE, self.repo.id, state.dumps())
        git.update_ref(PROCESSED_REF, tip)
        self.status.commit = tip
        entities = sum(len(f.entities) for f in files.values())
        self.log.info(
            "starting from the branch's tip (earlier commits are not recorded)",
            repo=self.repo.shown,
            branch=self.repo.branch,
            commit=tip,
            files=len(files),
            entities=entities,
        )

    def _tree(self, git: Git, commit: str) -> dict[str, TreeFile]:
        tree = git.tree(commit, self.glob.prefix)
        return {path: entry for path, entry in tree.items() if self.glob.matches(path)}

    def _parse(self, blobs: BlobReader, path: str, entry: TreeFile) -> list[dict[str, Any]] | str:
        "The entities of a blob, or why it cannot be read (cached by blob)."
        key = (entry.blob, path.lower().endswith(".json"))
        cached = self._parsed.get(key)
        if cached is not None:
            return cached
        if entry.size > self.max_file_bytes:
            result: list[dict[str, Any]] | str = (
                f"the file is {entry.size} bytes; the limit is {self.max_file_bytes}"
                " (--max-entity-file-bytes)"
            )
        else:
            try:
                result = parse_entities(path, blobs.read(entry.blob))
            except EntityFileError as exc:
                result = str(exc)
        if len(self._parsed) >= 4096:
            self._parsed.clear()
        self._parsed[key] = result
        return result

    def _process(self, git: Git, state: State, commits: list[Commit]) -> None:
        files = state.files
        current = state.commit
        rewrite_base = ""
        if current and not git.is_ancestor(current, commits[0].sha):
            rewrite_base = current
            self.runtime.count("gitops_rewrites")
            self.log.warning(
                "the branch was rewritten (force-push): comparing with the last processed tree",
                repo=self.repo.shown,
                branch=self.repo.branch,
                last_processed=current,
                new_tip=commits[-1].sha,
            )
        old_map = entity_map(files)
        pending: list[pb.AuditEvent] = []
        since_flush = 0
        counts = {"commits": 0, "entities": 0, "failures": 0}
        with git.blobs() as blobs:
            for index, commit in enumerate(commits):
                base = rewrite_base if index == 0 else ""
                tree = self._tree(git, commit.sha)
                paths = list(changed_paths(files, {p: e.blob for p, e in tree.items()}))
                since_flush += 1
                counts["commits"] += 1
                if paths:
                    new_files = dict(files)
                    failures: list[tuple[str, str, bool]] = []
                    for path in paths:
                        entry = tree.get(path)
                        if entry is None:
                            del new_files[path]
                            continue
                        parsed = self._parse(blobs, path, entry)
                        previous = files.get(path)
                        if isinstance(parsed, str):
                            kept = previous.entities if previous is not None else []
                            new_files[path] = FileState(entry.blob, kept, parsed)
                            failures.append((path, parsed, previous is None))
                        else:
                            new_files[path] = FileState(entry.blob, parsed)
                    new_map = entity_map(new_files)
                    for change in diff_entities(old_map, new_map):
                        pending.append(self._entity_event(commit, change, base))
                        counts["entities"] += 1
                    for path, error, new in failures:
                        pending.append(self._failure_event(commit, path, error, new, base))
                        counts["failures"] += 1
                    for key, where in duplicates(new_files).items():
                        if len(where) > 1 and any(p in paths for p in where):
                            self.log.warning(
                                "an entity is defined more than once; the first is used",
                                entity=key,
                                paths=",".join(where),
                                commit=commit.sha,
                            )
                    files, old_map = new_files, new_map
                current = commit.sha
                last = index == len(commits) - 1
                if last or len(pending) >= FLUSH_EVENTS or since_flush >= FLUSH_COMMITS:
                    self._flush(git, pending, State(current, files), counts)
                    pending, since_flush = [], 0
                    counts = {"commits": 0, "entities": 0, "failures": 0}

    def _flush(
        self, git: Git, events: list[pb.AuditEvent], state: State, counts: dict[str, int]
    ) -> None:
        with self.runtime.spool.transaction() as tx:
            for event in events:
                tx.add(event)
            tx.set_state(SCOPE, self.repo.id, state.dumps())
        git.update_ref(PROCESSED_REF, state.commit)
        self.status.commit = state.commit
        self.status.commits += counts["commits"]
        self.status.entity_events += counts["entities"]
        self.status.file_failures += counts["failures"]
        self.runtime.count("gitops_commits", counts["commits"])
        self.runtime.count("gitops_entity_events", counts["entities"])
        self.runtime.count("gitops_file_failures", counts["failures"])
        if events:
            self.log.info(
                "recorded",
                repo=self.repo.shown,
                commit=state.commit,
                events=len(events),
                commits=counts["commits"],
            )

    # -- events ------------------------------------------------------------------------------

    def _base_event(self, commit: Commit, key: str, path: str, base: str) -> pb.AuditEvent:
        idempotency_key = f"gitops:{self.repo.id}:{commit.sha}:{key}"
        if base:
            idempotency_key += f":from:{base}"
        event = pb.AuditEvent(
            idempotency_key=idempotency_key,
            origin=self.origin,
            source=pb.Source(
                kind=pb.SOURCE_KIND_USER,
                id=(commit.author_email or commit.author_name)[:MAX_SHORT_TEXT_CHARS],
                name=commit.author_name,
            ),
        )
        event.occurred_at.FromDatetime(_commit_time(commit, datetime.now(UTC)))
        event.context.update(
            {
                "repo": self.repo.shown,
                "branch": self.repo.branch,
                "commit": commit.sha,
                "path": path,
                "commit_subject": commit.subject,
            }
        )
        if base:
            event.context["rewritten_from"] = base
        return event

    def _entity_event(self, commit: Commit, change: EntityChange, base: str) -> pb.AuditEvent:
        entity = change.after if change.after is not None else change.before
        assert entity is not None
        event = self._base_event(commit, _key_part(change.key), change.path, base)
        event.resource = pb.RESOURCE_TYPE_ENTITY
        event.identifier = str(entity["identifier"])
        event.blueprint = str(entity["blueprint"])
        event.operation = OPERATIONS[change.operation]
        event.status = pb.STATUS_SUCCESS
        if change.previous_path:
            event.context["previous_path"] = change.previous_path
        if change.before is not None:
            event.before.MergeFromString(encode_struct(change.before))
        if change.after is not None:
            event.after.MergeFromString(encode_struct(change.after))
        return fit_event(event)

    def _failure_event(
        self, commit: Commit, path: str, error: str, new: bool, base: str
    ) -> pb.AuditEvent:
        event = self._base_event(commit, "file:" + _key_part(path), path, base)
        event.resource = pb.RESOURCE_TYPE_INTEGRATION
        event.identifier = path
        event.integration = self.repo.shown
        event.operation = pb.OPERATION_CREATE if new else pb.OPERATION_UPDATE
        event.status = pb.STATUS_FAILURE
        event.error = f"{path}: {error}"
        return fit_event(event)
