"""Reading a JSON object out of a model's reply: what the judge, the reviewer and the advisor answer.

One rule for the three patterns that ask a model for JSON (``Tournament``,
``AdversarialReview``, ``Advisor``), the newer-patterns spec's recommended
parser (A.3): the body of the first fenced ``json`` block
(a fence opened with three backticks and ``json``), else the first ``{`` at
which a JSON object decodes (whatever follows it is ignored). Anything else,
or a block that does not decode to an object, is no object (``None``).
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["json_object"]

_FENCE = re.compile(r"```[ \t]*json[ \t]*\r?\n(.*?)```", re.S | re.I)
_DECODER = json.JSONDecoder()
#: ``{`` positions tried before giving up on a reply with no decodable object.
MAX_STARTS = 64


def json_object(reply: str) -> dict[str, Any] | None:
    """The JSON object a reply carries, or ``None`` (see the module docstring)."""
    m = _FENCE.search(reply)
    if m is not None:
        try:
            value = json.loads(m.group(1))
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
    start = reply.find("{")
    tries = 0
    while start != -1 and tries < MAX_STARTS:
        tries += 1
        try:
            value, _ = _DECODER.raw_decode(reply, start)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return value
        start = reply.find("{", start + 1)
    return None
