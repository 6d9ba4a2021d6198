//! Experiments: `variants`/`holdout` on the message bodies, `GET /experiments/{id}` (the
//! report), `POST /track` (conversions, custom events and clicks).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use exchange::Actor;
use exchange::events::{Event, MessageOpts, Tracked};
use exchange::experiment::{Experiment, HOLDOUT, Variant};
use projections::model::{ArmCounts, Step};
use projections::stats;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::JsonBody;
use crate::routes::validate;
use crate::state::AppState;

/// The experiment fields of a message body.
#[derive(Deserialize, Default, schemars::JsonSchema)]
pub struct Testing {
    #[serde(default)]
    variants: Option<Vec<Variant>>,
    #[serde(default)]
    holdout: Option<f64>,
}

/// The experiment a message body asks for (`variants`, `holdout`, `opts.experiment`), checked;
/// `opts.experiment` moves out of the options into it. An experiment id used before must come
/// with the same variants, weights and holdout (so users keep their arm), from its owner or an
/// admin.
pub(crate) async fn experiment_of(
    state: &AppState,
    actor: &Actor,
    testing: Testing,
    opts: &mut MessageOpts,
    broadcast: bool,
) -> ApiResult<Option<Experiment>> {
    let id = match opts.extra.remove("experiment") {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => {
            return Err(ApiError::field(
                "opts.experiment",
                "must be a string (the experiment id)",
            ));
        }
    };
    let test_share = match opts.extra.remove("test_share") {
        None => None,
        Some(v) => Some(v.as_f64().ok_or_else(|| {
            ApiError::field("opts.test_share", "a percent of the audience, such as 20")
        })?),
    };
    if test_share.is_some() && !broadcast {
        return Err(ApiError::field(
            "opts.test_share",
            "only a broadcast holds back part of its audience",
        ));
    }
    let Some(variants) = testing.variants else {
        if id.is_some() || testing.holdout.is_some() || test_share.is_some() {
            return Err(ApiError::field(
                "variants",
                "an experiment (opts.experiment, holdout) needs its variants",
            ));
        }
        return Ok(None);
    };
    let experiment = Experiment {
        // Named after the message when the envelope is made (`Envelope::new`).
        id: id.clone().unwrap_or_default(),
        variants,
        holdout: testing.holdout.unwrap_or(0.0),
        test_share: test_share.unwrap_or(0.0),
        promoted: None,
    };
    if test_share.is_some_and(|s| s <= 0.0) {
        return Err(ApiError::field(
            "opts.test_share",
            "a percent of the audience, above 0 and below 100",
        ));
    }
    let mut probe = experiment.clone();
    if probe.id.is_empty() {
        probe.id = "message".into();
    }
    probe
        .validate()
        .map_err(|e| ApiError::field(e.field, e.message))?;
    for (i, v) in experiment.variants.iter().enumerate() {
        if let Some(msg) = &v.msg {
            validate::text(
                &format!("variants[{i}].msg"),
                msg,
                state.config.max_message_chars,
            )?;
        }
        if v.opts.is_some() {
            let merged = Experiment::lay_over(v, opts).map_err(|e| {
                ApiError::field(
                    format!("variants[{i}].opts"),
                    format!("invalid options: {e}"),
                )
            })?;
            validate::opts(&merged)?;
        }
    }
    if let Some(id) = &id
        && let Some(existing) = state.store.experiment(id).await?
    {
        if !(actor.is_admin() || existing.owner == actor.uid) {
            return Err(ApiError::forbidden(
                "this experiment id belongs to another sender",
            ));
        }
        let same = existing.spec.holdout == experiment.holdout
            && existing.spec.test_share == experiment.test_share
            && existing.spec.variants.len() == experiment.variants.len()
            && existing
                .spec
                .variants
                .iter()
                .zip(&experiment.variants)
                .all(|(a, b)| a.name == b.name && a.weight == b.weight);
        if !same {
            return Err(ApiError::conflict(
                "experiment_changed",
                "this experiment was sent with other variants, weights, holdout or test share; \
                 users would change arms (use a new opts.experiment)",
            ));
        }
    }
    Ok(Some(experiment))
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct TrackBody {
    event: String,
    #[serde(default)]
    mid: Option<Uuid>,
    #[serde(default)]
    props: Option<serde_json::Map<String, Value>>,
}

/// Records a conversion, a custom event or a click of the caller (202 once in JetStream).
pub async fn track(
    State(state): State<AppState>,
    Caller(actor): Caller,
    JsonBody(body): JsonBody<TrackBody>,
) -> ApiResult<(StatusCode, Json<super::schemas::TrackedAnswer>)> {
    let name = body.event.trim();
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
    {
        return Err(ApiError::field(
            "event",
            "1-64 letters, digits or _ - . : (such as purchase or signup)",
        ));
    }
    if let Some(props) = &body.props {
        let size = serde_json::to_vec(props).map_or(usize::MAX, |v| v.len());
        if size > 8 * 1024 {
            return Err(ApiError::field("props", "at most 8 KiB of JSON"));
        }
    }
    if let Some(mid) = body.mid
        && state
            .store
            .notifications(&actor.uid, &[mid])
            .await?
            .is_empty()
        && !held_out(&state, &actor.uid, mid).await?
    {
        return Err(ApiError::not_found("no such message in your inbox"));
    }
    let event = Event::Tracked(Tracked {
        uid: actor.uid.clone(),
        event: name.to_owned(),
        mid: body.mid,
        props: body.props,
        window: state.config.attribution_window.as_secs(),
    });
    let recorded = state.append(&actor, event, None).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(super::schemas::TrackedAnswer {
            id: recorded.envelope.id,
            event: name.to_owned(),
            mid: body.mid,
        }),
    ))
}

