"""kafka-assets: Kafka topics -> Spark Structured Streaming -> PostgreSQL, as Dagster assets."""
