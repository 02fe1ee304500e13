//! Vendor plugins end to end: C plugins compiled by the test from the header alone, the
//! Rust archive example, crashing and hanging plugins, the file checks, pinning, SIGHUP.

use crate::common::*;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// The fwcheck example, built as a vendor would.
fn fwcheck(rig: &Rig) -> PathBuf {
    let out = plugin_dir(rig).join("10-fwcheck.so");
    cc(
        &project().join("plugins/examples/fwcheck.c"),
        &out,
        "-std=c99",
        &[],
    );
    out
}

fn firmware(
    rig: &Rig,
    name: &str,
    magic: &[u8],
    version: u32,
    len: usize,
) -> (PathBuf, serde_json::Value) {
    let mut bytes = magic.to_vec();
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.resize(len, 0xA5);
    rig.serve_bytes(name, &bytes)
}

fn plugin_check(rig: &Rig, file: &Path) -> (i32, String) {
    let (code, out, err) = rig.cli(&["plugin", "check", file.to_str().unwrap()]);
    (code, out + &err)
}

#[test]
fn a_validate_rejection_fails_minus_9_with_the_plugins_reason() {
    let mut rig = Rig::new();
    fwcheck(&rig);
    let agent = rig.start_agent();
    wait_log(&agent, "plugin fwcheck loaded");
    let (_, bad) = firmware(&rig, "board.fw", b"ELF\x7f", 1, 4096);
    rig.platform.push(&device(), &bad).unwrap();
    let r = rig.final_report(&agent, "board.fw", T);
    assert_eq!(state_of(&r), ("fail", -9), "{r}");
    assert!(
        r["progress"]["result_msg"]
            .as_str()
            .unwrap()
            .contains("no RSFW header"),
        "{r}"
    );
    assert!(!rig.resource("board.fw").exists());

    let (good_file, good) = firmware(&rig, "board2.fw", b"RSFW", 1, 4096);
    rig.platform.push(&device(), &good).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "board2.fw", T)),
        ("done", 0)
    );
    assert_eq!(
        std::fs::read(rig.resource("board2.fw")).unwrap(),
        std::fs::read(good_file).unwrap()
    );
    assert!(
        agent
            .log_text()
            .contains("[fwcheck] board2.fw: RSFW header v1"),
        "plugin log reached the agent"
    );
    let (_, other) = rig.task("notes.txt", 100, 1);
    rig.platform.push(&device(), &other).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "notes.txt", T)),
        ("done", 0),
        "declined = no opinion"
    );
}

#[test]
fn an_install_plugin_runs_with_the_host_functions_and_its_outcome_is_reported() {
    let mut rig = Rig::new();
    fixture(&rig, "copyinstall.c", "20-copyinstall.so", &[]);
    let agent = rig.start_agent();
    let (src, task) = rig.task("device.cfg", 300_000, 2);
    rig.platform.push(&device(), &task).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "device.cfg", T)),
        ("done", 0)
    );
    assert_eq!(
        std::fs::read(rig.resource("device.cfg")).unwrap(),
        std::fs::read(&src).unwrap()
    );
    assert!(!rig
        .path()
        .join("resources/device.cfg.copyinstall-tmp")
        .exists());
    let burning: Vec<u64> = rig
        .platform
        .reports_for(&device(), "device.cfg")
        .iter()
        .filter(|m| m["progress"]["state"] == "burning")
        .map(|m| m["progress"]["percent"].as_u64().unwrap())
        .collect();
    assert!(
        burning.contains(&50),
        "plugin progress reached the platform: {burning:?}"
    );
    let log = agent.log_text();
    assert!(
        log.contains("[copyinstall] copied; replacing atomically"),
        "{log}"
    );
    assert!(log.contains("installed by plugin copyinstall"), "{log}");
    assert_eq!(
        rig.journal()["installed"]["device.cfg"]["plugin"],
        "copyinstall"
    );
    // A resource the plugin declines goes to the default installer.
    let (_, plain) = rig.task("plain.bin", 1000, 3);
    rig.platform.push(&device(), &plain).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "plain.bin", T)),
        ("done", 0)
    );
    assert!(rig.journal()["installed"]["plain.bin"]
        .get("plugin")
        .is_none());
}

