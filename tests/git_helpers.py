"""Helpers for the git collector's tests: webhook deliveries as GitHub, GitLab and Bitbucket
send them (payload shapes, headers, the raw-body HMAC signatures), real git repositories made
in the test, and ``git daemon`` on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from clients import pb
from tests.collector_helpers import (
    CollectorProcess,
    HttpAnswer,
    free_port,
    origin_events,
    spawn_collector,
)
from tests.collector_helpers import wait_for_origin_events as wait_for_events
from tests.helpers import TestServer, Token, start_server, write_tokens_file

# -- webhook deliveries -----------------------------------------------------------------------


def wire(payload: Any) -> bytes:
    "A payload as the providers put it on the wire: compact JSON, UTF-8 (not \\u-escaped)."
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def hub_signature(secret: str, body: bytes) -> str:
    "``sha256=`` and the hex HMAC-SHA256 of the raw body (GitHub and Bitbucket)."
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def stamp(minutes_ago: float = 0.0) -> str:
    "A time as GitHub writes it: RFC 3339, UTC, seconds, Z."
    moment = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Delivery:
    "One webhook delivery: its path, headers and raw body."

    path: str
    headers: dict[str, str]
    body: bytes

    def send(self, collector: CollectorProcess) -> HttpAnswer:
        return collector.request("POST", self.path, self.body, self.headers)


@dataclass
class GitHub:
    "Deliveries signed as GitHub signs them (``X-Hub-Signature-256``, and SHA-1 beside it)."

    secret: str
    hook_id: str = "471736511"

    def delivery(self, event: str, payload: dict[str, Any], delivery_id: str = "") -> Delivery:
        body = wire(payload)
        headers = {
            "Accept": "*/*",
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/0b0f4e2",
            "X-GitHub-Delivery": delivery_id or str(uuid.uuid4()),
            "X-GitHub-Event": event,
            "X-GitHub-Hook-ID": self.hook_id,
            "X-GitHub-Hook-Installation-Target-ID": "79929171",
            "X-GitHub-Hook-Installation-Target-Type": "repository",
            "X-Hub-Signature": "sha1="
            + hmac.new(self.secret.encode(), body, hashlib.sha1).hexdigest(),
            "X-Hub-Signature-256": hub_signature(self.secret, body),
        }
        return Delivery("/webhooks/github", headers, body)


@dataclass
class GitLab:
    "Deliveries as GitLab sends them: the secret token in ``X-Gitlab-Token``, unsigned."

    token: str

    def delivery(self, event: str, payload: dict[str, Any], idempotency_key: str = "") -> Delivery:
        key = idempotency_key or str(uuid.uuid4())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitLab/17.6.1",
            "Idempotency-Key": key,
            "X-Gitlab-Event": event,
            "X-Gitlab-Event-UUID": str(uuid.uuid4()),  # differs per attempt
            "X-Gitlab-Instance": "https://gitlab.example.com",
            "X-Gitlab-Webhook-UUID": "2a4e8fd1-6f6d-4d5e-9d58-7d2b4e0d3a11",
            "X-Gitlab-Token": self.token,
        }
        return Delivery("/webhooks/gitlab", headers, wire(payload))


@dataclass
class Bitbucket:
    "Deliveries signed as Bitbucket Cloud signs them (``X-Hub-Signature: sha256=...``)."

    secret: str

    def delivery(self, event: str, payload: dict[str, Any], request_uuid: str = "") -> Delivery:
        body = wire(payload)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Bitbucket-Webhooks/2.0",
            "X-Attempt-Number": "1",
            "X-Event-Key": event,
            "X-Event-Time": datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"),
            "X-Hook-UUID": "{c9a0e9d3-5b8b-4f07-9f43-3e8c1f0d1b55}",
            "X-Request-UUID": request_uuid or str(uuid.uuid4()),
            "X-Hub-Signature": hub_signature(self.secret, body),
        }
        return Delivery("/webhooks/bitbucket", headers, body)


# -- GitHub payloads (shapes as in GitHub's webhook docs, trimmed of links) ------------------

OCTO_ORG = {
    "login": "octo-org",
    "id": 6811672,
    "node_id": "MDEyOk9yZ2FuaXphdGlvbjY4MTE2NzI=",
    "type": "Organization",
    "site_admin": False,
}


def github_user(login: str, bot: bool = False) -> dict[str, Any]:
    return {
        "login": login,
        "id": int(hashlib.sha256(login.encode()).hexdigest()[:7], 16),
        "node_id": "MDQ6VXNlcj" + hashlib.sha256(login.encode()).hexdigest()[:6],
        "avatar_url": f"https://avatars.githubusercontent.com/u/{len(login)}?v=4",
        "html_url": f"https://github.com/{login}",
        "type": "Bot" if bot else "User",
        "site_admin": False,
    }


def github_repository(name: str = "payments-api", **changes: Any) -> dict[str, Any]:
    full_name = f"octo-org/{name}"
    repo: dict[str, Any] = {
        "id": 780231905,
        "node_id": "R_kgDOLoGk4Q",
        "name": name,
        "full_name": full_name,
        "private": True,
        "owner": OCTO_ORG,
        "html_url": f"https://github.com/{full_name}",
        "description": "Payments API — café edition",
        "fork": False,
        "url": f"https://api.github.com/repos/{full_name}",
        "created_at": stamp(60),
        "updated_at": stamp(1),
        "pushed_at": int(time.time()) - 30,
        "git_url": f"git://github.com/{full_name}.git",
        "clone_url": f"https://github.com/{full_name}.git",
        "homepage": None,
        "size": 412,
        "stargazers_count": 3,
        "language": "Python",
        "has_issues": True,
        "archived": False,
        "disabled": False,
        "open_issues_count": 2,
        "topics": ["payments"],
        "visibility": "private",
        "forks": 0,
        "default_branch": "main",
        "custom_properties": {},
    }
    repo.update(changes)
    return repo


def github_repository_event(
    action: str, repo: dict[str, Any], sender: str = "octocat", **extra: Any
) -> dict[str, Any]:
    payload: dict[str, Any] = {"action": action}
    payload.update(extra)
    payload.update(repository=repo, organization=OCTO_ORG, sender=github_user(sender))
    return payload


def github_pull_request(
    number: int = 42,
    *,
    state: str = "open",
    merged: bool = False,
    title: str = "Retry card captures",
    body: str = "Adds a retry with backoff.",
    base: str = "main",
    repo: dict[str, Any] | None = None,
) -> dict[str, Any]:
    repo = repo or github_repository()
    pr: dict[str, Any] = {
        "url": f"{repo['url']}/pulls/{number}",
        "id": 1824719032,
        "node_id": "PR_kwDOLoGk4c5sw7S4",
        "html_url": f"{repo['html_url']}/pull/{number}",
        "number": number,
        "state": state,
        "locked": False,
        "title": title,
        "user": github_user("mona"),
        "body": body,
        "created_at": stamp(30),
        "updated_at": stamp(0.5),
        "closed_at": stamp(0.5) if state == "closed" else None,
        "merged_at": stamp(0.5) if merged else None,
        "merge_commit_sha": "9049f1265b7d61be4a8904a9a27120d2064dab3b" if merged else None,
        "assignees": [github_user("mona")],
        "requested_reviewers": [github_user("hubot")],
        "labels": [{"id": 208045946, "name": "bug", "color": "f29513", "default": True}],
        "draft": False,
        "head": {"label": "octo-org:retry", "ref": "retry-captures", "sha": "6dcb09b5b5"},
        "base": {"label": f"octo-org:{base}", "ref": base, "sha": "7638417db6"},
        "author_association": "MEMBER",
        "merged": merged,
        "mergeable": None,
        "merged_by": github_user("octocat") if merged else None,
        "comments": 1,
        "commits": 3,
        "additions": 42,
        "deletions": 7,
        "changed_files": 4,
    }
    return pr


def github_pull_request_event(
    action: str, pr: dict[str, Any], sender: str = "mona", **extra: Any
) -> dict[str, Any]:
    payload: dict[str, Any] = {"action": action, "number": pr["number"], "pull_request": pr}
    payload.update(extra)
    payload.update(
        repository=github_repository(), organization=OCTO_ORG, sender=github_user(sender)
    )
    return payload


def github_push(
    branch: str, before: str, after: str, *, created: bool = False, deleted: bool = False
) -> dict[str, Any]:
    repo = github_repository()
    head = (
        None
        if deleted
        else {
            "id": after,
            "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433",
            "distinct": True,
            "message": "Retry card captures\n\nWith backoff.",
            "timestamp": "2026-01-10T12:00:00+01:00",
            "url": f"{repo['html_url']}/commit/{after}",
            "author": {"name": "Mona Lisa", "email": "mona@example.com", "username": "mona"},
            "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
            "added": [],
            "removed": [],
            "modified": ["payments/retry.py"],
        }
    )
    return {
        "ref": f"refs/heads/{branch}",
        "before": before,
        "after": after,
        "repository": repo,
        "pusher": {"name": "mona", "email": "mona@example.com"},
        "organization": OCTO_ORG,
        "sender": github_user("mona"),
        "created": created,
        "deleted": deleted,
        "forced": False,
        "base_ref": None,
        "compare": f"{repo['html_url']}/compare/{before[:12]}...{after[:12]}",
        "commits": [] if head is None else [head],
        "head_commit": head,
    }


# -- GitLab payloads ---------------------------------------------------------------------------

GITLAB_PROJECT = {
    "id": 15,
    "name": "Checkout",
    "description": "The checkout service",
    "web_url": "https://gitlab.example.com/shop/checkout",
    "avatar_url": None,
    "git_ssh_url": "git@gitlab.example.com:shop/checkout.git",
    "git_http_url": "https://gitlab.example.com/shop/checkout.git",
    "namespace": "Shop",
    "visibility_level": 0,
    "path_with_namespace": "shop/checkout",
    "default_branch": "main",
    "ci_config_path": "",
    "homepage": "https://gitlab.example.com/shop/checkout",
    "url": "git@gitlab.example.com:shop/checkout.git",
    "ssh_url": "git@gitlab.example.com:shop/checkout.git",
    "http_url": "https://gitlab.example.com/shop/checkout.git",
}
GITLAB_USER = {
    "id": 1,
    "name": "Jane Doe",
    "username": "jdoe",
    "avatar_url": "https://gitlab.example.com/uploads/-/system/user/avatar/1/index.jpg",
    "email": "[REDACTED]",
}


def gitlab_merge_request(
    action: str,
    *,
    iid: int = 7,
    state: str = "opened",
    title: str = "Use the new tax service",
    changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "object_kind": "merge_request",
        "event_type": "merge_request",
        "user": GITLAB_USER,
        "project": GITLAB_PROJECT,
        "object_attributes": {
            "assignee_id": None,
            "author_id": 1,
            "created_at": "2026-01-10 09:00:00 UTC",
            "description": "Calls tax-service instead of the old library.",
            "draft": False,
            "head_pipeline_id": None,
            "id": 99,
            "iid": iid,
            "last_edited_at": None,
            "merge_commit_sha": "da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
            if state == "merged"
            else None,
            "merge_status": "can_be_merged",
            "source_branch": "tax-service",
            "source_project_id": 15,
            "state_id": {"opened": 1, "closed": 2, "merged": 3}[state],
            "target_branch": "main",
            "target_project_id": 15,
            "title": title,
            "updated_at": stamp(0.5).replace("T", " ").replace("Z", " UTC"),
            "url": f"https://gitlab.example.com/shop/checkout/-/merge_requests/{iid}",
            "work_in_progress": False,
            "state": state,
            "action": action,
        },
        "labels": [{"id": 206, "title": "backend", "color": "#ff0000", "type": "ProjectLabel"}],
        "changes": changes or {},
        "repository": {
            "name": "Checkout",
            "url": "git@gitlab.example.com:shop/checkout.git",
            "description": "The checkout service",
            "homepage": "https://gitlab.example.com/shop/checkout",
        },
        "assignees": [GITLAB_USER],
        "reviewers": [],
    }


def gitlab_push(branch: str, before: str, after: str) -> dict[str, Any]:
    commits = (
        []
        if after == "0" * 40
        else [
            {
                "id": after,
                "message": "Use the tax service\n",
                "title": "Use the tax service",
                "timestamp": stamp(0.2).replace("Z", "+00:00"),
                "url": f"https://gitlab.example.com/shop/checkout/-/commit/{after}",
                "author": {"name": "Jane Doe", "email": "jane@example.com"},
                "added": [],
                "modified": ["app/tax.rb"],
                "removed": [],
            }
        ]
    )
    return {
        "object_kind": "push",
        "event_name": "push",
        "before": before,
        "after": after,
        "ref": f"refs/heads/{branch}",
        "ref_protected": branch == "main",
        "checkout_sha": None if after == "0" * 40 else after,
        "message": None,
        "user_id": 1,
        "user_name": "Jane Doe",
        "user_username": "jdoe",
        "user_email": "",
        "user_avatar": GITLAB_USER["avatar_url"],
        "project_id": 15,
        "project": GITLAB_PROJECT,
        "commits": commits,
        "total_commits_count": len(commits),
        "push_options": {},
        "repository": {
            "name": "Checkout",
            "url": "git@gitlab.example.com:shop/checkout.git",
            "description": "The checkout service",
            "homepage": "https://gitlab.example.com/shop/checkout",
            "git_http_url": GITLAB_PROJECT["git_http_url"],
            "git_ssh_url": GITLAB_PROJECT["git_ssh_url"],
            "visibility_level": 0,
        },
    }


def gitlab_system_project(event_name: str, path: str, **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "created_at": "2026-01-10T08:00:00Z",
        "updated_at": stamp(0.3),
        "event_name": event_name,
        "name": path.rsplit("/", 1)[-1].title(),
        "owner_email": "jane@example.com",
        "owner_name": "Jane Doe",
        "owners": [{"name": "Jane Doe", "email": "jane@example.com"}],
        "path": path.rsplit("/", 1)[-1],
        "path_with_namespace": path,
        "project_id": 74,
        "project_namespace_id": 23,
        "project_visibility": "private",
    }
    payload.update(extra)
    return payload


# -- Bitbucket Cloud payloads -----------------------------------------------------------------

BITBUCKET_ACTOR = {
    "display_name": "Sam Rivera",
    "links": {"avatar": {"href": "https://avatar-management.example/sam.png"}},
    "type": "user",
    "uuid": "{5f4b0d1e-8a2c-4c5e-9b1a-2d3c4e5f6a7b}",
    "account_id": "557058:3f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8",
    "nickname": "srivera",
}


def bitbucket_repository(name: str = "inventory", **changes: Any) -> dict[str, Any]:
    full_name = f"acme-team/{name}"
    repo: dict[str, Any] = {
        "type": "repository",
        "full_name": full_name,
        "links": {"html": {"href": f"https://bitbucket.org/{full_name}"}},
        "name": name,
        "scm": "git",
        "website": None,
        "owner": {
            "display_name": "Acme Team",
            "type": "team",
            "uuid": "{0a1b2c3d-0000-4000-8000-000000000001}",
            "username": "acme-team",
        },
        "workspace": {
            "type": "workspace",
            "uuid": "{0a1b2c3d-0000-4000-8000-000000000001}",
            "name": "Acme Team",
            "slug": "acme-team",
        },
        "is_private": True,
        "project": {"type": "project", "key": "INV", "name": "Inventory"},
        "uuid": "{9d8c7b6a-5f4e-4d3c-8b2a-1a0b9c8d7e6f}",
    }
    repo.update(changes)
    return repo


def bitbucket_pull_request(state: str = "OPEN", pr_id: int = 3) -> dict[str, Any]:
    repo = bitbucket_repository()
    return {
        "type": "pullrequest",
        "id": pr_id,
        "title": "Count stock per warehouse",
        "description": "Splits the stock table per warehouse.",
        "state": state,
        "author": BITBUCKET_ACTOR,
        "source": {
            "branch": {"name": "per-warehouse"},
            "commit": {"hash": "d3adb33fd3ad"},
            "repository": repo,
        },
        "destination": {
            "branch": {"name": "main"},
            "commit": {"hash": "ce5965ddd289"},
            "repository": repo,
        },
        "merge_commit": {"hash": "764413d85e29"} if state == "MERGED" else None,
        "participants": [],
        "reviewers": [{**BITBUCKET_ACTOR, "display_name": "Ola Nordmann", "nickname": "ola"}],
        "close_source_branch": True,
        "closed_by": BITBUCKET_ACTOR if state in ("MERGED", "DECLINED") else None,
        "reason": "Superseded by #4" if state == "DECLINED" else "",
        "created_on": stamp(20).replace("Z", ".123456+00:00"),
        "updated_on": stamp(0.4).replace("Z", ".654321+00:00"),
        "links": {
            "html": {"href": f"https://bitbucket.org/acme-team/inventory/pull-requests/{pr_id}"}
        },
    }


def bitbucket_push_change(
    branch: str, old: str | None, new: str | None, *, kind: str = "branch"
) -> dict[str, Any]:
    def side(sha: str) -> dict[str, Any]:
        return {
            "type": kind,
            "name": branch,
            "target": {
                "type": "commit",
                "hash": sha,
                "author": {"raw": "Sam Rivera <sam@example.com>", "type": "author"},
                "message": "Count stock per warehouse\n",
                "date": stamp(0.2).replace("Z", "+00:00"),
                "parents": [],
            },
            "links": {},
        }

    return {
        "new": side(new) if new else None,
        "old": side(old) if old else None,
        "links": {},
        "created": old is None,
        "forced": False,
        "closed": new is None,
        "commits": [],
        "truncated": False,
    }


# -- real git repositories ---------------------------------------------------------------------


def git_env() -> dict[str, str]:
    "An environment where git reads no user or system configuration."
    return {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
    }


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=env or git_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout


@dataclass
class WorkRepo:
    "A working repository made in the test: write files, commit as someone, push."

    path: Path
    commits: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, path: Path, branch: str = "main") -> WorkRepo:
        path.mkdir(parents=True)
        git(path, "init", "--quiet", "--initial-branch", branch)
        return cls(path)

    def write(self, relative: str, content: str | bytes) -> None:
        target = self.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)

    def remove(self, relative: str) -> None:
        git(self.path, "rm", "--quiet", relative)

    def move(self, source: str, target: str) -> None:
        (self.path / target).parent.mkdir(parents=True, exist_ok=True)
        git(self.path, "mv", source, target)

    def commit(
        self, message: str, author: tuple[str, str] = ("Alice Example", "alice@example.com")
    ) -> str:
        name, email = author
        env = {
            **git_env(),
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }
        git(self.path, "add", "--all")
        git(self.path, "commit", "--quiet", "--allow-empty", "-m", message, env=env)
        sha = git(self.path, "rev-parse", "HEAD").strip()
        self.commits.append(sha)
        return sha

    def checkout(self, branch: str, create: bool = False) -> None:
        git(self.path, "checkout", "--quiet", *(["-b"] if create else []), branch)

    def merge(
        self,
        branch: str,
        message: str,
        author: tuple[str, str] = ("Alice Example", "alice@example.com"),
    ) -> str:
        "A merge commit (``--no-ff``) of ``branch`` into the branch checked out."
        name, email = author
        env = {
            **git_env(),
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }
        git(self.path, "merge", "--quiet", "--no-ff", "-m", message, branch, env=env)
        sha = git(self.path, "rev-parse", "HEAD").strip()
        self.commits.append(sha)
        return sha

    def reset_hard(self, sha: str) -> None:
        git(self.path, "reset", "--quiet", "--hard", sha)

    def push(self, remote: Path, branch: str = "main", force: bool = False) -> None:
        args = ["push", "--quiet"]
        if force:
            args.append("--force")
        git(self.path, *args, str(remote), f"HEAD:refs/heads/{branch}")


def bare_repo(path: Path) -> Path:
    git(path.parent, "init", "--quiet", "--bare", str(path))
    return path


@contextmanager
def git_daemon(base: Path) -> Iterator[str]:
    """``git daemon`` serving the repositories under ``base`` on a loopback port; yields
    ``git://127.0.0.1:PORT``."""
    assert shutil.which("git")
    for _attempt in range(5):
        port = free_port()
        process = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--informative-errors",
                f"--base-path={base}",
                "--listen=127.0.0.1",
                f"--port={port}",
                str(base),
            ],
            env=git_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    ready = True
                    break
            except OSError:
                time.sleep(0.05)
        if ready:
            try:
                yield f"git://127.0.0.1:{port}"
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            return
        if process.poll() is None:
            process.kill()
        process.wait()
    raise AssertionError("git daemon did not start")


