//! Backfill benchmark: N flat 8-field ~150-byte events in a varint-delimited file → a local Delta
//! table (zstd level 1), through the same code path as `protolake backfill`.
//!
//! Run: `cargo bench --bench backfill` (options: `-- --records N`, default 10,000,000;
//! `--workers 1,2` the worker counts compared, each run in a process of its own, `--pairs 3`
//! interleaved rounds of them;
//! `--plain id,url` to write those columns without dictionary encoding; `--input FILE` keeps the
//! generated events in FILE and reuses them on the next run; `--parts 0` skips the timing of
//! decode and Parquet alone; `--yardstick` runs only the yardstick: the records framed, decoded
//! and their 8 payload columns Parquet-encoded to memory, no table; timed as a whole process
//! in turn with a backfill, it gives a ratio that the machine's drift does not move).
//! Prints each run's rows/s, rows per CPU-second and peak RSS, then the medians: the wall-clock
//! ratio to the first worker count and the per-CPU ratio to the yardstick.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use prost::Message;
use protolake::backfill::{self, BackfillSpec, NoProgress};
use protolake::config::{EventTime, FlushPolicy, ParquetOptions, TimeUnit};
use protolake::decode::{DecodeOptions, Decoder, Pool};
use protolake::source::file::write_delimited;

mod common;

use common::{arg, cpu_seconds, flat_event, list_arg, peak_rss_mib};

