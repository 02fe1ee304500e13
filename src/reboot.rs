//! Installs pending a reboot, seen from the platform: the `burning` 100 "reboot pending"
//! report (journaled like a final report, so a link that is down as the install ends
//! still hears it after the next connect), and `reboot_command`, run on that report's
//! first acknowledgement — once per install — whose failure is reported, not only logged
//! (docs/agent.md, "Installs pending a reboot").

use crate::config::Config;
use crate::gate::{self, Verdict, Which};
use crate::journal::JournalStore;
use crate::protocol::{Direction, ProgressState, Report, ResultCode};
use crate::report::Reporter;
use crate::shutdown::Shutdown;
use std::sync::Arc;

/// The report that an install waits for a reboot: `burning` 100, result code 0.
pub(crate) fn pending_report(name: &str, plugin: &str, extra: Option<&str>) -> Report {
    let mut report = Report::progress(Direction::Download, name, ProgressState::Burning, 100);
    report.result_msg = match extra {
        Some(extra) => format!("reboot pending (plugin {plugin}); {extra}"),
        None => format!("reboot pending (plugin {plugin})"),
    };
    report
}

/// Whether `report` is a "reboot pending" report (so its acknowledgement may start
/// `reboot_command`).
pub(crate) fn is_pending_report(report: &Report) -> bool {
    report.direction == Direction::Download
        && report.state == ProgressState::Burning
        && report.result_msg.starts_with("reboot pending")
}

/// The "reboot pending" report of `name` was acknowledged: runs `reboot_command` if this
/// install has not run it yet (recorded first: a kill right after never runs it twice).
/// Its failure is recorded for `status` and reported as `burning` 100 naming the command
/// and its exit status; the install stays pending.
pub(crate) fn after_acknowledged(
    config: &Config,
    journal: &Arc<JournalStore>,
    reporter: &Arc<Reporter>,
    shutdown: &Shutdown,
    name: &str,
) {
    let Some(cmd) = config.reboot_command.clone() else {
        log::info!("{name}: a reboot is pending (no reboot_command)");
        return;
    };
    let plugin = journal.record(|j| match j.pending.get_mut(name) {
        Some(p) if !p.reboot_started => {
            p.reboot_started = true;
            Some(p.plugin.clone())
        }
        _ => None,
    });
    let Some(plugin) = plugin else { return };
    let (store, reporter, owned) = (journal.clone(), reporter.clone(), name.to_string());
    let (gate, stop) = (Gate::of(config, name, journal), shutdown.clone());
    let spawned = std::thread::Builder::new()
        .name("reboot".into())
        .spawn(move || {
            if let Some(gate) = gate {
                if !gate.allows(&store, &reporter, &stop, &owned, &plugin) {
                    return;
                }
            }
            log::info!("{owned}: running reboot_command `{cmd}`");
            let failure = match crate::plugin::plain_command(&cmd).status() {
                Ok(st) if st.success() => {
                    log::info!("reboot_command finished");
                    return;
                }
                Ok(st) => format!("reboot_command `{cmd}` failed: {st}"),
                Err(e) => format!("reboot_command `{cmd}` could not run: {e}"),
            };
            let name = owned;
            log::error!("{name}: {failure}; the install stays pending");
            let still_pending = store.record(|j| match j.pending.get_mut(&name) {
                Some(p) => {
                    p.reboot_error = Some(failure.clone());
                    true
                }
                None => false,
            });
            if still_pending {
                reporter.final_report(pending_report(&name, &plugin, Some(&failure)));
            }
        });
    if let Err(e) = spawned {
        log::error!("{name}: cannot start the reboot thread: {e}");
        journal.record(|j| {
            if let Some(p) = j.pending.get_mut(name) {
                p.reboot_error = Some(format!("cannot start reboot_command: {e}"));
            }
        });
    }
}

/// `reboot_gate_command` and what it is asked with.
struct Gate {
    command: String,
    env: Vec<(&'static str, String)>,
    timeout: std::time::Duration,
    retry: std::time::Duration,
}

impl Gate {
    fn of(config: &Config, name: &str, journal: &JournalStore) -> Option<Gate> {
        let command = config.reboot_gate_command.clone()?;
        let md5 = journal
            .snapshot()
            .pending
            .get(name)
            .map(|p| p.task.md5sum.clone())
            .unwrap_or_default();
        Some(Gate {
            command,
            env: vec![
                ("RESAGENT_NAME", name.to_string()),
                (
                    "RESAGENT_PATH",
                    config.resource_dir.join(name).display().to_string(),
                ),
                ("RESAGENT_MD5", md5),
            ],
            timeout: config.plugin_timeout,
            retry: config.gate_retry,
        })
    }

    /// Asks until the gate says go (true) or no (false: `fail` -5 with its line, the
    /// pending install forgotten). "Not now" is reported as `burning` 100 with the line
    /// and asked again after `gate_retry_s`. A stop ends the wait with nothing decided:
    /// `reboot_command` may run after the next start (its once-only mark is undone).
    fn allows(
        &self,
        store: &JournalStore,
        reporter: &Reporter,
        stop: &Shutdown,
        name: &str,
        plugin: &str,
    ) -> bool {
        let undo_mark = || {
            store.record(|j| {
                if let Some(p) = j.pending.get_mut(name) {
                    p.reboot_started = false;
                }
            })
        };
        loop {
            let Ok(verdict) =
                gate::ask(&self.command, Which::Reboot, &self.env, self.timeout, stop)
            else {
                undo_mark();
                return false;
            };
            match verdict {
                Verdict::Go => return true,
                Verdict::Later(line) => {
                    log::info!(
                        "{name}: the reboot gate says not now: {line}; asking again in {} s",
                        self.retry.as_secs()
                    );
                    let extra = format!("reboot gate: not now: {line}");
                    reporter.final_report(pending_report(name, plugin, Some(&extra)));
                    if stop.sleep(self.retry) || stop.is_set() {
                        undo_mark();
                        return false;
                    }
                }
                Verdict::Refused(reason) => {
                    log::error!("{name}: {reason}; not rebooting, the install is reported failed");
                    store.record(|j| {
                        j.pending.remove(name);
                    });
                    reporter.final_report(Report::fail(
                        Direction::Download,
                        name,
                        100,
                        ResultCode::InstallFailed,
                        &reason,
                    ));
                    return false;
                }
            }
        }
    }
}
