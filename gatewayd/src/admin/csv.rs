//! Call records as CSV (the admin site's Export CSV) and the times and
//! durations the pages show.

use crate::db::CdrRow;

/// Unix ms as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn iso_time(ms: impl std::borrow::Borrow<i64>) -> String {
    let ms = *ms.borrow();
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The start of a `YYYY-MM-DD` day (UTC) in Unix ms.
pub fn day_start_ms(date: &str) -> Option<i64> {
    let mut it = date.trim().splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400_000)
}

// Howard Hinnant's civil-date algorithms.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds talked (answer to end; 0 when not answered).
pub fn talk_secs(r: &CdrRow) -> i64 {
    r.answer_ms
        .map(|a| (r.end_ms - a).max(0) / 1000)
        .unwrap_or(0)
}

/// `H:MM:SS` talked.
pub fn duration(r: &CdrRow) -> String {
    let s = talk_secs(r);
    format!("{}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// One CSV field: quoted when it must be, and never read as a formula by
/// a spreadsheet.
fn field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The header line of [`csv`].
pub const HEADER: &str = "Record,From,Number,Started,Duration,Outcome";

/// Records as CSV: `Record,From,Number,Started,Duration,Outcome`, with
/// Started in UTC and Duration in seconds talked.
pub fn csv(rows: &[CdrRow]) -> String {
    let mut out = String::from(HEADER);
    out.push_str("\r\n");
    for r in rows {
        let line = [
            r.id.to_string(),
            field(&r.caller),
            field(&r.callee),
            iso_time(r.start_ms),
            talk_secs(r).to_string(),
            field(&r.outcome),
        ]
        .join(",");
        out.push_str(&line);
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(caller: &str) -> CdrRow {
        CdrRow {
            id: 3,
            call_id: Some(9),
            caller: caller.into(),
            callee: "202".into(),
            start_ms: 1_796_468_400_123,
            answer_ms: Some(1_796_468_401_000),
            end_ms: 1_796_468_466_000,
            outcome: "answered".into(),
        }
    }

    #[test]
    fn times_and_csv() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_time(1_796_468_400_123), "2026-12-05T11:00:00Z");
        assert_eq!(day_start_ms("2026-12-05"), Some(1_796_428_800_000));
        assert_eq!(
            iso_time(day_start_ms("2024-02-29").unwrap_or(0)),
            "2024-02-29T00:00:00Z"
        );
        assert_eq!(day_start_ms("2026-13-01"), None);
        assert_eq!(day_start_ms("yesterday"), None);
        assert_eq!(duration(&row("201")), "0:01:05");
        let text = csv(&[row("201"), row("=cmd|\"x\",y")]);
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], HEADER);
        assert_eq!(lines[1], "3,201,202,2026-12-05T11:00:00Z,65,answered");
        assert_eq!(
            lines[2],
            "3,\"'=cmd|\"\"x\"\",y\",202,2026-12-05T11:00:00Z,65,answered"
        );
    }
}
