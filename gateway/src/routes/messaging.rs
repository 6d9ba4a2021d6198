//! The Ona messaging API (seed 000): messages to a user or to a group target such as a form or
//! a project (a thread with the alias `<target_type>:<target_id>`).
//!
//! Rules: only members of a target (its subscribers, owner, admins) may post to or read it; a
//! user target is readable only by that user and obeys the private-message rules (blocks,
//! rate); only the author or an admin may delete a message.
//!
//! Ona's `verb` (default `message`) rides in the message's options; its filters (`verb`,
//! `timestamp__gt|gte|lt|lte|year|month|day`), `page`/`page_size`, `group_by` counts and
//! `GET /stats/messaging` read the target's messages and group them here.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use exchange::Actor;
use exchange::events::{Audience, Event, MessageDeleted, MessagePublished, MessageSent};
use projections::model::{
    HistoryQuery, InboxFilter, InboxQuery, StatusFilter, StoredMessage, Thread,
};
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::schemas::{OnaGroup, OnaMessage, OnaRow, Paged};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, Paging, parse_id, time_param};
use crate::routes::{idempotency_key, threads, validate};
use crate::state::AppState;

#[derive(Deserialize, schemars::JsonSchema)]
pub struct PostBody {
    target_type: String,
    target_id: String,
    message: String,
    /// Ona's action name (`message`, `submission_created`, ...); default `message`.
    #[serde(default)]
    verb: Option<String>,
}

/// The option key a messaging post keeps its verb under.
const VERB: &str = "verb";
/// Ona's default verb.
const MESSAGE: &str = "message";

/// A message's verb (`message` unless its post named another).
fn verb_of(opts: &exchange::events::MessageOpts) -> &str {
    opts.extra
        .get(VERB)
        .and_then(Value::as_str)
        .unwrap_or(MESSAGE)
}

fn item(
    mid: uuid::Uuid,
    message: &str,
    user: &str,
    verb: &str,
    target: (&str, &str),
    at: OffsetDateTime,
) -> OnaMessage {
    OnaMessage {
        id: mid,
        verb: verb.to_owned(),
        message: message.to_owned(),
        user: user.to_owned(),
        target_type: target.0.to_owned(),
        target_id: target.1.to_owned(),
        timestamp: at.format(&Rfc3339).unwrap_or_default(),
    }
}

/// `(target_type, target_id)` of a thread: its alias split at the first `:`, or the tid.
fn target_of(thread: &Thread) -> (String, String) {
    match thread.alias.as_deref().and_then(|a| a.split_once(':')) {
        Some((t, id)) => (t.to_owned(), id.to_owned()),
        None => ("thread".to_owned(), thread.tid.to_string()),
    }
}

/// The thread behind a group target, if the caller is a member.
async fn member_target(state: &AppState, actor: &Actor, kind: &str, id: &str) -> ApiResult<Thread> {
    let alias = format!("{kind}:{id}");
    let thread = state
        .store
        .thread_by_alias(&alias)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no target {alias}")))?;
    if !(threads::is_owner_or_admin(actor, &thread)
        || state.store.is_subscribed(thread.tid, &actor.uid).await?)
    {
        return Err(ApiError::forbidden(
            "only members of the target may do this",
        ));
    }
    Ok(thread)
}

