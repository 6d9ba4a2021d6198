//! The `msgxc` binary itself: `serve` starts and supervises its own nats-server, `token`,
//! `replay` and `rebuild` find that server through the data dir, SIGTERM stops everything.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_msgxc");

fn msgxc(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("MSGXC_DATA_DIR", data)
        .env_remove("MSGXC_NATS_URL")
        .env_remove("MSGXC_JWT_SECRET")
        .env("MSGXC_NATS_SERVER_BIN", testkit::nats_server_bin())
        .output()
        .expect("msgxc runs")
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
}

async fn wait_for_ping(base: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/ping")).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "msgxc serve did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn serve_token_replay_rebuild_and_graceful_stop() {
    let data = tempfile::tempdir().unwrap();
    let port = exchange::natsd::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(BIN)
        .args(["serve", "--listen", &listen])
        .env("MSGXC_DATA_DIR", data.path())
        .env_remove("MSGXC_NATS_URL")
        .env_remove("MSGXC_JWT_SECRET")
        .env("MSGXC_NATS_SERVER_BIN", testkit::nats_server_bin())
        .env("MSGXC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut serve = Serve(child);
    let base = format!("http://{listen}/api/v1");
    wait_for_ping(&base).await;
    let health = Command::new(BIN)
        .args(["health", "--url", &format!("{base}/ping")])
        .output()
        .unwrap();
    assert!(health.status.success(), "health check of a running gateway");

    // serve generated a JWT secret and recorded its nats-server's URL in the data dir.
    assert!(data.path().join("jwt.secret").is_file());
    let nats_url = std::fs::read_to_string(data.path().join("nats.url")).unwrap();
    let nats_addr = nats_url.trim().trim_start_matches("nats://").to_owned();

    let out = msgxc(data.path(), &["token", "--sub", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alice = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = msgxc(
        data.path(),
        &["token", "--sub", "root", "--admin", "--ttl", "10m"],
    );
    let admin = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/threads"))
        .bearer_auth(&alice)
        .json(&json!({"name": "cli", "open_subscribe": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http
        .post(format!("{base}/send"))
        .bearer_auth(&admin)
        .json(&json!({"msg": "hi", "uid": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        202,
        "admin token from `msgxc token --admin` works"
    );

    // replay: NDJSON of every event with its sequence.
    let out = msgxc(data.path(), &["replay"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["type"], "thread_created");
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[1]["type"], "message_sent");
    let out = msgxc(data.path(), &["replay", "--from-seq", "2"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1);
    let since = lines[1]["occurred_at"].as_str().unwrap();
    let out = msgxc(data.path(), &["replay", "--since", since]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines().count() >= 1 && text.contains("message_sent"),
        "{text}"
    );
    let out = msgxc(data.path(), &["replay", "--since", "yesterday"]);
    assert!(!out.status.success(), "a bad --since is an error");
    let out = msgxc(data.path(), &["replay", "--subject", "msgxc.ev.thread.>"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("thread_created"));

    // rebuild into a fresh file beside the running serve.
    let into = data.path().join("rebuilt.sqlite3");
    let out = msgxc(data.path(), &["rebuild", "--into", into.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuilt 2 events"));
    let out = msgxc(data.path(), &["rebuild", "--into", into.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "refuses to overwrite an existing store"
    );

    // SIGTERM: serve exits cleanly and takes its nats-server with it.
    sigterm(&serve.0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = serve.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        std::net::TcpStream::connect(&nats_addr).is_err(),
        "the managed nats-server stopped with serve"
    );
    assert!(!data.path().join("nats.url").exists());

    // With serve stopped, replay starts its own server on the same data dir.
    let out = msgxc(data.path(), &["replay"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["token", "--help"],
        vec!["replay", "--help"],
        vec!["rebuild", "--help"],
        vec!["migrate", "--help"],
        vec!["health", "--help"],
        vec!["export", "--help"],
        vec!["fault", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage"), "{args:?}: {text}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for env in [
        "MSGXC_LISTEN",
        "MSGXC_DATA_DIR",
        "MSGXC_NATS_URL",
        "MSGXC_STORE",
        "MSGXC_JWT_SECRET",
    ] {
        assert!(text.contains(env), "serve --help lists {env}");
    }
}

#[test]
fn a_too_old_nats_server_is_refused_with_a_clear_message() {
    // Debian's 2.9 reports its version like this; a fake binary stands in for it.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("nats-server");
    std::fs::write(&fake, "#!/bin/sh\necho 'nats-server: v2.9.10'\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("MSGXC_DATA_DIR", dir.path().join("data"))
        .env_remove("MSGXC_NATS_URL")
        .env("MSGXC_NATS_SERVER_BIN", &fake)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("2.9.10") && err.contains("older than 2.12"),
        "{err}"
    );
}

/// `msgxc migrate` on the test run's Cassandra node: creates the keyspace and every table,
/// records each schema version, and running it again changes nothing.
#[tokio::test]
async fn migrate_on_cassandra_is_idempotent_and_records_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let node = testkit::cassandra::cql_node();
    let keyspace = format!("msgxc_cli_{}", uuid::Uuid::now_v7().simple());
    let url = format!("cassandra://{node}/{keyspace}?replication_factor=1");
    let config = projections::ScyllaConfig::parse(&url).unwrap();
    let versions = (1..=projections::scylla::SCHEMA_VERSION)
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    for _ in 0..2 {
        let out = msgxc(dir.path(), &["migrate", "--store", &url]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!(
                "schema version {} applied (recorded: {versions})",
                projections::scylla::SCHEMA_VERSION
            )),
            "{stdout}"
        );
    }
    // The migrated keyspace serves a store (every statement prepares against it).
    let store = projections::ScyllaStore::open(&config).await.unwrap();
    assert_eq!(projections::Store::checkpoint(&store).await.unwrap(), 0);
    projections::scylla::drop_keyspace(&config).await.unwrap();
}

#[test]
fn migrate_prepares_a_store_and_explains_what_it_cannot_reach() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sqlite3");
    let out = msgxc(
        dir.path(),
        &[
            "migrate",
            "--store",
            &format!("sqlite://{}", path.display()),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("schema is current"));
    assert!(path.is_file());

    // No CQL node listens here: a clear error, no panic.
    let port = exchange::natsd::free_port().unwrap();
    let out = msgxc(
        dir.path(),
        &[
            "migrate",
            "--store",
            &format!("scylla://127.0.0.1:{port}/msgxc"),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connecting to Scylla/Cassandra at 127.0.0.1"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    for (url, says) in [
        ("scylla://h/ks?replication=3", "unknown store URL option"),
        ("scylla://h:9042", "needs a keyspace"),
        ("scylla://h/drop;table", "keyspace"),
    ] {
        let out = msgxc(dir.path(), &["migrate", "--store", url]);
        assert!(!out.status.success(), "{url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{url}: {err}");
    }

    // Nothing answers the health check on a closed port.
    let out = Command::new(BIN)
        .args([
            "health",
            "--url",
            &format!("http://127.0.0.1:{port}/api/v1/ping"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `MSGXC_NATS_SYNC` reaches the managed server's JetStream settings (read back from its
/// monitoring endpoint), and the default is the server's own.
#[tokio::test]
async fn the_managed_servers_disk_sync_is_configurable() {
    use exchange::natsd::{NatsServer, ServerOptions, free_port};
    let varz = |port: u16| async move {
        reqwest::get(format!("http://127.0.0.1:{port}/varz"))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    for (sync, always) in [(Some("always"), true), (None, false)] {
        let dir = tempfile::tempdir().unwrap();
        let monitor = free_port().unwrap();
        let _server = NatsServer::start_with(
            &testkit::nats_server_bin(),
            dir.path(),
            None,
            &ServerOptions {
                sync: sync.map(str::to_owned),
                monitor_port: Some(monitor),
            },
        )
        .unwrap();
        let v = varz(monitor).await;
        let config = &v["jetstream"]["config"];
        assert_eq!(
            config["sync_always"].as_bool().unwrap_or(false),
            always,
            "{sync:?}: {config}"
        );
    }
    // A bad value is refused before anything starts.
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("MSGXC_NATS_SYNC", "sometimes")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid JetStream sync"));
}

/// `MSGXC_LOG_FORMAT=json`: every log line is one JSON object (requests logged at debug).
#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("stderr.log");
    let port = exchange::natsd::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let child = Command::new(BIN)
        .args(["serve", "--listen", &listen])
        .env("MSGXC_DATA_DIR", data.path().join("data"))
        .env_remove("MSGXC_NATS_URL")
        .env("MSGXC_NATS_SERVER_BIN", testkit::nats_server_bin())
        .env("MSGXC_LOG_FORMAT", "json")
        .env("MSGXC_LOG", "info,gateway=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut serve = Serve(child);
    let base = format!("http://{listen}/api/v1");
    wait_for_ping(&base).await;
    sigterm(&serve.0);
    let _ = serve.0.wait();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "gateway listening"),
        "{text}"
    );
    let request = lines
        .iter()
        .find(|l| l["message"] == "request" && l["route"] == "/api/v1/ping")
        .unwrap_or_else(|| panic!("no request line in {text}"));
    assert_eq!(request["status"], 200);
    assert_eq!(request["method"], "GET");
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
}
