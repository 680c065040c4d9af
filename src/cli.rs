//! Command-line interface: argument parsing and the commands' output. No mapping logic lives
//! here; commands call into the library.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use protolake::config::DescriptorSource;
use protolake::contract::{delta_schema, to_ddl};
use protolake::decode::{DecodeOptions, Decoder, Pool};

#[derive(Parser)]
#[command(
    name = "protolake",
    version,
    about = "Protobuf events → Delta Lake tables, decoded from the message descriptor at run time",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Inspect the table schema a protobuf message maps to.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Run the ingest daemon: consume each configured table's Kafka topic into its Delta table
    /// (exactly once: offsets are committed in the Delta commits) until SIGTERM/SIGINT.
    Ingest(IngestArgs),
    /// Ingest archived varint-delimited protobuf files into a Delta table (and its dead-letter
    /// table). Rerunning over the same files adds nothing.
    Backfill(BackfillArgs),
    /// Close the books for a day: re-check one day of a raw table against its contract, remove
    /// duplicates by the table's key (the latest event time wins; ties go to the highest
    /// source position), and publish the day into the final table in one commit that replaces
    /// that day. Rerunning adds nothing; rows that arrived late are picked up.
    ///
    /// Exit codes: 0 closed (or unchanged), 1 failed, 2 bad arguments, 3 the day is still open
    /// (try later), 4 another run published the same day meanwhile.
    CloseBooks(CloseBooksArgs),
    /// What an operator asks first about a table: versions, files and sizes, partitions,
    /// contract version, the Kafka offset of each partition, the last close-of-books runs.
    Inspect(InspectArgs),
    /// Compact a table's small files into files near its target size (flush.target_file_size),
    /// optionally Z-ordered. Safe while the daemon ingests: no row is added or lost, and the
    /// recorded Kafka offsets stay as they are.
    Optimize(OptimizeArgs),
    /// Delete files that no table version younger than the retention needs (removed by
    /// compaction or close-books, or never committed). Refuses a retention shorter than the
    /// table's delta.deletedFileRetentionDuration (7 days by default) unless --force.
    Vacuum(VacuumArgs),
    /// Serve the gRPC front door: every method routed in `[gateway.routes]` is served from the
    /// table's descriptor set, each record is checked as the sink checks it (contract, rules,
    /// size) and, if accepted, published to the table's topic (or, for a table without one,
    /// committed to it directly); a call is answered once its records are acknowledged (or
    /// committed). Also HTTP/JSON (Connect unary) on the same paths, server reflection,
    /// grpc.health.v1, /metrics. Runs until SIGTERM/SIGINT, then drains. See docs/gateway.md.
    Gateway(GatewayArgs),
    /// Generate sample ad-impression events (some duplicated, some invalid), ingest them into
    /// ./lake/ through the real pipeline, and show how to query the result.
    Quickstart(QuickstartArgs),
}

#[derive(Subcommand)]
pub enum SchemaCommand {
    /// Print the Spark-style DDL of the columns the decoder produces for a message (the form
    /// pinned in schemas/<table>/vN.ddl), in Delta storage types.
    Print(SchemaPrintArgs),
    /// Pin the current descriptor as the table's contract: writes schemas/<table>/v1.ddl, or
    /// the next version when the descriptor has gained columns.
    Init(TableArgs),
    /// Compare the descriptor, the newest pinned contract and the live Delta table; exit 1 with
    /// a diff (column path, expected vs found) when they disagree.
    Check(TableArgs),
}

/// A table of the config file.
#[derive(Args)]
pub struct TableArgs {
    /// The config file.
    #[arg(long, value_name = "FILE", default_value = "protolake.toml", env = "PROTOLAKE_CONFIG")]
    pub config: PathBuf,
    /// Table name in the config file.
    #[arg(long, value_name = "NAME")]
    pub table: String,
}

#[derive(Args)]
pub struct IngestArgs {
    /// The config file.
    #[arg(long, value_name = "FILE", default_value = "protolake.toml", env = "PROTOLAKE_CONFIG")]
    pub config: PathBuf,
    /// Ingest only these tables (default: every table with a `topic`).
    #[arg(long = "table", value_name = "NAME")]
    pub tables: Vec<String>,
    /// Commit and exit once no message has arrived for this long, e.g. `30s` (a catch-up run);
    /// without it the daemon runs until stopped.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub exit_when_idle: Option<std::time::Duration>,
    /// Threads that decode and encode each table's records, each with its own Parquet files
    /// (default: the config's `workers`, else one per available core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
    /// Log format: `text` for people, `json` for log pipelines. Levels come from RUST_LOG
    /// (default `warn,protolake=info`).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Serve /metrics, /healthz and /readyz on this address (overrides ingest.metrics_address;
    /// `off` disables them).
    #[arg(long, value_name = "HOST:PORT|off")]
    pub metrics_address: Option<String>,
}

