"""A plain-text tool-call protocol for models without native function calling.

The system prompt lists the tools and asks the model to reply with lines
``CALL <tool> <json arguments>`` to use them, or with its final answer.
:func:`parse_tool_calls` is deliberately forgiving, because small models are
sloppy: it accepts ``CALL add {"a": 1}``, ``CALL: add {...}``, backquoted or
quoted tool names, ``Call add with {...}`` at the start of a line, Markdown code
fences and bullets around the line, Python-style dicts (single quotes,
``True``/``None``), trailing commas, and ``CALL tool`` without arguments (``{}``).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

__all__ = ["TextToolCall", "parse_tool_calls", "tool_prompt", "format_tool_results", "strip_tool_calls"]

#: ``CALL`` in capitals anywhere, or any case at the start of a line (after bullets/quotes/fences).
_CALL_RE = re.compile(
    r"(?:(?<![A-Za-z0-9_])CALL|(?im:^[ \t>*\-`#]*call))(?![A-Za-z0-9_])[ \t]*:?[ \t]*"
    r"[`'\"]?(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)[`'\"]?"
)
_JOINERS_RE = re.compile(r"[ \t]*(?:\(|with\b|using\b|args?\b|arguments\b|:|=)?[ \t]*", re.I)


@dataclass(frozen=True)
class TextToolCall:
    """One tool call parsed from model text.

    Attributes:
        name: Tool name (normalised to a known tool's spelling when it matches case-insensitively).
        arguments: The parsed arguments object, or None when they did not parse.
        error: Why the arguments did not parse (None when they did).
        raw: The text of the call as written.
    """

    name: str
    arguments: dict[str, Any] | None
    error: str | None = None
    raw: str = ""


def tool_prompt(tools: Mapping[str, Mapping[str, Any]]) -> str:
    """The system-prompt block describing the tools and the ``CALL`` protocol."""
    lines = ["You can use these tools:"]
    for name, schema in tools.items():
        desc = schema.get("description")
        params = {k: v for k, v in schema.items() if k != "description"}
        lines.append(f"- {name}: {desc + ' ' if desc else ''}arguments (JSON Schema): {json.dumps(params, sort_keys=True)}")
    lines += [
        "To use a tool, reply with one line and nothing else:",
        "CALL <tool> <JSON arguments>",
        'For example: CALL ' + next(iter(tools), "tool") + ' {"key": "value"}',
        "You will get the result, then reply with your final answer (without CALL).",
    ]
    return "\n".join(lines)


def format_tool_results(results: Iterable[tuple[str, str]], *, final: bool = False) -> str:
    """The message that feeds tool results back: ``RESULT <tool>: <text>`` lines.

    It ends by asking for the final answer or another ``CALL`` line; with
    ``final`` (no model call left after the next) for the final answer only.
    """
    body = "\n".join(f"RESULT {name}: {text}" for name, text in results)
    if final:
        return body + "\nNow reply with your final answer only (no CALL)."
    return body + "\nNow reply with your final answer, or another CALL line if you need another tool."


def _balanced_object(text: str, start: int) -> str | None:
    """The ``{...}`` starting at ``text[start]`` with balanced braces (strings respected), or None."""
    depth = 0
    quote: str | None = None
    esc = False
    for i in range(start, len(text)):
        ch = text[i]
        if quote is not None:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == quote:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return None


def _parse_object(src: str) -> tuple[dict[str, Any] | None, str | None]:
    """Parse a JSON-ish object: JSON, then JSON without trailing commas, then a Python literal."""
    attempts = [src, re.sub(r",\s*([}\]])", r"\1", src)]
    last_err = ""
    for s in attempts:
        try:
            val = json.loads(s)
        except ValueError as exc:
            last_err = str(exc)
            continue
        if isinstance(val, dict):
            return val, None
        return None, f"arguments must be a JSON object, got {type(val).__name__}"
    for s in attempts:
        py = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", s)))
        try:
            val = ast.literal_eval(py)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(val, dict) and all(isinstance(k, str) for k in val):
            try:
                return json.loads(json.dumps(val)), None  # plain JSON types only
            except (TypeError, ValueError):
                break
    return None, f"arguments are not valid JSON: {last_err or src[:80]}"


def parse_tool_calls(text: str, known: Iterable[str] | None = None) -> list[TextToolCall]:
    """Find every ``CALL <tool> <json>`` in ``text``, in order.

    Args:
        text: Model output.
        known: Tool names offered; a case-insensitive match is normalised to
            the known spelling. Unknown names are still returned (the runtime
            rejects them and the model sees the error).

    Returns:
        The calls, possibly empty (then ``text`` is a final answer).
    """
    if not text:
        return []
    known_map = {k.lower(): k for k in (known or ())}
    matches = list(_CALL_RE.finditer(text))
    calls: list[TextToolCall] = []
    for idx, m in enumerate(matches):
        name = m.group("name").rstrip(".-")
        name = known_map.get(name.lower(), name)
        seg_end = matches[idx + 1].start() if idx + 1 < len(matches) else len(text)
        rest_start = _JOINERS_RE.match(text, m.end()).end()  # type: ignore[union-attr]
        brace = text.find("{", rest_start, seg_end)
        between = text[m.end():brace] if brace >= 0 else ""
        if brace < 0 or "\n\n" in between or len(between.strip(" \t\n`:([")) > 40:
            if known_map and name.lower() not in known_map:
                continue  # "call" as an ordinary word in prose, not a call
            line_end = text.find("\n", m.end())
            calls.append(TextToolCall(name, {}, None, text[m.start():line_end if line_end >= 0 else len(text)].strip()))
            continue
        obj = _balanced_object(text, brace)
        if obj is None:
            calls.append(TextToolCall(name, None, "arguments are not valid JSON: unbalanced braces", text[m.start():seg_end].strip()))
            continue
        args, err = _parse_object(obj)
        calls.append(TextToolCall(name, args, err, text[m.start():brace + len(obj)].strip()))
    return calls


def strip_tool_calls(text: str) -> str:
    """``text`` without its ``CALL`` lines (what remains is an answer, possibly empty)."""
    kept = [ln for ln in text.splitlines() if not _CALL_RE.search(ln)]
    return "\n".join(kept).strip()
