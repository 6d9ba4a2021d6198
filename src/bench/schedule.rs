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

/// The `stage` scenario: `n` seed-002 subscriptions on one schedule, all due at the same
/// instant (one `stage_tick`), beside a broadcast to the same users in the same run. Both are
/// timed until the projector has folded every entry: the tick from its due time, the
/// broadcast from its request.
pub async fn stage(opts: &BenchOptions) -> anyhow::Result<Vec<Row>> {
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
    let post = |path: &str, body: serde_json::Value| {
        http.post(format!("{base}/{path}"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let created = |r: reqwest::Response| async move {
        if r.status() != 201 {
            bail!(
                "create answered {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
        }
        let v: serde_json::Value = r.json().await?;
        Ok::<_, anyhow::Error>(v["id"].clone())
    };
    // Due far enough ahead to subscribe everyone first, on a whole second.
    let lead = Duration::from_secs(if opts.quick { 15 } else { 40 });
    let due = (OffsetDateTime::now_utc() + lead).replace_nanosecond(0)?;
    let schedule = created(
        post(
            "schedule/",
            json!({
                "second": due.second().to_string(), "minute": due.minute().to_string(),
                "hour": due.hour().to_string(), "day_of_month": due.day().to_string(),
                "month_of_year": (due.month() as u8).to_string(),
            }),
        )
        .await?,
    )
    .await?;
    let set = created(
        post(
            "messageset/",
            json!({"short_name": "bench", "default_schedule": schedule}),
        )
        .await?,
    )
    .await?;
    created(
        post(
            "message/",
            json!({"messageset": set, "sequence_number": 1, "lang": "eng", "text_content": "week one"}),
        )
        .await?,
    )
    .await?;
    let subscribing = Instant::now();
    let mut subs = futures::stream::iter(0..n)
        .map(|i| {
            post(
                "subscriptions/",
                json!({"identity": format!("s{i}"), "messageset": set, "lang": "eng"}),
            )
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(r) = subs.next().await {
        created(r?).await?;
    }
    drop(subs);
    let subscribed_in = subscribing.elapsed().as_secs_f64();
    let (store, log) = (exchange.store.clone(), exchange.log.clone());
    let before = log.last_seq().await?;
    let until_due = due - OffsetDateTime::now_utc();
    if until_due.is_negative() {
        bail!("subscribing {n} took {subscribed_in:.1} s, past the due time");
    }
    tokio::time::sleep(Duration::try_from(until_due).unwrap_or_default()).await;
    let meter = Meter::start(&server);
    let at_due = Instant::now();
    // The tick is appended, then folded.
    loop {
        let last = log.last_seq().await?;
        if last > before && store.checkpoint().await? >= last {
            break;
        }
        if at_due.elapsed() > Duration::from_secs(600) {
            bail!("the tick was not folded within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = at_due.elapsed().as_secs_f64();
    let (_, docs) = store.stage_docs("subscription", u32::MAX, 0).await?;
    let sent = docs
        .iter()
        .filter(|d| d.body.contains("\"completed\":true"))
        .count();
    if sent != n {
        bail!("{sent} of {n} subscriptions were sent to");
    }
    let mut tick_row = meter.row(
        &server,
        "stage",
        "msgxc seed-002 subscriptions, one schedule due",
        n as f64 / took,
        None,
    );

    // Baseline: a broadcast to the same users (and the admin), folded.
    let meter = Meter::start(&server);
    let started = Instant::now();
    let r = post("broadcast", json!({"msg": "everyone"})).await?;
    if r.status() != 202 {
        bail!("broadcast answered {}", r.status());
    }
    let last = log.last_seq().await?;
    while store.checkpoint().await? < last {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let broadcast_took = started.elapsed().as_secs_f64();
    let bc_row = meter.row(
        &server,
        "stage",
        "msgxc POST /broadcast to the same users",
        n as f64 / broadcast_took,
        None,
    );
    tick_row.notes.push(format!(
        "{n} subscriptions sent and advanced {took:.2} s after they were due ({:.2} of the broadcast's rate); subscribing them took {subscribed_in:.1} s ({:.0}/s)",
        (n as f64 / took) / bc_row.rate,
        n as f64 / subscribed_in
    ));
    exchange.shutdown().await;
    Ok(vec![bc_row, tick_row])
}
