"""``audit-collector git``: Git changes, two ways.

1. Webhooks: ``POST /webhooks/github``, ``/webhooks/gitlab``, ``/webhooks/bitbucket``, each
   verified (a signature of the raw body, or GitLab's token) before anything is stored, mapped
   to ENTITY events with origin GITHUB_EXPORTER, GITLAB_EXPORTER or BITBUCKET_EXPORTER.
2. GitOps: ``--repo URL_OR_PATH`` (or several in ``--repositories``) fetched with the real
   ``git`` on an interval; entity files changed per commit become ENTITY events with origin
   GITHUB_GITOPS or BITBUCKET_GITOPS.

docs/git-collector.md describes both, their options, the mapping and the deployment.
"""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collectors.git.entities import DEFAULT_GLOB, EntityGlob
from collectors.git.gitops import ORIGINS, GitOpsFollower, Repository, default_origin, is_remote
from collectors.git.repo import Git, GitError, basic_auth_header
from collectors.git.webhooks import PROVIDERS, DeliveryMemory, Provider, WebhookReceiver
from collectors.runtime import (
    Authenticator,
    BearerTokenFile,
    HmacSignature,
    Option,
    Plugin,
    Request,
    Response,
    Runtime,
    StartupError,
)

DEFAULT_MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
DEFAULT_MAX_ENTITY_FILE = 1024 * 1024

# This collector's counters in /stats (docs/git-collector.md explains each).
WEBHOOK_COUNTERS = ("deliveries", "events", "duplicate_deliveries", "ignored", "bad_requests")
COUNTERS = (
    *(f"{provider.name}_{name}" for provider in PROVIDERS for name in WEBHOOK_COUNTERS),
    "gitops_fetches",
    "gitops_fetch_failures",
    "gitops_commits",
    "gitops_entity_events",
    "gitops_file_failures",
    "gitops_rewrites",
    "gitops_paused",
)

# Every context key an event may carry (docs/git-collector.md has the table).
CONTEXT_KEYS = (
    "provider",
    "event",
    "action",
    "delivery_id",
    "repo",
    "previous_identifier",
    "pull_request",
    "merge_request",
    "ref",
    "before_sha",
    "after_sha",
    "forced",
    "compare",
    "branch",
    "commit",
    "path",
    "previous_path",
    "commit_subject",
    "rewritten_from",
    "snapshots_omitted",
)

SECRET_OPTIONS = {
    "github": "github_secret_file",
    "gitlab": "gitlab_token_file",
    "bitbucket": "bitbucket_secret_file",
}
REPOSITORY_KEYS = ("url", "branch", "interval", "entity_glob", "origin", "name", "token_file")

OPTIONS: tuple[Option, ...] = (
    Option(
        "github_secret_file",
        None,
        "file with the GitHub webhook secret(s), one per line; deliveries must carry a"
        " matching X-Hub-Signature-256",
        "path",
        metavar="PATH",
    ),
    Option(
        "gitlab_token_file",
        None,
        "file with the GitLab webhook secret token(s), one per line; deliveries must carry one"
        " in X-Gitlab-Token",
        "path",
        metavar="PATH",
    ),
    Option(
        "bitbucket_secret_file",
        None,
        "file with the Bitbucket webhook secret(s), one per line; deliveries must carry a"
        " matching X-Hub-Signature",
        "path",
        metavar="PATH",
    ),
    Option("no_webhooks", False, "do not receive webhooks (follow repositories only)", "bool"),
    Option(
        "max_body_bytes",
        DEFAULT_MAX_BODY,
        "largest webhook body accepted (bigger ones get 413)",
        "int",
        metavar="N",
    ),
    Option(
        "blueprint",
        {},
        "use BLUEPRINT instead of a webhook event's default blueprint, e.g."
        " githubRepository=service",
        "mapping",
        metavar="DEFAULT=BLUEPRINT",
    ),
    Option(
        "repo",
        "",
        "follow this repository's entity files: a local path, or a file://, git://, ssh:// or"
        " https:// URL",
        metavar="URL_OR_PATH",
    ),
    Option("branch", "main", "the branch to follow", metavar="NAME"),
    Option("interval", 60.0, "seconds between fetches", "float", metavar="SECONDS"),
    Option("entity_glob", DEFAULT_GLOB, "which files hold entities", metavar="GLOB"),
    Option(
        "gitops_origin",
        "auto",
        "origin of the repository's events (auto: BITBUCKET_GITOPS when the URL names"
        " bitbucket, else GITHUB_GITOPS)",
        choices=("auto", *ORIGINS),
    ),
    Option(
        "repo_name",
        "",
        "the repository's name in context.repo (default: from the URL, without credentials)",
        metavar="NAME",
    ),
    Option(
        "repo_token_file",
        None,
        "file with a token (or USER:PASSWORD) for an HTTPS repository, sent as basic auth in"
        " git's environment, never on its command line",
        "path",
        metavar="PATH",
    ),
    Option(
        "repositories",
        None,
        "TOML file of [[repository]] tables (url, branch, interval, entity_glob, origin, name,"
        " token_file) to follow several repositories",
        "path",
        metavar="PATH",
    ),
    Option(
        "clone_dir",
        None,
        "directory of the local bare clones (default: beside the spool, <spool>.repos)",
        "path",
        metavar="PATH",
    ),
    Option(
        "replay_history",
        False,
        "on a repository's first start, record every commit of its history instead of"
        " starting from the branch's tip",
        "bool",
    ),
    Option("git_timeout", 300.0, "seconds one git command may take", "float", metavar="SECONDS"),
    Option(
        "max_entity_file_bytes",
        DEFAULT_MAX_ENTITY_FILE,
        "an entity file larger than this is a FAILURE, not read",
        "int",
        metavar="N",
    ),
)


