//! The device decides when (issue #28): download windows, scheduled rate caps, the
//! install and reboot gates, and a clock it can trust. The agent's wall clock is moved
//! with libfaketime (Debian's `faketime`): an offset in a file it reads on every call,
//! the monotonic clock left alone — as NTP moves a device's clock — and `TZ=UTC`, so
//! "01:00" is a known instant.

use crate::common::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const T: Duration = Duration::from_secs(60);
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The agent's wall clock: an offset from the real one, changed at any time.
struct FakeClock {
    file: PathBuf,
}

impl FakeClock {
    fn new(rig: &Rig) -> FakeClock {
        assert!(
            std::path::Path::new(LIBFAKETIME).exists(),
            "libfaketime (apt-get install faketime)"
        );
        let clock = FakeClock {
            file: rig.path().join("faketime"),
        };
        clock.set_offset(0);
        clock
    }

    fn set_offset(&self, secs: i64) {
        // Written whole, then renamed: the agent never reads half an offset.
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, format!("{secs:+}\n")).unwrap();
        std::fs::rename(&tmp, &self.file).unwrap();
    }

    /// Sets the clock so that it reads `hh:mm:ss` UTC of a day `days` after today.
    fn set_time_of_day(&self, days: i64, hh: i64, mm: i64, ss: i64) {
        let now = real_now();
        let midnight = now - now % 86_400;
        let target = midnight + days * 86_400 + hh * 3600 + mm * 60 + ss;
        self.set_offset(target - now);
    }

    /// `env` and its arguments: the agent under the fake clock, in UTC.
    fn wrapper(&self) -> Vec<String> {
        vec![
            "env".into(),
            format!("LD_PRELOAD={LIBFAKETIME}"),
            format!("FAKETIME_TIMESTAMP_FILE={}", self.file.display()),
            "FAKETIME_NO_CACHE=1".into(),
            "FAKETIME_DONT_FAKE_MONOTONIC=1".into(),
            "TZ=UTC".into(),
        ]
    }
}

fn real_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Starts the agent under `clock` and waits until it asked for a task.
fn start_faked(rig: &mut Rig, clock: &FakeClock) -> Agent {
    let wrapper = clock.wrapper();
    let args: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = rig.spawn_agent_under(&args, "debug");
    let asked = rig
        .platform
        .wait_for(&device(), Duration::from_secs(20), |m| {
            m["type"] == "get_download_task"
        });
    assert!(asked.is_some(), "agent asked; log:\n{}", agent.log_text());
    agent
}

/// The first report about `name` whose `result_msg` contains `needle`.
fn wait_report(rig: &Rig, name: &str, needle: &str, within: Duration) -> Value {
    rig.platform
        .wait_for(&device(), within, |m| {
            m["name"] == name
                && m["progress"]["result_msg"]
                    .as_str()
                    .is_some_and(|s| s.contains(needle))
        })
        .unwrap_or_else(|| panic!("no report of {name} saying {needle:?}"))
}

#[test]
fn a_task_outside_its_window_waits_and_runs_inside_it() {
    let mut rig = Rig::new();
    rig.config["download_windows"] = json!(["01:00-05:00"]);
    let clock = FakeClock::new(&rig);
    clock.set_time_of_day(1, 0, 59, 52);
    let agent = start_faked(&mut rig, &clock);
    let (_, t) = rig.task("night.bin", 300_000, 81);
    rig.platform.push(&device(), &t).unwrap();
    let waiting = wait_report(&rig, "night.bin", "waiting for the download window", T);
    assert_eq!(state_of(&waiting), ("downloading", 0), "{waiting}");
    assert!(
        waiting["progress"]["result_msg"]
            .as_str()
            .unwrap()
            .contains("01:00-05:00 (opens in"),
        "{waiting}"
    );
    let (_, status, _) = rig.cli(&["status"]);
    assert!(
        status.contains("held: waiting for the download window 01:00-05:00"),
        "{status}"
    );
    assert_eq!(rig.gets(&t).0, 0, "nothing fetched outside the window");
    // At 01:00 (the agent's clock) it goes.
    let done = rig.final_report(&agent, "night.bin", Duration::from_secs(30));
    assert_eq!(state_of(&done), ("done", 0));
    rig.assert_installed("night.bin", &t);
    assert_eq!(rig.gets(&t).0, 1);
    let (_, status, _) = rig.cli(&["status"]);
    assert!(!status.contains("held"), "{status}");
}

