//! Command-line and environment configuration. Every option has a flag and an `MSGXC_*`
//! variable; `docs/configuration.md` lists them all.

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
    /// NATS server URL, or several of one cluster separated by commas. Unset: use the server
    /// `msgxc serve` manages for this data dir, or start one.
    #[arg(long, env = "MSGXC_NATS_URL")]
    pub nats_url: Option<String>,
    /// nats-server binary for the managed server (default: the project's .tools dir, then PATH).
    #[arg(long, env = "MSGXC_NATS_SERVER_BIN")]
    pub nats_server_bin: Option<PathBuf>,
    /// JetStream's disk sync for the nats-server `msgxc serve` manages: `always` (fsync each
    /// write: an acknowledged event survives a power cut) or an interval such as `1s`. Unset:
    /// the server's default (every 2 minutes; a crash of the process loses nothing, a power
    /// cut can lose what was written since the last sync).
    #[arg(long, env = "MSGXC_NATS_SYNC", value_parser = exchange::natsd::parse_sync)]
    pub nats_sync: Option<String>,
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
    /// JSON Web Key Set of the issuer (its `jwks_uri`, or a file): RS256/ES256 tokens are
    /// checked against the key their `kid` names; the set is read again as keys rotate.
    #[arg(long, env = "MSGXC_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// Pin the algorithm (HS256, RS256, ES256); default from the key.
    #[arg(long, env = "MSGXC_JWT_ALGORITHM")]
    pub jwt_algorithm: Option<String>,
    /// Required `iss` claim.
    #[arg(long, env = "MSGXC_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "MSGXC_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock leeway for `exp`, `nbf` and `iat`.
    #[arg(long, env = "MSGXC_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration)]
    pub jwt_leeway: Duration,
    /// Refuse tokens that live longer than this (`exp` minus `iat`); unset: no limit.
    #[arg(long, env = "MSGXC_JWT_MAX_LIFETIME", value_parser = parse_duration)]
    pub jwt_max_lifetime: Option<Duration>,
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
        if let Some(url) = &self.jwt_jwks_url {
            if self.jwt_secret.is_some() || self.jwt_public_key.is_some() {
                bail!("set one of MSGXC_JWT_JWKS_URL, MSGXC_JWT_PUBLIC_KEY or MSGXC_JWT_SECRET");
            }
            if pinned.is_some() {
                bail!(
                    "with MSGXC_JWT_JWKS_URL each key's type gives its algorithm; unset MSGXC_JWT_ALGORITHM"
                );
            }
            return Ok(JwtKey::Jwks(gateway::jwks::Jwks::new(url)?));
        }
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
    secret_file(
        data_dir,
        SECRET_FILE,
        "no JWT key configured: generated an HS256 secret; mint tokens with `msgxc token`",
    )
}

/// Name of the generated link secret in the data dir.
pub const LINK_SECRET_FILE: &str = "link.secret";

/// Reads `<data>/<name>`, creating it (32 random bytes in hex, mode 0600) on first use, with a
/// warning then.
fn secret_file(data_dir: &Path, name: &str, created: &str) -> anyhow::Result<String> {
    let path = data_dir.join(name);
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
    tracing::warn!(path = %path.display(), "{created}");
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

/// Where the read models live.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// The embedded SQLite file.
    Sqlite(PathBuf),
    /// A ScyllaDB / Cassandra keyspace.
    Scylla(projections::ScyllaConfig),
}

impl std::fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            StoreLocation::Scylla(c) => write!(f, "scylla://{}/{}", c.nodes.join(","), c.keyspace),
        }
    }
}

