//! Stage-based messaging (seed 002): its records as the API shows them, the cron-like
//! schedules and when they fire, and the scheduler that appends a `stage_tick` event for each
//! due time.
//!
//! A schedule has the seed's five fields (`minute`, `hour`, `day_of_week` with 1 = Monday ...
//! 7 = Sunday, `day_of_month`, `month_of_year`), each `*` or a comma list, plus two of ours:
//! `timezone` (IANA, default UTC) and `second` (default `0`). A time fires when every field
//! matches (day of month *and* day of week, as Celery's crontab reads them, not cron's "either").
//! Across daylight-saving changes each matching wall-clock time fires once: one inside the
//! skipped hour fires as far past the gap as it was into it (02:30 fires at 03:30, jiff's
//! "compatible" rule, as quiet hours end), one inside the repeated hour fires at its first
//! occurrence only.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::events::{Envelope, Event, StageTick};
use crate::log::{EventLog, LogError};

/// The seed's Schedule, with a zone and a seconds field of ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScheduleRecord {
    pub id: u64,
    #[serde(default = "star")]
    pub minute: String,
    #[serde(default = "star")]
    pub hour: String,
    #[serde(default = "star")]
    pub day_of_week: String,
    #[serde(default = "star")]
    pub day_of_month: String,
    #[serde(default = "star")]
    pub month_of_year: String,
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default = "zero")]
    pub second: String,
}

fn star() -> String {
    "*".into()
}
fn utc() -> String {
    "UTC".into()
}
fn zero() -> String {
    "0".into()
}

/// The seed's MessageSet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageSetRecord {
    pub id: u64,
    pub short_name: String,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default)]
    pub next_set: Option<u64>,
    pub default_schedule: u64,
    pub content_type: String,
    pub created_at: String,
    pub updated_at: String,
}

/// The seed's Message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MessageRecord {
    pub id: u64,
    pub messageset: u64,
    pub sequence_number: u32,
    pub lang: String,
    #[serde(default)]
    pub text_content: Option<String>,
    #[serde(default)]
    pub binary_content: Option<u64>,
    pub created_at: String,
    pub updated_at: String,
}

/// The seed's Subscription. `applied` (stored as `_applied`, not shown) is the stream
/// position of the last event that sent from it, so a re-applied event sends nothing twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SubscriptionRecord {
    pub id: Uuid,
    pub identity: String,
    #[serde(default = "one")]
    pub version: i64,
    pub messageset: u64,
    #[serde(default = "one_u32")]
    pub next_sequence_number: u32,
    pub lang: String,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default)]
    pub completed: bool,
    pub schedule: u64,
    #[serde(default)]
    pub process_status: i8,
    #[serde(default)]
    pub metadata: serde_json::Value,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default)]
    pub created_by: Option<String>,
    #[serde(default)]
    pub updated_by: Option<String>,
    #[serde(default, rename = "_applied", skip_serializing_if = "is_zero")]
    pub applied: u64,
    /// The sequence number that event sent (stored as `_sent`, not shown): what an
    /// interrupted application of it sends again.
    #[serde(default, rename = "_sent", skip_serializing_if = "is_zero_u32")]
    pub sent: u32,
}

fn one() -> i64 {
    1
}
fn one_u32() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn is_zero(n: &u64) -> bool {
    *n == 0
}
fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

/// Process status values (the seed's).
pub const STATUS_ERROR: i8 = -1;
pub const STATUS_READY: i8 = 0;
pub const STATUS_COMPLETED: i8 = 2;

/// A field's allowed values as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Field(u64);

impl Field {
    fn parse(name: &str, v: &str, min: u32, max: u32) -> Result<Self, (String, String)> {
        let bad = || {
            (
                name.to_owned(),
                format!("must be * or a comma-separated list of numbers from {min} to {max}"),
            )
        };
        let v = v.trim();
        if v == "*" {
            return Ok(Field((min..=max).fold(0, |b, i| b | 1 << i)));
        }
        let mut bits = 0u64;
        for part in v.split(',') {
            let n: u32 = part.trim().parse().map_err(|_| bad())?;
            if n < min || n > max {
                return Err(bad());
            }
            bits |= 1 << n;
        }
        if bits == 0 {
            return Err(bad());
        }
        Ok(Field(bits))
    }

    fn has(self, n: u32) -> bool {
        n < 64 && self.0 & (1 << n) != 0
    }

