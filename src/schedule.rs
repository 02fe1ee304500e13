//! When the device may download, and how fast: `download_windows` (local-time ranges
//! like `"01:00-05:00"`, which may cross midnight) and a scheduled `max_bytes_per_s`
//! (a list of `{ "from", "to", "bytes_per_s" }`). Pure decisions on the local second
//! of the day, a test per rule; the caller reads the clock (`sys::local_second_of_day`)
//! and waits on the monotonic clock, reading the wall clock again every few seconds, so
//! a clock that jumps (NTP correcting by years) moves a window, never a timer.
//!
//! Ranges are whole minutes, half-open (`01:00-05:00` is open at 04:59:59, closed at
//! 05:00:00); `22:00-02:00` crosses midnight; `00:00-24:00` is the whole day. Overlapping
//! or touching ranges act as one.

/// Seconds in a day.
const DAY: u32 = 86_400;

/// One local-time range of the day, in seconds since midnight, half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Range {
    from: u32,
    to: u32,
}

impl Range {
    /// `"HH:MM-HH:MM"`.
    pub(crate) fn parse(text: &str) -> Result<Range, String> {
        let (from, to) = text
            .split_once('-')
            .ok_or_else(|| format!("`{text}` is not HH:MM-HH:MM"))?;
        Range::from_to(from, to).map_err(|e| format!("`{text}`: {e}"))
    }

    /// From two `"HH:MM"` (the end may be `24:00`).
    pub(crate) fn from_to(from: &str, to: &str) -> Result<Range, String> {
        let from = minute_of_day(from.trim(), false)?;
        let to = minute_of_day(to.trim(), true)?;
        if from == to {
            return Err("an empty range (start equals end)".into());
        }
        Ok(Range { from, to })
    }

    fn contains(&self, s: u32) -> bool {
        if self.from < self.to {
            (self.from..self.to).contains(&s)
        } else {
            s >= self.from || s < self.to
        }
    }

    /// `01:00-05:00`, for messages.
    pub(crate) fn label(&self) -> String {
        format!("{}-{}", hh_mm(self.from), hh_mm(self.to))
    }
}

/// Seconds since midnight of `"HH:MM"`; `24:00` only as an end.
fn minute_of_day(text: &str, end: bool) -> Result<u32, String> {
    let bad = || format!("`{text}` is not a time HH:MM");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    match (h, m) {
        (24, 0) if end => Ok(DAY),
        (0..=23, 0..=59) => Ok(h * 3600 + m * 60),
        _ => Err(bad()),
    }
}

fn hh_mm(s: u32) -> String {
    format!("{:02}:{:02}", s / 3600, s % 3600 / 60)
}

/// `download_windows`: none means always open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Windows(Vec<Range>);

impl Windows {
    pub(crate) fn new(ranges: Vec<Range>) -> Windows {
        Windows(ranges)
    }

    /// No windows: downloads may run at any time.
    pub(crate) fn always(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn is_open(&self, s: u32) -> bool {
        self.always() || self.0.iter().any(|r| r.contains(s % DAY))
    }

    /// Seconds until a window opens from `s`: 0 when one is open.
    pub(crate) fn opens_in(&self, s: u32) -> u32 {
        // Boundaries are whole minutes: stepping to each next minute finds the first
        // open one, at most a day of steps.
        let mut t = s;
        while !self.is_open(t) {
            t = (t / 60 + 1) * 60;
            if t - s > DAY {
                return 0; // unreachable with a non-empty list; never wait forever
            }
        }
        t - s
    }

    /// Seconds until the open window(s) close from `s`; None when none will (no
    /// windows, or open all day) or none is open now.
    pub(crate) fn closes_in(&self, s: u32) -> Option<u32> {
        if self.always() || !self.is_open(s) {
            return None;
        }
        let mut t = s;
        while self.is_open(t) {
            t = (t / 60 + 1) * 60;
            if t - s > DAY {
                return None;
            }
        }
        Some(t - s)
    }

    /// The window that opens next after `s` (or is open), for messages.
    pub(crate) fn next(&self, s: u32) -> Option<Range> {
        let at = (s + self.opens_in(s)) % DAY;
        self.0.iter().copied().find(|r| r.contains(at))
    }

    /// The configured ranges, for `status` and messages.
    pub(crate) fn labels(&self) -> String {
        let l: Vec<String> = self.0.iter().map(Range::label).collect();
        l.join(", ")
    }
}

/// `max_bytes_per_s`: one cap at all times, or caps by time of day (none outside them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RateCap {
    Always(u64),
    Scheduled(Vec<(Range, u64)>),
}

impl Default for RateCap {
    fn default() -> Self {
        RateCap::Always(0)
    }
}

impl RateCap {
    /// Bytes per second allowed at `s` (0: no cap); of overlapping ranges, the first.
    pub(crate) fn at(&self, s: u32) -> u64 {
        match self {
            RateCap::Always(r) => *r,
            RateCap::Scheduled(slots) => slots
                .iter()
                .find(|(r, _)| r.contains(s % DAY))
                .map_or(0, |(_, rate)| *rate),
        }
    }

    /// Whether the cap can change during a day (worth reading the clock again).
    pub(crate) fn varies(&self) -> bool {
        matches!(self, RateCap::Scheduled(_))
    }
}

