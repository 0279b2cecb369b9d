"""Writes pydantic.jsonl: JSON schemas of everyday pydantic v2 models, one per line.

Run from anywhere: ``python tests/data/json_schemas/make_pydantic.py``. The output is deterministic
(models are listed in a fixed order and serialised with a fixed key order), so re-running it on the
same pydantic version leaves the file unchanged.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum, IntEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    UUID4,
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    IPvAnyAddress,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    conint,
    conlist,
    constr,
)
from typing_extensions import TypeAliasType

OUT = Path(__file__).with_name("pydantic.jsonl")
SOURCE = "pydantic model written for this corpus (tests/data/json_schemas/make_pydantic.py)"

# (kind, model) in output order; filled by the @corpus decorator
MODELS: list[tuple[str, type[BaseModel]]] = []


def corpus(kind: str = "pydantic"):
    def register(model: type[BaseModel]) -> type[BaseModel]:
        MODELS.append((kind, model))
        return model

    return register


Email = Annotated[str, Field(json_schema_extra={"format": "email"})]
Slug = constr(pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$", min_length=1, max_length=64)
CountryCode = constr(pattern=r"^[A-Z]{2}$")
Percent = conint(ge=0, le=100)


# --- everyday models: field constraints, nesting, defaults, descriptions -------------------------------


@corpus()
class UserProfile(BaseModel):
    """A user account as returned by a profile endpoint."""

    username: constr(pattern=r"^[a-zA-Z][a-zA-Z0-9_]{2,31}$")
    display_name: str = Field(min_length=1, max_length=80)
    age: conint(ge=13, le=120) | None = None
    email: Email
    bio: str | None = Field(default=None, max_length=500, description="Free text shown on the profile")
    tags: conlist(str, max_length=10) = []
    is_active: bool = True


class Dimensions(BaseModel):
    width_cm: PositiveFloat
    height_cm: PositiveFloat
    depth_cm: PositiveFloat


@corpus()
class Product(BaseModel):
    sku: constr(pattern=r"^[A-Z]{3}-\d{4,6}$")
    name: str = Field(min_length=1, max_length=200)
    price: float = Field(gt=0, description="Unit price in the given currency")
    currency: Literal["USD", "EUR", "GBP", "JPY"] = "USD"
    stock: NonNegativeInt = 0
    dimensions: Dimensions | None = None
    weight_kg: float = Field(default=1.0, ge=0.001, le=1000)
    categories: list[Slug] = Field(default_factory=list)


class Address(BaseModel):
    street: str
    city: str
    postal_code: constr(pattern=r"^[0-9A-Z -]{3,10}$")
    country: CountryCode
    latitude: float | None = Field(default=None, ge=-90, le=90)
    longitude: float | None = Field(default=None, ge=-180, le=180)


@corpus()
class Customer(BaseModel):
    id: PositiveInt
    full_name: str
    email: Email
    phone: constr(pattern=r"^\+?[1-9]\d{6,14}$") | None = None
    billing_address: Address
    shipping_addresses: list[Address] = Field(default_factory=list, max_length=5)
    loyalty_points: NonNegativeInt = 0


class OrderStatus(str, Enum):
    pending = "pending"
    paid = "paid"
    shipped = "shipped"
    delivered = "delivered"
    cancelled = "cancelled"


class OrderLine(BaseModel):
    sku: str
    quantity: conint(ge=1, le=999)
    unit_price: float = Field(ge=0, multiple_of=0.01)


@corpus()
class Order(BaseModel):
    order_id: constr(pattern=r"^ORD-[0-9]{8}$")
    customer_id: PositiveInt
    items: conlist(OrderLine, min_length=1, max_length=50)
    status: OrderStatus = OrderStatus.pending
    total: float = Field(ge=0, multiple_of=0.01)
    notes: str | None = None
    created_at: datetime


@corpus()
class Invoice(BaseModel):
    number: str = Field(pattern=r"^INV-\d{4}-\d{5}$")
    issue_date: date
    due_date: date
    lines: list[OrderLine]
    tax_rate: float = Field(ge=0, lt=1, description="Fraction, e.g. 0.2 for 20%")
    discount_percent: Percent = 0
    paid: bool = False


@corpus()
class Review(BaseModel):
    stars: conint(ge=1, le=5)
    title: str = Field(max_length=120)
    body: str = Field(min_length=10, max_length=5000)
    pros: list[str] = []
    cons: list[str] = []
    would_recommend: bool


class Genre(str, Enum):
    action = "action"
    comedy = "comedy"
    drama = "drama"
    horror = "horror"
    sci_fi = "sci-fi"
    documentary = "documentary"


class CastMember(BaseModel):
    actor: str
    character: str


@corpus()
class MovieInfo(BaseModel):
    title: str
    year: conint(ge=1888, le=2100)
    genres: conlist(Genre, min_length=1, max_length=3)
    runtime_minutes: PositiveInt
    director: str
    cast: list[CastMember] = Field(default_factory=list)
    rating: float | None = Field(default=None, ge=0, le=10)


class Ingredient(BaseModel):
    name: str
    quantity: float = Field(gt=0)
    unit: Literal["g", "kg", "ml", "l", "tsp", "tbsp", "cup", "piece"]


@corpus()
class Recipe(BaseModel):
    name: str
    servings: conint(ge=1, le=50) = 4
    ingredients: conlist(Ingredient, min_length=1)
    steps: conlist(str, min_length=1)
    prep_time: timedelta
    vegetarian: bool = False


class Wind(BaseModel):
    speed_kmh: float = Field(ge=0, le=500)
    direction_deg: conint(ge=0, lt=360)


@corpus()
class WeatherReport(BaseModel):
    location: str
    temperature_c: float = Field(ge=-90, le=60)
    humidity: Percent
    conditions: Literal["clear", "cloudy", "rain", "snow", "fog", "storm"]
    wind: Wind
    observed_at: datetime


@corpus()
class SentimentAnalysis(BaseModel):
    label: Literal["positive", "negative", "neutral", "mixed"]
    score: float = Field(ge=0.0, le=1.0)
    aspects: dict[str, float] = Field(default_factory=dict, description="aspect -> sentiment in [-1, 1]")


class EntityLabel(str, Enum):
    person = "PERSON"
    org = "ORG"
    location = "LOC"
    date = "DATE"
    money = "MONEY"
    misc = "MISC"


class Entity(BaseModel):
    text: str = Field(min_length=1)
    label: EntityLabel
    start: NonNegativeInt
    end: NonNegativeInt


@corpus()
class NamedEntities(BaseModel):
    entities: list[Entity]


@corpus()
class ExtractedContact(BaseModel):
    name: str
    email: Email | None = None
    phone: constr(pattern=r"^[0-9+()\- ]{7,20}$") | None = None
    company: str | None = None
    job_title: str | None = None


class Job(BaseModel):
    company: str
    title: str
    start: date
    end: date | None = None
    highlights: list[str] = []


class Education(BaseModel):
    institution: str
    degree: Literal["high_school", "bachelor", "master", "phd", "other"]
    graduation_year: conint(ge=1950, le=2035) | None = None


@corpus()
class Resume(BaseModel):
    name: str
    headline: str = Field(max_length=140)
    experience: list[Job]
    education: list[Education] = []
    skills: conlist(str, min_length=1, max_length=30)
    languages: dict[str, Literal["basic", "fluent", "native"]] = {}


class TLSConfig(BaseModel):
    cert_file: str
    key_file: str
    min_version: Literal["1.2", "1.3"] = "1.2"


@corpus()
class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: conint(ge=1, le=65535) = 8080
    workers: conint(ge=1, le=256) = 1
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    tls: TLSConfig | None = None
    timeouts: dict[str, float] = Field(default_factory=lambda: {"read": 30.0, "write": 30.0})


@corpus()
class DatabaseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dsn: str = Field(description="e.g. postgresql://user@host:5432/db")
    pool_size: conint(ge=1, le=100) = 10
    max_overflow: NonNegativeInt = 5
    statement_timeout_ms: conint(ge=0, multiple_of=100) = 0
    echo: bool = False


@corpus()
class FeatureFlags(BaseModel):
    flags: dict[str, bool]
    rollout_percent: conint(ge=0, le=100, multiple_of=5) = 0
    allowlist: set[str] = set()


class SearchHit(BaseModel):
    id: str
    title: str
    url: HttpUrl
    score: float = Field(ge=0)
    snippet: str | None = None


@corpus()
class SearchResults(BaseModel):
    query: str
    hits: list[SearchHit]
    total: NonNegativeInt
    page: PositiveInt = 1
    per_page: conint(ge=1, le=100) = 10


@corpus()
class Transaction(BaseModel):
    id: UUID
    amount: Decimal = Field(max_digits=12, decimal_places=2)
    currency: constr(pattern=r"^[A-Z]{3}$")
    direction: Literal["debit", "credit"]
    booked_at: datetime
    counterparty: str | None = None


@corpus()
class Pose(BaseModel):
    position: tuple[float, float, float]
    rotation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)
    label: str | None = None


@corpus()
class KeyValueRow(BaseModel):
    pair: tuple[str, int]
    rest: tuple[int, ...] = ()


@corpus()
class CalendarEvent(BaseModel):
    title: str = Field(min_length=1, max_length=200)
    start: datetime
    end: datetime
    all_day: bool = False
    attendees: list[Email] = []
    recurrence: Literal["daily", "weekly", "monthly", "yearly"] | None = None
    reminders_minutes: list[conint(ge=0, le=10080)] = [10]
    location: str | None = None


@corpus()
class StockQuote(BaseModel):
    symbol: constr(pattern=r"^[A-Z]{1,5}$")
    price: float = Field(gt=0)
    change_percent: float
    volume: NonNegativeInt
    timestamp: datetime


@corpus()
class SensorReading(BaseModel):
    device_id: UUID
    metric: Literal["temperature", "humidity", "pressure", "co2"]
    values: conlist(float, min_length=1, max_length=100)
    unit: str
    battery: Percent | None = None


@corpus()
class HttpRequestSpec(BaseModel):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    url: AnyUrl
    headers: dict[str, str] = {}
    query: dict[str, str | int | bool] = {}
    body: str | None = None
    timeout_s: float = Field(default=30.0, gt=0, le=300)


class Question(BaseModel):
    prompt: str
    options: conlist(str, min_length=2, max_length=6)
    answer_index: conint(ge=0, le=5)
    explanation: str | None = None


@corpus()
class Quiz(BaseModel):
    topic: str
    difficulty: Literal["easy", "medium", "hard"]
    questions: conlist(Question, min_length=1, max_length=20)


class ActionItem(BaseModel):
    owner: str
    task: str
    due: date | None = None


@corpus()
class MeetingNotes(BaseModel):
    title: str
    held_on: date
    attendees: list[str]
    summary: str = Field(max_length=2000)
    decisions: list[str] = []
    action_items: list[ActionItem] = []


@corpus()
class GitCommit(BaseModel):
    sha: constr(pattern=r"^[0-9a-f]{40}$")
    author: str
    author_email: Email
    message: str = Field(min_length=1)
    files_changed: list[str]
    additions: NonNegativeInt
    deletions: NonNegativeInt
    committed_at: datetime


@corpus()
class BankAccount(BaseModel):
    holder: str
    iban: constr(pattern=r"^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$")
    bic: constr(pattern=r"^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$") | None = None
    currency: constr(pattern=r"^[A-Z]{3}$") = "EUR"


@corpus()
class Person(BaseModel):
    """Camel-case aliases, titles and examples, as a JavaScript client would send them."""

    model_config = ConfigDict(populate_by_name=True)

    first_name: str = Field(alias="firstName", title="First name", examples=["Ada"])
    last_name: str = Field(alias="lastName", title="Last name", examples=["Lovelace"])
    birth_date: date | None = Field(default=None, alias="birthDate")
    nick: str | None = Field(default=None, deprecated=True)


@corpus()
class StrictSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", title="Strict settings")

    theme: Literal["light", "dark", "system"] = "system"
    font_size: conint(ge=8, le=72) = 14
    autosave_seconds: conint(ge=0, le=3600) = 60
    recent_files: conlist(str, max_length=20) = []


@corpus()
class Translation(BaseModel):
    source_lang: constr(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")
    target_lang: constr(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")
    source_text: str
    translated_text: str
    glossary: dict[str, str] = {}


@corpus()
class CodeReview(BaseModel):
    class ReviewComment(BaseModel):
        file: str
        line: PositiveInt
        severity: Literal["nit", "suggestion", "issue", "blocker"]
        message: str

    verdict: Literal["approve", "request_changes", "comment"]
    comments: list[ReviewComment]
    summary: str


@corpus()
class Inventory(BaseModel):
    warehouse: str
    counts: dict[str, NonNegativeInt]
    reorder_levels: dict[str, conint(ge=0, le=10000)] = {}
    last_audit: date | None = None


@corpus()
class JobPosting(BaseModel):
    title: str
    company: str
    remote: Literal["onsite", "hybrid", "remote"]
    salary_min: PositiveInt | None = None
    salary_max: PositiveInt | None = None
    currency: constr(pattern=r"^[A-Z]{3}$") = "USD"
    requirements: conlist(str, min_length=1, max_length=15)
    posted: date


@corpus()
class Flight(BaseModel):
    flight_number: constr(pattern=r"^[A-Z0-9]{2}\d{1,4}$")
    origin: constr(pattern=r"^[A-Z]{3}$")
    destination: constr(pattern=r"^[A-Z]{3}$")
    departure: datetime
    arrival: datetime
    seats_left: conint(ge=0, le=600)
    fare_class: Literal["economy", "premium_economy", "business", "first"]


@corpus()
class Matrix(BaseModel):
    rows: conint(ge=1, le=16)
    cols: conint(ge=1, le=16)
    data: list[list[float]]


@corpus()
class AnyPayload(BaseModel):
    kind: str
    payload: Any
    metadata: dict[str, Any] = {}


# --- enums ------------------------------------------------------------------------------------------------


class Priority(IntEnum):
    low = 1
    normal = 2
    high = 3
    urgent = 4


class TicketCategory(str, Enum):
    billing = "billing"
    bug = "bug"
    feature_request = "feature_request"
    account = "account"
    other = "other"


@corpus("enum")
class TicketTriage(BaseModel):
    priority: Priority
    category: TicketCategory
    status: Literal["open", "in_progress", "waiting", "closed"] = "open"
    needs_human: bool


class Color(Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Size(str, Enum):
    xs = "XS"
    s = "S"
    m = "M"
    l = "L"  # noqa: E741
    xl = "XL"


@corpus("enum")
class TShirt(BaseModel):
    color: Color = Color.blue
    size: Size
    quantity: conint(ge=1, le=20) = 1


class HttpStatus(IntEnum):
    ok = 200
    created = 201
    no_content = 204
    bad_request = 400
    unauthorized = 401
    not_found = 404
    internal_error = 500


@corpus("enum")
class ApiLogLine(BaseModel):
    status: HttpStatus
    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    latency_ms: float = Field(ge=0)


@corpus("enum")
class VersionedEnvelope(BaseModel):
    version: Literal["v1"] = "v1"
    kind: Literal["event"]
    flags: list[Literal["a", "b", "c"]] = []


@corpus("enum")
class MixedLiteral(BaseModel):
    value: Literal[1, 2, "auto", True, None]
    mode: Literal["fast", "slow"] | None = None


class Country(str, Enum):
    ar = "AR"
    au = "AU"
    br = "BR"
    ca = "CA"
    ch = "CH"
    cn = "CN"
    de = "DE"
    es = "ES"
    fr = "FR"
    gb = "GB"
    in_ = "IN"
    it = "IT"
    jp = "JP"
    kr = "KR"
    mx = "MX"
    nl = "NL"
    no = "NO"
    pl = "PL"
    se = "SE"
    us = "US"
    za = "ZA"


@corpus("enum")
class ShippingZone(BaseModel):
    name: str
    countries: conlist(Country, min_length=1)
    carrier: Literal["dhl", "ups", "fedex", "usps", "local"]


# --- formats ----------------------------------------------------------------------------------------------


@corpus("format")
class AuditLogEntry(BaseModel):
    id: UUID
    at: datetime
    day: date
    local_time: time
    duration: timedelta
    actor_email: Email
    client_ip: IPvAnyAddress
    resource_url: AnyUrl
    action: Literal["create", "read", "update", "delete"]


@corpus("format")
class FileUpload(BaseModel):
    filename: str
    path: Path
    content: bytes
    sha256: constr(pattern=r"^[0-9a-f]{64}$")
    size_bytes: NonNegativeInt
    uploaded_at: datetime


@corpus("format")
class NetworkInterface(BaseModel):
    name: str
    ipv4: IPv4Address
    ipv6: IPv6Address | None = None
    subnet: IPv4Network
    mtu: conint(ge=576, le=9216) = 1500


@corpus("format")
class Schedule(BaseModel):
    dates: list[date]
    opening: time
    closing: time
    timezone: str = "UTC"
    exceptions: dict[str, str] = {}


@corpus("format")
class ApiKeyRecord(BaseModel):
    key_id: UUID4
    owner_email: Email
    homepage: HttpUrl | None = None
    created: datetime
    expires: datetime | None = None
    scopes: list[Literal["read", "write", "admin"]]


@corpus("format")
class FormattedStrings(BaseModel):
    """str fields annotated with JSON schema formats directly (no extra validators installed)."""

    email: Email
    hostname: Annotated[str, Field(json_schema_extra={"format": "hostname"})]
    ipv4: Annotated[str, Field(json_schema_extra={"format": "ipv4"})]
    uri: Annotated[str, Field(json_schema_extra={"format": "uri"})]
    when: Annotated[str, Field(json_schema_extra={"format": "date-time"})]
    day: Annotated[str, Field(json_schema_extra={"format": "date"})]
    ident: Annotated[str, Field(json_schema_extra={"format": "uuid"})]


# --- unions -----------------------------------------------------------------------------------------------


class Cat(BaseModel):
    pet_type: Literal["cat"]
    meows: PositiveInt


class Dog(BaseModel):
    pet_type: Literal["dog"]
    barks: float
    good_boy: bool = True


class Lizard(BaseModel):
    pet_type: Literal["lizard"]
    scales: bool


@corpus("union")
class PetOwner(BaseModel):
    name: str
    pet: Cat | Dog | Lizard = Field(discriminator="pet_type")


class Circle(BaseModel):
    shape: Literal["circle"] = "circle"
    radius: PositiveFloat


class Rectangle(BaseModel):
    shape: Literal["rectangle"] = "rectangle"
    width: PositiveFloat
    height: PositiveFloat


class Polygon(BaseModel):
    shape: Literal["polygon"] = "polygon"
    points: conlist(tuple[float, float], min_length=3)


Shape = Annotated[Circle | Rectangle | Polygon, Field(discriminator="shape")]


@corpus("union")
class Drawing(BaseModel):
    title: str
    shapes: list[Shape]


class CardPayment(BaseModel):
    method: Literal["card"]
    last4: constr(pattern=r"^\d{4}$")
    expiry: constr(pattern=r"^(0[1-9]|1[0-2])/\d{2}$")


class BankTransfer(BaseModel):
    method: Literal["bank_transfer"]
    iban: str
    reference: str | None = None


class Wallet(BaseModel):
    method: Literal["wallet"]
    provider: Literal["apple_pay", "google_pay", "paypal"]


@corpus("union")
class Checkout(BaseModel):
    amount: float = Field(gt=0)
    payment: Annotated[CardPayment | BankTransfer | Wallet, Field(discriminator="method")]


@corpus("union")
class ScalarValue(BaseModel):
    value: int | float | str | bool | None
    unit: str | None = None


@corpus("union")
class OptionalNested(BaseModel):
    primary: Address
    secondary: Address | None = None
    history: list[Address | str] = []


class Click(BaseModel):
    type: Literal["click"]
    x: int
    y: int


class PageView(BaseModel):
    type: Literal["page_view"]
    url: str
    referrer: str | None = None


class Purchase(BaseModel):
    type: Literal["purchase"]
    order_id: str
    amount: float = Field(ge=0)


@corpus("union")
class EventBatch(BaseModel):
    session_id: UUID
    events: conlist(
        Annotated[Click | PageView | Purchase, Field(discriminator="type")], min_length=1, max_length=500
    )


class ToolSuccess(BaseModel):
    ok: Literal[True]
    result: dict[str, Any]


class ToolError(BaseModel):
    ok: Literal[False]
    error: str
    retryable: bool = False


@corpus("union")
class ToolOutcome(BaseModel):
    call_id: str
    outcome: ToolSuccess | ToolError


@corpus("union")
class ContainerUnion(BaseModel):
    data: dict[str, int] | list[int]
    tags: list[str] | str | None = None


# --- recursive models -------------------------------------------------------------------------------------


@corpus("recursive")
class Comment(BaseModel):
    """A thread of comments: each comment holds its replies."""

    id: PositiveInt
    author: str
    text: str = Field(min_length=1, max_length=10000)
    upvotes: NonNegativeInt = 0
    replies: list[Comment] = []


@corpus("recursive")
class LinkedListNode(BaseModel):
    value: int
    next: LinkedListNode | None = None


class FileNode(BaseModel):
    type: Literal["file"]
    name: str
    size_bytes: NonNegativeInt
    mime_type: str | None = None


class DirectoryNode(BaseModel):
    type: Literal["directory"]
    name: str
    children: list[Annotated[FileNode | DirectoryNode, Field(discriminator="type")]] = []


@corpus("recursive")
class FileSystem(BaseModel):
    root: DirectoryNode
    mounted_at: str = "/"


class NumberLit(BaseModel):
    node: Literal["number"]
    value: float


class Variable(BaseModel):
    node: Literal["variable"]
    name: constr(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class UnaryOp(BaseModel):
    node: Literal["unary"]
    op: Literal["-", "not"]
    operand: Expr


class BinaryOp(BaseModel):
    node: Literal["binary"]
    op: Literal["+", "-", "*", "/", "**", "==", "<", ">", "and", "or"]
    left: Expr
    right: Expr


class FunctionCall(BaseModel):
    node: Literal["call"]
    function: str
    args: list[Expr] = []


Expr = Annotated[NumberLit | Variable | UnaryOp | BinaryOp | FunctionCall, Field(discriminator="node")]


@corpus("recursive")
class ExpressionAST(BaseModel):
    source: str
    expr: Expr


JsonValue = TypeAliasType(
    "JsonValue", "dict[str, JsonValue] | list[JsonValue] | str | int | float | bool | None"
)


@corpus("recursive")
class JsonDocument(BaseModel):
    name: str
    content: JsonValue


@corpus("recursive")
class Employee(BaseModel):
    name: str
    title: str
    reports: list[Employee] = []
    manager_id: PositiveInt | None = None


class Block(BaseModel):
    kind: Literal["paragraph", "code", "quote", "subsection"]
    text: str | None = None
    subsection: Section | None = None


class Section(BaseModel):
    heading: str
    level: conint(ge=1, le=6)
    blocks: list[Block] = []


@corpus("recursive")
class Document(BaseModel):
    title: str
    sections: list[Section]


@corpus("recursive")
class BinaryTree(BaseModel):
    key: int
    left: BinaryTree | None = None
    right: BinaryTree | None = None


@corpus("recursive")
class MenuItem(BaseModel):
    label: str
    href: str | None = None
    shortcut: str | None = None
    submenu: conlist(MenuItem, max_length=12) | None = None


@corpus("recursive")
class HtmlElement(BaseModel):
    tag: constr(pattern=r"^[a-z][a-z0-9-]*$")
    attributes: dict[str, str] = {}
    children: list[HtmlElement | str] = []


def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def main() -> None:
    for _, model in MODELS:
        model.model_rebuild()
    lines = []
    for kind, model in MODELS:
        entry = {
            "name": f"pydantic.{snake(model.__name__)}",
            "kind": kind,
            "source": SOURCE,
            "schema": model.model_json_schema(),
        }
        lines.append(json.dumps(entry, separators=(",", ":"), ensure_ascii=False))
    lines.sort()
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} schemas to {OUT}")


if __name__ == "__main__":
    main()
