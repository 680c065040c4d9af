//! Backfill end to end through the real binary: archived files → Delta table + DLQ, read back by
//! the `deltalake` Python package and polars (installed by scripts/test.sh), rerun adds nothing,
//! contract drift is refused with the diff, bad records land in the DLQ with their reason while
//! their neighbours land in the table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use prost::Message;
use serde_json::Value;

mod common;

use common::AdImpression;

fn protolake(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_protolake")).args(args).current_dir(dir).output().expect("binary runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn python() -> String {
    std::env::var("PROTOLAKE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// What the Python readers see in a table.
fn read_with_python(table: &Path, key: &str) -> Value {
    read_with_python_at(table.to_str().unwrap(), &BTreeMap::new(), key)
}

/// What the Python readers see in the table at a path or URL, given its storage options.
fn read_with_python_at(table: &str, options: &BTreeMap<String, String>, key: &str) -> Value {
    run_reader(
        "read_delta.py",
        &[table],
        &[("KEY_COLUMN", key.to_string()), ("STORAGE_OPTIONS", serde_json::to_string(options).unwrap())],
    )
}

/// Runs a reader of tests/readers (installed by scripts/test.sh; PROTOLAKE_PYTHON picks the
/// interpreter) and parses the JSON it prints.
fn run_reader(script: &str, args: &[&str], env: &[(&str, String)]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/readers").join(script);
    let out = Command::new(python())
        .arg(path)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("python runs");
    assert!(out.status.success(), "{script} failed:\n{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("reader prints JSON")
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self::at("lake/ads", "")
    }

    /// A fixture whose table is at `location`, with `storage` (TOML lines) in the config.
    fn at(location: &str, storage: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
        let config = format!(
            r#"
{storage}
[tables.ads]
proto = ["{proto}/protolake/examples/v1/events.proto"]
include = ["{proto}"]
message = "protolake.examples.v1.AdImpression"
location = "{location}"
event_time = {{ field = "event_time" }}
key = ["impression_id"]
flush = {{ max_rows = 250 }}
"#,
            proto = proto.display()
        );
        std::fs::write(dir.path().join("protolake.toml"), config).unwrap();
        Fixture { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `n` events (ids ad-0000…), with the records at `bad` indices broken.
    fn input(&self, name: &str, n: usize, bad: &[usize]) -> PathBuf {
        let mut out = Vec::new();
        for i in 0..n {
            let mut bytes = AdImpression {
                impression_id: format!("ad-{i:04}"),
                event_time: Some(prost_types::Timestamp { seconds: 1_763_683_200 + (i as i64) * 3600, nanos: 0 }),
                event_type: if i % 2 == 0 { "impression".into() } else { "click".into() },
                slot: i as i32,
                tags: vec![format!("t{}", i % 3)],
            }
            .encode_to_vec();
            if bad.contains(&i) {
                bytes.extend_from_slice(&[0x1a, 0x02, 0xc3, 0x28]); // event_type: invalid UTF-8
            }
            protolake::source::file::write_delimited(&mut out, &bytes).unwrap();
        }
        let path = self.path().join(name);
        std::fs::write(&path, out).unwrap();
        path
    }

    fn backfill_with(&self, flags: &[&str], inputs: &[&Path]) -> Output {
        let mut args = vec!["backfill", "--config", "protolake.toml", "--table", "ads"];
        args.extend_from_slice(flags);
        args.push("--input");
        args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
        protolake(&args, self.path())
    }

    fn backfill(&self, input: &Path) -> Output {
        protolake(
            &["backfill", "--config", "protolake.toml", "--table", "ads", "--input", input.to_str().unwrap()],
            self.path(),
        )
    }
}

#[test]
fn backfill_writes_a_table_the_python_readers_agree_on_and_a_rerun_adds_nothing() {
    let f = Fixture::new();
    let input = f.input("day1.pb", 1000, &[10, 500, 999]);
    let out = f.backfill(&input);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("997 rows"), "{}", text(&out));
    assert!(text(&out).contains("3 dead letters"), "{}", text(&out));

    let table = f.path().join("lake/ads");
    let seen = read_with_python(&table, "impression_id");
    let expected: Vec<String> =
        (0..1000).filter(|i| ![10, 500, 999].contains(i)).map(|i| format!("ad-{i:04}")).collect();
    for reader in ["deltalake", "polars"] {
        assert_eq!(seen[reader]["rows"], 997, "{reader}: {seen}");
        assert_eq!(seen[reader]["keys"], serde_json::json!(expected), "{reader}");
    }
    assert_eq!(seen["deltalake"]["partitions"], serde_json::json!(["event_date"]));
    let columns = seen["polars"]["columns"].as_array().unwrap();
    for c in [
        "impression_id",
        "event_time",
        "tags",
        "attributes",
        "_source_file",
        "_source_index",
        "_ingested_at",
        "event_date",
    ] {
        assert!(columns.iter().any(|x| x == c), "column {c} missing: {columns:?}");
    }
    assert_eq!(seen["polars"]["schema"]["event_time"], "Datetime(time_unit='us', time_zone='UTC')");
    assert_eq!(seen["polars"]["schema"]["event_date"], "Date");
    let version = seen["deltalake"]["version"].clone();

    // Rerun over the same file: nothing is added, the version stays.
    let again = f.backfill(&input);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("1000 records skipped: committed by an earlier run"), "{}", text(&again));
    let seen = read_with_python(&table, "impression_id");
    assert_eq!(seen["deltalake"]["rows"], 997);
    assert_eq!(seen["deltalake"]["version"], version, "a rerun commits nothing");
    let dlq = read_with_python(&f.path().join("lake/ads_dlq"), "_source_index");
    assert_eq!(dlq["deltalake"]["rows"], 3, "dead letters are not repeated: {dlq}");
}

/// `n` events an hour apart over a few days (ids ad-000000…), every 997th one broken.
fn many_events(path: &Path, n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for i in 0..n {
        let mut bytes = AdImpression {
            impression_id: format!("ad-{i:06}"),
            event_time: Some(prost_types::Timestamp { seconds: 1_763_683_200 + (i as i64 % 72) * 3600, nanos: 0 }),
            event_type: "impression".into(),
            slot: i as i32,
            tags: vec![format!("t{}", i % 3)],
        }
        .encode_to_vec();
        if i % 997 == 5 {
            bytes.extend_from_slice(&[0x1a, 0x02, 0xc3, 0x28]); // event_type: invalid UTF-8
            bad.push(i);
        }
        protolake::source::file::write_delimited(&mut out, &bytes).unwrap();
    }
    std::fs::write(path, out).unwrap();
    bad
}

#[test]
fn several_workers_killed_mid_run_and_rerun_add_every_record_exactly_once() {
    let f = Fixture::new();
    let config = std::fs::read_to_string(f.path().join("protolake.toml")).unwrap();
    std::fs::write(f.path().join("protolake.toml"), config.replace("max_rows = 250", "max_rows = 4000")).unwrap();
    let n = 120_000;
    let (first, second) = (f.path().join("a.pb"), f.path().join("b.pb"));
    let bad = many_events(&first, n);
    many_events(&second, n / 3);
    let bad_total = bad.len() + bad.iter().filter(|&&i| i < n / 3).count();
    let args = ["backfill", "--config", "protolake.toml", "--table", "ads", "--workers", "3", "--input"];
    let log = f.path().join("lake/ads/_delta_log");
    let commits = || {
        std::fs::read_dir(&log)
            .map_or(0, |d| d.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "json")).count())
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_protolake"))
        .args(args)
        .args([first.to_str().unwrap(), second.to_str().unwrap()])
        .current_dir(f.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed (SIGKILL) once a few commits are in, while the workers hold files not yet committed.
    let killed = loop {
        if child.try_wait().unwrap().is_some() {
            break false;
        }
        if commits() >= 4 {
            child.kill().unwrap();
            child.wait().unwrap();
            break true;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let table = f.path().join("lake/ads");
    if killed {
        let seen = read_with_python(&table, "impression_id");
        let rows = seen["deltalake"]["rows"].as_u64().unwrap();
        assert!(rows < (n + n / 3 - bad_total) as u64, "the kill came after the last commit: {rows} rows");
        // What is committed is a prefix of each file: no key twice, none beyond a gap.
        let keys = seen["deltalake"]["keys"].as_array().unwrap();
        let mut distinct = keys.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), keys.len(), "a key committed twice before the kill");
    } else {
        eprintln!("the run finished before the kill; the rerun below checks the result only");
    }
    let out = f.backfill_with(&["--workers", "3"], &[&first, &second]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("3 workers"), "{}", text(&out));
    let seen = read_with_python(&table, "impression_id");
    let mut expected: Vec<String> = (0..n).filter(|i| !bad.contains(i)).map(|i| format!("ad-{i:06}")).collect();
    expected.extend((0..n / 3).filter(|i| !bad.contains(i)).map(|i| format!("ad-{i:06}")));
    expected.sort();
    assert_eq!(seen["deltalake"]["rows"], expected.len(), "{}", text(&out));
    assert_eq!(seen["deltalake"]["keys"], serde_json::json!(expected));
    assert_eq!(seen["polars"]["keys"], serde_json::json!(expected));
    let dlq = read_with_python(&f.path().join("lake/ads_dlq"), "_source_index");
    assert_eq!(dlq["deltalake"]["rows"], bad_total, "every bad record once in the DLQ: {dlq}");
    // And a third run finds everything committed.
    let again = f.backfill_with(&["--workers", "2"], &[&first, &second]);
    assert!(text(&again).contains(&format!("{} records skipped", n + n / 3)), "{}", text(&again));
}

#[test]
fn one_worker_and_four_write_the_same_rows_and_dead_letters() {
    let mut seen = Vec::new();
    for workers in ["1", "4"] {
        let f = Fixture::new();
        let input = f.path().join("in.pb");
        let bad = many_events(&input, 20_000);
        let out = f.backfill_with(&["--workers", workers], &[&input]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(&format!("{} dead letters", bad.len())), "{}", text(&out));
        let rows = read_with_python(&f.path().join("lake/ads"), "impression_id");
        let dlq = read_with_python(&f.path().join("lake/ads_dlq"), "_source_index");
        seen.push((rows["deltalake"]["keys"].clone(), dlq["deltalake"]["keys"].clone()));
    }
    assert_eq!(seen[0], seen[1]);
}

#[test]
fn a_bad_record_lands_in_the_dlq_with_its_reason_and_position() {
    let f = Fixture::new();
    let input = f.input("day.pb", 20, &[7]);
    let out = f.backfill(&input);
    assert!(out.status.success(), "{}", text(&out));
    let script = r#"
import json, sys, polars as pl
df = pl.read_delta(sys.argv[1])
print(json.dumps(df.select("reason", "field_path", "message", "_source_index", "_source_file", "raw").to_dicts(), default=lambda b: b.hex()))
"#;
    let out = Command::new(python()).args(["-c", script]).arg(f.path().join("lake/ads_dlq")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    let r = &rows[0];
    assert_eq!(r["reason"], "invalid_utf8");
    assert_eq!(r["field_path"], "event_type");
    assert_eq!(r["_source_index"], 7);
    assert!(r["_source_file"].as_str().unwrap().ends_with("day.pb"));
    assert!(r["message"].as_str().unwrap().contains("not valid UTF-8"));
    assert!(r["raw"].as_str().unwrap().ends_with("1a02c328"), "original bytes kept: {r}");
    let seen = read_with_python(&f.path().join("lake/ads"), "impression_id");
    assert_eq!(seen["polars"]["rows"], 19, "the neighbours are in the table");
}

#[test]
fn contract_drift_is_refused_with_the_diff() {
    let f = Fixture::new();
    let init = protolake(&["schema", "init", "--config", "protolake.toml", "--table", "ads"], f.path());
    assert!(init.status.success(), "{}", text(&init));
    let v1 = f.path().join("schemas/ads/v1.ddl");
    let pinned = std::fs::read_to_string(&v1).unwrap();
    assert!(pinned.starts_with("impression_id STRING,\nevent_time TIMESTAMP,"), "{pinned}");
    let check = protolake(&["schema", "check", "--config", "protolake.toml", "--table", "ads"], f.path());
    assert!(check.status.success(), "{}", text(&check));

    // The pinned contract says slot is BIGINT; the descriptor says INT.
    std::fs::write(&v1, pinned.replace("slot INT", "slot BIGINT")).unwrap();
    let check = protolake(&["schema", "check", "--config", "protolake.toml", "--table", "ads"], f.path());
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(text(&check).contains("slot: expected BIGINT, found INT"), "{}", text(&check));
    let input = f.input("day.pb", 5, &[]);
    let out = f.backfill(&input);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("slot: expected BIGINT, found INT"), "{}", text(&out));
    assert!(!f.path().join("lake/ads/_delta_log").exists(), "nothing is written on a schema error");
}

#[test]
fn not_null_in_the_contract_sends_rows_without_the_value_to_the_dlq() {
    let f = Fixture::new();
    let init = protolake(&["schema", "init", "--config", "protolake.toml", "--table", "ads"], f.path());
    assert!(init.status.success(), "{}", text(&init));
    let v1 = f.path().join("schemas/ads/v1.ddl");
    let pinned = std::fs::read_to_string(&v1).unwrap();
    std::fs::write(&v1, pinned.replace("campaign_id STRING", "campaign_id STRING NOT NULL")).unwrap();
    let input = f.input("day.pb", 4, &[]);
    let out = f.backfill(&input);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("4 × not_null_violated"), "{}", text(&out));
}

#[test]
fn an_additive_contract_version_evolves_the_live_table() {
    let f = Fixture::new();
    // A private copy of the schema that we can evolve.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/protolake/examples/v1/events.proto");
    let proto_dir = f.path().join("proto/protolake/examples/v1");
    std::fs::create_dir_all(&proto_dir).unwrap();
    let original = std::fs::read_to_string(&src).unwrap();
    std::fs::write(proto_dir.join("events.proto"), &original).unwrap();
    let config = std::fs::read_to_string(f.path().join("protolake.toml")).unwrap();
    let repo_proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto").display().to_string();
    std::fs::write(f.path().join("protolake.toml"), config.replace(&repo_proto, "proto")).unwrap();

    let init = protolake(&["schema", "init", "--config", "protolake.toml", "--table", "ads"], f.path());
    assert!(init.status.success(), "{}", text(&init));
    let out = f.backfill(&f.input("day1.pb", 10, &[]));
    assert!(out.status.success(), "{}", text(&out));

    // v2 adds a nullable column.
    let evolved = original.replace(
        "  map<string, string> attributes = 11;",
        "  map<string, string> attributes = 11;\n  string referrer = 12;",
    );
    std::fs::write(proto_dir.join("events.proto"), evolved).unwrap();
    let refused = f.backfill(&f.input("day2.pb", 10, &[]));
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("referrer: expected no such column, found STRING"), "{}", text(&refused));
    let init = protolake(&["schema", "init", "--config", "protolake.toml", "--table", "ads"], f.path());
    assert!(init.status.success(), "{}", text(&init));
    assert!(f.path().join("schemas/ads/v2.ddl").exists());
    let out = f.backfill(&f.input("day2.pb", 10, &[]));
    assert!(out.status.success(), "{}", text(&out));

    let seen = read_with_python(&f.path().join("lake/ads"), "impression_id");
    assert_eq!(seen["polars"]["rows"], 20);
    assert!(seen["polars"]["columns"].as_array().unwrap().iter().any(|c| c == "referrer"), "{seen}");
    let check = protolake(&["schema", "check", "--config", "protolake.toml", "--table", "ads"], f.path());
    assert!(check.status.success(), "{}", text(&check));
}

#[test]
fn a_file_named_twice_is_read_once_and_a_cut_file_keeps_its_partial_record() {
    let f = Fixture::new();
    let input = f.input("day.pb", 6, &[]);
    let mut bytes = std::fs::read(&input).unwrap();
    bytes.truncate(bytes.len() - 5);
    std::fs::write(&input, bytes).unwrap();
    let name = input.to_str().unwrap();
    let out = protolake(&["backfill", "--config", "protolake.toml", "--table", "ads", "--input", name, name], f.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("5 rows"), "{}", text(&out));
    assert!(text(&out).contains("1 × truncated"), "{}", text(&out));
    let missing =
        protolake(&["backfill", "--config", "protolake.toml", "--table", "ads", "--input", "nope.pb"], f.path());
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing).contains("input nope.pb is not a readable file"), "{}", text(&missing));
}

