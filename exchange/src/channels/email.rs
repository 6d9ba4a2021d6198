//! E-mail over SMTP with `lettre`: `smtp://user:pass@host:port` (plain, or STARTTLS with
//! `?tls=required`), `smtps://...` for implicit TLS. Each message has a plain-text and an HTML
//! part.

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::channels::text_of;
use crate::dispatch::{Channel, Delivery, Outcome};
use crate::events::DeviceAddress;

#[derive(Debug, Clone)]
pub struct EmailConfig {
    /// `smtp://`, `smtps://` URL as accepted by lettre (`?tls=required` for STARTTLS).
    pub url: String,
    /// `Name <address>` or a bare address.
    pub from: String,
}

pub struct EmailChannel {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    links: Option<crate::links::LinkSigner>,
}

impl EmailChannel {
    pub fn new(
        config: &EmailConfig,
        links: Option<crate::links::LinkSigner>,
    ) -> Result<Self, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.url)
            .map_err(|e| format!("MSGXC_SMTP_URL: {e}"))?
            .build();
        let from = config
            .from
            .parse::<Mailbox>()
            .map_err(|e| format!("MSGXC_EMAIL_FROM: {e}"))?;
        Ok(Self {
            transport,
            from,
            links,
        })
    }
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' => out.push_str("<br>"),
            c => out.push(c),
        }
    }
    out
}

/// Builds the MIME message for one delivery; with `links`, the body's links and the
/// message's `opts.url` are tracked links.
pub fn build(
    from: &Mailbox,
    to: &str,
    d: &Delivery<'_>,
    links: Option<&crate::links::LinkSigner>,
) -> Result<Message, String> {
    let to: Mailbox = to.parse().map_err(|e| format!("address {to}: {e}"))?;
    let (title, body) = text_of(d);
    let subject = title.unwrap_or("New message");
    // Links are wrapped only with a public base configured (the common case has none).
    let links = links.filter(|l| l.wraps());
    let body = match links {
        Some(l) => l.wrap(body, d.task.mid, d.uid),
        None => body.to_owned(),
    };
    let url = d.task.opts.url.as_deref().map(|u| {
        links
            .and_then(|l| l.url(d.task.mid, d.uid, crate::links::URL_OPTION))
            .unwrap_or_else(|| u.to_owned())
    });
    let mut plain = body.clone();
    let mut html = format!("<p>{}</p>", escape_html(&body));
    if let Some(u) = url {
        plain.push_str(&format!("\n\n{u}\n"));
        html.push_str(&format!("<p><a href=\"{0}\">{0}</a></p>", escape_html(&u)));
    }
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject)
        .message_id(Some(format!("<{}@msgxc>", d.delivery_uuid())))
        .multipart(MultiPart::alternative_plain_html(plain, html))
        .map_err(|e| e.to_string())
}

#[async_trait]
impl Channel for EmailChannel {
    fn name(&self) -> &'static str {
        "email"
    }

    async fn send(&self, d: &Delivery<'_>) -> Outcome {
        let DeviceAddress::Email { email } = d.address else {
            return Outcome::Rejected {
                reason: "not an e-mail address".into(),
            };
        };
        let message = match build(&self.from, email, d, self.links.as_ref()) {
            Ok(m) => m,
            Err(reason) => return Outcome::DeviceGone { reason },
        };
        match self.transport.send(message).await {
            Ok(resp) => Outcome::Accepted {
                provider_id: resp.message().next().map(str::to_owned),
            },
            Err(e) if e.is_permanent() => {
                let reason = format!("SMTP permanent: {e}");
                // 550/551/553: the mailbox does not exist or is not accepted.
                if reason.contains("550") || reason.contains("551") || reason.contains("553") {
                    Outcome::DeviceGone { reason }
                } else {
                    Outcome::Rejected { reason }
                }
            }
            Err(e) => Outcome::Retry {
                reason: format!("SMTP: {e}"),
                after: None,
            },
        }
    }
}
