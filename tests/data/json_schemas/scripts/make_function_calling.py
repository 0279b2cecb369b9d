"""Writes function_calling.jsonl: OpenAI-style function-calling ``parameters`` schemas of realistic tools.

Each tool below is one entry, named ``function_call.<tool>``: weather, search, calendar, SQL, file
operations, email, travel booking, payments, GitHub, shell, smart home, maps, vector search, deployment...
They use ``required`` lists, enums, nested objects, arrays with item-count bounds and ``uniqueItems``,
numeric bounds, patterns, formats, nullable types and ``oneOf``; many set ``additionalProperties: false``,
some in OpenAI strict-mode shape (``strict_all``).

Run from the repository root (or anywhere):
``python tests/data/json_schemas/scripts/make_function_calling.py``. The output is deterministic:
re-running it rewrites ``../function_calling.jsonl`` byte for byte.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CORPUS_DIR, problems, write_jsonl

OUT = CORPUS_DIR / "function_calling.jsonl"
SOURCE = "OpenAI-style function-calling `parameters` schema written for this corpus"


# --- schema builders: a description (when given) follows the type keys, then any other keywords --------


def _with(base: dict, description: str | None, keywords: dict) -> dict:
    if description:
        base["description"] = description
    base.update(keywords)
    return base


def string(description=None, **kw) -> dict:
    return _with({"type": "string"}, description, kw)


def integer(description=None, **kw) -> dict:
    return _with({"type": "integer"}, description, kw)


def number(description=None, **kw) -> dict:
    return _with({"type": "number"}, description, kw)


def boolean(description=None, **kw) -> dict:
    return _with({"type": "boolean"}, description, kw)


def enum(values: list, description=None, **kw) -> dict:
    return _with({"type": "string", "enum": values}, description, kw)


def array(items: dict, description=None, **kw) -> dict:
    return _with({"type": "array", "items": items}, description, kw)


def obj(properties: dict, required=(), strict=False, description=None, **kw) -> dict:
    """An object schema; ``strict`` adds ``additionalProperties: false``."""
    schema = {"type": "object"}
    if description:
        schema["description"] = description
    schema["properties"] = properties
    if required:
        schema["required"] = list(required)
    if strict:
        schema["additionalProperties"] = False
    schema.update(kw)
    return schema


def strict_all(properties: dict, description=None) -> dict:
    """OpenAI strict mode: every property required, optional ones nullable, no extra keys."""
    return obj(properties, required=list(properties), strict=True, description=description)


# --- the tools ------------------------------------------------------------------------------------------

TOOLS: dict[str, dict] = {}

TOOLS["get_current_weather"] = obj(
    {
        "location": string("City and state/country, e.g. San Francisco, CA"),
        "unit": enum(["celsius", "fahrenheit"], "Temperature unit"),
    },
    ["location"],
)
TOOLS["get_weather_forecast"] = obj(
    {
        "latitude": number("Latitude in degrees", minimum=-90, maximum=90),
        "longitude": number("Longitude in degrees", minimum=-180, maximum=180),
        "days": integer("Number of forecast days", minimum=1, maximum=14, default=3),
        "hourly": boolean("Return hourly data instead of daily summaries", default=False),
        "variables": array(
            enum(["temperature", "precipitation", "wind_speed", "humidity", "uv_index", "cloud_cover"]),
            "Variables to include",
            minItems=1,
            uniqueItems=True,
        ),
    },
    ["latitude", "longitude"],
    strict=True,
)
TOOLS["web_search"] = obj(
    {
        "query": string("Search query", minLength=1, maxLength=400),
        "num_results": integer(minimum=1, maximum=20, default=5),
        "recency_days": integer("Only results newer than this many days", minimum=1),
        "site": string("Restrict to this domain, e.g. docs.python.org"),
        "safe_search": enum(["off", "moderate", "strict"], default="moderate"),
    },
    ["query"],
)
TOOLS["search_news"] = strict_all(
    {
        "query": string(),
        "language": {"type": ["string", "null"], "pattern": "^[a-z]{2}$", "description": "ISO 639-1 code"},
        "from_date": {"type": ["string", "null"], "format": "date"},
        "sort_by": enum(["relevance", "published_at", "popularity"]),
    }
)
TOOLS["create_calendar_event"] = obj(
    {
        "title": string(minLength=1, maxLength=200),
        "start": string("Start time, ISO 8601", format="date-time"),
        "end": string("End time, ISO 8601", format="date-time"),
        "attendees": array(
            obj(
                {"email": string(format="email"), "optional": boolean(default=False)}, ["email"], strict=True
            ),
            maxItems=50,
        ),
        "location": string(),
        "description": string(maxLength=5000),
        "reminders": array(integer(minimum=0, maximum=40320), "Minutes before start", maxItems=5),
        "recurrence": obj(
            {
                "frequency": enum(["daily", "weekly", "monthly", "yearly"]),
                "interval": integer(minimum=1, maximum=99, default=1),
                "by_day": array(enum(["MO", "TU", "WE", "TH", "FR", "SA", "SU"]), uniqueItems=True),
                "until": string(format="date"),
                "count": integer(minimum=1),
            },
            ["frequency"],
            strict=True,
        ),
        "visibility": enum(["default", "public", "private"], default="default"),
    },
    ["title", "start", "end"],
    strict=True,
)
TOOLS["list_calendar_events"] = obj(
    {
        "calendar_id": string(default="primary"),
        "time_min": string(format="date-time"),
        "time_max": string(format="date-time"),
        "max_results": integer(minimum=1, maximum=250, default=25),
        "query": string("Free-text filter"),
    },
    ["time_min", "time_max"],
)
TOOLS["find_meeting_slot"] = obj(
    {
        "participants": array(string(format="email"), minItems=1, maxItems=20),
        "duration_minutes": integer(minimum=15, maximum=480, multipleOf=15),
        "window": obj(
            {"start": string(format="date-time"), "end": string(format="date-time")},
            ["start", "end"],
            strict=True,
        ),
        "working_hours_only": boolean(default=True),
        "timezone": string("IANA time zone, e.g. Europe/Berlin"),
    },
    ["participants", "duration_minutes", "window"],
)
TOOLS["run_sql_query"] = obj(
    {
        "query": string("A single read-only SQL SELECT statement"),
        "database": enum(["analytics", "sales", "inventory", "users"]),
        "parameters": array({"type": ["string", "number", "boolean", "null"]}, "Positional bind parameters"),
        "limit": integer(minimum=1, maximum=10000, default=100),
        "timeout_seconds": number(exclusiveMinimum=0, maximum=120),
    },
    ["query", "database"],
    strict=True,
)
TOOLS["describe_table"] = obj(
    {
        "schema": string(default="public", pattern="^[A-Za-z_][A-Za-z0-9_]*$"),
        "table": string(pattern="^[A-Za-z_][A-Za-z0-9_]*$"),
        "include_indexes": boolean(default=False),
    },
    ["table"],
)
TOOLS["create_table"] = obj(
    {
        "table": string(pattern="^[a-z_][a-z0-9_]{0,62}$"),
        "columns": array(
            obj(
                {
                    "name": string(pattern="^[a-z_][a-z0-9_]{0,62}$"),
                    "type": enum(
                        [
                            "integer",
                            "bigint",
                            "text",
                            "varchar",
                            "boolean",
                            "timestamp",
                            "date",
                            "numeric",
                            "jsonb",
                            "uuid",
                        ]
                    ),
                    "nullable": boolean(default=True),
                    "primary_key": boolean(default=False),
                    "default": {"type": ["string", "number", "boolean", "null"]},
                    "length": integer(minimum=1, maximum=10485760),
                },
                ["name", "type"],
                strict=True,
            ),
            minItems=1,
            maxItems=200,
        ),
        "if_not_exists": boolean(default=True),
    },
    ["table", "columns"],
    strict=True,
)
TOOLS["read_file"] = obj(
    {
        "path": string("Absolute or workspace-relative path"),
        "start_line": integer(minimum=1),
        "end_line": integer(minimum=1),
        "encoding": enum(["utf-8", "latin-1", "ascii"], default="utf-8"),
    },
    ["path"],
)
TOOLS["write_file"] = obj(
    {
        "path": string(),
        "content": string(),
        "mode": enum(["overwrite", "append", "create_only"], default="overwrite"),
        "make_dirs": boolean(default=False),
    },
    ["path", "content"],
    strict=True,
)
TOOLS["list_directory"] = obj(
    {
        "path": string(default="."),
        "recursive": boolean(default=False),
        "max_depth": integer(minimum=1, maximum=10),
        "glob": string("e.g. **/*.py"),
        "include_hidden": boolean(default=False),
    },
    [],
)
TOOLS["move_file"] = obj(
    {"source": string(), "destination": string(), "overwrite": boolean(default=False)},
    ["source", "destination"],
    strict=True,
)
TOOLS["delete_files"] = obj(
    {
        "paths": array(string(), minItems=1, maxItems=100, uniqueItems=True),
        "confirm": {"type": "boolean", "const": True, "description": "Must be true"},
    },
    ["paths", "confirm"],
    strict=True,
)
TOOLS["search_code"] = obj(
    {
        "pattern": string("Regular expression"),
        "path": string(default="."),
        "file_types": array(enum(["py", "js", "ts", "go", "rs", "java", "c", "cpp", "md"])),
        "case_sensitive": boolean(default=True),
        "context_lines": integer(minimum=0, maximum=10, default=2),
        "max_matches": integer(minimum=1, maximum=1000, default=100),
    },
    ["pattern"],
)
TOOLS["apply_patch"] = obj(
    {
        "file": string(),
        "edits": array(
            obj(
                {"old_text": string(minLength=1), "new_text": string()}, ["old_text", "new_text"], strict=True
            ),
            minItems=1,
        ),
    },
    ["file", "edits"],
    strict=True,
)
TOOLS["send_email"] = obj(
    {
        "to": array(string(format="email"), minItems=1, maxItems=50),
        "cc": array(string(format="email")),
        "bcc": array(string(format="email")),
        "subject": string(maxLength=255),
        "body": string(),
        "body_format": enum(["text", "html", "markdown"], default="text"),
        "attachments": array(
            obj(
                {
                    "filename": string(),
                    "content_base64": string(contentEncoding="base64"),
                    "mime_type": string(pattern="^[a-z]+/[a-z0-9.+-]+$"),
                },
                ["filename", "content_base64"],
            )
        ),
        "priority": enum(["low", "normal", "high"], default="normal"),
    },
    ["to", "subject", "body"],
    strict=True,
)
TOOLS["search_emails"] = obj(
    {
        "query": string(),
        "folder": enum(["inbox", "sent", "drafts", "archive", "spam", "all"], default="inbox"),
        "unread_only": boolean(default=False),
        "from_address": string(format="email"),
        "after": string(format="date"),
        "before": string(format="date"),
        "limit": integer(minimum=1, maximum=100, default=20),
    },
    [],
)
TOOLS["book_flight"] = obj(
    {
        "origin": string("IATA airport code", pattern="^[A-Z]{3}$"),
        "destination": string("IATA airport code", pattern="^[A-Z]{3}$"),
        "departure_date": string(format="date"),
        "return_date": string(format="date"),
        "passengers": obj(
            {
                "adults": integer(minimum=1, maximum=9),
                "children": integer(minimum=0, maximum=8, default=0),
                "infants": integer(minimum=0, maximum=4, default=0),
            },
            ["adults"],
            strict=True,
        ),
        "cabin": enum(["economy", "premium_economy", "business", "first"], default="economy"),
        "max_stops": integer(minimum=0, maximum=3),
        "max_price": number(exclusiveMinimum=0),
    },
    ["origin", "destination", "departure_date", "passengers"],
    strict=True,
)
TOOLS["book_hotel"] = obj(
    {
        "city": string(),
        "check_in": string(format="date"),
        "check_out": string(format="date"),
        "guests": integer(minimum=1, maximum=10),
        "rooms": integer(minimum=1, maximum=5, default=1),
        "min_stars": integer(minimum=1, maximum=5),
        "amenities": array(enum(["wifi", "pool", "gym", "parking", "breakfast", "spa"]), uniqueItems=True),
        "budget_per_night": obj(
            {"amount": number(minimum=0), "currency": string(pattern="^[A-Z]{3}$")}, ["amount", "currency"]
        ),
    },
    ["city", "check_in", "check_out", "guests"],
)
TOOLS["reserve_restaurant"] = strict_all(
    {
        "restaurant_id": string(),
        "date": string(format="date"),
        "time": string(pattern="^([01][0-9]|2[0-3]):[0-5][0-9]$"),
        "party_size": integer(minimum=1, maximum=20),
        "special_requests": {"type": ["string", "null"], "maxLength": 500},
        "seating": {"type": ["string", "null"], "enum": ["indoor", "outdoor", "bar", None]},
    }
)
TOOLS["rent_car"] = obj(
    {
        "pickup_location": string(),
        "dropoff_location": string(),
        "pickup_at": string(format="date-time"),
        "dropoff_at": string(format="date-time"),
        "car_class": enum(["economy", "compact", "suv", "van", "luxury"]),
        "driver_age": integer(minimum=18, maximum=99),
        "extras": array(enum(["gps", "child_seat", "extra_driver", "snow_chains"])),
    },
    ["pickup_location", "pickup_at", "dropoff_at", "driver_age"],
)
TOOLS["get_stock_price"] = obj(
    {"symbol": string(pattern="^[A-Z.]{1,10}$"), "exchange": enum(["NYSE", "NASDAQ", "LSE", "TSE", "XETRA"])},
    ["symbol"],
)
TOOLS["convert_currency"] = obj(
    {
        "amount": number(minimum=0),
        "from": string(pattern="^[A-Z]{3}$"),
        "to": string(pattern="^[A-Z]{3}$"),
        "date": string("Historical rate date", format="date"),
    },
    ["amount", "from", "to"],
    strict=True,
)
TOOLS["calculate_loan_payment"] = obj(
    {
        "principal": number(exclusiveMinimum=0),
        "annual_rate_percent": number(minimum=0, maximum=100),
        "term_months": integer(minimum=1, maximum=480),
        "payment_frequency": enum(["monthly", "biweekly", "weekly"]),
    },
    ["principal", "annual_rate_percent", "term_months"],
    strict=True,
)
TOOLS["create_invoice"] = obj(
    {
        "customer_id": string(),
        "items": array(
            obj(
                {
                    "description": string(),
                    "quantity": number(exclusiveMinimum=0),
                    "unit_price": number(minimum=0, multipleOf=0.01),
                    "tax_rate": number(minimum=0, maximum=1),
                },
                ["description", "quantity", "unit_price"],
                strict=True,
            ),
            minItems=1,
        ),
        "currency": string(pattern="^[A-Z]{3}$", default="USD"),
        "due_in_days": integer(minimum=0, maximum=365, default=30),
        "notes": string(maxLength=1000),
    },
    ["customer_id", "items"],
    strict=True,
)
TOOLS["refund_payment"] = obj(
    {
        "payment_id": string(pattern="^pay_[A-Za-z0-9]{14,}$"),
        "amount_cents": integer(minimum=1),
        "reason": enum(["duplicate", "fraudulent", "requested_by_customer", "other"]),
    },
    ["payment_id", "reason"],
    strict=True,
)
TOOLS["create_github_issue"] = obj(
    {
        "owner": string(),
        "repo": string(),
        "title": string(minLength=1, maxLength=256),
        "body": string(),
        "labels": array(string(), uniqueItems=True),
        "assignees": array(string(pattern="^[A-Za-z0-9-]{1,39}$"), maxItems=10),
        "milestone": {"type": ["integer", "null"], "minimum": 1},
    },
    ["owner", "repo", "title"],
)
TOOLS["create_pull_request"] = obj(
    {
        "repo": string(pattern="^[\\w.-]+/[\\w.-]+$"),
        "head": string(),
        "base": string(default="main"),
        "title": string(),
        "body": string(),
        "draft": boolean(default=False),
        "reviewers": array(string()),
    },
    ["repo", "head", "title"],
    strict=True,
)
TOOLS["run_shell_command"] = obj(
    {
        "command": string(),
        "cwd": string(),
        "timeout_seconds": integer(minimum=1, maximum=3600, default=60),
        "env": obj({}, additionalProperties={"type": "string"}),
        "capture_stderr": boolean(default=True),
    },
    ["command"],
    strict=True,
)
TOOLS["execute_python"] = obj(
    {
        "code": string(),
        "timeout_seconds": number(exclusiveMinimum=0, maximum=300),
        "packages": array(string(pattern="^[A-Za-z0-9_.\\-\\[\\],=<>!~ ]+$")),
    },
    ["code"],
)
TOOLS["http_request"] = obj(
    {
        "method": enum(["GET", "POST", "PUT", "PATCH", "DELETE"]),
        "url": string(format="uri"),
        "headers": obj({}, additionalProperties={"type": "string"}),
        "query": obj({}, additionalProperties={"type": ["string", "number", "boolean"]}),
        "json_body": {"description": "Any JSON value sent as the request body"},
        "follow_redirects": boolean(default=True),
    },
    ["method", "url"],
    strict=True,
)
TOOLS["translate_text"] = obj(
    {
        "text": string(minLength=1, maxLength=5000),
        "target_language": string(pattern="^[a-z]{2}(-[A-Z]{2})?$"),
        "source_language": string(pattern="^[a-z]{2}(-[A-Z]{2})?$"),
        "formality": enum(["default", "more", "less"]),
    },
    ["text", "target_language"],
)
TOOLS["summarize_document"] = obj(
    {
        "document_id": string(),
        "max_words": integer(minimum=10, maximum=2000, default=200),
        "style": enum(["bullets", "paragraph", "tldr"]),
        "focus_topics": array(string(), maxItems=5),
    },
    ["document_id"],
)
TOOLS["generate_image"] = obj(
    {
        "prompt": string(maxLength=4000),
        "size": enum(["256x256", "512x512", "1024x1024", "1792x1024", "1024x1792"]),
        "n": integer(minimum=1, maximum=4, default=1),
        "style": enum(["vivid", "natural"]),
        "seed": integer(minimum=0, maximum=4294967295),
    },
    ["prompt"],
    strict=True,
)
TOOLS["set_thermostat"] = obj(
    {
        "device_id": string(),
        "target_temperature": number(minimum=5, maximum=35, multipleOf=0.5),
        "mode": enum(["heat", "cool", "auto", "off"]),
        "hold_until": string(format="date-time"),
    },
    ["device_id", "target_temperature"],
    strict=True,
)
TOOLS["control_lights"] = obj(
    {
        "room": enum(["living_room", "kitchen", "bedroom", "bathroom", "office", "garden"]),
        "action": enum(["on", "off", "toggle", "dim"]),
        "brightness": integer(minimum=0, maximum=100),
        "color": string(pattern="^#[0-9a-fA-F]{6}$"),
    },
    ["room", "action"],
    strict=True,
)
TOOLS["play_music"] = obj(
    {
        "query": string(),
        "type": enum(["track", "album", "artist", "playlist"]),
        "shuffle": boolean(),
        "volume": integer(minimum=0, maximum=100),
        "device": string(),
    },
    ["query"],
)
TOOLS["add_todo"] = obj(
    {
        "title": string(minLength=1),
        "due": string(format="date"),
        "priority": integer(minimum=1, maximum=4),
        "tags": array(string(), uniqueItems=True),
        "project": string(),
        "subtasks": array(obj({"title": string(), "done": boolean(default=False)}, ["title"])),
    },
    ["title"],
)
TOOLS["create_support_ticket"] = obj(
    {
        "customer_email": string(format="email"),
        "subject": string(),
        "description": string(minLength=20),
        "category": enum(["billing", "technical", "account", "shipping", "other"]),
        "severity": enum(["low", "medium", "high", "critical"]),
        "order_id": string(pattern="^[0-9]{6,12}$"),
    },
    ["customer_email", "subject", "description", "category"],
    strict=True,
)
TOOLS["track_package"] = obj(
    {
        "tracking_number": string(minLength=8, maxLength=40),
        "carrier": enum(["ups", "fedex", "usps", "dhl", "auto"], default="auto"),
    },
    ["tracking_number"],
)
TOOLS["get_directions"] = obj(
    {
        "origin": string(),
        "destination": string(),
        "waypoints": array(string(), maxItems=8),
        "mode": enum(["driving", "walking", "bicycling", "transit"], default="driving"),
        "avoid": array(enum(["tolls", "highways", "ferries"]), uniqueItems=True),
        "depart_at": string(format="date-time"),
    },
    ["origin", "destination"],
)
TOOLS["find_nearby_places"] = obj(
    {
        "location": obj(
            {"lat": number(minimum=-90, maximum=90), "lng": number(minimum=-180, maximum=180)},
            ["lat", "lng"],
            strict=True,
        ),
        "radius_m": integer(minimum=1, maximum=50000),
        "type": enum(["restaurant", "cafe", "pharmacy", "gas_station", "atm", "hotel"]),
        "open_now": boolean(),
        "min_rating": number(minimum=1, maximum=5),
    },
    ["location", "type"],
    strict=True,
)
TOOLS["query_vector_store"] = obj(
    {
        "collection": string(),
        "query_text": string(),
        "top_k": integer(minimum=1, maximum=100, default=10),
        "filter": obj(
            {
                "field": string(),
                "op": enum(["eq", "ne", "gt", "gte", "lt", "lte", "in"]),
                "value": {
                    "anyOf": [
                        {"type": "string"},
                        {"type": "number"},
                        {"type": "boolean"},
                        {"type": "array", "items": {"type": "string"}},
                    ]
                },
            },
            ["field", "op", "value"],
        ),
        "min_score": number(minimum=0, maximum=1),
    },
    ["collection", "query_text"],
)
TOOLS["update_crm_contact"] = obj(
    {
        "contact_id": string(),
        "fields": obj(
            {
                "first_name": string(),
                "last_name": string(),
                "email": string(format="email"),
                "phone": string(),
                "company": string(),
                "lifecycle_stage": enum(["lead", "prospect", "customer", "churned"]),
            },
            minProperties=1,
            additionalProperties=False,
        ),
    },
    ["contact_id", "fields"],
    strict=True,
)
TOOLS["schedule_social_post"] = obj(
    {
        "platforms": array(
            enum(["twitter", "linkedin", "facebook", "instagram", "mastodon"]), minItems=1, uniqueItems=True
        ),
        "text": string(maxLength=3000),
        "media_urls": array(string(format="uri"), maxItems=4),
        "publish_at": string(format="date-time"),
    },
    ["platforms", "text"],
    strict=True,
)
TOOLS["create_spreadsheet_chart"] = obj(
    {
        "sheet": string(),
        "range": string(pattern="^[A-Z]{1,3}[0-9]+:[A-Z]{1,3}[0-9]+$"),
        "chart_type": enum(["bar", "line", "pie", "scatter", "area"]),
        "title": string(),
        "axes": obj({"x_label": string(), "y_label": string(), "y_min": number(), "y_max": number()}),
    },
    ["sheet", "range", "chart_type"],
)
TOOLS["deploy_service"] = obj(
    {
        "service": string(pattern="^[a-z][a-z0-9-]{1,40}$"),
        "image": string(),
        "environment": enum(["dev", "staging", "prod"]),
        "replicas": integer(minimum=0, maximum=100),
        "env_vars": obj({}, additionalProperties={"type": "string"}),
        "resources": obj(
            {"cpu": string(pattern="^[0-9]+m?$"), "memory": string(pattern="^[0-9]+(Mi|Gi)$")}, strict=True
        ),
        "canary_percent": integer(minimum=0, maximum=100, multipleOf=5),
    },
    ["service", "image", "environment"],
    strict=True,
)
TOOLS["scale_kubernetes_deployment"] = strict_all(
    {"namespace": string(), "deployment": string(), "replicas": integer(minimum=0, maximum=1000)}
)
TOOLS["query_metrics"] = obj(
    {
        "promql": string("PromQL expression"),
        "start": string(format="date-time"),
        "end": string(format="date-time"),
        "step_seconds": integer(minimum=1, maximum=86400),
    },
    ["promql"],
)
TOOLS["extract_receipt"] = obj(
    {
        "merchant": string(),
        "date": string(format="date"),
        "total": number(minimum=0),
        "currency": string(pattern="^[A-Z]{3}$"),
        "line_items": array(
            obj({"name": string(), "quantity": number(minimum=0), "price": number()}, ["name", "price"])
        ),
        "payment_method": enum(["cash", "card", "other"]),
    },
    ["merchant", "total"],
)
TOOLS["answer_with_citations"] = obj(
    {
        "answer": string(),
        "citations": array(
            obj(
                {
                    "source_id": string(),
                    "quote": string(maxLength=500),
                    "page": {"type": ["integer", "null"], "minimum": 1},
                },
                ["source_id", "quote", "page"],
                strict=True,
            ),
            minItems=1,
        ),
        "confidence": enum(["low", "medium", "high"]),
    },
    ["answer", "citations", "confidence"],
    strict=True,
)
TOOLS["classify_intent"] = strict_all(
    {
        "intent": enum(["greeting", "question", "complaint", "purchase", "cancel", "other"]),
        "confidence": number(minimum=0, maximum=1),
        "entities": array(obj({"type": string(), "value": string()}, ["type", "value"], strict=True)),
    }
)
TOOLS["set_reminder"] = obj(
    {
        "message": string(),
        "at": string(format="date-time"),
        "repeat": {
            "oneOf": [
                {"type": "null"},
                enum(["daily", "weekdays", "weekly"]),
                obj({"every_minutes": integer(minimum=5)}, ["every_minutes"], strict=True),
            ]
        },
    },
    ["message", "at"],
)
TOOLS["manage_user_permissions"] = obj(
    {
        "user_id": string(),
        "grants": array(
            obj(
                {
                    "resource": string(pattern="^[a-z]+:[A-Za-z0-9_*/-]+$"),
                    "actions": array(
                        enum(["read", "write", "delete", "admin"]), minItems=1, uniqueItems=True
                    ),
                },
                ["resource", "actions"],
                strict=True,
            )
        ),
        "revoke_all_first": boolean(default=False),
    },
    ["user_id", "grants"],
    strict=True,
)
TOOLS["get_sports_scores"] = obj(
    {
        "league": enum(["nba", "nfl", "mlb", "nhl", "epl", "laliga", "bundesliga"]),
        "team": string(),
        "date": string(format="date"),
    },
    ["league"],
)
TOOLS["compute_statistics"] = obj(
    {
        "values": array(number(), minItems=1, maxItems=100000),
        "metrics": array(
            enum(["mean", "median", "stdev", "min", "max", "p90", "p99"]), minItems=1, uniqueItems=True
        ),
        "round_to": integer(minimum=0, maximum=10),
    },
    ["values", "metrics"],
    strict=True,
)


def main() -> None:
    entries = []
    for name in sorted(TOOLS):
        schema = TOOLS[name]
        problem = problems(schema)
        if problem:
            raise ValueError(f"{name}: {problem}")
        entries.append(
            {"name": "function_call." + name, "kind": "function_call", "source": SOURCE, "schema": schema}
        )
    write_jsonl(OUT, entries)
    print(f"wrote {len(entries)} schemas to {OUT}")


if __name__ == "__main__":
    main()