fn dir_size(p: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(p) else { return 0 };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                dir_size(&path)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

fn main() {
    // As the protolake binary does.
    protolake::allocator::tune();
    let n = arg("--records", 10_000_000);
    let work = tempfile::tempdir().expect("temp dir");
    // `--input FILE` keeps the generated events in FILE and reuses them when it exists.
    let input = input_path().unwrap_or_else(|| work.path().join("events.pb"));
    if !input.exists() {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&input).unwrap());
        for i in 0..n {
            let e = flat_event(i, n);
            write_delimited(&mut out, &e.encode_to_vec()).unwrap();
        }
        out.flush().unwrap();
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let fds = protox::compile(["protolake/examples/v1/events.proto"], [dir]).expect("proto compiles");
    let pool = Pool::from_prost(&fds).unwrap();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--yardstick") {
        let (decode_cpu, parquet_cpu, out_bytes) = yardstick(&pool, &input, n);
        println!(
            "yardstick: {n} flat events framed, decoded and Parquet-encoded (8 payload columns, zstd 1) to memory:"
        );
        println!(
            "  {:.2} M rows per CPU-second ({:.0} ns/row decoding, {:.0} ns/row Parquet), {:.1} bytes/row",
            n as f64 / (decode_cpu + parquet_cpu) / 1e6,
            decode_cpu / n as f64 * 1e9,
            parquet_cpu / n as f64 * 1e9,
            out_bytes as f64 / n as f64
        );
        println!("  peak RSS {:.0} MiB", peak_rss_mib());
        println!("RESULT {n} 0 {} {}", decode_cpu + parquet_cpu, peak_rss_mib());
        return;
    }
    if let Some(workers) = args.iter().position(|a| a == "--one").and_then(|i| args.get(i + 1)) {
        one_backfill(&pool, &input, n, workers.parse().expect("--one N"), work.path());
        return;
    }
    // The whole runs, each in a process of its own (its own CPU clock and peak RSS), the worker
    // counts interleaved so that the machine's drift moves them alike.
    let workers = list_arg("--workers", "1,2");
    let pairs = arg("--pairs", 3);
    let input_bytes = std::fs::metadata(&input).unwrap().len();
    println!(
        "backfill of {n} flat events ({:.0} bytes each on the wire, zstd level 1), {pairs} interleaved rounds of {workers:?} workers:",
        input_bytes as f64 / n as f64
    );
    let yard = child(&input, n, &["--yardstick"]);
    let yard_rate = n as f64 / yard.cpu;
    println!("  yardstick (decode + Parquet of the payload, one thread): {:.2} M rows per CPU-second", yard_rate / 1e6);
    let mut runs: BTreeMap<usize, Vec<Measured>> = BTreeMap::new();
    for _ in 0..pairs {
        for &w in &workers {
            let m = child(&input, n, &["--one", &w.to_string()]);
            println!(
                "  {w} worker(s): wall {:.2} s, CPU {:.2} s ({:.2} cores busy), {:.2} M rows/s, {:.2} M rows per CPU-second, peak RSS {:.0} MiB",
                m.wall,
                m.cpu,
                m.cpu / m.wall,
                n as f64 / m.wall / 1e6,
                n as f64 / m.cpu / 1e6,
                m.rss
            );
            runs.entry(w).or_default().push(m);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = workers.first().copied().unwrap_or(1);
    let base_rate = n as f64 / median(&mut runs[&base].iter().map(|m| m.wall).collect());
    println!("medians:");
    for (w, ms) in &runs {
        let wall = median(&mut ms.iter().map(|m| m.wall).collect());
        let cpu = median(&mut ms.iter().map(|m| m.cpu).collect());
        let rss = median(&mut ms.iter().map(|m| m.rss).collect());
        println!(
            "  {w} worker(s): {:.2} M rows/s wall ({:.2}x of {base}), {:.2} M rows per CPU-second ({:.2} of the yardstick), peak RSS {rss:.0} MiB",
            n as f64 / wall / 1e6,
            n as f64 / wall / base_rate,
            n as f64 / cpu / 1e6,
            n as f64 / cpu / yard_rate
        );
    }
    if arg("--parts", 1) == 1 {
        components(&pool, &input, n);
    }
}

/// What a child process measured.
struct Measured {
    wall: f64,
    cpu: f64,
    rss: f64,
}

/// Runs this bench again as a child on `input` with `extra` arguments; its RESULT line.
fn child(input: &Path, n: usize, extra: &[&str]) -> Measured {
    let exe = std::env::current_exe().expect("the bench binary");
    let mut args = vec!["--input".to_string(), input.display().to_string(), "--records".into(), n.to_string()];
    let all: Vec<String> = std::env::args().collect();
    if let Some(i) = all.iter().position(|a| a == "--plain") {
        args.extend(all[i..].iter().take(2).cloned());
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let out = std::process::Command::new(exe).args(&args).output().expect("the bench runs itself");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find_map(|l| l.strip_prefix("RESULT ")).expect("a RESULT line");
    let f: Vec<f64> = line.split_whitespace().map(|v| v.parse().unwrap()).collect();
    Measured { wall: f[1], cpu: f[2], rss: f[3] }
}

/// One backfill of `input` with `workers` into a new table under `work`; prints its RESULT.
fn one_backfill(pool: &Pool, input: &Path, n: usize, workers: usize, work: &Path) {
    let decoder = Decoder::new(pool, "protolake.examples.v1.FlatEvent", &DecodeOptions::default()).unwrap();
    let location = work.join("table").display().to_string();
    let spec = BackfillSpec {
        decoder,
        validator: None,
        contract: None,
        location: location.as_str().into(),
        dlq_location: format!("{location}_dlq").into(),
        event_time: Some(EventTime { field: "ts_ms".into(), unit: Some(TimeUnit::Milliseconds) }),
        flush: FlushPolicy::default(),
        parquet: ParquetOptions { zstd_level: 1, plain_columns: plain_columns(), ..ParquetOptions::default() },
        max_record_bytes: 1 << 20,
        header_columns: Vec::new(),
        inputs: vec![input.to_path_buf()],
        workers,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let report = runtime.block_on(backfill::run(spec, &NoProgress)).expect("backfill");
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    assert_eq!(report.rows, n as u64);
    let out_bytes = dir_size(Path::new(&location));
    println!(
        "  output {:.1} MB, {:.1} bytes/row, {} commits",
        out_bytes as f64 / 1e6,
        out_bytes as f64 / n as f64,
        report.commits
    );
    println!("RESULT {n} {secs} {cpu} {}", peak_rss_mib());
}

/// Where the time goes: the same records framed and decoded alone, and the decoded payload
/// columns Parquet-encoded alone (zstd 1, page statistics, to memory), each on this thread's CPU
/// clock. Their sum is the floor of a backfill that adds nothing between them.
fn components(pool: &Pool, input: &Path, n: usize) {
    let (decode_cpu, parquet_cpu, out_bytes) = yardstick(pool, input, n);
    let (pipeline_cpu, table_parquet_cpu) = pipeline_and_table_parquet(pool, input, n);
    println!("the same records, each step alone on one thread:");
    println!(
        "  frame + decode: {:.0} ns/row ({:.2} M rows per CPU-second)",
        decode_cpu / n as f64 * 1e9,
        n as f64 / decode_cpu / 1e6
    );
    println!(
        "  Parquet (8 payload columns, zstd 1, page statistics, to memory): {:.0} ns/row ({:.2} M rows per CPU-second), {:.1} bytes/row",
        parquet_cpu / n as f64 * 1e9,
        n as f64 / parquet_cpu / 1e6,
        out_bytes as f64 / n as f64
    );
    println!("  together: {:.2} M rows per CPU-second", n as f64 / (decode_cpu + parquet_cpu) / 1e6);
    println!(
        "  frame + decode + rules + metadata columns (the pipeline's batches): {:.0} ns/row",
        pipeline_cpu / n as f64 * 1e9
    );
    println!(
        "  Parquet of those batches (the table's 15 file columns, protolake's settings): {:.0} ns/row",
        table_parquet_cpu / n as f64 * 1e9
    );
}

/// The yardstick: the records framed and decoded, and the 8 payload columns Parquet-encoded
/// (zstd 1, page statistics) to memory. CPU seconds of each step on this thread, output bytes.
fn yardstick(pool: &Pool, input: &Path, n: usize) -> (f64, f64, usize) {
    use protolake::source::file::DelimitedReader;
    let mut decoder = Decoder::new(pool, "protolake.examples.v1.FlatEvent", &DecodeOptions::default()).unwrap();
    let file = std::fs::File::open(input).unwrap();
    let mut reader = DelimitedReader::new(std::io::BufReader::with_capacity(1 << 20, file), 1 << 20);
    let properties = deltalake::parquet::file::properties::WriterProperties::builder()
        .set_compression(deltalake::parquet::basic::Compression::ZSTD(
            deltalake::parquet::basic::ZstdLevel::try_new(1).unwrap(),
        ))
        .set_statistics_enabled(deltalake::parquet::file::properties::EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(1_048_576))
        .build();
    let mut writer: Option<deltalake::parquet::arrow::ArrowWriter<Vec<u8>>> = None;
    let (mut decode_cpu, mut parquet_cpu, mut out_bytes, mut rows) = (0.0, 0.0, 0usize, 0usize);
    loop {
        let t = thread_cpu_seconds();
        next_records(&mut reader, |_, bytes| decoder.decode(bytes).unwrap());
        let batch = decoder.flush().unwrap();
        decode_cpu += thread_cpu_seconds() - t;
        if batch.num_rows() == 0 {
            break;
        }
        rows += batch.num_rows();
        let t = thread_cpu_seconds();
        let w = writer.get_or_insert_with(|| {
            deltalake::parquet::arrow::ArrowWriter::try_new(Vec::new(), batch.schema(), Some(properties.clone()))
                .unwrap()
        });
        w.write(&batch).unwrap();
        if w.in_progress_rows() == 0 || w.bytes_written() > 128 << 20 {
            out_bytes += std::mem::take(writer.as_mut().unwrap().inner_mut()).len();
        }
        parquet_cpu += thread_cpu_seconds() - t;
    }
    let t = thread_cpu_seconds();
    if let Some(w) = writer {
        out_bytes += w.into_inner().unwrap().len();
    }
    parquet_cpu += thread_cpu_seconds() - t;
    assert_eq!(rows, n);
    (decode_cpu, parquet_cpu, out_bytes)
}

/// The pipeline's own batches (payload, metadata columns, event date) and their Parquet encoding
/// (without the partition column), each on this thread's CPU clock.
fn pipeline_and_table_parquet(pool: &Pool, input: &Path, n: usize) -> (f64, f64) {
    use protolake::pipeline::TablePipeline;
    use protolake::source::file::DelimitedReader;
    use protolake::source::Coordinates;
    let decoder = Decoder::new(pool, "protolake.examples.v1.FlatEvent", &DecodeOptions::default()).unwrap();
    let et = EventTime { field: "ts_ms".into(), unit: Some(TimeUnit::Milliseconds) };
    let mut pipeline = TablePipeline::new(decoder, None, Some(&et), 1 << 20).unwrap();
    let file = std::fs::File::open(input).unwrap();
    let name: std::sync::Arc<str> = input.display().to_string().into();
    let mut reader = DelimitedReader::new(std::io::BufReader::with_capacity(1 << 20, file), 1 << 20);
    let mut writer: Option<deltalake::parquet::arrow::ArrowWriter<std::io::Sink>> = None;
    let (mut pipeline_cpu, mut parquet_cpu, mut rows) = (0.0, 0.0, 0);
    loop {
        let t = thread_cpu_seconds();
        next_records(&mut reader, |index, bytes| {
            pipeline.push(bytes, &Coordinates::File { path: name.clone(), index })
        });
        let (batch, _) = pipeline.take(0).unwrap();
        pipeline_cpu += thread_cpu_seconds() - t;
        let Some(batch) = batch else { break };
        rows += batch.num_rows();
        let t = thread_cpu_seconds();
        let file_columns: Vec<usize> =
            (0..batch.num_columns()).filter(|&i| batch.schema().field(i).name() != "event_date").collect();
        let batch = batch.project(&file_columns).unwrap();
        writer
            .get_or_insert_with(|| {
                // protolake's own settings for its tables.
                let options = ParquetOptions { zstd_level: 1, ..ParquetOptions::default() }.with_event_time(Some(&et));
                let properties = protolake::sink::parquet_properties_for(&options, &batch.schema());
                deltalake::parquet::arrow::ArrowWriter::try_new(std::io::sink(), batch.schema(), Some(properties))
                    .unwrap()
            })
            .write(&batch)
            .unwrap();
        parquet_cpu += thread_cpu_seconds() - t;
    }
    let t = thread_cpu_seconds();
    if let Some(w) = writer {
        w.close().unwrap();
    }
    parquet_cpu += thread_cpu_seconds() - t;
    assert_eq!(rows, n);
    (pipeline_cpu, parquet_cpu)
}

/// Hands the next batch of records (65,536 or what is left) to `take`.
fn next_records<R: std::io::BufRead>(
    reader: &mut protolake::source::file::DelimitedReader<R>,
    mut take: impl FnMut(u64, &[u8]),
) {
    use protolake::source::file::Frame;
    for _ in 0..65_536 {
        match reader.next_frame().unwrap() {
            Some((index, Frame::Record(bytes))) => take(index, bytes),
            Some(_) => unreachable!("the generated file holds whole records"),
            None => break,
        }
    }
}

/// CPU time of the calling thread.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec to the pointer it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn input_path() -> Option<std::path::PathBuf> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == "--input").and_then(|i| args.get(i + 1)).map(Into::into)
}

/// `--plain id,url` writes those columns without dictionary encoding.
fn plain_columns() -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--plain")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_string).collect())
        .unwrap_or_default()
}
