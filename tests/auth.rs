//! JWT authentication: rejected tokens get 401, the algorithm is pinned, RS256/ES256 keys and
//! issuer/audience checks work.

mod common;

use base64::Engine;
use common::{Exchange, SECRET, token};
use gateway::auth::{JwtKey, sign};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::json;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn exp_in(secs: i64) -> i64 {
    jsonwebtoken::get_current_timestamp() as i64 + secs
}

async fn status(ex: &Exchange, token: Option<&str>) -> (u16, serde_json::Value) {
    ex.call(Method::GET, "/notifications", token, None).await
}

#[tokio::test]
async fn rejected_tokens_get_401() {
    let ex = Exchange::start().await;
    let (s, b) = status(&ex, None).await;
    assert_eq!(s, 401);
    assert_eq!(b["error"]["code"], "unauthorized");

    let wrong_key = sign(
        &EncodingKey::from_secret(b"another-secret-entirely-0123456789"),
        Algorithm::HS256,
        "mallory",
        &[],
        600,
        None,
        None,
    )
    .unwrap();
    let expired = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": exp_in(-3600)}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let no_exp = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice"}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let alg_none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&json!({"sub": "mallory", "exp": exp_in(600), "roles": ["admin"]}).to_string())
    );
    // Same secret, another HMAC algorithm: still rejected, the algorithm is pinned.
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &json!({"sub": "mallory", "exp": exp_in(600)}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    // An RS256 token presented to an HS256 server.
    let rs = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": "mallory", "exp": exp_in(600)}),
        &EncodingKey::from_rsa_pem(&fixture("test-only-rs256.key.pem")).unwrap(),
    )
    .unwrap();
    for (name, t) in [
        ("bad signature", wrong_key.as_str()),
        ("expired", expired.as_str()),
        ("no exp", no_exp.as_str()),
        ("alg none", alg_none.as_str()),
        ("other HMAC algorithm", hs384.as_str()),
        ("RS256 on an HS256 server", rs.as_str()),
        ("garbage", "not.a.token"),
    ] {
        let (s, b) = status(&ex, Some(t)).await;
        assert_eq!(s, 401, "{name}: {b}");
        assert_eq!(b["error"]["code"], "unauthorized", "{name}");
    }
    // Non-bearer schemes are rejected too.
    let resp = ex
        .http
        .get(ex.url("/notifications"))
        .header("Authorization", format!("Basic {}", token("alice", false)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn es256_public_key_with_issuer_and_audience() {
    let ex = Exchange::start_with(|o| {
        o.jwt_key = JwtKey::PublicPem {
            pem: fixture("test-only-es256.pub.pem"),
            algorithm: Algorithm::ES256,
        };
        o.jwt_issuer = Some("https://auth.example".into());
        o.jwt_audience = Some("msgxc".into());
    })
    .await;
    let key = EncodingKey::from_ec_pem(&fixture("test-only-es256.key.pem")).unwrap();
    let mint = |iss: &str, aud: &str| {
        sign(
            &key,
            Algorithm::ES256,
            "alice",
            &[],
            600,
            Some(iss),
            Some(aud),
        )
        .unwrap()
    };
    let (s, b) = status(&ex, Some(&mint("https://auth.example", "msgxc"))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        status(&ex, Some(&mint("https://evil.example", "msgxc")))
            .await
            .0,
        401
    );
    assert_eq!(
        status(&ex, Some(&mint("https://auth.example", "other")))
            .await
            .0,
        401
    );
    // An HS256 token signed with the public key bytes as secret (key confusion) is rejected.
    let confused = sign(
        &EncodingKey::from_secret(&fixture("test-only-es256.pub.pem")),
        Algorithm::HS256,
        "mallory",
        &[],
        600,
        Some("https://auth.example"),
        Some("msgxc"),
    )
    .unwrap();
    assert_eq!(status(&ex, Some(&confused)).await.0, 401);
}

#[tokio::test]
async fn rs256_public_key() {
    let ex = Exchange::start_with(|o| {
        o.jwt_key = JwtKey::PublicPem {
            pem: fixture("test-only-rs256.pub.pem"),
            algorithm: Algorithm::RS256,
        };
    })
    .await;
    let key = EncodingKey::from_rsa_pem(&fixture("test-only-rs256.key.pem")).unwrap();
    let t = sign(
        &key,
        Algorithm::RS256,
        "alice",
        &["admin".into()],
        600,
        None,
        None,
    )
    .unwrap();
    let (s, b) = ex
        .post("/send", &t, json!({"msg": "hi", "uid": "bob"}))
        .await;
    assert_eq!(s, 202, "admin role read from an RS256 token: {b}");
}

#[tokio::test]
async fn websocket_needs_a_valid_token() {
    let ex = Exchange::start().await;
    let err = tokio_tungstenite::connect_async(ex.ws_url(""))
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 401),
        other => panic!("expected HTTP 401, got {other:?}"),
    }
    let err = tokio_tungstenite::connect_async(ex.ws_url("?token=not.a.token"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 401),
        "{err:?}"
    );
}

