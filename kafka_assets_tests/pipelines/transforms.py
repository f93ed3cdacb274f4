"""A custom transform named from YAML, for what YAML cannot express (a derived column)."""

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def with_cents(df: DataFrame) -> DataFrame:
    return df.withColumn("amount_cents", (F.col("amount") * 100).cast("long"))