#[derive(Args)]
pub struct GatewayArgs {
    /// The config file (its `[gateway]` section and the routed tables).
    #[arg(long, value_name = "FILE", default_value = "protolake.toml", env = "PROTOLAKE_CONFIG")]
    pub config: PathBuf,
    /// Listen on this address (overrides gateway.listen), e.g. `0.0.0.0:50051`; port 0 picks one.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Serve /metrics, /healthz and /readyz on this address (overrides gateway.metrics_address;
    /// `off` disables them).
    #[arg(long, value_name = "HOST:PORT|off")]
    pub metrics_address: Option<String>,
    /// Log format: `text` for people, `json` for log pipelines. Levels come from RUST_LOG
    /// (default `warn,protolake=info`).
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

#[derive(Args)]
pub struct CloseBooksArgs {
    /// The config file.
    #[arg(long, value_name = "FILE", default_value = "protolake.toml", env = "PROTOLAKE_CONFIG")]
    pub config: PathBuf,
    /// Table name in the config file.
    #[arg(long, value_name = "NAME")]
    pub table: String,
    /// The day (an `event_date`, UTC) to close. Default: yesterday in the table's
    /// close_books.time_zone.
    #[arg(long, value_name = "YYYY-MM-DD", conflicts_with_all = ["from", "to"])]
    pub date: Option<chrono::NaiveDate>,
    /// First day of a range to close, one commit per day.
    #[arg(long, value_name = "YYYY-MM-DD", requires = "to")]
    pub from: Option<chrono::NaiveDate>,
    /// Last day of the range (inclusive).
    #[arg(long, value_name = "YYYY-MM-DD", requires = "from")]
    pub to: Option<chrono::NaiveDate>,
    /// Close a day that is still within its grace period (close_books.grace after its end).
    #[arg(long)]
    pub force: bool,
    /// Print each day's report as one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Cores the day is read and written on: the day's files are shared among this many
    /// scans, which find every key's winner in one shared map and then write the winners
    /// (default: the config's `workers`, else one per available core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
}

#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub target: TableArgs,
    /// How many close-of-books runs to list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub close_runs: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct OptimizeArgs {
    #[command(flatten)]
    pub target: TableArgs,
    /// Which of the table's Delta tables.
    #[arg(long, value_enum, default_value = "raw")]
    pub which: protolake::maintenance::Which,
    /// Only this day's partition (event_date).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub date: Option<chrono::NaiveDate>,
    /// Z-order by these columns (comma-separated); default: the table's optimize.zorder_by.
    #[arg(long, value_name = "COL,...", value_delimiter = ',')]
    pub zorder_by: Vec<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct VacuumArgs {
    #[command(flatten)]
    pub target: TableArgs,
    /// Which of the table's Delta tables.
    #[arg(long, value_enum, default_value = "raw")]
    pub which: protolake::maintenance::Which,
    /// Keep files needed by versions younger than this (e.g. 7d, 48h); default: the table's
    /// delta.deletedFileRetentionDuration. Never under 1h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
    pub retention: Option<std::time::Duration>,
    /// Allow a retention shorter than the table's delta.deletedFileRetentionDuration.
    #[arg(long)]
    pub force: bool,
    /// Also delete files no commit ever referenced (left by runs killed before their commit).
    #[arg(long)]
    pub full: bool,
    /// List what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    protolake::config::parse_duration(text)
}

#[derive(Args)]
pub struct BackfillArgs {
    /// The config file; with it, --table names a configured table.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A configured table (with --config) or the Delta table's location (ad-hoc).
    #[arg(long, value_name = "NAME|PATH")]
    pub table: String,
    /// Input files: varint length-delimited protobuf records (writeDelimitedTo framing).
    #[arg(long = "input", value_name = "FILE", required = true, num_args = 1..)]
    pub inputs: Vec<PathBuf>,
    /// Ad-hoc: the dead-letter table's location (default: <table>_dlq).
    #[arg(long, value_name = "PATH")]
    pub dlq: Option<String>,
    /// Ad-hoc: the message (with --config these come from the table's settings).
    #[command(flatten)]
    pub descriptor: DescriptorArgs,
    /// Ad-hoc: event-time field for the event_date partition: a Timestamp field, or an integer
    /// field with a unit, e.g. `ts_ms:milliseconds`.
    #[arg(long, value_name = "FIELD[:UNIT]")]
    pub event_time: Option<String>,
    /// Ad-hoc: an object-store option for the table locations, e.g.
    /// `--storage-option aws_endpoint=http://127.0.0.1:9000` (repeatable; keys in docs/storage.md;
    /// AWS_*/AZURE_*/GOOGLE_* environment variables are read too).
    #[arg(long = "storage-option", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub storage_options: Vec<(String, String)>,
    /// Threads that decode and encode, each with its own Parquet files (default: the config's
    /// `workers`, else one per available core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (k, v) = text.split_once('=').ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    if k.trim().is_empty() {
        return Err(format!("{text:?} has an empty key"));
    }
    Ok((k.trim().to_string(), v.to_string()))
}