pub async fn post(
    State(state): State<AppState>,
    Caller(actor): Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PostBody>,
) -> ApiResult<(StatusCode, Json<OnaMessage>)> {
    validate::text("message", &body.message, state.config.max_message_chars)?;
    validate::text("target_type", &body.target_type, 64)?;
    validate::text("target_id", &body.target_id, 256)?;
    let verb = body.verb.clone().unwrap_or_else(|| MESSAGE.to_owned());
    if verb.is_empty()
        || verb.len() > 64
        || !verb
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(ApiError::field(
            "verb",
            "1-64 lowercase letters, digits or _ (such as message or submission_created)",
        ));
    }
    let mut opts = exchange::events::MessageOpts::default();
    if verb != MESSAGE {
        opts.extra
            .insert(VERB.to_owned(), Value::from(verb.clone()));
    }
    let key = idempotency_key(&headers)?;
    let event = if body.target_type == "user" {
        validate::uid("target_id", &body.target_id)?;
        if state.store.is_blocked(&body.target_id, &actor.uid).await? {
            return Err(ApiError::forbidden(
                "the receiver does not accept your messages",
            ));
        }
        if let Err(retry) = state.rate.check(
            &actor.uid,
            state.config.private_messages_per_minute,
            std::time::Duration::from_secs(60),
        ) {
            return Err(ApiError::too_many(
                "too many private messages; slow down",
                retry.as_secs().max(1),
            ));
        }
        Event::MessageSent(MessageSent {
            audience: Audience::User {
                uid: body.target_id.clone(),
            },
            sender: actor.uid.clone(),
            msg: body.message.clone(),
            opts: opts.clone(),
            experiment: None,
        })
    } else {
        let thread = member_target(&state, &actor, &body.target_type, &body.target_id).await?;
        Event::MessagePublished(MessagePublished {
            tid: thread.tid,
            sender: actor.uid.clone(),
            msg: body.message.clone(),
            opts,
            experiment: None,
        })
    };
    let recorded = state.append(&actor, event, key.as_deref()).await?;
    let env = &recorded.envelope;
    Ok((
        StatusCode::CREATED,
        Json(item(
            env.id,
            &body.message,
            &actor.uid,
            &verb,
            (&body.target_type, &body.target_id),
            env.occurred_at,
        )),
    ))
}

fn required<'a>(q: &'a HashMap<String, String>, key: &str) -> Result<&'a str, ApiError> {
    q.get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            let mut e = ApiError::field(key, "is required");
            e.code = "missing_field";
            e
        })
}

/// One message of a target as the Ona views see it.
struct Row {
    mid: uuid::Uuid,
    msg: String,
    user: String,
    verb: String,
    at: OffsetDateTime,
}

/// A `group_by` row's key: (period start, user, verb), each when asked for.
type GroupKey = (Option<OffsetDateTime>, Option<String>, Option<String>);
/// A `group_by` row's count and its earliest and latest times.
type GroupCount = (u64, OffsetDateTime, OffsetDateTime);

/// The most messages a filtered or grouped view reads from one target (newest first).
pub const MAX_SCAN: u64 = 10_000;

/// Ona's time buckets of `group_by`, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bucket {
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Bucket {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "hour" => Bucket::Hour,
            "day" => Bucket::Day,
            "week" => Bucket::Week,
            "month" => Bucket::Month,
            "year" => Bucket::Year,
            _ => return None,
        })
    }

    /// The bucket's start (weeks start on Monday, as Django's `TruncWeek`).
    fn start(self, at: OffsetDateTime) -> OffsetDateTime {
        let at = at.to_offset(time::UtcOffset::UTC);
        let day = at.date();
        let date = match self {
            Bucket::Hour | Bucket::Day => day,
            Bucket::Week => {
                day - time::Duration::days(i64::from(day.weekday().number_days_from_monday()))
            }
            Bucket::Month => day.replace_day(1).unwrap_or(day),
            Bucket::Year => day
                .replace_month(time::Month::January)
                .and_then(|d| d.replace_day(1))
                .unwrap_or(day),
        };
        let hour = if self == Bucket::Hour { at.hour() } else { 0 };
        date.with_hms(hour, 0, 0)
            .map(|t| t.assume_utc())
            .unwrap_or(at)
    }

    /// `GET /stats/messaging`'s group label.
    fn label(self, at: OffsetDateTime) -> String {
        let at = at.to_offset(time::UtcOffset::UTC);
        match self {
            Bucket::Year => format!("{}", at.year()),
            Bucket::Month => format!("{}-{:02}", at.year(), u8::from(at.month())),
            _ => format!("{}-{:02}-{:02}", at.year(), u8::from(at.month()), at.day()),
        }
    }
}

