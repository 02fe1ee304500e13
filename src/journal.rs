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
}

impl InFlight {
    pub(crate) fn new(task: Task) -> Self {
        InFlight {
            task,
            phase: Phase::Downloading,
            etag: None,
            attempt_started_ms: 0,
            attempt_start_bytes: 0,
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
}

/// The upload in flight, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UploadInFlight {
    pub(crate) name: String,
    pub(crate) md5sum: String,
    pub(crate) size: u64,
    pub(crate) state: ProgressState,
    pub(crate) percent: u8,
}

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

/// The journal shared by the agent's threads: every change goes through [`update`],
/// which persists it before returning.
///
/// [`update`]: JournalStore::update
pub(crate) struct JournalStore {
    path: PathBuf,
    journal: Mutex<Journal>,
}

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
            journal: Mutex::new(journal),
        })
    }

    /// A copy of the journal as it is now.
    pub(crate) fn snapshot(&self) -> Journal {
        self.lock().clone()
    }

    /// Applies `change` and saves the result atomically. The change stays in memory even
    /// when saving fails (the next successful save carries it); the error says why.
    pub(crate) fn update<R>(
        &self,
        change: impl FnOnce(&mut Journal) -> R,
    ) -> Result<R, JournalError> {
        let mut journal = self.lock();
        let before = journal.clone();
        let result = change(&mut journal);
        if *journal != before {
            let bytes = serde_json::to_vec_pretty(&*journal).expect("journal serialises");
            fsutil::atomically_write_file_sync(&self.path, &bytes, JOURNAL_MODE)?;
        }
        Ok(result)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        // A panic elsewhere while holding the lock leaves a journal that is still whole.
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
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
            .update(|j| {
                j.installed.insert(
                    "a".into(),
                    Installed {
                        md5sum: "0".repeat(32),
                        size: 1,
                        installed_at: 5,
                        plugin: None,
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
