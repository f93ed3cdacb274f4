"""Local services on loopback: Apache Kafka (KRaft), PostgreSQL, and the jars Spark needs.

This is the development and CI path. In production the same settings point at real clusters
(see `.env.example`), and nothing in `kafka_assets.definitions` imports this package.
"""
