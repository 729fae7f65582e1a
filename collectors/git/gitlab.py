"""GitLab webhook deliveries (``X-Gitlab-Event``) -> changes, by the payload's
``object_kind`` (project and group hooks, and system hooks for pushes and merge requests) or
``event_name`` (system hooks for projects).

- ``merge_request``: open (CREATE), update, close, reopen, merge (UPDATE); blueprint
  ``gitlabMergeRequest``, identifier ``<path_with_namespace>!<iid>``. ``changes`` carries
  the previous values of what changed.
- ``push`` to a branch: created (``before`` all zeros: CREATE), deleted (``after`` all
  zeros: DELETE), else pushed (UPDATE); blueprint ``gitlabBranch``, identifier
  ``<path_with_namespace>:<branch>``.
- System hooks ``project_create`` (CREATE), ``project_destroy`` (DELETE), ``project_rename``,
  ``project_transfer``, ``project_update`` (UPDATE); blueprint ``gitlabProject``, identifier
  the ``path_with_namespace``. They name no actor: the source is SYSTEM ``gitlab``.
- Everything else (tag pushes, issues, notes, pipelines, ...): acknowledged, not recorded.
"""

from __future__ import annotations

import copy
from typing import Any

from collectors.git.changes import (
    ZERO_SHA,
    Actor,
    Change,
    Mapped,
    Operation,
    branch_of,
    dig,
    names,
    need_object,
    need_text,
    parse_time,
    present,
    text,
)

PROJECT = "gitlabProject"
MERGE_REQUEST = "gitlabMergeRequest"
BRANCH = "gitlabBranch"
BLUEPRINTS = (PROJECT, MERGE_REQUEST, BRANCH)

MERGE_REQUEST_ACTIONS: dict[str, tuple[Operation, str]] = {
    "open": ("CREATE", "opened"),
    "update": ("UPDATE", "edited"),
    "close": ("UPDATE", "closed"),
    "reopen": ("UPDATE", "reopened"),
    "merge": ("UPDATE", "merged"),
}
PROJECT_EVENTS: dict[str, tuple[Operation, str]] = {
    "project_create": ("CREATE", "created"),
    "project_destroy": ("DELETE", "deleted"),
    "project_rename": ("UPDATE", "renamed"),
    "project_transfer": ("UPDATE", "transferred"),
    "project_update": ("UPDATE", "edited"),
}
STATE_IDS = {1: "opened", 2: "closed", 3: "merged", 4: "locked"}
SYSTEM_ACTOR = Actor("SYSTEM", "gitlab", "GitLab system hook")
# Merge request fields whose previous values ``changes`` carries, as snapshot keys.
MR_CHANGED_FIELDS = {
    "title": "title",
    "description": "description",
    "target_branch": "target_branch",
    "source_branch": "source_branch",
    "draft": "draft",
}


def _user(user: Any) -> Actor | None:
    if not isinstance(user, dict):
        return None
    username = user.get("username")
    if not isinstance(username, str) or not username:
        return None
    return Actor("USER", username, text(user.get("name")) or username)


def merge_request_snapshot(attrs: dict[str, Any], payload: dict[str, Any]) -> dict[str, Any]:
    return present(
        iid=attrs.get("iid"),
        title=attrs.get("title"),
        description=attrs.get("description"),
        state=attrs.get("state"),
        draft=attrs.get("draft"),
        source_branch=attrs.get("source_branch"),
        target_branch=attrs.get("target_branch"),
        labels=names(payload.get("labels") or attrs.get("labels"), "title"),
        assignees=names(payload.get("assignees"), "username"),
        reviewers=names(payload.get("reviewers"), "username"),
        merge_commit_sha=attrs.get("merge_commit_sha"),
        url=attrs.get("url"),
    )


