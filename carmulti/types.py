"""Core value types: what an agent is (:class:`AgentSpec`), what it produced
(:class:`AgentOutput`), what it spent (:class:`TokenAccounting`) and what agents
say to each other (:class:`Message`).

Field names match the Rust crate (car-multi ``types.rs``) so JSON produced here
is interchangeable with the Rust bindings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import date, datetime, time as clock_time, timezone
from typing import Any, Mapping

import orjson

from ._validate import int_at_least

__all__ = ["AgentOutput", "AgentSpec", "Message", "TokenAccounting", "truncate"]


def truncate(s: str, max_bytes: int) -> str:
    """Return the longest prefix of ``s`` whose UTF-8 encoding fits ``max_bytes``.

    Byte-based, never splits a character (the Rust ``truncate`` helper of
    ``patterns/swarm.rs``): ``truncate("héllo", 2) == "h"``.

    Args:
        s: The text.
        max_bytes: Maximum UTF-8 length in bytes (>= 0).

    Returns:
        ``s`` itself when it fits, else the cut prefix.
    """
    if len(s) * 4 <= max_bytes:  # fast path: cannot exceed even at 4 bytes/char
        return s
    # surrogatepass: a Python str may hold lone surrogates (os.fsdecode of a
    # non-UTF-8 name); they count as their 3-byte encoding and are kept whole.
    b = s.encode("utf-8", "surrogatepass")
    if len(b) <= max_bytes:
        return s
    n = max_bytes
    while n > 0 and (b[n] & 0xC0) == 0x80:  # back up to a character boundary (Rust is_char_boundary)
        n -= 1
    return b[:n].decode("utf-8", "surrogatepass")


# orjson would turn these into strings / dicts; like carcore.StateStore, metadata refuses them.
_STRICT_JSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
_I64_MIN, _U64_END = -(2**63), 2**64


def _not_json(value: Any) -> str | None:
    """Why a *leaf* value (not a dict/list/tuple) is not JSON as metadata, or None if it is."""
    t = type(value)
    if t is float:
        return None if math.isfinite(value) else (
            f"non-finite float {value!r} has no JSON representation (use None or a string)")
    if t is int:
        return None if _I64_MIN <= value < _U64_END else (
            f"integer {value} exceeds the 64-bit range (store it as a str)")
    try:
        orjson.dumps(value, option=_STRICT_JSON)
        return None
    except TypeError:
        pass
    if isinstance(value, (date, clock_time)):  # datetime is a date
        fix = "convert it with .isoformat()"
    elif dataclasses.is_dataclass(value):
        fix = "convert it with dataclasses.asdict()"
    elif isinstance(value, (set, frozenset)):
        fix = "use a sorted list"
    elif isinstance(value, (bytes, bytearray, memoryview)):
        fix = "decode it to a str (or base64 it)"
    else:
        fix = "use str, int, float, bool, None, list or dict values"
    return f"{type(value).__name__} {value!r} is not a JSON value ({fix})"


def _find_not_json(value: Any, path: str, depth: int = 0) -> tuple[str, str]:
    """The first ``(key path, reason)`` inside ``value`` (which orjson refused), depth first."""
    if depth > 254:  # orjson's own limit; also ends a walk around a reference cycle
        return path, "it is nested more than 254 levels deep (or contains itself)"
    if isinstance(value, dict):
        for k, v in value.items():
            if type(k) is not str:
                return path, f"key {k!r} ({type(k).__name__}) is not a str (JSON object keys are plain str)"
            try:
                orjson.dumps(v, option=_STRICT_JSON)
            except TypeError:
                return _find_not_json(v, f"{path}[{k!r}]", depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            try:
                orjson.dumps(v, option=_STRICT_JSON)
            except TypeError:
                return _find_not_json(v, f"{path}[{i}]", depth + 1)
    return path, _not_json(value) or f"{type(value).__name__} is not a JSON value"


def _json_metadata(name: str, metadata: Any) -> dict[str, Any]:
    """``metadata`` as plain JSON (a new dict), validated as ``StateStore.set`` validates values.

    Each top-level entry is treated like a state key and value: a str-subclass key becomes a
    ``str``; a NaN/infinite float or an int outside ``[-2**63, 2**64)`` is refused.

    Raises:
        TypeError: ``metadata`` is not a mapping, a key is not a str, or a value is not JSON
            (see :class:`AgentSpec`); the message names the spec and the key path.
    """
    if not isinstance(metadata, Mapping):
        raise TypeError(f"AgentSpec({name!r}).metadata must be a dict with str keys, got "
                        f"{type(metadata).__name__}: {metadata!r}")
    md: dict[str, Any] = {}
    for k, v in metadata.items():
        if type(k) is not str:
            if not isinstance(k, str):
                raise TypeError(f"AgentSpec({name!r}).metadata is not JSON-serializable: key {k!r} "
                                f"({type(k).__name__}) is not a str (JSON object keys are plain str)")
            k = str.__str__(k)
        t = type(v)
        if (t is float and not math.isfinite(v)) or (t is int and not _I64_MIN <= v < _U64_END):
            raise TypeError(f"AgentSpec({name!r}).metadata[{k!r}] is not JSON-serializable: {_not_json(v)}")
        md[k] = v
    try:
        return orjson.loads(orjson.dumps(md, option=_STRICT_JSON))  # type: ignore[no-any-return]
    except TypeError:
        path, reason = _find_not_json(md, "")
    raise TypeError(f"AgentSpec({name!r}).metadata{path} is not JSON-serializable: {reason}; metadata "
                    "reaches runners in worker processes as JSON, so it must be JSON to begin with")


def _refuse_mutation(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise TypeError("this AgentSpec's tools/metadata are the shared read-only empty ones (AgentSpec is frozen): "
                    "make a copy with spec.with_tools([...]) or spec.with_metadata(key, value)")


class _NoTools(list):  # type: ignore[type-arg]
    """The ``tools`` of engine-made spec copies without any: one shared, read-only empty list."""

    __slots__ = ()
    append = extend = insert = remove = pop = clear = sort = reverse = _refuse_mutation
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse_mutation

    def __reduce__(self) -> Any:
        return list, ()


class _NoMetadata(dict):  # type: ignore[type-arg]
    """The ``metadata`` of engine-made spec copies without any: one shared, read-only empty dict."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = update = setdefault = pop = popitem = clear = _refuse_mutation

    def __reduce__(self) -> Any:
        return dict, ()