#[test]
fn ad_hoc_backfill_needs_no_config_and_refuses_mixed_flags() {
    let f = Fixture::new();
    let input = f.input("day.pb", 8, &[3]);
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let proto_file = proto.join("protolake/examples/v1/events.proto");
    let args = [
        "backfill",
        "--table",
        "adhoc/ads",
        "--proto",
        proto_file.to_str().unwrap(),
        "-I",
        proto.to_str().unwrap(),
        "--message",
        "protolake.examples.v1.AdImpression",
        "--event-time",
        "event_time",
        "--input",
        input.to_str().unwrap(),
    ];
    let out = protolake(&args, f.path());
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("7 rows") && text(&out).contains("1 dead letters"), "{}", text(&out));
    let seen = read_with_python(&f.path().join("adhoc/ads"), "impression_id");
    assert_eq!(seen["deltalake"]["rows"], 7);
    assert!(f.path().join("adhoc/ads_dlq/_delta_log").is_dir());
    let mixed = protolake(
        &[
            "backfill",
            "--config",
            "protolake.toml",
            "--table",
            "ads",
            "--message",
            "x",
            "--input",
            input.to_str().unwrap(),
        ],
        f.path(),
    );
    assert_eq!(mixed.status.code(), Some(1));
    assert!(text(&mixed).contains("set in the config file when --config is used"), "{}", text(&mixed));
}

