//! The `schedule` scenario: many scheduled sends due at the same instant, beside the same
//! number of messages sent at once, in the same run. Both are timed until the projector has
//! folded every message (its inbox entry written); the scheduled ones from the instant they
//! were due, the immediate ones from their first request.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use projections::Store;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::scenarios::{Meter, Server, token};
use super::{BenchOptions, Row};

/// Requests in flight while the messages are sent or scheduled.
const IN_FLIGHT: usize = 64;
/// Recipients the messages go to, round robin.
const USERS: usize = 1000;

pub async fn schedule(opts: &BenchOptions) -> anyhow::Result<Vec<Row>> {
    let n: usize = if opts.quick { 2_000 } else { 10_000 };
    let server = Server::start(opts)?;
    let dir = tempfile::tempdir()?;
    let exchange = super::scenarios::in_process(&server, &dir.path().join("bench.sqlite3")).await?;
    let base = format!(
        "http://{}/api/v1",
        exchange.addr.context("gateway address")?
    );
    let admin = token()?;
    let http = reqwest::Client::new();
    let send_all = |deliver_at: Option<String>| {
        let (http, base, admin) = (http.clone(), base.clone(), admin.clone());
        async move {
            let mut results = futures::stream::iter(0..n)
                .map(|i| {
                    let mut body =
                        json!({"uid": format!("u{}", i % USERS), "msg": format!("m{i}")});
                    if let Some(at) = &deliver_at {
                        body["opts"] = json!({ "deliver_at": at });
                    }
                    http.post(format!("{base}/send"))
                        .bearer_auth(&admin)
                        .json(&body)
                        .send()
                })
                .buffer_unordered(IN_FLIGHT);
            while let Some(r) = results.next().await {
                let r = r?;
                if r.status() != 202 {
                    bail!("send answered {}", r.status());
                }
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    let folded_all = |store: std::sync::Arc<dyn Store>, log: exchange::EventLog| async move {
        loop {
            let last = log.last_seq().await?;
            let pending = store.scheduled_messages(None, 1).await?;
            if pending.is_empty() && store.checkpoint().await? >= last {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };

    // Baseline: the same number of messages sent at once.
    let meter = Meter::start(&server);
    let started = Instant::now();
    send_all(None).await?;
    folded_all(exchange.store.clone(), exchange.log.clone()).await?;
    let took = started.elapsed().as_secs_f64();
    let mut now_row = meter.row(
        &server,
        "schedule",
        "msgxc POST /send, sent at once",
        n as f64 / took,
        None,
    );
    now_row.notes.push(format!(
        "{n} messages to {USERS} users folded {took:.2} s after the first request"
    ));

    // Scheduled: every message due at one instant, far enough ahead to schedule them all.
    let lead = Duration::from_secs(if opts.quick { 10 } else { 30 });
    let due = OffsetDateTime::now_utc() + lead;
    let at = due.format(&Rfc3339)?;
    let scheduling = Instant::now();
    send_all(Some(at)).await?;
    let scheduled_in = scheduling.elapsed().as_secs_f64();
    let until_due = due - OffsetDateTime::now_utc();
    if until_due.is_negative() {
        bail!("scheduling {n} messages took {scheduled_in:.1} s, past their due time");
    }
    tokio::time::sleep(Duration::try_from(until_due).unwrap_or_default()).await;
    let meter = Meter::start(&server);
    let at_due = Instant::now();
    folded_all(exchange.store.clone(), exchange.log.clone()).await?;
    let took = at_due.elapsed().as_secs_f64();
    let mut sched_row = meter.row(
        &server,
        "schedule",
        "msgxc scheduled sends, all due at one instant",
        n as f64 / took,
        None,
    );
    sched_row.notes.push(format!(
        "{n} messages folded {took:.2} s after they were due; scheduling them took {scheduled_in:.2} s ({:.0}/s); {:.2} of the rate sent at once",
        n as f64 / scheduled_in,
        (n as f64 / took) / now_row.rate
    ));
    exchange.shutdown().await;
    Ok(vec![now_row, sched_row])
}
