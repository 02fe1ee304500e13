//! Firmware-grade plugins end to end (docs/plugins.md, "Firmware-grade additions"): the
//! example firmware plugin (`plugins/examples/firmware.c`) and misbehaving test plugins
//! (`tests/plugins/rogue.c`), compiled from the header by the test, with the real
//! binary, mosquitto and the local platform. Each test is one way a fleet could hear
//! `done` for firmware that was never flashed, or vendor code could slip its checks.

use crate::common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// Serves `bytes` as resource `name`; the task for it.
fn serve(rig: &Rig, name: &str, bytes: &[u8]) -> Value {
    let dir = rig.path().join("served");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}.{}", bytes.len()));
    std::fs::write(&p, bytes).unwrap();
    rig.platform
        .task_served_as(name, &p, &format!("{name}-{:08x}", crc32(bytes)))
}

/// The firmware example built as a vendor would, at `out`.
fn build_firmware(out: &Path) {
    cc(
        &project().join("plugins/examples/firmware.c"),
        out,
        "-std=c99",
        &[],
    );
}

/// A rig with the firmware plugin's configuration: its partition file and, for A/B,
/// the file the boot process writes with the running image's MD5.
fn firmware_rig(ab: bool) -> (Rig, PathBuf, PathBuf) {
    let mut rig = Rig::new();
    let partition = rig.path().join("partition.img");
    let booted = rig.path().join("booted");
    rig.config["plugin_config"] = json!({"firmware": {
        "partition": partition, "ab": ab, "booted_file": booted
    }});
    (rig, partition, booted)
}

#[test]
fn a_pinned_plugin_absent_or_altered_fails_every_download_minus_9_until_it_is_right() {
    let (mut rig, partition, _) = firmware_rig(false);
    let dir = plugin_dir(&rig);
    let good = rig.path().join("20-firmware.so");
    build_firmware(&good);
    rig.config["plugin_sha256"] = json!({"20-firmware.so": sha256_hex(&good)});
    let agent = rig.start_agent();
    wait_log(&agent, "pinned plugin not loaded");

    // Absent: a firmware image must not fall through to the default installer.
    let fw1 = rsfw_image(1, 4000);
    rig.platform
        .push(&device(), &serve(&rig, "fw-1.bin", &fw1))
        .unwrap();
    let r = nth_final(&rig, &agent, "fw-1.bin", 0);
    assert_eq!(state_of(&r), ("fail", -9), "{r}");
    assert!(
        msg(&r).contains("20-firmware.so") && msg(&r).contains("not in plugin_dir"),
        "{r}"
    );
    assert!(!rig.resource("fw-1.bin").exists() && !partition.exists());
    let (_, status, _) = rig.cli(&["status"]);
    assert!(status.contains("20-firmware.so"), "{status}");
    let (_, status, _) = rig.cli(&["status", "--json"]);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["pinned_not_loaded"].as_array().unwrap().len(),
        1,
        "{status}"
    );

    // Altered: another build (one byte more) hashes differently.
    let mut altered = std::fs::read(&good).unwrap();
    altered.push(0);
    let installed = dir.join("20-firmware.so");
    std::fs::write(&installed, &altered).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    wait_log(&agent, "differs from the pinned");
    rig.platform
        .push(&device(), &serve(&rig, "fw-1.bin", &fw1))
        .unwrap();
    let r = nth_final(&rig, &agent, "fw-1.bin", 1);
    assert_eq!(state_of(&r), ("fail", -9), "{r}");
    assert!(msg(&r).contains("differs from the pinned"), "{r}");
    assert!(!partition.exists());

    // Fixed, SIGHUP: the same task now flashes.
    std::fs::copy(&good, &installed).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    wait_log(&agent, "plugin firmware loaded");
    rig.platform
        .push(&device(), &serve(&rig, "fw-1.bin", &fw1))
        .unwrap();
    let r = nth_final(&rig, &agent, "fw-1.bin", 2);
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    assert_eq!(std::fs::read(&partition).unwrap(), fw1);
    assert!(
        !rig.resource("fw-1.bin").exists(),
        "never the default installer"
    );
    assert_eq!(rig.journal()["installed"]["fw-1.bin"]["plugin"], "firmware");
}

#[test]
fn a_claimed_resource_its_owner_declines_fails_minus_5_with_nothing_installed() {
    let mut rig = Rig::new();
    fixture(
        &rig,
        "simple.c",
        "20-claimer.so",
        &["PLUGIN_NAME=\"claimer\"", "CLAIMS=\"fw-*.bin *.swu\""],
    );
    let agent = rig.start_agent();
    wait_log(&agent, "plugin claimer loaded");
    rig.platform
        .push(&device(), &serve(&rig, "fw-9.bin", &rsfw_image(9, 100)))
        .unwrap();
    let r = rig.final_report(&agent, "fw-9.bin", T);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(msg(&r).contains("plugin claimer"), "{r}");
    assert!(
        !rig.resource("fw-9.bin").exists(),
        "nothing in resource_dir"
    );
    // A name nobody claims still reaches the default installer.
    let (_, other) = rig.task("notes.txt", 100, 3);
    rig.platform.push(&device(), &other).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "notes.txt", T)),
        ("done", 0)
    );
    rig.assert_installed("notes.txt", &other);
}

