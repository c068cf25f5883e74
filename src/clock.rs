//! Wall-clock timestamps as every event and API answer shows them:
//! ISO-8601 UTC with milliseconds (`2026-11-26T05:17:52.455Z`).

use std::time::SystemTime;

pub fn iso8601(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// The current time as ISO-8601 UTC with milliseconds (`2026-11-26T05:17:52.455Z`), as every `timestamp` field carries it.
pub fn now_iso8601() -> String {
    iso8601(SystemTime::now())
}
