"""``audit-collector git`` webhooks end to end: deliveries shaped and signed exactly as GitHub,
GitLab and Bitbucket Cloud send them (the HMAC over the raw bytes of the body), posted over
real HTTP to a real collector process, recorded by a real audit-service whose recorder token
is limited to the three exporter origins, and read back with List and GetDiff."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients import pb
from collectors import git as git_collector
from tests.collector_helpers import CollectorProcess, run_collector, wait_until
from tests.git_helpers import (
    BITBUCKET_ACTOR,
    OCTO_ORG,
    Bitbucket,
    GitHub,
    GitLab,
    GitRig,
    bitbucket_pull_request,
    bitbucket_push_change,
    bitbucket_repository,
    github_pull_request,
    github_pull_request_event,
    github_push,
    github_repository,
    github_repository_event,
    github_user,
    gitlab_merge_request,
    gitlab_push,
    gitlab_system_project,
    hub_signature,
    patch_paths,
    patched,
    snapshot,
    wire,
)

ORIGINS = ("GITHUB_EXPORTER", "GITLAB_EXPORTER", "BITBUCKET_EXPORTER")
GITHUB_SECRET = "gh-" + secrets.token_hex(16)
GITLAB_TOKEN = "gl-" + secrets.token_hex(16)
BITBUCKET_SECRET = "bb-" + secrets.token_hex(16)
ZERO = "0" * 40
SHA_A = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
SHA_B = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"


class Webhooks:
    "A rig with the three secrets configured, and a sender for each provider."

    def __init__(self, rig: GitRig) -> None:
        self.rig = rig
        (rig.tmp / "github.secret").write_text(f"# rotated 2026-01\n{GITHUB_SECRET}\n")
        (rig.tmp / "gitlab.token").write_text(GITLAB_TOKEN + "\n")
        (rig.tmp / "bitbucket.secret").write_text(BITBUCKET_SECRET + "\n")
        self.github = GitHub(GITHUB_SECRET)
        self.gitlab = GitLab(GITLAB_TOKEN)
        self.bitbucket = Bitbucket(BITBUCKET_SECRET)

    def secret_flags(self) -> tuple[str, ...]:
        tmp = self.rig.tmp
        return (
            "--github-secret-file",
            str(tmp / "github.secret"),
            "--gitlab-token-file",
            str(tmp / "gitlab.token"),
            "--bitbucket-secret-file",
            str(tmp / "bitbucket.secret"),
        )

    def start(self, *extra: str) -> CollectorProcess:
        return self.rig.start_collector(*self.secret_flags(), *extra)


@pytest.fixture
def hooks(tmp_path: Path) -> Iterator[Webhooks]:
    rig = GitRig(tmp_path, ORIGINS)
    rig.start_service()
    try:
        yield Webhooks(rig)
    finally:
        rig.close()


def by_identity(events: list[pb.AuditEvent]) -> list[tuple[str, str, str, str]]:
    return [
        (e.blueprint, e.identifier, pb.Operation.Name(e.operation)[10:], e.context["action"])
        for e in events
    ]


def ok(answer: Any, events: int = 1) -> None:
    assert answer.status == 200, answer
    assert answer.json() == {"events": events, "duplicate": False}, answer.json()


def ignored(answer: Any) -> str:
    assert answer.status == 200, answer
    body = answer.json()
    assert body["events"] == 0
    reason: str = body["ignored"]
    return reason


# -- GitHub ------------------------------------------------------------------------------------


def test_github_deliveries_become_entity_events(hooks: Webhooks) -> None:
    collector = hooks.start("--blueprint", "githubBranch=branch")
    gh = hooks.github
    created = github_repository(description="Payments")
    edited = github_repository(description="Payments API — café edition", default_branch="main")
    renamed = github_repository(name="payments-core")
    archived = github_repository(name="payments-core", archived=True)
    deliveries = [
        ("repository", github_repository_event("created", created)),
        (
            "repository",
            github_repository_event(
                "edited",
                edited,
                changes={"description": {"from": "Payments"}, "default_branch": {"from": "master"}},
            ),
        ),
        (
            "repository",
            github_repository_event(
                "renamed", renamed, changes={"repository": {"name": {"from": "payments-api"}}}
            ),
        ),
        ("repository", github_repository_event("archived", archived)),
        ("pull_request", github_pull_request_event("opened", github_pull_request(42))),
        (
            "pull_request",
            github_pull_request_event(
                "edited",
                github_pull_request(42, title="Retry card captures with backoff"),
                changes={"title": {"from": "Retry card captures"}},
            ),
        ),
        (
            "pull_request",
            github_pull_request_event(
                "closed", github_pull_request(42, state="closed", merged=True), sender="octocat"
            ),
        ),
        (
            "pull_request",
            github_pull_request_event("closed", github_pull_request(43, state="closed")),
        ),
        ("pull_request", github_pull_request_event("reopened", github_pull_request(43))),
        ("push", github_push("retry-captures", ZERO, SHA_A, created=True)),
        ("push", github_push("main", SHA_A, SHA_B)),
        ("push", github_push("retry-captures", SHA_A, ZERO, deleted=True)),
        ("repository", github_repository_event("deleted", archived, sender="dependabot[bot]")),
    ]
    deliveries[-1][1]["sender"] = github_user("dependabot[bot]", bot=True)
    for name, payload in deliveries:
        ok(gh.delivery(name, payload).send(collector))
    # Acknowledged and counted, not recorded:
    reasons = [
        ignored(
            gh.delivery("ping", {"zen": "Keep it logically awesome.", "hook_id": 1}).send(collector)
        ),
        ignored(gh.delivery("issues", {"action": "opened", "issue": {}}).send(collector)),
        ignored(
            gh.delivery(
                "pull_request", github_pull_request_event("labeled", github_pull_request(42))
            ).send(collector)
        ),
        ignored(
            gh.delivery("push", {**github_push("main", SHA_A, SHA_B), "ref": "refs/tags/v1"}).send(
                collector
            )
        ),
    ]
    assert reasons[0] == "ping"
    assert "issues" in reasons[1]
    events = hooks.rig.events(13)
    assert by_identity(events) == [
        ("githubRepository", "octo-org/payments-api", "CREATE", "created"),
        ("githubRepository", "octo-org/payments-api", "UPDATE", "edited"),
        ("githubRepository", "octo-org/payments-core", "UPDATE", "renamed"),
        ("githubRepository", "octo-org/payments-core", "UPDATE", "archived"),
        ("githubPullRequest", "octo-org/payments-api#42", "CREATE", "opened"),
        ("githubPullRequest", "octo-org/payments-api#42", "UPDATE", "edited"),
        ("githubPullRequest", "octo-org/payments-api#42", "UPDATE", "merged"),
        ("githubPullRequest", "octo-org/payments-api#43", "UPDATE", "closed"),
        ("githubPullRequest", "octo-org/payments-api#43", "UPDATE", "reopened"),
        ("branch", "octo-org/payments-api:retry-captures", "CREATE", "created"),
        ("branch", "octo-org/payments-api:main", "UPDATE", "pushed"),
        ("branch", "octo-org/payments-api:retry-captures", "DELETE", "deleted"),
        ("githubRepository", "octo-org/payments-core", "DELETE", "deleted"),
    ]
    for event in events:
        assert event.origin == pb.ORIGIN_GITHUB_EXPORTER
        assert event.status == pb.STATUS_SUCCESS
        assert event.resource == pb.RESOURCE_TYPE_ENTITY
        assert event.recorded_by == hooks.rig.recorder.principal_id
        assert event.context["provider"] == "github"
        assert event.idempotency_key.startswith("github:")
        assert event.idempotency_key.endswith(":0")
    (create, edit, rename, archive, opened, pr_edit, merged, closed, reopened) = events[:9]
    branch_created, pushed, branch_deleted, deleted = events[9:]
    assert create.source == pb.Source(kind=pb.SOURCE_KIND_USER, id="octocat", name="octocat")
    assert not create.HasField("before")
    assert snapshot(create.after)["description"] == "Payments"
    assert snapshot(create.after)["owner"] == "octo-org"

    diff = hooks.rig.diff(edit.id)
    assert patch_paths(diff) == {("replace", "/description"), ("replace", "/default_branch")}
    assert snapshot(diff.before)["default_branch"] == "master"
    assert snapshot(diff.after)["description"] == "Payments API — café edition"
    assert patched(diff) == snapshot(diff.after)

    assert rename.context["previous_identifier"] == "octo-org/payments-api"
    diff = hooks.rig.diff(rename.id)
    assert ("replace", "/name") in patch_paths(diff)
    assert snapshot(diff.before)["full_name"] == "octo-org/payments-api"
    assert patch_paths(hooks.rig.diff(archive.id)) == {("replace", "/archived")}

    assert not opened.HasField("before")
    assert snapshot(opened.after)["labels"] == ["bug"]
    assert snapshot(opened.after)["requested_reviewers"] == ["hubot"]
    assert opened.source.id == "mona"
    assert opened.context["pull_request"] == "42"
    assert patch_paths(hooks.rig.diff(pr_edit.id)) == {("replace", "/title")}
    diff = hooks.rig.diff(merged.id)
    assert merged.source.id == "octocat"
    assert snapshot(diff.before)["state"] == "open"
    assert snapshot(diff.after)["state"] == "closed"
    assert snapshot(diff.after)["merged_by"] == "octocat"
    assert patched(diff) == snapshot(diff.after)
    assert snapshot(hooks.rig.diff(closed.id).after)["merged"] is False
    assert snapshot(hooks.rig.diff(reopened.id).before)["state"] == "closed"

    assert not branch_created.HasField("before")
    assert snapshot(branch_created.after)["sha"] == SHA_A
    diff = hooks.rig.diff(pushed.id)
    assert snapshot(diff.before)["sha"] == SHA_A
    assert snapshot(diff.after)["sha"] == SHA_B
    assert snapshot(diff.after)["head_commit"]["author"] == "mona@example.com"
    assert pushed.context["ref"] == "refs/heads/main"
    assert pushed.context["forced"] == "false"
    assert not branch_deleted.HasField("after")
    assert snapshot(branch_deleted.before)["sha"] == SHA_A

    assert deleted.source.kind == pb.SOURCE_KIND_INTEGRATION
    assert deleted.source.id == "dependabot[bot]"
    assert snapshot(hooks.rig.diff(deleted.id).after) == {}
    stats = wait_until(lambda: (s := collector.stats())["spooled"] == 0 and s)
    own = stats["git"]
    assert own["github_deliveries"] == 13
    assert own["github_events"] == 13
    assert own["github_ignored"] == 4
    assert set(own) <= {*git_collector.COUNTERS}


def test_the_other_repository_actions(hooks: Webhooks) -> None:
    collector = hooks.start()
    moved = github_repository("ledger", full_name="octo-finance/ledger")
    moved["owner"] = {**moved["owner"], "login": "octo-finance"}
    github_deliveries = [
        github_repository_event("unarchived", github_repository("ledger")),
        github_repository_event(
            "transferred",
            moved,
            changes={"owner": {"from": {"organization": {**OCTO_ORG}}}},
        ),
        github_repository_event(
            "privatized", github_repository("ledger", private=True, visibility="private")
        ),
        github_repository_event(
            "publicized", github_repository("ledger", private=False, visibility="public")
        ),
    ]
    for payload in github_deliveries:
        ok(hooks.github.delivery("repository", payload).send(collector))
    created = {"actor": BITBUCKET_ACTOR, "repository": bitbucket_repository("fresh")}
    ok(hooks.bitbucket.delivery("repo:created", created).send(collector))
    events = hooks.rig.events(5)
    assert by_identity(events) == [
        ("githubRepository", "octo-org/ledger", "UPDATE", "unarchived"),
        ("githubRepository", "octo-finance/ledger", "UPDATE", "transferred"),
        ("githubRepository", "octo-org/ledger", "UPDATE", "privatized"),
        ("githubRepository", "octo-org/ledger", "UPDATE", "publicized"),
        ("bitbucketRepository", "acme-team/fresh", "CREATE", "created"),
    ]
    unarchived, transferred, privatized, publicized, fresh = events
    assert patch_paths(hooks.rig.diff(unarchived.id)) == {("replace", "/archived")}
    assert snapshot(unarchived.before)["archived"] is True
    assert transferred.context["previous_identifier"] == "octo-org/ledger"
    assert patch_paths(hooks.rig.diff(transferred.id)) == {
        ("replace", "/owner"),
        ("replace", "/full_name"),
    }
    assert patch_paths(hooks.rig.diff(privatized.id)) == {
        ("replace", "/private"),
        ("replace", "/visibility"),
    }
    assert snapshot(publicized.before)["visibility"] == "private"
    assert snapshot(publicized.after)["visibility"] == "public"
    assert fresh.origin == pb.ORIGIN_BITBUCKET_EXPORTER
    assert snapshot(fresh.after)["project"] == "INV"


def test_github_form_encoded_deliveries_are_read_too(hooks: Webhooks) -> None:
    from urllib.parse import urlencode

    collector = hooks.start()
    payload = github_repository_event("created", github_repository("ledger"))
    body = urlencode({"payload": wire(payload).decode()}).encode()
    delivery = hooks.github.delivery("repository", payload)
    delivery.body = body
    delivery.headers["Content-Type"] = "application/x-www-form-urlencoded"
    delivery.headers["X-Hub-Signature-256"] = hub_signature(GITHUB_SECRET, body)
    ok(delivery.send(collector))
    [event] = hooks.rig.events(1)
    assert event.identifier == "octo-org/ledger"


# -- GitLab -------------------------------------------------------------------------------------


def test_gitlab_deliveries_become_entity_events(hooks: Webhooks) -> None:
    collector = hooks.start()
    gl = hooks.gitlab
    mr_update = gitlab_merge_request(
        "update",
        title="Use the tax service",
        changes={
            "title": {"previous": "Draft: tax service", "current": "Use the tax service"},
            "labels": {
                "previous": [],
                "current": [{"id": 206, "title": "backend", "color": "#ff0000"}],
            },
            "updated_at": {
                "previous": "2026-01-10 09:00:00 UTC",
                "current": "2026-01-10 09:30:00 UTC",
            },
        },
    )
    deliveries = [
        ("Merge Request Hook", gitlab_merge_request("open", title="Draft: tax service")),
        ("Merge Request Hook", mr_update),
        ("Merge Request Hook", gitlab_merge_request("close", state="closed")),
        ("Merge Request Hook", gitlab_merge_request("reopen", state="opened")),
        ("Merge Request Hook", gitlab_merge_request("merge", state="merged")),
        ("Push Hook", gitlab_push("tax-service", ZERO, SHA_A)),
        ("Push Hook", gitlab_push("main", SHA_A, SHA_B)),
        ("Push Hook", gitlab_push("tax-service", SHA_A, ZERO)),
        ("System Hook", gitlab_system_project("project_create", "shop/stock")),
        (
            "System Hook",
            gitlab_system_project(
                "project_rename", "shop/inventory", old_path_with_namespace="shop/stock"
            ),
        ),
        (
            "System Hook",
            gitlab_system_project(
                "project_transfer", "platform/inventory", old_path_with_namespace="shop/inventory"
            ),
        ),
        (
            "System Hook",
            gitlab_system_project(
                "project_update", "platform/inventory", project_visibility="internal"
            ),
        ),
        ("System Hook", gitlab_system_project("project_destroy", "platform/inventory")),
    ]
    for name, payload in deliveries:
        ok(gl.delivery(name, payload).send(collector))
    ignored(gl.delivery("Merge Request Hook", gitlab_merge_request("approved")).send(collector))
    tag = {**gitlab_push("main", ZERO, SHA_A), "object_kind": "tag_push", "ref": "refs/tags/v1.0"}
    ignored(gl.delivery("Tag Push Hook", tag).send(collector))
    ignored(gl.delivery("Pipeline Hook", {"object_kind": "pipeline"}).send(collector))
    events = hooks.rig.events(13)
    assert by_identity(events) == [
        ("gitlabMergeRequest", "shop/checkout!7", "CREATE", "opened"),
        ("gitlabMergeRequest", "shop/checkout!7", "UPDATE", "edited"),
        ("gitlabMergeRequest", "shop/checkout!7", "UPDATE", "closed"),
        ("gitlabMergeRequest", "shop/checkout!7", "UPDATE", "reopened"),
        ("gitlabMergeRequest", "shop/checkout!7", "UPDATE", "merged"),
        ("gitlabBranch", "shop/checkout:tax-service", "CREATE", "created"),
        ("gitlabBranch", "shop/checkout:main", "UPDATE", "pushed"),
        ("gitlabBranch", "shop/checkout:tax-service", "DELETE", "deleted"),
        ("gitlabProject", "shop/stock", "CREATE", "created"),
        ("gitlabProject", "shop/inventory", "UPDATE", "renamed"),
        ("gitlabProject", "platform/inventory", "UPDATE", "transferred"),
        ("gitlabProject", "platform/inventory", "UPDATE", "edited"),
        ("gitlabProject", "platform/inventory", "DELETE", "deleted"),
    ]
    assert {e.origin for e in events} == {pb.ORIGIN_GITLAB_EXPORTER}
    opened, updated, closed, reopened, merged = events[:5]
    assert opened.source == pb.Source(kind=pb.SOURCE_KIND_USER, id="jdoe", name="Jane Doe")
    assert opened.context["merge_request"] == "7"
    diff = hooks.rig.diff(updated.id)
    assert patch_paths(diff) == {("replace", "/title"), ("add", "/labels/0")}
    assert snapshot(diff.before)["title"] == "Draft: tax service"
    assert patched(diff) == snapshot(diff.after)
    assert snapshot(hooks.rig.diff(closed.id).before)["state"] == "opened"
    assert snapshot(hooks.rig.diff(reopened.id).before)["state"] == "closed"
    diff = hooks.rig.diff(merged.id)
    assert (snapshot(diff.before)["state"], snapshot(diff.after)["state"]) == ("opened", "merged")
    pushed = events[6]
    assert pushed.context["before_sha"] == SHA_A
    assert snapshot(pushed.after)["head_commit"]["author"] == "jane@example.com"
    renamed, transferred = events[9], events[10]
    assert renamed.source == pb.Source(
        kind=pb.SOURCE_KIND_SYSTEM, id="gitlab", name="GitLab system hook"
    )
    assert renamed.context["previous_identifier"] == "shop/stock"
    diff = hooks.rig.diff(renamed.id)
    assert patch_paths(diff) == {("replace", "/path"), ("replace", "/path_with_namespace")}
    assert transferred.context["previous_identifier"] == "shop/inventory"
    assert events[12].HasField("before")
    assert not events[12].HasField("after")
    own = wait_until(lambda: (s := collector.stats())["spooled"] == 0 and s)["git"]
    assert own["gitlab_ignored"] == 3
    assert own["gitlab_deliveries"] == 13


# -- Bitbucket --------------------------------------------------------------------------------


def test_bitbucket_deliveries_become_entity_events(hooks: Webhooks) -> None:
    collector = hooks.start()
    bb = hooks.bitbucket
    repo = bitbucket_repository("stock")
    actor = {"actor": BITBUCKET_ACTOR}
    deliveries: list[tuple[str, dict[str, Any]]] = [
        (
            "repo:updated",
            {
                **actor,
                "repository": repo,
                "changes": {
                    "name": {"new": "stock", "old": "inventory"},
                    "full_name": {"new": "acme-team/stock", "old": "acme-team/inventory"},
                    "links": {"new": {}, "old": {}},
                },
            },
        ),
        (
            "repo:updated",
            {
                **actor,
                "repository": {**repo, "description": "Stock levels"},
                "changes": {"description": {"new": "Stock levels", "old": ""}},
            },
        ),
        (
            "repo:transfer",
            {
                **actor,
                "repository": bitbucket_repository("stock", full_name="acme-ops/stock"),
                "previous_owner": {
                    "display_name": "Acme Team",
                    "type": "team",
                    "username": "acme-team",
                },
            },
        ),
        (
            "pullrequest:created",
            {**actor, "repository": repo, "pullrequest": bitbucket_pull_request()},
        ),
        (
            "pullrequest:updated",
            {**actor, "repository": repo, "pullrequest": bitbucket_pull_request()},
        ),
        (
            "pullrequest:fulfilled",
            {**actor, "repository": repo, "pullrequest": bitbucket_pull_request("MERGED")},
        ),
        (
            "pullrequest:rejected",
            {**actor, "repository": repo, "pullrequest": bitbucket_pull_request("DECLINED", 4)},
        ),
        (
            "repo:push",
            {
                **actor,
                "repository": repo,
                "push": {
                    "changes": [
                        bitbucket_push_change("per-warehouse", None, SHA_A),
                        bitbucket_push_change("main", SHA_A, SHA_B),
                        bitbucket_push_change("v2.0", None, SHA_B, kind="tag"),
                        bitbucket_push_change("old-idea", SHA_B, None),
                    ]
                },
            },
        ),
        ("repo:deleted", {**actor, "repository": repo}),
    ]
    answers = [bb.delivery(name, payload).send(collector) for name, payload in deliveries]
    for answer, count in zip(answers, [1, 1, 1, 1, 1, 1, 1, 3, 1], strict=True):
        ok(answer, count)
    ignored(bb.delivery("repo:fork", {**actor, "repository": repo, "fork": repo}).send(collector))
    tags_only = {"changes": [bitbucket_push_change("v3", None, SHA_A, kind="tag")]}
    ignored(
        bb.delivery("repo:push", {**actor, "repository": repo, "push": tags_only}).send(collector)
    )
    events = hooks.rig.events(11)
    assert by_identity(events) == [
        ("bitbucketRepository", "acme-team/stock", "UPDATE", "renamed"),
        ("bitbucketRepository", "acme-team/stock", "UPDATE", "edited"),
        ("bitbucketRepository", "acme-ops/stock", "UPDATE", "transferred"),
        ("bitbucketPullRequest", "acme-team/stock#3", "CREATE", "opened"),
        ("bitbucketPullRequest", "acme-team/stock#3", "UPDATE", "edited"),
        ("bitbucketPullRequest", "acme-team/stock#3", "UPDATE", "merged"),
        ("bitbucketPullRequest", "acme-team/stock#4", "UPDATE", "closed"),
        ("bitbucketBranch", "acme-team/stock:per-warehouse", "CREATE", "created"),
        ("bitbucketBranch", "acme-team/stock:main", "UPDATE", "pushed"),
        ("bitbucketBranch", "acme-team/stock:old-idea", "DELETE", "deleted"),
        ("bitbucketRepository", "acme-team/stock", "DELETE", "deleted"),
    ]
    assert {e.origin for e in events} == {pb.ORIGIN_BITBUCKET_EXPORTER}
    renamed, edited, transferred = events[:3]
    assert renamed.source == pb.Source(kind=pb.SOURCE_KIND_USER, id="srivera", name="Sam Rivera")
    assert renamed.context["previous_identifier"] == "acme-team/inventory"
    diff = hooks.rig.diff(renamed.id)
    assert patch_paths(diff) == {("replace", "/name"), ("replace", "/full_name")}
    assert snapshot(hooks.rig.diff(edited.id).before)["description"] == ""
    assert transferred.context["previous_identifier"] == "acme-team/stock"
    diff = hooks.rig.diff(events[5].id)
    assert snapshot(diff.before)["state"] == "OPEN"
    assert snapshot(diff.after)["merge_commit"] == "764413d85e29"
    assert snapshot(events[6].after)["reason"] == "Superseded by #4"
    push_keys = [e.idempotency_key for e in events[7:10]]
    delivery = push_keys[0].split(":")[1]
    assert push_keys == [f"bitbucket:{delivery}:{n}" for n in range(3)]
    assert events[8].context["before_sha"] == SHA_A
    assert snapshot(events[8].after)["head_commit"]["author"] == "Sam Rivera <sam@example.com>"
    own = wait_until(lambda: (s := collector.stats())["spooled"] == 0 and s)["git"]
    assert own["bitbucket_events"] == 11
    assert own["bitbucket_ignored"] == 2


# -- what is refused, and stores nothing -----------------------------------------------------


def test_bad_or_missing_signatures_get_401_and_store_nothing(hooks: Webhooks) -> None:
    collector = hooks.start()
    payload = github_repository_event("created", github_repository("refused"))
    good = hooks.github.delivery("repository", payload)
    forged: list[tuple[str, dict[str, str], bytes]] = []
    for name in ("X-Hub-Signature-256",):
        headers = {k: v for k, v in good.headers.items() if k != name}
        forged.append(("no signature", headers, good.body))
    forged += [
        (
            "wrong secret",
            {**good.headers, "X-Hub-Signature-256": hub_signature("guess", good.body)},
            good.body,
        ),
        ("body changed after signing", good.headers, good.body.replace(b"refused", b"accepted")),
        (
            "sha1 only",
            {**good.headers, "X-Hub-Signature-256": good.headers["X-Hub-Signature"]},
            good.body,
        ),
        (
            "no prefix",
            {**good.headers, "X-Hub-Signature-256": hub_signature(GITHUB_SECRET, good.body)[7:]},
            good.body,
        ),
    ]
    for why, headers, body in forged:
        answer = collector.request("POST", "/webhooks/github", body, headers)
        assert answer.status == 401, why
        assert answer.json() == {"error": "not authenticated"}
    gl = hooks.gitlab.delivery("Push Hook", gitlab_push("main", SHA_A, SHA_B))
    for token in (None, "", "wrong", GITLAB_TOKEN + "x", GITLAB_TOKEN.upper()):
        headers = {k: v for k, v in gl.headers.items() if k != "X-Gitlab-Token"}
        if token is not None:
            headers["X-Gitlab-Token"] = token
        assert collector.request("POST", "/webhooks/gitlab", gl.body, headers).status == 401
    bb = hooks.bitbucket.delivery(
        "repo:deleted", {"actor": BITBUCKET_ACTOR, "repository": bitbucket_repository()}
    )
    wrong = {**bb.headers, "X-Hub-Signature": hub_signature(GITHUB_SECRET, bb.body)}
    assert collector.request("POST", "/webhooks/bitbucket", bb.body, wrong).status == 401
    unsigned = {k: v for k, v in bb.headers.items() if k != "X-Hub-Signature"}
    assert collector.request("POST", "/webhooks/bitbucket", bb.body, unsigned).status == 401
    stats = collector.stats()
    assert stats["received"] == 0
    assert stats["spooled"] == 0
    assert "request refused: not authenticated" in collector.logs()
    for secret in (GITHUB_SECRET, GITLAB_TOKEN, BITBUCKET_SECRET):
        assert secret not in collector.logs()
    # The real ones still get through, signed with either secret of a rotated file.
    ok(good.send(collector))
    ok(gl.send(collector))
    ok(bb.send(collector))
    (hooks.rig.tmp / "github.secret").write_text(f"{GITHUB_SECRET}\nnext-{GITHUB_SECRET}\n")
    rotated = GitHub("next-" + GITHUB_SECRET).delivery(
        "repository", github_repository_event("created", github_repository("rotated"))
    )
    ok(rotated.send(collector))
    assert len(hooks.rig.events(4)) == 4


def test_malformed_deliveries_get_400_or_413_and_store_nothing(hooks: Webhooks) -> None:
    collector = hooks.start("--max-body-bytes", "20000")
    gh = hooks.github

    def signed(body: bytes, event: str = "repository", **headers: str) -> Any:
        delivery = gh.delivery(event, {})
        delivery.body = body
        delivery.headers["X-Hub-Signature-256"] = hub_signature(GITHUB_SECRET, body)
        delivery.headers.update(headers)
        return delivery.send(collector)

    cases: dict[bytes, tuple[int, str]] = {
        b"{not json": (400, "not JSON"),
        b"[" * 15000: (400, "nests too deep"),
        b'{"n": NaN}': (400, "NaN is not a JSON value"),
        b"\xff\xfe\x00": (400, "not JSON"),
        b"[1, 2]": (400, "expected a JSON object, got JSON list"),
        b'"text"': (400, "got JSON str"),
        wire({"action": "created", "sender": github_user("x")}): (400, "repository is missing"),
        wire({"action": "created", "repository": [], "sender": github_user("x")}): (
            400,
            "repository is not an object",
        ),
        wire({"action": "created", "repository": github_repository()}): (400, "sender is missing"),
        wire({"action": 7, "repository": github_repository()}): (400, "action is not"),
        b"{" + b'"pad":"' + b"x" * 30000 + b'"}': (413, "the limit is 20000"),
    }
    for body, (status, message) in cases.items():
        answer = signed(body)
        assert answer.status == status, (body[:50], answer)
        assert message in answer.json()["error"], answer.json()
    no_event = signed(wire(github_repository_event("created", github_repository())))
    assert no_event.status == 200  # with the header; now without:
    delivery = gh.delivery("repository", github_repository_event("created", github_repository("x")))
    del delivery.headers["X-GitHub-Event"]
    answer = delivery.send(collector)
    assert answer.status == 400
    assert "no X-GitHub-Event header" in answer.json()["error"]
    bad_form = signed(b"payload=%ZZ", **{"Content-Type": "application/x-www-form-urlencoded"})
    assert bad_form.status == 400
    gl = hooks.gitlab.delivery(
        "Merge Request Hook", {"object_kind": "merge_request", "project": {}}
    )
    answer = gl.send(collector)
    assert answer.status == 400
    assert "object_attributes is missing" in answer.json()["error"]
    bb = hooks.bitbucket.delivery(
        "repo:push",
        {"actor": BITBUCKET_ACTOR, "repository": bitbucket_repository(), "push": {"changes": {}}},
    )
    assert bb.send(collector).status == 400
    stats = collector.stats()
    assert stats["received"] == 1  # only the one good delivery
    assert stats["git"]["github_bad_requests"] == 12
    assert collector.request("GET", "/healthz").status == 200
    [event] = hooks.rig.events(1)
    assert event.identifier == "octo-org/payments-api"


# -- redelivery --------------------------------------------------------------------------------


def test_a_replayed_delivery_is_acknowledged_and_stored_once(hooks: Webhooks) -> None:
    collector = hooks.start()
    gh_delivery = hooks.github.delivery(
        "pull_request", github_pull_request_event("opened", github_pull_request(77))
    )
    gl_key = str(uuid.uuid4())
    bb_uuid = str(uuid.uuid4())
    bb_payload = {
        "actor": BITBUCKET_ACTOR,
        "repository": bitbucket_repository(),
        "push": {"changes": [bitbucket_push_change("main", SHA_A, SHA_B)]},
    }
    for attempt in range(2):
        answers = [
            gh_delivery.send(collector),
            # GitLab retries keep the Idempotency-Key; the event UUID header may differ.
            hooks.gitlab.delivery("Push Hook", gitlab_push("main", SHA_A, SHA_B), gl_key).send(
                collector
            ),
            hooks.bitbucket.delivery("repo:push", bb_payload, bb_uuid).send(collector),
        ]
        for answer in answers:
            assert answer.status == 200
            assert answer.json() == {"events": 1, "duplicate": attempt == 1}
    events = hooks.rig.events(3)
    wait_until(lambda: collector.stats()["spooled"] == 0)
    # The ids are remembered in the spool: a restarted collector still knows them.
    assert collector.stop() == 0
    restarted = hooks.start()
    assert gh_delivery.send(restarted).json() == {"events": 1, "duplicate": True}
    stats = restarted.stats()
    assert stats["received"] == 0
    assert stats["git"]["github_duplicate_deliveries"] == 1
    # A new delivery of the same change (GitHub's "redeliver" keeps the id; a new id is a
    # new event) is a new event: delivery ids, not payloads, say what was seen.
    assert len(hooks.rig.stored()) == len(events) == 3
    assert {e.context["delivery_id"] for e in events} == {
        gh_delivery.headers["X-GitHub-Delivery"],
        gl_key,
        bb_uuid,
    }


def test_a_delivery_sent_twice_at_once_is_stored_once(hooks: Webhooks) -> None:
    import concurrent.futures

    collector = hooks.start()
    delivery = hooks.github.delivery(
        "repository", github_repository_event("created", github_repository("racing"))
    )
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _n: delivery.send(collector), range(8)))
    assert [a.status for a in answers] == [200] * 8
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 7
    hooks.rig.events(1)
    wait_until(lambda: collector.stats()["spooled"] == 0)
    assert len(hooks.rig.stored()) == 1


# -- start-up rules ------------------------------------------------------------------------


def test_without_secrets_it_listens_on_loopback_only(hooks: Webhooks) -> None:
    refused = run_collector(
        "git", "--listen", "0.0.0.0:0", "--spool", str(hooks.rig.spool), "--service", "127.0.0.1:1"
    )
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0:0" in refused.stderr
    assert "/webhooks/github" in refused.stderr
    collector = hooks.rig.start_collector()
    assert "no sender authentication configured: listening on loopback only" in collector.logs()
    payload = github_repository_event("created", github_repository("open"))
    delivery = hooks.github.delivery("repository", payload)
    del delivery.headers["X-Hub-Signature-256"]
    ok(delivery.send(collector))
    hooks.rig.events(1)


def test_a_provider_without_a_secret_is_off_when_another_has_one(hooks: Webhooks) -> None:
    collector = hooks.rig.start_collector(
        "--github-secret-file", str(hooks.rig.tmp / "github.secret")
    )
    assert "listening on loopback only" not in collector.logs()
    answer = hooks.gitlab.delivery("Push Hook", gitlab_push("main", SHA_A, SHA_B)).send(collector)
    assert answer.status == 404
    assert "--gitlab-token-file" in answer.json()["error"]
    assert collector.stats()["received"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--blueprint", "githubRepo=service"], "no event has the blueprint githubRepo"),
        (["--github-secret-file", "/nonexistent/secret"], "cannot read /nonexistent/secret"),
        (["--no-webhooks"], "nothing to collect: --no-webhooks without --repo"),
        (["--repo", "/nonexistent/repo"], "/nonexistent/repo is not a directory"),
        (["--repo=--upload-pack=touch /tmp/x"], "is not a repository URL or path"),
        (["--repo", ".", "--interval", "0"], "interval must be above 0"),
        (["--repo", ".", "--gitops-origin", "GITLAB_GITOPS"], "invalid choice"),
    ],
)
def test_start_up_errors_say_what_to_change(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_collector("git", "--spool", f"{tmp_path}/s.db", *args)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
