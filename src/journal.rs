//! The journal: everything the agent must remember across a kill or a reboot — the
//! download in flight, the waiting tasks, the installed resources, final reports not yet
//! acknowledged, the connection state for `status` — in one JSON file in `state_dir`,
//! mode 0600 (it holds presigned URLs), replaced atomically at every state change.

use crate::fsutil::{self, FsError};
use crate::protocol::{ProgressState, Report, Task};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use thiserror::Error;

/// Errors of the journal, naming its path.
#[derive(Debug, Error)]
pub(crate) enum JournalError {
    /// Writing the journal failed (full disk, read-only `state_dir`, I/O error).
    #[error("cannot save the journal: {0}")]
    Write(#[from] FsError),
    /// The journal exists but cannot be read.
    #[error("cannot read the journal {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The journal is not what resagent writes (damaged or edited by hand).
    #[error("the journal {} is damaged: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// Whether the daemon holds a session with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ConnState {
    #[default]
    Disconnected,
    Connected,
}

/// The connection as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(crate) struct Connection {
    pub(crate) state: ConnState,
    /// The broker URI (no credentials in it).
    pub(crate) broker: String,
    /// Unix seconds of the last change of `state`.
    pub(crate) since: u64,
}

/// How far the download in flight has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Phase {
    /// Bytes are arriving in the staging file.
    #[default]
    Downloading,
    /// The staging file is complete and its MD5 matched: only installing is left.
    Verified,
}

/// The download in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InFlight {
    pub(crate) task: Task,
    #[serde(default)]
    pub(crate) phase: Phase,
    /// The ETag of the first response, so a resume goes on only with the same content.
    #[serde(default)]
    pub(crate) etag: Option<String>,
    /// Unix milliseconds when the current attempt started, and the bytes on disk then:
    /// `status` derives the rate from them and the staging file's size.
    #[serde(default)]
    pub(crate) attempt_started_ms: u64,
    #[serde(default)]
    pub(crate) attempt_start_bytes: u64,
    /// Install attempts begun for the verified file (recorded before the chain runs): a
    /// start that finds one without an outcome knows a reboot or a crash cut it short.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) install_attempts: u32,
    /// The install plugin called last in that attempt (asked `resagent_installed`
    /// after a cut), none while no install plugin was called.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) install_plugin: Option<String>,
    /// Why the task waits, while it does: outside `download_windows`, or a gate said
    /// "later" (`status` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) held: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl InFlight {
    pub(crate) fn new(task: Task) -> Self {
        InFlight {
            task,
            phase: Phase::Downloading,
            etag: None,
            attempt_started_ms: 0,
            attempt_start_bytes: 0,
            install_attempts: 0,
            install_plugin: None,
            held: None,
        }
    }
}

/// One installed resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Installed {
    pub(crate) md5sum: String,
    pub(crate) size: u64,
    /// Unix seconds.
    pub(crate) installed_at: u64,
    /// The install plugin that took it, or none for the default installer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) plugin: Option<String>,
    /// The same plugin installed another resource since: for a plugin that cannot say
    /// what it holds (no `resagent_installed`), this one is no longer taken as installed
    /// (an A/B plugin holds one image).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) superseded: bool,
}

/// An install a plugin wrote but that takes effect after a reboot (`RESAGENT_PENDING`):
/// its task stays open until the plugin's `resagent_confirm` answers in a later boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PendingInstall {
    /// The task as offered (its name is the one reported).
    pub(crate) task: Task,
    /// What the install wrote, when it is not the task itself: the target a patch
    /// (`NAME.rdelta`) rebuilt — the plugin confirms that name and MD5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<Task>,
    /// The install plugin that returned pending (asked to confirm).
    pub(crate) plugin: String,
    /// Unix seconds of the install.
    pub(crate) since: u64,
    /// The boot the install was made in (`boot::current`): confirm is asked only in
    /// another one. None: recorded by an older resagent (judged by the clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) boot_id: Option<String>,
    /// `reboot_command` was started for this install (once per install).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) reboot_started: bool,
    /// Why `reboot_command` failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reboot_error: Option<String>,
}

/// An image whose confirmation failed (the device rolled back): the same name and MD5
/// are never installed again automatically (docs/agent.md, "Installs pending a reboot").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RolledBack {
    pub(crate) name: String,
    pub(crate) md5sum: String,
    /// Unix seconds of the failed confirmation.
    pub(crate) at: u64,
    /// The plugin's reason.
    pub(crate) reason: String,
}

/// Rolled-back images remembered at most; the oldest go first.
pub(crate) const MAX_ROLLED_BACK: usize = 64;

/// The upload in flight, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UploadInFlight {
    pub(crate) name: String,
    pub(crate) md5sum: String,
    pub(crate) size: u64,
    pub(crate) state: ProgressState,
    pub(crate) percent: u8,
}

