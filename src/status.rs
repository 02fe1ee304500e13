//! `resagent status`: what the daemon keeps on disk (journal, pid file, staging file),
//! rendered for a person or as JSON. Works with no daemon running; never shows a
//! presigned URL's query string.

use crate::config::Config;
use crate::install;
use crate::journal::{self, ConnState, Journal, JournalError, Phase};
use crate::pidfile;
use crate::protocol::{percent, redact_url};
use serde_json::{json, Value};
use std::fmt::Write;

/// What `status` shows, gathered once.
#[derive(Debug, Clone)]
pub(crate) struct StatusView {
    pub(crate) daemon_pid: Option<i32>,
    /// Files in the outbox (name, size), oldest first.
    pub(crate) outbox: Vec<(String, u64)>,
    pub(crate) journal: Journal,
    /// Bytes in the staging file of the download in flight.
    pub(crate) staged_bytes: u64,
    pub(crate) now_ms: u64,
}

pub(crate) fn gather(config: &Config) -> Result<StatusView, JournalError> {
    let journal = Journal::read(&config.journal_path())?;
    let staged_bytes = journal
        .download
        .as_ref()
        .and_then(|d| {
            let p = install::paths(&config.resource_dir, &d.task.name);
            std::fs::metadata(p.staging).ok().map(|m| m.len())
        })
        .unwrap_or(0);
    let outbox = crate::outbox::scan(&config.outbox_dir)
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.size))
        .collect();
    Ok(StatusView {
        daemon_pid: pidfile::running(&config.state_dir).ok(),
        outbox,
        journal,
        staged_bytes,
        now_ms: journal::unix_now_ms(),
    })
}

/// Bytes per second of the current attempt and seconds left, when they can be told.
fn rate_and_eta(v: &StatusView) -> Option<(u64, u64)> {
    let d = v.journal.download.as_ref()?;
    let elapsed_ms = v.now_ms.checked_sub(d.attempt_started_ms)?;
    let gained = v.staged_bytes.checked_sub(d.attempt_start_bytes)?;
    if elapsed_ms < 500 || gained == 0 || d.attempt_started_ms == 0 {
        return None;
    }
    let rate = gained * 1000 / elapsed_ms;
    let left = d.task.size.saturating_sub(v.staged_bytes);
    Some((rate, left.checked_div(rate).unwrap_or(0)))
}

pub(crate) fn render_json(v: &StatusView) -> Value {
    let j = &v.journal;
    let download = j.download.as_ref().map(|d| {
        let (rate, eta) =
            rate_and_eta(v).map_or((Value::Null, Value::Null), |(r, e)| (json!(r), json!(e)));
        let done = if d.phase == Phase::Verified {
            d.task.size
        } else {
            v.staged_bytes
        };
        json!({
            "name": d.task.name,
            "size": d.task.size,
            "md5sum": d.task.md5sum,
            "url": redact_url(&d.task.url),
            "phase": d.phase,
            "bytes": done,
            "percent": percent(done, d.task.size),
            "bytes_per_s": rate,
            "eta_s": eta,
            "held": d.held,
        })
    });
    json!({
        "daemon": { "running": v.daemon_pid.is_some(), "pid": v.daemon_pid },
        "connection": {
            "state": if v.daemon_pid.is_some() { j.connection.state } else { ConnState::Disconnected },
            "broker": j.connection.broker,
            "since": j.connection.since,
        },
        "download": download,
        "waiting": j.waiting.iter().map(|t| json!({"name": t.name, "size": t.size, "md5sum": t.md5sum})).collect::<Vec<_>>(),
        "installed": j.installed,
        "outbox": v.outbox.iter().map(|(name, size)| json!({
            "name": name, "size": size, "state": outbox_state(v, name),
        })).collect::<Vec<_>>(),
        "unacknowledged_reports": j.unacked_reports.len(),
        "pending_reboot": j.pending.iter().map(|(name, p)| json!({
            "name": name, "md5sum": p.task.md5sum, "plugin": p.plugin, "since": p.since,
            "boot_id": p.boot_id, "waits_for": pending_state(p),
            "reboot_command_started": p.reboot_started, "reboot_error": p.reboot_error,
        })).collect::<Vec<_>>(),
        "rolled_back": j.rolled_back,
        "pinned_not_loaded": j.pinned_not_loaded,
    })
}

/// `uploading 45%`, `retry in 30s (reason)` or `queued`.
fn outbox_state(v: &StatusView, name: &str) -> String {
    let j = &v.journal;
    if let Some(u) = j.upload.as_ref().filter(|u| u.name == name) {
        return format!("uploading {}%", u.percent);
    }
    if let Some(k) = j.uploaded_kept.iter().find(|k| k.name == name) {
        return format!("uploaded; cannot leave the outbox: {}", k.reason);
    }
    if let Some(r) = j.upload_retries.get(name) {
        let wait = r.next_at.saturating_sub(v.now_ms / 1000);
        return format!(
            "retry in {} (attempt {} failed: {})",
            human_duration(wait),
            r.attempts,
            r.reason
        );
    }
    "queued".to_string()
}