/// A `timestamp__*` filter value: RFC 3339, a date-time without a zone (UTC), or a date.
fn instant(key: &str, v: &str) -> Result<OffsetDateTime, ApiError> {
    if let Ok(t) = OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(t);
    }
    // Checked at compile time (no format string parsed per request).
    use time::macros::format_description as fd;
    let formats: [&[time::format_description::BorrowedFormatItem<'_>]; 3] = [
        fd!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        fd!("[year]-[month]-[day]T[hour]:[minute]"),
        fd!("[year]-[month]-[day] [hour]:[minute]:[second]"),
    ];
    for f in formats {
        if let Ok(t) = time::PrimitiveDateTime::parse(v, &f) {
            return Ok(t.assume_utc());
        }
    }
    if let Ok(d) = time::Date::parse(v, fd!("[year]-[month]-[day]")) {
        return Ok(d.midnight().assume_utc());
    }
    Err(ApiError::field(
        key,
        "an RFC 3339 time, a date-time such as 2024-06-20T00:00 (UTC) or a date",
    ))
}

/// The query's filters on a target's messages.
struct Filters {
    sender: Option<String>,
    verb: Option<String>,
    /// (instant, inclusive) bounds.
    after: Option<(OffsetDateTime, bool)>,
    until: Option<(OffsetDateTime, bool)>,
    /// Django's `timestamp__month` / `__day` (UTC): any year's, unless `__year` narrows it.
    month: Option<u8>,
    day: Option<u8>,
}

/// A `timestamp__year|month|day` value in its range, naming the key otherwise.
fn part(q: &HashMap<String, String>, key: &str, lo: i32, hi: i32) -> Result<Option<i32>, ApiError> {
    q.get(key)
        .map(|v| {
            v.trim()
                .parse::<i32>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| {
                    ApiError::field(key, format!("must be an integer from {lo} to {hi}"))
                })
        })
        .transpose()
}

impl Filters {
    fn of(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let mut f = Filters {
            sender: q.get("user").cloned(),
            verb: q.get("verb").filter(|v| !v.is_empty()).cloned(),
            after: time_param(q, "since")?.map(|t| (t, true)),
            until: time_param(q, "before")?.map(|t| (t, false)),
            month: part(q, "timestamp__month", 1, 12)?.map(|m| m as u8),
            day: part(q, "timestamp__day", 1, 31)?.map(|d| d as u8),
        };
        // `timestamp__year` (with the month and day when given) is a range of UTC time.
        if let Some(y) = part(q, "timestamp__year", 1, 9999)? {
            let start = |y: i32, m: u8, d: u8| {
                time::Month::try_from(m)
                    .ok()
                    .and_then(|m| time::Date::from_calendar_date(y, m, d).ok())
                    .map(|d| d.midnight().assume_utc())
            };
            let (lo, hi) = match (f.month, f.day) {
                (Some(m), Some(d)) => {
                    let lo = start(y, m, d);
                    (lo, lo.map(|t| t + time::Duration::days(1)))
                }
                (Some(m), None) => (
                    start(y, m, 1),
                    if m == 12 {
                        start(y + 1, 1, 1)
                    } else {
                        start(y, m + 1, 1)
                    },
                ),
                _ => (start(y, 1, 1), start(y + 1, 1, 1)),
            };
            let (Some(lo), Some(hi)) = (lo, hi) else {
                return Err(ApiError::field(
                    "timestamp__day",
                    "is not a day of that month",
                ));
            };
            f.after = Some(f.after.map_or((lo, true), |a| a.max((lo, true))));
            f.until = Some(f.until.map_or((hi, false), |u| u.min((hi, false))));
        }
        for (key, lower, inclusive) in [
            ("timestamp__gt", true, false),
            ("timestamp__gte", true, true),
            ("timestamp__lt", false, false),
            ("timestamp__lte", false, true),
        ] {
            if let Some(v) = q.get(key) {
                let t = instant(key, v)?;
                if lower {
                    f.after = Some((t, inclusive));
                } else {
                    f.until = Some((t, inclusive));
                }
            }
        }
        Ok(f)
    }

    /// Whether the store's paging answers the query (no filter it cannot apply: a verb).
    fn store_only(&self) -> bool {
        self.verb.is_none() && self.month.is_none() && self.day.is_none()
    }