/// An outbox file that was uploaded (its `done` confirmed) but could not be removed — a
/// read-only outbox after an I/O error: never sent again while the same file (device,
/// inode, size, change time) stays, and its removal is tried again now and then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeptUpload {
    pub(crate) name: String,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) ctime_ns: i64,
    /// Why it could not be removed.
    pub(crate) reason: String,
}

/// Kept uploads remembered at most (each is a file in the outbox).
pub(crate) const MAX_KEPT_UPLOADS: usize = 1024;

/// An outbox file waiting to be tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UploadRetry {
    pub(crate) attempts: u32,
    /// Unix seconds of the next try.
    pub(crate) next_at: u64,
    pub(crate) reason: String,
}

/// The whole journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(crate) struct Journal {
    #[serde(default)]
    pub(crate) connection: Connection,
    #[serde(default)]
    pub(crate) download: Option<InFlight>,
    /// Tasks waiting for the download in flight, in order of arrival.
    #[serde(default)]
    pub(crate) waiting: Vec<Task>,
    #[serde(default)]
    pub(crate) installed: BTreeMap<String, Installed>,
    /// Final reports published but not yet acknowledged by the broker.
    #[serde(default)]
    pub(crate) unacked_reports: Vec<Report>,
    /// The upload in flight (the file itself stays in the outbox until it is confirmed,
    /// so after a kill it is simply announced again).
    #[serde(default)]
    pub(crate) upload: Option<UploadInFlight>,
    /// Outbox files whose last attempt failed, by name.
    #[serde(default)]
    pub(crate) upload_retries: BTreeMap<String, UploadRetry>,
    /// Uploaded outbox files that could not be removed (never sent again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) uploaded_kept: Vec<KeptUpload>,
    /// Installs waiting for a reboot and their confirmation, by resource name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) pending: BTreeMap<String, PendingInstall>,
    /// Images whose confirmation failed, oldest first (at most [`MAX_ROLLED_BACK`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) rolled_back: Vec<RolledBack>,
    /// Pinned plugins that did not load at the last scan (downloads fail -9 meanwhile).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) pinned_not_loaded: Vec<String>,
}

