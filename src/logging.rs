//! Where log lines go: stderr, as text (the default) or as JSON, one object
//! per line, for log shippers (`--log-format json`).
//!
//! Owns: the JSON logger and the choice between the two. Must not touch:
//! anything the server does; it only formats what `log` hands it.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::{LogFormat, LogLevel};

/// Installs the logger of `format` at `level`. A logger already installed
/// (a second call) is left as it is.
pub fn init(level: LogLevel, format: LogFormat) {
    match format {
        LogFormat::Text => {
            // Fails only when a logger is installed already.
            let _ = simple_logger::SimpleLogger::new()
                .with_level(level.filter())
                .with_utc_timestamps()
                .init();
        }
        LogFormat::Json => {
            if log::set_boxed_logger(Box::new(JsonLogger {
                level: level.filter(),
            }))
            .is_ok()
            {
                log::set_max_level(level.filter());
            }
        }
    }
}

/// One JSON object per line on stderr: `time` (RFC 3339, UTC, ms),
/// `level`, `target`, `message`.
struct JsonLogger {
    level: log::LevelFilter,
}

impl log::Log for JsonLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = json_line(
            SystemTime::now(),
            record.level(),
            record.target(),
            &record.args().to_string(),
        );
        line.push('\n');
        // One write per line, so lines never interleave; a log line that
        // cannot be written is lost, never a reason to stop.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// The JSON object of one log line.
fn json_line(at: SystemTime, level: log::Level, target: &str, message: &str) -> String {
    serde_json::json!({
        "time": rfc3339(at),
        "level": level.as_str(),
        "target": target,
        "message": message,
    })
    .to_string()
}

/// `at` as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The Gregorian date `days` days after 1970-01-01. Counts in 400-year
/// eras (146,097 days each) from 0000-03-01, so that the leap day ends a
/// year.
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153; // March = 0
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(59), (1970, 3, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(11_017), (2000, 3, 1));
        assert_eq!(civil_date(19_782), (2024, 2, 29));
        assert_eq!(civil_date(20_453), (2025, 12, 31));
        let at = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339(at), "2024-02-29T12:34:56.789Z");
    }

    #[test]
    fn a_line_is_one_object_with_four_fields() {
        let line = json_line(UNIX_EPOCH, log::Level::Warn, "switchboard::x", "a \"b\"\nc");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "switchboard::x");
        assert_eq!(v["message"], "a \"b\"\nc");
        assert_eq!(v.as_object().unwrap().len(), 4);
        assert!(!line.contains('\n'));
    }
}
