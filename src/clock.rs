//! Wall-clock timestamps as every event and API answer shows them:
//! ISO-8601 UTC with milliseconds (`2026-11-26T05:17:52.455Z`).

use std::cell::RefCell;
use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `time` as ISO-8601 UTC with milliseconds.
///
/// Each thread keeps the text of the last whole second it formatted
/// (`2026-11-26T05:17:52.`), so a timestamp within the same second only
/// appends its milliseconds: a handshake carries two timestamps (`connected`,
/// `authenticated`), and the calendar arithmetic and formatting machinery
/// behind each was a visible part of its user-space profile.
pub fn iso8601(time: SystemTime) -> String {
    // Before 1970 (a clock set wrong) reads as the epoch rather than panic.
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (second, millis) = (since_epoch.as_secs(), since_epoch.subsec_millis());
    thread_local! {
        static LAST_SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    LAST_SECOND.with_borrow_mut(|(cached, prefix)| {
        if *cached != second {
            // `…:52Z` → `…:52.`
            prefix.clear();
            let _ = write!(prefix, "{}", humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(second)));
            prefix.pop();
            prefix.push('.');
            *cached = second;
        }
        let mut text = String::with_capacity(prefix.len() + 4);
        text.push_str(prefix);
        let _ = write!(text, "{millis:03}Z");
        text
    })
}

/// The current time as ISO-8601 UTC with milliseconds (`2026-11-26T05:17:52.455Z`), as every `timestamp` field carries it.
pub fn now_iso8601() -> String {
    iso8601(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached second must never leak into another: times across second,
    /// minute, day and year boundaries, in and out of order, read exactly as
    /// a fresh formatting of each does.
    #[test]
    fn matches_a_fresh_formatting_across_boundaries() {
        let starts = [0u64, 59, 86_399, 951_782_399, 1_767_225_599, 1_798_761_599];
        for start in starts {
            for step_ms in [0u64, 1, 999, 1_000, 1_001, 61_000, 3_600_000] {
                for back in [false, true] {
                    let base = UNIX_EPOCH + Duration::from_secs(start) + Duration::from_millis(998);
                    let time = if back { base - Duration::from_millis(step_ms) } else { base + Duration::from_millis(step_ms) };
                    if time < UNIX_EPOCH {
                        continue;
                    }
                    assert_eq!(iso8601(time), humantime::format_rfc3339_millis(time).to_string(), "{time:?}");
                }
            }
        }
    }

    #[test]
    fn a_time_before_1970_reads_as_the_epoch() {
        assert_eq!(iso8601(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn keeps_three_digits_of_milliseconds() {
        let time = UNIX_EPOCH + Duration::from_millis(1_764_134_272_005);
        assert_eq!(iso8601(time), "2025-11-26T05:17:52.005Z");
        assert_eq!(iso8601(time + Duration::from_micros(999)), "2025-11-26T05:17:52.005Z");
    }
}