# -- a service and collectors pointed at it ---------------------------------------------------


@dataclass
class GitRig:
    """A real audit-service with a tokens file (an admin, and a recorder limited to
    ``origins``) and ``audit-collector git`` processes pointed at it."""

    tmp: Path
    origins: tuple[str, ...]
    recorder: Token = field(init=False)
    admin: Token = field(init=False)
    server: TestServer | None = None
    collectors: list[CollectorProcess] = field(default_factory=list)
    port: int = field(default_factory=free_port)  # the service's, also before it starts

    def __post_init__(self) -> None:
        self.recorder = Token(
            "git-collector", "recorder", "rec-" + secrets.token_hex(16), self.origins
        )
        self.admin = Token("admin@example.com", "admin", "adm-" + secrets.token_hex(16))
        self.tokens = write_tokens_file(self.tmp / "tokens.toml", [self.recorder, self.admin])
        self.recorder_token = self.tmp / "recorder.token"
        self.recorder_token.write_text(self.recorder.value + "\n")
        self.spool = self.tmp / "spool" / "git.db"

    def start_service(self) -> TestServer:
        assert self.server is None
        self.server = start_server(
            self.tmp / "audit.db", dev=False, tokens=str(self.tokens), listen=self.endpoint
        )
        return self.server

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start_collector(self, *extra: str, env: dict[str, str] | None = None) -> CollectorProcess:
        args = [
            "--service",
            self.endpoint,
            "--token-file",
            str(self.recorder_token),
            "--spool",
            str(self.spool),
            "--listen",
            "127.0.0.1:0",
            "--max-backoff",
            "0.5",
            "--linger-ms",
            "20",
            *extra,
        ]
        collector = spawn_collector("git", *args, log_path=self.tmp / "collector.log", env=env)
        self.collectors.append(collector)
        return collector

    def events(self, count: int, *origins: str, timeout: float = 20) -> list[pb.AuditEvent]:
        assert self.server is not None
        return wait_for_events(
            self.server.stub, origins or self.origins, count, self.admin.metadata, timeout
        )

    def stored(self, *origins: str) -> list[pb.AuditEvent]:
        assert self.server is not None
        return origin_events(self.server.stub, origins or self.origins, self.admin.metadata)

    def diff(self, event_id: str) -> pb.GetDiffResponse:
        assert self.server is not None
        response: pb.GetDiffResponse = self.server.stub.GetDiff(
            pb.GetDiffRequest(id=event_id), metadata=self.admin.metadata
        )
        return response

    def close(self) -> None:
        for collector in self.collectors:
            if collector.process.poll() is None:
                collector.kill()
        if self.server is not None:
            self.server.close()
            self.server = None


