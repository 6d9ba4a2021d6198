//! `msgxc export`: the event log as files analysts read (Spark, DuckDB, pandas).
//!
//! Hive-partitioned by event type and UTC day, `type=<kind>/day=<YYYY-MM-DD>/part-<seq>.<ext>`
//! (`<seq>`: the stream sequence of the file's first event), as zstd-compressed Parquet or as
//! NDJSON. Every row holds `event_seq`, `event_id`, `event_type`, `occurred_at` (UTC),
//! `actor_uid`, `actor_roles` and the event's `data` flattened: nested objects become dotted
//! columns (`audience.kind`, `opts.urgency`), arrays JSON text. A Parquet file's columns are
//! those its rows have; each column is typed from its values (integers, floats, booleans, else
//! text), so one partition's files may differ in columns (read them with Spark's
//! `mergeSchema` or DuckDB's `union_by_name`).
//!
//! Resumable: `_export.json` in the output directory records the last exported sequence, and
//! a run continues after it. File names depend only on where a run starts and on the events,
//! so a run that was interrupted before it recorded its end writes the same files again
//! (replacing, never duplicating, what it had written).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use futures::StreamExt;
use serde_json::{Map, Value};

use exchange::{EventLog, Start, Stored};

/// File format of an export.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Parquet,
    Ndjson,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Ndjson => "ndjson",
        }
    }
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: Format,
    pub out: PathBuf,
    /// Start here (default: after the last exported sequence, else the beginning).
    pub from_seq: Option<u64>,
    /// Start at the first event stored at or after this time (an event the directory holds
    /// already is not written again).
    pub since: Option<time::OffsetDateTime>,
    /// Only events on this subject (wildcards allowed).
    pub subject: Option<String>,
    /// Show progress (rate and ETA) on standard error.
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events written.
    pub events: u64,
    /// Files written.
    pub files: usize,
    /// The last sequence now exported (0 when nothing ever was).
    pub last_seq: u64,
}

/// Name of the resume record in the output directory.
pub const CHECKPOINT: &str = "_export.json";

/// Rows per file at most (a partition with more gets several files in one run).
const ROWS_PER_FILE: usize = 100_000;

#[derive(serde::Serialize, serde::Deserialize)]
struct Checkpoint {
    last_seq: u64,
    format: Format,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
}

/// One flattened event.
struct Row {
    seq: u64,
    id: String,
    kind: &'static str,
    micros: i64,
    actor: String,
    roles: String,
    data: BTreeMap<String, Value>,
}

