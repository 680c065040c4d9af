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
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/readers/read_delta.py");
    let out = Command::new(python())
        .arg(script)
        .arg(table)
        .env("KEY_COLUMN", key)
        .env("STORAGE_OPTIONS", serde_json::to_string(options).unwrap())
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "Python readers failed (scripts/test.sh installs deltalake and polars; PROTOLAKE_PYTHON picks the interpreter):\n{}",
        text(&out)
    );
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