    /// What the store does not filter (times and the sender it does).
    fn keeps(&self, r: &Row) -> bool {
        let utc = r.at.to_offset(time::UtcOffset::UTC);
        self.verb.as_ref().is_none_or(|v| *v == r.verb)
            && self.month.is_none_or(|m| u8::from(utc.month()) == m)
            && self.day.is_none_or(|d| utc.day() == d)
    }

    /// The bounds as the store takes them (inclusive `since`, exclusive `before`).
    fn bounds(&self) -> (Option<OffsetDateTime>, Option<OffsetDateTime>) {
        let after = self.after.map(|(t, inc)| {
            if inc {
                t
            } else {
                t + time::Duration::nanoseconds(1)
            }
        });
        let until = self.until.map(|(t, inc)| {
            if inc {
                t + time::Duration::nanoseconds(1)
            } else {
                t
            }
        });
        (after, until)
    }
}

/// One page of a target's messages, newest first, and their total (the store's paging).
async fn page_of(
    state: &AppState,
    actor: &Actor,
    (kind, id): (&str, &str),
    f: &Filters,
    limit: u32,
    offset: u64,
) -> ApiResult<(u64, Vec<Row>)> {
    let (since, before) = f.bounds();
    if kind == "user" {
        if id != actor.uid && !actor.is_admin() {
            return Err(ApiError::forbidden(
                "a user's messages are readable only by that user",
            ));
        }
        let page = state
            .store
            .inbox(
                id,
                &InboxQuery {
                    filter: InboxFilter {
                        status: Some(StatusFilter::All),
                        sender: f.sender.clone(),
                        since,
                        before,
                        direct: true,
                        ..Default::default()
                    },
                    limit,
                    offset,
                    after: None,
                },
            )
            .await?;
        let rows = page
            .items
            .into_iter()
            .map(|n| Row {
                mid: n.id,
                verb: verb_of(&n.opts).to_owned(),
                msg: n.msg,
                user: n.sender,
                at: n.created_at,
            })
            .collect();
        return Ok((page.total, rows));
    }
    let thread = member_target(state, actor, kind, id).await?;
    let page = state
        .store
        .thread_messages(
            thread.tid,
            &HistoryQuery {
                limit,
                offset,
                sender: f.sender.clone(),
                since,
                before,
            },
        )
        .await?;
    let rows = page
        .items
        .into_iter()
        .map(|m| Row {
            mid: m.mid,
            verb: verb_of(&m.opts).to_owned(),
            msg: m.msg,
            user: m.sender,
            at: m.created_at,
        })
        .collect();
    Ok((page.total, rows))
}

/// Every message of a target the filters keep, newest first (at most [`MAX_SCAN`] read).
async fn all_of(
    state: &AppState,
    actor: &Actor,
    target: (&str, &str),
    f: &Filters,
) -> ApiResult<Vec<Row>> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    loop {
        let (total, rows) =
            page_of(state, actor, target, f, crate::extract::MAX_LIMIT, offset).await?;
        if total > MAX_SCAN {
            return Err(ApiError::bad_request(
                "too_many_messages",
                format!(
                    "{total} messages in range, at most {MAX_SCAN} are filtered or grouped: \
                     narrow it with timestamp__gte / timestamp__lt"
                ),
            ));
        }
        let n = rows.len() as u64;
        out.extend(rows.into_iter().filter(|r| f.keeps(r)));
        offset += n;
        if n == 0 || offset >= total {
            return Ok(out);
        }
    }
}

/// Ona's default and largest `page_size` (its page-number paging, `page` from 1).
pub const ONA_PAGE_SIZE: u32 = 1000;
pub const ONA_MAX_PAGE_SIZE: u32 = 10_000;

/// The query pairs, repeated keys kept (Ona repeats `group_by`).
fn pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(raw.unwrap_or_default())
        .map_err(|_| ApiError::bad_request("invalid_query", "the query string is not valid"))
}