    fn values(self) -> impl Iterator<Item = u32> {
        (0..64).filter(move |i| self.0 & (1 << i) != 0)
    }
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Cron {
    second: Field,
    minute: Field,
    hour: Field,
    day_of_week: Field,
    day_of_month: Field,
    month_of_year: Field,
    zone: TimeZone,
}

/// The longest span a daylight-saving gap can move a wall-clock time forward.
const MAX_GAP: jiff::SignedDuration = jiff::SignedDuration::from_hours(3);

impl Cron {
    /// Checks and parses a schedule: `Err((field, message))` names what is wrong.
    pub fn parse(s: &ScheduleRecord) -> Result<Self, (String, String)> {
        let zone =
            crate::local::zone(&s.timezone).map_err(|e| ("timezone".to_owned(), e.to_string()))?;
        Ok(Self {
            second: Field::parse("second", &s.second, 0, 59)?,
            minute: Field::parse("minute", &s.minute, 0, 59)?,
            hour: Field::parse("hour", &s.hour, 0, 23)?,
            day_of_week: Field::parse("day_of_week", &s.day_of_week, 1, 7)?,
            day_of_month: Field::parse("day_of_month", &s.day_of_month, 1, 31)?,
            month_of_year: Field::parse("month_of_year", &s.month_of_year, 1, 12)?,
            zone,
        })
    }

    fn day_matches(&self, d: Date) -> bool {
        self.month_of_year.has(d.month() as u32)
            && self.day_of_month.has(d.day() as u32)
            && self
                .day_of_week
                .has(d.weekday().to_monday_one_offset() as u32)
    }

    /// The instants in `(after, until]` at which the schedule fires, in order.
    pub fn fires(&self, after: OffsetDateTime, until: OffsetDateTime) -> Vec<OffsetDateTime> {
        let (Some(a), Some(u)) = (to_jiff(after), to_jiff(until)) else {
            return Vec::new();
        };
        if u <= a {
            return Vec::new();
        }
        // Every wall-clock time that may land in the span: a gap moves times forward, a
        // repeated hour makes the span's wall clock run backwards.
        let wall_a = a.to_zoned_datetime(self.zone.clone()).datetime();
        let wall_u = u.to_zoned_datetime(self.zone.clone()).datetime();
        let (lo, hi) = (wall_a.min(wall_u), wall_a.max(wall_u));
        let Ok(lo) = lo.checked_sub(MAX_GAP) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut day = lo.date();
        while day <= hi.date() {
            if self.day_matches(day) {
                for h in self.hour.values() {
                    let hour_start = day.to_datetime(civil_time(h, 0, 0));
                    let hour_end = day.to_datetime(civil_time(h, 59, 59));
                    if hour_end < lo || hour_start > hi {
                        continue;
                    }
                    for m in self.minute.values() {
                        for s in self.second.values() {
                            let wall: DateTime = day.to_datetime(civil_time(h, m, s));
                            if wall < lo || wall > hi {
                                continue;
                            }
                            let Ok(z) = wall.to_zoned_datetime(self.zone.clone()) else {
                                continue;
                            };
                            let t = z.timestamp();
                            if t > a
                                && t <= u
                                && let Some(t) = from_jiff(t)
                            {
                                out.push(t);
                            }
                        }
                    }
                }
            }
            let Ok(next) = day.tomorrow() else { break };
            day = next;
        }
        out.sort();
        out.dedup();
        out
    }
}

fn civil_time(h: u32, m: u32, s: u32) -> jiff::civil::Time {
    jiff::civil::Time::new(h as i8, m as i8, s as i8, 0).unwrap_or(jiff::civil::Time::midnight())
}

fn to_jiff(t: OffsetDateTime) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_nanosecond(t.unix_timestamp_nanos()).ok()
}

fn from_jiff(t: jiff::Timestamp) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(t.as_nanosecond()).ok()
}

/// The scheduler's clock: the system's, or a test's.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(OffsetDateTime::now_utc)
}

/// Where the scheduler reads the schedules (the store's read model).
#[async_trait::async_trait]
pub trait ScheduleSource: Send + Sync {
    async fn stage_schedules(&self) -> Result<Vec<ScheduleRecord>, String>;
}

#[derive(Clone)]
pub struct SchedulerSettings {
    pub clock: Clock,
    /// The longest wait between two looks at the clock (the scheduler also wakes just after
    /// each whole second, when schedules fire).
    pub every: Duration,
    /// Due times missed while no scheduler ran are caught up to this far back.
    pub catch_up: Duration,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            clock: system_clock(),
            every: Duration::from_millis(500),
            catch_up: Duration::from_secs(24 * 3600),
        }
    }
}

pub const STAGE_BUCKET: &str = "MSGXC_STAGE";
const CHECKED: &str = "checked";

/// The stage scheduler: every `every`, appends a `stage_tick` for each schedule's due times
/// since the last look (kept in KV `MSGXC_STAGE`, so a restart catches up). Each tick's
/// message id names schedule and due time: two schedulers (one per dispatcher) store it once.
pub struct Scheduler {
    log: EventLog,
    source: Arc<dyn ScheduleSource>,
    kv: kv::Store,
    settings: SchedulerSettings,
}