def _merge_request(payload: dict[str, Any]) -> Mapped:
    attrs = need_object(payload, "object_attributes", "a merge_request event")
    project = need_object(payload, "project", "a merge_request event")
    path = need_text(project, "path_with_namespace", "project")
    iid = need_text(attrs, "iid", "object_attributes", number=True)
    action_name = text(attrs.get("action"))
    found = MERGE_REQUEST_ACTIONS.get(action_name)
    if found is None:
        return Mapped.ignore(f"merge_request action {action_name or '(none)'} is not recorded")
    operation, action = found
    after = merge_request_snapshot(attrs, payload)
    before: dict[str, Any] | None = None
    if operation == "UPDATE":
        before = copy.deepcopy(after)
        changes = payload.get("changes") if isinstance(payload.get("changes"), dict) else {}
        assert isinstance(changes, dict)
        for key, field in MR_CHANGED_FIELDS.items():
            change = changes.get(key)
            if isinstance(change, dict) and "previous" in change:
                before[field] = change["previous"]
        labels = dig(changes, "labels", "previous")
        if isinstance(labels, list):
            before["labels"] = names(labels, "title")
        assignees = dig(changes, "assignees", "previous")
        if isinstance(assignees, list):
            before["assignees"] = names(assignees, "username")
        state = dig(changes, "state_id", "previous")
        if isinstance(state, int) and state in STATE_IDS:
            before["state"] = STATE_IDS[state]
        elif action in ("closed", "merged"):
            before["state"] = "opened"
        elif action == "reopened":
            before["state"] = "closed"
        if action == "merged":
            before.pop("merge_commit_sha", None)
    change = Change(
        MERGE_REQUEST,
        f"{path}!{iid}",
        operation,
        action,
        after,
        before,
        parse_time(attrs.get("updated_at")),
        {"repo": path, "merge_request": iid},
    )
    return Mapped(_user(payload.get("user")) or SYSTEM_ACTOR, [change])


def _push(payload: dict[str, Any]) -> Mapped:
    ref = need_text(payload, "ref", "a push event")
    branch = branch_of(ref)
    if branch is None:
        return Mapped.ignore(f"a push to {ref} (not a branch) is not recorded")
    project = need_object(payload, "project", "a push event")
    path = need_text(project, "path_with_namespace", "project")
    old_sha, new_sha = text(payload.get("before")), text(payload.get("after"))
    operation: Operation
    if old_sha == ZERO_SHA:
        operation, action = "CREATE", "created"
    elif new_sha == ZERO_SHA:
        operation, action = "DELETE", "deleted"
    else:
        operation, action = "UPDATE", "pushed"
    commits = payload.get("commits") if isinstance(payload.get("commits"), list) else []
    assert isinstance(commits, list)
    head = next(
        (c for c in commits if isinstance(c, dict) and c.get("id") == new_sha),
        None,
    )
    after = present(
        repository=path,
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
        commits=payload.get("total_commits_count"),
    )
    before = {"repository": path, "branch": branch, "sha": old_sha}
    username = text(payload.get("user_username"))
    actor = (
        Actor("USER", username, text(payload.get("user_name")) or username)
        if username
        else SYSTEM_ACTOR
    )
    change = Change(
        BRANCH,
        f"{path}:{branch}",
        operation,
        action,
        None if operation == "DELETE" else after,
        None if operation == "CREATE" else before,
        parse_time(head.get("timestamp")) if head else None,
        {"repo": path, "ref": ref, "before_sha": old_sha, "after_sha": new_sha},
    )
    return Mapped(actor, [change])


def project_snapshot(payload: dict[str, Any], path: str) -> dict[str, Any]:
    return present(
        project_id=payload.get("project_id"),
        name=payload.get("name"),
        path=path.rsplit("/", 1)[-1],
        path_with_namespace=path,
        visibility=payload.get("project_visibility"),
        owner_name=payload.get("owner_name"),
        owner_email=payload.get("owner_email"),
    )


def _project(event_name: str, payload: dict[str, Any]) -> Mapped:
    operation, action = PROJECT_EVENTS[event_name]
    path = need_text(payload, "path_with_namespace", f"a {event_name} event")
    snapshot = project_snapshot(payload, path)
    context = {"repo": path}
    before: dict[str, Any] | None = None
    if operation == "DELETE":
        before = snapshot
    elif operation == "UPDATE":
        before = copy.deepcopy(snapshot)
        old_path = payload.get("old_path_with_namespace")
        if isinstance(old_path, str) and old_path:
            before["path_with_namespace"] = old_path
            before["path"] = old_path.rsplit("/", 1)[-1]
            context["previous_identifier"] = old_path
    change = Change(
        PROJECT,
        path,
        operation,
        action,
        None if operation == "DELETE" else snapshot,
        before,
        parse_time(payload.get("updated_at")) if operation != "DELETE" else None,
        context,
    )
    return Mapped(SYSTEM_ACTOR, [change])


def map_delivery(event: str, payload: dict[str, Any]) -> Mapped:
    """One delivery of ``X-Gitlab-Event: event``. :raises PayloadError:"""
    kind = text(payload.get("object_kind"))
    if kind == "merge_request":
        return _merge_request(payload)
    if kind == "push":
        return _push(payload)
    event_name = text(payload.get("event_name"))
    if not kind and event_name in PROJECT_EVENTS:
        return _project(event_name, payload)
    return Mapped.ignore(f"{event} ({kind or event_name or 'no object_kind'}) is not recorded")