#[test]
fn a_window_closing_mid_transfer_pauses_and_the_next_resumes_with_range() {
    let mut rig = Rig::new();
    rig.config["download_windows"] = json!(["01:00-05:00"]);
    let clock = FakeClock::new(&rig);
    clock.set_time_of_day(1, 4, 59, 55);
    let agent = start_faked(&mut rig, &clock);
    let size = 3 << 20;
    let (_, t) = rig.task("long.bin", size, 82);
    rig.throttle(&t, 256 << 10);
    rig.platform.push(&device(), &t).unwrap();
    wait_log_within(
        &agent,
        "long.bin: the download window closed; paused at byte",
        T,
    );
    let waiting = wait_report(&rig, "long.bin", "waiting for the download window", T);
    let paused_percent = waiting["progress"]["percent"].as_u64().unwrap();
    assert!(paused_percent > 0 && paused_percent < 100, "{waiting}");
    // Paused: nothing more is fetched while the window is shut.
    let staged = || {
        std::fs::metadata(rig.path().join("resources/.resagent-staging/long.bin"))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    let at_pause = staged();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        staged(),
        at_pause,
        "no byte fetched while the window is shut"
    );
    assert_eq!(rig.gets(&t).0, 1);
    // The next night's window: resumed with Range from the bytes on disk.
    clock.set_time_of_day(2, 1, 0, 0);
    let done = rig.final_report(&agent, "long.bin", Duration::from_secs(40));
    assert_eq!(state_of(&done), ("done", 0), "{}", agent.log_text());
    rig.assert_installed("long.bin", &t);
    let requests = rig.requests_for(&t);
    assert_eq!(requests.len(), 2, "{requests:?}");
    let range = requests[1].range.clone().unwrap_or_default();
    let from: u64 = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap_or_else(|_| panic!("a Range request: {range:?}"));
    assert!(from > 0, "{range}");
    // Fetched twice: at most what was in flight when the window closed.
    let (_, served) = rig.gets(&t);
    assert!(
        served <= size + (1 << 20),
        "served {served} bytes for {size}"
    );
}

#[test]
fn check_now_lifts_the_window_once() {
    let mut rig = Rig::new();
    rig.config["download_windows"] = json!(["01:00-05:00"]);
    let clock = FakeClock::new(&rig);
    clock.set_time_of_day(1, 12, 0, 0);
    let agent = start_faked(&mut rig, &clock);
    let (_, t) = rig.task("urgent.bin", 200_000, 83);
    rig.platform.push(&device(), &t).unwrap();
    wait_report(&rig, "urgent.bin", "opens in 13 h", T);
    let (code, out, _) = rig.cli(&["check", "--now"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("goes now"), "{out}");
    let done = rig.final_report(&agent, "urgent.bin", T);
    assert_eq!(state_of(&done), ("done", 0));
    // Once: the next task waits for the window again.
    let (_, t2) = rig.task("later.bin", 200_000, 84);
    rig.platform.push(&device(), &t2).unwrap();
    wait_report(&rig, "later.bin", "waiting for the download window", T);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rig.gets(&t2).0, 0);
}

