//! Local time: a user's IANA time zone and their quiet hours.
//!
//! Zones come from the tz database compiled into the binary (`jiff`'s bundled copy), so every
//! machine applies the same rules. A wall-clock time that does not exist (inside the hour
//! skipped when clocks spring forward) is read with the offset before the change, so it lands
//! as far past the gap as it was into it (02:30 becomes 03:30); a time that occurs twice (the
//! hour repeated when clocks fall back) means the first of them. This is jiff's "compatible"
//! rule, the one RFC 5545 and most calendars use.

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    #[error("{0:?} is not an IANA time zone (e.g. Europe/Berlin, America/New_York, UTC)")]
    UnknownZone(String),
    #[error("{0:?} is not a time of day (HH:MM or HH:MM:SS, 00:00 to 23:59:59)")]
    BadTime(String),
    #[error("quiet hours must not start and end at the same time")]
    EmptyWindow,
    #[error("{0:?} is not a local date and time (YYYY-MM-DDTHH:MM, no offset)")]
    BadWallClock(String),
}

/// The zone named `name`, as users give it in their preferences.
pub fn zone(name: &str) -> Result<TimeZone, LocalError> {
    TimeZone::get(name).map_err(|_| LocalError::UnknownZone(name.to_owned()))
}

/// The database's spelling of zone `name` (`europe/berlin` is `Europe/Berlin`): what
/// preferences store, so zone lists compare by name.
pub fn canonical(name: &str) -> Result<String, LocalError> {
    let tz = zone(name)?;
    Ok(tz.iana_name().unwrap_or(name).to_owned())
}

/// A wall-clock time without a zone, `YYYY-MM-DDTHH:MM` or `YYYY-MM-DDTHH:MM:SS`.
pub fn parse_wall_clock(s: &str) -> Result<jiff::civil::DateTime, LocalError> {
    let bad = || LocalError::BadWallClock(s.to_owned());
    let shape_ok = (s.len() == 16 || s.len() == 19)
        && s.as_bytes().get(10) == Some(&b'T')
        && s.bytes().all(|b| b.is_ascii_digit() || b"-T:".contains(&b));
    if !shape_ok {
        return Err(bad());
    }
    s.parse::<jiff::civil::DateTime>().map_err(|_| bad())
}

/// When the wall-clock time `at` comes in each zone of the database: one entry per distinct
/// instant with the zones (by name, aliases included) that reach it then, soonest first.
/// `UTC` is among them (users without a zone are in it).
pub fn waves(at: jiff::civil::DateTime) -> Vec<(OffsetDateTime, Vec<String>)> {
    let mut by_instant: std::collections::BTreeMap<OffsetDateTime, Vec<String>> =
        Default::default();
    let mut names: Vec<String> = jiff::tz::db()
        .available()
        .map(|n| n.as_str().to_owned())
        .collect();
    if !names.iter().any(|n| n == "UTC") {
        names.push("UTC".into());
    }
    for name in names {
        let Ok(tz) = zone(&name) else { continue };
        let Some(instant) = at
            .to_zoned_datetime(tz)
            .ok()
            .and_then(|z| from_jiff(z.timestamp()))
        else {
            continue;
        };
        by_instant.entry(instant).or_default().push(name);
    }
    by_instant.into_iter().collect()
}

/// `{"from": "22:00", "to": "07:00"}` in the user's zone: pushes that are not urgent wait
/// from `from` until `to` (a window that passes midnight when `from` is later than `to`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QuietHours {
    /// Start, `HH:MM` (or `HH:MM:SS`), inclusive.
    pub from: String,
    /// End, `HH:MM` (or `HH:MM:SS`), exclusive: sends resume at this time.
    pub to: String,
}

