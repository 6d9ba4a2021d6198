//! The analysts' path: the PySpark experiment job (`reports/`), run in local mode on an export
//! of the stream, gives the same table as the exchange's own report on that stream: users per
//! arm at each step, the comparisons, the sample-ratio check and the winner.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Exchange, token};
use exchange::channels::{ChannelSettings, sms::SmsConfig};
use msgxc::export::{ExportOptions, Format, export};
use serde_json::{Value, json};
use testkit::providers::sms_sink;

fn close(a: &Value, b: &Value, what: &str) {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => assert!(
            (x - y).abs() <= 1e-9 * x.abs().max(1.0),
            "{what}: {x} online, {y} offline"
        ),
        _ => assert_eq!(a, b, "{what}"),
    }
}

/// A read of `uid`'s entry `mid` appended straight to the log, as a second device of theirs
/// racing a first one's read-all or archive can have it there (the gateway sends no read of
/// an entry it already sees read).
async fn raced_read(ex: &Exchange, uid: &str, mid: &str) {
    let env = exchange::events::Envelope::new(
        exchange::events::Actor {
            uid: uid.to_owned(),
            roles: vec![],
        },
        exchange::events::Event::NotificationsRead(exchange::events::NotificationsRead {
            uid: uid.to_owned(),
            ids: vec![mid.parse().unwrap()],
        }),
    );
    ex.running().log.append(&env, None).await.unwrap();
}

/// Runs a report job of `reports/` on an export (Spark in local mode); its JSON lines.
async fn spark_job(module: &str, export: &std::path::Path, args: &[String]) -> Vec<Value> {
    let mut all = vec!["--master".to_owned(), "local[2]".to_owned()];
    all.extend_from_slice(args);
    report_job(module, export, &all).await
}

