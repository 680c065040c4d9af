//! Object stores for real (the servers scripts/test.sh starts on loopback: moto for S3, Azurite
//! for Azure Blob): writers committing to one table at the same time lose no commit and
//! overwrite no version, and the table they leave is read by the `deltalake` Python package.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::{ObjectStore, ObjectStoreExt};
use protolake::config::ParquetOptions;
use protolake::location::Location;
use protolake::sink::{CommitInfo, SinkError, TableWriter};

mod common;

const WRITERS: usize = 3;
const COMMITS_EACH: i64 = 15;
const ROWS_PER_COMMIT: i64 = 20;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("writer", DataType::Utf8, false),
        Field::new("commit", DataType::Int64, false),
        Field::new("row", DataType::Int64, false),
    ]))
}

fn batch(writer: &str, commit: i64) -> RecordBatch {
    let rows: Vec<i64> = (0..ROWS_PER_COMMIT).collect();
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from(vec![writer; rows.len()])),
            Arc::new(Int64Array::from(vec![commit; rows.len()])),
            Arc::new(Int64Array::from(rows)),
        ],
    )
    .unwrap()
}

/// One writer: its own connection to the store, COMMITS_EACH commits, each recording its
/// position under its own app id. A commit that loses a race to another writer's is retried
/// by delta-rs at the next version; one that runs out of attempts is redone here from a fresh
/// snapshot (as the daemon does: the position it records makes a redo safe).
fn run_writer(location: Location, name: String) -> u64 {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(async {
        let mut writer = TableWriter::open_or_create(
            &location,
            schema(),
            Vec::new(),
            Default::default(),
            &ParquetOptions::default(),
            1 << 20,
        )
        .await
        .unwrap();
        let mut redone = 0;
        let app_id = format!("writer-{name}");
        let mut commit = 0;
        while commit < COMMITS_EACH {
            writer.write(batch(&name, commit)).await.unwrap();
            let info = CommitInfo { operation: "race".into(), rows: ROWS_PER_COMMIT as u64, ..Default::default() };
            match writer.commit(vec![(app_id.clone(), commit)], &info).await {
                Ok(Some(_)) => commit += 1,
                Ok(None) => unreachable!("every commit has rows"),
                Err(SinkError::Conflict { .. }) => {
                    redone += 1;
                    writer.abandon().unwrap();
                    writer.refresh().await.unwrap();
                    // The position tells whether the commit made it after all.
                    if writer.committed_position(&app_id).await.unwrap() == Some(commit) {
                        commit += 1;
                    }
                }
                Err(e) => panic!("{name}: {e}"),
            }
        }
        redone
    })
}