/// `MSGXC_STORE`: `sqlite://PATH`, a plain path, unset for `<data>/msgxc.sqlite3`, or
/// `scylla://host:9042[,host...]/keyspace[?options]` (also `cassandra://`).
pub fn store_location(store: Option<&str>, data_dir: &Path) -> anyhow::Result<StoreLocation> {
    match store {
        None => Ok(StoreLocation::Sqlite(data_dir.join("msgxc.sqlite3"))),
        Some(s) if s.starts_with("scylla://") || s.starts_with("cassandra://") => {
            projections::ScyllaConfig::parse(s)
                .map(StoreLocation::Scylla)
                .map_err(|e| anyhow::anyhow!("MSGXC_STORE: {e}"))
        }
        Some(s) => {
            let p = s.strip_prefix("sqlite://").unwrap_or(s);
            if p.is_empty() {
                bail!("MSGXC_STORE=sqlite:// needs a path");
            }
            Ok(StoreLocation::Sqlite(PathBuf::from(p)))
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
        let sqlite = |s: Option<&str>| match store_location(s, d).unwrap() {
            StoreLocation::Sqlite(p) => p,
            other => panic!("{other}"),
        };
        assert_eq!(sqlite(None), d.join("msgxc.sqlite3"));
        assert_eq!(sqlite(Some("sqlite:///x/y.db")), PathBuf::from("/x/y.db"));
        match store_location(Some("scylla://h1:9042,h2/ks"), d).unwrap() {
            StoreLocation::Scylla(c) => {
                assert_eq!(c.nodes, ["h1:9042", "h2:9042"]);
                assert_eq!(c.keyspace, "ks");
            }
            other => panic!("{other}"),
        }
        assert!(store_location(Some("scylla://h:9042"), d).is_err());
        assert!(store_location(Some("sqlite://"), d).is_err());
    }

    #[test]
    fn rate_limits() {
        assert_eq!(
            parse_rate_limit("FCM=500/20"),
            Ok(RateLimit {
                channel: "fcm".into(),
                rate: 500.0,
                burst: Some(20),
            })
        );
        assert_eq!(parse_rate_limit("sms=0").map(|l| l.rate), Ok(0.0));
        for bad in [
            "fcm",
            "pigeon=3",
            "apns=-1",
            "apns=fast",
            "apns=10/0",
            "apns=NaN",
        ] {
            assert!(parse_rate_limit(bad).is_err(), "{bad}");
        }
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

/// Delivery channels (each off unless configured) and retry policy.
#[derive(Debug, Clone, Args)]
pub struct ChannelArgs {
    /// Where this exchange's gateway is reachable from outside (`https://msgxc.example.com`):
    /// links in e-mail and SMS bodies become tracked `{url}/r/{token}` redirects. Unset: links
    /// are sent as they are.
    #[arg(long, env = "MSGXC_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Key that signs tracked links (every gateway and dispatcher of one exchange needs the
    /// same). Unset: `<data>/link.secret`, generated on first use.
    #[arg(long, env = "MSGXC_LINK_SECRET", hide_env_values = true)]
    pub link_secret: Option<String>,
    /// Twilio-compatible SMS: account SID.
    #[arg(long, env = "MSGXC_SMS_ACCOUNT_SID")]
    pub sms_account_sid: Option<String>,
    /// SMS auth token.
    #[arg(long, env = "MSGXC_SMS_AUTH_TOKEN", hide_env_values = true)]
    pub sms_auth_token: Option<String>,
    /// SMS sender number (E.164) or messaging service id.
    #[arg(long, env = "MSGXC_SMS_FROM")]
    pub sms_from: Option<String>,
    /// SMS API base URL.
    #[arg(
        long,
        env = "MSGXC_SMS_BASE_URL",
        default_value = "https://api.twilio.com"
    )]
    pub sms_base_url: String,
    /// APNs token-auth key (.p8 file).
    #[arg(long, env = "MSGXC_APNS_KEY_FILE")]
    pub apns_key_file: Option<PathBuf>,
    /// APNs key id (the .p8 key's id).
    #[arg(long, env = "MSGXC_APNS_KEY_ID")]
    pub apns_key_id: Option<String>,
    /// Apple developer team id.
    #[arg(long, env = "MSGXC_APNS_TEAM_ID")]
    pub apns_team_id: Option<String>,
    /// The app's bundle id (apns-topic).
    #[arg(long, env = "MSGXC_APNS_TOPIC")]
    pub apns_topic: Option<String>,
    /// APNs base URL (https://api.sandbox.push.apple.com for development builds).
    #[arg(
        long,
        env = "MSGXC_APNS_BASE_URL",
        default_value = "https://api.push.apple.com"
    )]
    pub apns_base_url: String,
    /// SMTP server: smtp://user:pass@host:port (?tls=required for STARTTLS), smtps://... for TLS.
    #[arg(long, env = "MSGXC_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Sender of e-mails, e.g. "msgxc <noreply@example.com>".
    #[arg(long, env = "MSGXC_EMAIL_FROM")]
    pub email_from: Option<String>,
    /// MQTT broker: mqtt://[user:pass@]host:port, or mqtts://... for TLS.
    #[arg(long, env = "MSGXC_MQTT_URL", hide_env_values = true)]
    pub mqtt_url: Option<String>,
    /// Root of the MQTT topics (/{base}/user/{uid}/messages/publish, /{base}/thread/{tid}/...).
    #[arg(long, env = "MSGXC_MQTT_TOPIC_BASE", default_value = "msgxc")]
    pub mqtt_topic_base: String,
    /// MQTT QoS (0, 1 or 2).
    #[arg(long, env = "MSGXC_MQTT_QOS", default_value_t = 1)]
    pub mqtt_qos: u8,
    /// Publish with the MQTT retain flag.
    #[arg(long, env = "MSGXC_MQTT_RETAIN", default_value_t = false)]
    pub mqtt_retain: bool,
    /// FCM service-account key file (JSON) for the HTTP v1 API.
    #[arg(long, env = "MSGXC_FCM_SERVICE_ACCOUNT")]
    pub fcm_service_account: Option<PathBuf>,
    /// FCM project id (default: the key's project_id).
    #[arg(long, env = "MSGXC_FCM_PROJECT_ID")]
    pub fcm_project_id: Option<String>,
    /// FCM API base URL.
    #[arg(
        long,
        env = "MSGXC_FCM_BASE_URL",
        default_value = "https://fcm.googleapis.com"
    )]
    pub fcm_base_url: String,
    /// VAPID private key (base64url); default: the data dir's vapid.key from `msgxc vapid`.
    #[arg(long, env = "MSGXC_WEBPUSH_VAPID_KEY", hide_env_values = true)]
    pub webpush_vapid_key: Option<String>,
    /// VAPID contact (mailto: or https:); Web Push is on when this and a key are set.
    #[arg(long, env = "MSGXC_WEBPUSH_SUBJECT")]
    pub webpush_subject: Option<String>,
    /// Comma-separated hosts Web Push endpoints may use (subdomains included).
    #[arg(
        long,
        env = "MSGXC_WEBPUSH_ALLOWED_HOSTS",
        value_delimiter = ',',
        default_value = "fcm.googleapis.com,updates.push.services.mozilla.com,push.services.mozilla.com,push.apple.com,notify.windows.com"
    )]
    pub webpush_allowed_hosts: Vec<String>,
    /// Attempts per device before a delivery is dead-lettered.
    #[arg(long, env = "MSGXC_DISPATCH_MAX_ATTEMPTS", default_value_t = 5)]
    pub dispatch_max_attempts: u32,
    /// First retry delay (doubled per attempt, with jitter).
    #[arg(long, env = "MSGXC_DISPATCH_BACKOFF", default_value = "2s", value_parser = parse_duration)]
    pub dispatch_backoff: Duration,
    /// Skip-if-seen window: a normal/low message for a connected user waits this long and is
    /// not pushed if acknowledged on the WebSocket meanwhile (0s turns it off).
    #[arg(long, env = "MSGXC_SKIP_IF_SEEN", default_value = "3s", value_parser = parse_duration)]
    pub skip_if_seen: Duration,
    /// Longest retry delay.
    #[arg(long, env = "MSGXC_DISPATCH_BACKOFF_MAX", default_value = "5m", value_parser = parse_duration)]
    pub dispatch_backoff_max: Duration,
    /// Longest a provider call may take before it counts as a transient failure; a task
    /// whose dispatcher went silent for four times this is handed to another dispatcher.
    #[arg(long, env = "MSGXC_DISPATCH_SEND_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub dispatch_send_timeout: Duration,
    /// Tasks in flight per urgency lane: high,normal,low,very-low,fallback.
    #[arg(
        long,
        env = "MSGXC_DISPATCH_CONCURRENCY",
        value_delimiter = ',',
        default_value = "64,32,16,8,16"
    )]
    pub dispatch_concurrency: Vec<usize>,
    /// Sends per second per provider, `channel=rate[/burst]` comma-separated (channels: apns,
    /// fcm, webpush, sms, email, mqtt; 0 = no limit). FCM defaults to its default project
    /// quota, 10000 (600,000 per minute); the others to no limit. A 429 pauses that provider's
    /// sends for its Retry-After either way.
    #[arg(long, env = "MSGXC_RATE_LIMITS", value_delimiter = ',', value_parser = parse_rate_limit)]
    pub rate_limits: Vec<RateLimit>,
    /// Requests in flight per provider at most.
    #[arg(long, env = "MSGXC_PROVIDER_IN_FLIGHT", default_value_t = 256)]
    pub provider_in_flight: usize,
    /// Frequency cap per user over the push channels together (APNs, FCM, Web Push):
    /// `N/DURATION`, at most N messages in any rolling DURATION, e.g. `5/1h`. Critical
    /// messages (`opts.critical`, admins only) are not counted or capped.
    #[arg(long, env = "MSGXC_CAP_PUSH", value_parser = parse_cap)]
    pub cap_push: Option<exchange::dispatch::Cap>,
    /// Frequency cap per user on APNs alone (wins over `--cap-push`).
    #[arg(long, env = "MSGXC_CAP_APNS", value_parser = parse_cap)]
    pub cap_apns: Option<exchange::dispatch::Cap>,
    /// Frequency cap per user on FCM alone (wins over `--cap-push`).
    #[arg(long, env = "MSGXC_CAP_FCM", value_parser = parse_cap)]
    pub cap_fcm: Option<exchange::dispatch::Cap>,
    /// Frequency cap per user on Web Push alone (wins over `--cap-push`).
    #[arg(long, env = "MSGXC_CAP_WEBPUSH", value_parser = parse_cap)]
    pub cap_webpush: Option<exchange::dispatch::Cap>,
    /// Frequency cap per user on SMS, e.g. `3/24h`.
    #[arg(long, env = "MSGXC_CAP_SMS", value_parser = parse_cap)]
    pub cap_sms: Option<exchange::dispatch::Cap>,
    /// Frequency cap per user on e-mail.
    #[arg(long, env = "MSGXC_CAP_EMAIL", value_parser = parse_cap)]
    pub cap_email: Option<exchange::dispatch::Cap>,
    /// Frequency cap per user on their MQTT topic.
    #[arg(long, env = "MSGXC_CAP_MQTT", value_parser = parse_cap)]
    pub cap_mqtt: Option<exchange::dispatch::Cap>,
}

