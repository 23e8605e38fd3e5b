//! Rotation schedules: when a secret's next rotation is due. Owns the `schedule` table of
//! a secret (cadence, cron, expiry margin, jitter, windows, freezes), its validation and
//! the due-time calculation. Pure: no I/O, no clock reads (`now` is an argument), no
//! randomness; it never touches the journal or a provider.
//!
//! Local times (`at`, cron, windows) are wall-clock times in the explicit `time_zone`.
//! A local time skipped by a DST gap maps to the first instant after the gap; a local time
//! that occurs twice (fold) maps to its first occurrence, so it fires once.

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan};
use serde::Deserialize;

use crate::text::quoted;

const DAY_MS: i64 = 86_400_000;
/// How far `next_allowed` searches before giving up.
pub const SEARCH_HORIZON_MS: i64 = 2 * 366 * DAY_MS;
/// How far a cron search runs: "Feb 29 and a Monday" recurs only every 28 years.
const CRON_SEARCH_DAYS: i32 = 29 * 366;
/// Most jumps `next_allowed` makes; each passes a freeze or reaches a window opening.
const JUMPS_MAX: usize = 10_000;
/// Most days for `every_days` and `before_expiry_days`.
pub const DAYS_MAX: u32 = 3650;
/// Most jitter: a week.
pub const JITTER_MINUTES_MAX: u32 = 7 * 24 * 60;
/// Most entries in `windows` and in `freezes`.
pub const LIST_MAX: u64 = 64;

/// The `[secrets.<name>.schedule]` table as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Rotate this many days after the last rotation (at `at` if given).
    pub every_days: Option<u32>,
    /// Local time of day "HH:MM" for `every_days`.
    pub at: Option<String>,
    /// IANA name; required by `at`, `cron` and `windows` (no implicit UTC).
    pub time_zone: Option<String>,
    /// Five fields: minute hour day-of-month month day-of-week.
    pub cron: Option<String>,
    /// Rotate this many days (of 24 h) before the current version's expiry.
    pub before_expiry_days: Option<u32>,
    /// Spread: a fixed offset in `[0, jitter_minutes)` derived from the secret's name.
    #[serde(default)]
    pub jitter_minutes: u32,
    /// Allowed local times; empty means always.
    #[serde(default)]
    pub windows: Vec<WindowConfig>,
    /// Periods without rotations.
    #[serde(default)]
    pub freezes: Vec<FreezeConfig>,
}

/// One allowed window: `days = ["Mon", ...]`, `hours = "02:00-05:00"`. A range that wraps
/// midnight ("22:00-02:00") belongs to the day it starts on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    pub days: Vec<String>,
    pub hours: String,
}

/// One freeze `[from, until)`, as RFC 3339 instants with an offset.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FreezeConfig {
    pub from: String,
    pub until: String,
}

/// A schedule table that cannot work, with what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "unknown time zone {}: use an IANA name such as \"Europe/Paris\", \"America/New_York\" or \"UTC\"",
        quoted(.name)
    )]
    UnknownTimeZone { name: String },
    #[error(
        "`{what}` is a local time, so `time_zone` is required: add time_zone = \"Europe/Paris\" (any IANA name, or \"UTC\"); there is no implicit UTC"
    )]
    MissingTimeZone { what: &'static str },
    #[error(
        "`at` = {} is not a time: write HH:MM on a 24-hour clock, e.g. \"03:00\"",
        quoted(.value)
    )]
    BadTime { value: String },
    #[error("{what} = 0 is not allowed: it counts days, use 1 or more")]
    ZeroDays { what: &'static str },
    #[error("{what} is {value}, more than the limit of {max}")]
    TooLarge {
        what: &'static str,
        value: u64,
        max: u64,
    },
    #[error("both `every_days` and `cron` are set: keep one of them")]
    BothCadences,
    #[error("no cadence: set `every_days` (optionally with `at = \"HH:MM\"`) or `cron`")]
    NoCadence,
    #[error("`at` is only used with `every_days`; a cron expression carries its own time")]
    AtWithoutEveryDays,
    #[error(
        "`cron` = {} has {found} fields, it needs 5: minute hour day-of-month month day-of-week, e.g. \"0 3 * * MON\"",
        quoted(.cron)
    )]
    CronFieldCount { cron: String, found: usize },
    #[error(
        "`cron` field {index} ({name}) {}: {reason}; a field is *, a value, a-b, a,b, */n or a-b/n",
        quoted(.value)
    )]
    CronField {
        index: usize,
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "`cron` = {} never fires: no month has that day; check day-of-month and month",
        quoted(.cron)
    )]
    CronNeverFires { cron: String },
    #[error(
        "windows[{index}] has no days, so it never opens: list days such as [\"Mon\", \"Tue\"]"
    )]
    WindowWithoutDays { index: usize },
    #[error(
        "windows[{index}]: unknown day {}: use Mon, Tue, Wed, Thu, Fri, Sat or Sun",
        quoted(.day)
    )]
    UnknownDay { index: usize, day: String },
    #[error(
        "windows[{index}].hours = {} is not a range: write \"HH:MM-HH:MM\", e.g. \"02:00-05:00\" (may wrap midnight: \"22:00-02:00\")",
        quoted(.value)
    )]
    BadHours { index: usize, value: String },
    #[error(
        "windows[{index}].hours = {} is empty: the end must differ from the start",
        quoted(.value)
    )]
    EmptyWindow { index: usize, value: String },
    #[error(
        "freezes[{index}].{field} = {} is not an instant: write RFC 3339 with Z or an offset, e.g. \"2026-12-20T00:00:00Z\"",
        quoted(.value)
    )]
    BadInstant {
        index: usize,
        field: &'static str,
        value: String,
    },
    #[error(
        "freezes[{index}]: `until` ({until}) must be after `from` ({from}), or the freeze is empty"
    )]
    EmptyFreeze {
        index: usize,
        from: String,
        until: String,
    },
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cadence: Cadence,
    before_expiry_days: Option<u32>,
    jitter_minutes: u32,
    /// UTC when nothing local is configured (then it is never consulted).
    tz: TimeZone,
    windows: Vec<Window>,
    freezes: Vec<Freeze>,
}

