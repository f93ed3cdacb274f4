"""Kafka topics as assets: created or reconciled through the AdminClient, described in metadata."""

import hashlib
from collections.abc import Sequence

import dagster as dg

from kafka_assets.kafka.resources import KafkaResource, TopicConfigError, TopicState
from kafka_assets.spec import TopicSpec

PARTITIONS_CHECK = "partitions_as_declared"


def topic_key(spec: TopicSpec) -> dg.AssetKey:
    if spec.asset.key:
        return dg.AssetKey.from_user_string(spec.asset.key)
    return dg.AssetKey(["kafka", spec.name])


def offsets_version(offsets: dict[str, dict[int, int]]) -> dg.DataVersion:
    """A data version that changes exactly when some partition's end offset changes."""
    canon = ";".join(f"{t}:{p}={o}" for t in sorted(offsets) for p, o in sorted(offsets[t].items()))
    return dg.DataVersion(hashlib.sha256(canon.encode()).hexdigest()[:20])


def topic_metadata(state: TopicState) -> dict[str, dg.MetadataValue]:
    return {
        "partitions": dg.MetadataValue.int(state.partitions),
        "replication_factor": dg.MetadataValue.int(state.replication_factor),
        "retention_ms": dg.MetadataValue.text(state.config.get("retention.ms", "")),
        "cleanup_policy": dg.MetadataValue.text(state.config.get("cleanup.policy", "")),
        "end_offsets": dg.MetadataValue.json(
            {str(p): o for p, o in sorted(state.end_offsets.items())}
        ),
        "messages_total": dg.MetadataValue.int(sum(state.end_offsets.values())),
    }


def build_topic_asset(
    spec: TopicSpec, group: str = "kafka", producers: Sequence[dg.AssetKey] = ()
) -> dg.AssetsDefinition:
    """The topic, drawn downstream of the producers that write to it.

    Materializing it creates or reconciles the topic and records its current end offsets, so its
    page always shows the offsets of the latest run; the offsets sensor includes it in each run.
    """
    key = topic_key(spec)

    @dg.asset(
        key=key,
        deps=list(producers),
        group_name=spec.asset.group or group,
        kinds=set(spec.asset.kinds or ["kafka"]),
        description=spec.asset.description
        or f"Kafka topic `{spec.name}`: created or reconciled through the AdminClient.",
        metadata={"kafka/topic": spec.name},
        check_specs=[
            dg.AssetCheckSpec(
                PARTITIONS_CHECK,
                asset=key,
                description=(
                    f"`{spec.name}` has the declared {spec.partitions} partitions; more (added "
                    "outside the project) are a warning, and the pipeline carries on."
                ),
            )
        ],
    )
    def _topic(context: dg.AssetExecutionContext, kafka: KafkaResource):
        try:
            state = kafka.ensure_topic(
                spec.name, spec.partitions, spec.replication_factor, spec.config()
            )
        except TopicConfigError as exc:
            raise dg.Failure(description=str(exc)) from exc
        if state.created:
            context.log.info(f"created topic {spec.name} with {state.partitions} partitions")
        if state.partitions_added:
            context.log.info(f"added {state.partitions_added} partitions to {spec.name}")
        if state.partitions_extra:
            context.log.warning(
                f"{spec.name} has {state.partitions} partitions, {state.partitions_extra} more "
                f"than the declared {spec.partitions}: kept, and reported"
            )
        if state.config_changed:
            context.log.info(f"altered {spec.name} config: {state.config_changed}")
        return dg.MaterializeResult(
            metadata={
                **topic_metadata(state),
                "partitions_declared": dg.MetadataValue.int(spec.partitions),
                "partitions_extra": dg.MetadataValue.int(state.partitions_extra),
                "created": dg.MetadataValue.bool(state.created),
                "partitions_added": dg.MetadataValue.int(state.partitions_added),
            },
            data_version=offsets_version({spec.name: state.end_offsets}),
            check_results=[
                dg.AssetCheckResult(
                    check_name=PARTITIONS_CHECK,
                    passed=state.partitions_extra == 0,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={
                        "partitions": state.partitions,
                        "declared": spec.partitions,
                        "extra": state.partitions_extra,
                    },
                )
            ],
        )

    return _topic
