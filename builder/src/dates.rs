//! Dates of the build's clock (`source_date_epoch`) as the outputs print
//! them: the SBOM's creation time and a guest image's `image_build_date`.
//! A module of its own so that the stages that print dates need not reach
//! into each other.

use anyhow::{Context as _, Result};
use time::OffsetDateTime;

/// `2025-01-01T00:00:00Z` from a Unix timestamp (UTC, proleptic Gregorian).
pub fn iso8601(epoch: i64) -> Result<String> {
    let t = utc(epoch)?;
    Ok(format!("{}T{:02}:{:02}:{:02}Z", date(t), t.hour(), t.minute(), t.second()))
}

/// `YYYY-MM-DD` of a Unix time (UTC), for `image_build_date`.
pub fn build_date(epoch: i64) -> Result<String> {
    Ok(date(utc(epoch)?))
}

fn utc(epoch: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(epoch).with_context(|| format!("Unix time {epoch} is not a date between the years -9999 and 9999"))
}

// Formatted by hand rather than with `time`'s formatting feature: the spec
// keeps the epoch within 1970–2106, so four digits always suffice, and the
// string is what earlier builds wrote.
fn date(t: OffsetDateTime) -> String {
    format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_735_689_600).unwrap(), "2025-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400 + 3661).unwrap(), "2000-02-29T01:01:01Z");
        assert_eq!(iso8601(i64::from(u32::MAX)).unwrap(), "2106-02-07T06:28:15Z");
        assert_eq!(iso8601(-1).unwrap(), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn build_dates_are_civil_dates() {
        assert_eq!(build_date(0).unwrap(), "1970-01-01");
        assert_eq!(build_date(951_782_400).unwrap(), "2000-02-29");
        assert_eq!(build_date(1_767_225_599).unwrap(), "2025-12-31");
        assert_eq!(build_date(1_767_225_600).unwrap(), "2026-01-01");
        assert_eq!(build_date(4_107_542_400).unwrap(), "2100-03-01", "2100 is no leap year");
    }

    #[test]
    fn dates_beyond_year_9999_are_refused() {
        let err = format!("{:#}", iso8601(i64::MAX).unwrap_err());
        assert!(err.contains("is not a date"), "{err}");
    }
}
