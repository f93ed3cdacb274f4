"""Kafka topics as assets, and the producer asset that fills them with the example shop stream."""

import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from kafka_assets.kafka.generator import GeneratorConfig, generate
from kafka_assets.kafka.resources import KafkaResource, TopicConfigError, TopicState


@dataclass(frozen=True)
class TopicSpec:
    """Defaults for one topic; a run can override them through `TopicConfig`."""

    name: str
    partitions: int
    replication_factor: int = 1
    retention_ms: int = 7 * 24 * 3600 * 1000
    cleanup_policy: str = "delete"

    @property
    def key(self) -> dg.AssetKey:
        return topic_key(self.name)


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("orders", partitions=6),
    TopicSpec("page_views", partitions=3),
)


def topic_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(["kafka", name])


class TopicConfig(dg.Config):
    """Leave a field unset to keep the project's default for the topic."""

    partitions: int | None = None
    replication_factor: int | None = None
    retention_ms: int | None = None
    cleanup_policy: str | None = None


def topic_metadata(state: TopicState) -> dict[str, dg.MetadataValue]:
    total = sum(state.end_offsets.values())
    return {
        "partitions": dg.MetadataValue.int(state.partitions),
        "replication_factor": dg.MetadataValue.int(state.replication_factor),
        "retention_ms": dg.MetadataValue.text(state.config.get("retention.ms", "")),
        "cleanup_policy": dg.MetadataValue.text(state.config.get("cleanup.policy", "")),
        "end_offsets": dg.MetadataValue.json(
            {str(p): o for p, o in sorted(state.end_offsets.items())}
        ),
        "messages_total": dg.MetadataValue.int(total),
    }


def build_topic_asset(spec: TopicSpec) -> dg.AssetsDefinition:
    @dg.asset(
        key=spec.key,
        group_name="kafka",
        kinds={"kafka"},
        description=f"Kafka topic `{spec.name}`: created or reconciled through the AdminClient.",
    )
    def _topic(context: dg.AssetExecutionContext, config: TopicConfig, kafka: KafkaResource):
        partitions = config.partitions or spec.partitions
        replication = config.replication_factor or spec.replication_factor
        topic_config = {
            "retention.ms": str(config.retention_ms or spec.retention_ms),
            "cleanup.policy": config.cleanup_policy or spec.cleanup_policy,
        }
        try:
            state = kafka.ensure_topic(spec.name, partitions, replication, topic_config)
        except TopicConfigError as exc:
            raise dg.Failure(description=str(exc)) from exc
        if state.created:
            context.log.info(f"created topic {spec.name} with {state.partitions} partitions")
        if state.partitions_added:
            context.log.info(f"added {state.partitions_added} partitions to {spec.name}")
        if state.config_changed:
            context.log.info(f"altered {spec.name} config: {state.config_changed}")
        return dg.MaterializeResult(
            metadata={
                **topic_metadata(state),
                "created": dg.MetadataValue.bool(state.created),
                "partitions_added": dg.MetadataValue.int(state.partitions_added),
            },
            data_version=offsets_version({spec.name: state.end_offsets}),
        )

    return _topic


def offsets_version(offsets: dict[str, dict[int, int]]) -> dg.DataVersion:
    """A data version that changes exactly when some partition's end offset changes."""
    canon = ";".join(f"{t}:{p}={o}" for t in sorted(offsets) for p, o in sorted(offsets[t].items()))
    return dg.DataVersion(hashlib.sha256(canon.encode()).hexdigest()[:20])


class ProduceConfig(dg.Config):
    count: int = 10_000
    """Messages to send, across both topics."""
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


def produce_events(kafka: KafkaResource, config: ProduceConfig, log=None) -> dict:
    """Send generated events, counting delivery reports: only acknowledged messages are sent."""
    topics = [t.name for t in TOPICS]
    seed = config.seed
    if seed is None:
        seed = sum(o for parts in kafka.end_offsets(topics).values() for o in parts.values())
    start = (
        datetime.fromisoformat(config.start_time.replace("Z", "+00:00"))
        if config.start_time
        else datetime.now(UTC).replace(microsecond=0)
    )
    gen_config = GeneratorConfig(
        seed=seed, malformed_fraction=config.malformed_fraction, late_fraction=config.late_fraction
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
    for message in generate(config.count, gen_config, start):
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
    if errors or remaining or total_acked != config.count:
        raise DeliveryError(
            f"{total_acked} of {config.count} messages acknowledged, {remaining} still queued, "
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


@dg.asset(
    key=dg.AssetKey(["kafka", "shop_events"]),
    group_name="kafka",
    kinds={"kafka", "python"},
    deps=[t.key for t in TOPICS],
    description=(
        "Produces the example shop stream (orders and page views, with late, out-of-order and "
        "malformed messages) into the topics, with an idempotent producer."
    ),
)
def shop_events(context: dg.AssetExecutionContext, config: ProduceConfig, kafka: KafkaResource):
    try:
        result = produce_events(kafka, config, context.log)
    except DeliveryError as exc:
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


topic_assets = [build_topic_asset(spec) for spec in TOPICS]
