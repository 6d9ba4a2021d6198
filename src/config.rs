//! Command-line and environment configuration. Every option has a flag and an `MSGXC_*`
//! variable; the README lists them all.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use gateway::auth::{JwtKey, detect_pem_algorithm, parse_algorithm};

/// Parses `500ms`, `90s`, `30m`, `24h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90s, 30m, 24h, 7d"))?;
    let secs = |m: u64| n.checked_mul(m).map(Duration::from_secs);
    let d = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    };
    d.ok_or_else(|| format!("invalid duration {s:?}: expected e.g. 90s, 30m, 24h, 7d"))
}

/// Where things live and how to reach NATS; shared by every command.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Directory for the store, the generated JWT secret and the managed nats-server's data.
    #[arg(long, env = "MSGXC_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// NATS server URL. Unset: use the server `msgxc serve` manages for this data dir, or start one.
    #[arg(long, env = "MSGXC_NATS_URL")]
    pub nats_url: Option<String>,
    /// nats-server binary for the managed server (default: the project's .tools dir, then PATH).
    #[arg(long, env = "MSGXC_NATS_SERVER_BIN")]
    pub nats_server_bin: Option<PathBuf>,
    /// Name of the JetStream stream holding the events.
    #[arg(long, env = "MSGXC_STREAM", default_value = "MSGXC_EVENTS")]
    pub stream: String,
    /// Replicas of the events stream (3 on a 3-node cluster).
    #[arg(long, env = "MSGXC_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// How long JetStream remembers message ids to drop duplicates (Idempotency-Key window).
    #[arg(long, env = "MSGXC_DEDUP_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub dedup_window: Duration,
}

impl CommonArgs {
    pub fn log_settings(&self) -> exchange::LogSettings {
        exchange::LogSettings {
            stream: self.stream.clone(),
            duplicate_window: self.dedup_window,
            replicas: self.stream_replicas,
            ..Default::default()
        }
    }
}

/// JWT verification (and, for `msgxc token`, signing) keys.
#[derive(Debug, Clone, Args)]
pub struct JwtArgs {
    /// HS256 shared secret. Unset (and no public key): a secret is generated in the data dir.
    #[arg(long, env = "MSGXC_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key (RSA or EC P-256) for RS256/ES256 tokens.
    #[arg(long, env = "MSGXC_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// PEM private key matching the public key, used only by `msgxc token`.
    #[arg(long, env = "MSGXC_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<PathBuf>,
    /// Pin the algorithm (HS256, RS256, ES256); default from the key.
    #[arg(long, env = "MSGXC_JWT_ALGORITHM")]
    pub jwt_algorithm: Option<String>,
    /// Required `iss` claim.
    #[arg(long, env = "MSGXC_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "MSGXC_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
}

/// Name of the generated secret file in the data dir.
pub const SECRET_FILE: &str = "jwt.secret";

impl JwtArgs {
    /// The verification key. With nothing configured, reads or creates `<data>/jwt.secret`.
    pub fn key(&self, data_dir: &Path) -> anyhow::Result<JwtKey> {
        let pinned = self
            .jwt_algorithm
            .as_deref()
            .map(parse_algorithm)
            .transpose()?;
        match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(_), Some(_)) => {
                bail!("set either MSGXC_JWT_SECRET or MSGXC_JWT_PUBLIC_KEY, not both")
            }
            (_, Some(path)) => {
                let pem = std::fs::read(path)
                    .with_context(|| format!("reading JWT public key {}", path.display()))?;
                let algorithm = match pinned {
                    Some(a) => a,
                    None => detect_pem_algorithm(&pem)?,
                };
                if algorithm == jsonwebtoken::Algorithm::HS256 {
                    bail!("MSGXC_JWT_ALGORITHM=HS256 needs MSGXC_JWT_SECRET, not a public key");
                }
                Ok(JwtKey::PublicPem { pem, algorithm })
            }
            (Some(secret), None) => {
                if pinned.is_some_and(|a| a != jsonwebtoken::Algorithm::HS256) {
                    bail!("a shared secret only works with HS256");
                }
                Ok(JwtKey::Secret(secret.as_bytes().to_vec()))
            }
            (None, None) => Ok(JwtKey::Secret(generated_secret(data_dir)?.into_bytes())),
        }
    }
}

/// Reads `<data>/jwt.secret`, creating it (random, mode 0600) on first use.
pub fn generated_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(SECRET_FILE);
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &secret)?;
    tracing::warn!(
        path = %path.display(),
        "no JWT key configured: generated an HS256 secret; mint tokens with `msgxc token`"
    );
    Ok(secret)
}

fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(content.as_bytes())?;
    Ok(())
}

/// `MSGXC_STORE`: `sqlite://PATH`, a plain path, or unset for `<data>/msgxc.sqlite3`.
pub fn store_path(store: Option<&str>, data_dir: &Path) -> anyhow::Result<PathBuf> {
    match store {
        None => Ok(data_dir.join("msgxc.sqlite3")),
        Some(s) if s.starts_with("scylla://") || s.starts_with("cassandra://") => bail!(
            "the Scylla/Cassandra store is not available in this build yet; use sqlite://PATH"
        ),
        Some(s) => {
            let p = s.strip_prefix("sqlite://").unwrap_or(s);
            if p.is_empty() {
                bail!("MSGXC_STORE=sqlite:// needs a path");
            }
            Ok(PathBuf::from(p))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn store_urls() {
        let d = Path::new("/d");
        assert_eq!(store_path(None, d).unwrap(), d.join("msgxc.sqlite3"));
        assert_eq!(
            store_path(Some("sqlite:///x/y.db"), d).unwrap(),
            PathBuf::from("/x/y.db")
        );
        assert!(store_path(Some("scylla://h:9042/ks"), d).is_err());
    }

    #[test]
    fn generated_secret_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = generated_secret(dir.path()).unwrap();
        let b = generated_secret(dir.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
    }
}