#[test]
fn a_downgrade_and_a_rollback_are_flashed_again_not_reported_done() {
    let (mut rig, partition, _) = firmware_rig(false);
    build_firmware(&plugin_dir(&rig).join("20-firmware.so"));
    let agent = rig.start_agent();
    wait_log(&agent, "plugin firmware loaded");
    let (v1, v2) = (rsfw_image(1, 6000), rsfw_image(2, 7000));
    let (t1, t2) = (serve(&rig, "fw-1.bin", &v1), serve(&rig, "fw-2.bin", &v2));
    rig.platform.push(&device(), &t1).unwrap();
    assert_eq!(
        state_of(&nth_final(&rig, &agent, "fw-1.bin", 0)),
        ("done", 0)
    );
    rig.platform.push(&device(), &t2).unwrap();
    assert_eq!(
        state_of(&nth_final(&rig, &agent, "fw-2.bin", 0)),
        ("done", 0)
    );
    assert_eq!(std::fs::read(&partition).unwrap(), v2);

    // Downgrade: fw-1.bin equals the journal's record of that name, but the partition
    // holds fw-2: the plugin says so and v1 is flashed again.
    rig.platform.push(&device(), &t1).unwrap();
    let r = nth_final(&rig, &agent, "fw-1.bin", 1);
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    assert_eq!(
        std::fs::read(&partition).unwrap(),
        v1,
        "flashed, not just reported"
    );
    assert_eq!(rig.gets(&t1).0, 2, "downloaded again");

    // An equal re-offer while it is really installed transfers nothing.
    rig.platform.push(&device(), &t1).unwrap();
    assert_eq!(
        state_of(&nth_final(&rig, &agent, "fw-1.bin", 2)),
        ("done", 0)
    );
    assert_eq!(rig.gets(&t1).0, 2, "still installed: no transfer");

    // A rollback behind the agent's back: the bootloader went back to the other slot,
    // so the partition holds v2 again while the journal still records fw-1.bin.
    std::fs::write(&partition, &v2).unwrap();
    rig.platform.push(&device(), &t1).unwrap();
    assert_eq!(
        state_of(&nth_final(&rig, &agent, "fw-1.bin", 3)),
        ("done", 0)
    );
    assert_eq!(
        std::fs::read(&partition).unwrap(),
        v1,
        "reflashed after the rollback"
    );
    assert_eq!(rig.gets(&t1).0, 3);
}