pub(crate) fn render_text(v: &StatusView) -> String {
    let mut out = String::new();
    let now = v.now_ms / 1000;
    daemon_section(&mut out, v, now);
    download_section(&mut out, v);
    waiting_section(&mut out, v);
    installed_section(&mut out, v, now);
    pending_section(&mut out, v, now);
    rolled_back_section(&mut out, v);
    plugins_section(&mut out, v);
    outbox_section(&mut out, v);
    reports_section(&mut out, v);
    out
}

/// Whether the daemon runs, and its connection.
fn daemon_section(out: &mut String, v: &StatusView, now: u64) {
    let j = &v.journal;
    match v.daemon_pid {
        Some(pid) => {
            let _ = writeln!(out, "Daemon:      running (pid {pid})");
            let state = match j.connection.state {
                ConnState::Connected => "connected to",
                ConnState::Disconnected => "not connected to",
            };
            let _ = writeln!(
                out,
                "Connection:  {state} {} for {}",
                j.connection.broker,
                human_duration(now.saturating_sub(j.connection.since))
            );
        }
        None => {
            let _ = writeln!(out, "Daemon:      not running");
        }
    }
}

/// The download in flight: progress, rate, time left, where from.
fn download_section(out: &mut String, v: &StatusView) {
    let j = &v.journal;
    match &j.download {
        None => {
            let _ = writeln!(out, "Download:    none in progress");
        }
        Some(d) => {
            let done = if d.phase == Phase::Verified {
                d.task.size
            } else {
                v.staged_bytes
            };
            let _ = write!(
                out,
                "Download:    {} — {}% ({} of {})",
                shown(&d.task.name),
                percent(done, d.task.size),
                human_bytes(done),
                human_bytes(d.task.size)
            );
            if let Some(why) = d.held.as_deref().filter(|_| v.daemon_pid.is_some()) {
                let _ = write!(out, ", held: {why}");
            } else if d.phase == Phase::Verified {
                let _ = write!(out, ", verified, installing");
            } else if let Some((rate, eta)) = rate_and_eta(v).filter(|_| v.daemon_pid.is_some()) {
                let _ = write!(
                    out,
                    ", {}/s, about {} left",
                    human_bytes(rate),
                    human_duration(eta)
                );
            } else if v.daemon_pid.is_none() {
                let _ = write!(out, ", paused (resumes when the daemon starts)");
            }
            let _ = writeln!(out, "\n             from {}", redact_url(&d.task.url));
        }
    }
}

/// Tasks waiting their turn.
fn waiting_section(out: &mut String, v: &StatusView) {
    let j = &v.journal;
    if j.waiting.is_empty() {
        let _ = writeln!(out, "Waiting:     none");
    } else {
        let _ = writeln!(out, "Waiting:     {}", j.waiting.len());
        for t in &j.waiting {
            let _ = writeln!(
                out,
                "             {} ({})",
                shown(&t.name),
                human_bytes(t.size)
            );
        }
    }
}

