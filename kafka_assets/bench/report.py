"""The benchmark's one table (printed, and in the README) and its plots, from results.json."""

from pathlib import Path


def rows(results: dict) -> list[tuple[str, str, str, str]]:
    """(figure, measured, baseline or ratio, goal) for every figure the run measured."""
    e2e, over, tick = results["e2e"], results["overhead"], results["sensor_tick"]
    out = [
        (
            f"Kafka -> PostgreSQL, {results['messages']:,} orders "
            f"({results['message_bytes']} B, {results['partitions']} partitions)",
            f"{e2e['rows_per_s']:,} msg/s ({e2e['dagster_s']} s)"
            + (f"; first, cold run {e2e['cold_plain_s']} s" if "cold_plain_s" in e2e else ""),
            f"COPY + merge {e2e['copy_merge_rows_per_s']:,} rows/s"
            + _runs_behind(e2e, "copy_merge_runs_s", "fastest of {}, between the runs")
            + f": ratio {e2e['ratio_to_copy_merge']}",
            f"ratio {e2e['goal']}",
        ),
        *(
            [
                (
                    "Kafka Connect instead: Debezium JDBC sink, the same rows",
                    f"{sink['rows_per_s']:,} rows/s ({sink['seconds']} s)",
                    f"pipeline / sink: ratio {sink['ratio_pipeline_to_sink']}",
                    "reported",
                )
            ]
            if (sink := results.get("connect_sink"))
            else []
        ),
        (
            "Dagster overhead (same streams and loads as a plain pyspark script)",
            f"Dagster {over['dagster_s']} s" + _runs_behind(over, "dagster_runs_s", "mean of {}"),
            f"plain {over['plain_s']} s"
            + _runs_behind(over, "plain_runs_s", "mean of {}, alternating")
            + f": ratio {over['ratio']}",
            f"ratio {over['goal']}",
        ),
        (
            f"Offsets sensor tick, {tick['topics']} topics x "
            f"{tick['partitions'] // tick['topics']} partitions",
            f"median {tick['median_ms']} ms, p95 {tick['p95_ms']} ms",
            f"requesting {tick['median_requested_ms']} ms, skipping {tick['median_skipped_ms']} ms",
            tick["goal"],
        ),
    ]
    fresh = results.get("freshness")
    if fresh:
        out.append(
            (
                f"Produce -> queryable under dagster-daemon, {fresh['trickles']} trickles of "
                f"{fresh['messages_each']}",
                f"p50 {fresh['p50_s']} s, p95 {fresh['p95_s']} s, max {fresh['max_s']} s",
                "offsets sensor, run queue and launcher, runs on a warm Spark Connect server"
                + (
                    f" (after {len(fresh['warmup_s'])} uncounted warm-up trickles: "
                    + ", ".join(f"{v} s" for v in fresh["warmup_s"])
                    + ")"
                    if fresh.get("warmup_s")
                    else ""
                ),
                fresh["goal"],
            )
        )
    backlog = results.get("backlog")
    if backlog:
        out.append(
            (
                f"Backlog of {backlog['messages']:,} messages in one run",
                f"{backlog['rows_per_s']:,} msg/s; peak RSS Python {backlog['peak_python_rss_mb']} "
                f"MB, JVM {backlog['peak_jvm_rss_mb']} MB",
                f"rate last/first third of {backlog['batches']} batches "
                f"{backlog['last_third_to_first_third']}; staging peak "
                f"{backlog['peak_staging_mb']} MB, after cleanup "
                f"{backlog['staging_after_cleanup_mb']} MB",
                "bounded RSS and disk, flat rate",
            )
        )
    return out


def _runs(seconds: list[float]) -> str:
    return ", ".join(f"{v} s" for v in seconds)


def _runs_behind(figures: dict, key: str, how: str) -> str:
    """' (mean of 1.0 s, 2.0 s)' and the like, when the results list the runs behind a figure."""
    return f" ({how.format(_runs(figures[key]))})" if key in figures else ""


def table(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"kafka-assets bench, {m['date']}: {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Python {m['python']}",
        "",
        "| figure | measured | against | goal |",
        "|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)]
    lines += ["", "| step | plain script (s) | Dagster (s) |", "|---|---|---|"]
    plain, dagster = results["steps"]["plain"], results["steps"]["dagster"]
    for step in plain:
        lines.append(f"| {step} | {plain[step]} | {dagster.get(step, '')} |")
    return "\n".join(lines)


def readme_section(results: dict) -> str:
    return (
        "Measured by `make bench` (it rewrites this section); every ratio compares two runs on "
        "the same machine, services and messages, one after the other.\n\n" + table(results)
    )


def plot(results: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    e2e, over = results["e2e"], results["overhead"]
    messages = results["messages"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels = ["Dagster run", "plain script", "COPY + merge"]
    values = [
        messages / over["dagster_s"],
        messages / over["plain_s"],
        e2e["copy_merge_rows_per_s"],
    ]
    ax.barh(labels, values, color=["#4f43dd", "#8a84e8", "#999999"])
    ax.set_xlabel("rows per second")
    ax.set_title(f"{messages:,} orders into PostgreSQL")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.0f}", va="center")
    fig.tight_layout()
    made.append(out_dir / "throughput.png")
    fig.savefig(made[-1], dpi=110)
    plt.close(fig)

    steps_plain, steps_dagster = results["steps"]["plain"], results["steps"]["dagster"]
    names = list(steps_plain)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ys = range(len(names))
    ax.barh([y + 0.2 for y in ys], [steps_plain[n] for n in names], height=0.4, label="plain")
    ax.barh(
        [y - 0.2 for y in ys], [steps_dagster.get(n, 0) for n in names], height=0.4, label="Dagster"
    )
    ax.set_yticks(list(ys), names)
    ax.set_xlabel("seconds")
    ax.legend()
    fig.tight_layout()
    made.append(out_dir / "steps.png")
    fig.savefig(made[-1], dpi=110)
    plt.close(fig)

    backlog = results.get("backlog")
    if backlog and backlog["batch_rows_per_s"]:
        fig, ax = plt.subplots(figsize=(7, 3))
        rates = backlog["batch_rows_per_s"]
        ax.plot(range(1, len(rates) + 1), rates, marker="o")
        ax.set_xlabel("micro-batch")
        ax.set_ylabel("rows per second")
        ax.set_ylim(bottom=0)
        ax.set_title(f"Backlog of {backlog['messages']:,}: rate per batch")
        fig.tight_layout()
        made.append(out_dir / "backlog.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    return made