/// Seconds since midnight of `HH:MM` or `HH:MM:SS`.
fn time_of_day(s: &str) -> Result<u32, LocalError> {
    let bad = || LocalError::BadTime(s.to_owned());
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return Err(bad());
    }
    let mut n = [0u32; 3];
    for (i, p) in parts.iter().enumerate() {
        n[i] = p.parse().map_err(|_| bad())?;
    }
    if n[0] > 23 || n[1] > 59 || n[2] > 59 {
        return Err(bad());
    }
    Ok(n[0] * 3600 + n[1] * 60 + n[2])
}

fn civil_time(secs: u32) -> Time {
    // In range by construction (time_of_day checks it).
    Time::new(
        (secs / 3600) as i8,
        (secs / 60 % 60) as i8,
        (secs % 60) as i8,
        0,
    )
    .unwrap_or(Time::midnight())
}

fn to_jiff(t: OffsetDateTime) -> jiff::Timestamp {
    jiff::Timestamp::from_nanosecond(t.unix_timestamp_nanos())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn from_jiff(t: jiff::Timestamp) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(t.as_nanosecond()).ok()
}

/// The instant `date` at `secs` after midnight is in `tz` (see the module note on gaps and
/// repeated hours).
fn instant(tz: &TimeZone, date: Date, secs: u32) -> Option<OffsetDateTime> {
    let zoned = date
        .to_datetime(civil_time(secs))
        .to_zoned_datetime(tz.clone())
        .ok()?;
    from_jiff(zoned.timestamp())
}

impl QuietHours {
    /// Checks both times and that the window is not empty.
    pub fn check(&self) -> Result<(), LocalError> {
        if time_of_day(&self.from)? == time_of_day(&self.to)? {
            return Err(LocalError::EmptyWindow);
        }
        Ok(())
    }

