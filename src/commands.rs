//! The commands that read tables and configs: `backfill`, `schema init`, `schema check`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use protolake::backfill::{self, BackfillSpec, Progress};
use protolake::config::{Config, EventTime, FlushPolicy, ParquetOptions, TableConfig, TimeUnit};
use protolake::contract::{delta_schema, diff, diff_types, Contract, PinnedContracts};
use protolake::decode::{DecodeOptions, Decoder};
use protolake::location::{Location, Scheme};
use protolake::validate::{validator_for, RecordValidator};

use crate::cli::{
    load_pool, BackfillArgs, CloseBooksArgs, GatewayArgs, IngestArgs, InspectArgs, OptimizeArgs, TableArgs, VacuumArgs,
};

/// Builds the decoder of a configured table and the validator of its `buf.validate` rules.
pub fn table_decoder(table: &TableConfig) -> Result<(Decoder, Option<RecordValidator>)> {
    let (decoder, validator, _) = table_decoder_and_index(table)?;
    Ok((decoder, validator))
}

/// [`table_decoder`], with the message's index path in its file (Confluent framing).
fn table_decoder_and_index(table: &TableConfig) -> Result<(Decoder, Option<RecordValidator>, Vec<i32>)> {
    let (pool, decoder, validator) = table_pool_and_decoder(table)?;
    let index_path = pool.message(&table.message).map(|m| m.index_path.clone()).unwrap_or_default();
    Ok((decoder, validator, index_path))
}

/// [`table_decoder`], with the descriptor pool it was built from.
fn table_pool_and_decoder(table: &TableConfig) -> Result<(protolake::decode::Pool, Decoder, Option<RecordValidator>)> {
    let pool = load_pool(&table.descriptor).with_context(|| format!("table {}", table.name))?;
    let options = DecodeOptions { recursion_depth: table.recursion_depth };
    let decoder = Decoder::new(&pool, &table.message, &options).with_context(|| format!("table {}", table.name))?;
    let validator = validator_for(&pool, &table.message).with_context(|| format!("table {}", table.name))?;
    Ok((pool, decoder, validator))
}

/// Every route of a config's `[gateway]`, with its table's checks, ready for the gateway.
pub fn gateway_setups(config: &Config) -> Result<Vec<protolake::gateway::RouteSetup>> {
    if config.gateway.routes.is_empty() {
        bail!(
            "{}: no gateway route; add one per method, e.g.\n\n  [gateway.routes.\"shop.v1.ClickTrackService/AdTrack\"]\n  table = \"ad_impressions\"\n",
            config.source
        );
    }
    let mut setups: Vec<protolake::gateway::RouteSetup> = Vec::new();
    for route in config.gateway.routes.values() {
        let table = config.table(&route.table)?;
        // A table routed twice is read and checked against its contract once.
        let (descriptor_set, decoder, validator, contract) = match setups.iter().find(|s| s.table.name == table.name) {
            Some(earlier) => (
                earlier.descriptor_set.clone(),
                earlier.decoder.fresh()?,
                earlier.validator.as_ref().map(|v| v.fresh()),
                earlier.contract.clone(),
            ),
            None => {
                let (pool, decoder, validator) = table_pool_and_decoder(table)?;
                let contract = pinned_contract(table, &decoder)?;
                if contract.is_none() {
                    tracing::warn!(table = %table.name, "no pinned contract; checking records against the descriptor alone (ad-hoc)");
                }
                (pool.encoded().to_vec(), decoder, validator, contract)
            }
        };
        setups.push(protolake::gateway::RouteSetup {
            route: route.clone(),
            table: table.clone(),
            descriptor_set,
            decoder,
            validator,
            contract,
            tokens: match &route.tokens_env {
                None => None,
                Some(var) => Some(
                    protolake::config::Tokens::from_env(var)
                        .map_err(|e| anyhow::anyhow!("gateway route {}: {e}", route.method))?,
                ),
            },
        });
    }
    Ok(setups)
}

