//! A real CQL node for the tests of the Cassandra/Scylla store.
//!
//! Which node, first match wins:
//! - `MSGXC_TEST_SCYLLA=host:port`: a ScyllaDB (or any CQL) node someone runs;
//! - `MSGXC_TEST_CASSANDRA=host:port`: the Apache Cassandra node `scripts/test.sh` started for
//!   the whole test run (one JVM for every test binary);
//! - otherwise one Cassandra node for this test process, started on first use from the jars
//!   `scripts/setup-tools.sh --test` resolved (`scripts/cassandra-node.sh`), on free ports in a
//!   temporary directory. A supervising shell holds the read end of a pipe whose write end only
//!   this process holds: when the process exits, however it exits, the shell kills the node
//!   and removes its directory.
//!
//! A node that cannot start panics the test that asked for it: a store test never passes by
//! skipping. Each test case makes its own keyspace on the shared node.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a node may take to listen for CQL clients (10-30 s is usual; a loaded 2-core
/// machine can take several times that).
const START_TIMEOUT: Duration = Duration::from_secs(240);

/// `host:port` of the CQL node for this test process (see the module doc).
pub fn cql_node() -> String {
    for var in ["MSGXC_TEST_SCYLLA", "MSGXC_TEST_CASSANDRA"] {
        if let Ok(addr) = std::env::var(var)
            && !addr.trim().is_empty()
        {
            return addr.trim().to_owned();
        }
    }
    static OWN: OnceLock<Result<OwnNode, String>> = OnceLock::new();
    match OWN.get_or_init(OwnNode::start) {
        Ok(node) => node.addr.clone(),
        Err(e) => panic!("no Cassandra node for the store tests: {e}"),
    }
}

/// A node this process started; lives until the process exits.
struct OwnNode {
    addr: String,
    // Held, never written: its closing (at exit) tells the supervisor to stop the node.
    _lifeline: Mutex<ChildStdin>,
    _supervisor: Mutex<Child>,
}

impl OwnNode {
    fn start() -> Result<Self, String> {
        let root = project_root();
        let script = root.join("scripts/cassandra-node.sh");
        let tools = std::env::var_os("MSGXC_TOOLS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".tools"));
        let dir = tempfile::Builder::new()
            .prefix("msgxc-cassandra-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?
            .keep();
        let port = free_port()?;
        // The shell runs the node in the background, waits for the pipe to close (this
        // process exiting) or the node to exit, then makes sure it is gone and its data too.
        // (A background job's stdin is /dev/null unless redirected: the pipe is fd 3.)
        let supervise = r#"
            exec 3<&0
            "$0" "$1" "$2" > "$1/node.out" 2>&1 < /dev/null &
            node=$!
            ( cat <&3 > /dev/null; kill -9 "$node" 2>/dev/null ) &
            wait "$node" 2>/dev/null
            rc=$?
            rm -rf "$1"
            exit "$rc"
        "#;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(supervise)
            .arg(&script)
            .arg(&dir)
            .arg(port.to_string())
            .env("MSGXC_TOOLS_DIR", &tools)
            .env("MSGXC_CASSANDRA_TEST", "1")
            .env(
                "MSGXC_CASSANDRA_HEAP",
                std::env::var("MSGXC_CASSANDRA_HEAP").unwrap_or_else(|_| "768M".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", script.display()))?;
        let lifeline = child
            .stdin
            .take()
            .ok_or_else(|| "no pipe to the node's supervisor".to_owned())?;
        let addr = format!("127.0.0.1:{port}");
        wait_listening(&addr, &mut child, &dir)?;
        Ok(Self {
            addr,
            _lifeline: Mutex::new(lifeline),
            _supervisor: Mutex::new(child),
        })
    }
}

/// Waits until `addr` accepts connections (the node listens for CQL clients only once its
/// system keyspaces are up), failing early when the node exits.
pub fn wait_listening(addr: &str, child: &mut Child, dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the Cassandra node exited ({status}) before listening on {addr}:\n{}",
                log_tail(dir)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the Cassandra node did not listen on {addr} within {START_TIMEOUT:?}:\n{}",
                log_tail(dir)
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn log_tail(dir: &Path) -> String {
    let mut text = String::new();
    for name in ["node.out", "logs/system.log"] {
        if let Ok(mut f) = std::fs::File::open(dir.join(name)) {
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            let lines: Vec<&str> = s.lines().collect();
            let from = lines.len().saturating_sub(30);
            text.push_str(&format!("--- {name}\n{}\n", lines[from..].join("\n")));
        }
    }
    if text.is_empty() {
        text.push_str("(no log)");
    }
    text
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

/// The workspace root (testkit lives one level below it).
fn project_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}
