"""Benchmarks of the audit-service, run with ``scripts/bench <name> [--quick]``.

One module per benchmark; each exposes ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> int``, and is listed in ``BENCHMARKS`` (see ``__main__``).
"""

BENCHMARKS = {
    "ingest": "scripts.benchmarks.ingest",
    "list": "scripts.benchmarks.list_latency",
    "contains": "scripts.benchmarks.contains",
    "diff": "scripts.benchmarks.diff",
    "retention": "scripts.benchmarks.retention",
    "generate": "scripts.benchmarks.dataset",
    "collector-kubernetes": "scripts.benchmarks.collector_kubernetes",
    "collector-terraform": "scripts.benchmarks.collector_terraform",
    "postgres": "scripts.benchmarks.postgres",
}
