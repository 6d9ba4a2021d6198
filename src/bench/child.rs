//! An exchange under test in its own process (`msgxc serve` of this very binary), so its CPU
//! time and memory are measured apart from the load generator and the provider sinks.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::measure::{cpu_of, status_mib};

pub struct ServeProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl ServeProcess {
    /// Starts `msgxc serve` on a free loopback port against `nats_url`, with its data in
    /// `data_dir` and the HS256 `secret`, and waits until it answers `/api/v1/health`.
    pub async fn start(
        nats_url: &str,
        data_dir: &Path,
        secret: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--nats-url".into(),
            nats_url.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--log".into(),
            std::env::var("MSGXC_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        ];
        args.extend_from_slice(extra);
        // Benchmarks measure throughput: the write limits are off.
        Self::spawn(
            &args,
            &[
                ("MSGXC_JWT_SECRET", secret),
                ("MSGXC_WRITE_RATE", "0"),
                ("MSGXC_IP_WRITE_RATE", "0"),
                ("MSGXC_MAX_SOCKETS_PER_USER", "100000"),
                ("MSGXC_SOCKET_FRAME_RATE", "0"),
            ],
        )
        .await
    }

    /// Runs this binary with `args` plus `--listen <free loopback port>` and waits until it
    /// answers `/api/v1/health`.
    pub async fn spawn(args: &[String], envs: &[(&str, &str)]) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let exe = std::env::current_exe().context("locating the msgxc binary")?;
        let child = Command::new(exe)
            .args(args)
            .args(["--listen", &addr.to_string()])
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a server process")?;
        let mut me = Self { child, addr };
        let health = format!("http://{addr}/api/v1/health");
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(r) = client.get(&health).send().await
                && r.status().is_success()
            {
                return Ok(me);
            }
            if let Some(status) = me.child.try_wait()? {
                bail!("{} exited during start-up: {status}", args.join(" "));
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("{} did not become healthy within 60 s", args.join(" "));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds the process used so far.
    pub fn cpu(&self) -> f64 {
        cpu_of(self.pid())
    }

    /// Resident memory now, MiB.
    pub fn rss_mib(&self) -> f64 {
        status_mib(self.pid(), "VmRSS")
    }

    /// Peak resident memory over the process's life, MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        status_mib(self.pid(), "VmHWM")
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/api/v1", self.addr)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
