"""Component types for `defs.yaml` files: `kafka_assets.lib.KafkaPipeline`, `...Producer` and
`...CdcSource`."""

from kafka_assets.lib.cdc.component import CdcSource
from kafka_assets.lib.pipeline.component import KafkaPipeline
from kafka_assets.lib.producer.component import Producer

__all__ = ["CdcSource", "KafkaPipeline", "Producer"]