#[test]
fn backfill_writes_to_s3_and_azure_and_a_rerun_adds_nothing() {
    for (name, root, options) in common::object_stores("backfill") {
        let storage = common::storage_section(&options);
        let location = format!("{root}/ads");
        let f = Fixture::at(&location, &storage);
        let input = f.input("day1.pb", 600, &[3, 333]);
        let out = f.backfill(&input);
        assert!(out.status.success(), "{name}: {}", text(&out));
        assert!(text(&out).contains("598 rows"), "{name}: {}", text(&out));
        assert!(!text(&out).contains("unsafe for concurrent writers"), "{name}: {}", text(&out));

        let mut python_options = options.clone();
        if name == "s3" {
            python_options.insert("allow_http".into(), "true".into());
        }
        let seen = read_with_python_at(&location, &python_options, "impression_id");
        let expected: Vec<String> = (0..600).filter(|i| ![3, 333].contains(i)).map(|i| format!("ad-{i:04}")).collect();
        for reader in ["deltalake", "polars"] {
            assert_eq!(seen[reader]["rows"], 598, "{name} {reader}: {seen}");
            assert_eq!(seen[reader]["keys"], serde_json::json!(expected), "{name} {reader}");
        }
        let dlq = read_with_python_at(&format!("{location}_dlq"), &python_options, "_source_index");
        assert_eq!(dlq["deltalake"]["keys"], serde_json::json!(["3", "333"]), "{name}: {dlq}");

        let again = f.backfill(&input);
        assert!(again.status.success(), "{name}: {}", text(&again));
        assert!(text(&again).contains("600 records skipped"), "{name}: {}", text(&again));
        let after = read_with_python_at(&location, &python_options, "impression_id");
        assert_eq!(after["deltalake"]["version"], seen["deltalake"]["version"], "{name}: a rerun commits nothing");
    }
}

