"""Component types for `defs.yaml` files: `kafka_assets.lib.KafkaPipeline` and `...Producer`."""

from kafka_assets.lib.pipeline.component import KafkaPipeline
from kafka_assets.lib.producer.component import Producer

__all__ = ["KafkaPipeline", "Producer"]