#: Shared by the spec copies the engine makes in bulk (``with_name`` for mapper clones, ``from_dict`` in a
#: worker) when the original has no tools / no metadata: two containers less per agent (120 bytes; a
#: million agents in flight hold one copy in the coordinator and one in a worker: 229 MiB).
_NO_TOOLS: list[str] = _NoTools()
_NO_METADATA: dict[str, Any] = _NoMetadata()


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """Blueprint of one agent. Frozen: the ``with_*`` builders return copies.

    Attributes:
        name: Identity used for state keys (``agent.{name}.answer``), outputs and
            mailbox routing.
        system_prompt: The agent's system prompt.
        tools: Tool names the agent may use; patterns register them on the
            agent's :class:`~carmulti.Runtime` before the runner starts.
        max_turns: Advisory turn limit for the runner (default 10, as Rust).
        metadata: Opaque JSON for the runner (model, temperature, ...). The
            workspace path is injected under ``"workspace"``. Validated and
            normalised once, here, with the rules of ``carcore.StateStore.set``
            (each entry as a state key and value), so a runner sees equal
            metadata on every executor (a worker process gets it as JSON):
            tuples become lists, enum members their values, ``uuid.UUID`` a
            str, str subclasses str, and NaN/infinity *inside* a list or dict
            ``None``; a key that is not a str, a NaN/infinite float or an int
            outside ``[-2**63, 2**64)`` as a value, a ``datetime``/``date``/
            ``time``, a dataclass, a set, bytes or any other object orjson
            cannot encode is refused.
        cache_control: Mark the system prompt for provider prompt caching.

    ``tools`` and ``metadata`` are not to be changed in place either: the copies
    the engine makes in bulk (mapper clones, specs decoded in a worker process)
    share one read-only empty list and dict when there are none, and changing
    those raises ``TypeError``.

    Raises:
        ValueError: ``name`` is empty or not a str, or ``max_turns`` is not an
            int >= 0 (a bool never is).
        TypeError: ``tools`` is not a list of str; ``metadata`` is not a
            mapping or holds something that is not JSON (the message names the
            spec and the key path, e.g. ``AgentSpec('a').metadata['run']['at']``,
            and how to convert it).
    """

    name: str
    system_prompt: str = ""
    tools: list[str] = field(default_factory=list)
    max_turns: int = 10
    metadata: dict[str, Any] = field(default_factory=dict)
    cache_control: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"AgentSpec.name must be a non-empty str, got {self.name!r}")
        if isinstance(self.tools, str) or not all(isinstance(t, str) for t in self.tools):
            raise TypeError(f"AgentSpec({self.name!r}).tools must be a list of str, got {self.tools!r}")
        int_at_least(self.max_turns, 0, f"AgentSpec({self.name!r}).max_turns")
        md = self.metadata
        if (md or type(md) is not dict) and md is not _NO_METADATA:  # the common empty dict costs one truth test
            object.__setattr__(self, "metadata", _json_metadata(self.name, md))

    def with_tools(self, tools: list[str]) -> "AgentSpec":
        """Return a copy with ``tools`` replaced."""
        return dataclasses.replace(self, tools=list(tools))

    def with_max_turns(self, n: int) -> "AgentSpec":
        """Return a copy with ``max_turns`` replaced."""
        return dataclasses.replace(self, max_turns=n)

    def with_metadata(self, key: str, value: Any) -> "AgentSpec":
        """Return a copy whose metadata has ``key`` set to ``value`` (inserted or overwritten).

        Only the new entry is validated and normalised (as in the constructor);
        the other fields are copied, already valid.

        Raises:
            TypeError: ``key`` is not a str, or ``value`` is not JSON (the
                message names the spec and the key path).
        """
        if not isinstance(key, str):
            raise TypeError(f"AgentSpec({self.name!r}).with_metadata key must be a str, got "
                            f"{type(key).__name__}: {key!r}")
        entry = _json_metadata(self.name, {key: value})
        md = dict(self.metadata)
        md.update(entry)
        return self._copy(self.name, self.system_prompt, md)

    def with_name(self, name: str) -> "AgentSpec":
        """Return a copy renamed to ``name`` (used for mapper clones and critiques).

        Raises:
            ValueError: ``name`` is not a non-empty str.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"AgentSpec.name must be a non-empty str, got {name!r}")
        md = self.metadata
        return self._copy(name, self.system_prompt, dict(md) if md else _NO_METADATA)

    def _copy(self, name: str, system_prompt: str, metadata: dict[str, Any]) -> "AgentSpec":
        """Hot path of large fan-outs: a copy with these (already valid) fields, the others copied, without
        re-running ``dataclasses.replace`` + ``__post_init__`` (3x faster); ``tools`` is copied too."""
        new = _new_spec(AgentSpec)
        # the slots' own setters: a frozen dataclass's fields without object.__setattr__'s lookup (half the time)
        _set_name(new, name)
        _set_system_prompt(new, system_prompt)
        tools = self.tools
        _set_tools(new, list(tools) if tools else _NO_TOOLS)
        _set_max_turns(new, self.max_turns)
        _set_metadata(new, metadata)
        _set_cache_control(new, self.cache_control)
        return new

    def _variant(self, name: str, system_prompt: str) -> "AgentSpec":
        """A copy with another name and system prompt (a debate's critique of this agent; the engine
        builds both strs, so only the name is checked, by :meth:`with_name`)."""
        new = self.with_name(name)
        object.__setattr__(new, "system_prompt", system_prompt)
        return new

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form with the Rust field names."""
        return {
            "name": self.name,
            "system_prompt": self.system_prompt,
            "tools": list(self.tools),
            "max_turns": self.max_turns,
            "metadata": dict(self.metadata),
            "cache_control": self.cache_control,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AgentSpec":
        """Inverse of :meth:`to_dict`; missing optional fields take their defaults.

        Raises:
            KeyError: ``name`` is missing.
            ValueError, TypeError: as the constructor (``metadata`` is validated
                the same way).
        """
        if len(d) == 1 and cls is AgentSpec:  # {"name": ...}: how a worker gets most specs (encode_spec)
            name = d["name"]
            if isinstance(name, str) and name:  # else the constructor's error below
                return _named_spec(name)
        tools = d.get("tools")
        return cls(
            name=d["name"],
            system_prompt=d.get("system_prompt", ""),
            tools=list(tools) if tools else _NO_TOOLS,
            max_turns=d.get("max_turns", 10),
            metadata=d.get("metadata") or _NO_METADATA,
            cache_control=bool(d.get("cache_control", False)),
        )


# AgentSpec._copy's tools: the class's allocator and its fields' slot setters (frozen=True only guards __setattr__).
_new_spec = object.__new__
(_set_name, _set_system_prompt, _set_tools, _set_max_turns, _set_metadata, _set_cache_control) = (
    AgentSpec.__dict__[f].__set__ for f in ("name", "system_prompt", "tools", "max_turns", "metadata", "cache_control"))


#: The class's defaults, which from_dict's name-only path copies (``AgentSpec(name)`` without ``__init__``).
_DEFAULT_SPEC = AgentSpec("default")


def _named_spec(name: str) -> AgentSpec:
    """``AgentSpec(name)`` for a ``name`` the caller checked (a non-empty str), without re-validating the
    defaults: a spec decoded from ``{"name": ...}`` or from a process worker's ``fan`` frame."""
    return _DEFAULT_SPEC._copy(name, _DEFAULT_SPEC.system_prompt, _NO_METADATA)


@dataclass
class TokenAccounting:
    """Spend self-reported by a runner for one agent run (not verified).

    Attributes:
        input_tokens: Prompt tokens.
        output_tokens: Completion tokens.
        cost_usd: Cost in US dollars.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        """``input_tokens + output_tokens`` (what ``max_total_tokens`` meters)."""
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, Any]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens, "cost_usd": self.cost_usd}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TokenAccounting":
        return cls(int(d.get("input_tokens", 0)), int(d.get("output_tokens", 0)), float(d.get("cost_usd", 0.0)))


@dataclass(slots=True)
class AgentOutput:
    """Result of one agent run; failures are values (``error`` set), never lost.

    Attributes:
        name: Agent name (patterns key state writes on the name the runner returned).
        answer: Final text; ``""`` on failure or skip.
        turns: Model turns taken.
        tool_calls: Tool calls made.
        duration_ms: Wall time in milliseconds.
        error: Why the agent failed; ``None`` on success.
        outcome: Structured completion outcome (opaque JSON), if the runner gives one.
        tokens: Self-reported spend, if any.
        tools_used: Tools invoked, in first-use order.
    """

    name: str
    answer: str = ""
    turns: int = 0
    tool_calls: int = 0
    duration_ms: float = 0.0
    error: str | None = None
    outcome: Any = None
    tokens: TokenAccounting | None = None
    tools_used: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        """True iff ``error is None``."""
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form with the Rust field names (``orjson.dumps`` ready)."""
        return {
            "name": self.name,
            "answer": self.answer,
            "turns": self.turns,
            "tool_calls": self.tool_calls,
            "duration_ms": self.duration_ms,
            "error": self.error,
            "outcome": self.outcome,
            "tokens": None if self.tokens is None else self.tokens.to_dict(),
            "tools_used": list(self.tools_used),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AgentOutput":
        """Inverse of :meth:`to_dict`.

        Raises:
            KeyError: ``name`` is missing.
        """
        tokens = d.get("tokens")
        return cls(
            name=d["name"],
            answer=d.get("answer", ""),
            turns=int(d.get("turns", 0)),
            tool_calls=int(d.get("tool_calls", 0)),
            duration_ms=float(d.get("duration_ms", 0.0)),
            error=d.get("error"),
            outcome=d.get("outcome"),
            tokens=None if tokens is None else TokenAccounting.from_dict(tokens),
            tools_used=list(d.get("tools_used") or []),
        )

    def to_json(self) -> bytes:
        """``orjson.dumps(self.to_dict())``."""
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> "AgentOutput":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(orjson.loads(data))


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class Message:
    """A message between agents, routed by ``to``.

    Attributes:
        from_agent: Sender name.
        to: Recipient name (``Mailbox.send`` routes on it).
        content: JSON payload (usually text).
        kind: Free-form message kind, ``"text"`` by default.
        timestamp: When it was created (UTC).
    """

    from_agent: str
    to: str
    content: Any
    kind: str = "text"
    timestamp: datetime = field(default_factory=_utc_now)

    def to_dict(self) -> dict[str, Any]:
        return {
            "from_agent": self.from_agent,
            "to": self.to,
            "content": self.content,
            "kind": self.kind,
            "timestamp": self.timestamp.isoformat(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Message":
        ts = d.get("timestamp")
        return cls(
            from_agent=d["from_agent"],
            to=d["to"],
            content=d.get("content"),
            kind=d.get("kind", "text"),
            timestamp=datetime.fromisoformat(ts) if isinstance(ts, str) else _utc_now(),
        )
