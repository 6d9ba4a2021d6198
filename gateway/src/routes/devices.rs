//! Devices: `POST /enlist`, `GET /devices`, `DELETE /devices/{id}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use exchange::events::{DeviceAddress, DeviceEnlisted, DeviceRemoved, Event};
use projections::model::Device;
use serde::Deserialize;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::routes::idempotency_key;
use crate::state::AppState;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WebPushSubscription {
    endpoint: String,
    #[serde(default)]
    expiration_time: Option<i64>,
    keys: WebPushKeys,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct WebPushKeys {
    p256dh: String,
    auth: String,
}

#[derive(Deserialize, schemars::JsonSchema)]
pub(crate) struct NativeDevice {
    os: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

pub(crate) fn address(body: Value, allowed_hosts: &[String]) -> Result<DeviceAddress, ApiError> {
    // Decide the shape first so errors name the fields of the shape the client meant.
    // The body is `{"os": "ios"|"android"|"sms"|"email", ...}` or a Push API subscription.
    let parsed = if body.get("endpoint").is_some() {
        Ok(crate::extract::parse_json::<WebPushSubscription>(
            body.to_string().as_bytes(),
        )?)
    } else if body.get("os").is_some() {
        Err(crate::extract::parse_json::<NativeDevice>(
            body.to_string().as_bytes(),
        )?)
    } else {
        let mut e = ApiError::field(
            "os",
            "is required (ios, android, sms, email), or send a Web Push subscription with endpoint and keys",
        );
        e.code = "missing_field";
        return Err(e);
    };
    match parsed {
        Ok(s) => {
            let lower = s.endpoint.to_ascii_lowercase();
            if !(lower.starts_with("https://") || lower.starts_with("http://"))
                || s.endpoint.len() > 2048
                || s.endpoint.chars().any(char::is_whitespace)
            {
                return Err(ApiError::field(
                    "endpoint",
                    "must be an http(s) URL of at most 2048 characters",
                ));
            }
            if !exchange::channels::webpush::host_allowed(&s.endpoint, allowed_hosts) {
                return Err(ApiError::field(
                    "endpoint",
                    "host is not an allowed push service (MSGXC_WEBPUSH_ALLOWED_HOSTS)",
                ));
            }
            base64url("keys.p256dh", &s.keys.p256dh, 65)?;
            base64url("keys.auth", &s.keys.auth, 16)?;
            Ok(DeviceAddress::Webpush {
                endpoint: s.endpoint,
                expiration_time: s.expiration_time,
                p256dh: s.keys.p256dh,
                auth: s.keys.auth,
            })
        }
        Err(d) => match d.os.as_str() {
            "ios" => {
                let token = required("token", d.token)?;
                if !(token.len() >= 32
                    && token.len() <= 200
                    && token.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    return Err(ApiError::field(
                        "token",
                        "must be an APNs device token (hex)",
                    ));
                }
                Ok(DeviceAddress::Apns {
                    token: token.to_ascii_lowercase(),
                })
            }
            "android" => {
                let token = required("token", d.token)?;
                if token.len() > 4096 || token.bytes().any(|b| !b.is_ascii_graphic()) {
                    return Err(ApiError::field(
                        "token",
                        "must be an FCM registration token",
                    ));
                }
                Ok(DeviceAddress::Fcm { token })
            }
            "sms" => {
                let phone = required("phone", d.phone)?;
                let digits = phone.strip_prefix('+').unwrap_or("");
                if !(digits.len() >= 7
                    && digits.len() <= 15
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && !digits.starts_with('0'))
                {
                    return Err(ApiError::field(
                        "phone",
                        "must be an E.164 number such as +14155550100",
                    ));
                }
                Ok(DeviceAddress::Sms { phone })
            }
            "email" => {
                let email = required("email", d.email)?;
                let valid = email.len() <= 254
                    && !email.chars().any(|c| c.is_whitespace() || c.is_control())
                    && email
                        .split_once('@')
                        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.contains('@'));
                if !valid {
                    return Err(ApiError::field("email", "must be an e-mail address"));
                }
                Ok(DeviceAddress::Email { email })
            }
            _ => Err(ApiError::field(
                "os",
                "must be one of ios, android, sms, email",
            )),
        },
    }
}

fn required(field: &str, v: Option<String>) -> Result<String, ApiError> {
    match v {
        Some(s) if !s.is_empty() => Ok(s),
        _ => {
            let mut e = ApiError::field(field, "is required");
            e.code = "missing_field";
            Err(e)
        }
    }
}

/// Checks a base64url key decodes to `bytes` bytes.
fn base64url(field: &str, v: &str, bytes: usize) -> Result<(), ApiError> {
    let clean = v.trim_end_matches('=');
    let ok = clean
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'+' || b == b'/')
        && clean.len() * 6 / 8 == bytes;
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!("must be base64url of {bytes} bytes"),
        ))
    }
}

pub async fn enlist(
    State(state): State<AppState>,
    Caller(actor): Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<(StatusCode, Json<Device>)> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "expected a JSON object",
        ));
    }
    let address = address(body, &state.config.webpush_allowed_hosts)?;
    let device_id = address.device_id();
    // Apps enlist on every launch: an unchanged device records no new event.
    let existing = state.store.devices(&actor.uid).await?;
    if let Some(d) = existing
        .iter()
        .find(|d| d.id == device_id && d.address == address)
    {
        return Ok((StatusCode::OK, Json(d.clone())));
    }
    let key = idempotency_key(&headers)?;
    let event = Event::DeviceEnlisted(DeviceEnlisted {
        uid: actor.uid.clone(),
        device_id: device_id.clone(),
        address,
    });
    let recorded = state
        .append_consistent(&actor, event, key.as_deref())
        .await?;
    let Event::DeviceEnlisted(e) = recorded.envelope.event else {
        return Err(ApiError::internal("unexpected stored event"));
    };
    let device = Device {
        id: e.device_id,
        uid: e.uid,
        address: e.address,
        enlisted_at: recorded.envelope.occurred_at,
    };
    Ok((StatusCode::CREATED, Json(device)))
}

pub async fn list(
    State(state): State<AppState>,
    Caller(actor): Caller,
) -> ApiResult<Json<super::schemas::List<Device>>> {
    let devices = state.store.devices(&actor.uid).await?;
    Ok(Json(devices.into()))
}

/// `GET /devices/channels` (admin): how many devices each channel reaches.
pub async fn per_channel(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<super::schemas::DeviceChannels>> {
    caller.require_admin()?;
    let channels: std::collections::BTreeMap<String, u64> = state
        .store
        .devices_per_channel()
        .await?
        .into_iter()
        .collect();
    Ok(Json(super::schemas::DeviceChannels {
        total: channels.values().sum(),
        channels,
    }))
}

pub async fn remove(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let devices = state.store.devices(&actor.uid).await?;
    if !devices.iter().any(|d| d.id == id) {
        return Err(ApiError::not_found("no such device"));
    }
    let event = Event::DeviceRemoved(DeviceRemoved {
        uid: actor.uid.clone(),
        device_id: id,
    });
    state.append_consistent(&actor, event, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /webpush/vapid-public-key`: the key browsers pass to `pushManager.subscribe`.
pub async fn vapid_public_key(
    State(state): State<AppState>,
) -> ApiResult<Json<super::schemas::VapidKey>> {
    let key = state
        .config
        .vapid_public_key
        .clone()
        .ok_or_else(|| ApiError::not_found("Web Push is not configured on this exchange"))?;
    Ok(Json(super::schemas::VapidKey { public_key: key }))
}
