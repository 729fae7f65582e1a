"""``auditctl``: the admin tool of the audit log (list, diff, tail, export, record, tokens).

The console script calls ``main``; ``python -m clients.cli`` does the same. See
docs/auditctl.md.
"""

from clients.cli._app import build_parser, main

__all__ = ["build_parser", "main"]
