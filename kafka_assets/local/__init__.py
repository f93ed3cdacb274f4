"""Local services on loopback: Apache Kafka (KRaft), PostgreSQL, the legacy source PostgreSQL
and a Kafka Connect worker with Debezium for change data capture, and the jars they need.

This is the development and CI path. In production the same settings point at real clusters
(see `.env.example`), and nothing in `kafka_assets.definitions` imports this package.
"""