/// Nested objects as dotted keys; arrays as JSON text; nulls left out.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Null => {}
        Value::Array(_) => {
            out.insert(prefix.to_owned(), Value::String(v.to_string()));
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

fn row_of(stored: &Stored) -> anyhow::Result<Row> {
    let env = &stored.envelope;
    let value = serde_json::to_value(env)?;
    let mut data = BTreeMap::new();
    if let Some(d) = value.get("data") {
        flatten("", d, &mut data);
    }
    let micros = i64::try_from(env.occurred_at.unix_timestamp_nanos() / 1_000).unwrap_or(0);
    Ok(Row {
        seq: stored.seq,
        id: env.id.to_string(),
        kind: env.event.kind(),
        micros,
        actor: env.actor.uid.clone(),
        roles: env.actor.roles.join(","),
        data,
    })
}

fn day_of(micros: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

/// Exports the events after the last exported one (or from `from_seq`) up to the stream's end
/// as it is when the run starts.
pub async fn export(log: &EventLog, opts: &ExportOptions) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let checkpoint_path = opts.out.join(CHECKPOINT);
    let previous: Option<Checkpoint> = match std::fs::read_to_string(&checkpoint_path) {
        Ok(text) => Some(
            serde_json::from_str(&text)
                .with_context(|| format!("reading {}", checkpoint_path.display()))?,
        ),
        Err(_) => None,
    };
    if let Some(p) = &previous {
        if p.format != opts.format {
            bail!(
                "{} holds a {:?} export; export {:?} into another directory",
                opts.out.display(),
                p.format,
                opts.format
            );
        }
        if p.subject != opts.subject {
            bail!(
                "{} holds an export of subject {:?}; this run asks for {:?}",
                opts.out.display(),
                p.subject,
                opts.subject
            );
        }
    }
    let done = previous.as_ref().map_or(0, |p| p.last_seq);
    let from = opts.from_seq.unwrap_or(done + 1).max(1);
    let last = log.last_seq().await?;
    let mut summary = Summary {
        last_seq: done,
        ..Default::default()
    };
    if from > last {
        return Ok(summary);
    }
    let start = match (opts.from_seq, opts.since) {
        (None, Some(t)) => Start::Time(t),
        _ => Start::Sequence(from),
    };
    let by_time = matches!(start, Start::Time(_));
    let events = log.read(start, opts.subject.clone(), last).await?;
    let mut events = std::pin::pin!(events);
    let mut partitions: BTreeMap<(&'static str, String), Vec<Row>> = BTreeMap::new();
    let mut progress = Progress::new(opts.progress, last + 1 - from);
    let idle = Duration::from_secs(2);
    let mut last_read = from - 1;
    let mut from = from;
    loop {
        match tokio::time::timeout(idle, events.next()).await {
            Ok(Some(Ok(stored))) => {
                if by_time && last_read < from {
                    // The first event at or after the time: the progress counts from it.
                    from = stored.seq.max(done + 1);
                    progress.total = (last + 1).saturating_sub(from);
                }
                last_read = stored.seq;
                if stored.seq <= done {
                    // Written by an earlier run into this directory.
                    continue;
                }
                let row = row_of(&stored)?;
                let key = (row.kind, day_of(row.micros));
                let rows = partitions.entry(key.clone()).or_default();
                rows.push(row);
                if rows.len() >= ROWS_PER_FILE {
                    let rows = std::mem::take(rows);
                    summary.events += rows.len() as u64;
                    write_file(&opts.out, opts.format, &key, rows)?;
                    summary.files += 1;
                }
                progress.tick((stored.seq + 1).saturating_sub(from));
                if stored.seq >= last {
                    break;
                }
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            // A filtered read has no event at the end to stop at: it goes quiet instead.
            Ok(None) | Err(_) => break,
        }
    }
    for (key, rows) in partitions {
        if rows.is_empty() {
            continue;
        }
        summary.events += rows.len() as u64;
        write_file(&opts.out, opts.format, &key, rows)?;
        summary.files += 1;
    }
    progress.finish(summary.events);
    // A filtered read that went quiet has still covered the stream up to `last`.
    summary.last_seq = last.max(last_read).max(done);
    let record = serde_json::to_vec_pretty(&Checkpoint {
        last_seq: summary.last_seq,
        format: opts.format,
        subject: opts.subject.clone(),
    })?;
    write_atomically(&checkpoint_path, &record)?;
    Ok(summary)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn write_file(
    out: &Path,
    format: Format,
    (kind, day): &(&'static str, String),
    rows: Vec<Row>,
) -> anyhow::Result<()> {
    let dir = out.join(format!("type={kind}")).join(format!("day={day}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let first = rows.first().map_or(0, |r| r.seq);
    let path = dir.join(format!("part-{first:012}.{}", format.extension()));
    let tmp = dir.join(format!(".part-{first:012}.tmp"));
    let bytes = match format {
        Format::Ndjson => ndjson(&rows)?,
        Format::Parquet => parquet(&rows)?,
    };
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn ndjson(rows: &[Row]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for r in rows {
        let mut line = Map::new();
        line.insert("event_seq".into(), r.seq.into());
        line.insert("event_id".into(), r.id.clone().into());
        line.insert("event_type".into(), r.kind.into());
        line.insert("occurred_at".into(), rfc3339(r.micros).into());
        line.insert("actor_uid".into(), r.actor.clone().into());
        line.insert("actor_roles".into(), r.roles.clone().into());
        for (k, v) in &r.data {
            line.insert(k.clone(), v.clone());
        }
        serde_json::to_writer(&mut out, &line)?;
        out.push(b'\n');
    }
    Ok(out)
}

fn rfc3339(micros: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The type a data column gets from its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Bool,
    Text,
}

fn kind_of(v: &Value) -> Kind {
    match v {
        Value::Bool(_) => Kind::Bool,
        Value::Number(n) if n.is_i64() => Kind::Int,
        Value::Number(_) => Kind::Float,
        _ => Kind::Text,
    }
}

fn merge(a: Kind, b: Kind) -> Kind {
    match (a, b) {
        (x, y) if x == y => x,
        (Kind::Int, Kind::Float) | (Kind::Float, Kind::Int) => Kind::Float,
        _ => Kind::Text,
    }
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parquet(rows: &[Row]) -> anyhow::Result<Vec<u8>> {
    let mut kinds: BTreeMap<&str, Kind> = BTreeMap::new();
    for r in rows {
        for (k, v) in &r.data {
            let kind = kind_of(v);
            kinds
                .entry(k.as_str())
                .and_modify(|e| *e = merge(*e, kind))
                .or_insert(kind);
        }
    }
    let mut fields = vec![
        Field::new("event_seq", DataType::UInt64, false),
        Field::new("event_id", DataType::Utf8, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new(
            "occurred_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Field::new("actor_uid", DataType::Utf8, false),
        Field::new("actor_roles", DataType::Utf8, false),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.seq))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.id))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.kind))),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.micros))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.actor))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.roles))),
    ];
    for (name, kind) in &kinds {
        let values = rows.iter().map(|r| r.data.get(*name));
        let (data_type, array): (DataType, ArrayRef) = match kind {
            Kind::Int => (
                DataType::Int64,
                Arc::new(
                    values
                        .map(|v| v.and_then(Value::as_i64))
                        .collect::<Int64Array>(),
                ),
            ),
            Kind::Float => (
                DataType::Float64,
                Arc::new(
                    values
                        .map(|v| v.and_then(Value::as_f64))
                        .collect::<Float64Array>(),
                ),
            ),
            Kind::Bool => (
                DataType::Boolean,
                Arc::new(
                    values
                        .map(|v| v.and_then(Value::as_bool))
                        .collect::<BooleanArray>(),
                ),
            ),
            Kind::Text => (
                DataType::Utf8,
                Arc::new(values.map(|v| v.map(text_of)).collect::<StringArray>()),
            ),
        };
        fields.push(Field::new(*name, data_type, true));
        columns.push(array);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(
            parquet::basic::ZstdLevel::default(),
        ))
        .build();
    let mut out = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(out)
}