/// `group_by` dimensions: `user`, `verb` and at most one time bucket (repeated or
/// comma-separated).
fn group_dims(pairs: &[(String, String)]) -> Result<(bool, bool, Option<Bucket>), ApiError> {
    let (mut user, mut verb, mut bucket) = (false, false, None);
    for v in pairs
        .iter()
        .filter(|(k, _)| k == "group_by")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        match v {
            "user" => user = true,
            "verb" => verb = true,
            other => match Bucket::parse(other) {
                Some(b) if bucket.is_none_or(|x| x == b) => bucket = Some(b),
                Some(_) => {
                    return Err(ApiError::field(
                        "group_by",
                        "at most one of hour, day, week, month, year",
                    ));
                }
                None => {
                    return Err(ApiError::field(
                        "group_by",
                        "user, verb, hour, day, week, month or year",
                    ));
                }
            },
        }
    }
    Ok((user, verb, bucket))
}

fn rfc(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_default()
}

/// `GET /messaging?target_type&target_id` with Ona's filters (`user`, `verb`,
/// `timestamp__gt|gte|lt|lte`, also `since`/`before`), paging (`limit`/`offset` or
/// `page`/`page_size`) and `group_by` counts.
pub async fn list(
    State(state): State<AppState>,
    Caller(actor): Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Paged<OnaRow>>> {
    let pairs = pairs(raw.as_deref())?;
    let q: HashMap<String, String> = pairs.iter().cloned().collect();
    let by_page = q.contains_key("page") || q.contains_key("page_size");
    let paging = if by_page {
        Paging::by_page(&q, "page_size", ONA_PAGE_SIZE, ONA_MAX_PAGE_SIZE)?
    } else {
        Paging::from_query(&q)?
    };
    // As in the seed: without a target the list is empty.
    if !q.contains_key("target_type") && !q.contains_key("target_id") {
        return Ok(Json(Paged {
            count: 0,
            next: None,
            previous: None,
            results: Vec::new(),
        }));
    }
    let (kind, id) = (required(&q, "target_type")?, required(&q, "target_id")?);
    let filters = Filters::of(&q)?;
    let (by_user, by_verb, bucket) = group_dims(&pairs)?;
    let grouped = by_user || by_verb || bucket.is_some();
    let path = format!("/api/v1/messaging?target_type={kind}&target_id={id}");
    let (total, results) = if grouped {
        let rows = all_of(&state, &actor, (kind, id), &filters).await?;
        let mut groups: HashMap<GroupKey, GroupCount> = HashMap::new();
        for r in &rows {
            let key = (
                bucket.map(|b| b.start(r.at)),
                by_user.then(|| r.user.clone()),
                by_verb.then(|| r.verb.clone()),
            );
            let g = groups.entry(key).or_insert((0, r.at, r.at));
            g.0 += 1;
            g.1 = g.1.min(r.at);
            g.2 = g.2.max(r.at);
        }
        let mut groups: Vec<_> = groups.into_iter().collect();
        // Most recent activity first (ties: the key, for a stable order).
        groups.sort_by(|a, b| b.1.2.cmp(&a.1.2).then_with(|| a.0.cmp(&b.0)));
        let total = groups.len() as u64;
        let results = groups
            .into_iter()
            .skip(usize::try_from(paging.offset).unwrap_or(usize::MAX))
            .take(paging.limit as usize)
            .map(|((period, user, verb), (count, earliest, latest))| {
                OnaRow::Group(OnaGroup {
                    period_start: period.map(rfc),
                    user,
                    verb,
                    count,
                    earliest_timestamp: rfc(earliest),
                    latest_timestamp: rfc(latest),
                })
            })
            .collect::<Vec<_>>();
        (total, results)
    } else if filters.store_only() {
        let (total, rows) = page_of(
            &state,
            &actor,
            (kind, id),
            &filters,
            paging.limit,
            paging.offset,
        )
        .await?;
        let items = rows
            .iter()
            .map(|r| OnaRow::Message(item(r.mid, &r.msg, &r.user, &r.verb, (kind, id), r.at)))
            .collect::<Vec<_>>();
        (total, items)
    } else {
        let rows = all_of(&state, &actor, (kind, id), &filters).await?;
        let total = rows.len() as u64;
        let items = rows
            .iter()
            .skip(usize::try_from(paging.offset).unwrap_or(usize::MAX))
            .take(paging.limit as usize)
            .map(|r| OnaRow::Message(item(r.mid, &r.msg, &r.user, &r.verb, (kind, id), r.at)))
            .collect::<Vec<_>>();
        (total, items)
    };
    let next_offset = paging.offset + u64::from(paging.limit);
    let previous_offset = paging.offset.saturating_sub(u64::from(paging.limit));
    // Links in the style the request paged in.
    let link = |offset: u64| {
        if by_page {
            let page = offset / u64::from(paging.limit) + 1;
            format!("{path}&page={page}&page_size={}", paging.limit)
        } else {
            format!("{path}&limit={}&offset={offset}", paging.limit)
        }
    };
    let next = (next_offset < total).then(|| link(next_offset));
    let previous = (paging.offset > 0).then(|| link(previous_offset));
    Ok(Json(Paged {
        count: total,
        next,
        previous,
        results,
    }))
}

/// `GET /stats/messaging?target_type&target_id&group_by=day|month|year[&verb][&timestamp__*]`:
/// Ona's counts per verb in each period, newest first, as a bare list of
/// `{"group": "2023", "<verb>": n, ...}`.
pub async fn stats(
    State(state): State<AppState>,
    Caller(actor): Caller,
    RawQuery(raw): RawQuery,
) -> ApiResult<Json<Vec<super::schemas::OnaStat>>> {
    let pairs = pairs(raw.as_deref())?;
    let q: HashMap<String, String> = pairs.iter().cloned().collect();
    let (kind, id) = (required(&q, "target_type")?, required(&q, "target_id")?);
    let bucket = match required(&q, "group_by")? {
        "day" => Bucket::Day,
        "month" => Bucket::Month,
        "year" => Bucket::Year,
        _ => return Err(ApiError::field("group_by", "day, month or year")),
    };
    let filters = Filters::of(&q)?;
    let rows = all_of(&state, &actor, (kind, id), &filters).await?;
    let mut groups: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>> =
        Default::default();
    for r in &rows {
        *groups
            .entry(bucket.label(r.at))
            .or_default()
            .entry(r.verb.clone())
            .or_default() += 1;
    }
    let out = groups
        .into_iter()
        .rev()
        .map(|(group, mut verbs)| {
            // The period's key wins over a verb of that name, as in the seed's rows.
            verbs.remove("group");
            super::schemas::OnaStat { group, verbs }
        })
        .collect();
    Ok(Json(out))
}

/// The message and its target, if the caller may see it.
async fn visible(
    state: &AppState,
    actor: &Actor,
    raw_id: &str,
) -> ApiResult<(StoredMessage, (String, String))> {
    let mid = parse_id("id", raw_id)?;
    let m = state
        .store
        .message(mid)
        .await?
        .ok_or_else(|| ApiError::not_found("no such message"))?;
    let target = match m.tid {
        Some(tid) => {
            let thread = state
                .store
                .thread(tid)
                .await?
                .ok_or_else(|| ApiError::not_found("no such message"))?;
            if !(threads::is_owner_or_admin(actor, &thread)
                || state.store.is_subscribed(tid, &actor.uid).await?)
            {
                return Err(ApiError::forbidden(
                    "only members of the target may read this",
                ));
            }
            target_of(&thread)
        }
        None => {
            let mine = m.sender == actor.uid
                || actor.is_admin()
                || !state
                    .store
                    .notifications(&actor.uid, &[mid])
                    .await?
                    .is_empty();
            if !mine {
                return Err(ApiError::not_found("no such message"));
            }
            ("user".to_owned(), String::new())
        }
    };
    Ok((m, target))
}

pub async fn get(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<OnaMessage>> {
    let (m, target) = visible(&state, &actor, &id).await?;
    Ok(Json(item(
        m.mid,
        &m.msg,
        &m.sender,
        verb_of(&m.opts),
        (&target.0, &target.1),
        m.created_at,
    )))
}

pub async fn delete(
    State(state): State<AppState>,
    Caller(actor): Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (m, _) = visible(&state, &actor, &id).await?;
    if m.sender != actor.uid && !actor.is_admin() {
        return Err(ApiError::forbidden(
            "only the author or an admin may delete a message",
        ));
    }
    state
        .append_consistent(
            &actor,
            Event::MessageDeleted(MessageDeleted { mid: m.mid }),
            None,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
