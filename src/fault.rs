//! `msgxc fault`: our own fault suite. It runs the exchange as separate role processes (a
//! gateway, a projector and a dispatcher on one SQLite store) beside a nats-server it manages
//! and a Twilio-shaped SMS sink, drives sends, broadcasts and inbox reads, and kills -9 in turn
//! the gateway, the projector, the dispatcher and nats-server, restarting each. Then it waits
//! for the exchange to converge and counts what a user would notice: acknowledged requests
//! missing from the stream, inbox entries missing or duplicated, deliveries missing, duplicate
//! deliveries. Loopback only; `--long` runs three rounds of faults with longer gaps.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use exchange::natsd::NatsServer;
use futures::StreamExt;
use serde_json::{Value, json};

/// What to run.
#[derive(Debug, Clone)]
pub struct FaultOptions {
    /// Three rounds of faults with longer gaps instead of one.
    pub long: bool,
    /// Users, each with an SMS device.
    pub users: usize,
    pub nats_server_bin: Option<PathBuf>,
}

const SECRET: &str = "fault-suite-secret";
const SID: &str = "ACfault";
const SMS_TOKEN: &str = "fault-token";

/// The counts the run ends with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub acknowledged: usize,
    pub missing_from_stream: usize,
    pub inbox_missing: usize,
    pub inbox_duplicated: usize,
    pub deliveries_expected: usize,
    pub deliveries_missing: usize,
    pub deliveries_duplicated: usize,
}

impl Counts {
    /// What the exchange guarantees: nothing acknowledged is lost, every inbox holds each of
    /// its messages once, every delivery arrives (duplicates are allowed: at-least-once).
    pub fn holds(&self) -> bool {
        self.missing_from_stream == 0
            && self.inbox_missing == 0
            && self.inbox_duplicated == 0
            && self.deliveries_missing == 0
    }
}

/// The role processes, restarted on the same ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Gateway,
    Projector,
    Dispatcher,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Projector => "projector",
            Role::Dispatcher => "dispatcher",
        }
    }
}

struct RoleProcess {
    role: Role,
    addr: SocketAddr,
    args: Vec<String>,
    child: Option<Child>,
}