    /// When `now` falls inside the window (in `tz`), the instant the window ends; `None`
    /// outside it (or when the window is malformed: preferences are checked when set).
    pub fn ends_after(&self, tz: &TimeZone, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let (from, to) = (time_of_day(&self.from).ok()?, time_of_day(&self.to).ok()?);
        if from == to {
            return None;
        }
        let local = to_jiff(now).to_zoned_datetime(tz.clone());
        let t = local.time();
        let secs = t.hour() as u32 * 3600 + t.minute() as u32 * 60 + t.second() as u32;
        let (inside, end_tomorrow) = if from < to {
            (from <= secs && secs < to, false)
        } else {
            (secs >= from || secs < to, secs >= from)
        };
        if !inside {
            return None;
        }
        let date = if end_tomorrow {
            local.date().tomorrow().ok()?
        } else {
            local.date()
        };
        instant(tz, date, to).filter(|end| *end > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn window(from: &str, to: &str) -> QuietHours {
        QuietHours {
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn times_of_day_and_zones_are_checked() {
        assert_eq!(time_of_day("07:30"), Ok(27_000));
        assert_eq!(time_of_day("23:59:59"), Ok(86_399));
        for bad in ["7:30", "24:00", "12:60", "12", "12:00:00:00", "ab:cd", ""] {
            assert!(time_of_day(bad).is_err(), "{bad}");
        }
        assert_eq!(
            window("22:00", "22:00").check(),
            Err(LocalError::EmptyWindow)
        );
        assert!(window("22:00", "07:00").check().is_ok());
        assert!(zone("Europe/Berlin").is_ok());
        assert!(zone("UTC").is_ok());
        assert!(zone("Mars/Olympus").is_err());
    }

    #[test]
    fn a_wall_clock_time_comes_once_per_zone_grouped_by_instant() {
        assert_eq!(canonical("europe/berlin").unwrap(), "Europe/Berlin");
        for bad in [
            "2027-01-15 09:00",
            "2027-01-15T09:00Z",
            "2027-01-15T9:00",
            "2027-02-30T09:00",
        ] {
            assert!(parse_wall_clock(bad).is_err(), "{bad}");
        }
        let at = parse_wall_clock("2027-01-15T09:00").unwrap();
        let waves = waves(at);
        let wave_of = |zone: &str| {
            waves
                .iter()
                .find(|(_, zones)| zones.iter().any(|z| z == zone))
                .map(|(at, _)| *at)
        };
        assert_eq!(wave_of("UTC"), Some(datetime!(2027-01-15 09:00 UTC)));
        assert_eq!(
            wave_of("Europe/Berlin"),
            Some(datetime!(2027-01-15 08:00 UTC))
        );
        assert_eq!(wave_of("Europe/Paris"), wave_of("Europe/Berlin"));
        assert_eq!(
            wave_of("America/New_York"),
            Some(datetime!(2027-01-15 14:00 UTC))
        );
        assert_eq!(
            wave_of("Asia/Kolkata"),
            Some(datetime!(2027-01-15 03:30 UTC))
        );
        // Soonest first, each zone once, and far fewer waves than zones.
        assert!(waves.windows(2).all(|w| w[0].0 < w[1].0));
        let zones: usize = waves.iter().map(|(_, z)| z.len()).sum();
        assert!(
            zones > 300 && waves.len() < 60,
            "{} zones in {} waves",
            zones,
            waves.len()
        );
    }

    #[test]
    fn a_window_over_midnight_ends_the_next_morning_in_the_users_zone() {
        let berlin = zone("Europe/Berlin").unwrap();
        let w = window("22:00", "07:00");
        // 23:30 in Berlin (CET, UTC+1) on 15 January: quiet until 07:00 the next day.
        assert_eq!(
            w.ends_after(&berlin, datetime!(2027-01-15 22:30 UTC)),
            Some(datetime!(2027-01-16 06:00 UTC))
        );
        // 05:00 local: quiet until 07:00 the same day.
        assert_eq!(
            w.ends_after(&berlin, datetime!(2027-01-16 04:00 UTC)),
            Some(datetime!(2027-01-16 06:00 UTC))
        );
        // 07:00 local exactly: the window is over; noon: outside.
        assert_eq!(w.ends_after(&berlin, datetime!(2027-01-16 06:00 UTC)), None);
        assert_eq!(w.ends_after(&berlin, datetime!(2027-01-16 11:00 UTC)), None);
        // A daytime window.
        let lunch = window("12:00", "13:00");
        assert_eq!(
            lunch.ends_after(&TimeZone::UTC, datetime!(2027-01-16 12:15 UTC)),
            Some(datetime!(2027-01-16 13:00 UTC))
        );
        assert_eq!(
            lunch.ends_after(&TimeZone::UTC, datetime!(2027-01-16 13:00 UTC)),
            None
        );
    }

    #[test]
    fn daylight_saving_changes_move_the_end_in_utc_not_on_the_wall() {
        let ny = zone("America/New_York").unwrap();
        let w = window("22:00", "07:00");
        // Spring forward, 14 March 2027 (02:00 EST -> 03:00 EDT): at 23:00 EST the night
        // before, quiet until 07:00 EDT = 11:00 UTC (one hour less of night).
        assert_eq!(
            w.ends_after(&ny, datetime!(2027-03-14 04:00 UTC)),
            Some(datetime!(2027-03-14 11:00 UTC))
        );
        // Fall back, 7 November 2027 (02:00 EDT -> 01:00 EST): quiet until 07:00 EST.
        assert_eq!(
            w.ends_after(&ny, datetime!(2027-11-07 03:00 UTC)),
            Some(datetime!(2027-11-07 12:00 UTC))
        );
        // A window ending inside the skipped hour (02:30) ends at 03:30 EDT, 07:30 UTC; one
        // ending in the repeated hour, at its first occurrence (EDT).
        let gap = window("01:00", "02:30");
        assert_eq!(
            gap.ends_after(&ny, datetime!(2027-03-14 06:30 UTC)),
            Some(datetime!(2027-03-14 07:30 UTC))
        );
        let fold = window("00:00", "01:30");
        assert_eq!(
            fold.ends_after(&ny, datetime!(2027-11-07 05:00 UTC)),
            Some(datetime!(2027-11-07 05:30 UTC))
        );
    }
}