#[test]
fn a_pending_install_reports_burning_100_then_done_or_fail_after_a_reboot_not_a_restart() {
    let (mut rig, partition, booted) = firmware_rig(true);
    let marker = rig.path().join("rebooted");
    let seen = rig.path().join("reboot-command-saw");
    rig.config["reboot_command"] = json!(format!(
        "ls -l /proc/$$/fd > {seen}; env >> {seen}; touch {}",
        marker.display(),
        seen = seen.display()
    ));
    build_firmware(&plugin_dir(&rig).join("20-firmware.so"));
    let mut agent = rig.spawn_agent_under(&["env", "DEVICE_TOKEN=not-for-children"], "info");
    wait_log(&agent, "connected to");
    let v3 = rsfw_image(3, 5000);
    let t3 = serve(&rig, "fw-3.bin", &v3);
    rig.platform.push(&device(), &t3).unwrap();
    let pending = nth_pending(&rig, &agent, "fw-3.bin", 0);
    assert_eq!(pending["progress"]["result_code"], 0);
    assert_eq!(
        std::fs::read(&partition).unwrap(),
        v3,
        "the slot is written"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "reboot_command ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A plain process: none of the agent's descriptors (its MQTT socket), none of its
    // environment beyond the allow-list.
    let saw = std::fs::read_to_string(&seen).unwrap();
    assert!(!saw.contains("socket:"), "{saw}");
    assert!(!saw.contains("DEVICE_TOKEN"), "{saw}");
    assert!(saw.contains("PATH="), "{saw}");
    assert!(
        !sockets_of(agent.pid()).is_empty(),
        "the agent itself holds its MQTT socket"
    );
    assert_eq!(rig.journal()["pending"]["fw-3.bin"]["plugin"], "firmware");
    assert_eq!(rig.journal()["pending"]["fw-3.bin"]["boot_id"], "boot-1");

    // The same task again (the platform's answer to every poll): the pending report
    // again, nothing fetched or flashed into the other slot.
    rig.platform.push(&device(), &t3).unwrap();
    nth_pending(&rig, &agent, "fw-3.bin", 1);
    assert_eq!(rig.gets(&t3).0, 1, "not downloaded again");

    // A restart of the agent is not a reboot, even when the boot process already says
    // the image runs: nothing is confirmed, nothing final is reported.
    std::fs::write(&booted, md5_of(&v3)).unwrap();
    let mut agent = restart_without_reboot(&mut rig, &mut agent, "fw-3.bin");
    let (_, status, _) = rig.cli(&["status"]);
    assert!(
        status.contains("fw-3.bin") && status.contains("waits for a reboot"),
        "{status}"
    );
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "",
        "reboot_command ran once"
    );

    // The reboot: a new boot identity. Confirmed before the first task poll.
    stop(&mut agent);
    rig.reboot();
    let seen = rig.platform.received(&device()).len();
    let mut agent = rig.spawn_agent();
    let r = rig.final_report(&agent, "fw-3.bin", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    let journal = rig.journal();
    assert_eq!(journal["installed"]["fw-3.bin"]["plugin"], "firmware");
    assert!(journal["pending"].is_null(), "{journal}");
    let deadline = Instant::now() + T;
    let after = loop {
        let after: Vec<Value> = rig.platform.received(&device())[seen..].to_vec();
        if after.iter().any(|m| m["type"] == "get_download_task") {
            break after;
        }
        assert!(Instant::now() < deadline, "no task poll after the reboot");
        std::thread::sleep(Duration::from_millis(50));
    };
    let done_at = after
        .iter()
        .position(|m| m["name"] == "fw-3.bin" && m["progress"]["state"] == "done");
    let poll_at = after.iter().position(|m| m["type"] == "get_download_task");
    assert!(
        done_at.is_some() && poll_at.is_some() && done_at < poll_at,
        "confirmed before the first task poll: {after:?}"
    );

    // A second image that the device does not keep (rolled back to v3): fail -5.
    let v4 = rsfw_image(4, 5000);
    let t4 = serve(&rig, "fw-4.bin", &v4);
    rig.platform.push(&device(), &t4).unwrap();
    nth_pending(&rig, &agent, "fw-4.bin", 0);
    stop(&mut agent);
    rig.reboot();
    let agent = rig.spawn_agent();
    let r = rig.final_report(&agent, "fw-4.bin", T);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(
        msg(&r).contains("plugin firmware") && msg(&r).contains("did not stay"),
        "{r}"
    );
    assert!(rig.journal()["pending"].is_null());

    // A rollback stays rolled back: the re-offer is refused without a transfer.
    rig.platform.push(&device(), &t4).unwrap();
    let r = nth_final(&rig, &agent, "fw-4.bin", 1);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(
        msg(&r).contains("rolled back on this device at") && msg(&r).contains("did not stay"),
        "{r}"
    );
    assert_eq!(rig.gets(&t4).0, 1, "no transfer for a rolled-back image");
    let (_, status, _) = rig.cli(&["status"]);
    assert!(
        status.contains("Rolled back") && status.contains("fw-4.bin"),
        "{status}"
    );
    // On purpose, the operator retries: the next offer installs it again.
    let (code, out, err) = rig.cli(&["retry", "fw-4.bin"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_log(&agent, "fw-4.bin: its rollback is forgotten on request");
    rig.platform.push(&device(), &t4).unwrap();
    nth_pending(&rig, &agent, "fw-4.bin", 1);
    assert_eq!(
        rig.gets(&t4).0,
        2,
        "downloaded and flashed again on request"
    );
}

#[test]
fn confirm_is_asked_again_without_a_restart_and_a_failed_reboot_command_is_heard() {
    let (mut rig, _, booted) = firmware_rig(true);
    rig.config["reboot_command"] = json!("echo no reboot today >&2; exit 3");
    build_firmware(&plugin_dir(&rig).join("20-firmware.so"));
    let mut agent = rig.start_agent();
    let v5 = rsfw_image(5, 4000);
    rig.platform
        .push(&device(), &serve(&rig, "fw-5.bin", &v5))
        .unwrap();
    nth_pending(&rig, &agent, "fw-5.bin", 0);
    let failed = nth_pending(&rig, &agent, "fw-5.bin", 1);
    assert!(
        msg(&failed).contains("reboot_command `echo no reboot today >&2; exit 3` failed")
            && msg(&failed).contains("exit status: 3"),
        "{failed}"
    );
    let (_, status, _) = rig.cli(&["status"]);
    assert!(
        status.contains("reboot_command") && status.contains("exit status: 3"),
        "{status}"
    );
    assert!(
        rig.journal()["pending"]["fw-5.bin"].is_object(),
        "still pending"
    );

    // Rebooted by hand; the boot process has not said what runs yet: still pending.
    stop(&mut agent);
    rig.reboot();
    let agent = rig.spawn_agent();
    wait_log(&agent, "fw-5.bin: still pending (plugin firmware)");
    assert!(finals(&rig, "fw-5.bin").is_empty());
    // Now it has; SIGUSR1 asks again at once, no restart.
    std::fs::write(&booted, md5_of(&v5)).unwrap();
    agent.signal(nix::sys::signal::Signal::SIGUSR1);
    let r = rig.final_report(&agent, "fw-5.bin", Duration::from_secs(10));
    assert_eq!(state_of(&r), ("done", 0), "{r}");
}

#[test]
fn a_reboot_pending_report_made_while_the_link_is_down_is_sent_after_it_and_reboots_once() {
    let mut rig = Rig::new();
    let marker = rig.path().join("rebooted");
    rig.config["reboot_command"] = json!(format!("echo >> {}", marker.display()));
    // The install takes 2 s: over plugin_timeout_s, within the plugin's own bound.
    rig.config["plugin_timeout_s"] = json!(1);
    rig.config["plugin_config"] = json!({"slow": {"timeout_s": 10}});
    fixture(
        &rig,
        "rogue.c",
        "10-slow.so",
        &["PLUGIN_NAME=\"slow\"", "PENDING_AFTER_MS=2000"],
    );
    let agent = rig.start_agent();
    let (_, t) = rig.task("slow-fw.bin", 3000, 3);
    rig.platform.push(&device(), &t).unwrap();
    wait_log(&agent, "slow-fw.bin: plugin slow install");
    rig.broker.stop();
    wait_log(&agent, "slow-fw.bin written by plugin slow");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !marker.exists(),
        "no reboot before the platform heard of it"
    );
    let unacked = rig.journal()["unacked_reports"].clone();
    assert!(
        unacked.to_string().contains("reboot pending"),
        "journaled: {unacked}"
    );
    // (The platform's own subscription comes back with the broker too, maybe after the
    // agent's re-send: the broker's acknowledgement and the journal are what count.)
    rig.broker.restart();
    wait_log(
        &agent,
        "re-sending the unacknowledged burning report for slow-fw.bin",
    );
    let deadline = Instant::now() + T;
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "reboot_command ran after the acknowledgement"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rig.journal()["unacked_reports"], json!([]), "acknowledged");
    assert!(rig.platform.wait_connected(Duration::from_secs(10)));
    // Offered again (and acknowledged again): reboot_command does not run twice.
    rig.platform.push(&device(), &t).unwrap();
    nth_pending(&rig, &agent, "slow-fw.bin", 0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 1);
}

/// A rig whose plugin `kill` SIGKILLs the agent from an install of `reboot-*` (as a
/// reboot during the install would), logging each call to the returned file; with
/// `says_installed`, its `resagent_installed` answers 0 once it was called.
fn rebooting_install_rig(says_installed: bool) -> (Rig, PathBuf) {
    let rig = Rig::new();
    let installs = rig.path().join("installs");
    let kill = format!("KILL_AGENT=\"{}\"", installs.display());
    let installed = format!("INSTALLED_IF=\"{}\"", installs.display());
    let mut defines = vec!["PLUGIN_NAME=\"kill\"", kill.as_str()];
    if says_installed {
        defines.push(installed.as_str());
    }
    fixture(&rig, "rogue.c", "10-kill.so", &defines);
    (rig, installs)
}

#[test]
fn an_install_that_reboots_the_device_is_tried_twice_then_fails_minus_5() {
    let (mut rig, installs) = rebooting_install_rig(false);
    let mut agent = rig.start_agent();
    let (_, t) = rig.task("reboot-fw.bin", 3000, 4);
    rig.platform.push(&device(), &t).unwrap();
    for boot in 1..=2 {
        assert!(
            agent.wait_exit(T).is_some(),
            "the install killed the agent (boot {boot})"
        );
        rig.reboot();
        agent = rig.spawn_agent();
    }
    let r = rig.final_report(&agent, "reboot-fw.bin", T);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(
        msg(&r).contains("install interrupted 2 times: reboot or crash during install"),
        "{r}"
    );
    assert_eq!(
        std::fs::read_to_string(&installs).unwrap().lines().count(),
        2,
        "installed at most twice"
    );
    assert_eq!(rig.gets(&t).0, 1, "downloaded once");
    assert!(agent.is_alive());
    // The agent goes on with later tasks.
    let (_, later) = rig.task("later.bin", 2000, 5);
    rig.platform.push(&device(), &later).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "later.bin", T)),
        ("done", 0)
    );
}