#[derive(Debug, Clone)]
enum Cadence {
    /// Without `at`: exactly `days` × 24 h after the anchor.
    EveryDays {
        days: u32,
        at: Option<Time>,
    },
    Cron(Cron),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    /// Bit `i` is the weekday `i` days after Monday.
    days: u8,
    start: Time,
    end: Time,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Freeze {
    from_ms: i64,
    until_ms: i64,
}

/// What `next_due` needs to know about one secret.
#[derive(Debug, Clone, Copy)]
pub struct DueInput<'a> {
    /// Seeds the jitter.
    pub secret: &'a str,
    pub now_ms: i64,
    /// When the last rotation completed, or when the schedule was adopted if never
    /// rotated: a new schedule never rotates immediately.
    pub anchor_ms: i64,
    /// The current version's expiry, if known.
    pub expiry_ms: Option<i64>,
}

/// When the next rotation should start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// May be in the past: the caller rotates now.
    pub at_ms: i64,
    pub reason: DueReason,
    /// Something an operator must hear about; the rotation still happens at `at_ms`
    /// except for `NoAllowedTime`.
    pub alert: Option<Alert>,
}

/// Which rule made the rotation due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DueReason {
    Cadence,
    BeforeExpiry,
}

/// The rotation will not happen before the current version expires, or cannot happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alert {
    /// The version expires inside a freeze, before the rotation may run.
    ExpiresInsideFreeze {
        expiry_ms: i64,
        freeze_until_ms: i64,
    },
    /// The version expires outside every window, before the next window opens.
    ExpiresBeforeWindow { expiry_ms: i64 },
    /// The version expires at or before the due time although that instant is allowed:
    /// it has already expired, or jitter pushes past it.
    ExpiresBeforeDue { expiry_ms: i64 },
    /// No allowed instant before `searched_until_ms` (freezes cover the whole search);
    /// do not rotate, re-evaluate at `at_ms` (= `searched_until_ms`).
    NoAllowedTime { searched_until_ms: i64 },
}

impl ScheduleConfig {
    /// Checks everything and resolves the time zone.
    ///
    /// # Errors
    /// A [`ScheduleError`] naming the first field that cannot work and how to fix it.
    pub fn validate(&self) -> Result<Schedule, ScheduleError> {
        let tz = match &self.time_zone {
            Some(name) => Some(
                TimeZone::get(name)
                    .map_err(|_| ScheduleError::UnknownTimeZone { name: name.clone() })?,
            ),
            None => None,
        };
        let need_tz = |what| match tz {
            Some(_) => Ok(()),
            None => Err(ScheduleError::MissingTimeZone { what }),
        };
        let cadence = match (self.every_days, &self.at, &self.cron) {
            (Some(_), _, Some(_)) => return Err(ScheduleError::BothCadences),
            (None, Some(_), _) => return Err(ScheduleError::AtWithoutEveryDays),
            (None, None, None) => return Err(ScheduleError::NoCadence),
            (None, None, Some(cron)) => {
                let cron = Cron::parse(cron)?;
                need_tz("cron")?;
                Cadence::Cron(cron)
            }
            (Some(days), at, None) => {
                check_days("`every_days`", days)?;
                let bad = |value: &String| ScheduleError::BadTime {
                    value: value.clone(),
                };
                let at = (at.as_ref().map(|t| parse_hhmm(t).ok_or_else(|| bad(t)))).transpose()?;
                if at.is_some() {
                    need_tz("at")?;
                }
                Cadence::EveryDays { days, at }
            }
        };
        if let Some(days) = self.before_expiry_days {
            check_days("`before_expiry_days`", days)?;
        }
        check_max(
            "`jitter_minutes`",
            self.jitter_minutes.into(),
            JITTER_MINUTES_MAX.into(),
        )?;
        check_max("the number of windows", self.windows.len() as u64, LIST_MAX)?;
        check_max("the number of freezes", self.freezes.len() as u64, LIST_MAX)?;
        let windows = (self.windows.iter().enumerate())
            .map(|(index, w)| Window::parse(index, w))
            .collect::<Result<Vec<_>, _>>()?;
        if !windows.is_empty() {
            need_tz("windows")?;
        }
        let freezes = (self.freezes.iter().enumerate())
            .map(|(index, f)| Freeze::parse(index, f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Schedule {
            cadence,
            before_expiry_days: self.before_expiry_days,
            jitter_minutes: self.jitter_minutes,
            tz: tz.unwrap_or(TimeZone::UTC),
            windows,
            freezes,
        })
    }
}

fn check_days(what: &'static str, days: u32) -> Result<(), ScheduleError> {
    if days == 0 {
        return Err(ScheduleError::ZeroDays { what });
    }
    check_max(what, days.into(), DAYS_MAX.into())
}

fn check_max(what: &'static str, value: u64, max: u64) -> Result<(), ScheduleError> {
    if value > max {
        return Err(ScheduleError::TooLarge { what, value, max });
    }
    Ok(())
}

/// "HH:MM" or "H:MM" on a 24-hour clock.
fn parse_hhmm(text: &str) -> Option<Time> {
    let (h, m) = text.trim().split_once(':')?;
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !(1..=2).contains(&h.len()) || m.len() != 2 || !digits(h) || !digits(m) {
        return None;
    }
    Time::new(h.parse().ok()?, m.parse().ok()?, 0, 0).ok()
}

/// "Mon" or "Monday", any case.
fn parse_weekday(text: &str) -> Option<Weekday> {
    let text = text.trim().to_ascii_lowercase();
    let index = DAY_NAMES
        .iter()
        .position(|n| text == n[..3] || text == *n)?;
    Weekday::from_sunday_zero_offset(i8::try_from(index).ok()?).ok()
}

impl Window {
    fn parse(index: usize, raw: &WindowConfig) -> Result<Window, ScheduleError> {
        if raw.days.is_empty() {
            return Err(ScheduleError::WindowWithoutDays { index });
        }
        let mut days = 0u8;
        for day in &raw.days {
            let weekday = parse_weekday(day).ok_or_else(|| ScheduleError::UnknownDay {
                index,
                day: day.clone(),
            })?;
            days |= 1 << weekday.to_monday_zero_offset();
        }
        let (start, end) = (raw.hours.split_once('-'))
            .and_then(|(a, b)| Some((parse_hhmm(a)?, parse_hhmm(b)?)))
            .ok_or_else(|| ScheduleError::BadHours {
                index,
                value: raw.hours.clone(),
            })?;
        if start == end {
            return Err(ScheduleError::EmptyWindow {
                index,
                value: raw.hours.clone(),
            });
        }
        Ok(Window { days, start, end })
    }