pub async fn gateway(args: &GatewayArgs) -> Result<ExitCode> {
    use std::sync::Arc;

    // Not the Delta kernel's: it logs an error when direct mode opens a table that does not
    // exist yet (which it then creates); its real failures reach the user as the gateway's own.
    init_logging(&args.log_format, "warn,protolake=info,buoyant_kernel=off");
    let mut config = Config::load(&args.config)?;
    if let Some(listen) = &args.listen {
        config.gateway.listen = listen.clone();
    }
    let publishes =
        config.gateway.routes.values().any(|r| config.tables.get(&r.table).is_some_and(|t| t.topic.is_some()));
    if publishes && !config.kafka.properties.contains_key("bootstrap.servers") {
        bail!(
            "{}: set kafka.bootstrap_servers = \"host:9092\" (or PROTOLAKE__KAFKA__BOOTSTRAP_SERVERS): the gateway publishes there",
            config.source
        );
    }
    let setups = gateway_setups(&config)?;
    let metrics = Arc::new(protolake::metrics::GatewayMetrics::new());
    let gateway = protolake::gateway::Gateway::bind(setups, &config.gateway, &config.kafka, metrics.clone()).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(addr) = metrics_address(args.metrics_address.as_deref(), &config.gateway.metrics_address)? {
        let m = metrics.clone();
        let reachable = metrics.clone();
        let mut stopped = stop_rx.clone();
        let probe = move || {
            let ok = reachable.broker_reachable.get() == 1;
            (ok, if ok { "the brokers answer\n".to_string() } else { "the brokers do not answer\n".to_string() })
        };
        let server = protolake::metrics::serve_endpoints(
            addr,
            move || m.encode(),
            || (true, "ok\n".into()),
            probe,
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        );
        spawn_endpoints(addr, server);
    }
    let listening = gateway.local_addr()?;
    tracing::info!(address = %listening, methods = ?gateway.methods(), kafka = ?config.kafka.redacted(), "serving gRPC and HTTP/JSON");
    let mut stopped = stop_rx.clone();
    let stop = async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    on_signals(
        "stopping: finishing the calls in flight and flushing the producer (signal again to exit at once)",
        "exiting at once; calls in flight get no answer (their clients retry)",
        move || {
            let _ = stop_tx.send(true);
        },
    );
    let report = gateway.serve(stop).await?;
    tracing::info!(accepted = report.accepted, refused = report.refused, unflushed = report.unflushed, "stopped");
    if report.unflushed > 0 {
        bail!("{} records were not acknowledged by the broker before the drain timeout", report.unflushed);
    }
    Ok(ExitCode::SUCCESS)
}

/// The contract a descriptor implies, in Delta storage types.
fn derived_contract(decoder: &Decoder) -> Result<Contract> {
    Ok(Contract::from_arrow(&delta_schema(&decoder.schema()))?)
}

/// The newest pinned contract of a table, after checking the descriptor agrees with it.
/// None: no pinned version (ad-hoc mode).
pub fn pinned_contract(table: &TableConfig, decoder: &Decoder) -> Result<Option<(u32, Contract)>> {
    let Some(dir) = &table.contract_dir else { return Ok(None) };
    let pinned = PinnedContracts::load(dir)?;
    let Some((version, contract)) = pinned.newest().cloned() else { return Ok(None) };
    let differences = diff_types(&contract, &derived_contract(decoder)?);
    if !differences.is_empty() {
        bail!(
            "table {}: the descriptor of {} no longer matches the pinned contract {}:\n{}\n\
             If the change is intended and only adds nullable columns, pin it with \
             `protolake schema init --table {}`; otherwise fix the .proto.",
            table.name,
            table.message,
            pinned.path_of(version).display(),
            differences.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n"),
            table.name
        );
    }
    Ok(Some((version, contract)))
}

pub fn schema_init(args: &TableArgs) -> Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let table = config.table(&args.table)?;
    let Some(dir) = &table.contract_dir else {
        bail!("table {} has contract_dir = \"\" (ad-hoc); set a folder to pin contracts in", table.name)
    };
    let (decoder, _) = table_decoder(table)?;
    let derived = derived_contract(&decoder)?;
    let pinned = PinnedContracts::load(dir)?;
    let next = match pinned.newest() {
        None => 1,
        Some((v, current)) => {
            if diff_types(current, &derived).is_empty() {
                println!("{} already matches the descriptor; nothing to pin.", pinned.path_of(*v).display());
                return Ok(ExitCode::SUCCESS);
            }
            // Keep the NOT NULLs the team added to the pinned version.
            if let Err(reasons) = protolake::contract::check_evolution(current, &merge_nullability(current, &derived)) {
                bail!(
                    "the descriptor is not an additive evolution of {}:\n{}",
                    pinned.path_of(*v).display(),
                    reasons.iter().map(|r| format!("  {r}")).collect::<Vec<_>>().join("\n")
                );
            }
            v + 1
        }
    };
    let contract = match pinned.newest() {
        Some((_, current)) => merge_nullability(current, &derived),
        None => derived,
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = pinned.path_of(next);
    std::fs::write(&path, contract.to_ddl()).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {} ({} columns); commit it with the .proto change.", path.display(), contract.columns.len());
    Ok(ExitCode::SUCCESS)
}

