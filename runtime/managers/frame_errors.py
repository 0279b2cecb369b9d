"""Why a msgpack frame did not decode into a message, said in our own words.

msgspec's errors are accurate but their wording is msgspec's and changes between releases
(0.23 reports invalid UTF-8 differently from 0.18). A peer that sent a bad frame should read
what was wrong and where in words this project owns and tests: a string that is not UTF-8
(its path and byte offset), a message type that does not exist, an unknown or missing field,
a field of the wrong type. msgspec's own text is appended in brackets for whoever debugs.

This runs only after a decode has already failed, so it may be slow and thorough: it walks
the raw msgpack bytes for strings, then re-checks the untyped message field by field.
"""

from __future__ import annotations

import struct
import typing
from typing import Any

import msgspec

# msgpack type bytes that prefix a string, and how many length bytes follow each
_STR_LEN_BYTES = {0xD9: 1, 0xDA: 2, 0xDB: 4}
_BIN_LEN_BYTES = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_EXT_LEN_BYTES = {0xC7: 1, 0xC8: 2, 0xC9: 4}
_FIXED_EXT_SIZES = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
_SCALAR_SIZES = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}


class _Truncated(Exception):
    pass


def explain_decode_failure(frame: bytes, kind: Any, library_message: str) -> str:
    """A sentence naming what is wrong with `frame` as a message of type `kind` (a Struct
    class or a Union of them), followed by the library's message in brackets."""
    try:
        ours = _explain(frame, kind)
    except Exception:
        ours = f"the frame ({len(frame)} bytes) is not a valid message"
    return f"{ours} [msgspec: {library_message}]"


def _explain(frame: bytes, kind: Any) -> str:
    bad = _first_bad_utf8(frame)
    if bad is not None:
        where, offset = bad
        byte = frame[offset]
        return f"the string at {where} is not valid UTF-8 (byte 0x{byte:02x} at offset {offset} of the frame)"
    try:
        value = msgspec.msgpack.decode(frame)
    except (msgspec.DecodeError, ValueError, RecursionError, OverflowError):
        return f"the frame ({len(frame)} bytes) is not one complete msgpack value"
    return _explain_value(value, kind)


def _explain_value(value: Any, kind: Any) -> str:
    members = [m for m in (typing.get_args(kind) or (kind,)) if isinstance(m, type)]
    known = {_tag(m): m for m in members}
    if not isinstance(value, dict):
        return f"a message must be a msgpack map with a 'type' field, got {_kind_of(value)}"
    tag_field = members[0].__struct_config__.tag_field if members else "type"
    tag = value.get(tag_field)
    if not isinstance(tag, str) or tag not in known:
        shown = repr(tag) if isinstance(tag, (str, int, float, type(None))) else _kind_of(tag)
        return f"unknown message type {shown}; this socket takes {', '.join(sorted(map(str, known)))}"
    cls = known[tag]
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    unknown = [k for k in value if k != tag_field and k not in fields]
    if unknown:
        return f"{tag} has unknown field(s): {', '.join(map(repr, unknown))}"
    missing = [name for name, f in fields.items() if f.required and name not in value]
    if missing:
        return f"{tag} is missing required field(s): {', '.join(map(repr, missing))}"
    for name, f in fields.items():
        if name not in value:
            continue
        try:
            msgspec.convert(value[name], f.type, strict=True)
        except (msgspec.ValidationError, TypeError, ValueError):
            return f"field {name!r} of {tag} must be {_type_name(f.type)}, got {_kind_of(value[name])}"
    return f"the message does not fit {tag}"


def _tag(cls: type) -> Any:
    return cls.__struct_config__.tag


def _type_name(tp: Any) -> str:
    """An annotation as a reader would write it: list[int] | None, dict[str, Any], ..."""
    if tp is type(None):
        return "None"
    if tp is Any:
        return "Any"
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin is typing.Union or (origin is not None and origin.__name__ == "UnionType"):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None and args:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(tp, "__name__", str(tp))


def _kind_of(value: Any) -> str:
    """What a decoded msgpack value is, in msgpack's terms."""
    if value is None:
        return "nil"
    for py, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (bytes, "binary data"),
        (list, "an array"),
        (dict, "a map"),
    ):
        if isinstance(value, py):
            return name
    return type(value).__name__


def _first_bad_utf8(frame: bytes) -> tuple[str, int] | None:
    """(path, byte offset) of the first msgpack string in `frame` that is not valid UTF-8,
    e.g. ("$.text", 17); None if every string decodes (or the frame is cut short)."""
    try:
        found: list[tuple[str, int]] = []
        _walk(memoryview(frame), 0, "$", found, depth=0)
    except (_Truncated, IndexError, struct.error):
        pass
    return found[0] if found else None


def _walk(buf: memoryview, pos: int, path: str, found: list, depth: int) -> int:
    """Skip one msgpack value at `pos`, recording the first bad UTF-8 string; returns the
    position after it. Map keys that are strings name the path of their values."""
    if depth > 64 or found:
        raise _Truncated
    if pos >= len(buf):
        raise _Truncated
    b = buf[pos]
    pos += 1
    if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):  # fixint, nil, bool
        return pos
    if 0xA0 <= b <= 0xBF or b in _STR_LEN_BYTES:
        n, pos = (b & 0x1F, pos) if b <= 0xBF else _length(buf, pos, _STR_LEN_BYTES[b])
        raw = bytes(buf[pos : pos + n])
        if len(raw) < n:
            raise _Truncated
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            found.append((path, pos + exc.start))
            raise _Truncated from None
        return pos + n
    if b in _BIN_LEN_BYTES:
        n, pos = _length(buf, pos, _BIN_LEN_BYTES[b])
        return pos + n
    if b in _EXT_LEN_BYTES:
        n, pos = _length(buf, pos, _EXT_LEN_BYTES[b])
        return pos + 1 + n
    if b in _FIXED_EXT_SIZES:
        return pos + 1 + _FIXED_EXT_SIZES[b]
    if b in _SCALAR_SIZES:
        return pos + _SCALAR_SIZES[b]
    if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):  # arrays
        n, pos = (b & 0x0F, pos) if b <= 0x9F else _length(buf, pos, 2 if b == 0xDC else 4)
        for i in range(n):
            pos = _walk(buf, pos, f"{path}[{i}]", found, depth + 1)
        return pos
    if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):  # maps
        n, pos = (b & 0x0F, pos) if b <= 0x8F else _length(buf, pos, 2 if b == 0xDE else 4)
        for i in range(n):
            key_start = pos
            pos = _walk(buf, pos, f"{path}.<key {i}>", found, depth + 1)
            key = _short_string(buf, key_start, pos)
            pos = _walk(buf, pos, f"{path}.{key}" if key is not None else f"{path}[{i}]", found, depth + 1)
        return pos
    raise _Truncated  # 0xC1 is never used by msgpack


def _length(buf: memoryview, pos: int, size: int) -> tuple[int, int]:
    if pos + size > len(buf):
        raise _Truncated
    return int.from_bytes(buf[pos : pos + size], "big"), pos + size


def _short_string(buf: memoryview, start: int, end: int) -> str | None:
    """The map key between start and end if it is a fixstr (every field name here is)."""
    b = buf[start]
    if 0xA0 <= b <= 0xBF:
        return bytes(buf[start + 1 : end]).decode("utf-8", errors="replace")
    return None