/// A key set served over HTTP that the test can change, counting its reads.
struct Issuer {
    url: String,
    body: std::sync::Arc<std::sync::Mutex<(u16, String)>>,
    reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Issuer {
    async fn start(keys: serde_json::Value) -> Self {
        use std::sync::atomic::Ordering;
        let body = std::sync::Arc::new(std::sync::Mutex::new((
            200,
            json!({ "keys": keys }).to_string(),
        )));
        let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (b, r) = (body.clone(), reads.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (b, r) = (b.clone(), r.clone());
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    let (status, text) = b.lock().unwrap().clone();
                    (axum::http::StatusCode::from_u16(status).unwrap(), text)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, body, reads }
    }

    fn serve(&self, status: u16, keys: serde_json::Value) {
        *self.body.lock().unwrap() = (status, json!({ "keys": keys }).to_string());
    }

    fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn b64_bytes(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The fixtures' public keys as JWKs.
fn ec_jwk(kid: &str) -> serde_json::Value {
    use p256::pkcs8::DecodePublicKey;
    let pem = String::from_utf8(fixture("test-only-es256.pub.pem")).unwrap();
    let key = p256::PublicKey::from_public_key_pem(&pem).unwrap();
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key, false);
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
           "x": b64_bytes(point.x().unwrap()), "y": b64_bytes(point.y().unwrap())})
}

fn rsa_jwk(kid: &str) -> serde_json::Value {
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    let pem = String::from_utf8(fixture("test-only-rs256.pub.pem")).unwrap();
    let key = rsa::RsaPublicKey::from_public_key_pem(&pem).unwrap();
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
           "n": b64_bytes(&key.n().to_bytes_be()), "e": b64_bytes(&key.e().to_bytes_be())})
}

fn signed(kid: &str, algorithm: Algorithm, key: &EncodingKey, sub: &str) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &json!({"sub": sub, "exp": exp_in(600)}), key).unwrap()
}