/// `derived` with the NOT NULLs of `pinned` kept on the columns both have.
fn merge_nullability(pinned: &Contract, derived: &Contract) -> Contract {
    fn merge(p: &[protolake::contract::Column], d: &[protolake::contract::Column]) -> Vec<protolake::contract::Column> {
        use protolake::contract::SqlType;
        d.iter()
            .map(|dc| match p.iter().find(|pc| pc.name == dc.name) {
                Some(pc) => {
                    let ty = match (&pc.ty, &dc.ty) {
                        (SqlType::Struct(pm), SqlType::Struct(dm)) => SqlType::Struct(merge(pm, dm)),
                        (_, t) => t.clone(),
                    };
                    protolake::contract::Column { name: dc.name.clone(), ty, nullable: pc.nullable && dc.nullable }
                }
                None => dc.clone(),
            })
            .collect()
    }
    Contract { columns: merge(&pinned.columns, &derived.columns) }
}

pub async fn schema_check(args: &TableArgs) -> Result<ExitCode> {
    let config = Config::load(&args.config)?;
    let table = config.table(&args.table)?;
    let (decoder, _) = table_decoder(table)?;
    let Some(dir) = &table.contract_dir else {
        println!("table {}: ad-hoc (no contract_dir); nothing to check", table.name);
        return Ok(ExitCode::SUCCESS);
    };
    let pinned = PinnedContracts::load(dir)?;
    let Some((version, contract)) = pinned.newest().cloned() else {
        eprintln!(
            "table {}: no contract pinned in {}; run `protolake schema init --config {} --table {}`",
            table.name,
            dir.display(),
            args.config.display(),
            table.name
        );
        return Ok(ExitCode::FAILURE);
    };
    let mut ok = true;
    let derived = derived_contract(&decoder)?;
    let differences = diff_types(&contract, &derived);
    if differences.is_empty() {
        println!("descriptor {} matches {}", table.message, pinned.path_of(version).display());
    } else {
        ok = false;
        println!("descriptor {} differs from {}:", table.message, pinned.path_of(version).display());
        for d in &differences {
            println!("  {d}");
        }
    }
    match live_payload(&table.location).await? {
        None => println!("table {} does not exist yet at {}", table.name, table.location),
        Some(live) => {
            let differences = diff(&contract, &live);
            if differences.is_empty() {
                println!("live table {} matches v{version}", table.location);
            } else {
                ok = false;
                println!("live table {} differs from v{version}:", table.location);
                for d in &differences {
                    println!("  {d}");
                }
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The payload columns of a live table (metadata columns and event_date left out).
async fn live_payload(location: &Location) -> Result<Option<Contract>> {
    let Some(schema) = protolake::sink::table_schema_at(location).await? else { return Ok(None) };
    let payload: Vec<_> =
        schema.fields().iter().filter(|f| !protolake::pipeline::is_metadata_column(f.name())).cloned().collect();
    Ok(Some(Contract::from_arrow(&arrow::datatypes::Schema::new(payload))?))
}

fn parse_event_time(text: &str) -> Result<EventTime> {
    let (field, unit) = match text.split_once(':') {
        None => (text, None),
        Some((f, u)) => {
            let unit = match u {
                "s" | "seconds" => TimeUnit::Seconds,
                "ms" | "milliseconds" => TimeUnit::Milliseconds,
                "us" | "microseconds" => TimeUnit::Microseconds,
                "ns" | "nanoseconds" => TimeUnit::Nanoseconds,
                other => bail!("--event-time unit {other:?}: use seconds, milliseconds, microseconds or nanoseconds"),
            };
            (f, Some(unit))
        }
    };
    Ok(EventTime { field: field.to_string(), unit })
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total_bytes: u64) {
        self.0.set_length(total_bytes);
    }
    fn advance(&self, bytes: u64, records: u64) {
        self.0.inc(bytes);
        self.0.set_message(format!("{records} records"));
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

pub async fn backfill(args: &BackfillArgs) -> Result<ExitCode> {
    // Warnings only (e.g. a store unsafe for concurrent writers); progress and the summary are
    // the output.
    init_logging("text", BATCH_LOGS);
    let spec = match &args.config {
        Some(path) => {
            for (flag, given) in [
                ("--descriptor-set, --proto, --include, --message, --recursion-depth", args.descriptor.any()),
                ("--dlq", args.dlq.is_some()),
                ("--event-time", args.event_time.is_some()),
                ("--storage-option", !args.storage_options.is_empty()),
            ] {
                if given {
                    bail!("{flag}: set in the config file when --config is used; remove it from the command line");
                }
            }
            let config = Config::load(path)?;
            let table = config.table(&args.table)?;
            let (decoder, validator) = table_decoder(table)?;
            let contract = pinned_contract(table, &decoder)?;
            if contract.is_none() {
                eprintln!(
                    "note: table {} has no pinned contract; writing the descriptor's schema (ad-hoc)",
                    table.name
                );
            }
            BackfillSpec {
                decoder,
                validator,
                contract,
                location: table.location.clone(),
                dlq_location: table.dlq_location.clone(),
                event_time: table.event_time.clone(),
                flush: table.flush.clone(),
                parquet: table.parquet.clone(),
                max_record_bytes: table.max_record_bytes,
                header_columns: table.header_columns.clone(),
                inputs: args.inputs.clone(),
                workers: protolake::config::workers_or_cores(args.workers.map(usize::from).or(config.workers)),
            }
        }
        None => {
            let (decoder, validator) = args.descriptor.decoder_and_validator()?;
            let options: std::collections::BTreeMap<String, String> = args.storage_options.iter().cloned().collect();
            let place = |uri: String| -> Result<Location> {
                if Scheme::of(&uri) == Scheme::Local && !options.is_empty() {
                    bail!("--storage-option applies to object stores; {uri} is a local path");
                }
                Location::placed(uri, &options).map_err(anyhow::Error::msg)
            };
            let location = place(absolute(&args.table))?;
            BackfillSpec {
                decoder,
                validator,
                contract: None,
                dlq_location: match &args.dlq {
                    Some(d) => place(absolute(d))?,
                    None => location.sibling("_dlq"),
                },
                location,
                event_time: args.event_time.as_deref().map(parse_event_time).transpose()?,
                flush: FlushPolicy::default(),
                parquet: ParquetOptions::default(),
                max_record_bytes: 16 << 20,
                header_columns: Vec::new(),
                inputs: args.inputs.clone(),
                workers: protolake::config::workers_or_cores(args.workers.map(usize::from)),
            }
        }
    };
    for input in &spec.inputs {
        if !input.is_file() {
            bail!("input {} is not a readable file", input.display());
        }
    }
    let (location, dlq_location) = (spec.location.clone(), spec.dlq_location.clone());
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} {bytes}/{total_bytes} {bytes_per_sec} {msg} [{elapsed_precise}, eta {eta}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report = backfill::run(spec, &Bar(bar)).await?;
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "backfill: {} records from {} file(s) in {:.1}s ({:.0} records/s, {:.1} MB/s, {} worker{})",
        report.records,
        report.files,
        secs,
        report.records as f64 / secs,
        report.bytes_read as f64 / secs / 1e6,
        report.workers,
        if report.workers == 1 { "" } else { "s" }
    );
    println!(
        "  {} rows → {location} (version {})",
        report.rows,
        report.table_version.map_or("-".into(), |v| v.to_string())
    );
    println!("  {} dead letters → {dlq_location}", report.dead_letters);
    for (reason, count) in &report.by_reason {
        println!("    {count:>8} × {reason}");
    }
    if report.already_committed > 0 {
        println!("  {} records skipped: committed by an earlier run", report.already_committed);
    }
    Ok(ExitCode::SUCCESS)
}

fn absolute(location: &str) -> String {
    if location.contains("://") || Path::new(location).is_absolute() {
        return location.to_string();
    }
    std::env::current_dir().map(|d| d.join(location)).unwrap_or_else(|_| PathBuf::from(location)).display().to_string()
}

pub async fn ingest(args: &IngestArgs) -> Result<ExitCode> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    init_logging(&args.log_format, "warn,protolake=info");
    let config = Config::load(&args.config)?;
    let names: Vec<String> = if args.tables.is_empty() {
        config.tables.values().filter(|t| t.topic.is_some()).map(|t| t.name.clone()).collect()
    } else {
        args.tables.clone()
    };
    if names.is_empty() {
        bail!("{}: no table has a `topic`; set topic = \"...\" in a [tables.NAME] section to ingest it", config.source);
    }
    if !config.kafka.properties.contains_key("bootstrap.servers") {
        bail!(
            "{}: set kafka.bootstrap_servers = \"host:9092\" (or PROTOLAKE__KAFKA__BOOTSTRAP_SERVERS)",
            config.source
        );
    }
    let mut setups = Vec::new();
    for name in &names {
        let table = config.table(name)?;
        if table.topic.is_none() {
            bail!("table {name} has no topic; set topic = \"...\" in [tables.{name}] to ingest it");
        }
        let (decoder, validator, index_path) = table_decoder_and_index(table)?;
        // Refuses, with the diff and the fix, when the descriptor and the pinned contract disagree.
        let contract = pinned_contract(table, &decoder)?;
        if contract.is_none() {
            tracing::warn!(table = %name, "no pinned contract; writing the descriptor's schema (ad-hoc)");
        }
        setups.push(protolake::ingest::TableSetup { config: table.clone(), decoder, validator, contract, index_path });
    }
    tracing::info!(
        tables = ?names,
        group = %config.kafka.group_id,
        kafka = ?config.kafka.redacted(),
        "starting"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let metrics = Arc::new(protolake::metrics::Metrics::new());
    let health = Arc::new(protolake::metrics::Health::default());
    if let Some(addr) = metrics_address(args.metrics_address.as_deref(), &config.ingest.metrics_address)? {
        let stopped = stop.clone();
        let (m, h) = (metrics.clone(), health.clone());
        let server = protolake::metrics::serve(addr, m, h, async move {
            while !stopped.load(Ordering::Relaxed) {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        });
        spawn_endpoints(addr, server);
    }
    let signal_stop = stop.clone();
    on_signals(
        "stopping: committing open batches and leaving the group (signal again to exit at once)",
        "exiting without committing; the open batches will be read again",
        move || signal_stop.store(true, Ordering::SeqCst),
    );
    let options = protolake::ingest::IngestOptions {
        exit_when_idle: args.exit_when_idle,
        workers: args.workers.map(usize::from).or(config.workers),
    };
    let reports =
        protolake::ingest::run(setups, &config.kafka, &config.ingest, &options, stop, metrics, health).await?;
    for r in reports {
        tracing::info!(
            table = %r.table,
            records = r.records,
            rows = r.rows,
            dead_letters = r.dead_letters,
            skipped = r.skipped,
            commits = r.commits,
            conflicts = r.conflicts,
            version = ?r.table_version,
            "stopped"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The address of a daemon's `/metrics`, `/healthz` and `/readyz`: the `--metrics-address`
/// flag (`off`: none) over the config's.
fn metrics_address(flag: Option<&str>, configured: &Option<String>) -> Result<Option<std::net::SocketAddr>> {
    let address = match flag {
        Some("off") => return Ok(None),
        Some(a) => a.to_string(),
        None => match configured {
            Some(a) => a.clone(),
            None => return Ok(None),
        },
    };
    let addr = address.parse().with_context(|| format!("metrics address {address:?} is not HOST:PORT"))?;
    Ok(Some(addr))
}

/// Runs a daemon's endpoint server in the background, logging where it serves and why it stopped.
fn spawn_endpoints(
    addr: std::net::SocketAddr,
    server: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(%addr, error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
}

/// A daemon's signals: the first SIGTERM/SIGINT logs `stopping` and calls `stop`, a second
/// logs `exiting` and exits 130 at once.
fn on_signals(stopping: &'static str, exiting: &'static str, stop: impl FnOnce() + Send + 'static) {
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        let mut stop = Some(stop);
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            match stop.take() {
                Some(stop) => {
                    tracing::info!("{stopping}");
                    stop();
                }
                None => {
                    tracing::warn!("{exiting}");
                    std::process::exit(130);
                }
            }
        }
    });
}

/// Logs to stderr; RUST_LOG overrides `default_filter`.
/// What the one-shot commands log (RUST_LOG overrides it): protolake's warnings, e.g. a store
/// unsafe for concurrent writers, and other crates' errors. Not the Delta kernel's: it logs an
/// error when it looks for a table that does not exist yet (every first run), and its real
/// failures reach the user as the command's own error, which names the table.
const BATCH_LOGS: &str = "error,protolake=warn,buoyant_kernel=off";

fn init_logging(format: &str, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
}

pub async fn close_books(args: &CloseBooksArgs) -> Result<ExitCode> {
    use protolake::close_books::{self as books, CloseOptions, Outcome};
    // Warnings only (e.g. a store unsafe for concurrent writers); the report is the output.
    init_logging("text", BATCH_LOGS);
    let config = Config::load(&args.config)?;
    let table = config.table(&args.table)?;
    let now = chrono::Utc::now();
    let (from, to) = match (args.date, args.from, args.to) {
        (Some(d), _, _) => (d, d),
        (None, Some(from), Some(to)) => (from, to),
        _ => {
            let d = books::yesterday(table, now);
            (d, d)
        }
    };
    if from > to {
        bail!("--from {from} is after --to {to}");
    }
    let workers = protolake::config::workers_or_cores(args.workers.map(usize::from).or(config.workers));
    let mut worst = 0u8;
    let mut date = from;
    loop {
        let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressBar::new_spinner()
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]").expect("a valid template"));
        bar.set_message(format!("closing {} {date}", table.name));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        let options = CloseOptions { date, force: args.force, now, workers };
        let progress = |p: books::Progress| {
            let round = if p.rounds > 1 { format!(" (round {} of {})", p.round, p.rounds) } else { String::new() };
            bar.set_message(if p.ranked == 0 {
                format!("closing {} {date}{round}: {} rows' keys read", table.name, p.scanned)
            } else {
                format!("closing {} {date}{round}: {} of {} rows sorted out", table.name, p.ranked, p.scanned)
            })
        };
        let result = books::close_day(table, &options, &progress).await;
        bar.finish_and_clear();
        match result {
            Ok(report) => {
                if args.json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    print_report(&report);
                }
                if report.outcome == Outcome::Published && report.rows_read == 0 {
                    eprintln!("warning: {} {date}: the raw table has no rows for this day", table.name);
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                worst = worst.max(e.exit_code());
            }
        }
        match date.succ_opt() {
            Some(next) if next <= to => date = next,
            _ => break,
        }
    }
    Ok(ExitCode::from(worst))
}

fn print_report(r: &protolake::close_books::Report) {
    use protolake::close_books::Outcome;
    match r.outcome {
        Outcome::Unchanged => println!(
            "{} {}: unchanged, nothing arrived since it was closed from raw version {} ({} rows)",
            r.table,
            r.date,
            r.previous_source_version.unwrap_or(r.source_version),
            r.rows_read
        ),
        Outcome::Published => {
            println!(
                "{} {}: published {} rows as final version {} (raw version {}, {} ms)",
                r.table,
                r.date,
                r.rows_published,
                r.final_version.unwrap_or_default(),
                r.source_version,
                r.duration_ms
            );
            println!(
                "  read {}, invalid {}, duplicates removed {}; files written {}, replaced {}",
                r.rows_read, r.rows_invalid, r.duplicates_removed, r.files_written, r.files_replaced
            );
            if r.rounds > 1 {
                println!(
                    "  the day's keys did not fit in close_books.memory_limit: read in {} rounds of a share of them each",
                    r.rounds
                );
            }
            if let Some(previous) = r.previous_source_version {
                match r.late_rows {
                    Some(late) => println!("  closed before from raw version {previous}; {late} rows arrived since"),
                    None => println!("  closed before from raw version {previous}"),
                }
            }
            for example in &r.invalid_examples {
                println!("  invalid: {example}");
            }
            if r.rows_invalid > r.invalid_examples.len() as u64 {
                println!("  ({} more invalid rows)", r.rows_invalid - r.invalid_examples.len() as u64);
            }
        }
    }
}

/// Bytes in the units people read (KiB, MiB, GiB).
fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn millis_to_text(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map_or("-".into(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

pub async fn inspect(args: &InspectArgs) -> Result<ExitCode> {
    init_logging("text", BATCH_LOGS);
    let config = Config::load(&args.target.config)?;
    let table = config.table(&args.target.table)?;
    let report = protolake::maintenance::inspect(table, args.close_runs).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("table {}", report.table);
    for (label, summary, location) in [
        ("raw", &report.raw, &table.location),
        ("dead letters", &report.dlq, &table.dlq_location),
        ("final", &report.r#final, &table.final_location),
    ] {
        let Some(s) = summary else {
            println!("  {label}: no table yet at {location}");
            continue;
        };
        println!(
            "  {label}: {} — version {}, last commit {} ({})",
            s.location,
            s.version,
            millis_to_text(s.last_commit_ms),
            s.last_operation.as_deref().unwrap_or("-")
        );
        println!(
            "    {} files, {}, {} rows; {} small (< 1/4 of the target size); contract {}; checkpoint every {} commits",
            s.files,
            human_bytes(s.bytes),
            s.rows.map_or("?".into(), |r| r.to_string()),
            s.small_files,
            s.contract_version.as_deref().unwrap_or("none (ad-hoc)"),
            s.checkpoint_interval
        );
        if !s.partitions.is_empty() {
            let shown = s.partitions.len().min(7);
            println!("    {} partitions; the newest {shown}:", s.partitions.len());
            for p in s.partitions.iter().rev().take(shown) {
                println!(
                    "      {}: {} files, {}, {} rows",
                    p.partition,
                    p.files,
                    human_bytes(p.bytes),
                    p.rows.map_or("?".into(), |r| r.to_string())
                );
            }
        }
    }
    match &report.topic {
        None => println!("  no Kafka topic configured"),
        Some(topic) if report.kafka_offsets.is_empty() => println!("  Kafka {topic}: no offset committed yet"),
        Some(topic) => {
            println!("  Kafka {topic}: last offset in the table (the daemon resumes after it)");
            for (p, o) in &report.kafka_offsets {
                println!("    partition {p}: {o}");
            }
        }
    }
    if report.close_books_runs.is_empty() {
        println!("  close-books: no day published yet");
    } else {
        println!("  close-books, newest first:");
        for r in &report.close_books_runs {
            println!(
                "    {} at {}: {} published, {} duplicates removed, {} invalid, {} late (raw version {})",
                r.date,
                millis_to_text(r.at_ms),
                r.rows_published.map_or("?".into(), |v| v.to_string()),
                r.duplicates_removed.map_or("?".into(), |v| v.to_string()),
                r.rows_invalid.map_or("?".into(), |v| v.to_string()),
                r.late_rows.map_or("-".into(), |v| v.to_string()),
                r.source_version.map_or("?".into(), |v| v.to_string()),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn optimize(args: &OptimizeArgs) -> Result<ExitCode> {
    init_logging("text", BATCH_LOGS);
    let config = Config::load(&args.target.config)?;
    let table = config.table(&args.target.table)?;
    let zorder = if args.zorder_by.is_empty() { table.zorder_by.clone() } else { args.zorder_by.clone() };
    let report = protolake::maintenance::optimize(table, args.which, args.date, &zorder).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "optimize {}: {} files compacted into {} in {} partition(s){}; version {}",
            report.location,
            report.files_removed,
            report.files_added,
            report.partitions_optimized,
            if zorder.is_empty() { String::new() } else { format!(", Z-ordered by {}", zorder.join(", ")) },
            report.version
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn vacuum(args: &VacuumArgs) -> Result<ExitCode> {
    init_logging("text", BATCH_LOGS);
    let config = Config::load(&args.target.config)?;
    let table = config.table(&args.target.table)?;
    let location = args.which.location(table);
    let report = protolake::maintenance::vacuum(location, args.retention, args.force, args.full, args.dry_run).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let verb = if report.dry_run { "would delete" } else { "deleted" };
        println!(
            "vacuum {}: {verb} {} file(s) older than {:.1}h",
            report.location, report.files_deleted, report.retention_hours
        );
        for f in &report.examples {
            println!("  {f}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
