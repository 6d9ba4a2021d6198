//! `msgxc export`: every event exactly once across resumed runs, partitioned by type and day,
//! as Parquet that reads back with its columns typed, or as NDJSON.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow_array::{Array, Int64Array, StringArray, UInt64Array};
use common::{Exchange, token};
use msgxc::export::{ExportOptions, Format, export};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::json;

fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Every row's (sequence, type) of a Parquet export, and the rows of `message_sent` files.
fn parquet_rows(dir: &Path) -> (Vec<(u64, String)>, Vec<arrow_array::RecordBatch>) {
    let mut rows = Vec::new();
    let mut sent = Vec::new();
    for f in files(dir, "parquet") {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&f).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let seqs = batch
                .column_by_name("event_seq")
                .unwrap()
                .as_any()
                .downcast_ref::<UInt64Array>()
                .unwrap()
                .clone();
            let kinds = batch
                .column_by_name("event_type")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            let partition = f.parent().unwrap().parent().unwrap();
            for i in 0..batch.num_rows() {
                assert_eq!(
                    partition.file_name().unwrap().to_str().unwrap(),
                    format!("type={}", kinds.value(i)),
                    "{f:?}"
                );
                rows.push((seqs.value(i), kinds.value(i).to_owned()));
            }
            if kinds.value(0) == "message_sent" {
                sent.push(batch);
            }
        }
    }
    rows.sort();
    (rows, sent)
}

#[tokio::test]
async fn parquet_and_ndjson_exports_hold_every_event_once_across_runs() {
    let ex = Exchange::start_with(|o| o.gateway.max_recipients = 100).await;
    let admin = token("root", true);
    let alice = token("alice", false);
    let tid = ex.thread(&alice, true, true).await;
    let (s, b) = ex
        .post("/publish", &alice, json!({"tid": tid, "msg": "hello"}))
        .await;
    assert_eq!(s, 202, "{b}");
    let (s, b) = ex
        .post(
            "/send",
            &admin,
            json!({"uid": "bob", "msg": "hi", "opts": {"urgency": "high", "data": {"n": 1}}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    ex.caught_up().await;
    let log = &ex.running().log;
    let first_last = log.last_seq().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let opts = |format, out: &Path| ExportOptions {
        format,
        out: out.to_path_buf(),
        from_seq: None,
        since: None,
        subject: None,
        progress: false,
    };
    let p = dir.path().join("parquet");
    let s1 = export(log, &opts(Format::Parquet, &p)).await.unwrap();
    assert_eq!((s1.events, s1.last_seq), (first_last, first_last));
    let (rows, sent) = parquet_rows(&p);
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=first_last).collect::<Vec<_>>()
    );
    // The data flattened and typed: `opts.urgency` an integer column, `audience.uid` text.
    let batch = &sent[0];
    let urgency = batch
        .column_by_name("opts.urgency")
        .expect("opts.urgency column")
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("an integer column")
        .value(0);
    assert_eq!(urgency, 4);
    let uid = batch
        .column_by_name("audience.uid")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .value(0)
        .to_owned();
    assert_eq!(uid, "bob");
    assert!(batch.column_by_name("opts.data.n").is_some());
    let before: BTreeMap<PathBuf, Vec<u8>> = files(&p, "parquet")
        .into_iter()
        .map(|f| (f.clone(), std::fs::read(&f).unwrap()))
        .collect();

    // Nothing new: nothing written. More events: only those, in new files.
    let again = export(log, &opts(Format::Parquet, &p)).await.unwrap();
    assert_eq!((again.events, again.files), (0, 0));
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = time::OffsetDateTime::now_utc();
    let (s, b) = ex
        .post(
            "/multicast",
            &admin,
            json!({"uids": ["bob", "carol"], "msg": "more"}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let (s, b) = ex
        .post("/track", &token("bob", false), json!({"event": "purchase"}))
        .await;
    assert_eq!(s, 202, "{b}");
    ex.caught_up().await;
    let last = log.last_seq().await.unwrap();
    let s2 = export(log, &opts(Format::Parquet, &p)).await.unwrap();
    assert_eq!((s2.events, s2.last_seq), (last - first_last, last));
    let (rows, _) = parquet_rows(&p);
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "every event once"
    );
    assert!(rows.iter().any(|r| r.1 == "tracked"));
    for (f, bytes) in &before {
        assert_eq!(&std::fs::read(f).unwrap(), bytes, "{f:?} rewritten");
    }
    // Another format into the same directory is refused.
    let err = export(log, &opts(Format::Ndjson, &p)).await.unwrap_err();
    assert!(err.to_string().contains("export"), "{err}");

    // NDJSON: the same rows, one object per line.
    let n = dir.path().join("ndjson");
    let s3 = export(log, &opts(Format::Ndjson, &n)).await.unwrap();
    assert_eq!(s3.events, last);
    let mut seqs = Vec::new();
    for f in files(&n, "ndjson") {
        let day = f
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(
                v["occurred_at"].as_str().unwrap().starts_with(&day[4..]),
                "{v} in {day}"
            );
            assert!(v["event_id"].is_string() && v["actor_uid"].is_string());
            seqs.push(v["event_seq"].as_u64().unwrap());
        }
    }
    seqs.sort();
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>());

    // A subject filter exports only its events.
    let m = dir.path().join("messages");
    let mut o = opts(Format::Ndjson, &m);
    o.subject = Some("msgxc.ev.message.>".into());
    let s4 = export(log, &o).await.unwrap();
    assert_eq!((s4.events, s4.last_seq), (1, last), "the multicast alone");

    // From a time: the events stored since, once across runs.
    let t = dir.path().join("since");
    let mut o = opts(Format::Ndjson, &t);
    o.since = Some(between);
    let s5 = export(log, &o).await.unwrap();
    assert_eq!((s5.events, s5.last_seq), (last - first_last, last));
    let again = export(log, &o).await.unwrap();
    assert_eq!(again.events, 0, "nothing twice");
    let mut seqs: Vec<u64> = files(&t, "ndjson")
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["event_seq"]
                        .as_u64()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    seqs.sort();
    assert_eq!(seqs, (first_last + 1..=last).collect::<Vec<_>>());
}
