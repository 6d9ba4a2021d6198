//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): what the gateway does with
//! untrusted bytes before a store or the log is involved. Each function takes any input and
//! must return; a panic is a bug the fuzzer reports.

use std::collections::HashMap;

use serde_json::Value;

use super::{
    datahub, deliveries, devices, experiments, messages, messaging, notifications, preferences,
    private, stage, threads, types, validate,
};
use crate::extract::{Paging, parse_id, parse_json, time_param};

/// Request body kinds, picked by the first input byte of the `request_bodies` target.
pub const BODY_KINDS: u8 = 22;

/// Parses `data` as the JSON body of one route (`kind` picks which) with the route's own
/// extractor, and runs the checks that need nothing but the body.
pub fn request_body(kind: u8, data: &[u8]) {
    match kind % BODY_KINDS {
        0 => drop(parse_json::<messages::PublishBody>(data)),
        1 => drop(parse_json::<messages::BroadcastBody>(data)),
        2 => drop(parse_json::<messages::MulticastBody>(data)),
        3 => drop(parse_json::<messages::SendBody>(data)),
        4 => drop(parse_json::<messaging::PostBody>(data)),
        5 => drop(parse_json::<private::PrivateBody>(data)),
        6 => drop(parse_json::<types::TypeBody>(data)),
        7 => drop(parse_json::<experiments::TrackBody>(data)),
        8 => drop(parse_json::<experiments::PromoteBody>(data)),
        9 => drop(parse_json::<deliveries::AckBody>(data)),
        10 => drop(parse_json::<exchange::events::Preferences>(data)),
        11 => drop(parse_json::<preferences::FilterPatch>(data)),
        12 => drop(parse_json::<threads::CreateThread>(data)),
        13 => drop(parse_json::<threads::ThreadRef>(data)),
        14 => drop(parse_json::<notifications::Ids>(data)),
        // Message options and experiments as the handlers check them.
        15 => {
            if let Ok(o) = parse_json::<exchange::events::MessageOpts>(data) {
                let _ = validate::opts(&o);
            }
        }
        16 => {
            if let Ok(e) = parse_json::<exchange::experiment::Experiment>(data)
                && e.validate().is_ok()
            {
                for uid in ["u", "", "ünï"] {
                    let arm = e.assign(uid);
                    let _ = e.arm_name(arm);
                }
                let _ = e.arm_shares();
                for (i, v) in e.variants.iter().enumerate() {
                    let opts = exchange::events::MessageOpts::default();
                    let _ = exchange::experiment::Experiment::lay_over(v, &opts);
                    let _ = e.content(i, "m", &opts);
                }
            }
        }
        // Seed 002's schedule: the fields, the zone, and when it fires over a day.
        18 => {
            if let Ok(b) = parse_json::<stage::ScheduleBody>(data)
                && let Ok(r) = stage::schedule_record(b, 1)
                && let Ok(r) = serde_json::from_value::<exchange::stage::ScheduleRecord>(r)
                && let Ok(c) = exchange::stage::Cron::parse(&r)
            {
                let t = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
                let _ = c.fires(t, t + time::Duration::days(1));
            }
        }
        // Local time: quiet hours and a wall-clock time, checked and evaluated.
        19 => {
            if let Ok(q) = parse_json::<exchange::local::QuietHours>(data)
                && q.check().is_ok()
            {
                let t = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
                let _ = q.ends_after(&jiff::tz::TimeZone::UTC, t);
                let _ = exchange::local::parse_wall_clock(&q.from);
            }
        }
        // Seed 003's body and its receiver list.
        20 => {
            if let Ok(b) = parse_json::<datahub::PostBody>(data) {
                let _ = datahub::receivers(b.receiver.as_deref());
            }
        }
        // Seed 004's batch read: a bare array of ids.
        21 => drop(parse_json::<Vec<u64>>(data)),
        _ => drop(parse_json::<notifications::ReadAll>(data)),
    }
}

/// A device enlistment body (`POST /devices`): native, SMS, e-mail or a Push API subscription.
pub fn device(data: &[u8]) {
    if let Ok(body) = parse_json::<Value>(data) {
        let allowed = vec!["push.example".to_owned()];
        let _ = devices::address(body, &allowed);
    }
}

/// A query string (`a=1&b=2`, percent-encoded) through the paging, time and id parsers.
pub fn query(data: &[u8]) {
    let q: HashMap<String, String> = form_pairs(data);
    if let Ok(p) = Paging::from_query(&q) {
        let _ = p.links("/notifications", u64::from(p.limit) * 3);
    }
    for key in ["since", "until", "before", "after"] {
        let _ = time_param(&q, key);
    }
    for v in q.values() {
        let _ = parse_id("id", v);
    }
}

/// `application/x-www-form-urlencoded` pairs, the last value of a repeated key winning (as
/// axum's `Query<HashMap>` does).
fn form_pairs(data: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(data)
        .unwrap_or_default()
        .into_iter()
        .collect()
}