/// Whether `uid` was held out of the experiment of message `mid` (they have no entry of it but
/// may still convert on it).
async fn held_out(state: &AppState, uid: &str, mid: Uuid) -> ApiResult<bool> {
    Ok(state
        .store
        .message(mid)
        .await?
        .and_then(|m| m.experiment)
        .is_some_and(|e| e.assign(uid) == exchange::experiment::Arm::Holdout))
}

/// The experiment `id`, when the caller is its sender or an admin (403 otherwise, 404 when
/// there is none).
pub(crate) async fn owned(
    state: &AppState,
    actor: &Actor,
    id: &str,
    what: &str,
) -> ApiResult<projections::model::ExperimentRecord> {
    let record = state
        .store
        .experiment(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such experiment"))?;
    if !(actor.is_admin() || record.owner == actor.uid) {
        return Err(ApiError::forbidden(format!(
            "only the experiment's sender or an admin may {what}"
        )));
    }
    Ok(record)
}

const STEPS: [(Step, &str); 5] = [
    (Step::Exposed, "exposed"),
    (Step::Delivered, "delivered"),
    (Step::Opened, "opened"),
    (Step::Clicked, "clicked"),
    (Step::Converted, "converted"),
];

/// The report of an experiment: per arm its users at each step and their rates, each arm
/// against the control (the holdout, else the first variant) on one metric, the sample-ratio
/// check, and a winner only when the always-valid test says so.
pub async fn report(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<super::schemas::ExperimentReport>> {
    let record = owned(&state, &actor, &id, "read its report").await?;
    let metric = match query.get("metric").map(String::as_str) {
        None => Step::Converted,
        Some(m) => STEPS
            .iter()
            .skip(1)
            .find(|(_, name)| *name == m)
            .map(|(s, _)| *s)
            .ok_or_else(|| ApiError::field("metric", "delivered, opened, clicked or converted"))?,
    };
    let metric_name = STEPS
        .iter()
        .find(|(s, _)| *s == metric)
        .map_or("converted", |(_, n)| *n);
    let alpha = match query.get("alpha") {
        None => 0.05,
        Some(a) => a
            .parse::<f64>()
            .ok()
            .filter(|a| *a > 0.0 && *a < 0.5)
            .ok_or_else(|| ApiError::field("alpha", "a level between 0 and 0.5, such as 0.05"))?,
    };
    let counts = state.store.experiment_arms(&id).await?;
    let spec = &record.spec;
    let names = spec.arm_names();
    let shares = spec.arm_shares();
    let arm = |name: &str| {
        counts
            .iter()
            .find(|c| c.arm == name)
            .cloned()
            .unwrap_or_else(|| ArmCounts {
                arm: name.to_owned(),
                ..Default::default()
            })
    };
    let arms: Vec<ArmCounts> = names.iter().map(|n| arm(n)).collect();
    let control = &arms[0];
    // Each arm against the control: the level is split between the comparisons (Bonferroni).
    let comparisons = arms.len().saturating_sub(1).max(1);
    let level = alpha / comparisons as f64;
    let mut winner: Option<(String, f64)> = None;
    let srm = stats::sample_ratio(&arms.iter().map(|a| a.exposed).collect::<Vec<_>>(), &shares);
    let mismatch = srm.is_some_and(|(_, p)| p < stats::SRM_ALPHA);
    let mut rows = Vec::with_capacity(arms.len());
    for (i, a) in arms.iter().enumerate() {
        let n = a.exposed;
        let rate = |x: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
        let mut rates = std::collections::BTreeMap::new();
        for (step, name) in STEPS {
            if step != Step::Exposed {
                rates.insert(name, rate(a.get(step)));
            }
        }
        let mut against_control = None;
        if i > 0
            && let Some(c) = stats::compare(
                a.get(metric),
                n,
                control.get(metric),
                control.exposed,
                level,
            )
        {
            against_control = Some(super::schemas::AgainstControl {
                difference: c.difference,
                relative_lift: c.relative,
                p_value: c.p_value,
                ci: [c.ci95.0, c.ci95.1],
                always_valid_p: c.always_valid_p,
                always_valid_ci: [c.always_valid_ci95.0, c.always_valid_ci95.1],
                significant: c.always_valid_p < level,
            });
            if c.always_valid_p < level
                && c.difference > 0.0
                && winner.as_ref().is_none_or(|(_, d)| c.difference > *d)
            {
                winner = Some((a.arm.clone(), c.difference));
            }
        }
        rows.push(super::schemas::ArmReport {
            name: a.arm.clone(),
            expected_share: shares.get(i).copied().unwrap_or(0.0),
            control: i == 0,
            exposed: a.get(Step::Exposed),
            delivered: a.get(Step::Delivered),
            opened: a.get(Step::Opened),
            clicked: a.get(Step::Clicked),
            converted: a.get(Step::Converted),
            rates,
            against_control,
        });
    }
    Ok(Json(super::schemas::ExperimentReport {
        id: record.id.clone(),
        owner: record.owner.clone(),
        created_at: record
            .created_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        messages: record.messages,
        first_mid: record.first_mid,
        last_mid: record.last_mid,
        holdout: spec.holdout,
        test_share: spec.test_share,
        promoted: record.promoted.clone(),
        metric: metric_name,
        alpha,
        control: names.first().copied().unwrap_or(HOLDOUT).to_owned(),
        arms: rows,
        sample_ratio: srm.map(|(chi, p)| super::schemas::SampleRatio {
            chi_squared: chi,
            p_value: p,
            mismatch: p < stats::SRM_ALPHA,
        }),
        winner: if mismatch {
            None
        } else {
            winner.map(|(w, _)| w)
        },
        method: super::schemas::ReportMethod {
            test: format!(
                "mSPRT, always-valid p-value and {}% interval of the difference \
                     in {metric_name} rate against the control (normal mixture, tau^2 = {}); \
                     valid however often the report is read",
                (1.0 - level) * 100.0,
                stats::TAU_SQUARED
            ),
            fixed_horizon: "two-proportion z-test (pooled) and its unpooled interval: valid \
                              only when read once, at a sample size fixed in advance",
            multiple_arms: "the level is divided between the comparisons (Bonferroni)",
            sample_ratio: format!(
                "chi-squared test of exposed users against the arms' \
                             shares; mismatch below p = {}; no winner while it fails",
                stats::SRM_ALPHA
            ),
            winner: "the arm with the largest positive difference whose always-valid p-value \
                       is below the level",
        },
    }))
}

/// A tracked link (`GET /r/{token}`, no token needed): records the click as a `tracked` event
/// of the recipient the link was made for (once per link: the token is the event's
/// deduplication key) and answers 302 to the link the message holds for them. A token that does
/// not verify, or names no link of that message, is a 400: the target never comes from the
/// request.
pub async fn redirect(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let signer = state
        .config
        .links
        .as_ref()
        .ok_or_else(|| ApiError::not_found("tracked links are not configured here"))?;
    let invalid = || ApiError::bad_request("invalid_link", "this is not a link of this exchange");
    let click = signer.verify(&token).ok_or_else(invalid)?;
    let message = state
        .store
        .message(click.mid)
        .await?
        .ok_or_else(|| ApiError::not_found("the link's message no longer exists"))?;
    let content = message.for_uid(&click.uid).ok_or_else(invalid)?;
    let target = exchange::links::target(&content.msg, content.opts.url.as_deref(), click.index)
        .ok_or_else(invalid)?;
    let location = axum::http::HeaderValue::from_str(&target).map_err(|_| invalid())?;
    let actor = Actor {
        uid: click.uid.clone(),
        roles: Vec::new(),
    };
    let event = Event::Tracked(Tracked {
        uid: click.uid,
        event: exchange::events::CLICK.to_owned(),
        mid: Some(click.mid),
        props: Some(
            json!({"url": target, "link": click.index})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
        window: state.config.attribution_window.as_secs(),
    });
    // A click that cannot be recorded still takes the user where the message said.
    if let Err(e) = state.append(&actor, event, Some(&token)).await {
        tracing::warn!(mid = %click.mid, error = %e.message, "click not recorded");
    }
    Ok((
        StatusCode::FOUND,
        [(axum::http::header::LOCATION, location)],
    )
        .into_response())
}

#[derive(Deserialize, schemars::JsonSchema)]
pub struct PromoteBody {
    variant: String,
}

/// Sends the chosen variant to the part of a broadcast's audience its test share held back
/// (every user known then who was not in the test). 202 `{"mid"}`; 409 when the experiment
/// held nothing back or was promoted already.
pub async fn promote(
    State(state): State<AppState>,
    Caller(actor): Caller,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PromoteBody>,
) -> ApiResult<super::messages::Accepted> {
    let record = owned(&state, &actor, &id, "promote it").await?;
    if record.spec.test_share == 0.0 {
        return Err(ApiError::conflict(
            "nothing_held_back",
            "this experiment was sent to its whole audience (no opts.test_share)",
        ));
    }
    if let Some(v) = &record.promoted {
        return Err(ApiError::conflict(
            "already_promoted",
            format!("variant {v} was promoted already"),
        ));
    }
    if !record.spec.variants.iter().any(|v| v.name == body.variant) {
        return Err(ApiError::field(
            "variant",
            "is not one of the experiment's variants",
        ));
    }
    let first = state
        .store
        .message(record.first_mid)
        .await?
        .ok_or_else(|| ApiError::not_found("the experiment's message no longer exists"))?;
    // The promotion is sent now, whenever the test was.
    let mut opts = first.opts.clone();
    opts.extra.remove(exchange::events::DELIVER_AT);
    opts.extra.remove("delay");
    let mut experiment = record.spec.clone();
    experiment.promoted = Some(body.variant);
    let event = Event::MessageSent(exchange::events::MessageSent {
        audience: exchange::events::Audience::All,
        sender: actor.uid.clone(),
        msg: first.msg.clone(),
        opts,
        experiment: Some(experiment),
    });
    // Promoting twice before the first is folded stores one promotion (JetStream's duplicate
    // window), unless the client names its own key.
    let mut headers = headers;
    if !headers.contains_key("idempotency-key")
        && let Ok(v) = axum::http::HeaderValue::from_str(&format!("promote:{id}"))
    {
        headers.insert("idempotency-key", v);
    }
    super::messages::accept(&state, &actor, &headers, event).await
}
