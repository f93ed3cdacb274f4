"""Producing into topics, as an asset: an idempotent producer that counts delivery reports.

The data comes from a generator function named in YAML (`kafka_assets.shop.generator.shop_stream`
for the example), so the producer is the same for any synthetic stream.
"""

import importlib
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Protocol

import dagster as dg

from kafka_assets.kafka.resources import KafkaResource, TopicConfigError
from kafka_assets.spec import TopicSpec


class Message(Protocol):
    topic: str
    key: bytes | None
    value: bytes
    malformed: bool


Generator = Callable[..., Iterable[Message]]
"""`fn(count, *, seed, start_time, malformed_fraction, late_fraction, already_sent)`: messages.
`already_sent` is how many messages the topics hold, so ids can continue where they stopped."""


class ProduceConfig(dg.Config):
    count: int = 10_000
    """Messages to send, across all the generator's topics."""
    rate_per_s: float = 0.0
    """Wall-clock pace; 0 sends as fast as the broker acknowledges."""
    seed: int | None = None
    """None derives the seed from the topics' end offsets: a rerun sends new, reproducible data."""
    malformed_fraction: float = 0.01
    late_fraction: float = 0.05
    start_time: str | None = None
    """ISO-8601 UTC base of event time; None means now."""


class DeliveryError(RuntimeError):
    """The broker did not acknowledge every message."""


def load_callable(path: str, what: str) -> Callable:
    """Import `package.module.attr`, failing with a message that names `what` and the path."""
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ValueError(f"{what} {path!r} must be a dotted path like `package.module.function`")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{what} {path!r} cannot be imported: {exc}") from exc
    if not callable(target):
        raise ValueError(f"{what} {path!r} is not callable")
    return target


def produce(
    kafka: KafkaResource,
    generator: Generator,
    topics: list[str],
    config: ProduceConfig,
    log=None,
) -> dict:
    """Send generated messages; only messages the broker acknowledged count as sent."""
    already_sent = sum(o for parts in kafka.end_offsets(topics).values() for o in parts.values())
    seed = already_sent if config.seed is None else config.seed
    start = (
        datetime.fromisoformat(config.start_time.replace("Z", "+00:00"))
        if config.start_time
        else datetime.now(UTC).replace(microsecond=0)
    )
    producer = kafka.producer()
    acked: dict[str, int] = {}
    malformed: dict[str, int] = {}
    errors: list[str] = []

    def on_delivery(err, msg) -> None:
        if err is not None:
            errors.append(f"{msg.topic()}: {err}")
        else:
            acked[msg.topic()] = acked.get(msg.topic(), 0) + 1

    began = time.monotonic()
    sent = 0
    messages = generator(
        config.count,
        seed=seed,
        start_time=start,
        malformed_fraction=config.malformed_fraction,
        late_fraction=config.late_fraction,
        already_sent=already_sent,
    )
    for message in messages:
        while True:
            try:
                producer.produce(message.topic, message.value, message.key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        if message.malformed:
            malformed[message.topic] = malformed.get(message.topic, 0) + 1
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
        if config.rate_per_s > 0:
            ahead = sent / config.rate_per_s - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
    remaining = producer.flush(60)
    elapsed = time.monotonic() - began
    total_acked = sum(acked.values())
    if errors or remaining or total_acked != sent:
        raise DeliveryError(
            f"{total_acked} of {sent} messages acknowledged, {remaining} still queued, "
            f"{len(errors)} delivery errors (first: {errors[:3]})"
        )
    if log:
        log.info(f"{total_acked} messages acknowledged in {elapsed:.1f}s")
    return {
        "seed": seed,
        "acked": acked,
        "malformed": malformed,
        "elapsed_s": elapsed,
        "start_time": start.isoformat(),
    }


def build_producer_asset(
    key: dg.AssetKey,
    generator_path: str,
    topics: list[TopicSpec],
    group: str,
    description: str,
) -> dg.AssetsDefinition:
    """The producer, upstream of its topics: it creates any that are missing, as declared."""
    generator = load_callable(generator_path, "generator")
    names = [t.name for t in topics]

    @dg.asset(
        key=key,
        group_name=group,
        kinds={"kafka", "python"},
        description=description,
        metadata={"kafka/generator": generator_path, "kafka/topics": ", ".join(names)},
    )
    def _producer(context: dg.AssetExecutionContext, config: ProduceConfig, kafka: KafkaResource):
        try:
            for spec in topics:
                kafka.ensure_topic(
                    spec.name, spec.partitions, spec.replication_factor, spec.config()
                )
            result = produce(kafka, generator, names, config, context.log)
        except (DeliveryError, TopicConfigError) as exc:
            raise dg.Failure(description=str(exc)) from exc
        total = sum(result["acked"].values())
        return dg.MaterializeResult(
            metadata={
                "messages_acked": dg.MetadataValue.int(total),
                "per_topic": dg.MetadataValue.json(result["acked"]),
                "malformed_sent": dg.MetadataValue.json(result["malformed"]),
                "seed": dg.MetadataValue.int(result["seed"]),
                "event_time_start": dg.MetadataValue.text(result["start_time"]),
                "duration_s": dg.MetadataValue.float(round(result["elapsed_s"], 3)),
                "messages_per_s": dg.MetadataValue.float(
                    round(total / result["elapsed_s"], 1) if result["elapsed_s"] else 0.0
                ),
            }
        )

    return _producer