#[test]
fn storage_options_are_checked_before_anything_is_written() {
    let f = Fixture::at("s3://protolake/never/ads", "[storage]\naws_endpont = \"http://127.0.0.1:1\"\n");
    let input = f.input("day1.pb", 10, &[]);
    let out = f.backfill(&input);
    assert!(!out.status.success());
    assert!(text(&out).contains("storage option \"aws_endpont\": not an option of this store"), "{}", text(&out));

    // Ad hoc: --storage-option, refused for a local path.
    let out = protolake(
        &[
            "backfill",
            "--table",
            "lake/x",
            "--storage-option",
            "aws_region=us-east-1",
            "--proto",
            "proto/protolake/examples/v1/events.proto",
            "-I",
            "proto",
            "--message",
            "protolake.examples.v1.AdImpression",
            "--input",
            input.to_str().unwrap(),
        ],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("--storage-option applies to object stores"), "{}", text(&out));
}

/// What the Spark API (PySpark against Sail) sees in tables, with the files its plans read for
/// each filter.
fn read_with_spark(tables: &[&Path], key: &str, filters: &[&str]) -> Value {
    let tables: Vec<&str> = tables.iter().map(|t| t.to_str().unwrap()).collect();
    run_reader(
        "read_spark.py",
        &tables,
        &[("KEY_COLUMN", key.to_string()), ("FILTERS", serde_json::to_string(filters).unwrap())],
    )
}

