"""``audit-console``: the audit log's web console.

A small Starlette app that reads the audit service over gRPC through the client library
(``clients``), with each signed-in user's own token: a tab per resource type, sorting,
filter rules, column choices, paging past the newest 1,000 entries and a side-by-side diff
behind every row. See docs/console.md.

    from console import ConsoleSettings, create_app
    app = create_app(ConsoleSettings(service="127.0.0.1:50051"))  # any ASGI server runs it
"""

from console._app import create_app
from console._settings import SETTINGS, ConsoleSettings, SettingsError

__all__ = ["SETTINGS", "ConsoleSettings", "SettingsError", "create_app"]
