//! Close-of-books for one day: N raw rows (default 10M) of which 5% are duplicates of another row's
//! key, deduplicated and published by `protolake::close_books::close_day`; then the same
//! deduplication as a polars query and as a DuckDB query over the same Parquet files (both from
//! PyPI, installed into the bench's Python if missing), each writing its result as Parquet.
//! DuckDB runs under the same memory budget (its memory_limit); polars has no such setting.
//!
//! cargo bench --bench close_books -- [--rows N] [--dup-permille 50] [--workers 1,2]
//! [--memory-limit-mib 2048] [--skip-peers 1]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use protolake::close_books::{close_day, CloseOptions};
use protolake::config::{
    CloseBooksConfig, DescriptorSource, EventTime, FlushPolicy, Framing, ParquetOptions, TableConfig,
};
use protolake::pipeline::{source_fields, EVENT_DATE};
use protolake::sink::{CommitInfo, TableWriter};

use common::{arg, cpu_seconds, flat_event, list_arg, peak_rss_mib, reset_peak_rss};

const BATCH: usize = 100_000;

fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let mut fields = vec![
        Field::new("ts", ts, true),
        Field::new("id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new("slot", DataType::Int32, false),
        Field::new("price", DataType::Float64, false),
        Field::new("viewable", DataType::Boolean, false),
        Field::new("country", DataType::Utf8, false),
    ];
    fields.extend(source_fields());
    fields.push(Field::new(EVENT_DATE, DataType::Date32, true));
    Arc::new(Schema::new(fields))
}

/// Rows `start..end` of the raw day: row i is event i, except that every row whose index is a
/// multiple of 1000/dup_permille (after the first block) repeats the key of an earlier event,
/// as a redelivery (same time) or a replay with a later time.
fn raw_batch(start: usize, end: usize, n: usize, every: usize) -> RecordBatch {
    let events: Vec<_> = (start..end)
        .map(|i| {
            if every > 0 && i >= every && i % every == 0 {
                let mut e = flat_event(i / 7, n);
                if i % 2 == 0 {
                    e.ts_ms += 1;
                }
                e
            } else {
                flat_event(i, n)
            }
        })
        .collect();
    let rows = events.len();
    let micros = |e: &common::FlatEvent| Some(e.ts_ms * 1000);
    let ts = |v: Vec<Option<i64>>| -> ArrayRef { Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) };
    let day = (events[0].ts_ms / 86_400_000) as i32;
    let columns: Vec<ArrayRef> = vec![
        ts(events.iter().map(micros).collect()),
        Arc::new(StringArray::from_iter_values(events.iter().map(|e| e.id.as_str()))),
        Arc::new(StringArray::from_iter_values(events.iter().map(|e| e.event_type.as_str()))),
        Arc::new(StringArray::from_iter_values(events.iter().map(|e| e.url.as_str()))),
        Arc::new(Int32Array::from_iter_values(events.iter().map(|e| e.slot))),
        Arc::new(Float64Array::from_iter_values(events.iter().map(|e| e.price))),
        Arc::new(BooleanArray::from(events.iter().map(|e| e.viewable).collect::<Vec<_>>())),
        Arc::new(StringArray::from_iter_values(events.iter().map(|e| e.country.as_str()))),
        Arc::new(StringArray::from(vec![Some("events"); rows])),
        Arc::new(Int32Array::from_iter_values((start..end).map(|i| (i % 6) as i32))),
        Arc::new(Int64Array::from_iter_values((start..end).map(|i| i as i64))),
        ts(events.iter().map(micros).collect()),
        Arc::new(StringArray::from(vec![None::<&str>; rows])),
        Arc::new(Int64Array::from(vec![None::<i64>; rows])),
        ts(vec![Some(1_763_769_600_000_000); rows]),
        Arc::new(Date32Array::from(vec![Some(day); rows])),
    ];
    RecordBatch::try_new(schema(), columns).expect("columns match the schema")
}

fn table_config(location: &str) -> TableConfig {
    TableConfig {
        name: "bench".into(),
        descriptor: DescriptorSource::DescriptorSet("unused".into()),
        message: "protolake.examples.v1.FlatEvent".into(),
        recursion_depth: None,
        contract_dir: None,
        location: location.into(),
        dlq_location: format!("{location}_dlq").into(),
        event_time: Some(EventTime { field: "ts".into(), unit: None }),
        key: vec!["id".into()],
        flush: FlushPolicy::default(),
        parquet: ParquetOptions::default(),
        max_record_bytes: 1 << 20,
        topic: None,
        framing: Framing::Raw,
        dlq_topic: None,
        checkpoint_interval: 100,
        final_location: format!("{location}_final").into(),
        // `--memory-limit-mib M`: close_books.memory_limit (default 2 GiB).
        close_books: CloseBooksConfig {
            memory_limit: arg("--memory-limit-mib", 2048) as u64 * 1024 * 1024,
            ..CloseBooksConfig::default()
        },
        zorder_by: Vec::new(),
        header_columns: Vec::new(),
    }
}

