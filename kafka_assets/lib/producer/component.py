"""The producer component: synthetic traffic from a generator function, as an asset."""

from functools import cached_property

import dagster as dg

from kafka_assets.kafka.producer import build_producer_asset
from kafka_assets.lib.domain import domain_group
from kafka_assets.spec import AssetOptions


class Producer(dg.Component, dg.Model, dg.Resolvable):
    """Fills topics with an idempotent producer; the messages come from `generator`.

    It is drawn upstream of the topics it writes, and creates them as their pipelines declare
    them if they do not exist yet, so it can run first.
    """

    generator: str
    """Dotted path to `fn(count, *, seed, start_time, malformed_fraction, late_fraction)`."""
    topics: list[str]
    """The topics it writes to: each must be declared by a pipeline in the same project."""
    asset: AssetOptions

    @cached_property
    def key(self) -> dg.AssetKey:
        if not self.asset.key:
            raise ValueError("producer: asset.key is required, e.g. kafka/shop_events")
        return dg.AssetKey.from_user_string(self.asset.key)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from kafka_assets.lib.pipeline.component import KafkaPipeline

        declared = {
            p.topic.name: p.topic
            for p in context.component_tree.get_all_components(of_type=KafkaPipeline)
        }
        missing = [t for t in self.topics if t not in declared]
        if missing:
            raise ValueError(
                f"producer {self.key.to_user_string()}: topics {missing} are not declared by "
                f"any pipeline (declared: {sorted(declared)})"
            )
        asset = build_producer_asset(
            key=self.key,
            generator_path=self.generator,
            topics=[declared[t] for t in self.topics],
            group=self.asset.group or domain_group(context),
            description=self.asset.description or f"Produces into {', '.join(self.topics)}.",
        )
        return dg.Definitions(assets=[asset])