/// A one-line progress report on a terminal: events, rate, ETA.
struct Progress {
    on: bool,
    total: u64,
    started: Instant,
    shown: Instant,
}

impl Progress {
    fn new(wanted: bool, total: u64) -> Self {
        let now = Instant::now();
        Self {
            on: wanted && std::io::stderr().is_terminal(),
            total,
            started: now,
            shown: now,
        }
    }

    fn tick(&mut self, done: u64) {
        if !self.on || self.shown.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.shown = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 {
            (self.total.saturating_sub(done)) as f64 / rate
        } else {
            0.0
        };
        let pct = if self.total > 0 {
            done as f64 * 100.0 / self.total as f64
        } else {
            100.0
        };
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r{done}/{} events ({pct:.0}%)  {rate:.0}/s  ETA {eta:.0}s   ",
            self.total
        );
        let _ = err.flush();
    }

    fn finish(&self, events: u64) {
        if self.on {
            let secs = self.started.elapsed().as_secs_f64();
            eprintln!("\r{events} events exported in {secs:.1}s                    ");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattening_and_column_types() {
        let mut out = BTreeMap::new();
        flatten(
            "",
            &serde_json::json!({"uid": "a", "opts": {"urgency": 4, "title": null,
                "data": {"x": 1.5}}, "uids": ["a", "b"], "ok": true}),
            &mut out,
        );
        assert_eq!(out["uid"], "a");
        assert_eq!(out["opts.urgency"], 4);
        assert_eq!(out["opts.data.x"], 1.5);
        assert_eq!(out["uids"], r#"["a","b"]"#);
        assert!(!out.contains_key("opts.title"));
        assert_eq!(merge(Kind::Int, Kind::Float), Kind::Float);
        assert_eq!(merge(Kind::Int, Kind::Text), Kind::Text);
        assert_eq!(day_of(0), "1970-01-01");
    }
}
