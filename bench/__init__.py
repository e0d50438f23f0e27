"""Load tests for carmulti: ``python -m bench [scenario] [options]``.

Each scenario is a module in this package exposing ``add_arguments(parser)``
and ``main(args) -> int`` and is listed in ``SCENARIOS``; the first one is the
default (run by a bare ``python -m bench``).
"""

from __future__ import annotations

SCENARIOS: dict[str, str] = {
    # name -> module (imported lazily so one scenario's extras never break another)
    "stdlib": "bench.stdlib",
    "fanout": "bench.fanout",
    "mapreduce": "bench.mapreduce",
    "resume": "bench.resume",
    "rounds": "bench.rounds",
    "mailbox": "bench.mailbox",
    "core": "bench.core",
    "llm": "bench.llm",
}

DEFAULT_SCENARIO = "stdlib"
