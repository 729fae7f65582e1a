"""Bitbucket Cloud webhook deliveries (``X-Event-Key``) -> changes.

- ``repo:created`` (CREATE), ``repo:deleted`` (DELETE), ``repo:updated`` (UPDATE: renamed
  when ``changes.full_name`` is there, else edited; ``changes`` carries the old values),
  ``repo:transfer`` (UPDATE, transferred); blueprint ``bitbucketRepository``, identifier the
  repository's ``full_name``.
- ``pullrequest:created`` (CREATE, opened), ``pullrequest:updated`` (UPDATE, edited),
  ``pullrequest:fulfilled`` (UPDATE, merged), ``pullrequest:rejected`` (UPDATE, closed: declined);
  blueprint ``bitbucketPullRequest``, identifier ``<full_name>#<id>``.
- ``repo:push``: one change per branch in ``push.changes``: created (CREATE), closed
  (DELETE), else pushed (UPDATE); blueprint ``bitbucketBranch``, identifier
  ``<full_name>:<branch>``. Tags are not recorded.
- Everything else: acknowledged, not recorded.
"""

from __future__ import annotations

import copy
from typing import Any

from collectors.git.changes import (
    Actor,
    Change,
    Mapped,
    Operation,
    PayloadError,
    dig,
    names,
    need_object,
    need_text,
    parse_time,
    present,
    text,
)

REPOSITORY = "bitbucketRepository"
PULL_REQUEST = "bitbucketPullRequest"
BRANCH = "bitbucketBranch"
BLUEPRINTS = (REPOSITORY, PULL_REQUEST, BRANCH)

PULL_REQUEST_EVENTS: dict[str, tuple[Operation, str]] = {
    "pullrequest:created": ("CREATE", "opened"),
    "pullrequest:updated": ("UPDATE", "edited"),
    "pullrequest:fulfilled": ("UPDATE", "merged"),
    "pullrequest:rejected": ("UPDATE", "closed"),
}
# repo:updated ``changes`` keys -> snapshot keys
REPOSITORY_CHANGED_FIELDS = {
    "name": "name",
    "full_name": "full_name",
    "description": "description",
    "website": "website",
    "language": "language",
    "is_private": "is_private",
}


def actor(payload: dict[str, Any]) -> Actor:
    account = need_object(payload, "actor", "the delivery")
    name = text(account.get("display_name"))
    handle = text(account.get("nickname")) or text(account.get("uuid")) or name
    if not handle:
        raise PayloadError("actor: neither nickname, uuid nor display_name is there")
    if account.get("type") in ("app_user", "team"):
        return Actor("INTEGRATION", handle, name or handle)
    return Actor("USER", handle, name or handle)


def repository_snapshot(repo: dict[str, Any]) -> dict[str, Any]:
    mainbranch = dig(repo, "mainbranch", "name")
    return present(
        uuid=repo.get("uuid"),
        name=repo.get("name"),
        full_name=repo.get("full_name"),
        workspace=dig(repo, "workspace", "slug"),
        project=dig(repo, "project", "key"),
        is_private=repo.get("is_private"),
        description=repo.get("description"),
        website=repo.get("website"),
        language=repo.get("language"),
        mainbranch=mainbranch,
        html_url=dig(repo, "links", "html", "href"),
    )


def _repository(event: str, payload: dict[str, Any]) -> Mapped:
    repo = need_object(payload, "repository", f"a {event} event")
    full_name = need_text(repo, "full_name", "repository")
    snapshot = repository_snapshot(repo)
    context = {"repo": full_name}
    operation: Operation
    before: dict[str, Any] | None
    if event == "repo:created":
        operation, action, before = "CREATE", "created", None
    elif event == "repo:deleted":
        operation, action, before = "DELETE", "deleted", snapshot
    elif event == "repo:transfer":
        operation, action = "UPDATE", "transferred"
        before = copy.deepcopy(snapshot)
        old_owner = dig(payload, "previous_owner", "username") or dig(
            payload, "previous_owner", "slug"
        )
        if isinstance(old_owner, str) and old_owner:
            before["workspace"] = old_owner
            before["full_name"] = f"{old_owner}/{full_name.split('/', 1)[-1]}"
            context["previous_identifier"] = before["full_name"]
    else:  # repo:updated
        operation = "UPDATE"
        changes = need_object(payload, "changes", "a repo:updated event")
        before = copy.deepcopy(snapshot)
        for key, field in REPOSITORY_CHANGED_FIELDS.items():
            change = changes.get(key)
            if isinstance(change, dict) and "old" in change:
                before[field] = change["old"]
                if "new" in change and change["new"] is not None:
                    snapshot[field] = change["new"]
        if isinstance(dig(changes, "full_name", "new"), str):
            full_name = changes["full_name"]["new"]
        action = "edited"
        if isinstance(dig(changes, "full_name", "old"), str):
            action = "renamed"
            context["previous_identifier"] = changes["full_name"]["old"]
        context["repo"] = full_name
    change = Change(
        REPOSITORY,
        full_name,
        operation,
        action,
        None if operation == "DELETE" else snapshot,
        before,
        parse_time(repo.get("updated_on")) if operation == "UPDATE" else None,
        context,
    )
    return Mapped(actor(payload), [change])


