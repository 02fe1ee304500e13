//! The delta case (issue #25): for (a) a data file of records with 1 % of it edited in
//! scattered places, (b) the agent's own release binary against the build of an earlier
//! commit, (c) an ext4 image of a small root file system in which one package (resagent:
//! its binary and its configuration) changed — the patch made by `resagent-delta make`
//! (its size against the target's, and how long making it took), the time to `done` of
//! the patch over the paced link against the full download of the target over the same
//! link, and the peak RSS of a daemon that only applied patches.

use crate::{median, settle, wait_state, Daemon, Opts, MIB};
use resagent_platform::rig::Mosquitto;
use resagent_platform::Platform;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The earlier commits whose release builds are input (b), nearest first: ba83f8a, the
/// end of issue #27 (then issue #28's windows, gates and clock: a feature release, both
/// builds on `http1.rs`), and 78a2a0d, the end of session 8, across the HTTP client swap
/// (ureq, `url` and `idna` out, `http1.rs` in: more than a release step).
const EARLIER_COMMITS: &[(&str, &str)] = &[
    ("ba83f8a", "a feature release"),
    ("78a2a0d", "across the HTTP client swap"),
];

/// One base/target pair.
struct Input {
    /// (a), (b), (c) and what it is.
    label: String,
    /// The same in a few words, for the table.
    short: String,
    /// The resource name the base is installed under.
    name: String,
    base: PathBuf,
    target: PathBuf,
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A file of `mib` MiB of 128-byte text records (`id;fields;value\n`), and the same
/// file with 1 % of its records rewritten, scattered.
fn records(dir: &Path, mib: u64) -> (PathBuf, PathBuf) {
    const REC: usize = 128;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let n = (mib * MIB) as usize / REC;
    let mut x = XorShift(0x5eed_0001);
    let record = |i: usize, x: &mut XorShift| {
        let mut r = format!("{i:010};").into_bytes();
        while r.len() < REC - 6 {
            r.push(ALPHABET[(x.next() % ALPHABET.len() as u64) as usize]);
        }
        r.extend_from_slice(format!(";{:04}\n", x.next() % 10_000).as_bytes());
        r
    };
    let mut base = Vec::with_capacity(n * REC);
    for i in 0..n {
        base.extend_from_slice(&record(i, &mut x));
    }
    let mut target = base.clone();
    for _ in 0..n / 100 {
        let i = (x.next() % n as u64) as usize;
        let new = record(i, &mut x);
        target[i * REC..(i + 1) * REC].copy_from_slice(&new);
    }
    let (b, t) = (
        dir.join(format!("records-{mib}.base")),
        dir.join(format!("records-{mib}.target")),
    );
    std::fs::write(&b, base).unwrap();
    std::fs::write(&t, target).unwrap();
    (b, t)
}

/// The release binary of `commit`, built once in a worktree of its own and kept under
/// target/; the reason when git or the build cannot make it.
fn earlier_binary(root: &Path, commit: &str) -> Result<PathBuf, String> {
    let dir = root.join("target/bench-earlier");
    let bin = dir.join(format!("resagent-{commit}"));
    if bin.exists() {
        return Ok(bin);
    }
    let src = dir.join(format!("src-{commit}"));
    let run = |c: &mut Command| -> Result<(), String> {
        let out = c.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    };
    if !src.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        run(Command::new("git")
            .current_dir(root)
            .args(["worktree", "add", "--detach"])
            .arg(&src)
            .arg(commit))?;
    }
    eprintln!("  building resagent at {commit} (release, once)");
    run(Command::new("cargo")
        .current_dir(&src)
        .args(["build", "--release", "--locked", "-p", "resagent"])
        .env("CARGO_TARGET_DIR", dir.join("target")))?;
    std::fs::copy(dir.join("target/release/resagent"), &bin).map_err(|e| e.to_string())?;
    Ok(bin)
}

/// Sets every mtime under `dir` to one instant (the image builds must not differ in
/// anything but the changed package).
fn fix_times(dir: &Path) {
    let st = Command::new("find")
        .arg(dir)
        .args(["-exec", "touch", "-h", "-d", "@1700000000", "{}", "+"])
        .status()
        .unwrap();
    assert!(st.success());
}

