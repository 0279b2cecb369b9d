"""Errors as the HTTP server answers them: the one mapping from runtime errors to HTTP
statuses, the error body, and request-body problems said in our own words.

The runtime reports trouble with Python exceptions: ValueError / TypeError from validating a
request (TokenizerManager.prepare, check_text), RequestError for a request it refused or
aborted later, RuntimeDiedError once one of its processes is gone, and asyncio.TimeoutError
when the scheduler does not answer a control call. `to_http_error` decides each one's status
and type, and nothing else does: handlers wrap their runtime calls in `as_http_errors()`,
streams in `http_error_stream()`, and both plain answers and SSE error events carry the body
`{"error": {"message", "type", "code"}}`. ValueError and TypeError are mapped only where a
handler calls into the runtime, so a bug elsewhere still surfaces as a 500.

pydantic (through FastAPI) validates request bodies; its messages ("Input should be a valid
list") are its own and change between releases. What stays is each error's documented
`type` code, its `loc` and its `ctx`, so the server builds its message from those:
"max_tokens must be >= 0, got -1", "prompt must be a string or a list of integers, got an
object". A code this table does not know still names the field, and appends pydantic's text.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from radixlm.runtime.managers.request_state import RequestError
from radixlm.runtime.managers.tokenizer_manager import RuntimeDiedError

T = TypeVar("T")


class HTTPError(Exception):
    """An answer for the client: its status, message and OpenAI-style error type."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


# what to_http_error maps; anything else escaping a handler is a bug, answered 500
RUNTIME_ERRORS = (HTTPError, RequestError, RuntimeDiedError, asyncio.TimeoutError, ValueError, TypeError)
# those that mean the same answer wherever they come from, so the app and the SSE writer map
# them even when a handler let one escape; a stray ValueError may be a bug, and stays a 500
UNAMBIGUOUS_ERRORS = (HTTPError, RequestError, RuntimeDiedError)


def to_http_error(exc: BaseException) -> HTTPError:
    """The HTTP answer to an error the runtime raised (one of RUNTIME_ERRORS)."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, RequestError):
        return HTTPError(exc.status_code, str(exc))
    if isinstance(exc, RuntimeDiedError):
        return HTTPError(503, str(exc), "server_error")
    if isinstance(exc, asyncio.TimeoutError):
        return HTTPError(503, str(exc) or "scheduler did not answer", "server_error")
    if isinstance(exc, (ValueError, TypeError)):
        return HTTPError(400, str(exc))
    raise TypeError(f"no HTTP answer for {type(exc).__name__}: {exc}") from exc


@contextmanager
def as_http_errors() -> Iterator[None]:
    """Runtime errors raised inside the block leave it as the HTTPError that answers them."""
    try:
        yield
    except RUNTIME_ERRORS as exc:
        raise to_http_error(exc) from None


async def http_error_stream(items: AsyncIterator[T]) -> AsyncIterator[T]:
    """`items`, with a runtime error part-way through turned into an HTTPError for the SSE
    writer to report (the status line has gone out by then)."""
    with as_http_errors():
        async for item in items:
            yield item


def error_body(status: int, message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "code": status}}


def error_response(err: HTTPError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        error_body(err.status, err.message, err.kind), status_code=err.status, headers=headers
    )


def install_error_handlers(app: FastAPI) -> None:
    """Every error FastAPI answers itself gets the standard error body too."""

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(to_http_error(exc))

    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = describe_validation_errors(exc.errors())
        return error_response(HTTPError(400, f"invalid request: {problems}"))

    async def on_starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 404/405 and bodies FastAPI cannot read; FastAPI's own text for a body that is not
        # UTF-8 does not say what is wrong with it
        message = str(exc.detail)
        if isinstance(exc.__cause__, UnicodeDecodeError):
            message = describe_undecodable_body(exc.__cause__)
        return error_response(HTTPError(exc.status_code, message), headers=getattr(exc, "headers", None))

    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_starlette_error)
    for kind in UNAMBIGUOUS_ERRORS:
        app.add_exception_handler(kind, on_error)


# ---------------------------------------------------------------------- request-body problems
# error type code -> what the field should have been (errors of these codes for one field,
# one per branch of a Union, are joined with "or")
_EXPECTED = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "none_required": "null",
    "finite_number": "a finite number",
}

# pydantic's names for the branches of a Union appear in `loc`; they are not field names
_PRIMITIVE_TAGS = {"str", "int", "float", "bool", "bytes", "none", "any"}


def describe_validation_errors(errors: Iterable[dict[str, Any]]) -> str:
    """One message for every problem in a request body, e.g.
    "max_tokens must be >= 0, got -1; messages[0].role must be one of the allowed values"."""
    by_field: dict[str, list[dict[str, Any]]] = {}
    for err in errors:
        by_field.setdefault(_field_path(err.get("loc", ())), []).append(err)
    return "; ".join(_describe_field(where, errs) for where, errs in by_field.items())


def _describe_field(where: str, errs: list[dict[str, Any]]) -> str:
    first = errs[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        loc = first.get("loc", ())
        at = f" (at character {loc[-1]})" if loc and isinstance(loc[-1], int) else ""
        return f"request body is not valid JSON{at}"
    expected = [_EXPECTED[e.get("type", "")] for e in errs if e.get("type") in _EXPECTED]
    if expected:
        wanted = " or ".join(dict.fromkeys(expected))
        return f"{where} must be {wanted}, got {json_kind(first.get('input'))}"
    ctx = first.get("ctx") or {}
    got = first.get("input")
    if kind == "missing":
        return f"{where} is required"
    if kind == "extra_forbidden":
        return f"{where} is not a known field"
    bound = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }.get(kind)
    if bound:
        return f"{where} must be {bound[0]} {ctx.get(bound[1])}, got {got!r}"
    if kind == "too_short":
        return f"{where} must have at least {ctx.get('min_length')} item(s), got {_count(got)}"
    if kind == "too_long":
        return f"{where} must have at most {ctx.get('max_length')} item(s), got {_count(got)}"
    if kind in ("literal_error", "enum"):
        allowed = f" ({ctx['expected']})" if ctx.get("expected") else ""
        return f"{where} is not one of the allowed values{allowed}, got {got!r}"
    return f"{where} is invalid ({first.get('msg', kind)})"


def _field_path(loc: Iterable[Any]) -> str:
    """('body', 'messages', 0, 'content', 'str') -> 'messages[0].content'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "body" and not path:
            continue
        elif not _is_branch_tag(str(part)):
            path += f".{part}" if path else str(part)
    return path or "body"


def _is_branch_tag(part: str) -> bool:
    # our field names are lower snake_case; pydantic's Union branch tags are type names
    # ("list[int]", "dict[str,any]", "function-after[...]", "TextPart")
    return part in _PRIMITIVE_TAGS or "[" in part or "-" in part or part[:1].isupper()


def json_kind(value: Any) -> str:
    """A JSON value's kind, as an error message names it."""
    if value is None:
        return "null"
    for py, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "a list"),
        (dict, "an object"),
    ):
        if isinstance(value, py):
            return name
    return type(value).__name__


def _count(value: Any) -> str:
    return f"{len(value)}" if hasattr(value, "__len__") else repr(value)


def describe_undecodable_body(cause: UnicodeDecodeError) -> str:
    """A body that is not UTF-8: which byte, and where."""
    bad = cause.object[cause.start : cause.start + 1]
    return f"request body is not valid UTF-8 JSON: byte 0x{bad.hex()} at offset {cause.start} is not UTF-8"
