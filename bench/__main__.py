"""``python -m bench [scenario] [options]`` -- see ``python -m bench --help``."""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from . import DEFAULT_SCENARIO, SCENARIOS


#: reST that docstrings use and ``--help`` must not show: roles (``:class:`~a.B```,
#: ``:func:`text <target>```), inline literals, default-role text and link references.
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`(~?)([^`<]*?)\s*(?:<[^`>]*>)?`")
_LITERAL = re.compile(r"``(.+?)``", re.S)
_DEFAULT_ROLE = re.compile(r"`([^`\n]+)`_{0,2}")


def plain_text(doc: str) -> str:
    """``doc`` (reST, as the scenario docstrings are written) as plain text for ``--help``.

    ``:class:`~a.b.C``` becomes ``C``, ``:func:`the loop <asyncio.gather>``` becomes
    ``the loop``, other roles their target, ````x```` and ```x``` become ``x``, a
    closing ``::`` becomes ``:``.
    """
    def role(m: re.Match[str]) -> str:
        text = m.group(2)
        return text.rsplit(".", 1)[-1] if m.group(1) else text

    out = _ROLE.sub(role, doc)
    out = _LITERAL.sub(r"\1", out)
    out = _DEFAULT_ROLE.sub(r"\1", out)
    return re.sub(r"::(\s*)$", r":\1", out, flags=re.M)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=f"carmulti load tests. With no scenario, runs '{DEFAULT_SCENARIO}'.",
    )
    sub = parser.add_subparsers(dest="scenario", metavar="scenario")
    for name, modname in SCENARIOS.items():
        mod = importlib.import_module(modname)
        doc = plain_text((mod.__doc__ or "").strip())
        p = sub.add_parser(name, help=doc.split("\n\n", 1)[0].replace("%", "%%"), description=doc,
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