/// An ext4 image of the tree at `dir`, reproducible (fixed UUID, hash seed, times).
fn ext4_image(dir: &Path, out: &Path, mib: u64) {
    fix_times(dir);
    let _ = std::fs::remove_file(out);
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-b", "4096", "-I", "256", "-O", "^has_journal"])
        .args(["-U", "6f3b1c52-4f0e-4d7a-9a51-3f1f1e0c2b11"])
        .args(["-E", "hash_seed=6f3b1c52-4f0e-4d7a-9a51-3f1f1e0c2b11"])
        .arg("-d")
        .arg(dir)
        .arg(out)
        .arg(format!("{mib}M"))
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("mkfs.ext4 (e2fsprogs)");
    assert!(st.success(), "mkfs.ext4 -d {}", dir.display());
}

/// A small root file system: the first `mib` MiB of this machine's /usr/bin and
/// /usr/lib (sorted, regular files), with resagent's package — `old_bin` and its
/// configuration — as an image; then the same tree with the package upgraded to
/// `new_bin` and a configuration key added.
fn rootfs_images(dir: &Path, mib: u64, old_bin: &Path, new_bin: &Path) -> (PathBuf, PathBuf) {
    let tree = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&tree);
    let mut files: Vec<PathBuf> = Vec::new();
    for top in [
        "/usr/bin",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
    ] {
        let Ok(rd) = std::fs::read_dir(top) else {
            continue;
        };
        let mut here: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        here.sort();
        files.extend(here);
    }
    let mut total = 0u64;
    for f in files {
        let Ok(m) = std::fs::symlink_metadata(&f) else {
            continue;
        };
        if !m.is_file() || f.file_name().is_some_and(|n| n == "resagent") {
            continue;
        }
        if total + m.len() > mib * MIB {
            break;
        }
        let to = tree.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        if std::fs::copy(&f, &to).is_ok() {
            total += m.len();
        }
    }
    let etc = tree.join("etc/resagent");
    std::fs::create_dir_all(&etc).unwrap();
    let image_mib = (total + 2 * old_bin.metadata().unwrap().len()) / MIB * 5 / 4 + 8;
    let install = |bin: &Path, config: &str| {
        std::fs::copy(bin, tree.join("usr/bin/resagent")).unwrap();
        std::fs::write(etc.join("config.json"), config).unwrap();
    };
    install(
        old_bin,
        "{\"productId\": \"P\", \"poll_interval_s\": 3600}\n",
    );
    let base = dir.join("rootfs.base.ext4");
    ext4_image(&tree, &base, image_mib);
    install(
        new_bin,
        "{\"productId\": \"P\", \"poll_interval_s\": 3600, \"plugin_only\": [\"*.swu\"]}\n",
    );
    let target = dir.join("rootfs.target.ext4");
    ext4_image(&tree, &target, image_mib);
    let _ = std::fs::remove_dir_all(&tree);
    (base, target)
}

/// The inputs; in a smoke run, small ones (and for (b), when no earlier commit can be
/// built, a copy of this binary with a rebuilt-like change: a stretch of it moved by
/// 4 KiB).
fn inputs(o: &Opts, smoke: bool) -> Vec<Input> {
    let dir = o.work.join("delta-inputs");
    std::fs::create_dir_all(&dir).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut out = Vec::new();
    let mut rec_sizes = vec![if smoke { 8 } else { 64 }];
    if !smoke {
        // The memory bound of the issue is stated for a 256 MiB target.
        rec_sizes.push(256);
    }
    for mib in rec_sizes {
        let (base, target) = records(&dir, mib);
        out.push(Input {
            label: format!("(a) {mib} MiB of records, 1 % edited"),
            short: format!("(a) records {mib} MiB"),
            name: format!("records-{mib}.db"),
            base,
            target,
        });
    }
    // (c) upgrades the package by the farthest of the builds (b) uses.
    let mut old_bin = None;
    for (commit, distance) in EARLIER_COMMITS {
        let earlier = if smoke {
            Err("smoke run".to_string())
        } else {
            earlier_binary(root, commit)
        };
        match earlier {
            Ok(bin) => {
                out.push(Input {
                    label: format!("(b) resagent release, {commit} ({distance}) → this build"),
                    short: format!("(b) binary, from {commit}"),
                    name: format!("resagent-{commit}"),
                    base: bin.clone(),
                    target: o.bin.clone(),
                });
                old_bin = Some(bin);
            }
            Err(why) => eprintln!("  (b) without the build of {commit}: {why}"),
        }
    }
    let old_bin = old_bin.unwrap_or_else(|| {
        let mut bytes = std::fs::read(&o.bin).unwrap();
        let at = bytes.len() / 3;
        let moved: Vec<u8> = bytes.drain(at..at + 4096).collect();
        let to = bytes.len() / 2;
        bytes.splice(to..to, moved);
        let p = dir.join("resagent.edited");
        std::fs::write(&p, bytes).unwrap();
        out.push(Input {
            label: "(b) resagent release, a stretch moved (no earlier build)".into(),
            short: "(b) binary, edited".into(),
            name: "resagent".into(),
            base: p.clone(),
            target: o.bin.clone(),
        });
        p
    });
    let (base, target) = rootfs_images(&dir, if smoke { 8 } else { 48 }, &old_bin, &o.bin);
    out.push(Input {
        label: "(c) ext4 root file system, resagent package upgraded".into(),
        short: "(c) ext4 rootfs".into(),
        name: "rootfs.ext4".into(),
        base,
        target,
    });
    out
}