    fn has(&self, day: Weekday) -> bool {
        self.days >> day.to_monday_zero_offset() & 1 == 1
    }

    /// A wrapping range's tail (after midnight) belongs to the previous day's window.
    fn contains(&self, day: Weekday, time: Time) -> bool {
        if self.start < self.end {
            self.has(day) && self.start <= time && time < self.end
        } else {
            (self.has(day) && self.start <= time) || (self.has(day.previous()) && time < self.end)
        }
    }
}

impl Freeze {
    fn parse(index: usize, raw: &FreezeConfig) -> Result<Freeze, ScheduleError> {
        let instant = |field, value: &String| {
            (value.trim().parse::<Timestamp>())
                .map(|t| t.as_millisecond())
                .map_err(|_| ScheduleError::BadInstant {
                    index,
                    field,
                    value: value.clone(),
                })
        };
        let (from_ms, until_ms) = (instant("from", &raw.from)?, instant("until", &raw.until)?);
        if until_ms <= from_ms {
            return Err(ScheduleError::EmptyFreeze {
                index,
                from: raw.from.clone(),
                until: raw.until.clone(),
            });
        }
        Ok(Freeze { from_ms, until_ms })
    }

    fn contains(&self, at_ms: i64) -> bool {
        self.from_ms <= at_ms && at_ms < self.until_ms
    }
}

/// A parsed five-field cron expression; bit `v` of a field set means value `v` matches.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cron {
    minutes: u64,
    hours: u64,
    doms: u64,
    months: u64,
    /// Sunday is bit 0 (both 0 and 7 set it).
    dows: u64,
    /// As in Vixie cron, a day field starting with `*` (even `*/2`) counts as
    /// unrestricted: the day then needs both fields, otherwise either.
    dom_star: bool,
    dow_star: bool,
}

const CRON_FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
#[rustfmt::skip]
const DAY_NAMES: [&str; 7] = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"];
const DAYS_IN_MONTH: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

