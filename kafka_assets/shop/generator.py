"""Deterministic generator of an online shop's event stream: orders and page views.

The producer asset, the demo and the tests all need the same realistic traffic: orders updated
several times under one key, late and out-of-order events, and a small share of broken messages
the pipeline has to quarantine. Everything derives from one seeded `random.Random`, so the same
(count, config, start_time) always yields the same bytes, and a shorter run is a prefix of a
longer one. The generator is lazy and keeps only open orders/sessions and held-back late messages,
so it streams millions of messages in bounded memory.

Time model: the stream clock starts at `start_time` and advances 1/events_per_second per message.
A message normally carries the clock's time (give or take a little queueing); a late one is held
back for 30 s .. 4.5 min of stream time and then emitted with its original, earlier event_time.
Meanwhile its order may move on, so e.g. a "paid" can arrive after its "shipped". Lateness is in
stream time, so late events appear only after the first 30 s of it, and late messages still held
back when `count` is reached are never emitted (as if still in flight).
"""

import heapq
import itertools
import json
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

ORDERS_TOPIC = "orders"
PAGE_VIEWS_TOPIC = "page_views"
ORDER_STATUSES = ("placed", "paid", "shipped", "cancelled")
CURRENCIES = ("EUR", "USD", "GBP")

MAX_OPEN = 10_000
"""Open orders (and, separately, sessions) kept at once; beyond it the oldest moves on early."""
MAX_LATE = 10_000
"""Late messages held back per topic; beyond it the earliest is released early."""
LATE_MS = (30_000, 270_000)
"""How long a late message is held back: with queueing it stays within 5 min of the clock."""

_N_SKUS = 200
_LIFECYCLES = (
    ("placed", "paid", "shipped"),
    ("placed", "cancelled"),
    ("placed", "paid"),  # never shipped: stays open for a consumer
    ("placed",),  # abandoned: stays open for a consumer
)
_LIFECYCLE_WEIGHTS = (65, 15, 10, 10)
_GAP_MS = {"paid": (2_000, 60_000), "shipped": (10_000, 180_000), "cancelled": (5_000, 120_000)}
_VIEW_GAP_MS = (1_000, 45_000)
_PAGES = ("/", "/cart", "/checkout", "/search", "/account", "/category/shoes", "/category/books")
_REFERRERS = (None, None, "https://www.google.com/", "https://www.bing.com/", "https://t.co/x")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four")


@dataclass(frozen=True)
class GeneratedMessage:
    topic: str
    key: bytes | None
    value: bytes
    malformed: bool
    """True when the generator deliberately broke the message."""


def _check_utc(name: str, value: datetime) -> None:
    if not isinstance(value, datetime) or value.utcoffset() != timedelta(0):
        raise ValueError(f"{name} must be a timezone-aware UTC datetime, got {value!r}")


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = 42
    malformed_fraction: float = 0.01
    """Share of all messages deliberately broken, 0.0 .. 1.0."""
    late_fraction: float = 0.05
    """Share of events whose event_time lies 30 s .. 5 min behind the stream's clock, 0.0 .. <1."""
    page_view_ratio: float = 1.0
    """page_views messages per orders message (0 = orders only)."""
    start_time: datetime | None = None
    """Timezone-aware UTC base of event time for callers to pass on; None: the caller picks one."""
    events_per_second: float = 50.0
    """Pace of event time (not wall clock): the stream clock advances 1/eps s per message."""
    first_id: int = 0
    """Order and session numbers continue after this one, so a later run adds new entities
    instead of reusing the ids of an earlier one (the producer passes the messages already sent,
    which bounds the entities created so far)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.malformed_fraction <= 1.0:
            raise ValueError(f"malformed_fraction must be in 0..1, got {self.malformed_fraction}")
        # At 1.0 every event would be held back and nothing would ever be on time to lag behind.
        if not 0.0 <= self.late_fraction < 1.0:
            raise ValueError(f"late_fraction must be in 0..<1, got {self.late_fraction}")
        if not (0.0 <= self.page_view_ratio and math.isfinite(self.page_view_ratio)):
            raise ValueError(f"page_view_ratio must be finite and >= 0, got {self.page_view_ratio}")
        if not (0.0 < self.events_per_second and math.isfinite(self.events_per_second)):
            raise ValueError(
                f"events_per_second must be finite and > 0, got {self.events_per_second}"
            )
        if self.start_time is not None:
            _check_utc("start_time", self.start_time)


def generate(
    count: int, config: GeneratorConfig, start_time: datetime
) -> Iterator[GeneratedMessage]:
    """Yield exactly `count` messages in total across both topics.

    Deterministic for (count, config, start_time). `start_time` is the event-time base;
    `config.start_time` is not consulted (callers pass it here). Arguments are checked now, not
    at the first `next()`, so mistakes surface at the call.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    _check_utc("start_time", start_time)
    return _stream(count, config, start_time)