#[test]
fn the_rust_archive_plugin_unpacks_and_swaps_a_folder() {
    let built = project().join("target/debug/libresagent_archive.so");
    assert!(
        built.exists(),
        "{} missing: scripts/test.sh builds the workspace first",
        built.display()
    );
    let mut rig = Rig::new();
    let dest = plugin_dir(&rig).join("30-archive.so");
    std::fs::copy(&built, &dest).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = rig.start_agent();
    let pack = |version: &str| -> PathBuf {
        let src = rig.path().join(format!("pack-{version}"));
        std::fs::create_dir_all(src.join("voices")).unwrap();
        std::fs::write(src.join("voices/hello.txt"), format!("hello {version}")).unwrap();
        let out = rig
            .path()
            .join("served")
            .join(format!("audio-{version}.tar.gz"));
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let st = Command::new("tar")
            .arg("czf")
            .arg(&out)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        out
    };
    let v1 = rig.platform.task_for("audio.tar.gz", &pack("v1"));
    rig.platform.push(&device(), &v1).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "audio.tar.gz", T)),
        ("done", 0)
    );
    assert_eq!(
        std::fs::read_to_string(rig.resource("audio/voices/hello.txt")).unwrap(),
        "hello v1"
    );
    let v2 = rig.platform.task_for("audio.tar.gz", &pack("v2"));
    rig.platform.push(&device(), &v2).unwrap();
    let deadline = Instant::now() + T;
    while rig.journal()["installed"]["audio.tar.gz"]["md5sum"] != v2["md5sum"] {
        assert!(
            Instant::now() < deadline,
            "v2 not installed:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read_to_string(rig.resource("audio/voices/hello.txt")).unwrap(),
        "hello v2"
    );
    assert!(
        !rig.resource("audio.tar.gz").exists(),
        "the archive itself is not installed"
    );
    assert!(!rig.resource(".audio.archive-new").exists());
}

#[test]
fn crashing_aborting_and_hanging_plugins_fail_minus_5_and_the_agent_goes_on() {
    let mut rig = Rig::new();
    rig.config["plugin_timeout_s"] = json!(2);
    fixture(
        &rig,
        "crash.c",
        "10-segv.so",
        &["CRASH_SEGV", "PLUGIN_NAME=\"segv\""],
    );
    let agent = rig.start_agent();
    let (_, t1) = rig.task("a.bin", 1000, 4);
    rig.platform.push(&device(), &t1).unwrap();
    let r = rig.final_report(&agent, "a.bin", T);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    let msg = r["progress"]["result_msg"].as_str().unwrap().to_string();
    assert!(
        msg.contains("plugin segv") && msg.contains("SIGSEGV"),
        "{msg}"
    );

    for (file, defines, name, expect) in [
        ("10-segv.so", vec![], "", ""),
        (
            "10-abort.so",
            vec!["CRASH_ABORT", "PLUGIN_NAME=\"aborter\""],
            "b.bin",
            "SIGABRT",
        ),
        (
            "10-hang.so",
            vec!["CRASH_HANG", "PLUGIN_NAME=\"hanger\""],
            "c.bin",
            "timed out after 2 s",
        ),
    ] {
        if name.is_empty() {
            std::fs::remove_file(plugin_dir(&rig).join(file)).unwrap();
            continue;
        }
        let _ = std::fs::remove_file(plugin_dir(&rig).join("10-abort.so"));
        fixture(&rig, "crash.c", file, &defines);
        agent.signal(nix::sys::signal::Signal::SIGHUP);
        wait_log(
            &agent,
            &format!("plugin {} loaded", defines[1].split('"').nth(1).unwrap()),
        );
        let (_, t) = rig.task(name, 1000, 5);
        rig.platform.push(&device(), &t).unwrap();
        let r = rig.final_report(&agent, name, T);
        assert_eq!(state_of(&r), ("fail", -5), "{r}");
        assert!(
            r["progress"]["result_msg"]
                .as_str()
                .unwrap()
                .contains(expect),
            "{r}"
        );
    }
    // A validate plugin that crashes rejects with -9.
    for f in std::fs::read_dir(plugin_dir(&rig)).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    fixture(
        &rig,
        "crash.c",
        "10-vsegv.so",
        &["CRASH_SEGV", "IN_VALIDATE", "PLUGIN_NAME=\"vsegv\""],
    );
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    wait_log(&agent, "plugin vsegv loaded");
    let (_, t) = rig.task("d.bin", 1000, 6);
    rig.platform.push(&device(), &t).unwrap();
    let r = rig.final_report(&agent, "d.bin", T);
    assert_eq!(state_of(&r), ("fail", -9), "{r}");
    // And with the plugins gone, the next task is fine.
    std::fs::remove_file(plugin_dir(&rig).join("10-vsegv.so")).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    let (_, t) = rig.task("e.bin", 1000, 7);
    rig.platform.push(&device(), &t).unwrap();
    assert_eq!(state_of(&rig.final_report(&agent, "e.bin", T)), ("done", 0));
}