#[test]
fn writers_committing_to_one_table_at_once_lose_no_commit() {
    for (store, root, options) in common::object_stores("race") {
        let location = Location::with_options(format!("{root}/race"), options.clone()).unwrap();
        let threads: Vec<_> = (0..WRITERS)
            .map(|w| {
                let location = location.clone();
                std::thread::spawn(move || run_writer(location, format!("w{w}")))
            })
            .collect();
        let redone: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();

        // Every commit is a version of its own: creation (one of the writers) + all appends,
        // with no version missing and none holding two writers' commits.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let store_name = store;
        let (versions, positions) = rt.block_on(async {
            let table = protolake::sink::open_table(&location, None).await.unwrap().expect("the table exists");
            let store = table.log_store().object_store(None);
            let mut versions = BTreeSet::new();
            let mut listing = store.list(Some(&object_store::path::Path::from("_delta_log")));
            use futures::StreamExt;
            while let Some(meta) = listing.next().await {
                let name = meta.unwrap().location.filename().unwrap().to_string();
                if let Some(v) = name.strip_suffix(".json").and_then(|v| v.parse::<u64>().ok()) {
                    versions.insert(v);
                }
            }
            // Which writer made each version (its txn action): they must interleave, or the
            // writers never raced.
            let mut order = Vec::new();
            for v in 1..=versions.iter().max().copied().unwrap_or(0) {
                let path = object_store::path::Path::from(format!("_delta_log/{v:020}.json"));
                let text = String::from_utf8(store.get(&path).await.unwrap().bytes().await.unwrap().to_vec()).unwrap();
                let writer = (0..WRITERS).find(|w| text.contains(&format!("\"appId\":\"writer-w{w}\"")));
                order.push(writer.expect("every append records its writer"));
            }
            let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
            assert!(switches >= WRITERS, "{store_name}: the writers took turns only {switches} times: {order:?}");
            let mut positions = BTreeMap::new();
            for w in 0..WRITERS {
                let app = format!("writer-w{w}");
                let snapshot = table.snapshot().unwrap();
                let v = snapshot.transaction_version(&table.log_store(), &app).await.unwrap();
                positions.insert(app, v);
            }
            (versions, positions)
        });
        let appends = WRITERS as u64 * COMMITS_EACH as u64;
        assert_eq!(versions, (0..=appends).collect::<BTreeSet<_>>(), "{store}: the log's versions");
        for (app, v) in &positions {
            assert_eq!(*v, Some(COMMITS_EACH - 1), "{store}: {app}'s last position");
        }

        // Every row of every commit exactly once.
        let rows = common::read_columns(&location, &["writer", "commit", "row"]);
        let mut seen = BTreeSet::new();
        for r in &rows {
            let key = (r[0].clone().unwrap(), r[1].clone().unwrap(), r[2].clone().unwrap());
            assert!(seen.insert(key.clone()), "{store}: {key:?} twice");
        }
        assert_eq!(seen.len() as i64, WRITERS as i64 * COMMITS_EACH * ROWS_PER_COMMIT, "{store}");

        // An independent reader agrees.
        let mut python_options = options.clone();
        if store == "s3" {
            python_options.insert("allow_http".into(), "true".into());
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/readers/read_delta.py");
        let python = std::env::var("PROTOLAKE_PYTHON").unwrap_or_else(|_| "python3".into());
        let out = Command::new(python)
            .arg(script)
            .arg(location.uri())
            .env("STORAGE_OPTIONS", serde_json::to_string(&python_options).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let python_view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(python_view["deltalake"]["rows"], rows.len() as i64, "{store}: {python_view}");
        assert_eq!(python_view["deltalake"]["version"], appends, "{store}: {python_view}");
        eprintln!("{store}: {appends} commits from {WRITERS} writers, {redone} redone after losing every retry");
    }
}

#[test]
fn a_store_that_overwrites_on_create_is_reported_at_start_up() {
    // moto with conditional writes turned off on the client: create-only writes become plain
    // puts, which the start-up check notices.
    let (_, root, mut options) =
        common::object_stores("unsafe").into_iter().find(|(name, _, _)| *name == "s3").unwrap();
    options.insert("aws_conditional_put".into(), "disabled".into());
    let dir = tempfile::tempdir().unwrap();
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let config = format!(
        "{}\n[tables.ads]\nproto = [\"{proto}/protolake/examples/v1/events.proto\"]\ninclude = [\"{proto}\"]\n\
         message = \"protolake.examples.v1.AdImpression\"\ncontract_dir = \"\"\nlocation = \"{root}/ads\"\n",
        common::storage_section(&options),
        proto = proto.display(),
    );
    std::fs::write(dir.path().join("protolake.toml"), config).unwrap();
    std::fs::write(dir.path().join("empty.pb"), b"").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_protolake"))
        .args(["backfill", "--config", "protolake.toml", "--table", "ads", "--input", "empty.pb"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("unsafe for concurrent writers: conditional_put=disabled"), "{text}");
}

#[test]
fn gcs_and_hdfs_locations_reach_their_stores() {
    // No GCS or HDFS server here: what is checked is that the URL reaches the store's client
    // (built in by the gcs and hdfs features) and fails on the network, not on the scheme.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cases = [
        Location::with_options(
            "gs://protolake/t",
            [
                (
                    "google_service_account_key".to_string(),
                    "{\"private_key\":\"x\",\"client_email\":\"a@b\"}".to_string(),
                ),
                ("max_retries".to_string(), "0".to_string()),
            ]
            .into(),
        )
        .unwrap(),
        Location::new("hdfs://127.0.0.1:1/protolake/t"),
    ];
    for location in cases {
        let error = rt
            .block_on(protolake::sink::open_table(&location, None))
            .map(|t| t.is_some())
            .expect_err("nothing answers there");
        let text = format!("{error:#}").to_lowercase();
        assert!(!text.contains("scheme") && !text.contains("unknown"), "{location}: {text}");
        let client = if location.uri().starts_with("gs:") { "gcs" } else { "hdfs" };
        assert!(text.contains(client), "{location}: the error is not the {client} client's: {text}");
    }
}