def shop_stream(
    count: int,
    *,
    seed: int,
    start_time: datetime,
    malformed_fraction: float = 0.01,
    late_fraction: float = 0.05,
    already_sent: int = 0,
) -> Iterator[GeneratedMessage]:
    """The producer component's entry point (`generator:` in the producer's defs.yaml)."""
    config = GeneratorConfig(
        seed=seed,
        malformed_fraction=malformed_fraction,
        late_fraction=late_fraction,
        first_id=already_sent,
    )
    return generate(count, config, start_time)


def summarize(messages: Iterable[GeneratedMessage]) -> dict[str, dict[str, int]]:
    """{topic: {"messages": n, "malformed": m}}, both topics always present."""
    summary = {t: {"messages": 0, "malformed": 0} for t in (ORDERS_TOPIC, PAGE_VIEWS_TOPIC)}
    for message in messages:
        counts = summary.setdefault(message.topic, {"messages": 0, "malformed": 0})
        counts["messages"] += 1
        counts["malformed"] += message.malformed
    return summary


def _stream(count: int, config: GeneratorConfig, start: datetime) -> Iterator[GeneratedMessage]:
    ctx = _Context(config, start)
    orders, page_views = _Orders(ctx), _PageViews(ctx)
    # Picking the topic per message (not per order/session) keeps the split at the ratio even in
    # short runs where many lifecycles are still unfinished.
    page_view_share = config.page_view_ratio / (1.0 + config.page_view_ratio)
    for i in range(count):
        now = int(i * 1000 / config.events_per_second)
        topic = page_views if ctx.rng.random() < page_view_share else orders
        yield topic.next_message(now)


