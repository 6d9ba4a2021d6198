//! Tokens: any string as a bearer JWT (HS256 verifier with the gateway's rules) and as a
//! tracked-link token; any text through the link finder and wrapper.
#![no_main]

use std::sync::LazyLock;

use exchange::links::{self, LinkSigner};
use gateway::auth::{JwtKey, JwtVerifier};
use libfuzzer_sys::fuzz_target;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
});
static VERIFIER: LazyLock<JwtVerifier> = LazyLock::new(|| {
    JwtVerifier::new(
        &JwtKey::Secret(b"fuzzing-secret-0123456789abcdef".to_vec()),
        None,
        None,
    )
    .expect("a verifier")
    .with_rules(30, Some(86_400))
});
static SIGNER: LazyLock<LinkSigner> =
    LazyLock::new(|| LinkSigner::new(b"fuzzing-link-secret", Some("https://msgxc.example".into())));

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = RUNTIME.block_on(VERIFIER.verify_uncached(&text));
    if let Some(click) = SIGNER.verify(&text) {
        // A token that verifies is one this signer made: made again, it is the same.
        assert_eq!(SIGNER.token(click.mid, &click.uid, click.index), text);
    }
    for range in links::links(&text) {
        let _ = &text[range];
    }
    let mid = uuid::Uuid::nil();
    let _ = SIGNER.wrap(&text, mid, "u");
    let index = data.first().copied().unwrap_or(0);
    let _ = links::target(&text, Some(&text), index);
});
