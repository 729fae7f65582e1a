"""``audit-collector git --repo``: the GitOps follower end to end, on real git repositories made
in the test (commits by different authors, multi-entity files, renames, moves, deletes, a broken
YAML file, force-pushes), followed by path and over ``git daemon`` on loopback, with the events
read back from a real audit-service (List and GetDiff)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients import pb
from collectors.git.gitops import Repository
from tests.collector_helpers import wait_until
from tests.git_helpers import (
    GitHttpsServer,
    GitRig,
    WorkRepo,
    bare_repo,
    git_daemon,
    patch_paths,
    patched,
    snapshot,
)

ORIGINS = ("GITHUB_GITOPS", "BITBUCKET_GITOPS")
ALICE = ("Alice Example", "alice@example.com")
BOB = ("Bob Builder", "bob@example.com")

SERVICES = """\
# The payments domain's services
- identifier: payments
  blueprint: service
  title: Payments
  properties:
    language: python
    tier: 1
    since: 2024-03-01
  relations:
    team: platform
- identifier: checkout
  blueprint: service
  title: Checkout
  properties:
    language: go
"""


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[GitRig]:
    setup = GitRig(tmp_path, ORIGINS)
    setup.start_service()
    try:
        yield setup
    finally:
        setup.close()


def ops(events: list[pb.AuditEvent]) -> list[tuple[str, str, str]]:
    return [(pb.Operation.Name(e.operation)[10:], e.blueprint, e.identifier) for e in events]


def follow(rig: GitRig, url: str, *extra: str) -> list[str]:
    return ["--no-webhooks", "--repo", url, "--interval", "0.2", *extra]


def test_a_repository_followed_by_path(rig: GitRig) -> None:
    work = WorkRepo.create(rig.tmp / "catalog")
    work.write("README.md", "# catalog\n")
    work.write(".auditlog/services.yaml", SERVICES)
    work.write(
        ".auditlog/teams/platform.json",
        json.dumps({"identifier": "platform", "blueprint": "team", "title": "Platform"}),
    )
    work.write(".auditlog/notes.txt", "not an entity file")
    first = work.commit("Add the catalog", ALICE)
    collector = rig.start_collector(*follow(rig, str(work.path)))
    # The first start takes the tip as its starting point: nothing recorded for it.
    wait_until(lambda: collector.stats()["git"].get("gitops_fetches", 0) >= 2)
    assert "starting from the branch's tip" in collector.logs()
    assert rig.stored() == []

    work.write(
        ".auditlog/services.yaml",
        SERVICES.replace("language: python", "language: rust")
        + "- identifier: search\n  blueprint: service\n  title: Search\n",
    )
    c2 = work.commit("Payments in Rust; add search", BOB)
    work.move(".auditlog/services.yaml", ".auditlog/catalog/services.yml")  # same content
    c3 = work.commit("Move the services file", ALICE)
    moved = (work.path / ".auditlog/catalog/services.yml").read_text()
    payments, rest = moved.split("- identifier: checkout")
    search = rest[rest.index("- identifier: search") :]
    work.write(".auditlog/catalog/services.yml", payments + search)
    work.write(
        ".auditlog/catalog/checkout.yaml",
        "identifier: checkout\nblueprint: service\ntitle: Checkout API\n"
        "properties:\n  language: go\n",
    )
    c4 = work.commit("Checkout in a file of its own, renamed", ALICE)
    work.remove(".auditlog/teams/platform.json")
    c5 = work.commit("Platform team disbanded", BOB)
    events = rig.events(4)
    assert ops(events) == [
        ("UPDATE", "service", "payments"),
        ("CREATE", "service", "search"),
        ("UPDATE", "service", "checkout"),
        ("DELETE", "team", "platform"),
    ]
    update, create, move, delete = events
    assert [e.context["commit"] for e in events] == [c2, c2, c4, c5]
    assert c3 not in {e.context["commit"] for e in events}  # a rename changes no entity
    for event in events:
        assert event.origin == pb.ORIGIN_GITHUB_GITOPS
        assert event.resource == pb.RESOURCE_TYPE_ENTITY
        assert event.status == pb.STATUS_SUCCESS
        assert event.context["repo"] == str(work.path)
        assert event.context["branch"] == "main"
    assert update.source == pb.Source(
        kind=pb.SOURCE_KIND_USER, id="bob@example.com", name="Bob Builder"
    )
    assert update.context["path"] == ".auditlog/services.yaml"
    assert update.context["commit_subject"] == "Payments in Rust; add search"
    repo_id = Repository(str(work.path)).id
    assert update.idempotency_key == f"gitops:{repo_id}:{c2}:service/payments"
    diff = rig.diff(update.id)
    assert patch_paths(diff) == {("replace", "/properties/language")}
    assert snapshot(diff.before)["properties"]["since"] == "2024-03-01"  # YAML dates stay text
    assert snapshot(diff.after)["relations"] == {"team": "platform"}
    assert patched(diff) == snapshot(diff.after)
    assert not create.HasField("before")
    assert snapshot(create.after) == {
        "identifier": "search",
        "blueprint": "service",
        "title": "Search",
    }
    assert move.context["path"] == ".auditlog/catalog/checkout.yaml"
    assert move.context["previous_path"] == ".auditlog/catalog/services.yml"
    assert patch_paths(rig.diff(move.id)) == {("replace", "/title")}
    assert delete.source.id == "bob@example.com"
    assert snapshot(delete.before)["title"] == "Platform"
    assert not delete.HasField("after")
    assert apply_empty(rig, delete)

    # A broken file is a FAILURE naming it; its entities are kept until it parses again.
    work.write(
        ".auditlog/catalog/services.yml", "- identifier: payments\n  properties: [unclosed\n"
    )
    c6 = work.commit("Oops", ALICE)
    work.write(
        ".auditlog/catalog/services.yml",
        "- identifier: search\n  blueprint: service\n  title: Search\n",
    )
    c7 = work.commit("Payments moved out; fix the file", ALICE)
    work.write(
        ".auditlog/more.yaml",
        "identifier: ledger\nblueprint: service\n---\n"
        "- identifier: billing\n  blueprint: team\n  properties: {cost_center: 42}\n",
    )
    c8 = work.commit("Two documents", BOB)
    events = rig.events(8)
    failure, gone, *more = events[4:]
    assert failure.status == pb.STATUS_FAILURE
    assert failure.resource == pb.RESOURCE_TYPE_INTEGRATION
    assert failure.identifier == ".auditlog/catalog/services.yml"
    assert failure.integration == str(work.path)
    assert failure.error.startswith(".auditlog/catalog/services.yml: not valid YAML: ")
    assert "line 3" in failure.error
    assert failure.context["commit"] == c6
    assert ops([gone]) == [("DELETE", "service", "payments")]  # search was kept through c6
    assert gone.context["commit"] == c7
    assert ops(more) == [("CREATE", "service", "ledger"), ("CREATE", "team", "billing")]
    assert snapshot(more[1].after)["properties"] == {"cost_center": 42}
    assert {e.context["commit"] for e in more} == {c8}

    # SIGKILL, a commit while it is down, a restart: it resumes after c8, once.
    wait_until(lambda: collector.stats()["spooled"] == 0)
    collector.kill()
    work.write(
        ".auditlog/catalog/services.yml",
        "- identifier: search\n  blueprint: service\n  title: Search v2\n",
    )
    c9 = work.commit("Search v2", ALICE)
    restarted = rig.start_collector(*follow(rig, str(work.path)))
    events = rig.events(9)
    assert ops(events[8:]) == [("UPDATE", "service", "search")]
    assert events[8].context["commit"] == c9
    wait_until(lambda: restarted.stats()["git"].get("gitops_fetches", 0) >= 3)
    stats = restarted.stats()
    [repo] = stats["git"]["gitops"]["repositories"]
    assert repo["commit"] == c9
    assert repo["last_error"] == ""
    assert stats["git"]["gitops_commits"] == 1
    assert len(rig.stored()) == 9
    assert first not in {e.context["commit"] for e in rig.stored()}

    # A merge is one commit on the followed line, by whoever merged; the side branch's own
    # commits are not recorded on their own.
    work.checkout("feature", create=True)
    work.write(".auditlog/flags.yaml", "identifier: flags\nblueprint: service\n")
    side = work.commit("flags service", BOB)
    work.checkout("main")
    work.write("README.md", "# catalog, v2\n")
    work.commit("readme", ALICE)
    merge = work.merge("feature", "Merge branch 'feature'", ALICE)
    events = rig.events(10)
    assert ops(events[9:]) == [("CREATE", "service", "flags")]
    assert events[9].context["commit"] == merge != side
    assert events[9].source.id == "alice@example.com"


def apply_empty(rig: GitRig, event: pb.AuditEvent) -> bool:
    diff = rig.diff(event.id)
    return patched(diff) == {} and snapshot(diff.after) == {}


def test_force_pushes_over_git_daemon(rig: GitRig) -> None:
    served = rig.tmp / "served"
    served.mkdir()
    remote = bare_repo(served / "catalog.git")
    work = WorkRepo.create(rig.tmp / "work")

    def service(name: str, replicas: int) -> str:
        return f"identifier: {name}\nblueprint: service\nproperties:\n  replicas: {replicas}\n"

    work.write(".auditlog/a.yaml", service("svc-a", 1))
    c1 = work.commit("a", ALICE)
    work.write(".auditlog/b.yaml", service("svc-b", 2))
    c2 = work.commit("b", BOB)
    work.push(remote)
    with git_daemon(served) as base_url:
        listing = rig.tmp / "repositories.toml"
        listing.write_text(
            "[[repository]]\n"
            f'url = "{base_url}/catalog.git"\n'
            'branch = "main"\n'
            "interval = 0.2\n"
            'origin = "BITBUCKET_GITOPS"\n'
            'name = "acme/catalog"\n'
        )
        collector = rig.start_collector(
            "--no-webhooks", "--repositories", str(listing), "--replay-history"
        )
        events = rig.events(2)  # the history, replayed from the root
        assert ops(events) == [("CREATE", "service", "svc-a"), ("CREATE", "service", "svc-b")]
        assert [e.context["commit"] for e in events] == [c1, c2]
        assert {e.origin for e in events} == {pb.ORIGIN_BITBUCKET_GITOPS}
        assert {e.context["repo"] for e in events} == {"acme/catalog"}

        work.write(".auditlog/b.yaml", service("svc-b", 3))
        c3 = work.commit("scale b", ALICE)
        work.write(".auditlog/c.yaml", service("svc-c", 1))
        c4 = work.commit("c", ALICE)
        work.push(remote)
        events = rig.events(4)
        assert ops(events[2:]) == [("UPDATE", "service", "svc-b"), ("CREATE", "service", "svc-c")]
        assert [e.context["commit"] for e in events[2:]] == [c3, c4]

        # History rewritten: c3 and c4 replaced by one commit with b scaled the same way and
        # svc-d instead of svc-c. Against the last processed tree (c4's): svc-c deleted,
        # svc-d created, svc-b unchanged (not recorded again).
        work.reset_hard(c2)
        work.write(".auditlog/b.yaml", service("svc-b", 3))
        work.write(".auditlog/d.yaml", service("svc-d", 1))
        c3_new = work.commit("b scaled, d instead of c", BOB)
        work.push(remote, force=True)
        events = rig.events(6)
        rewritten = events[4:]
        assert sorted(ops(rewritten)) == [
            ("CREATE", "service", "svc-d"),
            ("DELETE", "service", "svc-c"),
        ]
        for event in rewritten:
            assert event.context["commit"] == c3_new
            assert event.context["rewritten_from"] == c4
            assert event.idempotency_key.endswith(f":from:{c4}")

        work.remove(".auditlog/a.yaml")
        c4_new = work.commit("drop a", ALICE)
        work.push(remote)
        events = rig.events(7)
        assert ops(events[6:]) == [("DELETE", "service", "svc-a")]
        assert "rewritten_from" not in events[6].context
        assert events[6].context["commit"] == c4_new

        # Back to c2 (an ancestor: nothing new on the line, the tree went back): recorded
        # against the last processed tree, under keys that differ from c2's first events.
        work.reset_hard(c2)
        work.push(remote, force=True)
        events = rig.events(10)
        back = events[7:]
        assert sorted(ops(back)) == [
            ("CREATE", "service", "svc-a"),
            ("DELETE", "service", "svc-d"),
            ("UPDATE", "service", "svc-b"),
        ]
        assert {e.context["commit"] for e in back} == {c2}
        assert {e.context["rewritten_from"] for e in back} == {c4_new}
        [scaled_back] = [e for e in back if e.identifier == "svc-b"]
        diff = rig.diff(scaled_back.id)
        assert patch_paths(diff) == {("replace", "/properties/replicas")}
        assert (snapshot(diff.before)["properties"], snapshot(diff.after)["properties"]) == (
            {"replicas": 3},
            {"replicas": 2},
        )
        stats = wait_until(lambda: (s := collector.stats())["spooled"] == 0 and s)
        assert stats["git"]["gitops_rewrites"] == 2
        assert len({e.idempotency_key for e in rig.stored()}) == 10
        assert "the branch was rewritten (force-push)" in collector.logs()


def test_hostile_files_are_failures_and_the_follower_carries_on(rig: GitRig) -> None:
    work = WorkRepo.create(rig.tmp / "catalog")
    work.write(".auditlog/ok.yaml", "identifier: keep\nblueprint: service\n")
    work.commit("start", ALICE)
    collector = rig.start_collector(
        *follow(
            rig,
            str(work.path),
            "--max-entity-file-bytes",
            "4000",
            "--entity-glob",
            ".auditlog/**/*.{yml,yaml,json}",
        )
    )
    wait_until(lambda: collector.stats()["git"].get("gitops_fetches", 0) >= 1)
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)},"
        f" *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    hostile: dict[str, tuple[str | bytes, str]] = {
        ".auditlog/big.yaml": (
            "identifier: big\nblueprint: service\ndescription: " + "x" * 5000,
            "4000",
        ),
        ".auditlog/laughs.yaml": (laughs, "more than 200000 values"),
        ".auditlog/deep.json": (
            '{"identifier":"d","blueprint":"s","p":' + "[" * 40 + "]" * 40 + "}",
            "nests deeper than 32",
        ),
        ".auditlog/latin1.yaml": (b"identifier: caf\xe9\nblueprint: service\n", "not UTF-8"),
        ".auditlog/nameless.yaml": (
            "- blueprint: service\n  title: Who\n",
            "item 1: identifier is missing",
        ),
        ".auditlog/syntax.json": ('{"identifier": "x",\n "blueprint": }', "not valid JSON"),
        ".auditlog/scalar.yaml": ("just text\n", "is a str, not an entity"),
    }
    for path, (content, _message) in hostile.items():
        work.write(path, content)
    work.write(".auditlog/fine.yaml", "identifier: fine\nblueprint: service\n")
    bad = work.commit("hostile files, and one fine", BOB)
    events = rig.events(1 + len(hostile))
    failures = {e.identifier: e for e in events if e.status == pb.STATUS_FAILURE}
    assert set(failures) == set(hostile)
    for path, (_content, message) in hostile.items():
        assert message in failures[path].error, failures[path].error
        assert failures[path].operation == pb.OPERATION_CREATE
        assert failures[path].context["commit"] == bad
    [fine] = [e for e in events if e.status == pb.STATUS_SUCCESS]
    assert ops([fine]) == [("CREATE", "service", "fine")]
    assert collector.request("GET", "/healthz").status == 200

    # The repository goes away for a while: failures are logged, and it resumes.
    moved = rig.tmp / "elsewhere"
    os.rename(work.path, moved)
    wait_until(lambda: collector.stats()["git"].get("gitops_fetch_failures", 0) >= 2)
    [status] = collector.stats()["git"]["gitops"]["repositories"]
    assert "git fetch" in status["last_error"]
    assert collector.request("GET", "/healthz").status == 200
    os.rename(moved, work.path)
    work.remove(".auditlog/ok.yaml")
    work.commit("drop keep", ALICE)
    events = rig.events(2 + len(hostile))
    assert ops(events[-1:]) == [("DELETE", "service", "keep")]
    logs = collector.logs()
    assert "cannot follow the repository; will try again" in logs
    assert "following the repository again" in logs


def test_a_private_repository_over_https_with_a_token_file(rig: GitRig) -> None:
    from tests.tls_certs import make_pki

    (rig.tmp / "pki").mkdir()
    pki = make_pki(rig.tmp / "pki")
    served = rig.tmp / "served"
    served.mkdir()
    remote = bare_repo(served / "catalog.git")
    work = WorkRepo.create(rig.tmp / "work")
    work.write(".auditlog/svc.yaml", "identifier: vault-proxy\nblueprint: service\n")
    commit = work.commit("add vault-proxy", ALICE)
    work.push(remote)
    token = "ghp_" + os.urandom(12).hex()
    server = GitHttpsServer(served, pki.server_cert, pki.server_key, f"x-access-token:{token}")
    try:
        token_file = rig.tmp / "repo.token"
        token_file.write_text("ghp_wrong\n")
        collector = rig.start_collector(
            *follow(rig, server.url("catalog.git"), "--repo-token-file", str(token_file)),
            "--replay-history",
            env={"GIT_SSL_CAINFO": str(pki.ca_cert)},
        )
        # The wrong token is refused (401): logged, retried, nothing recorded.
        wait_until(lambda: collector.stats()["git"].get("gitops_fetch_failures", 0) >= 1)
        token_file.write_text(token + "\n")  # rotated: read again on the next round
        [event] = rig.events(1)
        assert event.identifier == "vault-proxy"
        assert event.context["commit"] == commit
        assert event.context["repo"] == f"127.0.0.1:{server.port}/catalog"
        assert server.expected in server.authorizations
        wait_until(lambda: collector.stats()["spooled"] == 0)
        assert collector.stop() == 0
        logs = collector.logs()
        assert "cannot follow the repository" in logs
        for secret in (token, server.expected.split()[1]):
            assert secret not in logs
            for path in [*rig.tmp.glob("audit.db*"), *rig.spool.parent.glob("git.db*")]:
                assert secret.encode() not in path.read_bytes(), path
    finally:
        server.close()


def test_a_full_spool_pauses_the_follower_and_loses_nothing(tmp_path: Path) -> None:
    rig = GitRig(tmp_path, ORIGINS)  # the service is down at first
    try:
        work = WorkRepo.create(rig.tmp / "catalog")
        for number in range(5):
            work.write(
                f".auditlog/batch-{number}.yaml",
                f"- {{identifier: a{number}, blueprint: s}}\n"
                f"- {{identifier: b{number}, blueprint: s}}\n",
            )
            work.commit(f"batch {number}", ALICE)
        collector = rig.start_collector(
            *follow(rig, str(work.path), "--replay-history", "--spool-max-events", "3")
        )
        # One round's events go into the empty spool together, over the cap.
        wait_until(lambda: collector.stats()["spooled"] == 10)
        work.write(".auditlog/late.yaml", "identifier: late\nblueprint: s\n")
        late = work.commit("late", BOB)
        stats = wait_until(lambda: (s := collector.stats())["git"].get("gitops_paused") and s)
        assert stats["spooled"] == 10
        assert stats["rejected_full"] >= 1
        rig.start_service()
        events = rig.events(11)
        assert sorted(e.identifier for e in events) == sorted(
            ["late", *(f"{p}{n}" for p in "ab" for n in range(5))]
        )
        assert events[-1].context["commit"] == late
        wait_until(lambda: collector.stats()["spooled"] == 0)
        assert len({e.idempotency_key for e in rig.stored()}) == 11
    finally:
        rig.close()
