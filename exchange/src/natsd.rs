//! Finding and supervising a local `nats-server` (>= 2.12) for the all-in-one mode and tests.
//!
//! Debian ships 2.9.x, which silently ignores settings msgxc relies on, so every candidate's
//! version is checked and too-old ones are skipped with a clear message.

use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The oldest server msgxc supports: 2.12 brought the message schedules scheduled sends use.
pub const MIN_VERSION: (u32, u32, u32) = (2, 12, 0);

#[derive(Debug, thiserror::Error)]
pub enum NatsdError {
    #[error(
        "no nats-server >= {}.{} found (looked at: {looked}). Run scripts/setup-tools.sh, or set MSGXC_NATS_SERVER_BIN, or set MSGXC_NATS_URL to use a running server",
        MIN_VERSION.0, MIN_VERSION.1
    )]
    NotFound { looked: String },
    #[error("{path}: {reason}")]
    Unusable { path: String, reason: String },
    #[error("nats-server did not start: {0}")]
    Start(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Parses `nats-server: v2.15.1` (the output of `nats-server --version`).
pub fn parse_version(output: &str) -> Option<(u32, u32, u32)> {
    let v = output
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))?;
    let mut parts = v.split(['.', '-']).map(|p| p.parse::<u32>());
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next().and_then(Result::ok).unwrap_or(0),
    ))
}

/// Runs `<bin> --version` and checks it against [`MIN_VERSION`].
pub fn check_version(bin: &Path) -> Result<(u32, u32, u32), NatsdError> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| NatsdError::Unusable {
            path: bin.display().to_string(),
            reason: e.to_string(),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = parse_version(&text).ok_or_else(|| NatsdError::Unusable {
        path: bin.display().to_string(),
        reason: format!("unrecognised version output {text:?}"),
    })?;
    if version < MIN_VERSION {
        return Err(NatsdError::Unusable {
            path: bin.display().to_string(),
            reason: format!(
                "version {}.{}.{} is older than {}.{}",
                version.0, version.1, version.2, MIN_VERSION.0, MIN_VERSION.1
            ),
        });
    }
    Ok(version)
}

/// Candidate locations in order: the explicit path, the project's tools dir (`.tools/` found
/// from the working directory or the executable upwards, or `MSGXC_TOOLS_DIR`), then `PATH`.
fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_path_buf());
        return out;
    }
    let tools_bins = |tools: &Path| {
        [
            tools.join("venv/bin/nats-server"),
            tools.join("bin/nats-server"),
        ]
    };
    if let Some(dir) = std::env::var_os("MSGXC_TOOLS_DIR") {
        out.extend(tools_bins(Path::new(&dir)));
    }
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.push(exe);
    }
    for root in roots {
        for dir in root.ancestors() {
            out.extend(tools_bins(&dir.join(".tools")));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        out.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    out.dedup();
    out
}

/// Finds a usable nats-server binary, skipping missing and too-old ones.
pub fn find_binary(explicit: Option<&Path>) -> Result<PathBuf, NatsdError> {
    let mut looked = Vec::new();
    for c in candidates(explicit) {
        if !c.is_file() {
            continue;
        }
        match check_version(&c) {
            Ok(_) => return Ok(c),
            Err(e) => looked.push(e.to_string()),
        }
    }
    if explicit.is_some() && looked.is_empty() {
        looked.push(format!(
            "{} does not exist",
            explicit.unwrap_or(Path::new("")).display()
        ));
    }
    Err(NatsdError::NotFound {
        looked: if looked.is_empty() {
            "tools dir and PATH: none present".into()
        } else {
            looked.join("; ")
        },
    })
}

/// A free TCP port on 127.0.0.1 (the listener is closed again; a tiny race is accepted).
pub fn free_port() -> Result<u16, NatsdError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running nats-server child process with JetStream, killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    bin: PathBuf,
    store_dir: PathBuf,
    options: ServerOptions,
}

/// Settings of a managed server beyond its port and store.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// JetStream's `sync_interval`: `always` (fsync every write) or a duration such as `1s`;
    /// `None` keeps the server's default (2 minutes: a power cut can lose what was written
    /// since the last sync, a process crash cannot).
    pub sync: Option<String>,
    /// Serve the HTTP monitoring endpoints (`/varz`, ...) on this loopback port.
    pub monitor_port: Option<u16>,
}