fn parse_cap(s: &str) -> Result<exchange::dispatch::Cap, String> {
    exchange::dispatch::Cap::parse(s)
}

/// One `channel=rate[/burst]` of `--rate-limits`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub channel: String,
    pub rate: f64,
    pub burst: Option<u32>,
}

pub const CHANNEL_NAMES: [&str; 6] = ["apns", "fcm", "webpush", "sms", "email", "mqtt"];

fn parse_rate_limit(s: &str) -> Result<RateLimit, String> {
    let (channel, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected channel=rate[/burst], e.g. fcm=10000"))?;
    let channel = channel.trim().to_ascii_lowercase();
    if !CHANNEL_NAMES.contains(&channel.as_str()) {
        return Err(format!(
            "{channel:?} is not a channel (one of {})",
            CHANNEL_NAMES.join(", ")
        ));
    }
    let (rate, burst) = match value.split_once('/') {
        Some((r, b)) => (r, Some(b)),
        None => (value, None),
    };
    let rate: f64 = rate
        .trim()
        .parse()
        .ok()
        .filter(|r: &f64| r.is_finite() && *r >= 0.0)
        .ok_or_else(|| format!("{s:?}: the rate is a number of sends per second (0 = no limit)"))?;
    let burst = burst
        .map(|b| {
            b.trim()
                .parse::<u32>()
                .ok()
                .filter(|b| *b > 0)
                .ok_or_else(|| format!("{s:?}: the burst is a positive whole number"))
        })
        .transpose()?;
    Ok(RateLimit {
        channel,
        rate,
        burst,
    })
}

/// All set or none: a half-configured channel is an error naming what is missing.
fn all_or_none<const N: usize>(
    channel: &str,
    fields: [(&str, &Option<String>); N],
) -> anyhow::Result<Option<[String; N]>> {
    let missing: Vec<&str> = fields
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| *n)
        .collect();
    if missing.len() == N {
        return Ok(None);
    }
    if !missing.is_empty() {
        bail!(
            "{channel} is half configured: also set {}",
            missing.join(", ")
        );
    }
    Ok(Some(fields.map(|(_, v)| v.clone().unwrap_or_default())))
}

