//! `msgxc bench`: bounded loads on loopback that put msgxc beside the limits underneath it,
//! measured in the same run on the same server, printed as a Markdown table.

mod child;
mod fanout;
mod live;
pub use live::serve_ws_baseline;
mod measure;
mod scenarios;
mod schedule;

use std::path::PathBuf;

use anyhow::bail;

/// One line of the result table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub scenario: String,
    pub subject: String,
    /// Events (or requests) per second.
    pub rate: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// CPU seconds of this process (server and load generator) during the run.
    pub cpu_s: f64,
    /// CPU seconds of the nats-server during the run.
    pub nats_cpu_s: f64,
    pub peak_rss_mib: f64,
    /// `(label, value)` notes such as ratios and lag.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub scenarios: Vec<String>,
    pub quick: bool,
    pub nats_server_bin: Option<PathBuf>,
    /// fanout: devices to broadcast to (default 100,000; 20,000 with `--quick`).
    pub devices: Option<u64>,
    /// live: WebSocket clients (default 10,000; 2,000 with `--quick`).
    pub sockets: Option<u64>,
    /// live: thread messages published per second in total (default 200; 40 with `--quick`).
    pub rate: Option<u64>,
    /// project: also fold into a fresh keyspace on this CQL node (`cassandra://host:port/ks`).
    pub store: Option<String>,
}

pub const SCENARIOS: [&str; 7] = [
    "ingest", "fanout", "live", "room", "project", "schedule", "stage",
];

pub async fn run(opts: BenchOptions) -> anyhow::Result<()> {
    let wanted: Vec<String> = if opts.scenarios.is_empty() {
        SCENARIOS.iter().map(|s| (*s).to_owned()).collect()
    } else {
        opts.scenarios.clone()
    };
    for s in &wanted {
        if !SCENARIOS.contains(&s.as_str()) {
            bail!("unknown scenario {s}; available: {}", SCENARIOS.join(", "));
        }
    }
    let mut rows = Vec::new();
    for s in &wanted {
        eprintln!(
            "bench: running {s}{}",
            if opts.quick { " (quick)" } else { "" }
        );
        let r = match s.as_str() {
            "ingest" => scenarios::ingest(&opts).await?,
            "fanout" => fanout::fanout(&opts).await?,
            "live" => live::live(&opts).await?,
            "room" => live::room(&opts).await?,
            "schedule" => schedule::schedule(&opts).await?,
            "stage" => schedule::stage(&opts).await?,
            _ => scenarios::project(&opts).await?,
        };
        rows.extend(r);
    }
    println!("{}", table(&rows));
    Ok(())
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

/// The Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | subject | rate (/s) | p50 ms | p99 ms | p99.9 ms | CPU s | nats CPU s | peak RSS MiB | notes |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {} |\n",
            r.scenario,
            r.subject,
            r.rate,
            fmt_ms(r.p50_ms),
            fmt_ms(r.p99_ms),
            fmt_ms(r.p999_ms),
            r.cpu_s,
            r.nats_cpu_s,
            r.peak_rss_mib,
            r.notes.join("; ")
        ));
    }
    out
}