impl Journal {
    /// Reads a journal; a missing file is an empty journal.
    pub(crate) fn read(path: &Path) -> Result<Journal, JournalError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Journal::default()),
            Err(source) => {
                return Err(JournalError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes).map_err(|e| JournalError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// The journal shared by the agent's threads. Every change is saved before the call
/// returns, under one of two policies — the one explicit answer to a journal that cannot
/// be written (a full or read-only `state_dir`):
/// - [`accept`]: a change that counts only once it is on disk (a task accepted from the
///   platform). The save is tried [`SAVE_TRIES`] times; when it still fails, memory stays
///   as it was and the caller gets the error (and fails the task -11), so nothing waits
///   in memory for a disk that is full.
/// - [`record`]: a change that is already true on the device (a task installed, failed
///   or cleared, a report acknowledged, the connection state). Memory moves forward at
///   once; a save that fails is logged and tried again by [`retry_save`] (the
///   coordinator calls it every few seconds) or carried by the next save.
///
/// [`accept`]: JournalStore::accept
/// [`record`]: JournalStore::record
/// [`retry_save`]: JournalStore::retry_save
pub(crate) struct JournalStore {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    journal: Journal,
    /// Memory is ahead of the file: a save failed.
    unsaved: bool,
}

/// Attempts of an [`JournalStore::accept`] save before the change is refused.
const SAVE_TRIES: u32 = 3;
/// Pause between those attempts.
const SAVE_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Mode of the journal: it holds presigned URLs (docs/agent.md).
const JOURNAL_MODE: u32 = 0o600;

impl JournalStore {
    /// Opens the journal at `path`. A damaged journal is set aside (renamed with a
    /// `.damaged` suffix) and the agent starts with an empty one: the installed files stay
    /// where they are, and a repeated task downloads again instead of the agent refusing
    /// to start.
    pub(crate) fn open(path: &Path) -> Result<JournalStore, JournalError> {
        let journal = match Journal::read(path) {
            Ok(j) => j,
            Err(JournalError::Corrupt { reason, .. }) => {
                let aside = path.with_extension("json.damaged");
                log::error!(
                    "journal {} is damaged ({reason}); moved it to {} and starting with an empty one",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(path, &aside)
                    .map_err(|e| JournalError::Write(FsError::new("rename", path, e)))?;
                Journal::default()
            }
            Err(e) => return Err(e),
        };
        Ok(JournalStore {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                journal,
                unsaved: false,
            }),
        })
    }

    /// A copy of the journal as it is now (in memory).
    pub(crate) fn snapshot(&self) -> Journal {
        self.lock().journal.clone()
    }

    /// Applies `change` only if it can be saved (see the type's policy): on failure after
    /// [`SAVE_TRIES`] attempts, memory is unchanged and the error names file and cause.
    pub(crate) fn accept<R>(
        &self,
        change: impl FnOnce(&mut Journal) -> R,
    ) -> Result<R, JournalError> {
        let mut state = self.lock();
        let mut next = state.journal.clone();
        let result = change(&mut next);
        // A change that changes nothing saves nothing: a re-offer of the task in flight
        // (the platform's answer to every poll) is not refused because an earlier
        // record waits for the disk.
        if next != state.journal {
            let mut tries = 0;
            loop {
                tries += 1;
                match self.save(&next) {
                    Ok(()) => break,
                    Err(e) if tries >= SAVE_TRIES => return Err(e),
                    Err(_) => std::thread::sleep(SAVE_PAUSE),
                }
            }
            state.journal = next;
            state.unsaved = false;
        }
        Ok(result)
    }

    /// Applies `change` in memory and saves it; a failed save is logged (once until a
    /// save works again) and retried later (see the type's policy).
    pub(crate) fn record<R>(&self, change: impl FnOnce(&mut Journal) -> R) -> R {
        let mut state = self.lock();
        let before = state.journal.clone();
        let result = change(&mut state.journal);
        if state.journal != before || state.unsaved {
            self.save_state(&mut state);
        }
        result
    }

    /// Saves again what a failed save left in memory only; whether memory is now behind
    /// nothing (true: saved, or nothing was pending).
    pub(crate) fn retry_save(&self) -> bool {
        let mut state = self.lock();
        if state.unsaved {
            self.save_state(&mut state);
        }
        !state.unsaved
    }

    /// Whether memory is ahead of the file.
    pub(crate) fn unsaved(&self) -> bool {
        self.lock().unsaved
    }

    fn save_state(&self, state: &mut State) {
        match self.save(&state.journal) {
            Ok(()) => {
                if state.unsaved {
                    log::info!("journal {} saved again", self.path.display());
                }
                state.unsaved = false;
            }
            Err(e) => {
                if !state.unsaved {
                    log::error!("{e}; the change is kept in memory and saved again shortly");
                }
                state.unsaved = true;
            }
        }
    }

    fn save(&self, journal: &Journal) -> Result<(), JournalError> {
        let bytes = serde_json::to_vec_pretty(journal).expect("journal serialises");
        fsutil::atomically_write_file_sync(&self.path, &bytes, JOURNAL_MODE)?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves a journal that is still whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix milliseconds now.
pub(crate) fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn updates_persist_with_mode_0600() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal.json");
        let store = JournalStore::open(&p).unwrap();
        store
            .accept(|j| {
                j.installed.insert(
                    "a".into(),
                    Installed {
                        md5sum: "0".repeat(32),
                        size: 1,
                        installed_at: 5,
                        plugin: None,
                        superseded: false,
                    },
                )
            })
            .unwrap();
        let back = Journal::read(&p).unwrap();
        assert_eq!(back.installed["a"].size, 1);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_journal_that_cannot_be_saved_refuses_accepts_and_keeps_records_until_it_can() {
        let d = tempfile::tempdir().unwrap();
        let folder = d.path().join("state");
        let store = JournalStore::open(&folder.join("journal.json")).unwrap();
        let task: Task = serde_json::from_value(serde_json::json!({
            "name": "a", "md5sum": "1".repeat(32), "size": 1, "url": "https://s/a"
        }))
        .unwrap();
        let refused = store.accept(|j| j.waiting.push(task.clone()));
        assert!(
            matches!(refused, Err(JournalError::Write(_))),
            "no folder: {refused:?}"
        );
        assert!(store.snapshot().waiting.is_empty(), "memory unchanged");
        assert!(!store.unsaved());

        store.record(|j| j.connection.since = 7);
        assert_eq!(store.snapshot().connection.since, 7, "memory moved forward");
        assert!(store.unsaved());
        assert!(!store.retry_save(), "still no folder");
        assert_eq!(
            store.accept(|j| j.waiting.len()).ok(),
            Some(0),
            "an accept that changes nothing is not refused while a record waits"
        );
        assert!(store.unsaved());

        std::fs::create_dir(&folder).unwrap();
        assert!(store.retry_save());
        assert_eq!(
            Journal::read(&folder.join("journal.json"))
                .unwrap()
                .connection
                .since,
            7
        );
        store.accept(|j| j.waiting.push(task.clone())).unwrap();
        assert_eq!(
            Journal::read(&folder.join("journal.json")).unwrap().waiting,
            vec![task]
        );
    }

    #[test]
    fn a_damaged_journal_is_set_aside() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal.json");
        std::fs::write(&p, b"{ not json").unwrap();
        let store = JournalStore::open(&p).unwrap();
        assert_eq!(store.snapshot(), Journal::default());
        assert!(d.path().join("journal.json.damaged").exists());
    }

    #[test]
    fn an_older_journal_without_new_fields_still_reads() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("journal.json");
        std::fs::write(&p, br#"{"installed":{"x":{"md5sum":"00000000000000000000000000000000","size":3,"installed_at":1}}}"#).unwrap();
        let j = Journal::read(&p).unwrap();
        assert_eq!(j.installed["x"].size, 3);
        assert!(j.download.is_none());
    }
}