class _Context:
    """What both topics share: the one RNG (the whole stream follows from the seed), ids, time."""

    def __init__(self, config: GeneratorConfig, start: datetime):
        self.config = config
        self.rng = random.Random(config.seed)
        self.start = start.astimezone(UTC).replace(tzinfo=None)
        self.seq = itertools.count()  # heap tie-breaker, so entries never compare entities
        self.events = itertools.count()
        self.prices_cents = [self.rng.randint(150, 15_000) for _ in range(_N_SKUS)]

    def event_id(self) -> str:
        return f"e-{self.config.seed}-{next(self.events)}"

    def timestamp(self, ms: int) -> str:
        return (self.start + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds") + "Z"

    def render(
        self, topic: str, key: bytes, record: dict, kinds: tuple[str, ...]
    ) -> GeneratedMessage:
        if self.rng.random() >= self.config.malformed_fraction:
            return GeneratedMessage(topic, key, _dumps(record), False)
        broken_key, value = _MALFORMERS[self.rng.choice(kinds)](self.rng, topic, key, record)
        return GeneratedMessage(topic, broken_key, value, True)


@dataclass(slots=True)
class _Order:
    order_id: str
    fields: dict  # customer_id, items, amount, currency: fixed for the order's whole lifecycle
    statuses: tuple[str, ...]
    step: int = 0
    last_ms: int = 0


@dataclass(slots=True)
class _Session:
    session_id: str
    user_id: str | None
    views_left: int
    page: str | None = None
    last_ms: int = 0


class _Topic:
    """One topic's part of the stream: entities waiting for their next event, plus late messages.

    Each message slot emits, by preference: a held-back late message that is due, the next event
    of an open entity that is due (the oldest one if the pool is full), else the first event of a
    new entity. New entities thus only appear when nothing is due, so the pool size follows the
    event-time pace and lifecycle lengths, never the message count.
    """

    topic: str
    kinds: tuple[str, ...]  # the malformations that make sense for this topic

    def __init__(self, ctx: _Context):
        self.ctx = ctx
        self.open: list = []  # heap of (due_ms, seq, entity)
        self.late: list = []  # heap of (release_ms, seq, message)
        self.created = ctx.config.first_id

    def next_message(self, now: int) -> GeneratedMessage:
        ctx = self.ctx
        while True:
            if self.late and (self.late[0][0] <= now or len(self.late) >= MAX_LATE):
                return heapq.heappop(self.late)[2]
            if self.open and (self.open[0][0] <= now or len(self.open) >= MAX_OPEN):
                due, _, entity = heapq.heappop(self.open)
                t = max(min(due, now), entity.last_ms + 1)  # strictly after its previous event
            else:
                self.created += 1
                entity, t = self.create(), now
            entity.last_ms = t
            key, record, gap = self.advance(entity, t)
            if gap is not None:
                heapq.heappush(self.open, (t + gap, next(ctx.seq), entity))
            message = ctx.render(self.topic, key, record, self.kinds)
            if ctx.rng.random() >= ctx.config.late_fraction:
                return message
            heapq.heappush(self.late, (t + ctx.rng.randint(*LATE_MS), next(ctx.seq), message))

    def create(self):
        raise NotImplementedError

    def advance(self, entity, t: int) -> tuple[bytes, dict, int | None]:
        """Build the entity's next event at `t`; also return the gap to its next one, if any."""
        raise NotImplementedError


class _Orders(_Topic):
    topic = ORDERS_TOPIC
    kinds = ("truncated", "garbage", "missing_field", "wrong_type", "unknown_status", "bad_time")

    def create(self) -> _Order:
        rng, prices = self.ctx.rng, self.ctx.prices_cents
        items, cents = [], 0
        for sku in rng.sample(range(_N_SKUS), rng.randint(1, 4)):
            quantity = rng.randint(1, 4)
            cents += quantity * prices[sku]
            items.append(
                {"sku": f"sku-{sku + 1:03d}", "quantity": quantity, "unit_price": prices[sku] / 100}
            )
        fields = {
            "customer_id": f"c-{rng.randint(1, 5000):04d}",
            "items": items,
            "amount": round(cents / 100, 2),
            "currency": rng.choices(CURRENCIES, weights=(6, 3, 1))[0],
        }
        statuses = rng.choices(_LIFECYCLES, weights=_LIFECYCLE_WEIGHTS)[0]
        return _Order(f"o-{self.created:06d}", fields, statuses)

    def advance(self, order: _Order, t: int) -> tuple[bytes, dict, int | None]:
        ctx = self.ctx
        status = order.statuses[order.step]
        order.step += 1
        record = {
            "event_id": ctx.event_id(),
            "order_id": order.order_id,
            "status": status,
            **order.fields,
            "event_time": ctx.timestamp(t),
        }
        gap = None
        if order.step < len(order.statuses):
            gap = ctx.rng.randint(*_GAP_MS[order.statuses[order.step]])
        return order.order_id.encode(), record, gap


class _PageViews(_Topic):
    topic = PAGE_VIEWS_TOPIC
    kinds = ("truncated", "garbage", "missing_field", "wrong_type", "bad_time")

    def create(self) -> _Session:
        rng = self.ctx.rng
        user_id = f"u-{rng.randint(1, 5000):04d}" if rng.random() < 0.6 else None
        return _Session(f"s-{self.created:05d}", user_id, views_left=rng.randint(2, 8))

    def advance(self, session: _Session, t: int) -> tuple[bytes, dict, int | None]:
        ctx, rng = self.ctx, self.ctx.rng
        referrer = session.page if session.page else rng.choice(_REFERRERS)
        if session.page == "/cart" and rng.random() < 0.5:
            page = "/checkout"
        elif rng.random() < 0.5:
            page = f"/products/sku-{rng.randint(1, _N_SKUS):03d}"
        else:
            page = rng.choice(_PAGES)
        session.page = page
        session.views_left -= 1
        record = {
            "event_id": ctx.event_id(),
            "session_id": session.session_id,
            "user_id": session.user_id,
            "page": page,
            "referrer": referrer,
            "event_time": ctx.timestamp(t),
        }
        gap = rng.randint(*_VIEW_GAP_MS) if session.views_left else None
        return session.session_id.encode(), record, gap


def _dumps(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


# Each malformer turns a valid (key, record) into a broken (key, value) a consumer must reject.
_Malformer = Callable[[random.Random, str, bytes, dict], tuple[bytes | None, bytes]]


def _truncated(rng: random.Random, topic: str, key: bytes, record: dict):
    """Valid JSON cut short, as a crashed producer might leave it: never valid JSON itself."""
    body = _dumps(record)
    return key, body[: rng.randint(1, len(body) - 1)]


def _garbage(rng: random.Random, topic: str, key: bytes, record: dict):
    """Bytes that are not UTF-8 (0xC0 never is), without a key: a foreign or corrupt producer."""
    return None, b"\xc0" + bytes(rng.randint(0x80, 0xFF) for _ in range(rng.randint(3, 40)))


def _missing_field(rng: random.Random, topic: str, key: bytes, record: dict):
    name = rng.choice(("order_id" if topic == ORDERS_TOPIC else "session_id", "event_time"))
    broken = dict(record)
    if rng.random() < 0.5:
        del broken[name]
    else:
        broken[name] = None
    return key, _dumps(broken)


def _wrong_type(rng: random.Random, topic: str, key: bytes, record: dict):
    broken = dict(record)
    if topic == PAGE_VIEWS_TOPIC:
        broken["user_id"] = rng.randint(1, 5000)
    elif rng.random() < 0.5:
        broken["amount"] = f"{record['amount']:.2f}".replace(".", ",")
    else:
        first, *rest = record["items"]
        broken["items"] = [{**first, "quantity": _NUMBER_WORDS[first["quantity"]]}, *rest]
    return key, _dumps(broken)


def _unknown_status(rng: random.Random, topic: str, key: bytes, record: dict):
    return key, _dumps({**record, "status": rng.choice(("refunded?", "lost"))})


def _bad_time(rng: random.Random, topic: str, key: bytes, record: dict):
    bad = rng.choice(("yesterday", "24/11/2026 19:20", "not a time"))
    return key, _dumps({**record, "event_time": bad})


_MALFORMERS: dict[str, _Malformer] = {
    "truncated": _truncated,
    "garbage": _garbage,
    "missing_field": _missing_field,
    "wrong_type": _wrong_type,
    "unknown_status": _unknown_status,
    "bad_time": _bad_time,
}
