"""``python -m scripts.benchmarks <benchmark> [--quick] ...``: run one benchmark.

Only the chosen benchmark's module is imported, so one that needs an extra dependency (or is
broken) does not stop the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from scripts.benchmarks import BENCHMARKS


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    name = args[0] if args else ""
    if name not in BENCHMARKS:
        _overview().parse_args(args)  # prints help, or the error naming the choices
        return 2
    module = importlib.import_module(BENCHMARKS[name])
    parser = argparse.ArgumentParser(prog=f"scripts/bench {name}", description=module.DESCRIPTION)
    parser.add_argument(
        "--quick", action="store_true", help="small counts: the whole run takes under a minute"
    )
    module.add_arguments(parser)
    result: int = module.run(parser.parse_args(args[1:]))
    return result


def _overview() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Measure the audit-service on this machine.",
        epilog="scripts/bench BENCHMARK --help lists a benchmark's options.",
    )
    subcommands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, path in BENCHMARKS.items():
        subcommands.add_parser(name, help=_description(path))
    return parser


def _description(path: str) -> str:
    try:
        module: ModuleType = importlib.import_module(path)
    except Exception as exc:  # a benchmark that cannot load is still listed
        return f"(cannot load: {exc})"
    return str(module.DESCRIPTION)


if __name__ == "__main__":
    sys.exit(main())
