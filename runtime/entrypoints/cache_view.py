"""The cache view's routes: `/cache` (a page that draws the radix tree live) and the checks of
`/cache.json`'s query (its answer is `TokenizerManager.cache_snapshot`, as `Engine.cache_snapshot`'s).

The routes exist only under `radixlm serve --enable-cache-view`: they show prompt text, so they
are off unless asked for, and like every route they sit behind `--api-key`. A browser cannot
send a header when it opens a page, so `/cache` (and only it) also takes the key as
`?api_key=...`; the page then sends it as a Bearer header on its `/cache.json` requests.
"""

from __future__ import annotations

from importlib import resources

from radixlm.runtime.entrypoints.http_errors import HTTPError
from radixlm.runtime.radix.cache_snapshot import SnapshotLimits

LIMIT_NAMES = {"max_nodes": int, "max_text_tokens": int, "order": str}
MAX_DIGITS = 9  # every limit's range is far below 10**9; longer numbers are refused unparsed


def parse_limits(query: dict[str, str]) -> dict[str, int | str]:
    """The snapshot limits in a query string, typed and checked against their ranges here (a
    400 naming the parameter), so nothing out of range is sent to the scheduler."""
    args: dict[str, int | str] = {}
    for name, value in query.items():
        if name == "api_key":
            continue
        kind = LIMIT_NAMES.get(name)
        if kind is None:
            raise HTTPError(400, f"unknown /cache.json parameter {name!r}; known: {', '.join(LIMIT_NAMES)}")
        if kind is int:
            digits = value.strip()
            # ASCII digits only: str.isdigit admits '²', which int() refuses; and a bound on
            # the length, since an int past 2**64 cannot even be sent to the scheduler
            if not (digits.isascii() and digits.isdigit()) or len(digits) > MAX_DIGITS:
                raise HTTPError(400, f"{name} must be a whole number below 10**{MAX_DIGITS}, got {value!r}")
            args[name] = int(digits)
        else:
            args[name] = value
    try:
        SnapshotLimits(**args)
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None
    return args


def page_html() -> str:
    """The page, a single file with its script and styles inline (no external assets)."""
    return resources.files("radixlm.runtime.entrypoints").joinpath("cache_view.html").read_text("utf-8")
