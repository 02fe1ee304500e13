//! The folders of the configuration, checked against one another: none may feed
//! another (docs/agent.md, "What never wedges"), compared where they really are.

use super::keys::Keys;
use super::ConfigError;
use std::path::{Path, PathBuf};

/// `path` with `.` and `..` resolved lexically (the folders may not exist yet).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Where `path` really is: the longest part of it that exists, with its symbolic links
/// resolved, then the rest as written (a folder not created yet). Folders are compared
/// so: `plugin_dir` as a symlink to `resource_dir` is the same folder, whatever the text.
fn resolved(path: &Path) -> PathBuf {
    let path = lexical(path);
    let mut existing = path.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return path,
        }
    }
}

/// Folders that would let one feed another are refused (docs/agent.md, "What never
/// wedges"): no two may be the same, and nothing may live inside `resource_dir` or
/// `outbox_dir`, whose entries are named by the network and by users (a task `x.so`
/// landing in `plugin_dir`, a resource unpacked into the outbox). `resource_dir` inside
/// `state_dir` (the default layout) is fine: the agent names everything it writes there.
pub(super) fn check_folders(keys: &Keys, dirs: &[(&str, &PathBuf)]) -> Result<(), ConfigError> {
    for (i, (a, pa)) in dirs.iter().enumerate() {
        for (b, pb) in dirs.iter().skip(i + 1) {
            let (la, lb) = (resolved(pa), resolved(pb));
            let receives = |name: &str| matches!(name, "resource_dir" | "outbox_dir");
            let problem = if la == lb {
                Some(format!("{a} and {b} are the same folder {}", la.display()))
            } else if receives(a) && lb.starts_with(&la) {
                Some(format!(
                    "{b} {} lies inside {a} {}",
                    lb.display(),
                    la.display()
                ))
            } else if receives(b) && la.starts_with(&lb) {
                Some(format!(
                    "{a} {} lies inside {b} {}",
                    la.display(),
                    lb.display()
                ))
            } else {
                None
            };
            if let Some(p) = problem {
                return Err(keys.invalid(b, format!("{p}: one would feed the other")));
            }
        }
    }
    Ok(())
}