async fn report_job(module: &str, export: &std::path::Path, args: &[String]) -> Vec<Value> {
    let reports = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("reports");
    let python = testkit::providers::tools_python();
    // Spark 4 needs Java 17: the one the set-up script found for Cassandra, when it did.
    let java_home = python
        .ancestors()
        .nth(3)
        .map(|tools| tools.join("cassandra/java_home"))
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map(|s| s.trim().to_owned());
    let (module, export, args) = (module.to_owned(), export.to_owned(), args.to_vec());
    let run = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(python);
        cmd.args(["-m", &module, "--export"])
            .arg(&export)
            .args(&args)
            .env("PYTHONPATH", &reports);
        if let Some(j) = java_home {
            cmd.env("JAVA_HOME", j);
        }
        cmd.output().expect("python runs")
    });
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the Spark job ends within 5 minutes")
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn the_pyspark_jobs_on_an_export_equal_the_online_experiment_and_funnel_reports() {
    let sms = sms_sink("AC0123", "sms-token").await;
    let base = sms.base_url.clone();
    let ex = Exchange::start_with(move |o| {
        o.gateway.max_recipients = 200;
        o.channels = ChannelSettings {
            sms: Some(SmsConfig {
                account_sid: "AC0123".into(),
                auth_token: "sms-token".into(),
                from: "+15550001111".into(),
                base_url: base,
            }),
            ..Default::default()
        };
    })
    .await;
    let admin = token("root", true);
    let uids: Vec<String> = (0..120).map(|i| format!("r{i:03}")).collect();
    let user = |u: &str| token(u, false);
    // Some users have phones: their messages go out as SMS too (the funnel's channels).
    let phones: Vec<&String> = uids.iter().step_by(9).collect();
    for (i, u) in phones.iter().enumerate() {
        let (s, b) = ex
            .post(
                "/enlist",
                &user(u),
                json!({"os": "sms", "phone": format!("+1415555{i:04}")}),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }

    // A thread with 40 subscribers; a registered type one user turns off.
    let owner = user("owner");
    let tid = ex.thread(&owner, true, true).await;
    for u in &uids[..40] {
        let (s, b) = ex.post("/subscribe", &user(u), json!({"tid": tid})).await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, b) = ex
        .post(
            "/types",
            &admin,
            json!({"name": "promo", "title": "Promotions"}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = ex
        .call(
            reqwest::Method::PUT,
            "/preferences",
            Some(&user(&uids[50])),
            Some(json!({"types": {"promo": false}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");

    let variants = json!([{"name": "A", "weight": 1}, {"name": "B", "weight": 2, "msg": "B"}]);
    // Experiment "thread": a thread message (the owner is not a recipient) and a later send.
    let (s, b) = ex
        .post(
            "/publish",
            &owner,
            json!({"tid": tid, "msg": "hi", "variants": variants, "holdout": 10,
                   "opts": {"experiment": "thread"}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let thread_mid = b["mid"].as_str().unwrap().to_owned();
    // Experiment "promo": a typed multicast, with a repeated uid.
    let mut listed: Vec<String> = uids[30..100].to_vec();
    listed.push(uids[30].clone());
    let (s, b) = ex
        .post(
            "/multicast",
            &admin,
            json!({"uids": listed, "msg": "sale", "type": "promo", "variants": variants,
                   "holdout": 20, "opts": {"experiment": "promo"}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let promo_mid = b["mid"].as_str().unwrap().to_owned();
    // Experiment "all": a broadcast (every known user, the admin and owner included).
    let (s, b) = ex
        .post(
            "/broadcast",
            &admin,
            json!({"msg": "news", "variants": [{"name": "x", "weight": 1}, {"name": "y", "weight": 1}],
                   "opts": {"experiment": "all"}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let all_mid = b["mid"].as_str().unwrap().to_owned();
    // Experiment "staged": a broadcast tested on half its audience, then promoted.
    let (s, b) = ex
        .post(
            "/broadcast",
            &admin,
            json!({"msg": "staged", "variants": variants, "opts": {"experiment": "staged", "test_share": 50}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    ex.caught_up().await;
    let (s, b) = ex
        .post(
            "/experiments/staged/promote",
            &admin,
            json!({"variant": "B"}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let (s, b) = ex
        .post(
            "/send",
            &admin,
            json!({"uid": uids[5], "msg": "again", "variants": variants, "holdout": 10,
                   "opts": {"experiment": "thread"}}),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    ex.caught_up().await;

    // What users did: acks, reads, clicks with and without a mid, conversions.
    for (i, u) in uids.iter().enumerate().take(100) {
        let t = user(u);
        let (_, inbox) = ex.get("/notifications?limit=100&status=all", &t).await;
        let have: Vec<String> = inbox["results"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let mine = |mid: &str| have.iter().any(|h| h == mid);
        if i % 3 == 0 && mine(&promo_mid) {
            let (s, b) = ex
                .post("/ack", &t, json!({"mid": promo_mid, "status": "opened"}))
                .await;
            assert_eq!(s, 202, "{b}");
        }
        // Entries taken out of unread before an explicit read: that read opens nothing. The
        // gateway sends no read of an entry it sees read, so the reads after are appended as
        // a second device racing the first could have them.
        if i % 8 == 1 && mine(&thread_mid) {
            let (s, b) = ex
                .post("/notifications/read-all", &t, json!({"thread": tid}))
                .await;
            assert_eq!(s, 200, "{b}");
            raced_read(&ex, u, &thread_mid).await;
        }
        if i % 8 == 5 && mine(&thread_mid) {
            let (s, b) = ex
                .post(
                    &format!("/notifications/{thread_mid}/archive"),
                    &t,
                    json!({}),
                )
                .await;
            assert_eq!(s, 200, "{b}");
            raced_read(&ex, u, &thread_mid).await;
        }
        if i % 10 == 7 && mine(&promo_mid) {
            let (s, b) = ex
                .post("/notifications/read-all", &t, json!({"type": "promo"}))
                .await;
            assert_eq!(s, 200, "{b}");
            raced_read(&ex, u, &promo_mid).await;
        }
        if i % 10 == 6 && mine(&promo_mid) {
            let (s, b) = ex
                .patch("/notifications", &t, json!({"ids": [promo_mid]}))
                .await;
            assert_eq!(s, 200, "{b}");
        }
        if i % 4 == 1 && mine(&thread_mid) {
            let (s, b) = ex
                .patch("/notifications", &t, json!({"ids": [thread_mid]}))
                .await;
            assert_eq!(s, 200, "{b}");
        }
        if i % 5 == 2 && mine(&all_mid) {
            let (s, b) = ex
                .post("/track", &t, json!({"event": "click", "mid": all_mid}))
                .await;
            assert_eq!(s, 202, "{b}");
        }
        if i % 2 == 0 {
            let (s, b) = ex.post("/track", &t, json!({"event": "purchase"})).await;
            assert_eq!(s, 202, "{b}");
        }
        if i % 7 == 3 {
            let (s, b) = ex.post("/track", &t, json!({"event": "click"})).await;
            assert_eq!(s, 202, "{b}");
        }
    }
    ex.caught_up().await;
    // Every SMS settled: one per entry of a user with a phone, each accepted.
    let mut entries = 0;
    for u in &phones {
        let (_, inbox) = ex
            .get("/notifications?limit=100&status=all", &user(u))
            .await;
        entries += inbox["count"].as_u64().unwrap();
    }
    assert!(entries > 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, b) = ex.get("/reports/funnel", &admin).await;
        assert_eq!(s, 200, "{b}");
        if b["total"]["accepted"].as_u64() == Some(entries) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{entries} SMS never settled: {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ex.caught_up().await;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export");
    export(
        &ex.running().log,
        &ExportOptions {
            format: Format::Parquet,
            out: out.clone(),
            from_seq: None,
            since: None,
            subject: None,
            progress: false,
        },
    )
    .await
    .unwrap();

    let offline = spark_job("msgxc_reports.experiments", &out, &[]).await;
    let ids: Vec<&str> = offline.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["all", "promo", "staged", "thread"]);

    for off in &offline {
        let id = off["id"].as_str().unwrap();
        let (s, on) = ex.get(&format!("/experiments/{id}"), &admin).await;
        assert_eq!(s, 200, "{on}");
        assert_eq!(on["control"], off["control"], "{id}");
        assert_eq!(on["winner"], off["winner"], "{id}");
        let (on_arms, off_arms) = (
            on["arms"].as_array().unwrap(),
            off["arms"].as_array().unwrap(),
        );
        assert_eq!(on_arms.len(), off_arms.len(), "{id}");
        for (a, b) in on_arms.iter().zip(off_arms) {
            assert_eq!(a["name"], b["name"], "{id}");
            for step in ["exposed", "delivered", "opened", "clicked", "converted"] {
                assert_eq!(a[step], b[step], "{id} arm {} {step}", a["name"]);
            }
            close(&a["expected_share"], &b["expected_share"], "share");
            if let Some(c) = a.get("against_control") {
                for k in ["difference", "p_value", "always_valid_p"] {
                    close(&c[k], &b["against_control"][k], &format!("{id} {k}"));
                }
                assert_eq!(c["significant"], b["against_control"]["significant"]);
            }
        }
        close(
            &on["sample_ratio"]["p_value"],
            &off["sample_ratio"]["p_value"],
            &format!("{id} sample ratio"),
        );
    }
    // The scenario exercised every step somewhere.
    let total = |step: &str| -> u64 {
        offline
            .iter()
            .flat_map(|r| r["arms"].as_array().unwrap().clone())
            .map(|a| a[step].as_u64().unwrap())
            .sum()
    };
    for step in ["exposed", "delivered", "opened", "clicked", "converted"] {
        assert!(total(step) > 0, "no {step} in {offline:?}");
    }

    // The funnel job gives the funnel reports: a time range, each message, each experiment,
    // grouped in several ways.
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let now = time::OffsetDateTime::now_utc();
    let range = format!(
        "since={}&until={}",
        rfc(now - time::Duration::days(1)),
        rfc(now + time::Duration::days(1))
    );
    let queries: Vec<String> = vec![
        range.clone(),
        format!("{range}&by=channel,urgency,type,variant"),
        format!("mid={promo_mid}&by=channel,variant"),
        format!("mid={thread_mid}&by=type,channel"),
        format!("mid={all_mid}&by=variant"),
        "experiment=staged&by=variant,channel".to_owned(),
        "experiment=thread&by=urgency".to_owned(),
    ];
    let args: Vec<String> = queries
        .iter()
        .flat_map(|q| ["--report".to_owned(), q.clone()])
        .collect();
    let offline = spark_job("msgxc_reports.funnel", &out, &args).await;
    assert_eq!(offline.len(), queries.len());
    for (q, off) in queries.iter().zip(&offline) {
        let encoded = q.replace('+', "%2B");
        let (s, on) = ex.get(&format!("/reports/funnel?{encoded}"), &admin).await;
        assert_eq!(s, 200, "{q}: {on}");
        for k in ["by", "messages", "steps", "total"] {
            assert_eq!(
                on[k], off[k],
                "{q}: {k}\nonline  {}\noffline {}",
                on[k], off[k]
            );
        }
        assert_eq!(
            on["rows"], off["rows"],
            "{q}: rows\nonline  {}\noffline {}",
            on["rows"], off["rows"]
        );
    }
    // The DuckDB path reads the same export: every message and every tracked purchase.
    let rows = report_job(
        "msgxc_reports.quick",
        &out,
        &["SELECT event_type, count(*) AS n FROM messages GROUP BY 1 ORDER BY 1".to_owned()],
    )
    .await;
    assert_eq!(
        rows,
        vec![
            json!({"event_type": "message_published", "n": 1}),
            json!({"event_type": "message_sent", "n": 5})
        ]
    );
    let rows = report_job(
        "msgxc_reports.quick",
        &out,
        &["SELECT count(*) AS n FROM tracked WHERE event = 'purchase'".to_owned()],
    )
    .await;
    assert_eq!(rows, vec![json!({"n": 50})]);
    // Every step happened somewhere, and opens were timed.
    let all = &offline[1];
    for step in [
        "sent",
        "accepted",
        "delivered",
        "opened",
        "clicked",
        "converted",
    ] {
        assert!(all["total"][step].as_u64().unwrap() > 0, "no {step}: {all}");
    }
    assert!(all["total"]["time_to_open"]["p90"].is_number(), "{all}");
    assert!(
        all["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["channel"] == "sms" && r["accepted"].as_u64() > Some(0)),
        "{all}"
    );
}