#[test]
fn unsafe_or_foreign_plugin_files_are_refused_by_the_daemon_and_plugin_check() {
    let mut rig = Rig::new();
    let writable = fixture(
        &rig,
        "simple.c",
        "10-writable.so",
        &["PLUGIN_NAME=\"writable\""],
    );
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777)).unwrap();
    let abi2 = fixture(
        &rig,
        "simple.c",
        "20-abi2.so",
        &["ABI=2", "PLUGIN_NAME=\"abi2\""],
    );
    let foreign = fixture(
        &rig,
        "simple.c",
        "30-foreign.so",
        &["PLUGIN_NAME=\"foreign\""],
    );
    let root = nix::unistd::geteuid().is_root();
    if root {
        nix::unistd::chown(&foreign, Some(nix::unistd::Uid::from_raw(12345)), None).unwrap();
    }
    let good = fixture(&rig, "simple.c", "40-good.so", &["PLUGIN_NAME=\"good\""]);
    let agent = rig.start_agent();
    wait_log(&agent, "plugin good loaded");
    let log = agent.log_text();
    assert!(
        log.contains("10-writable.so: writable by group or others"),
        "{log}"
    );
    assert!(log.contains("20-abi2.so: ABI version 2"), "{log}");
    assert!(!log.contains("plugin writable loaded") && !log.contains("plugin abi2 loaded"));
    if root {
        assert!(log.contains("30-foreign.so: owned by uid 12345"), "{log}");
    }
    let (code, out) = plugin_check(&rig, &writable);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("refused") && out.contains("writable by group or others"),
        "{out}"
    );
    let (code, out) = plugin_check(&rig, &abi2);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ABI version 2"), "{out}");
    if root {
        let (code, out) = plugin_check(&rig, &foreign);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("owned by uid 12345"), "{out}");
    }
    let (code, out) = plugin_check(&rig, &good);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("verdict:  loads")
            && out.contains("sha256:")
            && out.contains("name:     good"),
        "{out}"
    );
    // Every plugin that loaded declines: the default installer places the file.
    let (src, t) = rig.task("z.bin", 5000, 8);
    rig.platform.push(&device(), &t).unwrap();
    assert_eq!(state_of(&rig.final_report(&agent, "z.bin", T)), ("done", 0));
    assert_eq!(
        std::fs::read(rig.resource("z.bin")).unwrap(),
        std::fs::read(src).unwrap()
    );
}

#[test]
fn pinned_plugins_refuse_unlisted_and_altered_files_before_loading_them() {
    let mut rig = Rig::new();
    let marker = rig.path().join("loaded-marker");
    let define = format!("LOAD_MARKER=\"{}\"", marker.display());
    let pinned = fixture(
        &rig,
        "simple.c",
        "10-pinned.so",
        &["PLUGIN_NAME=\"pinned\"", &define],
    );
    let (code, out) = plugin_check(&rig, &pinned);
    assert_eq!(code, 0, "{out}");
    let sha = out
        .lines()
        .find_map(|l| l.strip_prefix("sha256:"))
        .unwrap()
        .trim()
        .to_string();
    std::fs::remove_file(&marker).unwrap();
    let unlisted = fixture(
        &rig,
        "simple.c",
        "20-unlisted.so",
        &["PLUGIN_NAME=\"unlisted\"", &define],
    );
    rig.config["plugin_sha256"] = json!({"10-pinned.so": sha, "30-altered.so": "0".repeat(64)});
    let altered = fixture(
        &rig,
        "simple.c",
        "30-altered.so",
        &["PLUGIN_NAME=\"altered\"", &define],
    );
    let agent = rig.start_agent();
    wait_log(&agent, "plugin pinned loaded");
    let log = agent.log_text();
    assert!(
        log.contains("20-unlisted.so: not listed in plugin_sha256"),
        "{log}"
    );
    assert!(log.contains("30-altered.so: SHA-256"), "{log}");
    let loads = std::fs::read_to_string(&marker)
        .unwrap_or_default()
        .lines()
        .count();
    assert_eq!(loads, 1, "only the pinned plugin was ever loaded");
    let (code, out) = plugin_check(&rig, &unlisted);
    assert_eq!(code, 1, "{out}");
    let (code, out) = plugin_check(&rig, &altered);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("differs from the pinned"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().lines().count(),
        1,
        "plugin check did not load them either"
    );
}

