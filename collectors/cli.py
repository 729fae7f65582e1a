"""``audit-collector KIND [options]``: run one collector.

``KINDS`` names the module of each collector; the module's ``PLUGIN`` is a
``collectors.runtime.Plugin``. A new collector is a new module and one line here.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from collectors.runtime import Plugin, run

KINDS: dict[str, str] = {
    "kubernetes": "collectors.kubernetes",
    "aws": "collectors.aws",
    "terraform": "collectors.terraform",
    "git": "collectors.git",
}

USAGE = f"""usage: audit-collector KIND [options]

KIND is one of: {", ".join(KINDS)}
`audit-collector KIND --help` lists the options of KIND.
"""


def load(kind: str) -> Plugin:
    "The plugin of ``kind``. :raises KeyError: no such kind."
    module = importlib.import_module(KINDS[kind])
    plugin: Plugin = module.PLUGIN
    return plugin


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    kind, rest = args[0], args[1:]
    if kind not in KINDS:
        print(f"audit-collector: unknown KIND {kind!r}", file=sys.stderr)
        print(USAGE, end="", file=sys.stderr)
        return 2
    return run(load(kind), rest)
