//! Tracked links: the links of an e-mail or SMS body are replaced with
//! `{public base}/r/{token}`, where the token names the message, the recipient and which link
//! it was, signed (HMAC-SHA256, truncated to 128 bits) with the exchange's link secret. The
//! gateway's redirect verifies the token, records the click and answers 302 to the link the
//! message itself holds, so a token can only ever lead to a link of a message its recipient
//! got: never an open redirect, and the URL is not in the token (short enough for an SMS).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use uuid::Uuid;

/// The link index that stands for the message's `opts.url` (the deep link e-mails show).
pub const URL_OPTION: u8 = u8::MAX;

/// Bytes of the signature kept in a token.
const TAG: usize = 16;

/// Signs and checks tracked links.
#[derive(Clone)]
pub struct LinkSigner {
    key: hmac::Key,
    /// Where the gateway's `/r/` is reachable from outside (`https://msgxc.example.com`);
    /// without it links are left as they are.
    base: Option<String>,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSigner")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    pub mid: Uuid,
    pub uid: String,
    /// Which link of the body (in order), or [`URL_OPTION`].
    pub index: u8,
}

/// The links in a text, in order, as byte ranges: `http://` or `https://` up to white space or
/// a quote or angle bracket, without trailing punctuation.
pub fn links(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = ["https://", "http://"]
        .iter()
        .filter_map(|p| text[from..].find(p).map(|i| from + i))
        .min()
    {
        let rest = &text[found..];
        let len = rest
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>'))
            .unwrap_or(rest.len());
        let trimmed = rest[..len].trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']']);
        let end = found + trimmed.len();
        if trimmed.len() > "https://".len() {
            out.push(found..end);
        }
        from = found + len.max(1);
        if from >= text.len() {
            break;
        }
    }
    out
}

impl LinkSigner {
    pub fn new(secret: &[u8], base: Option<String>) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            base: base
                .map(|b| b.trim_end_matches('/').to_owned())
                .filter(|b| !b.is_empty()),
        }
    }

    /// Whether links are wrapped (a public base is configured).
    pub fn wraps(&self) -> bool {
        self.base.is_some()
    }

    /// The token of link `index` of message `mid` for `uid`.
    pub fn token(&self, mid: Uuid, uid: &str, index: u8) -> String {
        let mut payload = Vec::with_capacity(17 + uid.len() + TAG);
        payload.extend_from_slice(mid.as_bytes());
        payload.push(index);
        payload.extend_from_slice(uid.as_bytes());
        let tag = hmac::sign(&self.key, &payload);
        payload.extend_from_slice(&tag.as_ref()[..TAG]);
        URL_SAFE_NO_PAD.encode(payload)
    }

    /// The tracked URL of link `index`, when links are wrapped.
    pub fn url(&self, mid: Uuid, uid: &str, index: u8) -> Option<String> {
        let base = self.base.as_ref()?;
        Some(format!("{base}/r/{}", self.token(mid, uid, index)))
    }

    /// `text` with each of its links replaced by its tracked URL (unchanged when links are not
    /// wrapped; links past the 255th are left as they are).
    pub fn wrap(&self, text: &str, mid: Uuid, uid: &str) -> String {
        if self.base.is_none() {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len() + 64);
        let mut last = 0;
        for (i, range) in links(text).into_iter().enumerate() {
            let Ok(index) = u8::try_from(i) else { break };
            if index == URL_OPTION {
                break;
            }
            let Some(url) = self.url(mid, uid, index) else {
                break;
            };
            out.push_str(&text[last..range.start]);
            out.push_str(&url);
            last = range.end;
        }
        out.push_str(&text[last..]);
        out
    }

    /// What a token says, when its signature is this exchange's.
    pub fn verify(&self, token: &str) -> Option<Click> {
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
        if bytes.len() < 17 + TAG {
            return None;
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG);
        let expected = hmac::sign(&self.key, payload);
        // Constant time: ring's verify on the full tag is not usable with a truncated one.
        let diff = expected.as_ref()[..TAG]
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return None;
        }
        let mid = Uuid::from_slice(&payload[..16]).ok()?;
        let uid = std::str::from_utf8(&payload[17..]).ok()?.to_owned();
        Some(Click {
            mid,
            uid,
            index: payload[16],
        })
    }
}

/// The URL link `index` of a message stands for: the `index`-th link of its body, or its
/// `opts.url` for [`URL_OPTION`].
pub fn target(msg: &str, url_option: Option<&str>, index: u8) -> Option<String> {
    if index == URL_OPTION {
        return url_option.map(str::to_owned);
    }
    links(msg)
        .into_iter()
        .nth(usize::from(index))
        .map(|r| msg[r].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_links_without_trailing_punctuation() {
        let t = "See https://a.example/x?y=1, or (http://b.example/). Not ftp://c or https:// \
                 <https://d.example/p>";
        let found: Vec<&str> = links(t).into_iter().map(|r| &t[r]).collect();
        assert_eq!(
            found,
            [
                "https://a.example/x?y=1",
                "http://b.example/",
                "https://d.example/p"
            ]
        );
        assert!(links("no links here").is_empty());
        assert!(links("ends with https://").is_empty());
    }

    #[test]
    fn wrapped_links_verify_and_lead_back_to_the_message_s_links() {
        let s = LinkSigner::new(b"secret", Some("https://x.example/".into()));
        let mid = Uuid::now_v7();
        let body = "Sale: https://shop.example/a and https://shop.example/b!";
        let wrapped = s.wrap(body, mid, "alice");
        assert!(!wrapped.contains("shop.example"), "{wrapped}");
        let tokens: Vec<&str> = links(&wrapped)
            .into_iter()
            .map(|r| wrapped[r].trim_start_matches("https://x.example/r/"))
            .collect();
        assert_eq!(tokens.len(), 2);
        for (i, t) in tokens.iter().enumerate() {
            let c = s.verify(t).unwrap();
            assert_eq!((c.mid, c.uid.as_str(), c.index), (mid, "alice", i as u8));
            assert_eq!(
                target(body, None, c.index).as_deref(),
                Some(["https://shop.example/a", "https://shop.example/b"][i])
            );
        }
        assert!(wrapped.ends_with('!'));
        assert_eq!(
            target(body, Some("app://x"), URL_OPTION).as_deref(),
            Some("app://x")
        );
        assert_eq!(target(body, None, 7), None);
    }

    #[test]
    fn forged_tokens_are_refused() {
        let s = LinkSigner::new(b"secret", Some("https://x.example".into()));
        let t = s.token(Uuid::now_v7(), "alice", 0);
        let mut bytes = URL_SAFE_NO_PAD.decode(&t).unwrap();
        // Another user in the same token.
        bytes[17] ^= 1;
        assert!(s.verify(&URL_SAFE_NO_PAD.encode(&bytes)).is_none());
        assert!(s.verify("").is_none());
        assert!(s.verify("not base64 !").is_none());
        assert!(LinkSigner::new(b"other", None).verify(&t).is_none());
        // Without a public base nothing is wrapped.
        let plain = LinkSigner::new(b"secret", None);
        assert_eq!(
            plain.wrap("https://a.example", Uuid::now_v7(), "u"),
            "https://a.example"
        );
    }
}