/// Where the message descriptor comes from.
#[derive(Args, Debug, Clone)]
pub struct DescriptorArgs {
    /// Encoded FileDescriptorSet, as written by `buf build -o x.binpb` or
    /// `protoc --include_imports --descriptor_set_out=x.binpb`.
    #[arg(long, value_name = "FILE", conflicts_with = "proto")]
    pub descriptor_set: Option<PathBuf>,
    /// .proto file(s) to compile instead of a descriptor set (proto2/proto3; for editions
    /// files use a descriptor set from buf or protoc).
    #[arg(long, value_name = "FILE")]
    pub proto: Vec<PathBuf>,
    /// Import path(s) for --proto (google/protobuf/* is built in).
    #[arg(short = 'I', long = "include", value_name = "DIR")]
    pub include: Vec<PathBuf>,
    /// Fully-qualified message name, e.g. protolake.examples.v1.AdImpression.
    #[arg(long, value_name = "NAME")]
    pub message: Option<String>,
    /// recursive.fields.max.depth: how many times a recursive message may appear on one path
    /// (1..=10). Without it a recursive message is refused.
    #[arg(long, value_name = "N")]
    pub recursion_depth: Option<u32>,
}

#[derive(Args)]
pub struct SchemaPrintArgs {
    #[command(flatten)]
    pub descriptor: DescriptorArgs,
    /// Print the decoder's Arrow schema (unsigned ints, durations) instead of the Delta DDL.
    #[arg(long)]
    pub arrow: bool,
}

#[derive(Args)]
pub struct QuickstartArgs {
    /// How many sample events to generate.
    #[arg(long, default_value_t = 1000)]
    pub events: usize,
    /// Folder for the sample input and the tables.
    #[arg(long, default_value = "lake")]
    pub lake: PathBuf,
}

impl DescriptorArgs {
    pub fn pool(&self) -> Result<Pool> {
        let source = match &self.descriptor_set {
            Some(path) => DescriptorSource::DescriptorSet(path.clone()),
            None => DescriptorSource::Protos { files: self.proto.clone(), includes: self.include.clone() },
        };
        load_pool(&source)
    }

    /// The message name, its pool and its decoder.
    fn build(&self) -> Result<(&str, Pool, Decoder)> {
        let Some(message) = &self.message else { bail!("give --message NAME (the fully-qualified message name)") };
        let pool = self.pool()?;
        let options = DecodeOptions { recursion_depth: self.recursion_depth };
        let decoder = Decoder::new(&pool, message, &options)?;
        Ok((message, pool, decoder))
    }

    pub fn decoder(&self) -> Result<Decoder> {
        Ok(self.build()?.2)
    }

    pub fn decoder_and_validator(&self) -> Result<(Decoder, Option<protolake::validate::RecordValidator>)> {
        let (message, pool, decoder) = self.build()?;
        Ok((decoder, protolake::validate::validator_for(&pool, message)?))
    }

    /// Whether any of these flags was given.
    pub fn any(&self) -> bool {
        self.descriptor_set.is_some()
            || !self.proto.is_empty()
            || !self.include.is_empty()
            || self.message.is_some()
            || self.recursion_depth.is_some()
    }
}

/// Reads a descriptor set, or compiles .proto files.
pub fn load_pool(source: &DescriptorSource) -> Result<Pool> {
    match source {
        DescriptorSource::DescriptorSet(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read descriptor set {}", path.display()))?;
            Pool::decode(&bytes).with_context(|| format!("{} is not a usable descriptor set", path.display()))
        }
        DescriptorSource::Protos { files, includes } => compile_protos(files, includes),
    }
}

/// Compiles .proto files with protox (each file's directory is an import path too).
pub fn compile_protos(files: &[PathBuf], includes: &[PathBuf]) -> Result<Pool> {
    if files.is_empty() {
        bail!("give --descriptor-set FILE or at least one --proto FILE");
    }
    let mut dirs: Vec<PathBuf> = includes.to_vec();
    let mut names = Vec::new();
    for file in files {
        let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let included = dirs.iter().find(|d| file.starts_with(d)).cloned();
        match included {
            Some(d) => names.push(file.strip_prefix(&d).unwrap_or(file).to_path_buf()),
            None => {
                names.push(PathBuf::from(file.file_name().unwrap_or_default()));
                dirs.push(dir);
            }
        }
    }
    // Encoded by protox itself, so option extensions (buf.validate rules) are kept.
    let mut compiler =
        protox::Compiler::new(&dirs).map_err(|e| anyhow::anyhow!("cannot compile the .proto files: {e}"))?;
    compiler.include_imports(true);
    compiler.open_files(&names).map_err(|e| anyhow::anyhow!("cannot compile the .proto files: {e}"))?;
    Ok(Pool::decode(&compiler.encode_file_descriptor_set())?)
}

pub fn schema_print(args: &SchemaPrintArgs) -> Result<()> {
    let decoder = args.descriptor.decoder()?;
    let schema = decoder.schema();
    if args.arrow {
        for f in schema.fields() {
            println!("{}: {}{}", f.name(), f.data_type(), if f.is_nullable() { "" } else { " not null" });
        }
    } else {
        print!("{}", to_ddl(&delta_schema(&schema))?);
    }
    Ok(())
}
