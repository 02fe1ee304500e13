//! The ARM builds, run: the agent cross-built by `scripts/cross-build.sh TARGET` (Rust
//! 1.75.0, the cross gcc, the target's OpenSSL) runs under qemu-user against the host's
//! mosquitto and local platform — one delivery installed through a cross-built C plugin
//! (`plugins/examples/firmware.c`), and one upload. Emulation proves the crate tree
//! builds for the target and the binary and its plugin child work there; it says
//! nothing about a device's speed.
//!
//! Ignored by default (it needs the cross build first, several minutes); CI runs
//!   scripts/cross-build.sh aarch64-unknown-linux-gnu
//!   RESAGENT_CROSS_TARGET=aarch64-unknown-linux-gnu cargo test --test cross -- --ignored
//! The agent re-executes itself for every plugin call, so the kernel must hand ARM ELF
//! files to qemu: cross-build.sh registers qemu with binfmt_misc when it can.

use crate::common::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(180);

/// The sysroot for qemu's -L: Debian's multiarch root, where the target's libc and
/// libssl are (`/usr/aarch64-linux-gnu`, the cross gcc's libc, makes qemu 7.2 hang in
/// the first pthread_create; see scripts/cross-build.sh).
const SYSROOT: &str = "/";

/// The target under test, its qemu and the folder of its build.
fn cross() -> (String, &'static str, PathBuf) {
    let target = std::env::var("RESAGENT_CROSS_TARGET")
        .expect("set RESAGENT_CROSS_TARGET (e.g. aarch64-unknown-linux-gnu)");
    let qemu = match target.as_str() {
        "aarch64-unknown-linux-gnu" => "qemu-aarch64",
        "armv7-unknown-linux-gnueabihf" => "qemu-arm",
        other => panic!("no qemu known for {other}"),
    };
    let dir = project().join("target").join(&target);
    assert!(
        dir.join("release/resagent").exists(),
        "run scripts/cross-build.sh {target} first"
    );
    (target, qemu, dir)
}

fn file_type(path: &std::path::Path) -> String {
    let out = Command::new("file").arg("-b").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs scripts/cross-build.sh TARGET and RESAGENT_CROSS_TARGET"]
fn the_emulated_arm_agent_delivers_through_a_cross_built_plugin_and_uploads() {
    let (target, qemu, dir) = cross();
    let bin = dir.join("release/resagent");
    let arch = if target.starts_with("aarch64") {
        "ARM aarch64"
    } else {
        "ARM, EABI5"
    };
    assert!(file_type(&bin).contains(arch), "{}", file_type(&bin));
    let plugin_src = dir.join("plugins/firmware.so");
    assert!(file_type(&plugin_src).contains(arch));

    let mut rig = Rig::new();
    let partition = rig.path().join("partition.img");
    rig.config["plugin_config"] = json!({"firmware": {"partition": partition}});
    let plugin = plugin_dir(&rig).join("20-firmware.so");
    std::fs::copy(&plugin_src, &plugin).unwrap();

    // The agent itself, emulated: qemu is its interpreter.
    let agent = rig.spawn_binary_under(&bin, &[qemu, "-L", SYSROOT], "debug");
    let exe = std::fs::read_link(format!("/proc/{}/exe", agent.pid())).unwrap();
    assert!(
        exe.to_string_lossy().contains(qemu),
        "the agent runs under {qemu}: {}",
        exe.display()
    );
    rig.platform
        .wait_for(&device(), T, |m| m["type"] == "get_download_task")
        .unwrap_or_else(|| panic!("the emulated agent connected; log:\n{}", agent.log_text()));

    // A delivery, installed by the cross-built plugin in the agent's plugin child.
    let image = rsfw_image(9, 200_000);
    let (_, task) = rig.serve_bytes("fw-9.bin", &image);
    rig.platform.push(&device(), &task).unwrap();
    let r = rig.final_report(&agent, "fw-9.bin", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}\n{}", agent.log_text());
    assert_eq!(
        std::fs::read(&partition).unwrap(),
        image,
        "the plugin wrote it"
    );
    assert!(
        agent.log_text().contains("[firmware] fw-9.bin written to"),
        "{}",
        agent.log_text()
    );
    assert_eq!(rig.journal()["installed"]["fw-9.bin"]["plugin"], "firmware");

    // An upload queued by the emulated CLI, sent by the emulated daemon.
    let up = rig.make_file("log-1.txt", 300_000, 4);
    let out = Command::new(qemu)
        .args(["-L", SYSROOT])
        .arg(&bin)
        .arg("upload")
        .arg(&up)
        .arg("-c")
        .arg(rig.config_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = rig
        .platform
        .wait_for(&device(), T, |m| {
            m["type"] == "report_upload_progress"
                && m["name"] == "log-1.txt"
                && m["progress"]["state"] == "done"
        })
        .unwrap_or_else(|| panic!("no upload done; log:\n{}", agent.log_text()));
    assert_eq!(r["progress"]["result_code"], 0);
    let stored = rig
        .platform
        .uploads()
        .into_iter()
        .find(|u| u.path.ends_with("/log-1.txt"))
        .expect("the platform stored the upload");
    assert_eq!(
        std::fs::read(&stored.file).unwrap(),
        std::fs::read(&up).unwrap()
    );
    assert_eq!(stored.md5_hex, md5_hex(&up));
    assert!(stored.content_md5_checked);
}
