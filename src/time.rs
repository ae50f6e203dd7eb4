//! Dates as Debian and apt write them, from Unix time, with no time zone database: the
//! package's changelog, the repository's `Release` and the roll lock all need one, so it lives
//! here rather than in any of them.

/// A UTC day (YYYYMMDD) from a Unix time, for weeklies without a date.
pub fn yyyymmdd(epoch: i64) -> u32 {
    let days = epoch.div_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y * 10_000 + m * 100 + d) as u32
}

/// `Mon, 22 Apr 2024 10:00:00 +0000`.
pub fn rfc2822(epoch: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let d = yyyymmdd(epoch);
    let secs = epoch.rem_euclid(86_400);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[epoch.div_euclid(86_400).rem_euclid(7) as usize],
        d % 100,
        MONTHS[((d / 100) % 100 - 1) as usize],
        d / 10_000,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc2822(1_713_780_000), "Mon, 22 Apr 2024 10:00:00 +0000");
    }

    #[test]
    fn day_from_epoch() {
        assert_eq!(yyyymmdd(0), 19700101);
        assert_eq!(yyyymmdd(1_713_744_000), 20240422);
        assert_eq!(yyyymmdd(951_782_400), 20000229);
    }
}