#[test]
fn a_plugin_added_later_is_picked_up_after_sighup() {
    let mut rig = Rig::new();
    plugin_dir(&rig);
    let agent = rig.start_agent();
    let (_, bad) = firmware(&rig, "x.fw", b"NOPE", 1, 100);
    rig.platform.push(&device(), &bad).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "x.fw", T)),
        ("done", 0),
        "no plugin yet"
    );
    fwcheck(&rig);
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    wait_log(&agent, "plugin fwcheck loaded");
    let (_, bad2) = firmware(&rig, "y.fw", b"NOPE", 1, 100);
    rig.platform.push(&device(), &bad2).unwrap();
    assert_eq!(state_of(&rig.final_report(&agent, "y.fw", T)), ("fail", -9));
}

/// The plugin children (`resagent __plugin …`) of process `parent`.
fn plugin_children(parent: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The parent pid is the second field after the command's closing parenthesis.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
            ppid == Some(parent)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains("__plugin"))
                    .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_stop_during_a_plugin_call_ends_the_child_and_resumes_from_the_plugins() {
    let mut rig = Rig::new();
    rig.config["plugin_timeout_s"] = json!(120);
    let hang = fixture(
        &rig,
        "crash.c",
        "10-hang.so",
        &["CRASH_HANG", "PLUGIN_NAME=\"hanger\""],
    );
    let mut agent = rig.start_agent();
    let (src, t) = rig.task("slow.bin", 100_000, 9);
    rig.platform.push(&device(), &t).unwrap();
    wait_log(&agent, "slow.bin: plugin hanger install");
    std::thread::sleep(Duration::from_millis(300));
    let children = plugin_children(agent.pid());
    assert_eq!(children.len(), 1, "the plugin runs in one child");
    let took = agent.terminate();
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !children.iter().any(|&c| alive(c)),
        "the plugin's child is gone"
    );
    assert_eq!(rig.journal()["download"]["phase"], "verified");
    assert!(rig
        .path()
        .join("resources/.resagent-staging/slow.bin")
        .exists());

    std::fs::remove_file(&hang).unwrap();
    let agent = rig.spawn_agent();
    assert_eq!(
        state_of(&rig.final_report(&agent, "slow.bin", T)),
        ("done", 0)
    );
    assert_eq!(
        std::fs::read(rig.resource("slow.bin")).unwrap(),
        std::fs::read(src).unwrap()
    );
    assert_eq!(
        rig.gets(&t).0,
        1,
        "resumed from the plugins, not downloaded again"
    );
}

/// The shell lines of the first ```sh block under "## Build" in `readme`.
fn build_lines(readme: &Path) -> String {
    let text = std::fs::read_to_string(readme).unwrap();
    let build = text.split("## Build").nth(1).expect("a Build section");
    let block = build.split("```sh\n").nth(1).expect("a sh block");
    block.split("```").next().unwrap().to_string()
}

#[test]
fn the_framework_plugin_readmes_build_commands_work_as_written() {
    let rig = Rig::new();
    for (readme, so) in [
        ("plugins/swupdate/README.md", "30-swupdate.so"),
        ("plugins/rauc/README.md", "40-rauc.so"),
    ] {
        // A copy of plugins/ in a folder of its own stands for the repository's root.
        let root = rig.path().join(so.trim_end_matches(".so"));
        std::fs::create_dir_all(&root).unwrap();
        let st = Command::new("cp")
            .args(["-r"])
            .arg(project().join("plugins"))
            .arg(&root)
            .status()
            .unwrap();
        assert!(st.success());
        let lines = build_lines(&project().join(readme));
        let destdir = rig.path().join(format!("dest-{so}"));
        let out = Command::new("sh")
            .args(["-ec", &lines])
            .current_dir(&root)
            .env("DESTDIR", &destdir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{readme}:\n{lines}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let installed = destdir.join("usr/lib/resagent/plugins").join(so);
        let (code, said) = plugin_check(&rig, &installed);
        assert_eq!(code, 0, "{readme}: {said}");
    }
}
