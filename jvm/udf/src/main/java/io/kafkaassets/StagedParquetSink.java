package io.kafkaassets;

import org.apache.spark.rdd.RDD;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SQLContext;
import org.apache.spark.sql.catalyst.InternalRow;
import org.apache.spark.sql.classic.ClassicConversions$;
import org.apache.spark.sql.execution.LogicalRDD;
import org.apache.spark.sql.execution.LogicalRDD$;
import org.apache.spark.sql.execution.streaming.Sink;
import org.apache.spark.sql.sources.StreamSinkProvider;
import org.apache.spark.sql.streaming.OutputMode;

/**
 * A stream's micro-batches staged as Parquet, each in {@code <path>/batch=<id>}, overwritten when
 * Spark replays the batch: what the Python micro-batch writer does, in the JVM.
 *
 * <p>Over Spark Connect a Python {@code foreachBatch} starts a Python worker on the server for
 * every query (about 1.7 s before the first batch on a small machine); this sink starts none.
 */
public final class StagedParquetSink implements Sink {
  private final String path;

  StagedParquetSink(String path) {
    this.path = path;
  }

  @Override
  public void addBatch(long batchId, Dataset<Row> data) {
    // The batch's rows as a plain (not streaming) Dataset, as Spark's ForeachBatchSink does.
    RDD<InternalRow> rows = data.queryExecution().toRdd();
    LogicalRDD plan =
        LogicalRDD$.MODULE$.fromDataset(rows, ClassicConversions$.MODULE$.castToImpl(data), false);
    Dataset<Row> batch =
        org.apache.spark.sql.classic.Dataset$.MODULE$.ofRows(
            ClassicConversions$.MODULE$.castToImpl(data.sparkSession()), plan);
    // As STAGED_PARQUET in streams.py: no dictionaries, row groups of at most 32 MiB.
    batch
        .write()
        .mode("overwrite")
        .option("parquet.enable.dictionary", "false")
        .option("parquet.block.size", String.valueOf(32L << 20))
        .parquet(String.format("%s/batch=%012d", path, batchId));
  }

  @Override
  public String name() {
    return toString();
  }

  @Override
  public String toString() {
    return "StagedParquetSink[" + path + "]";
  }

  /** {@code writeStream.format("io.kafkaassets.StagedParquetSink$Provider").option("path", ...)}. */
  public static final class Provider implements StreamSinkProvider {
    @Override
    public Sink createSink(
        SQLContext context,
        scala.collection.immutable.Map<String, String> parameters,
        scala.collection.immutable.Seq<String> partitionColumns,
        OutputMode outputMode) {
      scala.Option<String> path = parameters.get("path");
      if (path.isEmpty()) {
        throw new IllegalArgumentException("StagedParquetSink needs option(\"path\", ...)");
      }
      return new StagedParquetSink(path.get());
    }
  }
}