/// `resagent-delta make`: the patch, and how long making it took.
fn make_patch(o: &Opts, input: &Input) -> (PathBuf, f64) {
    let tool = o.bin.with_file_name("resagent-delta");
    let patch = o
        .work
        .join("delta-inputs")
        .join(format!("{}.rdelta", input.name));
    let t = Instant::now();
    let out = Command::new(&tool)
        .arg("make")
        .arg(&input.base)
        .arg(&input.target)
        .arg("-o")
        .arg(&patch)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", tool.display()));
    let secs = t.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (patch, secs)
}

/// Pushes `task` through the paced link and waits for its `done`: the seconds.
fn paced(o: &Opts, platform: &Platform, d: &Daemon, task: &Value, name: &str) -> f64 {
    platform.storage().set_fault(
        &Platform::path_of(task),
        resagent_platform::HttpFault {
            rate: Some(o.link_rate),
            ..Default::default()
        },
    );
    settle();
    let t = Instant::now();
    platform.push(&d.device, task).unwrap();
    wait_state(platform, &d.device, "report_download_progress", name);
    t.elapsed().as_secs_f64()
}

pub(crate) fn delta_case(o: &Opts, broker: &Mosquitto, platform: &Platform, smoke: bool) -> Value {
    let mut rows = Vec::new();
    for (i, input) in inputs(o, smoke).into_iter().enumerate() {
        eprintln!("  {}", input.label);
        let (patch, make_s) = make_patch(o, &input);
        let patch_bytes = std::fs::metadata(&patch).unwrap().len();
        let target_bytes = std::fs::metadata(&input.target).unwrap().len();
        let d = Daemon::start(o, broker, platform, &format!("delta{i}"), json!({}));
        let resources = d.dir.join("resources");
        std::fs::create_dir_all(&resources).unwrap();
        let (mut delta_s, mut full_s) = (Vec::new(), Vec::new());
        for run in 0..o.runs {
            let name = format!("{run}-{}", input.name);
            std::fs::copy(&input.base, resources.join(&name)).unwrap();
            let patch_name = format!("{name}.rdelta");
            let task = platform.task_for(&patch_name, &patch);
            delta_s.push(paced(o, platform, &d, &task, &patch_name));
            let _ = std::fs::remove_file(resources.join(&name));
        }
        // Read before the full downloads: the daemon has applied patches only.
        let peak_rss_kib = d.status_kib("VmHWM:");
        for run in 0..o.runs {
            let name = format!("full-{run}-{}", input.name);
            let task = platform.task_for(&name, &input.target);
            full_s.push(paced(o, platform, &d, &task, &name));
            let _ = std::fs::remove_file(resources.join(&name));
        }
        rows.push(json!({
            "input": input.label, "short": input.short, "target_bytes": target_bytes, "patch_bytes": patch_bytes,
            "patch_percent": patch_bytes as f64 * 100.0 / target_bytes as f64,
            "make_s": make_s, "delta_done_s": delta_s, "full_done_s": full_s,
            "done_ratio": median(&delta_s) / median(&full_s),
            "peak_rss_kib": peak_rss_kib,
        }));
    }
    json!({"rate_bytes_per_s": o.link_rate, "inputs": rows})
}
