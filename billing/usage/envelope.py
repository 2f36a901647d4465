"""The envelope of a batch, ``{"events": [...], ...}``: its items as raw bytes, each judged on its own later
(billing.usage.contract), so that one bad event never sinks the others.

msgspec splits a well-formed envelope (the fast path). It refuses the whole body when a single item is
malformed (a bad escape, a lone surrogate) or nested too deep for its recursion limit; only then does
``split_items`` scan the body itself, iteratively, item boundaries only: each item, malformed or not, is
then decoded and answered by itself. A body whose envelope cannot be made out is ``400 invalid_json``.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from billing.common.errors import CommonCode, DomainError

# A JSON string (escapes skipped whole), a structural character, a scalar, or a stray quote (malformed)
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{},:]|[^\s\[\]{},:"]+|"', re.S)


def decode_envelope(body: bytes, envelope: type[Any]) -> Any:
    """``body`` decoded as ``envelope`` (a Struct whose ``events`` are ``list[msgspec.Raw]``)."""
    try:
        return msgspec.json.decode(body, type=envelope)
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: catch it first
        raise DomainError(CommonCode.INVALID_SHAPE, f"Expected {{\"events\": [...]}}: {exc}") from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
        first = exc
    fields = split_items(body)
    if fields is None:
        raise DomainError(CommonCode.INVALID_JSON, f"The body is not valid JSON: {first}") from None
    events = fields.pop(b"events", None)
    if events is None:  # missing, or not an array
        raise DomainError(CommonCode.INVALID_SHAPE, 'Expected {"events": [...]}.')
    rebuilt = b"{" + b",".join(key + b":" + value for key, value in fields.items())
    try:
        # the other members are small and checked strictly; the events stay raw
        shell = msgspec.json.decode(rebuilt + (b"," if fields else b"") + b'"events":[]}', type=envelope)
    except msgspec.ValidationError as exc:
        raise DomainError(CommonCode.INVALID_SHAPE, f"Expected {{\"events\": [...]}}: {exc}") from None
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        raise DomainError(CommonCode.INVALID_JSON, f"The body is not valid JSON: {first}") from None
    shell.events = [msgspec.Raw(item) for item in events]
    return shell


def split_items(body: bytes) -> dict[bytes, Any] | None:
    """The top-level object's members, raw (``"events"`` an array's items as a list of raw bytes), or None
    when the body is not an object whose structure can be followed. Strings inside items are not checked."""
    tokens = [(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(body)]
    if not tokens or tokens[0][0] != b"{" or body[:tokens[0][1]].strip() or body[tokens[-1][2]:].strip():
        return None
    members: dict[bytes, Any] = {}
    i = 1
    while i < len(tokens):
        if tokens[i][0] == b"}" and i == len(tokens) - 1 and not members:
            return members
        key = tokens[i][0]
        if len(key) < 2 or key[:1] != b'"' or key[-1:] != b'"' or i + 2 >= len(tokens) or tokens[i + 1][0] != b":":
            return None
        try:
            name = msgspec.json.encode(msgspec.json.decode(key, type=str))
        except (msgspec.DecodeError, UnicodeDecodeError):
            return None
        end = _value_end(tokens, i + 2)
        if end is None or end >= len(tokens):
            return None
        if name == b'"events"' and tokens[i + 2][0] == b"[":
            members[b"events"] = _array_items(body, tokens, i + 2, end)
        else:
            members[name] = body[tokens[i + 2][1]:tokens[end - 1][2]]
        if tokens[end][0] == b"}":
            return members if end == len(tokens) - 1 else None
        if tokens[end][0] != b",":
            return None
        i = end + 1
    return None


def _value_end(tokens: list[tuple[bytes, int, int]], start: int) -> int | None:
    """The index of the token after the value that starts at ``start`` (brackets balanced)."""
    depth = 0
    for index in range(start, len(tokens)):
        token = tokens[index][0]
        if token in (b"[", b"{"):
            depth += 1
        elif token in (b"]", b"}"):
            depth -= 1
            if depth < 0:
                return None
        if depth == 0:
            return index + 1
    return None


def _array_items(body: bytes, tokens: list[tuple[bytes, int, int]], start: int, end: int) -> list[bytes]:
    """The raw items of the array spanning tokens ``start`` (its ``[``) to ``end - 1`` (its ``]``)."""
    items: list[bytes] = []
    depth, item_start = 0, None
    for index in range(start + 1, end - 1):
        token, begin, _ = tokens[index]
        if depth == 0 and token == b",":
            items.append(body[item_start:tokens[index - 1][2]] if item_start is not None else b"")
            item_start = None
            continue
        if item_start is None:
            item_start = begin
        if token in (b"[", b"{"):
            depth += 1
        elif token in (b"]", b"}"):
            depth -= 1
    if item_start is not None:
        items.append(body[item_start:tokens[end - 2][2]])
    elif items:
        items.append(b"")  # a trailing comma: an empty (malformed) last item
    return items