#[test]
fn an_install_cut_short_that_took_is_done_when_the_plugin_says_so() {
    // It wrote its record before the "reboot": resagent_installed says so.
    let (mut rig, installs) = rebooting_install_rig(true);
    let mut agent = rig.start_agent();
    let (_, t) = rig.task("reboot-os.img", 3000, 6);
    rig.platform.push(&device(), &t).unwrap();
    assert!(agent.wait_exit(T).is_some(), "the install killed the agent");
    rig.reboot();
    let agent = rig.spawn_agent();
    let r = rig.final_report(&agent, "reboot-os.img", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    assert_eq!(
        std::fs::read_to_string(&installs).unwrap().lines().count(),
        1,
        "asked, not installed again"
    );
    assert_eq!(
        rig.journal()["installed"]["reboot-os.img"]["plugin"],
        "kill"
    );
}

#[test]
fn confirm_is_asked_again_every_60_s_while_pending() {
    let (mut rig, _, booted) = firmware_rig(true);
    build_firmware(&plugin_dir(&rig).join("20-firmware.so"));
    let mut agent = rig.start_agent();
    let v6 = rsfw_image(6, 3000);
    rig.platform
        .push(&device(), &serve(&rig, "fw-6.bin", &v6))
        .unwrap();
    nth_pending(&rig, &agent, "fw-6.bin", 0);
    stop(&mut agent);
    rig.reboot();
    let agent = rig.spawn_agent();
    wait_log(&agent, "fw-6.bin: still pending (plugin firmware)");
    // The boot process says what runs only later (an update daemon that comes up after
    // the agent); no signal, no restart: the next look, within a minute, confirms.
    std::fs::write(&booted, md5_of(&v6)).unwrap();
    let r = rig.final_report(&agent, "fw-6.bin", Duration::from_secs(75));
    assert_eq!(state_of(&r), ("done", 0), "{r}");
}

#[test]
fn a_name_only_a_plugin_may_install_never_reaches_the_default_installer() {
    let mut rig = Rig::new();
    rig.config["plugin_only"] = json!(["*.swu", "*.raucb"]);
    let agent = rig.start_agent();
    for name in ["rootfs-5.swu", "rootfs-5.SWU"] {
        let (_, t) = rig.task(name, 3000, 6);
        rig.platform.push(&device(), &t).unwrap();
        let r = rig.final_report(&agent, name, T);
        assert_eq!(state_of(&r), ("fail", -9), "{r}");
        assert!(
            msg(&r).contains("matches plugin_only pattern `*.swu`")
                && msg(&r).contains("no loaded plugin claims it"),
            "{r}"
        );
        assert!(!rig.resource(name).exists(), "nothing placed");
        assert_eq!(rig.gets(&t).0, 0, "nothing fetched");
    }
    let (_, t) = rig.task("notes.txt", 1000, 7);
    rig.platform.push(&device(), &t).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "notes.txt", T)),
        ("done", 0)
    );
}

#[test]
fn installed_already_never_outlives_the_slot_of_a_plugin_that_cannot_say() {
    let mut rig = Rig::new();
    fixture(&rig, "rogue.c", "10-slot.so", &["PLUGIN_NAME=\"slot\""]);
    let agent = rig.start_agent();
    let (_, a) = rig.task("os-a.img", 2000, 8);
    let (_, b) = rig.task("os-b.img", 2000, 9);
    for (t, name, n) in [
        (&a, "os-a.img", 0),
        (&b, "os-b.img", 0),
        (&b, "os-b.img", 1),
    ] {
        rig.platform.push(&device(), t).unwrap();
        assert_eq!(state_of(&nth_final(&rig, &agent, name, n)), ("done", 0));
    }
    assert_eq!(
        rig.gets(&b).0,
        1,
        "os-b is what the slot holds: no transfer"
    );
    // os-a was installed by the same plugin before os-b: no longer taken as installed.
    rig.platform.push(&device(), &a).unwrap();
    assert_eq!(
        state_of(&nth_final(&rig, &agent, "os-a.img", 1)),
        ("done", 0)
    );
    assert_eq!(
        rig.gets(&a).0,
        2,
        "installed again, not reported from the record"
    );
}