impl RoleProcess {
    async fn start(role: Role, common: &[String]) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let listen = match role {
            Role::Gateway => "--listen",
            _ => "--health-listen",
        };
        let mut args = common.to_vec();
        args.extend([
            "--role".into(),
            role.name().into(),
            listen.into(),
            addr.to_string(),
        ]);
        let mut p = Self {
            role,
            addr,
            args,
            child: None,
        };
        p.spawn().await?;
        Ok(p)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let exe = std::env::current_exe().context("locating the msgxc binary")?;
        let child = Command::new(exe)
            .args(&self.args)
            .envs([
                ("MSGXC_JWT_SECRET", SECRET),
                ("MSGXC_WRITE_RATE", "0"),
                ("MSGXC_IP_WRITE_RATE", "0"),
                ("MSGXC_SMS_ACCOUNT_SID", SID),
                ("MSGXC_SMS_AUTH_TOKEN", SMS_TOKEN),
                ("MSGXC_SMS_FROM", "+15550000000"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting the {}", self.role.name()))?;
        self.child = Some(child);
        let ping = format!("http://{}/api/v1/ping", self.addr);
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(r) = client.get(&ping).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("the {} exited during start-up: {status}", self.role.name());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the {} did not answer within 60 s", self.role.name());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RoleProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Twilio-shaped SMS API that records every message it accepts, by number and text.
#[derive(Clone, Default)]
struct Sink {
    got: Arc<Mutex<HashMap<(String, String), usize>>>,
}

impl Sink {
    async fn start(&self) -> anyhow::Result<String> {
        let got = self.got.clone();
        let app = axum::Router::new().route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            axum::routing::post(move |body: axum::body::Bytes| {
                let got = got.clone();
                async move {
                    let form: HashMap<String, String> =
                        serde_urlencoded::from_bytes(&body).unwrap_or_default();
                    let (Some(to), Some(text)) = (form.get("To"), form.get("Body")) else {
                        return (axum::http::StatusCode::BAD_REQUEST, String::new());
                    };
                    let n = match got.lock() {
                        Ok(mut g) => {
                            let c = g.entry((to.clone(), text.clone())).or_default();
                            *c += 1;
                            g.len()
                        }
                        Err(_) => 0,
                    };
                    (
                        axum::http::StatusCode::CREATED,
                        json!({"sid": format!("SM{n:032x}"), "status": "queued"}).to_string(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(format!("http://{addr}"))
    }

    /// Messages accepted per (number, text).
    fn counts(&self) -> HashMap<(String, String), usize> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// What the load generator had acknowledged (202): each message's text, and its user (`None`
/// for a broadcast).
#[derive(Default)]
struct Acked {
    sent: Vec<(String, String, Option<usize>)>,
}

fn token(uid: &str, admin: bool) -> anyhow::Result<String> {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let roles: Vec<String> = if admin { vec!["admin".into()] } else { vec![] };
    Ok(gateway::auth::sign(
        &key,
        jsonwebtoken::Algorithm::HS256,
        uid,
        &roles,
        24 * 3600,
        None,
        None,
    )?)
}

fn uid(i: usize) -> String {
    format!("f{i:03}")
}

fn phone(i: usize) -> String {
    format!("+1555{i:07}")
}

/// Runs the suite; prints the table; `Ok(counts)` whether or not they hold.
pub async fn run(o: FaultOptions) -> anyhow::Result<Counts> {
    let dir = tempfile::Builder::new().prefix("msgxc-fault-").tempdir()?;
    let bin = exchange::natsd::find_binary(o.nats_server_bin.as_deref())?;
    let mut nats = NatsServer::start(&bin, &dir.path().join("nats"), None)?;
    let sink = Sink::default();
    let sink_url = sink.start().await?;
    let data = dir.path().join("data");
    let common: Vec<String> = vec![
        "serve".into(),
        "--nats-url".into(),
        nats.url(),
        "--data-dir".into(),
        data.display().to_string(),
        "--log".into(),
        "error".into(),
        "--sms-base-url".into(),
        sink_url,
    ];
    // The projector first: it creates the store the others open.
    let mut projector = RoleProcess::start(Role::Projector, &common).await?;
    let mut dispatcher = RoleProcess::start(Role::Dispatcher, &common).await?;
    let mut gateway = RoleProcess::start(Role::Gateway, &common).await?;
    let base = format!("http://{}/api/v1", gateway.addr);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let admin = token("root", true)?;

    // Users with phones.
    for i in 0..o.users {
        let t = token(&uid(i), false)?;
        let r = http
            .post(format!("{base}/enlist"))
            .bearer_auth(&t)
            .json(&json!({"os": "sms", "phone": phone(i)}))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("enlisting {}: {}", uid(i), r.status());
        }
    }
    wait_caught_up(&http, &base, o.users, Duration::from_secs(30)).await?;

    // Load: sends to one user and, now and then, a broadcast; inbox reads beside them.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Acked::default()));
    let load = {
        let (http, base, admin, stop, acked, users) = (
            http.clone(),
            base.clone(),
            admin.clone(),
            stop.clone(),
            acked.clone(),
            o.users,
        );
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (path, body, to, text) = if i % 40 == 0 {
                    let text = format!("fault-b{i}");
                    ("broadcast", json!({"msg": text}), None, text)
                } else {
                    let u = i % users;
                    let text = format!("fault-m{i}");
                    ("send", json!({"uid": uid(u), "msg": text}), Some(u), text)
                };
                let answer = http
                    .post(format!("{base}/{path}"))
                    .bearer_auth(&admin)
                    .json(&body)
                    .send()
                    .await;
                if let Ok(r) = answer
                    && r.status().as_u16() == 202
                    && let Ok(v) = r.json::<Value>().await
                    && let Some(mid) = v["mid"].as_str()
                    && let Ok(mut a) = acked.lock()
                {
                    a.sent.push((mid.to_owned(), text, to));
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let reads = {
        let (http, base, stop, users) = (http.clone(), base.clone(), stop.clone(), o.users);
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if let Ok(t) = token(&uid(i % users), false) {
                    let _ = http
                        .get(format!("{base}/notifications?limit=20"))
                        .bearer_auth(t)
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let (rounds, gap) = if o.long {
        (3, Duration::from_secs(6))
    } else {
        (1, Duration::from_secs(3))
    };
    let mut faults = Vec::new();
    for _ in 0..rounds {
        for target in ["gateway", "projector", "dispatcher", "nats-server"] {
            tokio::time::sleep(gap).await;
            let down = Instant::now();
            match target {
                "gateway" => restart(&mut gateway).await?,
                "projector" => restart(&mut projector).await?,
                "dispatcher" => restart(&mut dispatcher).await?,
                _ => {
                    nats.kill();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    nats.restart()?;
                }
            }
            faults.push((target, down.elapsed()));
            eprintln!("fault: killed -9 and restarted the {target}");
        }
    }
    tokio::time::sleep(gap).await;
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    let _ = reads.await;
    let last_fault = Instant::now();

    let sent = acked.lock().map(|a| a.sent.clone()).unwrap_or_default();
    let limit = if o.long { 240 } else { 120 };
    let mut counts;
    let converged = loop {
        counts = check(&http, &base, &sink, &sent, o.users).await?;
        if counts.inbox_missing == 0 && counts.deliveries_missing == 0 {
            break Some(last_fault.elapsed());
        }
        if last_fault.elapsed() > Duration::from_secs(limit) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    counts.missing_from_stream = missing_from_stream(&nats.url(), &sent).await?;

    println!(
        "fault suite: {} faults (kill -9, then restart: {}), {} users with SMS devices",
        faults.len(),
        faults
            .iter()
            .map(|(t, d)| format!("{t} {:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", "),
        o.users
    );
    println!();
    println!("| what | count |");
    println!("| --- | --- |");
    println!("| requests acknowledged (202) | {} |", counts.acknowledged);
    println!(
        "| acknowledged requests missing from the stream | {} |",
        counts.missing_from_stream
    );
    println!("| inbox entries missing | {} |", counts.inbox_missing);
    println!("| inbox entries duplicated | {} |", counts.inbox_duplicated);
    println!(
        "| SMS deliveries expected | {} |",
        counts.deliveries_expected
    );
    println!("| SMS deliveries missing | {} |", counts.deliveries_missing);
    println!(
        "| SMS deliveries duplicated (at-least-once) | {} |",
        counts.deliveries_duplicated
    );
    match converged {
        Some(t) => println!(
            "| time to converge after the last fault | {:.1} s |",
            t.as_secs_f64()
        ),
        None => println!("| time to converge after the last fault | not within {limit} s |"),
    }
    drop(gateway);
    drop(dispatcher);
    drop(projector);
    nats.stop();
    if converged.is_none() {
        bail!("the exchange did not converge within {limit} s after the last fault");
    }
    Ok(counts)
}

async fn restart(p: &mut RoleProcess) -> anyhow::Result<()> {
    p.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.spawn().await
}

/// Waits until the first and the last user's devices are projected.
async fn wait_caught_up(
    http: &reqwest::Client,
    base: &str,
    users: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let mut all = true;
        for i in [0, users.saturating_sub(1)] {
            let t = token(&uid(i), false)?;
            let r: Value = http
                .get(format!("{base}/devices"))
                .bearer_auth(&t)
                .send()
                .await?
                .json()
                .await?;
            all &= r["count"].as_u64() == Some(1);
        }
        if all {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("the devices were not projected within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every inbox entry of a user (ids, repeated ones included).
async fn inbox(http: &reqwest::Client, base: &str, i: usize) -> anyhow::Result<Vec<String>> {
    let t = token(&uid(i), false)?;
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let page: Value = http
            .get(format!(
                "{base}/notifications?status=all&limit=100&offset={offset}"
            ))
            .bearer_auth(&t)
            .send()
            .await?
            .json()
            .await?;
        let results = page["results"].as_array().cloned().unwrap_or_default();
        let n = results.len();
        out.extend(
            results
                .iter()
                .filter_map(|r| r["id"].as_str().map(str::to_owned)),
        );
        if n < 100 {
            return Ok(out);
        }
        offset += n;
    }
}

/// The counts as the exchange stands now.
async fn check(
    http: &reqwest::Client,
    base: &str,
    sink: &Sink,
    sent: &[(String, String, Option<usize>)],
    users: usize,
) -> anyhow::Result<Counts> {
    let mut c = Counts {
        acknowledged: sent.len(),
        ..Default::default()
    };
    let delivered = sink.counts();
    for i in 0..users {
        let ids = inbox(http, base, i).await?;
        let mut have: HashMap<&str, usize> = HashMap::new();
        for id in &ids {
            *have.entry(id.as_str()).or_default() += 1;
        }
        c.inbox_duplicated += have
            .values()
            .filter(|n| **n > 1)
            .map(|n| n - 1)
            .sum::<usize>();
        for (mid, text, to) in sent {
            if to.is_some_and(|u| u != i) {
                continue;
            }
            if !have.contains_key(mid.as_str()) {
                c.inbox_missing += 1;
            }
            c.deliveries_expected += 1;
            match delivered.get(&(phone(i), text.clone())) {
                None => c.deliveries_missing += 1,
                Some(n) => c.deliveries_duplicated += n - 1,
            }
        }
    }
    Ok(c)
}

/// Acknowledged messages whose event is not in the stream.
async fn missing_from_stream(
    nats_url: &str,
    sent: &[(String, String, Option<usize>)],
) -> anyhow::Result<usize> {
    let client = crate::nats::connect(nats_url).await?;
    let log = crate::nats::open_log(client, exchange::LogSettings::default()).await?;
    let last = log.last_seq().await?;
    let mut ids = HashSet::new();
    if last > 0 {
        let events = log.read(exchange::Start::Beginning, None, last).await?;
        let mut events = std::pin::pin!(events);
        while let Ok(Some(e)) = tokio::time::timeout(Duration::from_secs(5), events.next()).await {
            let e = e?;
            ids.insert(e.envelope.id.to_string());
            if e.seq >= last {
                break;
            }
        }
    }
    Ok(sent.iter().filter(|(mid, _, _)| !ids.contains(mid)).count())
}