#[test]
fn spark_polars_and_deltalake_read_every_column_kind_and_skip_files() {
    use prost_reflect::{DynamicMessage, MapKey, Value as V};
    let (_, pool) = common::compile("readers.proto");
    let desc = pool.get_message_by_name("protolake.tests.readers.Reading").unwrap();
    let place = pool.get_message_by_name("protolake.tests.readers.Reading.Place").unwrap();
    let line = pool.get_message_by_name("protolake.tests.readers.Reading.Line").unwrap();
    let ts = pool.get_message_by_name("google.protobuf.Timestamp").unwrap();
    const BASE: i64 = 1_763_596_800; // 2025-11-20T00:00:00Z
    let reading = |i: u64, score: f64| {
        let mut m = DynamicMessage::new(desc.clone());
        m.set_field_by_name("id", V::String(format!("r-{i:04}")));
        let mut at = DynamicMessage::new(ts.clone());
        at.set_field_by_name("seconds", V::I64(BASE + i as i64 * 1080)); // 80 a day
        m.set_field_by_name("at", V::Message(at));
        let mut p = DynamicMessage::new(place.clone());
        p.set_field_by_name("city", V::String(format!("c{}", i % 5)));
        if i.is_multiple_of(2) {
            p.set_field_by_name("postcode", V::String(format!("{:05}", i)));
        }
        m.set_field_by_name("place", V::Message(p));
        let lines = (0..i % 3)
            .map(|j| {
                let mut l = DynamicMessage::new(line.clone());
                l.set_field_by_name("sku", V::String(format!("s{j}")));
                l.set_field_by_name("quantity", V::I32(j as i32 + 1));
                V::Message(l)
            })
            .collect();
        m.set_field_by_name("lines", V::List(lines));
        m.set_field_by_name(
            "counters",
            V::Map(
                [(MapKey::String("a".into()), V::I64(i as i64)), (MapKey::String("b".into()), V::I64(-(i as i64)))]
                    .into(),
            ),
        );
        m.set_field_by_name("big", V::U64(u64::MAX - i));
        m.set_field_by_name("payload", V::Bytes(vec![i as u8, 0xff, 0].into()));
        m.set_field_by_name("score", V::F64(score));
        prost::Message::encode_to_vec(&m)
    };
    // Two archive files, backfilled one after the other: two commits over three days.
    let (mut first, mut input) = (Vec::new(), Vec::new());
    for i in 0..240u64 {
        let file = if i < 125 { &mut first } else { &mut input };
        protolake::source::file::write_delimited(file, &reading(i, i as f64 / 4.0)).unwrap();
    }
    // Redeliveries of ten records (a later record of the same key wins at close-of-books) and
    // one record whose id is not UTF-8 (a dead letter).
    for i in 48..58u64 {
        protolake::source::file::write_delimited(&mut input, &reading(i, 1000.0 + i as f64)).unwrap();
    }
    let mut bad = reading(240, 0.0);
    bad.extend_from_slice(&[0x0a, 0x02, 0xc3, 0x28]);
    protolake::source::file::write_delimited(&mut input, &bad).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    // PROTOLAKE_KEEP_LAKE keeps the folder for a look afterwards.
    let _cleanup = if std::env::var_os("PROTOLAKE_KEEP_LAKE").is_some() {
        eprintln!("lake kept in {}", root.display());
        #[allow(deprecated)]
        let _ = tmp.into_path();
        None
    } else {
        Some(tmp)
    };
    let protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/protos");
    std::fs::write(
        root.as_path().join("protolake.toml"),
        format!(
            "[tables.readings]\nproto = [\"{p}/readers.proto\"]\ninclude = [\"{p}\"]\nmessage = \"protolake.tests.readers.Reading\"\n\
             contract_dir = \"\"\nlocation = \"lake/readings\"\nevent_time = {{ field = \"at\" }}\nkey = [\"id\"]\n\n",
            p = protos.display()
        ),
    )
    .unwrap();
    std::fs::write(root.as_path().join("readings-1.pb"), first).unwrap();
    std::fs::write(root.as_path().join("readings-2.pb"), input).unwrap();
    for file in ["readings-1.pb", "readings-2.pb"] {
        let out = protolake(
            &["backfill", "--config", "protolake.toml", "--table", "readings", "--input", file],
            root.as_path(),
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let out = protolake(
        &["close-books", "--config", "protolake.toml", "--table", "readings", "--date", "2025-11-20"],
        root.as_path(),
    );
    assert!(out.status.success(), "{}", text(&out));

    let (raw, dlq, fin) = (
        root.as_path().join("lake/readings"),
        root.as_path().join("lake/readings_dlq"),
        root.as_path().join("lake/readings_final"),
    );
    let day = "event_date = DATE'2025-11-21'";
    let one_key = "id = 'r-0150'";
    // Beyond what an i64 or an f64 holds exactly: statistics written through them would make a
    // reader skip files that hold such rows.
    let wide = "big > 18446744073709551500";
    let spark = read_with_spark(&[&raw, &dlq, &fin], "id", &[day, one_key, wide]);
    let of = |p: &Path| &spark[p.to_str().unwrap()];

    // Schema: every kind of column as Spark types it.
    let schema = of(&raw)["schema"].as_str().unwrap();
    for part in [
        "id:string",
        "at:timestamp",
        "place:struct<city:string,postcode:string>",
        "lines:array<struct<sku:string,quantity:int>>",
        "counters:map<string,bigint>",
        "big:decimal(20,0)",
        "payload:binary",
        "score:double",
        "_source_file:string",
        "_source_index:bigint",
        "event_date:date",
    ] {
        assert!(schema.contains(part), "{part} not in {schema}");
    }
    assert_eq!(of(&fin)["schema"], of(&raw)["schema"], "the final table has the raw table's columns");
    assert!(of(&dlq)["schema"].as_str().unwrap().contains("raw:binary"), "{}", of(&dlq)["schema"]);

    // Values: one row in full.
    assert_eq!(of(&raw)["rows"], 250);
    let rows = of(&raw)["rows_json"].as_array().unwrap();
    let r = rows.iter().find(|r| r["id"] == "r-0151").unwrap();
    assert_eq!(r["at"].as_str().unwrap()[..19], *"2025-11-21T21:18:00", "{r}");
    assert_eq!(r["place"], serde_json::json!({"city": "c1", "postcode": null}), "{r}");
    assert_eq!(r["lines"], serde_json::json!([{"sku": "s0", "quantity": 1}]), "{r}");
    assert_eq!(r["counters"], serde_json::json!({"a": 151, "b": -151}), "{r}");
    assert_eq!(r["big"], (u64::MAX - 151).to_string(), "{r}");
    assert_eq!(r["payload"], "l/8A", "bytes 151, 255, 0 in base64: {r}");
    assert_eq!(r["score"], 37.75);
    assert_eq!(r["event_date"], "2025-11-21");
    assert_eq!(rows.iter().find(|r| r["id"] == "r-0150").unwrap()["place"]["postcode"], "00150");

    // Dead letters and the final table.
    assert_eq!(of(&dlq)["rows"], 1, "{}", of(&dlq));
    let published = of(&fin)["rows_json"].as_array().unwrap();
    assert_eq!(published.len(), 80, "2025-11-20 holds records 0..80 once each");
    for r in published.iter().filter(|r| (48..58).contains(&r["id"].as_str().unwrap()[2..].parse::<u64>().unwrap())) {
        assert!(r["score"].as_f64().unwrap() >= 1000.0, "the redelivery (the later record) wins: {r}");
    }

    // The readers skip files: the day's filter reads only that partition's files, the key's
    // filter only the files whose statistics may hold it.
    let files = of(&raw)["files"].as_u64().unwrap();
    let by_day = &of(&raw)["filtered"][day];
    let by_key = &of(&raw)["filtered"][one_key];
    // Two commits over three days: five files (DataFusion's plans list up to
    // five files per group, so the counts below are exact).
    assert_eq!(files, 5, "{}", of(&raw));
    assert_eq!(by_day["rows"], 80, "{by_day}");
    assert!(by_day["files"].as_u64().unwrap() < files, "the event_date filter read every file: {by_day} of {files}");
    assert_eq!(by_key["rows"], 1, "{by_key}");
    assert!(by_key["files"].as_u64().unwrap() < files, "the key filter read every file: {by_key} of {files}");

    assert_eq!(of(&raw)["filtered"][wide]["rows"], 125, "records 0..115 and 10 redeliveries: {}", of(&raw)["filtered"]);

    // After compaction (delta-rs writes those files) the values and the filters still hold.
    let out = protolake(&["optimize", "--config", "protolake.toml", "--table", "readings", "--json"], root.as_path());
    assert!(out.status.success(), "{}", text(&out));
    let compacted: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(compacted["files_removed"], 4, "the two days with two files each: {compacted}");
    let again = read_with_spark(&[&raw], "id", &[wide, one_key]);
    let again = &again[raw.to_str().unwrap()];
    assert!(again["files"].as_u64().unwrap() < files, "compaction left {} files of {files}", again["files"]);
    assert_eq!(again["filtered"][wide]["rows"], 125, "{again}");
    assert_eq!(again["filtered"][one_key]["rows"], 1, "{again}");
    let r = again["rows_json"].as_array().unwrap().iter().find(|r| r["id"] == "r-0151").unwrap();
    assert_eq!(r["big"], (u64::MAX - 151).to_string(), "{r}");

    // Z-ordered by score (rewrites each day's files): same rows, same answers.
    let out = protolake(
        &["optimize", "--config", "protolake.toml", "--table", "readings", "--zorder-by", "score", "--json"],
        root.as_path(),
    );
    assert!(out.status.success(), "{}", text(&out));
    let zordered: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(zordered["zorder_by"], serde_json::json!(["score"]), "{zordered}");
    assert!(zordered["files_removed"].as_u64().unwrap() > 0, "{zordered}");
    let after = read_with_spark(&[&raw], "id", &[wide]);
    let after = &after[raw.to_str().unwrap()];
    let sorted = |v: &Value| {
        let mut rows: Vec<String> = v["rows_json"].as_array().unwrap().iter().map(|r| r.to_string()).collect();
        rows.sort();
        rows
    };
    assert!(sorted(after) == sorted(again), "Z-ordering changed rows");
    assert_eq!(after["filtered"][wide]["rows"], 125, "{after}");

    // delta-rs and polars agree with Spark on the rows.
    let seen = read_with_python(&raw, "id");
    let spark_ids: Vec<String> = rows.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    for reader in ["deltalake", "polars"] {
        assert_eq!(seen[reader]["rows"], 250, "{reader}");
        assert_eq!(seen[reader]["keys"], serde_json::json!(spark_ids), "{reader}");
    }
}