fn md5_of(bytes: &[u8]) -> String {
    let p = std::env::temp_dir().join(format!("resagent-md5-{}", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    let m = md5_hex(&p);
    let _ = std::fs::remove_file(p);
    m
}

#[test]
fn a_plugin_swapped_or_rewritten_after_the_scan_never_runs() {
    let mut rig = Rig::new();
    let dir = plugin_dir(&rig);
    let installed = dir.join("20-copy.so");
    cc(
        &project().join("tests/plugins/copyinstall.c"),
        &installed,
        "-std=gnu99",
        &[],
    );
    let agent = rig.start_agent();
    wait_log(&agent, "plugin copyinstall loaded");
    let marker = rig.path().join("rogue-loaded");
    let rogue = rig.path().join("rogue.so");
    cc(
        &project().join("tests/plugins/rogue.c"),
        &rogue,
        "-std=gnu99",
        &[
            "PLUGIN_NAME=\"rogue\"",
            &format!("LOAD_MARKER=\"{}\"", marker.display()),
        ],
    );
    // Renamed over the checked file.
    let swap = dir.join(".swap");
    std::fs::copy(&rogue, &swap).unwrap();
    std::fs::rename(&swap, &installed).unwrap();
    let (_, a) = rig.task("a.cfg", 1000, 1);
    rig.platform.push(&device(), &a).unwrap();
    assert_eq!(state_of(&rig.final_report(&agent, "a.cfg", T)), ("done", 0));
    assert_eq!(rig.journal()["installed"]["a.cfg"]["plugin"], "copyinstall");
    // Rewritten in place (same inode).
    std::fs::write(&installed, std::fs::read(&rogue).unwrap()).unwrap();
    let (_, b) = rig.task("b.cfg", 1000, 2);
    rig.platform.push(&device(), &b).unwrap();
    assert_eq!(state_of(&rig.final_report(&agent, "b.cfg", T)), ("done", 0));
    assert_eq!(rig.journal()["installed"]["b.cfg"]["plugin"], "copyinstall");
    assert!(!marker.exists(), "the swapped code was never loaded");
}

fn helper_pid(file: &Path) -> i32 {
    let deadline = Instant::now() + T;
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "the helper wrote its pid");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_forked_helper_holds_nothing_the_group_ends_with_the_call() {
    helpers_end_with_the_call(&[]);
}

#[test]
fn a_helper_that_leaves_the_group_ends_with_the_call_too() {
    // `setsid` and a second fork, as a daemon does: out of the call's process group.
    helpers_end_with_the_call(&["SETSID"]);
}

/// A plugin forks a helper (built with `extra` defines) that would sleep 25 s: a call
/// that hangs is timed out and one that answers at once is done at once — the helper
/// holds neither, and is gone with the call.
fn helpers_end_with_the_call(extra: &[&str]) {
    let mut rig = Rig::new();
    rig.config["plugin_timeout_s"] = json!(2);
    let hang_pid = rig.path().join("hang-helper");
    let quick_pid = rig.path().join("quick-helper");
    let defines = |name: &str, pid_file: &Path, more: &[&'static str]| {
        let mut d = vec![
            format!("PLUGIN_NAME=\"{name}\""),
            format!("HELPER_PID=\"{}\"", pid_file.display()),
        ];
        d.extend(extra.iter().chain(more).map(|s| s.to_string()));
        d
    };
    let hang = defines("hang", &hang_pid, &["HANG"]);
    fixture(
        &rig,
        "rogue.c",
        "10-hang.so",
        &hang.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let agent = rig.start_agent();
    let (_, t) = rig.task("slow.bin", 1000, 1);
    rig.platform.push(&device(), &t).unwrap();
    wait_log(&agent, "slow.bin: plugin hang install");
    let started = Instant::now();
    let r = rig.final_report(&agent, "slow.bin", T);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(msg(&r).contains("timed out"), "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(2 + 3 + 1),
        "report after {:?}, not when the 25 s helper ends",
        started.elapsed()
    );
    let helper = helper_pid(&hang_pid);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!alive(helper), "the helper is gone with the timed-out call");

    // A plugin that answers at once but leaves a helper behind: done at once, helper gone.
    std::fs::remove_file(plugin_dir(&rig).join("10-hang.so")).unwrap();
    let quick = defines("quick", &quick_pid, &[]);
    fixture(
        &rig,
        "rogue.c",
        "10-quick.so",
        &quick.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    wait_log(&agent, "plugin quick loaded");
    let (_, q) = rig.task("quick.bin", 1000, 2);
    rig.platform.push(&device(), &q).unwrap();
    wait_log(&agent, "quick.bin: plugin quick install");
    let started = Instant::now();
    assert_eq!(
        state_of(&rig.final_report(&agent, "quick.bin", T)),
        ("done", 0)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let helper = helper_pid(&quick_pid);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!alive(helper), "the helper is gone with the call");
    if !extra.is_empty() {
        // Out of the group, only the call's sweep ends it, and says so.
        assert!(
            agent.log_text().contains("outlived the call"),
            "{}",
            agent.log_text()
        );
    }
}

/// Socket inodes among `pid`'s descriptors.
fn sockets_of(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.display().to_string())
        .filter(|t| t.starts_with("socket:"))
        .collect()
}

#[test]
fn the_plugin_child_is_a_plain_process_without_the_agents_sockets_or_secrets() {
    let mut rig = Rig::new();
    let seen = rig.path().join("seen.txt");
    fixture(
        &rig,
        "rogue.c",
        "10-inspect.so",
        &[
            "PLUGIN_NAME=\"inspect\"",
            &format!("INSPECT=\"{}\"", seen.display()),
        ],
    );
    let agent = rig.spawn_agent_under(
        &[
            "env",
            "https_proxy=http://user:proxy-password@127.0.0.1:9",
            "AWS_SECRET_ACCESS_KEY=do-not-leak",
            "LANG=C.UTF-8",
        ],
        "info",
    );
    wait_log(&agent, "plugin inspect loaded");
    rig.wait_asked(&agent);
    let agent_sockets = sockets_of(agent.pid());
    assert!(!agent_sockets.is_empty(), "the agent holds its MQTT socket");
    let (_, t) = rig.task("x.bin", 1000, 1);
    rig.platform.push(&device(), &t).unwrap();
    assert_eq!(state_of(&rig.final_report(&agent, "x.bin", T)), ("done", 0));
    let seen = std::fs::read_to_string(&seen).unwrap();
    let fds: Vec<(&str, &str)> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("fd "))
        .filter_map(|l| l.split_once(' '))
        // (the file the plugin writes this into is its own)
        .filter(|(_, target)| !target.ends_with("seen.txt"))
        .collect();
    let numbers: Vec<&str> = fds.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        ["0", "1", "2", "3"],
        "stdio and the host channel only: {seen}"
    );
    assert!(
        fds[0].1.contains("memfd:resagent-plugin"),
        "stdin is the sealed image: {seen}"
    );
    for (_, target) in &fds {
        assert!(
            !agent_sockets.iter().any(|s| s == target),
            "the agent's socket {target} reached the plugin"
        );
    }
    let env: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("env "))
        .collect();
    for var in &env {
        let key = var.split('=').next().unwrap();
        assert!(
            matches!(key, "PATH" | "LANG" | "TZ" | "RESAGENT_CONFIG") || key.starts_with("LC_"),
            "{key} reached the plugin"
        );
    }
    assert!(
        env.contains(&"LANG=C.UTF-8"),
        "allowed variables pass: {env:?}"
    );
    assert!(!seen.contains("proxy-password") && !seen.contains("do-not-leak"));
    assert!(seen.contains("SigBlk:\t0000000000000000"), "{seen}");
    let ignored = seen
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:\t"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap();
    // Signals 32 and 33 are the C library's own (no program can use them); every other
    // signal has its default disposition.
    assert_eq!(ignored & !0x1_8000_0000, 0, "{seen}");
    let ids: Vec<&str> = seen
        .lines()
        .find_map(|l| l.strip_prefix("pgid "))
        .unwrap()
        .split(' ')
        .collect();
    // `pgid P pid C ppid P`: the plugin runs in the call's own group, led by its
    // supervisor (the subreaper that ends its helpers), whose parent is the agent.
    assert_eq!(
        ids[0], ids[4],
        "its own process group, led by the call: {ids:?}"
    );
    assert_ne!(
        ids[0],
        agent.pid().to_string(),
        "not the agent's group: {ids:?}"
    );
}

