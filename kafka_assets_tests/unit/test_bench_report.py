"""The bench report says what results.json holds: every ratio, every step, the machine."""

import json

from kafka_assets.bench.report import plot, readme_section, table

RESULTS = {
    "machine": {"cores": 2, "memory_gib": 24, "python": "3.11.7", "date": "2026-11-25"},
    "messages": 1_020_000,
    "message_bytes": 295,
    "partitions": 6,
    "e2e": {
        "dagster_s": 210.4,
        "rows_per_s": 4848,
        "copy_merge_rows": 1_009_800,
        "copy_merge_s": 5.1,
        "copy_merge_runs_s": [5.3, 5.1, 5.6],
        "copy_merge_rows_per_s": 198_000,
        "ratio_to_copy_merge": 0.024,
        "goal": ">= 0.5",
    },
    "overhead": {
        "plain_s": 190.0,
        "plain_runs_s": [185.0, 190.0, 195.0],
        "dagster_s": 210.4,
        "dagster_runs_s": [200.4, 220.4],
        "ratio": 1.107,
        "goal": "<= 1.15",
    },
    "steps": {
        "plain": {"spark/orders_events": 60.1, "warehouse/orders": 14.7},
        "dagster": {"spark/orders_events": 63.0, "warehouse/orders": 15.2},
    },
    "sensor_tick": {
        "topics": 10,
        "partitions": 120,
        "ticks": 60,
        "median_ms": 41.0,
        "p95_ms": 77.5,
        "median_requested_ms": 52.0,
        "median_skipped_ms": 30.0,
        "goal": "<= 100 ms",
    },
    "freshness": {
        "trickles": 20,
        "messages_each": 100,
        "p50_s": 61.2,
        "p95_s": 80.1,
        "max_s": 90.0,
        "warmup_s": [19.6, 12.1],
        "goal": "p50 <= 10 s, p95 <= 20 s",
    },
}


def test_the_table_carries_every_measured_ratio_and_step():
    text = table(json.loads(json.dumps(RESULTS)))
    assert "2 cores, 24 GiB" in text and "2026-11-25" in text
    assert "ratio 0.024" in text and "198,000 rows/s" in text
    assert "(fastest of 5.3 s, 5.1 s, 5.6 s, between the runs)" in text
    assert "ratio 1.107" in text and "plain 190.0 s" in text
    assert "Dagster 210.4 s (mean of 200.4 s, 220.4 s)" in text
    assert "(mean of 185.0 s, 190.0 s, 195.0 s, alternating)" in text
    assert "median 41.0 ms, p95 77.5 ms" in text
    assert "p50 61.2 s, p95 80.1 s" in text
    assert "after 2 uncounted warm-up trickles: 19.6 s, 12.1 s" in text
    assert "| spark/orders_events | 60.1 | 63.0 |" in text
    assert readme_section(RESULTS).endswith(text)


def test_a_run_without_freshness_leaves_that_row_out():
    assert "queryable" not in table({**RESULTS, "freshness": None})


def test_plots_are_written(tmp_path):
    made = plot(RESULTS, tmp_path)
    assert [p.name for p in made] == ["throughput.png", "steps.png"]
    assert all(p.stat().st_size > 1000 for p in made)


def test_backlog_flatness_leaves_out_the_short_last_batch():
    from kafka_assets.bench.backlog import flatness

    full = [{"input_rows": 1_000_000, "duration_ms": ms} for ms in (9000, 8000, 8000, 8000, 9000)]
    tail = [{"input_rows": 50, "duration_ms": 1000}]
    assert flatness(full + tail) == flatness(full) == round((1e6 / 9) / (1e6 / 9), 3)
    slower = full[:3] + [{"input_rows": 1_000_000, "duration_ms": 18000}]
    assert flatness(slower) == 0.5
    assert flatness([]) is None