/// Checks a `sync_interval` value: `always`, or a duration in Go's form (`500ms`, `1s`, `2m`).
pub fn parse_sync(s: &str) -> Result<String, String> {
    let s = s.trim().to_ascii_lowercase();
    if s == "always" {
        return Ok(s);
    }
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    if !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "ms" | "s" | "m" | "h")
    {
        Ok(s)
    } else {
        Err(format!(
            "invalid JetStream sync {s:?}: expected always or a duration such as 500ms, 1s, 2m"
        ))
    }
}

impl NatsServer {
    /// Starts `bin` on 127.0.0.1:`port` (a free one when `None`) with JetStream storage in
    /// `store_dir`, and waits until it accepts clients.
    pub fn start(bin: &Path, store_dir: &Path, port: Option<u16>) -> Result<Self, NatsdError> {
        Self::start_with(bin, store_dir, port, &ServerOptions::default())
    }

    /// As [`NatsServer::start`], with [`ServerOptions`] (written to a config file in
    /// `store_dir` when they need one).
    pub fn start_with(
        bin: &Path,
        store_dir: &Path,
        port: Option<u16>,
        options: &ServerOptions,
    ) -> Result<Self, NatsdError> {
        std::fs::create_dir_all(store_dir)?;
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let log_file = store_dir.join("nats-server.log");
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store_dir)
            .arg("-l")
            .arg(&log_file);
        if let Some(sync) = &options.sync {
            let sync = parse_sync(sync).map_err(|reason| NatsdError::Unusable {
                path: bin.display().to_string(),
                reason,
            })?;
            let conf = store_dir.join("msgxc-nats.conf");
            std::fs::write(
                &conf,
                format!("jetstream {{\n  sync_interval: {sync}\n}}\n"),
            )?;
            cmd.arg("-c").arg(&conf);
        }
        if let Some(m) = options.monitor_port {
            cmd.args(["-m", &m.to_string()]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|e| NatsdError::Unusable {
            path: bin.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut server = Self {
            child: Some(child),
            port,
            bin: bin.to_path_buf(),
            store_dir: store_dir.to_path_buf(),
            options: options.clone(),
        };
        server.wait_ready(Duration::from_secs(15), &log_file)?;
        Ok(server)
    }

    fn wait_ready(&mut self, limit: Duration, log_file: &Path) -> Result<(), NatsdError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                let log = std::fs::read_to_string(log_file).unwrap_or_default();
                let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                return Err(NatsdError::Start(format!(
                    "exited with {status}: {} {tail}",
                    stderr.trim()
                )));
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut line = String::new();
                if BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO") {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(NatsdError::Start(format!(
                    "port {} not ready after {limit:?}",
                    self.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Stops the server gracefully (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    /// Kills the server (SIGKILL: nothing is flushed; what JetStream had not written to disk
    /// is lost as in a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same binary again on the same port and store (after [`stop`](Self::stop)).
    pub fn restart(&mut self) -> Result<(), NatsdError> {
        self.stop();
        let again = Self::start_with(&self.bin, &self.store_dir, Some(self.port), &self.options)?;
        *self = again;
        Ok(())
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn terminate(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: plain kill(2) on our own child's pid; no memory is touched.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) } == 0;
    if sent {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Asks Linux to SIGTERM the child if we die without cleaning up (crash, SIGKILL), so a
/// supervised nats-server never outlives its exchange.
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_settings_are_checked() {
        assert_eq!(parse_sync("Always"), Ok("always".into()));
        assert_eq!(parse_sync("500ms"), Ok("500ms".into()));
        assert_eq!(parse_sync("1s"), Ok("1s".into()));
        assert!(parse_sync("sometimes").is_err());
        assert!(parse_sync("1 s").is_err());
        assert!(parse_sync("s").is_err());
    }

    #[test]
    fn parses_versions() {
        assert_eq!(parse_version("nats-server: v2.15.1\n"), Some((2, 15, 1)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_version("nats-server: v2.11.0-RC.1"), Some((2, 11, 0)));
        assert_eq!(parse_version("garbage"), None);
        assert!((2, 9, 10) < MIN_VERSION);
        assert!((2, 11, 4) < MIN_VERSION);
        assert!((2, 15, 1) >= MIN_VERSION);
    }

    #[test]
    fn explicit_missing_binary_is_a_clear_error() {
        let err = find_binary(Some(Path::new("/nonexistent/nats-server"))).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/nats-server"),
            "{err}"
        );
    }
}