def snapshot(struct: Any) -> dict[str, Any]:
    from clients._values import struct_to_dict

    return struct_to_dict(struct)


def patched(diff: pb.GetDiffResponse) -> dict[str, Any]:
    "``diff.before`` with ``diff.patch`` applied (RFC 6902, by jsonpatch)."
    import jsonpatch

    from clients._values import value_to_python

    operations = []
    for op in diff.patch:
        item: dict[str, Any] = {"op": op.op, "path": op.path}
        if op.HasField("value"):
            item["value"] = value_to_python(op.value)
        if op.op in ("move", "copy"):
            item["from"] = getattr(op, "from")
        operations.append(item)
    result: dict[str, Any] = jsonpatch.apply_patch(snapshot(diff.before), operations)
    return result


def patch_paths(diff: pb.GetDiffResponse) -> set[tuple[str, str]]:
    return {(op.op, op.path) for op in diff.patch}


class GitHttpsServer:
    """Git's smart HTTP protocol over TLS on loopback: ``git http-backend`` (git's own CGI
    program) behind a small threaded HTTPS server that requires HTTP basic auth, as a hosted
    Git service does for a private repository. ``authorizations`` holds every
    ``Authorization`` header received."""

    def __init__(self, root: Path, cert: Path, key: Path, credentials: str) -> None:
        import base64
        import ssl
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.root = root
        self.expected = "Basic " + base64.b64encode(credentials.encode()).decode()
        self.authorizations: list[str] = []
        backend = Path(git(root, "--exec-path").strip()) / "git-http-backend"
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                presented = self.headers.get("Authorization") or ""
                if presented:
                    server_self.authorizations.append(presented)
                if presented != server_self.expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                env = {
                    **git_env(),
                    "GIT_PROJECT_ROOT": str(server_self.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "REQUEST_METHOD": self.command,
                    "CONTENT_TYPE": self.headers.get("Content-Type") or "",
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_ADDR": "127.0.0.1",
                    "REMOTE_USER": "reader",
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding") or "",
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol") or "",
                }
                result = subprocess.run(
                    [str(backend)], input=body, env=env, capture_output=True, check=False
                )
                head, _, payload = result.stdout.partition(b"\r\n\r\n")
                status = 200
                headers: list[tuple[str, str]] = []
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