#[tokio::test]
async fn keys_from_a_jwks_follow_the_issuers_rotation() {
    let shared = "a shared secret an attacker could read in a public set";
    let issuer = Issuer::start(json!([
        ec_jwk("ec-1"),
        // A symmetric key in a public set would let anyone sign: it is never taken.
        {"kty": "oct", "kid": "oct-1", "k": b64_bytes(shared.as_bytes())},
    ]))
    .await;
    let set = gateway::jwks::Jwks::with_min_refetch(&issuer.url, std::time::Duration::from_secs(1))
        .unwrap();
    let ex = Exchange::start_with(|o| o.jwt_key = JwtKey::Jwks(set)).await;
    assert_eq!(issuer.reads(), 1, "read once at start");
    let ec = EncodingKey::from_ec_pem(&fixture("test-only-es256.key.pem")).unwrap();
    let rs = EncodingKey::from_rsa_pem(&fixture("test-only-rs256.key.pem")).unwrap();

    let (s, b) = status(&ex, Some(&signed("ec-1", Algorithm::ES256, &ec, "alice"))).await;
    assert_eq!(s, 200, "{b}");
    // The token's own alg does not choose the check: the key's type does.
    let hs = signed(
        "oct-1",
        Algorithm::HS256,
        &EncodingKey::from_secret(shared.as_bytes()),
        "mallory",
    );
    let (s, b) = status(&ex, Some(&hs)).await;
    assert_eq!(s, 401, "{b}");
    let mut no_kid = Header::new(Algorithm::ES256);
    no_kid.kid = None;
    let t =
        jsonwebtoken::encode(&no_kid, &json!({"sub": "alice", "exp": exp_in(600)}), &ec).unwrap();
    let (s, b) = status(&ex, Some(&t)).await;
    assert_eq!(
        (s, b["error"]["message"].as_str()),
        (
            401,
            Some("token names no key (kid) of this server's key set")
        )
    );

    // A key the set does not hold yet: refused, and made-up kids read the set at most once a
    // second (the rate limit this test configured; 30 s by default).
    let before = issuer.reads();
    for i in 0..20 {
        let (s, b) = status(
            &ex,
            Some(&signed("rsa-2", Algorithm::RS256, &rs, &format!("u{i}"))),
        )
        .await;
        assert_eq!(s, 401, "{b}");
        assert_eq!(
            b["error"]["message"],
            "token is signed with a key (kid) not in the issuer's key set"
        );
    }
    assert!(
        issuer.reads() - before <= 1,
        "{} reads for 20 unknown kids",
        issuer.reads() - before
    );

    // The issuer rotates: the new key appears and the old one goes. The first token with the
    // new kid reads the set again and is accepted; new tokens of the old key are not.
    issuer.serve(200, json!([rsa_jwk("rsa-2")]));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (s, b) = status(&ex, Some(&signed("rsa-2", Algorithm::RS256, &rs, "bob"))).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = status(&ex, Some(&signed("ec-1", Algorithm::ES256, &ec, "carol"))).await;
    assert_eq!(s, 401, "{b}");
    // A key used with another algorithm than its type's is refused (RSA key, ES256 header).
    let mut wrong = Header::new(Algorithm::ES256);
    wrong.kid = Some("rsa-2".into());
    let t = jsonwebtoken::encode(&wrong, &json!({"sub": "dave", "exp": exp_in(600)}), &ec).unwrap();
    assert_eq!(status(&ex, Some(&t)).await.0, 401);

    // The issuer is down: the keys known so far keep working.
    issuer.serve(503, json!([]));
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let reads = issuer.reads();
    let (s, _) = status(&ex, Some(&signed("rsa-3", Algorithm::RS256, &rs, "erin"))).await;
    assert_eq!(s, 401);
    assert_eq!(
        issuer.reads(),
        reads + 1,
        "the unknown kid asked the issuer"
    );
    let (s, b) = status(&ex, Some(&signed("rsa-2", Algorithm::RS256, &rs, "frank"))).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn a_jwks_that_cannot_be_read_or_holds_no_usable_key_is_an_error() {
    let issuer = Issuer::start(json!([{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}])).await;
    let set = gateway::jwks::Jwks::new(&issuer.url).unwrap();
    let err = set.load().await.unwrap_err().to_string();
    assert!(
        err.contains("holds no RS256 or ES256 key with a kid"),
        "{err}"
    );
    issuer.serve(404, json!([]));
    let err = set.load().await.unwrap_err().to_string();
    assert!(err.contains("HTTP 404"), "{err}");
    // A file works as well as a URL.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(
        &path,
        json!({"keys": [ec_jwk("ec-1"), rsa_jwk("rsa-1")]}).to_string(),
    )
    .unwrap();
    let set = gateway::jwks::Jwks::new(path.to_str().unwrap()).unwrap();
    assert_eq!(set.load().await.unwrap(), 2);
    std::fs::write(&path, "not json").unwrap();
    set.load().await.unwrap_err();
}