#[test]
fn a_scheduled_cap_switches_rate_at_its_boundary() {
    let mut rig = Rig::new();
    rig.config["max_bytes_per_s"] = json!([
        {"from": "00:00", "to": "01:00", "bytes_per_s": 131_072},
        {"from": "01:00", "to": "02:00", "bytes_per_s": 2_097_152},
    ]);
    let clock = FakeClock::new(&rig);
    clock.set_time_of_day(1, 0, 59, 50);
    let agent = start_faked(&mut rig, &clock);
    let size: u64 = 6 << 20;
    let (_, t) = rig.task("capped.bin", size, 85);
    let pushed = Instant::now();
    rig.platform.push(&device(), &t).unwrap();
    // Under the first cap: at most 128 KiB/s (plus a 256 KiB chunk of slack), counted
    // as the agent writes them (the storage's count includes the socket's buffers).
    std::thread::sleep(Duration::from_millis(2500));
    let early = std::fs::metadata(rig.path().join("resources/.resagent-staging/capped.bin"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        early > 0 && early <= 3 * 131_072 + (256 << 10),
        "{early} bytes in 2.5 s"
    );
    wait_log_within(&agent, "rate cap now 2097152 bytes/s", T);
    let done = rig.final_report(&agent, "capped.bin", Duration::from_secs(30));
    assert_eq!(state_of(&done), ("done", 0));
    // At the first cap alone 6 MiB would take 48 s.
    assert!(pushed.elapsed() < Duration::from_secs(30));
}

/// An install gate that answers what the file `answer` says (an exit code), printing a
/// line that names the resource as the agent gave it.
fn gate_script(rig: &Rig, file: &str) -> (String, PathBuf) {
    let answer = rig.path().join(format!("{file}.answer"));
    let script = rig.path().join(format!("{file}.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"machine busy: $RESAGENT_GATE $RESAGENT_NAME $RESAGENT_MD5 $(test -f \"$RESAGENT_PATH\" && echo has-file)\"\nexit $(cat '{}')\n",
            answer.display()
        ),
    )
    .unwrap();
    (format!("sh {}", script.display()), answer)
}

/// A rig whose `install_gate_command` answers what its file says (75 to begin with),
/// asked again after `retry_s`; the file to change the answer.
fn install_gated_rig(retry_s: u64) -> (Rig, PathBuf) {
    let mut rig = Rig::new();
    let (gate, answer) = gate_script(&rig, "install-gate");
    rig.config["install_gate_command"] = json!(gate);
    rig.config["gate_retry_s"] = json!(retry_s);
    std::fs::write(&answer, "75").unwrap();
    (rig, answer)
}

#[test]
fn the_install_gate_goes_waits_and_refuses() {
    let (mut rig, answer) = install_gated_rig(1);
    let agent = rig.start_agent();
    let (_, t) = rig.task("press.cfg", 50_000, 86);
    rig.platform.push(&device(), &t).unwrap();
    // 75: not now — `burning` 0 with the gate's line, the file not installed, status says why.
    let later = wait_report(&rig, "press.cfg", "install gate: not now", T);
    assert_eq!(state_of(&later), ("burning", 0), "{later}");
    assert_eq!(later["progress"]["percent"], 0, "{later}");
    let msg = later["progress"]["result_msg"].as_str().unwrap();
    let md5 = t["md5sum"].as_str().unwrap();
    assert!(
        msg.contains(&format!("machine busy: install press.cfg {md5} has-file")),
        "{msg}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!rig.resource("press.cfg").exists());
    let (_, status, _) = rig.cli(&["status"]);
    assert!(
        status.contains("held: the install gate says not now"),
        "{status}"
    );
    // 0: go.
    std::fs::write(&answer, "0").unwrap();
    let done = rig.final_report(&agent, "press.cfg", T);
    assert_eq!(state_of(&done), ("done", 0));
    rig.assert_installed("press.cfg", &t);
    // Anything else: fail -5 with the line, nothing installed.
    std::fs::write(&answer, "3").unwrap();
    let (_, t2) = rig.task("press2.cfg", 50_000, 87);
    rig.platform.push(&device(), &t2).unwrap();
    let fail = rig.final_report(&agent, "press2.cfg", T);
    assert_eq!(state_of(&fail), ("fail", -5), "{fail}");
    assert!(
        fail["progress"]["result_msg"]
            .as_str()
            .unwrap()
            .contains("install gate refused (exit 3): machine busy: install press2.cfg"),
        "{fail}"
    );
    assert!(!rig.resource("press2.cfg").exists());
}

#[test]
fn the_reboot_gate_goes_waits_and_refuses() {
    let mut rig = Rig::new();
    let marker = rig.path().join("rebooted");
    rig.config["reboot_command"] = json!(format!("echo >> {}", marker.display()));
    let (gate, answer) = gate_script(&rig, "reboot-gate");
    rig.config["reboot_gate_command"] = json!(gate);
    rig.config["gate_retry_s"] = json!(1);
    fixture(
        &rig,
        "rogue.c",
        "10-ab.so",
        &["PLUGIN_NAME=\"ab\"", "PENDING_AFTER_MS=10"],
    );
    std::fs::write(&answer, "75").unwrap();
    let agent = rig.start_agent();
    let (_, t) = rig.task("fw-1.bin", 3000, 88);
    rig.platform.push(&device(), &t).unwrap();
    let later = wait_report(&rig, "fw-1.bin", "reboot gate: not now", T);
    assert_eq!(state_of(&later), ("burning", 0), "{later}");
    assert_eq!(later["progress"]["percent"], 100, "{later}");
    assert!(
        later["progress"]["result_msg"]
            .as_str()
            .unwrap()
            .contains("machine busy: reboot fw-1.bin"),
        "{later}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!marker.exists(), "no reboot while the gate says not now");
    std::fs::write(&answer, "0").unwrap();
    let deadline = Instant::now() + T;
    while !marker.exists() {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    // A refusal: fail -5 with the line; reboot_command does not run.
    std::fs::write(&marker, "").unwrap();
    std::fs::write(&answer, "1").unwrap();
    let (_, t2) = rig.task("fw-2.bin", 3000, 89);
    rig.platform.push(&device(), &t2).unwrap();
    let fail = wait_report(&rig, "fw-2.bin", "reboot gate refused (exit 1)", T);
    assert_eq!(state_of(&fail), ("fail", -5), "{fail}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "", "no reboot");
    assert!(rig.journal()["pending"].get("fw-2.bin").is_none());
}

#[test]
fn a_1970_clock_waits_without_a_failed_task_and_goes_on_when_set() {
    let mut rig = Rig::new();
    let clock = FakeClock::new(&rig);
    // 1970-01-02: a board without a battery-backed clock, before NTP answered.
    clock.set_offset(86_400 - real_now());
    let wrapper = clock.wrapper();
    let args: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = rig.spawn_agent_under(&args, "debug");
    wait_log_within(&agent, "is not set yet", T);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        rig.front.logins().is_empty(),
        "no login signed with a 1970 clock"
    );
    assert!(rig.platform.received(&device()).is_empty());
    let log = agent.log_text();
    assert_eq!(log.matches("is not set yet").count(), 1, "said once: {log}");
    // NTP answers: the clock jumps to now; the agent logs in and works.
    clock.set_offset(0);
    let asked = rig
        .platform
        .wait_for(&device(), T, |m| m["type"] == "get_download_task");
    assert!(asked.is_some(), "{}", agent.log_text());
    let (_, t) = rig.task("after-ntp.bin", 100_000, 90);
    rig.platform.push(&device(), &t).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "after-ntp.bin", T)),
        ("done", 0)
    );
    assert!(agent.log_text().contains("the system clock is set now"));
    assert!(rig
        .platform
        .received(&device())
        .iter()
        .all(|m| m["progress"]["state"] != "fail"));
}

#[test]
fn a_wall_clock_jump_of_5_years_mid_transfer_changes_no_timer() {
    let mut rig = Rig::new();
    let clock = FakeClock::new(&rig);
    let mut agent = start_faked(&mut rig, &clock);
    let size = 2 << 20;
    let (_, t) = rig.task("steady.bin", size, 91);
    rig.throttle(&t, 256 << 10);
    rig.platform.push(&device(), &t).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    const FIVE_YEARS: i64 = 5 * 365 * 86_400;
    clock.set_offset(FIVE_YEARS);
    std::thread::sleep(Duration::from_secs(2));
    clock.set_offset(-FIVE_YEARS);
    std::thread::sleep(Duration::from_secs(2));
    clock.set_offset(0);
    let done = rig.final_report(&agent, "steady.bin", T);
    assert_eq!(state_of(&done), ("done", 0));
    rig.assert_installed("steady.bin", &t);
    // One GET, never cut, retried or stalled ("no data for"); the MQTT session never
    // dropped.
    assert_eq!(rig.gets(&t).0, 1);
    let log = agent.log_text();
    for sign in [
        "retrying",
        "timed out",
        "no data for",
        "lost the connection",
        "reconnecting",
    ] {
        assert!(!log.contains(sign), "{sign:?} in:\n{log}");
    }
    agent.terminate();
}

#[test]
fn a_gate_that_does_not_answer_never_holds_a_stop() {
    let mut rig = Rig::new();
    let marker = rig.path().join("gate-started");
    // A gate that says nothing for a minute, through a child of its shell (the whole
    // process group must go); its odd duration finds it among the host's processes.
    rig.config["install_gate_command"] =
        json!(format!("touch {}; sleep 61.2345; true", marker.display()));
    let mut agent = rig.start_agent();
    let (_, t) = rig.task("held.bin", 20_000, 92);
    rig.platform.push(&device(), &t).unwrap();
    let deadline = Instant::now() + T;
    while !marker.exists() {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = agent.terminate();
    assert!(took < Duration::from_secs(6), "the stop took {took:?}");
    // The gate's process group went with it.
    std::thread::sleep(Duration::from_millis(300));
    let left = std::process::Command::new("pgrep")
        .args(["-f", "sleep 61.2345"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "gate still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    assert!(!rig.resource("held.bin").exists());
    // After the restart the gate is asked again (the verified file stays staged).
    std::fs::remove_file(&marker).unwrap();
    rig.config["install_gate_command"] = json!("true");
    let agent = rig.start_agent();
    assert_eq!(
        state_of(&rig.final_report(&agent, "held.bin", T)),
        ("done", 0)
    );
    assert_eq!(rig.gets(&t).0, 1, "not fetched again");
}

#[test]
fn check_now_lets_a_task_past_an_install_gate_that_says_not_now() {
    let (mut rig, _answer) = install_gated_rig(3600);
    let agent = rig.start_agent();
    let (_, t) = rig.task("urgent.cfg", 40_000, 93);
    rig.platform.push(&device(), &t).unwrap();
    wait_report(&rig, "urgent.cfg", "install gate: not now", T);
    // An hour until the gate is asked again; the operator says now.
    let (code, _, _) = rig.cli(&["check", "--now"]);
    assert_eq!(code, 0);
    let done = rig.final_report(&agent, "urgent.cfg", T);
    assert_eq!(state_of(&done), ("done", 0));
    rig.assert_installed("urgent.cfg", &t);
    wait_log_within(&agent, "the install gate is not asked", T);
}