/// A wait for a window, in words: `"01:00-05:00 (opens in 3 h 12 min)"`.
pub(crate) fn describe_wait(windows: &Windows, s: u32) -> String {
    let wait = windows.opens_in(s);
    let label = windows
        .next(s)
        .map(|r| r.label())
        .unwrap_or_else(|| windows.labels());
    format!("{label} (opens in {})", in_words(wait))
}

fn in_words(secs: u32) -> String {
    let (h, m) = (secs / 3600, (secs % 3600).div_ceil(60));
    match (h, m) {
        (0, 0) => "under a minute".into(),
        (0, m) => format!("{m} min"),
        (h, 60) => format!("{} h", h + 1),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(hh: u32, mm: u32) -> u32 {
        hh * 3600 + mm * 60
    }

    fn windows(list: &[&str]) -> Windows {
        Windows::new(list.iter().map(|t| Range::parse(t).unwrap()).collect())
    }

    #[test]
    fn a_range_is_whole_minutes_and_half_open() {
        let w = windows(&["01:00-05:00"]);
        assert!(!w.is_open(at(0, 59) + 59));
        assert!(w.is_open(at(1, 0)));
        assert!(w.is_open(at(4, 59) + 59));
        assert!(!w.is_open(at(5, 0)));
    }

    #[test]
    fn a_range_may_cross_midnight_and_24_00_ends_the_day() {
        let w = windows(&["22:00-02:00"]);
        assert!(w.is_open(at(23, 30)) && w.is_open(at(0, 0)) && w.is_open(at(1, 59)));
        assert!(!w.is_open(at(2, 0)) && !w.is_open(at(12, 0)));
        let day = windows(&["00:00-24:00"]);
        assert!(day.is_open(0) && day.is_open(DAY - 1));
        assert_eq!(day.closes_in(at(12, 0)), None, "open all day never closes");
    }

    #[test]
    fn no_windows_is_always_open() {
        let w = Windows::default();
        assert!(w.always() && w.is_open(at(13, 0)));
        assert_eq!(w.opens_in(at(13, 0)), 0);
        assert_eq!(w.closes_in(at(13, 0)), None);
    }

    #[test]
    fn the_wait_runs_to_the_next_opening_across_midnight() {
        let w = windows(&["01:00-05:00"]);
        assert_eq!(w.opens_in(at(0, 59) + 50), 10);
        assert_eq!(w.opens_in(at(5, 0)), 20 * 3600);
        assert_eq!(w.opens_in(at(2, 0)), 0);
        assert_eq!(
            w.next(at(12, 0)),
            Some(Range::parse("01:00-05:00").unwrap())
        );
    }

    #[test]
    fn touching_or_overlapping_windows_close_as_one() {
        let w = windows(&["01:00-03:00", "03:00-04:00", "03:30-05:00"]);
        assert_eq!(w.closes_in(at(1, 0)), Some(4 * 3600));
        assert_eq!(w.closes_in(at(6, 0)), None, "closed: nothing to close");
        let two = windows(&["01:00-02:00", "13:00-14:00"]);
        assert_eq!(two.opens_in(at(2, 0)), 11 * 3600);
        assert_eq!(two.next(at(2, 0)).unwrap().label(), "13:00-14:00");
    }

    #[test]
    fn bad_ranges_are_refused_with_the_reason() {
        for bad in [
            "1:00",
            "01:00-",
            "25:00-26:00",
            "01:60-02:00",
            "01:00-01:00",
            "24:00-01:00",
            "a-b",
            "01:0-02:00",
        ] {
            assert!(Range::parse(bad).is_err(), "{bad}");
        }
        assert!(
            Range::parse("1:00-2:30").is_ok(),
            "one-digit hours are fine"
        );
        assert!(Range::parse("01:00-01:00").unwrap_err().contains("empty"));
    }

    #[test]
    fn a_scheduled_cap_applies_inside_its_range_and_none_outside() {
        let cap = RateCap::Scheduled(vec![
            (Range::parse("08:00-18:00").unwrap(), 65_536),
            (Range::parse("18:00-08:00").unwrap(), 1 << 20),
        ]);
        assert_eq!(cap.at(at(9, 0)), 65_536);
        assert_eq!(cap.at(at(23, 0)), 1 << 20);
        let day_only = RateCap::Scheduled(vec![(Range::parse("08:00-18:00").unwrap(), 100)]);
        assert_eq!(day_only.at(at(20, 0)), 0, "outside every range: no cap");
        assert_eq!(RateCap::Always(5).at(at(3, 0)), 5);
        assert!(cap.varies() && !RateCap::Always(5).varies());
    }

    #[test]
    fn a_wait_is_said_in_words() {
        let w = windows(&["01:00-05:00"]);
        assert_eq!(
            describe_wait(&w, at(0, 59) + 50),
            "01:00-05:00 (opens in 1 min)"
        );
        assert_eq!(
            describe_wait(&w, at(21, 48)),
            "01:00-05:00 (opens in 3 h 12 min)"
        );
        assert_eq!(describe_wait(&w, at(0, 0)), "01:00-05:00 (opens in 1 h)");
    }
}