/// What is installed, by whom, since when.
fn installed_section(out: &mut String, v: &StatusView, now: u64) {
    let j = &v.journal;
    if j.installed.is_empty() {
        let _ = writeln!(out, "Installed:   none");
    } else {
        let _ = writeln!(out, "Installed:   {}", j.installed.len());
        for (name, i) in &j.installed {
            let by = i
                .plugin
                .as_deref()
                .map(|p| format!(" by {p}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "             {}  {}  md5 {}  {} ago{by}",
                shown(name),
                human_bytes(i.size),
                i.md5sum,
                human_duration(now.saturating_sub(i.installed_at))
            );
        }
    }
}

/// Installs waiting for a reboot, and a `reboot_command` that failed.
fn pending_section(out: &mut String, v: &StatusView, now: u64) {
    let j = &v.journal;
    if !j.pending.is_empty() {
        let _ = writeln!(
            out,
            "Pending:     {} install(s) wait for a reboot",
            j.pending.len()
        );
        for (name, p) in &j.pending {
            let _ = writeln!(
                out,
                "             {}  md5 {}  written by {} {} ago; {}",
                shown(name),
                p.task.md5sum,
                p.plugin,
                human_duration(now.saturating_sub(p.since)),
                pending_state(p)
            );
            if let Some(e) = &p.reboot_error {
                let _ = writeln!(out, "             {}", shown(e));
            }
        }
    }
}

/// Images the device did not keep.
fn rolled_back_section(out: &mut String, v: &StatusView) {
    let j = &v.journal;
    if !j.rolled_back.is_empty() {
        let _ = writeln!(
            out,
            "Rolled back: {} image(s) the device did not keep; not installed again (resagent retry NAME)",
            j.rolled_back.len()
        );
        for r in &j.rolled_back {
            let _ = writeln!(
                out,
                "             {}  md5 {}  at {}: {}",
                shown(&r.name),
                r.md5sum,
                utc_time(r.at),
                shown(&r.reason)
            );
        }
    }
}

/// Pinned plugins that did not load.
fn plugins_section(out: &mut String, v: &StatusView) {
    let j = &v.journal;
    if !j.pinned_not_loaded.is_empty() {
        let _ = writeln!(
            out,
            "Plugins:     {} pinned plugin(s) not loaded; every download fails -9 until they load",
            j.pinned_not_loaded.len()
        );
        for problem in &j.pinned_not_loaded {
            let _ = writeln!(out, "             {problem}");
        }
    }
}

/// Files waiting to upload, and why each waits.
fn outbox_section(out: &mut String, v: &StatusView) {
    if v.outbox.is_empty() {
        let _ = writeln!(out, "Outbox:      empty");
    } else {
        let _ = writeln!(out, "Outbox:      {}", v.outbox.len());
        for (name, size) in &v.outbox {
            let _ = writeln!(
                out,
                "             {}  {}  {}",
                shown(name),
                human_bytes(*size),
                outbox_state(v, name)
            );
        }
    }
}

/// Final reports not yet acknowledged.
fn reports_section(out: &mut String, v: &StatusView) {
    let j = &v.journal;
    if !j.unacked_reports.is_empty() {
        let _ = writeln!(
            out,
            "Reports:     {} final report(s) wait for the broker's acknowledgement",
            j.unacked_reports.len()
        );
    }
}

/// A name as a terminal may show it: control characters escaped (`\u{1b}` → `\u{1b}`
/// as text), so a hostile name cannot move the cursor or clear the screen.
fn shown(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `1.5 MiB`-style sizes.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// What a pending install waits for: a reboot (it was written in this boot), or its
/// plugin's confirmation (the device rebooted since).
fn pending_state(p: &crate::journal::PendingInstall) -> &'static str {
    if crate::boot::earlier_boot(p.boot_id.as_deref(), p.since) {
        "rebooted since; waiting for the plugin to confirm the new image runs"
    } else {
        "waits for a reboot"
    }
}

/// Unix seconds as `2026-12-02T15:43:07Z`.
pub(crate) fn utc_time(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// `2h 5m`-style durations.
pub(crate) fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_times_are_civil_dates() {
        assert_eq!(super::utc_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc_time(1_796_226_187), "2026-12-02T15:43:07Z");
    }

    #[test]
    fn control_characters_in_names_are_shown_escaped() {
        assert_eq!(shown("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert_eq!(shown("fw-1.2.bin ü"), "fw-1.2.bin ü");
    }

    use super::*;

    fn view() -> StatusView {
        let journal: Journal = serde_json::from_value(json!({
            "connection": {"state": "connected", "broker": "tcp://b:1883", "since": 1000},
            "download": {"task": {"name": "fw.bin", "md5sum": "1".repeat(32), "size": 1000,
                                  "url": "https://cos/fw.bin?sign=SECRET"},
                         "phase": "downloading", "attempt_started_ms": 1_000_000, "attempt_start_bytes": 0},
            "waiting": [{"name": "m", "md5sum": "2".repeat(32), "size": 5, "url": "https://cos/m?sign=SECRET"}],
            "installed": {"old": {"md5sum": "3".repeat(32), "size": 2048, "installed_at": 900}},
            "upload": {"name": "log.tgz", "md5sum": "4".repeat(32), "size": 10, "state": "uploading", "percent": 40},
            "upload_retries": {"snap.jpg": {"attempts": 2, "next_at": 1030, "reason": "HTTP 500"}}
        }))
        .unwrap();
        StatusView {
            daemon_pid: Some(42),
            outbox: vec![("log.tgz".into(), 10), ("snap.jpg".into(), 20)],
            journal,
            staged_bytes: 250,
            now_ms: 1_005_000,
        }
    }

    #[test]
    fn text_shows_percent_rate_eta_and_no_signature() {
        let t = render_text(&view());
        assert!(t.contains("running (pid 42)"), "{t}");
        assert!(t.contains("connected to tcp://b:1883"), "{t}");
        assert!(t.contains("fw.bin — 25% (250 B of 1000 B)"), "{t}");
        assert!(t.contains("50 B/s, about 15s left"), "{t}");
        assert!(t.contains("old  2.0 KiB"), "{t}");
        assert!(!t.contains("SECRET"), "{t}");
        assert!(t.contains("log.tgz  10 B  uploading 40%"), "{t}");
        assert!(
            t.contains("snap.jpg  20 B  retry in 25s (attempt 2 failed: HTTP 500)"),
            "{t}"
        );
    }

    #[test]
    fn json_has_the_same_facts() {
        let j = render_json(&view());
        assert_eq!(j["download"]["percent"], 25);
        assert_eq!(j["download"]["bytes_per_s"], 50);
        assert_eq!(j["waiting"][0]["name"], "m");
        assert_eq!(j["installed"]["old"]["size"], 2048);
        assert!(!j.to_string().contains("SECRET"));
    }

    #[test]
    fn without_a_daemon_the_download_is_paused() {
        let mut v = view();
        v.daemon_pid = None;
        let t = render_text(&v);
        assert!(t.contains("not running"));
        assert!(t.contains("paused"));
        assert_eq!(render_json(&v)["connection"]["state"], "disconnected");
    }
}