# -- webhooks ------------------------------------------------------------------------------


def signature_check(provider: Provider, path: Path) -> Authenticator:
    ":raises StartupError: the file cannot be read or holds no secret."
    if provider.name == "github":
        return HmacSignature(path, "GitHub webhook secret", header="X-Hub-Signature-256")
    if provider.name == "bitbucket":
        return HmacSignature(path, "Bitbucket webhook secret", header="X-Hub-Signature")
    return BearerTokenFile(path, "GitLab webhook token", header="X-Gitlab-Token", scheme="")


def _not_configured(provider: Provider, option: Option) -> Any:
    def answer(_request: Request) -> Response:
        return Response.error(
            404,
            f"the {provider.title} webhook is not configured: start the collector with"
            f" {option.flag}",
        )

    return answer


def _setup_webhooks(runtime: Runtime) -> None:
    options = runtime.options
    blueprints = options.mapping("blueprint")
    known = {name for provider in PROVIDERS for name in provider.blueprints}
    unknown = sorted(set(blueprints) - known)
    if unknown:
        raise StartupError(
            f"--blueprint: no event has the blueprint {', '.join(unknown)};"
            f" the defaults are {', '.join(sorted(known))}"
        )
    secrets = {name: options.path(option) for name, option in SECRET_OPTIONS.items()}
    any_secret = any(path is not None for path in secrets.values())
    client_certificate = runtime.sender_auth(None)
    memory = DeliveryMemory()
    by_name = {o.name: o for o in OPTIONS}
    for provider in PROVIDERS:
        path = secrets[provider.name]
        if path is None and any_secret:  # senders of the others authenticate; this one is off
            option = by_name[SECRET_OPTIONS[provider.name]]
            runtime.http.route(
                "POST", provider.path, _not_configured(provider, option), receives_events=False
            )
            continue
        auth = list(client_certificate)
        if path is not None:
            auth.insert(0, signature_check(provider, path))
        runtime.http.route(
            "POST",
            provider.path,
            WebhookReceiver(runtime, provider, blueprints, memory),
            max_body=options.integer("max_body_bytes"),
            auth=auth,
        )


# -- GitOps ------------------------------------------------------------------------------------


def _absolute(url: str, base: Path) -> str:
    if is_remote(url):
        return url
    path = Path(url).expanduser()
    return str((path if path.is_absolute() else base / path).resolve())


def _repository(values: dict[str, Any], base: Path, where: str) -> Repository:
    url = values.get("url")
    if not isinstance(url, str) or not url.strip():
        raise StartupError(f"{where}: url is missing")
    if url.startswith("-"):
        raise StartupError(f"{where}: {url!r} is not a repository URL or path")
    url = _absolute(url.strip(), base)
    if not is_remote(url) and not Path(url).is_dir():
        raise StartupError(f"{where}: {url} is not a directory")
    origin = str(values.get("origin") or "auto")
    if origin == "auto":
        origin = default_origin(url)
    if origin not in ORIGINS:
        raise StartupError(f"{where}: origin {origin!r}; one of auto, {', '.join(ORIGINS)}")
    try:
        interval = float(values.get("interval", 60.0))
    except (TypeError, ValueError):
        raise StartupError(
            f"{where}: interval {values.get('interval')!r} is not a number"
        ) from None
    if interval <= 0:
        raise StartupError(f"{where}: interval must be above 0 seconds")
    glob = str(values.get("entity_glob") or DEFAULT_GLOB)
    try:
        EntityGlob(glob)
    except ValueError as exc:
        raise StartupError(f"{where}: entity_glob: {exc}") from None
    branch = str(values.get("branch") or "main")
    if branch.startswith("-") or " " in branch or ".." in branch:
        raise StartupError(f"{where}: {branch!r} is not a branch name")
    token = values.get("token_file")
    token_file = None
    if token:
        token_file = Path(str(token)).expanduser()
        if not token_file.is_absolute():
            token_file = base / token_file
        read_repo_token(token_file)
    return Repository(
        url=url,
        branch=branch,
        interval=interval,
        glob=glob,
        origin=origin,
        name=str(values.get("name") or ""),
        token_file=token_file,
    )


