//! The layer picture of docs/architecture.md, kept by the compiler's neighbour: every
//! module of `src/` may use only modules of a lower layer (so there is no import
//! circle, and nothing below knows what is above it). A new module needs a line here.

use crate::common::project;
use std::collections::BTreeMap;

/// Each top-level module of `src/` and its layer; lower layers know nothing of higher.
const LAYERS: &[(&str, u32)] = &[
    // No module of ours below them.
    ("backoff", 0),
    ("digest", 0),
    ("http1", 0),
    ("logging", 0),
    ("notify", 0),
    ("random", 0),
    ("rdelta", 0),
    ("schedule", 0),
    ("shutdown", 0),
    ("signals", 0),
    ("sys", 0),
    // Files and pacing; the messages (their URLs checked by `http1`).
    ("fsutil", 1),
    ("clock", 1),
    ("pace", 1),
    ("protocol", 1),
    // State on disk, the outbox folder, plugins.
    ("journal", 2),
    ("pidfile", 2),
    ("outbox", 2),
    ("plugin", 2),
    // What the state means.
    ("boot", 3),
    ("config", 3),
    ("tasks", 3),
    ("install", 3),
    ("gate", 3),
    // The network, and the view on the state.
    ("transfer", 4),
    ("mqtt", 4),
    ("status", 4),
    ("report", 5),
    // The transfers.
    ("reboot", 6),
    ("upload", 6),
    ("download", 7),
    // The process.
    ("daemon", 8),
    ("cli", 9),
];

/// The modules `text` names through `crate::` (`crate::a::b`, `use crate::{a, b}`).
fn used(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            for part in inner.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        } else {
            out.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    out
}

#[test]
fn every_module_uses_only_lower_layers() {
    let layers: BTreeMap<&str, u32> = LAYERS.iter().copied().collect();
    let src = project().join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut wrong = Vec::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        let top = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(&mine) = layers.get(top.as_str()) else {
            wrong.push(format!(
                "src/{rel}: module `{top}` has no layer in tests/it/layers.rs"
            ));
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        // Unit tests may reach anywhere.
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        for dep in used(code) {
            if dep == top || dep.is_empty() {
                continue;
            }
            match layers.get(dep.as_str()) {
                Some(&theirs) if theirs < mine => {}
                Some(&theirs) => wrong.push(format!(
                    "src/{rel}: `{top}` (layer {mine}) uses `{dep}` (layer {theirs})"
                )),
                None => wrong.push(format!("src/{rel}: uses `{dep}`, which has no layer")),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward or sideways imports:\n{}",
        wrong.join("\n")
    );
}

/// `unsafe` stays in `sys`: the crate root denies it, and no other file allows it.
#[test]
fn only_sys_allows_unsafe_code() {
    let src = project().join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    assert!(
        lib.contains("#![deny(unsafe_code)]"),
        "lib.rs must deny unsafe_code"
    );
    let mut dirs = vec![src.clone()];
    let mut allowing = Vec::new();
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if std::fs::read_to_string(&p)
                .unwrap_or_default()
                .contains("allow(unsafe_code)")
                && !p.starts_with(src.join("sys"))
            {
                allowing.push(p.display().to_string());
            }
        }
    }
    assert!(
        allowing.is_empty(),
        "allow(unsafe_code) outside src/sys/: {allowing:?}"
    );
}