/// Name of the VAPID key file `msgxc vapid` writes in the data dir.
pub const VAPID_FILE: &str = "vapid.key";

/// Reads the data dir's VAPID key, creating it when `create` is set.
pub fn vapid_key(data_dir: &Path, create: bool) -> anyhow::Result<Option<String>> {
    let path = data_dir.join(VAPID_FILE);
    if let Ok(k) = std::fs::read_to_string(&path) {
        let k = k.trim().to_owned();
        exchange::channels::webpush::vapid_public_key(&k)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok(Some(k));
    }
    if !create {
        return Ok(None);
    }
    std::fs::create_dir_all(data_dir)?;
    let key = exchange::channels::webpush::generate_vapid_key().map_err(|e| anyhow::anyhow!(e))?;
    write_private(&path, &key)?;
    Ok(Some(key))
}

impl ChannelArgs {
    pub fn settings(&self, data_dir: &Path) -> anyhow::Result<exchange::channels::ChannelSettings> {
        use exchange::channels::{apns::ApnsConfig, email::EmailConfig, sms::SmsConfig};
        let sms = all_or_none(
            "SMS",
            [
                ("MSGXC_SMS_ACCOUNT_SID", &self.sms_account_sid),
                ("MSGXC_SMS_AUTH_TOKEN", &self.sms_auth_token),
                ("MSGXC_SMS_FROM", &self.sms_from),
            ],
        )?
        .map(|[account_sid, auth_token, from]| SmsConfig {
            account_sid,
            auth_token,
            from,
            base_url: self.sms_base_url.clone(),
        });
        let key_file = self.apns_key_file.as_ref().map(|p| p.display().to_string());
        let apns = match all_or_none(
            "APNs",
            [
                ("MSGXC_APNS_KEY_FILE", &key_file),
                ("MSGXC_APNS_KEY_ID", &self.apns_key_id),
                ("MSGXC_APNS_TEAM_ID", &self.apns_team_id),
                ("MSGXC_APNS_TOPIC", &self.apns_topic),
            ],
        )? {
            None => None,
            Some([file, key_id, team_id, topic]) => Some(ApnsConfig {
                key_pem: std::fs::read(&file)
                    .with_context(|| format!("reading MSGXC_APNS_KEY_FILE {file}"))?,
                key_id,
                team_id,
                topic,
                base_url: self.apns_base_url.clone(),
            }),
        };
        let email = all_or_none(
            "e-mail",
            [
                ("MSGXC_SMTP_URL", &self.smtp_url),
                ("MSGXC_EMAIL_FROM", &self.email_from),
            ],
        )?
        .map(|[url, from]| EmailConfig { url, from });
        let key = match &self.webpush_vapid_key {
            Some(k) => Some(k.clone()),
            None => vapid_key(data_dir, false)?,
        };
        let webpush = match (key, &self.webpush_subject) {
            (Some(k), Some(subject)) => Some(exchange::channels::webpush::WebPushConfig {
                vapid_private_key: k,
                subject: subject.clone(),
                allowed_hosts: self.webpush_allowed_hosts.clone(),
            }),
            (Some(_), None) => {
                tracing::warn!(
                    "a VAPID key exists but MSGXC_WEBPUSH_SUBJECT is unset: Web Push is off"
                );
                None
            }
            (None, Some(_)) => {
                bail!("MSGXC_WEBPUSH_SUBJECT is set but there is no VAPID key: run `msgxc vapid`")
            }
            (None, None) => None,
        };
        let fcm = match &self.fcm_service_account {
            None => None,
            Some(path) => Some(exchange::channels::fcm::FcmConfig {
                service_account_json: std::fs::read_to_string(path).with_context(|| {
                    format!("reading MSGXC_FCM_SERVICE_ACCOUNT {}", path.display())
                })?,
                project_id: self.fcm_project_id.clone(),
                base_url: self.fcm_base_url.clone(),
            }),
        };
        let mqtt = self
            .mqtt_url
            .as_ref()
            .map(|url| exchange::channels::mqtt::MqttConfig {
                url: url.clone(),
                topic_base: self.mqtt_topic_base.clone(),
                qos: self.mqtt_qos,
                retain: self.mqtt_retain,
            });
        let secret = match &self.link_secret {
            Some(s) if !s.is_empty() => s.clone(),
            _ => secret_file(
                data_dir,
                LINK_SECRET_FILE,
                "no MSGXC_LINK_SECRET: generated a key for tracked links (give every process of \
                 the exchange the same one)",
            )?,
        };
        if let Some(url) = &self.public_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            bail!("MSGXC_PUBLIC_URL must be an http(s) URL, got {url:?}");
        }
        Ok(exchange::channels::ChannelSettings {
            sms,
            apns,
            email,
            webpush,
            fcm,
            mqtt,
            links: Some(exchange::links::LinkSigner::new(
                secret.as_bytes(),
                self.public_url.clone(),
            )),
        })
    }

    pub fn dispatch(&self) -> exchange::dispatch::DispatchSettings {
        exchange::dispatch::DispatchSettings {
            max_attempts: self.dispatch_max_attempts.max(1),
            backoff_base: self.dispatch_backoff,
            backoff_max: self.dispatch_backoff_max.max(self.dispatch_backoff),
            skip_if_seen: self.skip_if_seen,
            send_timeout: self
                .dispatch_send_timeout
                .max(std::time::Duration::from_millis(100)),
            concurrency: std::array::from_fn(|i| {
                let default = exchange::dispatch::DispatchSettings::default().concurrency[i];
                self.dispatch_concurrency
                    .get(i)
                    .copied()
                    .unwrap_or(default)
                    .max(1)
            }),
            limits: CHANNEL_NAMES
                .iter()
                .map(|name| {
                    let base = exchange::dispatch::DispatchSettings::default().limits_of(name);
                    let set = self.rate_limits.iter().rev().find(|l| l.channel == *name);
                    let limits = exchange::dispatch::Limits {
                        rate: set.map_or(base.rate, |l| (l.rate > 0.0).then_some(l.rate)),
                        burst: set.and_then(|l| l.burst).unwrap_or(base.burst),
                        in_flight: self.provider_in_flight.max(1),
                    };
                    ((*name).to_owned(), limits)
                })
                .collect(),
            caps: exchange::dispatch::CapSettings {
                by: [
                    (exchange::dispatch::caps::PUSH, self.cap_push),
                    ("apns", self.cap_apns),
                    ("fcm", self.cap_fcm),
                    ("webpush", self.cap_webpush),
                    ("sms", self.cap_sms),
                    ("email", self.cap_email),
                    ("mqtt", self.cap_mqtt),
                ]
                .into_iter()
                .filter_map(|(k, c)| Some((k.to_owned(), c?)))
                .collect(),
            },
            ..Default::default()
        }
    }
}