def read_repo_token(path: Path) -> str:
    ":raises StartupError: the file cannot be read or is empty."
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise StartupError(
            f"cannot read the repository token file {path}: {exc.strerror}"
        ) from None
    if not token:
        raise StartupError(f"the repository token file {path} is empty")
    return token


def repositories(runtime: Runtime) -> list[Repository]:
    "The repositories to follow: ``--repo``, and those of ``--repositories``."
    options = runtime.options
    defaults = {
        "branch": options.text("branch"),
        "interval": options.number("interval"),
        "entity_glob": options.text("entity_glob"),
        "origin": options.text("gitops_origin"),
    }
    found: list[Repository] = []
    if options.text("repo"):
        values = {
            **defaults,
            "url": options.text("repo"),
            "name": options.text("repo_name"),
            "token_file": options.path("repo_token_file"),
        }
        found.append(_repository(values, Path.cwd(), "--repo"))
    listing = options.path("repositories")
    if listing is not None:
        try:
            data = tomllib.loads(listing.read_text())
        except OSError as exc:
            raise StartupError(f"cannot read --repositories {listing}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise StartupError(f"--repositories {listing} is not valid TOML: {exc}") from None
        tables = data.get("repository")
        extra = set(data) - {"repository"}
        if extra or not isinstance(tables, list) or not tables:
            raise StartupError(f"--repositories {listing}: expected [[repository]] tables only")
        for number, table in enumerate(tables, 1):
            where = f"{listing}, repository {number}"
            unknown = set(table) - set(REPOSITORY_KEYS)
            if unknown:
                raise StartupError(
                    f"{where}: unknown keys {', '.join(sorted(unknown))};"
                    f" valid keys: {', '.join(REPOSITORY_KEYS)}"
                )
            found.append(_repository({**defaults, **table}, listing.parent.resolve(), where))
    ids = [repo.id for repo in found]
    if len(set(ids)) != len(ids):
        raise StartupError("the same repository and branch is listed twice")
    return found


def _token_reader(path: Path | None) -> Callable[[], str | None]:
    def read() -> str | None:
        return read_repo_token(path) if path is not None else None

    return read


def _clone_root(runtime: Runtime) -> Path:
    configured = runtime.options.path("clone_dir")
    if configured is not None:
        return configured
    spool = runtime.spool.path
    return spool.parent / f"{spool.stem}.repos"


def _setup_gitops(runtime: Runtime, repos: list[Repository]) -> None:
    if shutil.which("git") is None:
        raise StartupError("git is not on PATH: the GitOps follower runs the git executable")
    options = runtime.options
    root = _clone_root(runtime)
    followers: list[GitOpsFollower] = []
    for number, repo in enumerate(repos):
        clone = root / f"{repo.id}.git"
        try:
            Git(clone).init()
        except (GitError, OSError) as exc:
            raise StartupError(f"cannot make the local clone {clone}: {exc}") from None
        follower = GitOpsFollower(
            runtime,
            repo,
            clone,
            replay_history=options.flag("replay_history"),
            git_timeout=options.number("git_timeout"),
            max_file_bytes=options.integer("max_entity_file_bytes"),
            token=_token_reader(repo.token_file),
        )
        followers.append(follower)
        runtime.add_worker(f"gitops-{number}", follower.run)
    runtime.add_stats("gitops", lambda: {"repositories": [f.status.document() for f in followers]})


def setup(runtime: Runtime) -> None:
    repos = repositories(runtime)
    if runtime.options.flag("no_webhooks") and not repos:
        raise StartupError("nothing to collect: --no-webhooks without --repo or --repositories")
    if not runtime.options.flag("no_webhooks"):
        _setup_webhooks(runtime)
    if repos:
        _setup_gitops(runtime, repos)


PLUGIN = Plugin(
    kind="git",
    description="Collect Git changes: GitHub, GitLab and Bitbucket webhooks, and GitOps"
    " repositories followed with git.",
    options=OPTIONS,
    setup=setup,
)

__all__ = ["COUNTERS", "OPTIONS", "PLUGIN", "basic_auth_header"]
