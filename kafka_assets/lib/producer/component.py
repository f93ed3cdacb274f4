"""The producer component: synthetic traffic from a generator function, as an asset."""

import dagster as dg

from kafka_assets.kafka.producer import build_producer_asset
from kafka_assets.spec import AssetOptions


class Producer(dg.Component, dg.Model, dg.Resolvable):
    """Fills topics with an idempotent producer; the messages come from `generator`."""

    generator: str
    """Dotted path to `fn(count, *, seed, start_time, malformed_fraction, late_fraction)`."""
    topics: list[str]
    """The topics it writes to; it needs them to exist."""
    asset: AssetOptions

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        if not self.asset.key:
            raise ValueError("producer: asset.key is required, e.g. kafka/shop_events")
        asset = build_producer_asset(
            key=dg.AssetKey.from_user_string(self.asset.key),
            generator_path=self.generator,
            topics=self.topics,
            deps=[dg.AssetKey(["kafka", t]) for t in self.topics],
            group=self.asset.group or "kafka",
            description=self.asset.description or f"Produces into {', '.join(self.topics)}.",
        )
        return dg.Definitions(assets=[asset])
