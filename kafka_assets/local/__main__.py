"""`python -m kafka_assets.local {jars,up,down,status}`: the local stack, on loopback."""

import argparse
import dataclasses
import sys

from kafka_assets.local.jars import ensure_jars
from kafka_assets.local.procs import ServiceError
from kafka_assets.local.services import LocalServices, write_env_file
from kafka_assets.local.spark_cluster import SPARK_KINDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kafka_assets.local", description=__doc__)
    parser.add_argument("command", choices=["jars", "up", "down", "status"])
    parser.add_argument(
        "--spark",
        choices=SPARK_KINDS,
        help="with `up`: also start a standalone Spark cluster or a Spark Connect server "
        "(default: KAFKA_ASSETS_SPARK, else local mode, which starts nothing)",
    )
    args = parser.parse_args(argv)
    services = LocalServices.from_env()
    if args.spark:
        services = dataclasses.replace(services, spark=args.spark)
    try:
        if args.command == "jars":
            ensure_jars(quiet=False)
            print("jars resolved into .local/jars")
        elif args.command == "up":
            endpoints = services.up()
            env = endpoints.as_env(services.environ)
            path = write_env_file(env)
            for name, seconds in endpoints.timings.items():
                print(f"  {name:<18} {seconds:6.1f}")
            print(f"Kafka      {endpoints.bootstrap_servers}")
            print(f"PostgreSQL {endpoints.warehouse_dsn}")
            print(f"Source PG  {endpoints.source_dsn} (CDC role {endpoints.source_cdc_user})")
            print(f"Connect    {endpoints.connect_url}")
            print(f"Spark      {env['SPARK_MASTER']}")
            print(f"Settings   {path} (dagster dev loads it)")
        elif args.command == "down":
            stopped = services.down()
            print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        else:
            for name, state in services.status().items():
                print(f"{name:<10} {state}")
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
