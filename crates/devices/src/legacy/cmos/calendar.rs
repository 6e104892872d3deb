//! UTC calendar arithmetic for the RTC (no time zones, no leap seconds).

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DateTime {
    pub year: u32,
    /// 1..=12
    pub month: u8,
    /// 1..=31
    pub day: u8,
    /// 0..=23
    pub hour: u8,
    /// 0..=59
    pub minute: u8,
    /// 0..=59
    pub second: u8,
    /// Day of the week as the MC146818 counts it: 1 = Sunday ..= 7 = Saturday.
    pub weekday: u8,
}

/// Largest year the RTC century register can show (BCD 99).
const MAX_YEAR: u32 = 9999;

fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u8) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl DateTime {
    /// Breaks down `secs` seconds since 1970-01-01 00:00:00 UTC. Times past year 9999
    /// saturate at 9999-12-31 23:59:59.
    pub fn from_unix(secs: u64) -> Self {
        let mut days = secs / 86_400;
        let rem = secs % 86_400;
        // 1970-01-01 was a Thursday (5 in the 1 = Sunday numbering).
        let weekday = ((days + 4) % 7) as u8 + 1;
        let mut year = 1970;
        loop {
            let len = if is_leap(year) { 366 } else { 365 };
            if days < len {
                break;
            }
            if year == MAX_YEAR {
                return Self::max();
            }
            days -= len;
            year += 1;
        }
        let mut month = 1;
        while days >= days_in_month(year, month) {
            days -= days_in_month(year, month);
            month += 1;
        }
        Self {
            year,
            month,
            day: days as u8 + 1,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            weekday,
        }
    }

    /// Seconds since the epoch of this date and time (the weekday is ignored), or `None`
    /// if a field is out of range or the year is outside 1970..=9999.
    pub fn to_unix(self) -> Option<u64> {
        let valid = (1970..=MAX_YEAR).contains(&self.year)
            && (1..=12).contains(&self.month)
            && self.day >= 1
            && u64::from(self.day) <= days_in_month(self.year, self.month)
            && self.hour <= 23
            && self.minute <= 59
            && self.second <= 59;
        if !valid {
            return None;
        }
        let years: u64 = (1970..self.year)
            .map(|y| if is_leap(y) { 366 } else { 365 })
            .sum();
        let months: u64 = (1..self.month).map(|m| days_in_month(self.year, m)).sum();
        let days = years + months + u64::from(self.day) - 1;
        Some(
            days * 86_400
                + u64::from(self.hour) * 3600
                + u64::from(self.minute) * 60
                + u64::from(self.second),
        )
    }

    fn max() -> Self {
        Self {
            year: MAX_YEAR,
            month: 12,
            day: 31,
            hour: 23,
            minute: 59,
            second: 59,
            weekday: 6, // 9999-12-31 is a Friday.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(year: u32, month: u8, day: u8, hour: u8, minute: u8, second: u8, wd: u8) -> DateTime {
        DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            weekday: wd,
        }
    }

    #[test]
    fn known_dates() {
        assert_eq!(DateTime::from_unix(0), dt(1970, 1, 1, 0, 0, 0, 5));
        // 2000-02-29 12:34:56 UTC, a Tuesday (century leap year).
        assert_eq!(
            DateTime::from_unix(951_827_696),
            dt(2000, 2, 29, 12, 34, 56, 3)
        );
        // 2024-12-31 23:59:59 UTC, a Tuesday (last second of a leap year).
        assert_eq!(
            DateTime::from_unix(1_735_689_599),
            dt(2024, 12, 31, 23, 59, 59, 3)
        );
        // 2025-01-01 00:00:00 UTC, a Wednesday.
        assert_eq!(
            DateTime::from_unix(1_735_689_600),
            dt(2025, 1, 1, 0, 0, 0, 4)
        );
        // 2100-03-01 00:00:00 UTC, a Monday (2100 is not a leap year).
        assert_eq!(
            DateTime::from_unix(4_107_542_400),
            dt(2100, 3, 1, 0, 0, 0, 2)
        );
    }

    #[test]
    fn to_unix_inverts_from_unix() {
        // A spread of instants, including leap days and year ends.
        let sparse = (0..253_402_300_799u64).step_by(86_400 * 1_999 + 3_671);
        // Densely over 1999..2101, where guests live.
        let dense = (915_148_800..4_133_980_800u64).step_by(86_400 * 13 + 3_671);
        for t in sparse.chain(dense) {
            let d = DateTime::from_unix(t);
            assert_eq!(d.to_unix(), Some(t), "{d:?}");
        }
        assert_eq!(DateTime::max().to_unix(), Some(253_402_300_799));
    }

    #[test]
    fn to_unix_refuses_invalid_fields() {
        let ok = dt(2023, 2, 28, 23, 59, 59, 1);
        assert!(ok.to_unix().is_some());
        for bad in [
            DateTime { day: 29, ..ok },
            DateTime { day: 0, ..ok },
            DateTime { month: 13, ..ok },
            DateTime { month: 0, ..ok },
            DateTime { hour: 24, ..ok },
            DateTime { minute: 60, ..ok },
            DateTime { second: 60, ..ok },
            DateTime { year: 1969, ..ok },
            DateTime { year: 10_000, ..ok },
        ] {
            assert_eq!(bad.to_unix(), None, "{bad:?}");
        }
        assert!(DateTime {
            year: 2024,
            day: 29,
            ..ok
        }
        .to_unix()
        .is_some());
    }

    #[test]
    fn far_future_saturates_without_panic() {
        assert_eq!(DateTime::from_unix(u64::MAX), DateTime::max());
        // 10000-01-01 00:00:00 UTC.
        assert_eq!(DateTime::from_unix(253_402_300_800), DateTime::max());
        assert_eq!(DateTime::from_unix(253_402_300_799), DateTime::max());
    }
}