#[test]
fn raised_signals_and_abort_are_crashes_never_declines() {
    let mut rig = Rig::new();
    let cases = [
        ("RAISE=SIGSEGV", "segv.bin", "SIGSEGV"),
        ("RAISE=SIGBUS", "bus.bin", "SIGBUS"),
        ("ABORT", "abort.bin", "SIGABRT"),
    ];
    let agent = rig.start_agent();
    for (define, name, signal) in cases {
        for f in std::fs::read_dir(plugin_dir(&rig)).unwrap().flatten() {
            std::fs::remove_file(f.path()).unwrap();
        }
        fixture(
            &rig,
            "rogue.c",
            "10-crash.so",
            &["PLUGIN_NAME=\"crasher\"", define],
        );
        agent.signal(nix::sys::signal::Signal::SIGHUP);
        std::thread::sleep(Duration::from_millis(300));
        let (_, t) = rig.task(name, 1000, 1);
        rig.platform.push(&device(), &t).unwrap();
        let r = rig.final_report(&agent, name, T);
        assert_eq!(state_of(&r), ("fail", -5), "{define}: {r}");
        assert!(
            msg(&r).contains("plugin crasher") && msg(&r).contains(&format!("crashed ({signal})")),
            "{define}: {r}"
        );
        assert!(
            !rig.resource(name).exists(),
            "{define}: not installed by default"
        );
    }
}

/// User + system CPU seconds of process `pid` so far.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn a_flood_of_progress_and_log_calls_never_loses_the_answer_or_spins_the_agent() {
    let mut rig = Rig::new();
    // The default interval: each percent is not a message of its own (with 0, every
    // change would be published, and a flood of them is what the user asked for).
    rig.config["progress_interval_s"] = json!(1);
    fixture(
        &rig,
        "rogue.c",
        "10-flood.so",
        &["PLUGIN_NAME=\"flood\"", "FLOOD"],
    );
    let agent = rig.spawn_agent_under(&[], "info");
    wait_log(&agent, "plugin flood loaded");
    rig.wait_asked(&agent);
    let before = cpu_seconds(agent.pid());
    let (_, t) = rig.task("loud.bin", 1000, 1);
    rig.platform.push(&device(), &t).unwrap();
    let r = rig.final_report(&agent, "loud.bin", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    let used = cpu_seconds(agent.pid()) - before;
    assert!(
        used < 10.0,
        "the agent used {used:.1} s of CPU for one call"
    );
    let log = agent.log_text();
    assert!(
        log.contains("more log lines of this call not shown"),
        "bounded log"
    );
    assert!(
        log.lines().count() < 5000,
        "{} log lines",
        log.lines().count()
    );
}

