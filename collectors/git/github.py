"""GitHub webhook deliveries (``X-GitHub-Event``) -> changes.

- ``repository``: created (CREATE), deleted (DELETE), edited, renamed, transferred, archived,
  unarchived, publicized, privatized (UPDATE); blueprint ``githubRepository``, identifier
  the repository's ``full_name``. ``changes`` carries the old values of what was edited.
- ``pull_request``: opened (CREATE), edited, closed (``merged`` when ``pull_request.merged``),
  reopened (UPDATE); blueprint ``githubPullRequest``, identifier ``<full_name>#<number>``.
- ``push`` to a branch: created (CREATE), deleted (DELETE), else pushed (UPDATE);
  blueprint ``githubBranch``, identifier ``<full_name>:<branch>``.
- ``ping`` and everything else: acknowledged, not recorded.
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
    branch_of,
    dig,
    names,
    need_object,
    need_text,
    parse_time,
    present,
    text,
)

REPOSITORY = "githubRepository"
PULL_REQUEST = "githubPullRequest"
BRANCH = "githubBranch"
BLUEPRINTS = (REPOSITORY, PULL_REQUEST, BRANCH)

REPOSITORY_ACTIONS: dict[str, Operation] = {
    "created": "CREATE",
    "deleted": "DELETE",
    "edited": "UPDATE",
    "renamed": "UPDATE",
    "transferred": "UPDATE",
    "archived": "UPDATE",
    "unarchived": "UPDATE",
    "publicized": "UPDATE",
    "privatized": "UPDATE",
}
PULL_REQUEST_ACTIONS = ("opened", "edited", "closed", "reopened")


def actor(payload: dict[str, Any]) -> Actor:
    sender = need_object(payload, "sender", "the delivery")
    login = need_text(sender, "login", "sender")
    if sender.get("type") == "Bot":
        return Actor("INTEGRATION", login, login)
    return Actor("USER", login, login)


def repository_snapshot(repo: dict[str, Any]) -> dict[str, Any]:
    return present(
        name=repo.get("name"),
        full_name=repo.get("full_name"),
        owner=dig(repo, "owner", "login"),
        private=repo.get("private"),
        visibility=repo.get("visibility"),
        description=repo.get("description"),
        homepage=repo.get("homepage"),
        default_branch=repo.get("default_branch"),
        topics=repo.get("topics"),
        language=repo.get("language"),
        archived=repo.get("archived"),
        fork=repo.get("fork"),
        html_url=repo.get("html_url"),
    )


def _repository(payload: dict[str, Any]) -> Mapped:
    action = need_text(payload, "action", "a repository event")
    operation = REPOSITORY_ACTIONS.get(action)
    if operation is None:
        return Mapped.ignore(f"repository action {action} is not recorded")
    repo = need_object(payload, "repository", "a repository event")
    full_name = need_text(repo, "full_name", "repository")
    snapshot = repository_snapshot(repo)
    context = {"repo": full_name}
    before: dict[str, Any] | None = copy.deepcopy(snapshot)
    assert before is not None
    changes = payload.get("changes") if isinstance(payload.get("changes"), dict) else {}
    assert isinstance(changes, dict)
    if action == "edited":
        for key, change in changes.items():
            if isinstance(change, dict) and "from" in change:
                before[key] = change["from"]
    elif action == "renamed":
        old_name = dig(changes, "repository", "name", "from")
        if not isinstance(old_name, str):
            raise PayloadError(
                "a repository renamed event: changes.repository.name.from is missing"
            )
        owner = full_name.rsplit("/", 1)[0]
        before["name"] = old_name
        before["full_name"] = f"{owner}/{old_name}"
        context["previous_identifier"] = before["full_name"]
    elif action == "transferred":
        old_owner = dig(changes, "owner", "from", "organization", "login") or dig(
            changes, "owner", "from", "user", "login"
        )
        if isinstance(old_owner, str):
            before["owner"] = old_owner
            before["full_name"] = f"{old_owner}/{repo.get('name')}"
            context["previous_identifier"] = before["full_name"]
    elif action in ("archived", "unarchived"):
        before["archived"] = action == "unarchived"
    elif action in ("publicized", "privatized"):
        before["private"] = action == "publicized"
        before["visibility"] = "private" if action == "publicized" else "public"
    when = parse_time(repo.get("created_at") if action == "created" else repo.get("updated_at"))
    change = Change(
        REPOSITORY,
        full_name,
        operation,
        action,
        None if operation == "DELETE" else snapshot,
        None if operation == "CREATE" else before,
        None if operation == "DELETE" else when,
        context,
    )
    return Mapped(actor(payload), [change])


def pull_request_snapshot(pr: dict[str, Any]) -> dict[str, Any]:
    return present(
        number=pr.get("number"),
        title=pr.get("title"),
        body=pr.get("body"),
        state=pr.get("state"),
        draft=pr.get("draft"),
        merged=pr.get("merged"),
        author=dig(pr, "user", "login"),
        base=dig(pr, "base", "ref"),
        head=dig(pr, "head", "ref"),
        labels=names(pr.get("labels"), "name"),
        assignees=names(pr.get("assignees"), "login"),
        requested_reviewers=names(pr.get("requested_reviewers"), "login", "slug"),
        merged_by=dig(pr, "merged_by", "login"),
        merge_commit_sha=pr.get("merge_commit_sha") if pr.get("merged") else None,
        html_url=pr.get("html_url"),
    )


def _pull_request(payload: dict[str, Any]) -> Mapped:
    action = need_text(payload, "action", "a pull_request event")
    if action not in PULL_REQUEST_ACTIONS:
        return Mapped.ignore(f"pull_request action {action} is not recorded")
    pr = need_object(payload, "pull_request", "a pull_request event")
    repo = need_object(payload, "repository", "a pull_request event")
    full_name = need_text(repo, "full_name", "repository")
    number = need_text(pr, "number", "pull_request", number=True)
    after = pull_request_snapshot(pr)
    before: dict[str, Any] | None = copy.deepcopy(after)
    assert before is not None
    if action == "opened":
        before = None
    elif action == "edited":
        changes = payload.get("changes") if isinstance(payload.get("changes"), dict) else {}
        assert isinstance(changes, dict)
        for key in ("title", "body"):
            if isinstance(changes.get(key), dict) and "from" in changes[key]:
                before[key] = changes[key]["from"]
        old_base = dig(changes, "base", "ref", "from")
        if isinstance(old_base, str):
            before["base"] = old_base
    elif action == "closed":
        before["state"] = "open"
        for key in ("merged_by", "merge_commit_sha"):
            before.pop(key, None)
        if "merged" in before:
            before["merged"] = False
    elif action == "reopened":
        before["state"] = "closed"
    if action == "closed" and pr.get("merged"):
        action = "merged"
    context = {"repo": full_name, "pull_request": number}
    change = Change(
        PULL_REQUEST,
        f"{full_name}#{number}",
        "CREATE" if action == "opened" else "UPDATE",
        action,
        after,
        before,
        parse_time(pr.get("updated_at")),
        context,
    )
    return Mapped(actor(payload), [change])


def _push(payload: dict[str, Any]) -> Mapped:
    ref = need_text(payload, "ref", "a push event")
    branch = branch_of(ref)
    if branch is None:
        return Mapped.ignore(f"a push to {ref} (not a branch) is not recorded")
    repo = need_object(payload, "repository", "a push event")
    full_name = need_text(repo, "full_name", "repository")
    old_sha = text(payload.get("before"))
    new_sha = text(payload.get("after"))
    operation: Operation
    if payload.get("created"):
        operation, action = "CREATE", "created"
    elif payload.get("deleted"):
        operation, action = "DELETE", "deleted"
    else:
        operation, action = "UPDATE", "pushed"
    head = payload.get("head_commit") if isinstance(payload.get("head_commit"), dict) else None
    commits = payload.get("commits")
    after = present(
        repository=full_name,
        branch=branch,
        sha=new_sha,
        head_commit=present(
            sha=head.get("id"),
            message=head.get("message"),
            author=dig(head, "author", "email") or dig(head, "author", "name"),
            timestamp=head.get("timestamp"),
        )
        if head
        else None,
        commits=len(commits) if isinstance(commits, list) else None,
    )
    before = {"repository": full_name, "branch": branch, "sha": old_sha}
    context = {
        "repo": full_name,
        "ref": ref,
        "before_sha": old_sha,
        "after_sha": new_sha,
        "forced": text(bool(payload.get("forced"))),
    }
    if isinstance(payload.get("compare"), str):
        context["compare"] = payload["compare"]
    change = Change(
        BRANCH,
        f"{full_name}:{branch}",
        operation,
        action,
        None if operation == "DELETE" else after,
        None if operation == "CREATE" else before,
        parse_time(repo.get("pushed_at")),
        context,
    )
    return Mapped(actor(payload), [change])


def map_delivery(event: str, payload: dict[str, Any]) -> Mapped:
    """One delivery of ``X-GitHub-Event: event``. :raises PayloadError:"""
    if event == "ping":
        return Mapped.ignore("ping")
    if event == "repository":
        return _repository(payload)
    if event == "pull_request":
        return _pull_request(payload)
    if event == "push":
        return _push(payload)
    return Mapped.ignore(f"event {event} is not recorded")
