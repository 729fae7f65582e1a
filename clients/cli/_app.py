"""The command line: every command, option and help text, and ``main``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from clients import AuditClientError
from clients.cli._columns import COLUMNS, TABS
from clients.cli._diff import run_diff
from clients.cli._errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, CliError, explain
from clients.cli._query import OPS_HELP
from clients.cli._read import run_export, run_list, run_tail
from clients.cli._record import DEFAULT_ORIGIN, run_record
from clients.cli._settings import add_connection_options
from clients.cli._tokens import ROLES, run_tokens_create

PROG = "auditctl"
DESCRIPTION = """\
The admin tool of the audit log: query it (list, tail, export), see what an event changed
(diff), record an event (record), and make tokens for the service (tokens create)."""
EPILOG = """\
examples:
  auditctl list --tab entities --since 7d --where source ~ alice
  auditctl list --tab runs --where status = failure --format json
  auditctl diff 01a2154f-50c1-7000-8d6e-8b730436e28f
  auditctl tail -f --tab integrations
  auditctl export --since 30d -o audit.csv
  auditctl record --resource run --identifier deploy-42 --operation create --origin gh_action
  auditctl tokens create --id k8s-exporter --role recorder --origin K8S_EXPORTER

Exit codes: 0 done; 1 the service refused or failed; 2 bad usage, filter or input;
3 service unreachable or too slow; 4 token missing, unknown or not allowed; 130 interrupted.
Docs: docs/auditctl.md."""

Handler = Callable[[argparse.Namespace], int]


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32, width=100)


class _MainFormatter(argparse.RawDescriptionHelpFormatter, _Formatter):
    "Keeps the examples' line breaks."


def _add_query_options(
    parser: argparse.ArgumentParser, *, time_range: bool = True, sort: str | None = None
) -> None:
    group = parser.add_argument_group("which events")
    group.add_argument(
        "--tab",
        choices=list(TABS),
        metavar="TAB",
        help="only this tab's events (the resource type): " + ", ".join(TABS),
    )
    group.add_argument(
        "--where",
        nargs=3,
        action="append",
        metavar=("FIELD", "OP", "VALUE"),
        help=f"a filter rule, repeatable (rules are ANDed); OP is one of {OPS_HELP};"
        " enum fields take several values split by commas (any matches);"
        " FIELD is a column name or context.KEY",
    )
    if time_range:
        group.add_argument(
            "--since",
            metavar="WHEN",
            help="events that happened at or after WHEN: 30m, 12h, 7d, 2w ago, a date"
            " (2026-01-31, local midnight), a local time (2026-01-31T14:00) or RFC 3339",
        )
        group.add_argument(
            "--until", metavar="WHEN", help="events that happened before WHEN (as --since)"
        )
    if sort is not None:
        group.add_argument(
            "--sort",
            metavar="FIELD[:asc|desc]",
            help=f"the order (default {sort}); any filter field but context.KEY",
        )


def _add_columns_option(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--columns",
        metavar="COLS",
        help=f"columns to show, comma-separated, in order ({default}); or +COL to add and -COL"
        " to hide (--columns=-error,+id); one of: "
        + ", ".join([*COLUMNS, "context.KEY"])
        + "; aliases: date, recorded, type, entity, diff",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=_MainFormatter
    )
    add_connection_options(parser)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str, **kw: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=kw.get("description", help_text),
            formatter_class=_Formatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    # list
    p = command("list", run_list, "list events, newest first, as a table or JSON/JSONL/CSV")
    _add_query_options(p, sort="date:desc")
    _add_columns_option(p, "default: the tab's columns")
    p.add_argument(
        "--limit",
        type=int,
        default=1000,
        metavar="N",
        help="at most N events (default 1000, like a page of the console; 0: all)",
    )
    p.add_argument(
        "--format",
        choices=("table", "json", "jsonl", "csv"),
        default="table",
        help="table (default), json (an array), jsonl (one object a line) or csv;"
        " JSON holds the whole event unless --columns is given",
    )
    p.add_argument(
        "--snapshots", action="store_true", help="include before/after snapshots in JSON"
    )
    add_connection_options(p)

    # diff
    p = command(
        "diff",
        run_diff,
        "show what an event changed",
        description="Show what an event changed: a coloured unified diff of the pretty-printed"
        " before/after snapshots, the RFC 6902 JSON Patch, or both snapshots as JSON.",
    )
    p.add_argument("id", metavar="ID", help="the event id (the ID column, or list --columns +id)")
    p.add_argument(
        "--format",
        choices=("unified", "patch", "json"),
        default="unified",
        help="unified (default): a unified diff; patch: the JSON Patch; json: id,"
        " available, reason, before, after and patch",
    )
    p.add_argument(
        "-U",
        "--context",
        type=int,
        default=3,
        metavar="N",
        help="lines of context around each change in the unified diff (default 3)",
    )
    add_connection_options(p)

    # tail
    p = command(
        "tail",
        run_tail,
        "show the newest events; with -f, follow new ones as they are recorded",
        description="Show the most recently recorded events, oldest first; with -f, keep"
        " polling for new ones until interrupted (Ctrl-C).",
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument(
        "-n",
        "--lines",
        type=int,
        default=10,
        metavar="N",
        help="newest events to show first (default 10)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="how often -f asks for new events (default 1)",
    )
    _add_query_options(p, time_range=False)
    _add_columns_option(p, "default: the tab's columns")
    p.add_argument(
        "--format",
        choices=("text", "jsonl"),
        default="text",
        help="text (default): one line per event; jsonl: one JSON object per line",
    )
    add_connection_options(p)

    # export
    p = command(
        "export",
        run_export,
        "write every matching event to a file, page by page, in constant memory",
        description="Write every matching event to a file (or stdout), oldest first, streamed"
        " page by page in constant memory. A progress bar shows on a terminal; none when"
        " stderr is piped. The file appears only once complete.",
    )
    _add_query_options(p, sort="date:asc")
    p.add_argument(
        "--format",
        choices=("jsonl", "csv"),
        help="jsonl (default; csv when the output file ends in .csv)",
    )
    p.add_argument(
        "-o", "--output", metavar="FILE", help="the file to write (default: standard output)"
    )
    _add_columns_option(p, "default: every column")
    p.add_argument("--snapshots", action="store_true", help="include before/after snapshots")
    add_connection_options(p)

    # record
    p = command(
        "record",
        run_record,
        "record one event from flags or JSON (for CI pipelines)",
        description="Record one event from flags, or from a JSON object (shaped like list"
        " --format json's) with flags overriding its fields. Prints the event id.",
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        help="read the event from a JSON file; - for standard input",
    )
    fields = p.add_argument_group("event fields")
    fields.add_argument("--resource", help="the tab: entity, blueprint, action, run, ...")
    fields.add_argument("--identifier", help="what changed (entity id, run id, ...)")
    fields.add_argument("--blueprint", help="the entity's blueprint (required for entities)")
    fields.add_argument("--integration", help="integration installation id")
    fields.add_argument("--run-id", dest="run_id", help="the run that made the change")
    fields.add_argument("--operation", help="create, update, delete, timer_expired or read")
    fields.add_argument(
        "--origin",
        help=f"where it came from: gh_action, codefresh, api, ... (default {DEFAULT_ORIGIN})",
    )
    fields.add_argument("--source-kind", help="user, integration, webhook, automation, system")
    fields.add_argument("--source-id", help="who made the change: their id")
    fields.add_argument("--source-name", help="who made the change: display name or email")
    fields.add_argument("--status", help="success (default) or failure")
    fields.add_argument("--error", help="what went wrong (with --status failure)")
    fields.add_argument(
        "--occurred-at",
        metavar="WHEN",
        help="when it happened (default: now): 30m ago, a local time or RFC 3339, as --since",
    )
    fields.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="a key unique to this change; a repeat records nothing (and makes retries safe)",
    )
    fields.add_argument(
        "--context",
        action="append",
        metavar="KEY=VALUE",
        help="where: repo, commit, cluster, ...; repeatable",
    )
    fields.add_argument("--before", metavar="JSON", help="snapshot before: JSON, @FILE or -")
    fields.add_argument("--after", metavar="JSON", help="snapshot after: JSON, @FILE or -")
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text (default): the id; json: id, duplicate and recorded_at",
    )
    add_connection_options(p)

    # tokens
    p = command("tokens", _tokens_help, "make tokens for the service's tokens file")
    tokens = p.add_subparsers(title="commands", metavar="COMMAND")
    create = tokens.add_parser(
        "create",
        help="print a new token once, and the [[principal]] entry to paste",
        description="Print a new random token (shown only this once) and the [[principal]]"
        " entry for the service's tokens file, which holds only the token's SHA-256 digest.",
        formatter_class=_Formatter,
    )
    create.set_defaults(handler=run_tokens_create)
    create.add_argument("--id", required=True, help="the principal's id (source id, recorded_by)")
    create.add_argument("--role", required=True, choices=ROLES, help="admin, member or recorder")
    create.add_argument(
        "--origin",
        action="append",
        metavar="ORIGIN",
        help="an origin the recorder may record (K8S_EXPORTER, GH_ACTION, ...); repeatable;"
        " recorders only, at least one",
    )
    create.add_argument("--name", help="a display name")
    create.add_argument(
        "--append", metavar="FILE", help="also append the entry to this tokens file"
    )
    p.set_defaults(tokens_parser=p)
    return parser


def _tokens_help(args: argparse.Namespace) -> int:
    args.tokens_parser.print_help(sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    "Run auditctl; returns the exit code."
    warnings.showwarning = _show_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except CliError as exc:
        return _fail(str(exc), exc.exit_code)
    except AuditClientError as exc:
        problem = explain(exc, getattr(args, "resolved_service", "the configured address"))
        return _fail(str(problem), problem.exit_code)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, and keep Python from complaining at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as exc:
        if os.environ.get("AUDITCTL_DEBUG"):
            raise
        return _fail(
            f"unexpected error: {type(exc).__name__}: {exc} (AUDITCTL_DEBUG=1 shows the traceback)",
            EXIT_FAILED,
        )


def _show_warning(message: Warning | str, *_args: object, **_kwargs: object) -> None:
    "Warnings (a token about to travel in plaintext, say) as one line, like errors."
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)
    return code