#[test]
fn sigterm_during_the_start_up_probes_ends_the_agent_within_5_s() {
    let mut rig = Rig::new();
    rig.config["plugin_timeout_s"] = json!(120);
    fixture(
        &rig,
        "rogue.c",
        "10-stuck.so",
        &["PLUGIN_NAME=\"stuck\"", "HANG_IN_ABI"],
    );
    let mut agent = rig.spawn_agent();
    wait_log(&agent, "started for");
    std::thread::sleep(Duration::from_millis(500));
    let took = agent.terminate();
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[test]
fn plugin_run_installs_and_refuses_at_the_desk_without_broker_or_daemon() {
    let (rig, partition, _) = firmware_rig(false);
    let so = rig.path().join("20-firmware.so");
    build_firmware(&so);
    let good = rig.path().join("good.img");
    std::fs::write(&good, rsfw_image(5, 3000)).unwrap();
    let mut bad = rsfw_image(6, 3000);
    bad[100] ^= 1;
    let bad_file = rig.path().join("bad.img");
    std::fs::write(&bad_file, &bad).unwrap();
    let so_s = so.to_str().unwrap();

    let (code, out, err) = rig.cli(&[
        "plugin",
        "run",
        so_s,
        good.to_str().unwrap(),
        "--name",
        "fw-5.bin",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("validate: accepted") && out.contains("verdict:  installed"),
        "{out}"
    );
    assert!(out.contains("progress: 100%"), "{out}");
    assert_eq!(
        std::fs::read(&partition).unwrap(),
        std::fs::read(&good).unwrap()
    );

    let (code, out, err) = rig.cli(&[
        "plugin",
        "run",
        so_s,
        bad_file.to_str().unwrap(),
        "--name",
        "fw-6.bin",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("CRC-32") && out.contains("refused"), "{out}");
    assert_eq!(
        std::fs::read(&partition).unwrap(),
        std::fs::read(&good).unwrap(),
        "untouched"
    );

    let (code, out, _) = rig.cli(&[
        "plugin",
        "run",
        so_s,
        good.to_str().unwrap(),
        "--name",
        "notes.txt",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("declined"), "{out}");
}

#[test]
fn a_plugin_built_against_the_first_header_loads_and_installs_as_before() {
    let mut rig = Rig::new();
    let out = plugin_dir(&rig).join("20-copy.so");
    cc_against(
        &project().join("tests/plugins/abi1"),
        &project().join("tests/plugins/copyinstall.c"),
        &out,
        "-std=gnu99",
        &[],
    );
    let agent = rig.start_agent();
    wait_log(&agent, "plugin copyinstall loaded");
    let (_, t) = rig.task("old.cfg", 5000, 1);
    rig.platform.push(&device(), &t).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "old.cfg", T)),
        ("done", 0)
    );
    rig.assert_installed("old.cfg", &t);
    assert_eq!(
        rig.journal()["installed"]["old.cfg"]["plugin"],
        "copyinstall"
    );
    let burning: Vec<u64> = rig
        .platform
        .reports_for(&device(), "old.cfg")
        .iter()
        .filter(|m| m["progress"]["state"] == "burning")
        .map(|m| m["progress"]["percent"].as_u64().unwrap())
        .collect();
    assert!(burning.contains(&50), "{burning:?}");
}

#[test]
fn the_local_platform_moves_on_after_a_fail_and_writes_its_reports_as_json_lines() {
    let d = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(d.path(), "");
    let bad = d.path().join("board.fw");
    std::fs::write(&bad, b"not a firmware image").unwrap();
    let good = d.path().join("notes.txt");
    std::fs::write(&good, b"some notes").unwrap();
    let plugins = d.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    cc(
        &project().join("plugins/examples/fwcheck.c"),
        &plugins.join("10-fwcheck.so"),
        "-std=c99",
        &[],
    );
    let reports = d.path().join("reports.jsonl");
    let platform_exe =
        Path::new(env!("CARGO_BIN_EXE_resagent")).with_file_name("resagent-platform");
    let _platform = Running(
        Command::new(&platform_exe)
            .args(["--device", &device(), "--broker", &broker.uri()])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--uploads")
            .arg(d.path().join("uploads"))
            .arg("--offer")
            .arg(&bad)
            .arg("--offer")
            .arg(&good)
            .arg("--reports")
            .arg(&reports)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", platform_exe.display())),
    );
    let config = hand_config(
        d.path(),
        &broker.uri(),
        json!({"progress_interval_s": 0, "plugin_dir": plugins}),
    );
    let _agent = Running(
        Command::new(env!("CARGO_BIN_EXE_resagent"))
            .args(["run", "-c"])
            .arg(&config)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Both offers end, the failed one first; the file holds the reports.
    let deadline = Instant::now() + T;
    let finals = loop {
        let text = std::fs::read_to_string(&reports).unwrap_or_default();
        // Complete lines only (the platform may be writing the next one).
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let lines: Vec<Value> = complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let finals: Vec<(String, (String, i64))> = lines
            .iter()
            .filter(|m| matches!(m["progress"]["state"].as_str(), Some("done" | "fail")))
            .map(|m| {
                let (s, c) = state_of(m);
                (m["name"].as_str().unwrap().to_string(), (s.to_string(), c))
            })
            .collect();
        if finals.len() >= 2 {
            assert!(lines
                .iter()
                .all(|m| m["type"] == "report_download_progress"));
            break finals;
        }
        assert!(Instant::now() < deadline, "reports so far: {lines:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        finals[0],
        ("board.fw".to_string(), ("fail".to_string(), -9))
    );
    assert_eq!(
        finals[1],
        ("notes.txt".to_string(), ("done".to_string(), 0))
    );
    assert_eq!(
        std::fs::read(d.path().join("res/notes.txt")).unwrap(),
        b"some notes"
    );
}

#[test]
fn a_patch_whose_target_a_plugin_writes_pending_is_confirmed_as_that_target() {
    let (mut rig, partition, booted) = firmware_rig(true);
    build_firmware(&plugin_dir(&rig).join("20-firmware.so"));
    // The base the patch was made against, where the agent looks for it.
    let v3 = rsfw_image(3, 200_000);
    std::fs::create_dir_all(rig.path().join("resources")).unwrap();
    std::fs::write(rig.resource("fw-3.bin"), &v3).unwrap();
    let mut v3b = v3.clone();
    v3b[1000..1100].fill(0x5a);
    let v3b = {
        // Still a valid image: the payload's CRC in its header.
        let crc = crc32(&v3b[16..]);
        v3b[12..16].copy_from_slice(&crc.to_le_bytes());
        v3b
    };
    let patch = crate::delta::make_patch(rig.path(), &v3, &v3b);
    let mut agent = rig.start_agent();
    let t = serve(&rig, "fw-3.bin.rdelta", &patch);
    rig.platform.push(&device(), &t).unwrap();
    nth_pending(&rig, &agent, "fw-3.bin.rdelta", 0);
    assert_eq!(
        std::fs::read(&partition).unwrap(),
        v3b,
        "the slot holds the target"
    );
    let pending = &rig.journal()["pending"]["fw-3.bin.rdelta"];
    assert_eq!(pending["target"]["name"], "fw-3.bin", "{pending}");
    assert_eq!(pending["target"]["md5sum"], md5_of(&v3b), "{pending}");

    // After the reboot the plugin is asked about what it wrote: the target's name and
    // MD5 (asked about the patch, it would say "did not stay": a false fail).
    std::fs::write(&booted, md5_of(&v3b)).unwrap();
    stop(&mut agent);
    rig.reboot();
    let agent = rig.spawn_agent();
    let r = rig.final_report(&agent, "fw-3.bin.rdelta", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}\n{}", agent.log_text());
    let journal = rig.journal();
    assert!(journal["pending"].is_null(), "{journal}");
    assert_eq!(journal["installed"]["fw-3.bin"]["md5sum"], md5_of(&v3b));
    assert_eq!(journal["installed"]["fw-3.bin"]["plugin"], "firmware");
}

#[test]
fn plugin_confirm_at_the_desk_asks_the_plugin_as_after_a_reboot() {
    let (rig, partition, booted) = firmware_rig(true);
    let so = rig.path().join("20-firmware.so");
    build_firmware(&so);
    let so_s = so.to_str().unwrap();
    let image = rsfw_image(7, 3000);
    let file = rig.path().join("fw.img");
    std::fs::write(&file, &image).unwrap();
    let (code, out, err) = rig.cli(&[
        "plugin",
        "run",
        so_s,
        file.to_str().unwrap(),
        "--name",
        "fw-7.bin",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("pending a reboot"), "{out}");
    assert_eq!(std::fs::read(&partition).unwrap(), image);

    // Before the boot process says anything: still pending (exit 3).
    let (code, out, err) = rig.cli(&["plugin", "confirm", so_s, "fw-7.bin"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains(&md5_of(&image)) && out.contains("still pending"),
        "{out}"
    );
    // The device booted another image: the install did not take (exit 1).
    std::fs::write(&booted, md5_of(b"another image")).unwrap();
    let (code, out, _) = rig.cli(&[
        "plugin",
        "confirm",
        so_s,
        "fw-7.bin",
        "--md5",
        &md5_of(&image),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("did not stay") && out.contains("did not take"),
        "{out}"
    );
    // It booted the new image: confirmed (exit 0), from the record `plugin run` left.
    std::fs::write(&booted, md5_of(&image)).unwrap();
    let (code, out, err) = rig.cli(&["plugin", "confirm", so_s, "fw-7.bin"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("the new image runs"), "{out}");
    // Nothing left pending to ask about, and no MD5 given: a usage error.
    let (code, _, err) = rig.cli(&["plugin", "confirm", so_s, "fw-7.bin"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--md5"), "{err}");
}

/// The offer `resagent-platform` at `url` makes to the test device, from its
/// `/reports.json` (None: nothing on offer).
fn offer_of(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", &format!("{url}/reports.json")])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["devices"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["device"] == device()))
        .and_then(|d| d["offer"].as_str().map(str::to_string))
}

#[test]
fn the_local_platform_keeps_a_failed_task_on_offer_unless_once() {
    for once in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let broker = Mosquitto::start(d.path(), "");
        let bad = d.path().join("board.fw");
        std::fs::write(&bad, b"not a firmware image").unwrap();
        let plugins = d.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        cc(
            &project().join("plugins/examples/fwcheck.c"),
            &plugins.join("10-fwcheck.so"),
            "-std=c99",
            &[],
        );
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let platform_exe =
            Path::new(env!("CARGO_BIN_EXE_resagent")).with_file_name("resagent-platform");
        let mut cmd = Command::new(&platform_exe);
        cmd.args(["--device", &device(), "--broker", &broker.uri()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--uploads")
            .arg(d.path().join("uploads"))
            .arg("--offer")
            .arg(&bad)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if once {
            cmd.arg("--once");
        }
        let _platform = Running(cmd.spawn().unwrap());
        let config = hand_config(d.path(), &broker.uri(), json!({"plugin_dir": plugins}));
        let _agent = Running(
            Command::new(env!("CARGO_BIN_EXE_resagent"))
                .args(["run", "-c"])
                .arg(&config)
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        // The fail is in once the offer moves (or, kept, once the page lists it as sent).
        let deadline = Instant::now() + T;
        let fails = |url: &str| {
            Command::new("curl")
                .args(["-sf", &format!("{url}/reports.json")])
                .output()
                .ok()
                .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
                .and_then(|v| v["reports"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter(|r| r["message"]["progress"]["state"] == "fail")
                .count()
        };
        while fails(&url) == 0 {
            assert!(Instant::now() < deadline, "no fail (once: {once})");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(600));
        if once {
            assert_eq!(offer_of(&url), None, "--once drops it after its fail");
        } else {
            assert_eq!(offer_of(&url).as_deref(), Some("board.fw"), "kept on offer");
            // A device that asks again gets it again (Tencent's SDK sample does so).
            let asked = Command::new(env!("CARGO_BIN_EXE_resagent"))
                .args(["check", "-c"])
                .arg(&config)
                .status()
                .unwrap();
            assert!(asked.success());
            while fails(&url) < 2 {
                assert!(Instant::now() < deadline, "asked again, no second try");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}