def pull_request_snapshot(pr: dict[str, Any]) -> dict[str, Any]:
    return present(
        id=pr.get("id"),
        title=pr.get("title"),
        description=pr.get("description"),
        state=pr.get("state"),
        author=dig(pr, "author", "display_name"),
        source_branch=dig(pr, "source", "branch", "name"),
        destination_branch=dig(pr, "destination", "branch", "name"),
        reviewers=names(pr.get("reviewers"), "display_name", "nickname"),
        close_source_branch=pr.get("close_source_branch"),
        merge_commit=dig(pr, "merge_commit", "hash"),
        closed_by=dig(pr, "closed_by", "display_name"),
        reason=pr.get("reason") or None,
        html_url=dig(pr, "links", "html", "href"),
    )


def _pull_request(event: str, payload: dict[str, Any]) -> Mapped:
    operation, action = PULL_REQUEST_EVENTS[event]
    pr = need_object(payload, "pullrequest", f"a {event} event")
    repo = need_object(payload, "repository", f"a {event} event")
    full_name = need_text(repo, "full_name", "repository")
    number = need_text(pr, "id", "pullrequest", number=True)
    after = pull_request_snapshot(pr)
    before: dict[str, Any] | None = None
    if action in ("merged", "closed"):
        before = copy.deepcopy(after)
        before["state"] = "OPEN"
        for key in ("merge_commit", "closed_by", "reason"):
            before.pop(key, None)
    change = Change(
        PULL_REQUEST,
        f"{full_name}#{number}",
        operation,
        action,
        after,
        before,
        parse_time(pr.get("updated_on")),
        {"repo": full_name, "pull_request": number},
    )
    return Mapped(actor(payload), [change])


def _branch_snapshot(full_name: str, side: dict[str, Any]) -> dict[str, Any]:
    target = side.get("target") if isinstance(side.get("target"), dict) else {}
    assert isinstance(target, dict)
    return present(
        repository=full_name,
        branch=side.get("name"),
        sha=target.get("hash"),
        head_commit=present(
            sha=target.get("hash"),
            message=target.get("message"),
            author=dig(target, "author", "raw"),
            timestamp=target.get("date"),
        )
        if target
        else None,
    )


def _push(payload: dict[str, Any]) -> Mapped:
    repo = need_object(payload, "repository", "a repo:push event")
    full_name = need_text(repo, "full_name", "repository")
    push = need_object(payload, "push", "a repo:push event")
    items = push.get("changes")
    if not isinstance(items, list):
        raise PayloadError("a repo:push event: push.changes is not a list")
    changes: list[Change] = []
    for item in items:
        if not isinstance(item, dict):
            raise PayloadError("a repo:push event: an item of push.changes is not an object")
        new = item.get("new") if isinstance(item.get("new"), dict) else None
        old = item.get("old") if isinstance(item.get("old"), dict) else None
        side = new or old
        if side is None or side.get("type") not in ("branch", "named_branch"):
            continue  # tags, bookmarks
        branch = text(side.get("name"))
        if not branch:
            raise PayloadError("a repo:push event: a branch without a name")
        operation: Operation
        if old is None:
            operation, action = "CREATE", "created"
        elif new is None:
            operation, action = "DELETE", "deleted"
        else:
            operation, action = "UPDATE", "pushed"
        old_sha = text(dig(old, "target", "hash")) if old else ""
        new_sha = text(dig(new, "target", "hash")) if new else ""
        context = {
            "repo": full_name,
            "ref": f"refs/heads/{branch}",
            "forced": text(bool(item.get("forced"))),
        }
        if old_sha:
            context["before_sha"] = old_sha
        if new_sha:
            context["after_sha"] = new_sha
        changes.append(
            Change(
                BRANCH,
                f"{full_name}:{branch}",
                operation,
                action,
                _branch_snapshot(full_name, new) if new else None,
                _branch_snapshot(full_name, old) if old else None,
                parse_time(dig(new, "target", "date")) if new else None,
                context,
            )
        )
    if not changes:
        return Mapped.ignore("a push of tags only is not recorded")
    return Mapped(actor(payload), changes)


def map_delivery(event: str, payload: dict[str, Any]) -> Mapped:
    """One delivery of ``X-Event-Key: event``. :raises PayloadError:"""
    if event in ("repo:created", "repo:deleted", "repo:updated", "repo:transfer"):
        return _repository(event, payload)
    if event in PULL_REQUEST_EVENTS:
        return _pull_request(event, payload)
    if event == "repo:push":
        return _push(payload)
    return Mapped.ignore(f"event {event} is not recorded")