impl Cron {
    fn parse(text: &str) -> Result<Cron, ScheduleError> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(ScheduleError::CronFieldCount {
                cron: text.into(),
                found: fields.len(),
            });
        }
        let mut bits = [0u64; 5];
        for (index, field) in fields.iter().enumerate() {
            bits[index] = cron_field(index, field).map_err(|reason| ScheduleError::CronField {
                index: index + 1,
                name: CRON_FIELDS[index].0,
                value: (*field).into(),
                reason,
            })?;
        }
        let cron = Cron {
            minutes: bits[0],
            hours: bits[1],
            doms: bits[2],
            months: bits[3],
            dows: (bits[4] | bits[4] >> 7) & 0x7f,
            dom_star: fields[2].starts_with('*'),
            dow_star: fields[4].starts_with('*'),
        };
        // Only a day-of-month that no chosen month has can make it never fire; any
        // weekday occurs in every month (29 for February: leap years count).
        let dom_only = !cron.dom_star && cron.dow_star;
        let fits = |(m, days): (usize, &u32)| {
            cron.months >> (m + 1) & 1 == 1 && cron.doms & ((2 << days) - 1) != 0
        };
        if dom_only && !DAYS_IN_MONTH.iter().enumerate().any(fits) {
            return Err(ScheduleError::CronNeverFires { cron: text.into() });
        }
        Ok(cron)
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = self.doms >> date.day() & 1 == 1;
        let dow = self.dows >> date.weekday().to_sunday_zero_offset() & 1 == 1;
        let day = if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        };
        day && self.months >> date.month() & 1 == 1
    }

    /// The first matching instant strictly after `after`, in `tz`.
    fn next_after(&self, tz: &TimeZone, after: Timestamp) -> Option<Timestamp> {
        let mut date = tz.to_datetime(after).date();
        for _ in 0..CRON_SEARCH_DAYS {
            if self.day_matches(date) {
                for hour in set_bits(self.hours) {
                    for minute in set_bits(self.minutes) {
                        let time = Time::new(hour, minute, 0, 0).ok()?;
                        // Local times map to non-decreasing instants, so the first
                        // one past `after` is the earliest.
                        let at = local_to_instant(tz, date.to_datetime(time))?;
                        if at > after {
                            return Some(at);
                        }
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

/// One cron field (0-based `index`) into a bit set, or why not.
fn cron_field(index: usize, text: &str) -> Result<u64, String> {
    let (_, min, max) = CRON_FIELDS[index];
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => match step.parse::<u32>() {
                Ok(n) if n >= 1 => (range, n),
                _ => {
                    return Err(format!(
                        "step {} must be a whole number of at least 1",
                        quoted(step)
                    ));
                }
            },
            None => (item, 1),
        };
        let (lo, hi) = match range.split_once('-') {
            _ if range == "*" => (min, max),
            Some((a, b)) => (cron_value(index, a)?, cron_value(index, b)?),
            // "a/n" means from a to the field's end, every n.
            None if step > 1 => (cron_value(index, range)?, max),
            None => {
                let v = cron_value(index, range)?;
                (v, v)
            }
        };
        if lo > hi {
            return Err(format!(
                "range {} runs backwards: put the smaller value first",
                quoted(range)
            ));
        }
        for v in (lo..=hi).step_by(step as usize) {
            bits |= 1 << v;
        }
    }
    Ok(bits)
}

fn cron_value(index: usize, text: &str) -> Result<u32, String> {
    let (_, min, max) = CRON_FIELDS[index];
    // Month and weekday names: their first three letters, any case.
    let names: &[&str] = match index {
        3 => &MONTHS,
        4 => &DAY_NAMES,
        _ => &[],
    };
    let by_name = names.iter().position(|n| n[..3].eq_ignore_ascii_case(text));
    let value = match by_name {
        Some(p) => p as u32 + min,
        None if names.is_empty() => text
            .parse()
            .map_err(|_| format!("{} is not a number", quoted(text)))?,
        None => text
            .parse()
            .map_err(|_| format!("{} is not a number or a name", quoted(text)))?,
    };
    if value < min || value > max {
        return Err(format!("{value} is outside {min}-{max}"));
    }
    Ok(value)
}

fn set_bits(bits: u64) -> impl Iterator<Item = i8> {
    (0..64i8).filter(move |i| bits >> i & 1 == 1)
}

/// Local wall time to an instant: a gap maps to its end (the first instant after it), a
/// fold to its first occurrence.
fn local_to_instant(tz: &TimeZone, dt: DateTime) -> Option<Timestamp> {
    match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } | AmbiguousOffset::Fold { before: offset, .. } => {
            offset.to_timestamp(dt).ok()
        }
        AmbiguousOffset::Gap { after, .. } => {
            // With the later offset, a time inside the gap lands just before the jump.
            let inside = after.to_timestamp(dt).ok()?;
            tz.following(inside).next().map(|t| t.timestamp())
        }
    }
}

fn instant(ms: i64) -> Option<Timestamp> {
    Timestamp::from_millisecond(ms).ok()
}

/// FNV-1a (64 bit): stable across builds and platforms, unlike std's `RandomState`.
fn fnv1a(bytes: &[u8]) -> u64 {
    (bytes.iter()).fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Schedule {
    /// When the secret's next rotation should start: the earlier of the cadence after the
    /// anchor and `expiry - before_expiry_days`, plus the secret's jitter, then moved to
    /// the next allowed instant. A due time in the past is returned as is when now is
    /// allowed (the caller rotates now); otherwise it moves to the next allowed instant
    /// after `now`, so a late caller never rotates inside a freeze.
    pub fn next_due(&self, input: &DueInput<'_>) -> Due {
        let cadence = self.cadence_after(input.anchor_ms);
        let before_expiry = (self.before_expiry_days.zip(input.expiry_ms))
            .map(|(days, expiry)| expiry.saturating_sub(i64::from(days) * DAY_MS));
        let (base, reason) = match (cadence, before_expiry) {
            (Some(c), Some(e)) if e < c => (Some(e), DueReason::BeforeExpiry),
            (None, Some(e)) => (Some(e), DueReason::BeforeExpiry),
            // `None` only at the edge of the representable range.
            (c, _) => (c, DueReason::Cadence),
        };
        let candidate = base.map(|b| b.saturating_add(self.jitter_ms(input.secret)));
        let now = input.now_ms;
        let found = match candidate.and_then(|c| self.next_allowed(c)) {
            Some(at) if at < now && !self.is_allowed(now) => self.next_allowed(now),
            found => found,
        };
        let Some(at_ms) = found else {
            let from = candidate.unwrap_or(input.anchor_ms).max(now);
            let searched_until_ms = from.saturating_add(SEARCH_HORIZON_MS);
            let alert = Some(Alert::NoAllowedTime { searched_until_ms });
            return Due {
                at_ms: searched_until_ms,
                reason,
                alert,
            };
        };
        // Alert when the version expires before the rotation, or has already expired.
        let alert = (input.expiry_ms)
            .filter(|&expiry| expiry <= at_ms.max(now))
            .map(|expiry_ms| self.expiry_alert(expiry_ms));
        Due {
            at_ms,
            reason,
            alert,
        }
    }

    /// Whether a rotation may start at `at_ms`: inside a window (if any) and outside
    /// every freeze.
    pub fn is_allowed(&self, at_ms: i64) -> bool {
        !self.freezes.iter().any(|f| f.contains(at_ms)) && self.in_window(at_ms)
    }

    /// The first allowed instant at or after `from_ms`, searching up to
    /// [`SEARCH_HORIZON_MS`] ahead; `None` if freezes cover all of it.
    pub fn next_allowed(&self, from_ms: i64) -> Option<i64> {
        let limit = from_ms.saturating_add(SEARCH_HORIZON_MS);
        let mut at = from_ms;
        for _ in 0..JUMPS_MAX {
            if at > limit {
                return None;
            }
            // Every jump moves strictly forward: past a freeze, or to where a window may begin.
            if let Some(until) = (self.freezes.iter())
                .filter(|f| f.contains(at))
                .map(|f| f.until_ms)
                .max()
            {
                at = until;
            } else if self.in_window(at) {
                return Some(at);
            } else {
                at = self.next_opening(at)?;
            }
        }
        None
    }

    fn cadence_after(&self, anchor_ms: i64) -> Option<i64> {
        match &self.cadence {
            Cadence::EveryDays { days, at: None } => {
                anchor_ms.checked_add(i64::from(*days) * DAY_MS)
            }
            Cadence::EveryDays { days, at: Some(at) } => {
                let anchor_date = self.tz.to_datetime(instant(anchor_ms)?).date();
                let date = anchor_date.checked_add(i64::from(*days).days()).ok()?;
                local_to_instant(&self.tz, date.to_datetime(*at)).map(|t| t.as_millisecond())
            }
            Cadence::Cron(cron) => {
                let at = cron.next_after(&self.tz, instant(anchor_ms)?)?;
                Some(at.as_millisecond())
            }
        }
    }

    /// Seconds in `[0, jitter_minutes × 60)` from FNV-1a of the secret's name, in ms.
    fn jitter_ms(&self, secret: &str) -> i64 {
        let spread_s = u64::from(self.jitter_minutes) * 60;
        if spread_s == 0 {
            return 0;
        }
        // Below a week of seconds, so the conversion cannot fail.
        i64::try_from(fnv1a(secret.as_bytes()) % spread_s).unwrap_or(0) * 1000
    }

    fn in_window(&self, at_ms: i64) -> bool {
        if self.windows.is_empty() {
            return true;
        }
        let Some(at) = instant(at_ms) else {
            return false;
        };
        let local = self.tz.to_datetime(at);
        (self.windows.iter()).any(|w| w.contains(local.weekday(), local.time()))
    }

    /// The first instant strictly after `after_ms` where being in a window may begin: a
    /// window's opening, or a time zone transition (setting clocks back repeats local
    /// times, which can reenter a window without passing its opening).
    fn next_opening(&self, after_ms: i64) -> Option<i64> {
        let after = instant(after_ms)?;
        let today = self.tz.to_datetime(after).date();
        // Every window opens at least weekly; a day more covers an opening lost in a gap.
        // Later dates only give later instants, so the first date with one wins.
        let opening = (0..=8).find_map(|offset: i64| {
            let date = today.checked_add(offset.days()).ok()?;
            (self.windows.iter())
                .filter(|w| w.has(date.weekday()))
                .filter_map(|w| local_to_instant(&self.tz, date.to_datetime(w.start)))
                .filter(|start| *start > after)
                .min()
        });
        let transition = self.tz.following(after).next().map(|t| t.timestamp());
        (opening.into_iter().chain(transition))
            .min()
            .map(|t| t.as_millisecond())
    }

    fn expiry_alert(&self, expiry_ms: i64) -> Alert {
        if let Some(f) = self.freezes.iter().find(|f| f.contains(expiry_ms)) {
            return Alert::ExpiresInsideFreeze {
                expiry_ms,
                freeze_until_ms: f.until_ms,
            };
        }
        if !self.in_window(expiry_ms) {
            return Alert::ExpiresBeforeWindow { expiry_ms };
        }
        Alert::ExpiresBeforeDue { expiry_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(text: &str) -> i64 {
        text.trim().parse::<Timestamp>().unwrap().as_millisecond()
    }

    /// Parses `s = { <inline TOML> }`, so each case fits on one line.
    fn parse(inline: &str) -> Result<Schedule, ScheduleError> {
        #[derive(Deserialize)]
        struct One {
            s: ScheduleConfig,
        }
        let one: One = toml::from_str(&format!("s = {{ {inline} }}")).unwrap();
        one.s.validate()
    }

    /// `config | anchor | now ("-": the anchor) | expiry ("-": unknown) | due | reason |
    /// alert`, all computed by hand.
    const DUE: &str = r#"
        time_zone = "Europe/Paris", every_days = 30, at = "03:00" | 2026-03-01T10:00:00+01:00 | - | - | 2026-03-31T03:00:00+02:00 | Cadence | -
        time_zone = "Europe/Paris", every_days = 1, at = "02:30"  | 2026-03-28T10:00:00+01:00 | - | - | 2026-03-29T03:00:00+02:00 | Cadence | -
        time_zone = "Europe/Paris", every_days = 1, at = "02:30"  | 2026-10-24T12:00:00+02:00 | - | - | 2026-10-25T02:30:00+02:00 | Cadence | -
        every_days = 7                                            | 2026-03-25T10:00:00+01:00 | - | - | 2026-04-01T10:00:00+01:00 | Cadence | -
        time_zone = "Europe/Paris", cron = "0 3 * * MON"          | 2026-03-04T12:00:00+01:00 | - | - | 2026-03-09T03:00:00+01:00 | Cadence | -
        time_zone = "Europe/Paris", cron = "0 3 * * MON"          | 2026-03-09T03:00:00+01:00 | - | - | 2026-03-16T03:00:00+01:00 | Cadence | -
        time_zone = "Europe/Paris", cron = "0 3 * * mon"          | 2026-03-23T12:00:00+01:00 | - | - | 2026-03-30T03:00:00+02:00 | Cadence | -
        time_zone = "Europe/Paris", cron = "30 2 * * *"           | 2026-03-28T12:00:00+01:00 | - | - | 2026-03-29T03:00:00+02:00 | Cadence | -
        time_zone = "Europe/Paris", cron = "30 2 * * *"           | 2026-03-29T03:00:00+02:00 | - | - | 2026-03-30T02:30:00+02:00 | Cadence | -
        time_zone = "UTC", cron = "0 12 10 * MON"                 | 2026-02-03T00:00:00Z      | - | - | 2026-02-09T12:00:00Z      | Cadence | -
        time_zone = "UTC", cron = "0 12 10 * MON"                 | 2026-02-09T13:00:00Z      | - | - | 2026-02-10T12:00:00Z      | Cadence | -
        time_zone = "UTC", cron = "0 12 */2 * MON"                | 2026-02-03T00:00:00Z      | - | - | 2026-02-09T12:00:00Z      | Cadence | -
        time_zone = "UTC", cron = "*/15 9-17/4 * JAN,mar *"       | 2026-02-10T00:00:00Z      | - | - | 2026-03-01T09:00:00Z      | Cadence | -
        time_zone = "UTC", cron = "*/15 9-17/4 * JAN,mar *"       | 2026-03-01T09:50:00Z      | - | - | 2026-03-01T13:00:00Z      | Cadence | -
        time_zone = "UTC", cron = "0 0 * * 7"                     | 2026-03-02T00:00:00Z      | - | - | 2026-03-08T00:00:00Z      | Cadence | -
        time_zone = "UTC", cron = "5/20 * * * *"                  | 2026-03-02T00:06:00Z      | - | - | 2026-03-02T00:25:00Z      | Cadence | -
        time_zone = "UTC", cron = "0 0 29 2 *"                    | 2026-03-01T00:00:00Z      | - | - | 2028-02-29T00:00:00Z      | Cadence | -
        time_zone = "Europe/Paris", every_days = 30, at = "12:00", windows = [{ days = ["Mon","Tue","Wed","Thu","Fri"], hours = "02:00-05:00" }] | 2026-03-01T10:00:00+01:00 | - | - | 2026-04-01T02:00:00+02:00 | Cadence | -
        every_days = 90, before_expiry_days = 10, freezes = [{ from = "2026-12-20T00:00:00Z", until = "2027-01-04T00:00:00Z" }] | 2026-11-01T00:00:00Z | - | 2026-12-30T00:00:00Z | 2027-01-04T00:00:00Z | BeforeExpiry | freeze
        every_days = 90, before_expiry_days = 10, freezes = [{ from = "2026-12-20T00:00:00Z", until = "2027-01-04T00:00:00Z" }] | 2026-11-01T00:00:00Z | - | 2027-02-10T00:00:00Z | 2027-01-30T00:00:00Z | Cadence | -
        every_days = 90, before_expiry_days = 10 | 2026-11-01T00:00:00Z | - | 2026-10-31T00:00:00Z | 2026-10-21T00:00:00Z | BeforeExpiry | expired
        time_zone = "UTC", every_days = 30, before_expiry_days = 1, windows = [{ days = ["Sat"], hours = "02:00-03:00" }] | 2026-06-01T00:00:00Z | - | 2026-06-03T12:00:00Z | 2026-06-06T02:00:00Z | BeforeExpiry | window
        every_days = 1, freezes = [{ from = "2026-01-09T00:00:00Z", until = "2026-01-12T00:00:00Z" }] | 2026-01-01T00:00:00Z | 2026-01-08T00:00:00Z | - | 2026-01-02T00:00:00Z | Cadence | -
        every_days = 1, freezes = [{ from = "2026-01-09T00:00:00Z", until = "2026-01-12T00:00:00Z" }] | 2026-01-01T00:00:00Z | 2026-01-10T00:00:00Z | - | 2026-01-12T00:00:00Z | Cadence | -
        every_days = 1, freezes = [{ from = "2026-01-01T00:00:00Z", until = "2030-01-01T00:00:00Z" }] | 2026-01-01T00:00:00Z | - | - | 2028-01-04T00:00:00Z | Cadence | nothing allowed
        time_zone = "UTC", every_days = 1, at = "03:00", jitter_minutes = 30 | 2026-05-01T12:00:00Z | - | - | 2026-05-02T03:06:34Z | Cadence | -
    "#;
    // Rows 1-3: Paris DST starts 2026-03-29, so the 31st is at +02:00; 02:30 does not exist
    // on the 29th (gap: the first instant after it, 03:00); 02:30 happens twice on
    // 2026-10-25 (fold: the first, at +02:00). Row 4: without `at`, exactly 7 × 24 h.
    // Rows 6, 9: strictly after the anchor. Rows 10-11: both day fields restricted, either
    // is enough. Row 12: `*/2` counts as unrestricted (Vixie), so odd days AND Mondays, not
    // Tuesday the 3rd. Row 18: Tuesday 12:00 is outside the window, Wednesday 02:00 opens.
    // Rows 19-22: expiry 10 days later is the freeze's first instant; the cadence comes
    // first; already expired (due in the past: the caller rotates now); expires Wednesday,
    // the only window is Saturday. Rows 23-25: late caller, now allowed or frozen; a freeze
    // longer than the 732-day search. Row 26: FNV-1a("s") mod 1800 s = 394 s.

    #[test]
    fn due_times() {
        for row in DUE.lines().filter(|l| !l.trim().is_empty()) {
            let cols: Vec<&str> = row.split(" | ").map(str::trim).collect();
            let [config, anchor, now, expiry, at, reason, alert] = cols[..] else {
                panic!("bad row {row}")
            };
            let opt = |text| (text != "-").then(|| ms(text));
            let (anchor_ms, expiry_ms) = (ms(anchor), opt(expiry));
            let now_ms = opt(now).unwrap_or(anchor_ms);
            let input = DueInput {
                secret: "s",
                now_ms,
                anchor_ms,
                expiry_ms,
            };
            let got = parse(config).unwrap().next_due(&input);
            let got_alert = match got.alert {
                None => "-",
                Some(Alert::ExpiresInsideFreeze {
                    expiry_ms: e,
                    freeze_until_ms: u,
                }) if Some(e) == expiry_ms && u == got.at_ms => "freeze",
                Some(Alert::ExpiresBeforeWindow { expiry_ms: e }) if Some(e) == expiry_ms => {
                    "window"
                }
                Some(Alert::ExpiresBeforeDue { expiry_ms: e }) if Some(e) == expiry_ms => "expired",
                Some(Alert::NoAllowedTime {
                    searched_until_ms: u,
                }) if u == got.at_ms => "nothing allowed",
                Some(other) => panic!("{row}: inconsistent {other:?}"),
            };
            let got = (got.at_ms, format!("{:?}", got.reason), got_alert);
            assert_eq!(got, (ms(at), reason.to_string(), alert), "{row}");
        }
    }

    #[test]
    fn windows_wrap_midnight_and_reopen_in_a_fold() {
        let s = r#"every_days = 1, time_zone = "UTC", windows = [{ days = ["Fri"], hours = "22:00-02:00" }]"#;
        let s = parse(s).unwrap();
        // 2026-06-05 is a Friday. The tail after midnight belongs to the start day only.
        for (at, allowed) in [
            ("2026-06-05T22:00:00Z", true),
            ("2026-06-06T01:59:00Z", true),
            ("2026-06-06T02:00:00Z", false),
            ("2026-06-05T01:00:00Z", false),
            ("2026-06-06T22:30:00Z", false),
            ("2026-06-05T21:59:00Z", false),
        ] {
            assert_eq!(s.is_allowed(ms(at)), allowed, "{at}");
        }
        let next = |s: &Schedule, from| s.next_allowed(ms(from));
        let at = |text| Some(ms(text));
        assert_eq!(next(&s, "2026-06-06T03:00:00Z"), at("2026-06-12T22:00:00Z"));
        assert_eq!(next(&s, "2026-06-05T23:00:00Z"), at("2026-06-05T23:00:00Z"));
        // On 2026-10-25 Paris sets 03:00 back to 02:00: 02:00-02:10 comes again at +01:00.
        let s = r#"every_days = 1, time_zone = "Europe/Paris", windows = [{ days = ["Sun"], hours = "01:30-02:10" }]"#;
        let s = parse(s).unwrap();
        assert_eq!(
            next(&s, "2026-10-25T02:30:00+02:00"),
            at("2026-10-25T02:00:00+01:00")
        );
    }

    #[test]
    fn jitter_is_stable_bounded_and_spreads_names() {
        // Reference vectors of FNV-1a 64.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let s = r#"every_days = 1, at = "03:00", time_zone = "UTC", jitter_minutes = 30"#;
        let s = parse(s).unwrap();
        let offset = |secret| {
            let anchor_ms = ms("2026-05-01T12:00:00Z");
            let input = DueInput {
                secret,
                now_ms: anchor_ms,
                anchor_ms,
                expiry_ms: None,
            };
            s.next_due(&input).at_ms - ms("2026-05-02T03:00:00Z")
        };
        // 0xaf63dc4c8601ec8c mod 1800 s = 196 s.
        assert_eq!(offset("a"), 196_000);
        let (x, y) = (offset("api-key"), offset("db-password"));
        assert!(
            (0..1_800_000).contains(&x) && (0..1_800_000).contains(&y),
            "{x} {y}"
        );
        assert_ne!(x, y);
        assert_eq!(offset("api-key"), x);
    }

    #[test]
    fn time_zones_are_bundled() {
        // The `tzdb-bundle-always` feature: zones work where /usr/share/zoneinfo is missing.
        assert!(
            jiff::tz::TimeZoneDatabase::bundled()
                .get("Europe/Paris")
                .is_ok()
        );
    }

    #[test]
    fn instants_out_of_range_give_an_alert_not_a_panic() {
        let s = r#"every_days = 1, at = "03:00", time_zone = "Europe/Paris", windows = [{ days = ["Mon"], hours = "02:00-03:00" }]"#;
        let s = parse(s).unwrap();
        // The last: 9999-12-31T23:59:59Z, the day after does not exist.
        for t in [i64::MIN, i64::MAX, 253_402_300_799_000] {
            let due = s.next_due(&DueInput {
                secret: "x",
                now_ms: t,
                anchor_ms: t,
                expiry_ms: None,
            });
            assert!(
                matches!(due.alert, Some(Alert::NoAllowedTime { .. })),
                "{t}: {due:?}"
            );
            assert!(!s.is_allowed(t) && s.next_allowed(t).is_none(), "{t}");
        }
    }

    /// `config | what the message must say`.
    const BAD: &str = r#"
        every_days = 1, time_zone = "Europe/Pari" | unknown time zone "Europe/Pari": use an IANA name
        every_days = 1, time_zone = "UTC", at = "3am" | `at` = "3am" is not a time: write HH:MM
        every_days = 1, time_zone = "UTC", at = "24:00" | `at` = "24:00" is not a time
        every_days = 1, at = "03:00" | `at` is a local time, so `time_zone` is required
        cron = "0 3 * * *" | `cron` is a local time, so `time_zone` is required
        every_days = 1, windows = [{ days = ["Mon"], hours = "02:00-03:00" }] | `windows` is a local time
        every_days = 0 | `every_days` = 0 is not allowed
        every_days = 1, before_expiry_days = 0 | `before_expiry_days` = 0 is not allowed
        every_days = 4000 | `every_days` is 4000, more than the limit of 3650
        every_days = 1, jitter_minutes = 20000 | `jitter_minutes` is 20000, more than the limit
        every_days = 1, time_zone = "UTC", cron = "0 3 * * *" | both `every_days` and `cron` are set
        before_expiry_days = 3 | no cadence: set `every_days`
        time_zone = "UTC", cron = "0 3 * * *", at = "03:00" | `at` is only used with `every_days`
        time_zone = "UTC", cron = "0 3 * *" | has 4 fields, it needs 5
        time_zone = "UTC", cron = "0 25 * * *" | field 2 (hour) "25": 25 is outside 0-23
        time_zone = "UTC", cron = "0 3 0 * *" | field 3 (day of month) "0": 0 is outside 1-31
        time_zone = "UTC", cron = "0 3 * * FUN" | field 5 (day of week) "FUN": "FUN" is not a number or a name
        time_zone = "UTC", cron = "*/0 3 * * *" | field 1 (minute) "*/0": step "0" must be a whole number
        time_zone = "UTC", cron = "0 3 5-1 * *" | field 3 (day of month) "5-1": range "5-1" runs backwards
        time_zone = "UTC", cron = "0 3 1,,2 * *" | field 3 (day of month) "1,,2": "" is not a number
        time_zone = "UTC", cron = "0 0 30 2 *" | "0 0 30 2 *" never fires
        every_days = 1, time_zone = "UTC", windows = [{ days = [], hours = "02:00-03:00" }] | windows[0] has no days
        every_days = 1, time_zone = "UTC", windows = [{ days = ["Mnday"], hours = "02:00-03:00" }] | windows[0]: unknown day "Mnday"
        every_days = 1, time_zone = "UTC", windows = [{ days = ["Mon"], hours = "02:00-02:00" }] | windows[0].hours = "02:00-02:00" is empty
        every_days = 1, time_zone = "UTC", windows = [{ days = ["Mon"], hours = "2-5" }] | windows[0].hours = "2-5" is not a range
        every_days = 1, freezes = [{ from = "2026-12-20", until = "2027-01-04T00:00:00Z" }] | freezes[0].from = "2026-12-20" is not an instant
        every_days = 1, freezes = [{ from = "2027-01-04T00:00:00Z", until = "2027-01-04T00:00:00Z" }] | freezes[0]: `until` (2027-01-04T00:00:00Z) must be after `from`
    "#;

    #[test]
    fn bad_configs_say_what_to_fix() {
        for row in BAD.lines().filter(|l| !l.trim().is_empty()) {
            let (config, expected) = row.split_once(" | ").unwrap();
            let message = parse(config).map(|_| ()).unwrap_err().to_string();
            assert!(message.contains(expected), "{row}\n→ {message}");
        }
        let example = r#"
            every_days = 30
            at = "03:00"
            time_zone = "Europe/Paris"
            before_expiry_days = 10
            jitter_minutes = 30
            windows = [{ days = ["Mon","Tue","Wed","Thu","Fri"], hours = "02:00-05:00" }]
            freezes = [{ from = "2026-12-20T00:00:00Z", until = "2027-01-04T00:00:00Z" }]
        "#;
        let example: ScheduleConfig = toml::from_str(example).unwrap();
        example.validate().unwrap();
        let unknown = toml::from_str::<ScheduleConfig>("every_days = 1\nevery_day = 2");
        let unknown = unknown.unwrap_err().to_string();
        assert!(unknown.contains("unknown field `every_day`"), "{unknown}");
    }

    prop_compose! {
        fn arb_schedule()(
            every_days in 1..400u32,
            at in prop::option::of((0..24u8, 0..60u8)),
            zone in prop::sample::select(&["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "UTC"][..]),
            jitter_minutes in 0..120u32,
            windows in prop::collection::vec((1..128u8, 0..1440u32, 1..1440u32), 0..3),
            freezes in prop::collection::vec((0..2_000i64, 1..60i64), 0..3),
        ) -> Schedule {
            let hhmm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
            let window = |(days, start, len): (u8, u32, u32)| WindowConfig {
                days: (0..7).filter(|i| days >> i & 1 == 1).map(|i| DAY_NAMES[i].into()).collect(),
                hours: format!("{}-{}", hhmm(start), hhmm((start + len) % 1440)),
            };
            // Days after 2026-01-01.
            let day = |d: i64| Timestamp::from_second(1_767_225_600 + d * 86_400).unwrap().to_string();
            let freeze = |(from, len)| FreezeConfig { from: day(from), until: day(from + len) };
            let config = ScheduleConfig {
                every_days: Some(every_days),
                at: at.map(|(h, m)| format!("{h:02}:{m:02}")),
                time_zone: Some(zone.into()),
                jitter_minutes,
                windows: windows.into_iter().map(window).collect(),
                freezes: freezes.into_iter().map(freeze).collect(),
                ..ScheduleConfig::default()
            };
            config.validate().unwrap()
        }
    }

    const YEARS: std::ops::Range<i64> = 1_700_000_000_000..2_000_000_000_000;

    #[test]
    fn errors_quote_short_escaped_excerpts() {
        let huge = "9".repeat(1 << 20);
        let at = ScheduleConfig {
            every_days: Some(7),
            at: Some(format!("\u{1b}{huge}")),
            time_zone: Some("UTC".into()),
            ..ScheduleConfig::default()
        };
        let cron = ScheduleConfig {
            cron: Some(format!("{huge} 3 * * MON")),
            time_zone: Some(huge.clone()),
            ..ScheduleConfig::default()
        };
        for config in [at, cron] {
            let message = config.validate().unwrap_err().to_string();
            assert!(message.len() < 300, "{} bytes", message.len());
            assert!(!message.chars().any(char::is_control), "{message:?}");
            assert!(message.contains("999…\""), "{message}");
        }
    }

    proptest! {
        #[test]
        fn due_is_after_anchor_and_allowed(s in arb_schedule(), anchor_ms in YEARS, late_ms in 0..100 * DAY_MS) {
            let input = DueInput { secret: "p", now_ms: anchor_ms + late_ms, anchor_ms, expiry_ms: None };
            let due = s.next_due(&input);
            prop_assert!(due.at_ms > anchor_ms);
            prop_assert!(due.alert.is_some() || s.is_allowed(due.at_ms));
        }

        #[test]
        fn next_allowed_is_the_first_allowed_instant(s in arb_schedule(), from_ms in YEARS) {
            if let Some(at) = s.next_allowed(from_ms) {
                prop_assert!(at >= from_ms && s.is_allowed(at));
                prop_assert!(at == from_ms || !s.is_allowed(at - 1));
            }
        }

        #[test]
        fn cron_fires_within_a_week(minute in 0..60u32, hour in 0..24u32, dow in 0..8u32, anchor_ms in YEARS) {
            let cron = Some(format!("{minute} {hour} * * {dow}"));
            let config = ScheduleConfig { cron, time_zone: Some("America/New_York".into()), ..ScheduleConfig::default() };
            let input = DueInput { secret: "c", now_ms: anchor_ms, anchor_ms, expiry_ms: None };
            let due = config.validate().unwrap().next_due(&input);
            prop_assert!(due.at_ms > anchor_ms && due.at_ms <= anchor_ms + 8 * DAY_MS);
        }
    }
}
