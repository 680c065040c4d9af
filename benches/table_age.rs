//! How long a table takes to open as it ages: a young table (10 commits), and tables of N
//! commits (default 3000, each one small append with a txn position, as the daemon makes them)
//! with a checkpoint every 100 commits and with none. Each open is timed several times and the
//! median reported; opening is what the daemon does at start-up and on every rebalance, and what
//! every reader does first.
//!
//! cargo bench --bench table_age -- [--commits 3000] [--uncheckpointed 1000] [--opens 7]
//!
//! (Without checkpoints every commit replays the whole log, so building that table grows with
//! the square of its length: it gets fewer commits by default.)

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use protolake::config::ParquetOptions;
use protolake::location::Location;
use protolake::sink::{open_table, CommitInfo, TableWriter};

use common::arg;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false), Field::new("n", DataType::Int64, false)]))
}

fn batch(commit: usize) -> RecordBatch {
    let ids: Vec<String> = (0..10).map(|i| format!("c{commit}-{i}")).collect();
    RecordBatch::try_new(
        schema(),
        vec![Arc::new(StringArray::from(ids)), Arc::new(Int64Array::from_iter_values((0..10).map(|i| i as i64)))],
    )
    .unwrap()
}

/// A table of `commits` appends, a checkpoint every `interval` commits.
async fn build(location: &Location, commits: usize, interval: u64) {
    let properties = [("delta.checkpointInterval".to_string(), interval.to_string())].into();
    let mut writer =
        TableWriter::open_or_create(location, schema(), Vec::new(), properties, &ParquetOptions::default(), 1 << 20)
            .await
            .unwrap();
    for c in 0..commits {
        writer.write(batch(c)).await.unwrap();
        let info = CommitInfo { operation: "bench".into(), rows: 10, ..Default::default() };
        writer.commit(vec![("protolake-kafka:bench:0".into(), c as i64)], &info).await.unwrap();
    }
}

/// Median time to open the table and read the daemon's position from it.
async fn open_time(location: &Location, opens: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..opens {
        let started = Instant::now();
        let table = open_table(location, None).await.unwrap().unwrap();
        let snapshot = table.snapshot().unwrap();
        let position =
            snapshot.transaction_version(table.log_store().as_ref(), "protolake-kafka:bench:0").await.unwrap();
        assert!(position.is_some());
        times.push(started.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let commits = arg("--commits", 3000);
    let uncheckpointed = arg("--uncheckpointed", 1000);
    let opens = arg("--opens", 7);
    let work = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let at = |name: &str| Location::new(work.path().join(name).display().to_string());
    let cases = [
        ("young (10 commits)", "young", 10, 100),
        ("aged, checkpoint every 100", "aged", commits, 100),
        ("aged, no checkpoint", "aged_no_checkpoint", uncheckpointed, 1_000_000),
    ];
    println!("table_age: {commits} commits, median of {opens} opens (open + read the txn position)");
    for (label, dir, n, interval) in cases {
        let location = at(dir);
        let started = Instant::now();
        rt.block_on(build(&location, n, interval));
        let built = started.elapsed();
        let open = rt.block_on(open_time(&location, opens));
        let checkpoints = std::fs::read_dir(work.path().join(dir).join("_delta_log"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".checkpoint."))
            .count();
        println!(
            "  {label:<28} {n:>5} commits ({checkpoints} checkpoints), built in {:>6.1} s: open {:>8.1} ms",
            built.as_secs_f64(),
            open.as_secs_f64() * 1000.0
        );
    }
}
