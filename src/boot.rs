//! Which boot of the device this is: the fact that tells a restart of the agent from a
//! reboot of the device (docs/agent.md, "Installs pending a reboot"). The kernel makes a
//! new random `boot_id` at every boot; a crash, the watchdog's kill, `systemctl restart`
//! or the OOM killer leave it as it was. `RESAGENT_BOOT_ID_FILE` names another file to
//! read instead — for tests, and for containers that share the host's kernel.

use std::path::PathBuf;

/// The environment variable naming the file to read the boot identity from.
pub(crate) const BOOT_ID_ENV: &str = "RESAGENT_BOOT_ID_FILE";
/// The kernel's identity of this boot.
const KERNEL_BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The identity of this boot (its first line, trimmed), or an error naming the file.
/// Read at every question, not once: a test changes the file to "reboot".
pub(crate) fn current() -> Result<String, String> {
    let path = std::env::var_os(BOOT_ID_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(KERNEL_BOOT_ID));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the boot identity {}: {e}", path.display()))?;
    let id = text.lines().next().unwrap_or("").trim();
    if id.is_empty() || id.len() > 128 {
        return Err(format!(
            "the boot identity {} is empty or over 128 bytes",
            path.display()
        ));
    }
    Ok(id.to_string())
}

/// Whether something recorded in boot `recorded` happened in an earlier boot than this
/// one. `None` (an install recorded by a resagent before boot identities) is judged by
/// the clock: earlier when it was recorded over a minute before this boot began. When
/// the boot cannot be told, the answer is "not earlier": an install then stays pending,
/// which is never a false report.
pub(crate) fn earlier_boot(recorded: Option<&str>, recorded_at_unix: u64) -> bool {
    match (recorded, current()) {
        (Some(r), Ok(now)) => r != now,
        (Some(_), Err(e)) => {
            log::warn!("{e}; a pending install waits");
            false
        }
        (None, _) => boot_started_unix().is_some_and(|b| recorded_at_unix + 60 < b),
    }
}

/// Unix seconds when this boot began (the clock now minus `/proc/uptime`).
fn boot_started_unix() -> Option<u64> {
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let secs: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    crate::journal::unix_now().checked_sub(secs as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_boot_id_is_read_and_an_earlier_boot_is_told_apart() {
        // The test process does not set RESAGENT_BOOT_ID_FILE: the kernel's id.
        let now = current().unwrap();
        assert_eq!(now.len(), 36, "{now}");
        assert!(!earlier_boot(Some(&now), 0), "same boot");
        assert!(earlier_boot(Some("another-boot"), 0));
        // Without an id: by the clock.
        assert!(earlier_boot(None, 1), "recorded in 1970: an earlier boot");
        assert!(!earlier_boot(None, crate::journal::unix_now()), "just now");
    }
}
