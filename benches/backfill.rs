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
//! Each round runs the yardstick, then each worker count, each in a process of its own. Prints
//! each run's rows/s, rows per CPU-second and peak RSS, its wall-clock ratio to the first worker
//! count and its rows per CPU-second against the yardstick of its round; then the medians of
//! those ratios.
//! `--column-threads N` (with `--column-rows R`, default 4,000,000) measures the other way of
//! spreading Parquet encoding over cores: the payload columns of one writer encoded on N
//! threads (arrow-rs's `ArrowColumnWriter`), against the same writer on one thread.

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
        let started = Instant::now();
        let (decode_cpu, parquet_cpu, out_bytes) = yardstick(&pool, &input, n);
        let wall = started.elapsed().as_secs_f64();
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
        println!("RESULT {n} {wall} {} {}", decode_cpu + parquet_cpu, peak_rss_mib());
        return;
    }
    if let Some(threads) = args.iter().position(|a| a == "--column-threads").and_then(|i| args.get(i + 1)) {
        column_threads(
            &pool,
            &input,
            n.min(arg("--column-rows", 4_000_000)),
            threads.parse().expect("--column-threads N"),
        );
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
    // Each round runs the yardstick and every worker count back to back, and the ratios are
    // taken within a round: this machine's speed drifts by a fifth and more from one minute
    // to the next, which moves the runs of one round alike but not those of different rounds.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = workers.first().copied().unwrap_or(1);
    // Per worker count, its run of each round; and each round's yardstick rate.
    let mut runs: BTreeMap<usize, Vec<Measured>> = BTreeMap::new();
    let mut yardsticks = Vec::new();
    // Per worker count above one: the throughput of that many yardsticks run at once against
    // one alone, what the machine gives as many threads that share nothing in this round.
    let mut ceilings: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for round in 1..=pairs {
        let yard = child(&input, n, &["--yardstick"]);
        let yard_rate = n as f64 / yard.cpu;
        yardsticks.push(yard_rate);
        println!(
            "  round {round}: yardstick (decode + Parquet of the payload, one thread) {:.2} M rows per CPU-second",
            yard_rate / 1e6
        );
        for &w in workers.iter().filter(|&&w| w > 1) {
            let (_, wall) = children(&input, n, &["--yardstick"], w);
            let ceiling = w as f64 * yard.wall / wall;
            println!("  {w} yardsticks at once: {ceiling:.2}x the throughput of one (independent processes)");
            ceilings.entry(w).or_default().push(ceiling);
        }
        let mut base_wall = None;
        for &w in &workers {
            let m = child(&input, n, &["--one", &w.to_string()]);
            let base_wall = *base_wall.get_or_insert(m.wall);
            println!(
                "  {w} worker(s): wall {:.2} s, CPU {:.2} s ({:.2} cores busy), {:.2} M rows/s ({:.2}x of {base}), {:.2} M rows per CPU-second ({:.2} of the yardstick), peak RSS {:.0} MiB",
                m.wall,
                m.cpu,
                m.cpu / m.wall,
                n as f64 / m.wall / 1e6,
                base_wall / m.wall,
                n as f64 / m.cpu / 1e6,
                n as f64 / m.cpu / yard_rate,
                m.rss
            );
            runs.entry(w).or_default().push(m);
        }
    }
    println!("medians (the ratios: medians of each round's own):");
    println!("  yardstick: {:.2} M rows per CPU-second", median(yardsticks.clone()) / 1e6);
    for (w, c) in &ceilings {
        println!("  {w} yardsticks at once: {:.2}x the throughput of one", median(c.clone()));
    }
    for (w, ms) in &runs {
        let wall = median(ms.iter().map(|m| m.wall).collect());
        let cpu = median(ms.iter().map(|m| m.cpu).collect());
        let rss = median(ms.iter().map(|m| m.rss).collect());
        let speedup = median(runs[&base].iter().zip(ms).map(|(b, m)| b.wall / m.wall).collect());
        let of_yardstick = median(ms.iter().zip(&yardsticks).map(|(m, y)| n as f64 / m.cpu / y).collect());
        println!(
            "  {w} worker(s): {:.2} M rows/s wall ({:.2}x of {base}), {:.2} M rows per CPU-second ({:.2} of the yardstick), peak RSS {rss:.0} MiB",
            n as f64 / wall / 1e6,
            speedup,
            n as f64 / cpu / 1e6,
            of_yardstick,
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
    children(input, n, extra, 1).0.remove(0)
}

/// Runs `copies` children at once, as [`child`]; their measures and the wall time until the
/// last one ended.
fn children(input: &Path, n: usize, extra: &[&str], copies: usize) -> (Vec<Measured>, f64) {
    let exe = std::env::current_exe().expect("the bench binary");
    let mut args = vec!["--input".to_string(), input.display().to_string(), "--records".into(), n.to_string()];
    let all: Vec<String> = std::env::args().collect();
    if let Some(i) = all.iter().position(|a| a == "--plain") {
        args.extend(all[i..].iter().take(2).cloned());
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let started = Instant::now();
    let running: Vec<_> = (0..copies)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(&args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("the bench runs itself")
        })
        .collect();
    let outs: Vec<_> = running.into_iter().map(|c| c.wait_with_output().expect("the child ends")).collect();
    let wall = started.elapsed().as_secs_f64();
    let measured = outs
        .iter()
        .map(|out| {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
            let line = text.lines().find_map(|l| l.strip_prefix("RESULT ")).expect("a RESULT line");
            let f: Vec<f64> = line.split_whitespace().map(|v| v.parse().unwrap()).collect();
            Measured { wall: f[1], cpu: f[2], rss: f[3] }
        })
        .collect();
    (measured, wall)
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

/// Rows in a row group of the yardstick's Parquet.
const PAYLOAD_ROW_GROUP_ROWS: usize = 1_048_576;

/// The yardstick's Parquet settings: zstd 1, page statistics, row groups of
/// [`PAYLOAD_ROW_GROUP_ROWS`].
fn payload_properties() -> deltalake::parquet::file::properties::WriterProperties {
    deltalake::parquet::file::properties::WriterProperties::builder()
        .set_compression(deltalake::parquet::basic::Compression::ZSTD(
            deltalake::parquet::basic::ZstdLevel::try_new(1).unwrap(),
        ))
        .set_statistics_enabled(deltalake::parquet::file::properties::EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(PAYLOAD_ROW_GROUP_ROWS))
        .build()
}

/// The yardstick: the records framed and decoded, and the 8 payload columns Parquet-encoded
/// (zstd 1, page statistics) to memory. CPU seconds of each step on this thread, output bytes.
fn yardstick(pool: &Pool, input: &Path, n: usize) -> (f64, f64, usize) {
    use protolake::source::file::DelimitedReader;
    let mut decoder = Decoder::new(pool, "protolake.examples.v1.FlatEvent", &DecodeOptions::default()).unwrap();
    let file = std::fs::File::open(input).unwrap();
    let mut reader = DelimitedReader::new(std::io::BufReader::with_capacity(1 << 20, file), 1 << 20);
    let properties = payload_properties();
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

/// Parquet encoding of the payload columns (zstd 1, page statistics, row groups of 1,048,576
/// rows, to memory) on one thread with `ArrowWriter`, then with the columns of each row group
/// spread over `threads` threads (`ArrowColumnWriter`s, each thread taking whole columns, the
/// largest first onto the least loaded thread). The batches are decoded first, outside the
/// timing. Prints the wall and process CPU time of each.
fn column_threads(pool: &Pool, input: &Path, n: usize, threads: usize) {
    use deltalake::parquet::arrow::arrow_writer::{compute_leaves, ArrowRowGroupWriterFactory};
    use deltalake::parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
    use deltalake::parquet::file::writer::SerializedFileWriter;
    use protolake::source::file::DelimitedReader;
    let mut decoder = Decoder::new(pool, "protolake.examples.v1.FlatEvent", &DecodeOptions::default()).unwrap();
    let file = std::fs::File::open(input).unwrap();
    let mut reader = DelimitedReader::new(std::io::BufReader::with_capacity(1 << 20, file), 1 << 20);
    let mut batches = Vec::new();
    let mut rows = 0;
    while rows < n {
        next_records(&mut reader, |_, bytes| decoder.decode(bytes).unwrap());
        let batch = decoder.flush().unwrap();
        if batch.num_rows() == 0 {
            break;
        }
        rows += batch.num_rows();
        batches.push(batch);
    }
    let schema = batches[0].schema();
    let properties = std::sync::Arc::new(payload_properties());
    let rows_per_group = PAYLOAD_ROW_GROUP_ROWS / batches[0].num_rows().max(1);

    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let mut writer = ArrowWriter::try_new(Vec::new(), schema.clone(), Some((*properties).clone())).unwrap();
    for batch in &batches {
        writer.write(batch).unwrap();
    }
    let one_bytes = writer.into_inner().unwrap().len();
    let (one_wall, one_cpu) = (wall.elapsed().as_secs_f64(), cpu_seconds() - cpu);

    // The columns' shares: their Arrow sizes, a stand-in for their encoding cost.
    let mut order: Vec<(usize, usize)> =
        (0..schema.fields().len()).map(|c| (batches[0].column(c).get_array_memory_size(), c)).collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    let mut shares: Vec<(usize, Vec<usize>)> = vec![(0, Vec::new()); threads.max(1)];
    for (size, column) in order {
        let least = shares.iter_mut().min_by_key(|s| s.0).unwrap();
        least.0 += size;
        least.1.push(column);
    }

    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let parquet_schema = ArrowSchemaConverter::new().convert(&schema).unwrap();
    let mut out = SerializedFileWriter::new(Vec::new(), parquet_schema.root_schema_ptr(), properties.clone()).unwrap();
    let factory = ArrowRowGroupWriterFactory::new(&out, schema.clone());
    for (index, group) in batches.chunks(rows_per_group.max(1)).enumerate() {
        let mut writers: Vec<Option<_>> = factory.create_column_writers(index).unwrap().into_iter().map(Some).collect();
        let mut chunks: Vec<Option<_>> = (0..writers.len()).map(|_| None).collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = shares
                .iter()
                .map(|(_, columns)| {
                    let mut mine: Vec<(usize, _)> = columns.iter().map(|&c| (c, writers[c].take().unwrap())).collect();
                    let schema = &schema;
                    scope.spawn(move || {
                        for batch in group {
                            for (c, writer) in &mut mine {
                                for leaf in compute_leaves(schema.field(*c), batch.column(*c)).unwrap() {
                                    writer.write(&leaf).unwrap();
                                }
                            }
                        }
                        mine.into_iter().map(|(c, w)| (c, w.close().unwrap())).collect::<Vec<_>>()
                    })
                })
                .collect();
            for handle in handles {
                for (c, chunk) in handle.join().unwrap() {
                    chunks[c] = Some(chunk);
                }
            }
        });
        let mut row_group = out.next_row_group().unwrap();
        for chunk in chunks {
            chunk.unwrap().append_to_row_group(&mut row_group).unwrap();
        }
        row_group.close().unwrap();
    }
    let spread_bytes = out.into_inner().unwrap().len();
    let (spread_wall, spread_cpu) = (wall.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    println!("Parquet of {rows} decoded rows' 8 payload columns (zstd 1, page statistics), to memory:");
    println!(
        "  one thread (ArrowWriter): wall {one_wall:.2} s, CPU {one_cpu:.2} s, {:.1} bytes/row",
        one_bytes as f64 / rows as f64
    );
    let columns: Vec<Vec<&str>> =
        shares.iter().map(|(_, cs)| cs.iter().map(|&c| schema.field(c).name().as_str()).collect()).collect();
    println!(
        "  columns over {threads} threads (ArrowColumnWriter, {columns:?}): wall {spread_wall:.2} s ({:.2}x), CPU {spread_cpu:.2} s ({:.2} of one thread's), {:.1} bytes/row",
        one_wall / spread_wall,
        spread_cpu / one_cpu,
        spread_bytes as f64 / rows as f64
    );
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
