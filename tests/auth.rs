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
