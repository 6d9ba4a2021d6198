//! Field checks shared by the handlers; each error names its field.

use crate::error::ApiError;

/// A user id: 1-256 characters, no control characters (the same rule as token subjects).
pub fn uid(field: &str, v: &str) -> Result<(), ApiError> {
    if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
        return Err(ApiError::field(
            field,
            "must be 1-256 characters without control characters",
        ));
    }
    Ok(())
}

/// Non-empty text of at most `max` characters.
pub fn text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.trim().is_empty() {
        return Err(ApiError::field(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(ApiError::field(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// Channel names a message may be restricted to.
pub const CHANNELS: [&str; 7] = [
    "apns",
    "fcm",
    "webpush",
    "sms",
    "email",
    "mqtt",
    "websocket",
];

/// Checks the typed message options (urgency and data are checked by their types).
pub fn opts(o: &exchange::events::MessageOpts) -> Result<(), ApiError> {
    if let Some(t) = &o.title {
        text("opts.title", t, 200)?;
    }
    if let Some(ttl) = o.ttl
        && ttl > 28 * 24 * 3600
    {
        return Err(ApiError::field(
            "opts.ttl",
            "must be at most 28 days (2419200 seconds)",
        ));
    }
    if let Some(k) = &o.collapse_key
        && (k.is_empty() || k.len() > 64)
    {
        return Err(ApiError::field("opts.collapse_key", "must be 1-64 bytes"));
    }
    if let Some(u) = &o.url {
        let l = u.to_ascii_lowercase();
        if !(l.starts_with("https://") || l.starts_with("http://") || l.contains("://"))
            || u.len() > 2048
            || u.chars().any(char::is_whitespace)
        {
            return Err(ApiError::field(
                "opts.url",
                "must be an absolute URL of at most 2048 characters",
            ));
        }
    }
    if let Some(f) = &o.fallback {
        if f.after == 0 || f.after > 30 * 86_400 {
            return Err(ApiError::field(
                "opts.fallback.after",
                "must be between 1 second and 30 days",
            ));
        }
        if f.channels.is_empty() {
            return Err(ApiError::field(
                "opts.fallback.channels",
                "must name at least one channel",
            ));
        }
        if let Some(bad) = f
            .channels
            .iter()
            .find(|c| !CHANNELS.contains(&c.as_str()) || *c == "websocket")
        {
            return Err(ApiError::field(
                "opts.fallback.channels",
                format!("{bad} cannot be a fallback channel"),
            ));
        }
    }
    if let Some(cs) = &o.channels {
        if cs.is_empty() {
            return Err(ApiError::field(
                "opts.channels",
                "must name at least one channel",
            ));
        }
        if let Some(bad) = cs.iter().find(|c| !CHANNELS.contains(&c.as_str())) {
            return Err(ApiError::field(
                "opts.channels",
                format!("unknown channel {bad}; use {}", CHANNELS.join(", ")),
            ));
        }
    }
    Ok(())
}