fn python() -> String {
    std::env::var("PROTOLAKE_PYTHON").unwrap_or_else(|_| {
        let venv = std::env::var("HOME").map(|h| format!("{h}/.cache/protolake/venv/bin/python")).unwrap_or_default();
        if std::path::Path::new(&venv).exists() {
            venv
        } else {
            "python3".into()
        }
    })
}

fn main() {
    // As the protolake binary does.
    protolake::allocator::tune();
    let n = arg("--rows", 10_000_000);
    let permille = arg("--dup-permille", 50);
    let every = 1000usize.checked_div(permille).unwrap_or(0);
    let work = tempfile::tempdir().expect("a temporary folder");
    let location = work.path().join("raw").display().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();

    let started = Instant::now();
    rt.block_on(async {
        let mut writer = TableWriter::open_or_create(
            &location.as_str().into(),
            schema(),
            vec![EVENT_DATE.into()],
            Default::default(),
            &ParquetOptions::default(),
            128 << 20,
        )
        .await
        .unwrap();
        for start in (0..n).step_by(BATCH) {
            writer.write(raw_batch(start, (start + BATCH).min(n), n, every)).await.unwrap();
        }
        writer.commit(Vec::new(), &CommitInfo { rows: n as u64, ..Default::default() }).await.unwrap();
    });
    let raw_bytes: u64 = walk(work.path().join("raw").as_path()).iter().map(|p| p.metadata().unwrap().len()).sum();
    println!(
        "raw day: {n} rows, {permille}‰ duplicates by key, {:.0} MiB of Parquet, written in {:.1} s",
        raw_bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );

    let table = table_config(&location);
    let date = chrono::NaiveDate::from_ymd_opt(2025, 11, 21).unwrap();
    let workers = list_arg("--workers", "1,2");
    let mut ours: Vec<(usize, f64)> = Vec::new();
    for &w in &workers {
        // Each run publishes into a final table of its own (a rerun into the same one would
        // find the day closed and do nothing).
        let table = TableConfig { final_location: format!("{location}_final_{w}").into(), ..table.clone() };
        let options = CloseOptions { date, force: true, now: chrono::Utc::now(), workers: w };
        reset_peak_rss();
        let cpu = cpu_seconds();
        let started = Instant::now();
        let report = rt.block_on(close_day(&table, &options, &|_| {})).expect("close-books runs");
        let wall = started.elapsed();
        let cpu = cpu_seconds() - cpu;
        assert_eq!(report.rows_read, n as u64, "the whole day is read and closed");
        println!(
            "protolake close-books, {w} worker(s): {:.2} M rows/s wall ({:.1} s), {:.2} M rows per CPU-second, peak RSS {:.0} MiB \
             (memory_limit {} MiB, {} round(s)); read {}, duplicates removed {}, published {}",
            n as f64 / wall.as_secs_f64() / 1e6,
            wall.as_secs_f64(),
            n as f64 / cpu / 1e6,
            peak_rss_mib(),
            table.close_books.memory_limit >> 20,
            report.rounds,
            report.rows_read,
            report.duplicates_removed,
            report.rows_published,
        );
        ours.push((w, wall.as_secs_f64()));
    }

    if arg("--skip-peers", 0) == 1 {
        return;
    }
    let py = python();
    for (module, package) in [("polars", "polars==2.1.0"), ("duckdb", "duckdb==2.0.0")] {
        let have = Command::new(&py).args(["-c", &format!("import {module}")]).status().is_ok_and(|s| s.success());
        if !have {
            println!("installing {package} from PyPI into {py}");
            let ok =
                Command::new(&py).args(["-m", "pip", "install", "-q", package]).status().is_ok_and(|s| s.success());
            if !ok {
                println!("could not install {package}; peers skipped");
                return;
            }
        }
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/close_books_peers.py");
    for engine in ["polars", "duckdb"] {
        let out_dir = work.path().join(format!("out-{engine}"));
        let started = Instant::now();
        let out = Command::new(&py)
            .args([
                script,
                engine,
                &format!("{location}/event_date={date}"),
                &out_dir.display().to_string(),
                // DuckDB gets the same memory budget as protolake.
                &(table.close_books.memory_limit >> 20).to_string(),
            ])
            .output()
            .expect("python runs");
        let wall = started.elapsed();
        if !out.status.success() {
            println!("{engine}: failed: {}", String::from_utf8_lossy(&out.stderr));
            continue;
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let fields: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
        println!(
            "{engine}: {:.2} M rows/s wall ({:.1} s incl. interpreter start), {:.2} M rows per CPU-second, \
             peak RSS {:.0} MiB; published {}",
            n as f64 / wall.as_secs_f64() / 1e6,
            wall.as_secs_f64(),
            n as f64 / fields["cpu_seconds"].as_f64().unwrap_or(f64::NAN) / 1e6,
            fields["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
            fields["rows"],
        );
        for (w, ours) in &ours {
            println!("  protolake with {w} worker(s) takes {:.2}x {engine}'s wall time", ours / wall.as_secs_f64());
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
