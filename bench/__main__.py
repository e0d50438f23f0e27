"""``python -m bench [scenario] [options]`` -- see ``python -m bench --help``."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import DEFAULT_SCENARIO, SCENARIOS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=f"carmulti load tests. With no scenario, runs '{DEFAULT_SCENARIO}'.",
    )
    sub = parser.add_subparsers(dest="scenario", metavar="scenario")
    for name, modname in SCENARIOS.items():
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0], description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = [DEFAULT_SCENARIO, *argv]
    args = parser.parse_args(argv)
    mod = importlib.import_module(SCENARIOS[args.scenario])
    return int(mod.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