impl Scheduler {
    pub async fn new(
        log: EventLog,
        source: Arc<dyn ScheduleSource>,
        settings: SchedulerSettings,
        replicas: usize,
    ) -> Result<Self, LogError> {
        let js = log.jetstream().clone();
        let kv = match js.get_key_value(STAGE_BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: STAGE_BUCKET.into(),
                    description: "msgxc: how far the stage scheduler has looked".into(),
                    history: 1,
                    num_replicas: replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|e| LogError::Unavailable(format!("creating {STAGE_BUCKET}: {e}")))?,
        };
        Ok(Self {
            log,
            source,
            kv,
            settings,
        })
    }

    async fn checked(&self) -> Option<OffsetDateTime> {
        let v = self.kv.get(CHECKED).await.ok()??;
        let ns: i128 = std::str::from_utf8(&v).ok()?.parse().ok()?;
        OffsetDateTime::from_unix_timestamp_nanos(ns).ok()
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        let now = (self.settings.clock)();
        let earliest = now - self.settings.catch_up;
        let mut checked = self.checked().await.unwrap_or(now).max(earliest);
        let mut kept = std::time::Instant::now();
        loop {
            // Schedules fire on whole seconds: wake just after the next one (or after
            // `every`, if sooner).
            let subsec = (self.settings.clock)().nanosecond();
            let to_next = Duration::from_nanos(u64::from(1_000_000_000 - subsec.min(999_999_999)))
                + Duration::from_millis(2);
            tokio::time::sleep(to_next.min(self.settings.every)).await;
            let now = (self.settings.clock)();
            match self.tick(checked, now).await {
                Ok(appended) => {
                    checked = now;
                    // Kept after every tick, and every few seconds otherwise: a restart then
                    // looks back from there (ticks appended twice are stored once).
                    if appended > 0 || kept.elapsed() >= Duration::from_secs(5) {
                        let ns = now.unix_timestamp_nanos().to_string();
                        match self.kv.put(CHECKED, ns.into()).await {
                            Ok(_) => kept = std::time::Instant::now(),
                            Err(e) => {
                                tracing::debug!(error = %e, "stage scheduler position not kept")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "stage scheduler: will look again"),
            }
        }
    }

    /// Appends the ticks of every schedule due in `(after, until]`; how many.
    async fn tick(&self, after: OffsetDateTime, until: OffsetDateTime) -> Result<usize, String> {
        if until <= after {
            return Ok(0);
        }
        let mut appended = 0;
        for s in self.source.stage_schedules().await? {
            let Ok(cron) = Cron::parse(&s) else {
                continue; // checked when saved; an older record may not parse
            };
            for due in cron.fires(after, until) {
                let id = s.id.to_string();
                let mut env = Envelope::new(
                    crate::dispatch::worker_actor(),
                    Event::StageTick(StageTick {
                        schedule: id.clone(),
                        due,
                    }),
                );
                env.occurred_at = due;
                let msg_id = format!("stage-tick.{id}.{}", due.unix_timestamp());
                self.log
                    .append(&env, Some(&msg_id))
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::debug!(schedule = %id, %due, "stage schedule due");
                appended += 1;
            }
        }
        Ok(appended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn schedule(fields: &[(&str, &str)]) -> ScheduleRecord {
        let mut v = serde_json::json!({"id": 1});
        for (k, val) in fields {
            v[*k] = serde_json::Value::String((*val).into());
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn fields_are_checked_against_the_seeds_ranges() {
        for (field, bad) in [
            ("minute", "60"),
            ("hour", "24"),
            ("day_of_week", "0"),
            ("day_of_week", "8"),
            ("day_of_month", "0"),
            ("month_of_year", "13"),
            ("minute", "1-5"),
            ("hour", ""),
            ("second", "*/5"),
        ] {
            let e = Cron::parse(&schedule(&[(field, bad)])).unwrap_err();
            assert_eq!(e.0, field, "{field}={bad}");
        }
        let e = Cron::parse(&schedule(&[("timezone", "Nowhere/Else")])).unwrap_err();
        assert_eq!(e.0, "timezone");
        assert!(Cron::parse(&schedule(&[("minute", "0,30"), ("day_of_week", "1,7")])).is_ok());
    }

    #[test]
    fn day_of_week_is_the_seeds_one_for_monday_to_seven_for_sunday() {
        // 2027-01-04 is a Monday, 2027-01-10 a Sunday.
        let monday = Cron::parse(&schedule(&[
            ("minute", "0"),
            ("hour", "9"),
            ("day_of_week", "1"),
        ]))
        .unwrap();
        assert_eq!(
            monday.fires(
                datetime!(2027-01-03 00:00 UTC),
                datetime!(2027-01-12 00:00 UTC)
            ),
            [
                datetime!(2027-01-04 09:00 UTC),
                datetime!(2027-01-11 09:00 UTC)
            ]
        );
        let sunday = Cron::parse(&schedule(&[
            ("minute", "0"),
            ("hour", "9"),
            ("day_of_week", "7"),
        ]))
        .unwrap();
        assert_eq!(
            sunday.fires(
                datetime!(2027-01-03 00:00 UTC),
                datetime!(2027-01-12 00:00 UTC)
            ),
            [
                datetime!(2027-01-03 09:00 UTC),
                datetime!(2027-01-10 09:00 UTC)
            ]
        );
        // Day of month and day of week both: Mondays that are the 1st-7th (the first Monday).
        let first_monday = Cron::parse(&schedule(&[
            ("minute", "0"),
            ("hour", "9"),
            ("day_of_week", "1"),
            ("day_of_month", "1,2,3,4,5,6,7"),
        ]))
        .unwrap();
        assert_eq!(
            first_monday.fires(
                datetime!(2027-01-01 00:00 UTC),
                datetime!(2027-03-01 00:00 UTC)
            ),
            [
                datetime!(2027-01-04 09:00 UTC),
                datetime!(2027-02-01 09:00 UTC)
            ]
        );
    }

    #[test]
    fn spans_are_half_open_and_zones_apply() {
        let c = Cron::parse(&schedule(&[
            ("minute", "0"),
            ("hour", "9"),
            ("timezone", "Europe/Berlin"),
        ]))
        .unwrap();
        // 09:00 in Berlin in January is 08:00 UTC; a span ending there includes it, one
        // starting there does not.
        let at = datetime!(2027-01-15 08:00 UTC);
        assert_eq!(c.fires(at - time::Duration::seconds(1), at), [at]);
        assert!(c.fires(at, at + time::Duration::seconds(1)).is_empty());
        // Seconds: every 15 s.
        let q = Cron::parse(&schedule(&[("second", "0,15,30,45")])).unwrap();
        let t0 = datetime!(2027-01-15 08:00 UTC);
        assert_eq!(q.fires(t0, t0 + time::Duration::minutes(1)).len(), 4);
    }

    #[test]
    fn daylight_saving_changes_fire_each_wall_clock_time_once() {
        let ny = |hour: &str, minute: &str| {
            Cron::parse(&schedule(&[
                ("minute", minute),
                ("hour", hour),
                ("timezone", "America/New_York"),
            ]))
            .unwrap()
        };
        // Spring forward, 14 March 2027: 02:30 does not exist; it fires at 03:30 EDT (07:30
        // UTC), once; the day before and after at 02:30 local as usual.
        let skipped = ny("2", "30");
        assert_eq!(
            skipped.fires(
                datetime!(2027-03-13 00:00 UTC),
                datetime!(2027-03-16 00:00 UTC)
            ),
            [
                datetime!(2027-03-13 07:30 UTC),
                datetime!(2027-03-14 07:30 UTC),
                datetime!(2027-03-15 06:30 UTC),
            ]
        );
        // Fired second by second through the gap, still once.
        let mut t = datetime!(2027-03-14 06:00 UTC);
        let mut fired = Vec::new();
        while t < datetime!(2027-03-14 09:00 UTC) {
            fired.extend(skipped.fires(t, t + time::Duration::seconds(1)));
            t += time::Duration::seconds(1);
        }
        assert_eq!(fired, [datetime!(2027-03-14 07:30 UTC)]);
        // Fall back, 7 November 2027: 01:30 comes twice (EDT, then EST); it fires at the first.
        let repeated = ny("1", "30");
        assert_eq!(
            repeated.fires(
                datetime!(2027-11-07 00:00 UTC),
                datetime!(2027-11-08 00:00 UTC)
            ),
            [datetime!(2027-11-07 05:30 UTC)]
        );
        let mut t = datetime!(2027-11-07 04:00 UTC);
        let mut fired = Vec::new();
        while t < datetime!(2027-11-07 08:00 UTC) {
            fired.extend(repeated.fires(t, t + time::Duration::seconds(7)));
            t += time::Duration::seconds(7);
        }
        assert_eq!(fired, [datetime!(2027-11-07 05:30 UTC)]);
        // An hourly schedule through the fall-back night fires once per wall-clock hour (the
        // repeated 01:00 once), and through the spring-forward night skips none.
        let hourly = ny("*", "0");
        assert_eq!(
            hourly
                .fires(
                    datetime!(2027-11-07 04:30 UTC),
                    datetime!(2027-11-07 07:30 UTC)
                )
                .len(),
            2,
            "01:00 EDT and 02:00 EST; 01:00 EST is the repeat"
        );
    }
}
