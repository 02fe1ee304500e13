//! Delivery end to end: a real mosquitto, the local platform and the `resagent` binary.

use crate::common::*;
use serde_json::json;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[test]
fn a_64_mib_download_ends_done_with_an_identical_file() {
    let mut rig = Rig::new();
    let (_src, task) = rig.task("big.bin", 64 << 20, 1);
    rig.platform.offer(&device(), task.clone());
    let agent = rig.start_agent();
    let fin = rig.final_report(&agent, "big.bin", T);
    assert_eq!(state_of(&fin), ("done", 0), "{fin}");
    assert_eq!(fin["progress"]["percent"], 100);
    assert_eq!(fin["progress"]["result_msg"], "success");
    rig.assert_installed("big.bin", &task);
    let states: Vec<String> = rig
        .platform
        .reports_for(&device(), "big.bin")
        .iter()
        .map(|r| r["progress"]["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(states.first().map(String::as_str), Some("downloading"));
    assert!(states.contains(&"burning".to_string()), "{states:?}");
    assert_eq!(
        rig.journal()["installed"]["big.bin"]["md5sum"],
        task["md5sum"]
    );
    assert!(rig.journal()["download"].is_null());
    // Nothing left in staging.
    let staging = rig.path().join("resources/.resagent-staging");
    assert_eq!(std::fs::read_dir(staging).unwrap().count(), 0);
}

/// Every file below `dir`, for "nothing written outside resource_dir".
fn files_below(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_below(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn an_md5_mismatch_fails_minus_4_and_keeps_the_installed_file() {
    let mut rig = Rig::new();
    let (_v1, t1) = rig.task("fw.bin", 100_000, 2);
    rig.platform.offer(&device(), t1.clone());
    let agent = rig.start_agent();
    assert_eq!(
        state_of(&rig.final_report(&agent, "fw.bin", T)),
        ("done", 0)
    );
    let before = std::fs::read(rig.resource("fw.bin")).unwrap();

    let v2 = rig.make_file("fw-v2", 100_000, 3);
    let mut t2 = rig.platform.task_for("fw.bin", &v2);
    t2["md5sum"] = json!("0123456789abcdef0123456789abcdef");
    rig.platform.push(&device(), &t2).unwrap();
    let fail = rig
        .platform
        .wait_for(&device(), T, |m| {
            m["name"] == "fw.bin" && m["progress"]["state"] == "fail"
        })
        .expect("fail report");
    assert_eq!(state_of(&fail), ("fail", -4), "{fail}");
    assert!(
        fail["progress"]["result_msg"]
            .as_str()
            .unwrap()
            .contains("MD5"),
        "{fail}"
    );
    assert_eq!(std::fs::read(rig.resource("fw.bin")).unwrap(), before);
    assert_eq!(rig.staged("fw.bin"), 0);
    assert_eq!(rig.journal()["installed"]["fw.bin"]["md5sum"], t1["md5sum"]);
}

#[test]
fn http_404_and_403_give_minus_2_and_minus_3() {
    let mut rig = Rig::new();
    let (f, missing) = rig.task("missing.bin", 1000, 4);
    rig.fault(
        &missing,
        resagent_platform::HttpFault {
            status: Some(404),
            ..Default::default()
        },
    );
    let forbidden = rig.platform.task_for("forbidden.bin", &f);
    rig.fault(
        &forbidden,
        resagent_platform::HttpFault {
            status: Some(403),
            ..Default::default()
        },
    );
    let agent = rig.start_agent();
    rig.platform.push(&device(), &missing).unwrap();
    rig.platform.push(&device(), &forbidden).unwrap();
    let r = rig.final_report(&agent, "missing.bin", T);
    assert_eq!(state_of(&r), ("fail", -2), "{r}");
    let r = rig.final_report(&agent, "forbidden.bin", T);
    assert_eq!(state_of(&r), ("fail", -3), "{r}");
    assert!(
        !r["progress"]["result_msg"]
            .as_str()
            .unwrap()
            .contains("sign="),
        "{r}"
    );
    assert!(!rig.resource("missing.bin").exists());
}

#[test]
fn unsafe_names_are_refused_without_a_request_or_a_file_outside() {
    let mut rig = Rig::new();
    let (_f, good) = rig.task("x", 1000, 5);
    let agent = rig.start_agent();
    let long = "n".repeat(256);
    let names = [
        "",
        ".",
        "..",
        "../escape",
        "a/b",
        "..\\evil",
        "nul\u{0}byte",
        long.as_str(),
        "/etc/passwd",
    ];
    for name in names {
        let mut t = good.clone();
        t["name"] = json!(name);
        rig.platform.push(&device(), &t).unwrap();
        let r = rig
            .platform
            .wait_for(&device(), T, |m| {
                m["name"] == name && m["progress"]["state"] == "fail"
            })
            .unwrap_or_else(|| panic!("no fail for {name:?}; log:\n{}", agent.log_text()));
        assert_eq!(state_of(&r), ("fail", -10), "{name:?}: {r}");
    }
    assert_eq!(rig.gets(&good).0, 0, "no HTTP request");
    let mut files = files_below(rig.path());
    files.retain(|p| !p.starts_with(rig.path().join("resources")));
    for p in &files {
        let rel = p
            .strip_prefix(rig.path())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            rel.starts_with("served/")
                || rel.starts_with("state/")
                || rel.ends_with(".log")
                || rel.ends_with(".conf")
                || rel == "config.json"
                || rel == "boot_id"
                || rel.starts_with("run/"),
            "unexpected file {rel}"
        );
    }
    assert!(!rig.path().join("escape").exists());
    assert!(agent.log_text().contains("refused a message"), "logged");
}

#[test]
fn a_server_that_over_sends_is_cut_off() {
    let mut rig = Rig::new();
    let (_f, task) = rig.task("over.bin", 1 << 20, 6);
    rig.fault(
        &task,
        resagent_platform::HttpFault {
            no_content_length: true,
            extra_bytes: 512 << 20,
            ..Default::default()
        },
    );
    let agent = rig.start_agent();
    rig.platform.push(&device(), &task).unwrap();
    let r = rig.final_report(&agent, "over.bin", T);
    assert_eq!(state_of(&r), ("fail", -4), "{r}");
    assert!(
        r["progress"]["result_msg"]
            .as_str()
            .unwrap()
            .contains("more than"),
        "{r}"
    );
    assert!(!rig.resource("over.bin").exists());
    assert_eq!(rig.staged("over.bin"), 0);
    // The server could not push its 512 MiB of garbage: the agent stopped reading.
    let (_, sent) = rig.gets(&task);
    assert!(sent < (1 << 20) + (64 << 20), "server sent {sent} bytes");
}

#[test]
fn sigkill_mid_download_then_restart_resumes_with_range() {
    let mut rig = Rig::new();
    let size = 24u64 << 20;
    let (_f, task) = rig.task("resume.bin", size, 7);
    rig.throttle(&task, 8 << 20);
    rig.platform.offer(&device(), task.clone());
    let mut agent = rig.start_agent();
    rig.wait_staged("resume.bin", size / 2);
    agent.kill9();
    assert!(
        !rig.journal()["download"].is_null(),
        "task in flight is journaled"
    );
    rig.fault(&task, resagent_platform::HttpFault::default());
    let agent = rig.spawn_agent();
    let r = rig.final_report(&agent, "resume.bin", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    rig.assert_installed("resume.bin", &task);
    let reqs = rig.requests_for(&task);
    assert!(
        reqs.iter().any(|r| r.range.is_some() && r.status == 206),
        "{reqs:?}"
    );
    let served: u64 = reqs.iter().map(|r| r.body_bytes).sum();
    assert!(served < size * 3 / 2, "served {served} of {size}");
}

#[test]
fn a_pushed_download_task_is_installed() {
    let mut rig = Rig::new();
    let (f, task) = rig.task("pushed.bin", 300_000, 8);
    let agent = rig.start_agent();
    rig.platform.push(&device(), &task).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "pushed.bin", T)),
        ("done", 0)
    );
    assert_eq!(
        std::fs::read(rig.resource("pushed.bin")).unwrap(),
        std::fs::read(&f).unwrap()
    );
    // RUST_LOG=debug: neither the URL's signature nor the MQTT password may show.
    let log = agent.log_text();
    assert!(!log.contains("sign="), "signature in log");
    assert!(
        !log.contains("hmacsha256;") && !log.contains(";hmacsha256"),
        "password in log"
    );
}

#[test]
fn the_broker_restarting_mid_transfer_does_not_stop_it() {
    let mut rig = Rig::new();
    let size = 8u64 << 20;
    let (_f, task) = rig.task("slow.bin", size, 9);
    // Slow enough that the download ends seconds after the broker is back: the local
    // platform (a clean session too) must have subscribed again to hear the `done`.
    rig.throttle(&task, 1 << 20);
    rig.platform.offer(&device(), task.clone());
    let agent = rig.start_agent();
    rig.wait_staged("slow.bin", 1 << 20);
    rig.broker.stop();
    std::thread::sleep(Duration::from_millis(1500));
    rig.broker.restart();
    assert!(rig.platform.wait_connected(Duration::from_secs(10)));
    assert!(
        !rig.resource("slow.bin").exists(),
        "the download was still running when the platform was back"
    );
    let r = rig.final_report(&agent, "slow.bin", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    rig.assert_installed("slow.bin", &task);
    let log = agent.log_text();
    assert!(log.contains("lost the connection"), "{log}");
    assert!(log.matches("connected to tcp://").count() >= 2, "{log}");
}

#[test]
fn a_repeated_task_is_done_without_a_get() {
    let mut rig = Rig::new();
    let (_f, task) = rig.task("rep.bin", 50_000, 10);
    let agent = rig.start_agent();
    rig.platform.push(&device(), &task).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "rep.bin", T)),
        ("done", 0)
    );
    assert_eq!(rig.gets(&task).0, 1);
    rig.platform.push(&device(), &task).unwrap();
    let deadline = std::time::Instant::now() + T;
    while rig
        .platform
        .reports_for(&device(), "rep.bin")
        .iter()
        .filter(|m| m["progress"]["state"] == "done")
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "second done; log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(rig.gets(&task).0, 1, "no second GET");
}

#[test]
fn two_tasks_back_to_back_run_one_after_the_other() {
    let mut rig = Rig::new();
    let a = rig.make_file("a", 2 << 20, 11);
    let b = rig.make_file("b", 2 << 20, 12);
    let ta = rig.platform.task_for("a.bin", &a);
    let tb = rig.platform.task_for("b.bin", &b);
    let agent = rig.start_agent();
    rig.platform.push(&device(), &ta).unwrap();
    rig.platform.push(&device(), &tb).unwrap();
    assert_eq!(state_of(&rig.final_report(&agent, "a.bin", T)), ("done", 0));
    assert_eq!(state_of(&rig.final_report(&agent, "b.bin", T)), ("done", 0));
    let all = rig.platform.received(&device());
    let a_done = all
        .iter()
        .position(|m| m["name"] == "a.bin" && m["progress"]["state"] == "done")
        .unwrap();
    let b_first = all.iter().position(|m| m["name"] == "b.bin").unwrap();
    assert!(a_done < b_first, "b started before a ended");
    rig.assert_installed("b.bin", &tb);
}

#[test]
fn sigterm_mid_transfer_exits_0_within_5_s_and_removes_the_pid_file() {
    let mut rig = Rig::new();
    let (_f, task) = rig.task("term.bin", 8 << 20, 13);
    rig.throttle(&task, 1 << 20);
    rig.platform.offer(&device(), task);
    let mut agent = rig.start_agent();
    let pid_file = rig.path().join("run/resagent.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        agent.pid().to_string()
    );
    rig.wait_staged("term.bin", 1 << 20);
    let start = std::time::Instant::now();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let code = agent.wait_exit(Duration::from_secs(10));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert_eq!(code, Some(Some(0)), "log:\n{}", agent.log_text());
    assert!(!pid_file.exists());
    assert!(
        !rig.journal()["download"].is_null(),
        "the transfer stays resumable"
    );
    assert!(rig.staged("term.bin") > 0);
}

#[test]
fn a_storm_of_malformed_messages_leaves_the_agent_working() {
    let mut rig = Rig::new();
    let (_f, task) = rig.task("calm.bin", 200_000, 14);
    let mut agent = rig.start_agent();
    let junk: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"not json at all".to_vec(),
        b"{\"type\":".to_vec(),
        b"[1,2,3]".to_vec(),
        b"{\"type\":42}".to_vec(),
        b"{\"type\":\"download\"}".to_vec(),
        b"{\"type\":\"download\",\"name\":{},\"size\":1}".to_vec(),
        b"{\"type\":\"download\",\"name\":\"x\",\"size\":-5,\"md5sum\":\"00\",\"url\":\"https://h\"}".to_vec(),
        b"{\"type\":\"get_download_task_rsp\",\"name\":\"x\",\"size\":1e308,\"md5sum\":\"0\",\"url\":\"ftp://h\"}".to_vec(),
        b"{\"type\":\"report_download_progress_rsp\",\"result_code\":\"bad\"}".to_vec(),
        vec![0xff, 0xfe, 0x00, 0x01],
        vec![b'{'; 70_000],
        format!("{{\"type\":\"{}\"}}", "z".repeat(5000)).into_bytes(),
    ];
    for round in 0..40 {
        for j in &junk {
            rig.platform.send(&device(), j).unwrap();
        }
        if round == 20 {
            rig.platform.push(&device(), &task).unwrap();
        }
    }
    assert_eq!(
        state_of(&rig.final_report(&agent, "calm.bin", T)),
        ("done", 0)
    );
    assert!(agent.is_alive());
    rig.assert_installed("calm.bin", &task);
}

#[test]
fn a_non_zero_progress_rsp_cancels_the_transfer() {
    let mut rig = Rig::new();
    let (_f, task) = rig.task("cancel.bin", 8 << 20, 15);
    rig.throttle(&task, 1 << 20);
    let agent = rig.start_agent();
    rig.platform.set_download_rsp_code(-1);
    rig.platform.push(&device(), &task).unwrap();
    wait_log_within(&agent, "staged bytes removed", T);
    assert_eq!(rig.staged("cancel.bin"), 0);
    assert!(!rig.resource("cancel.bin").exists());
    assert!(rig.journal()["download"].is_null());
    std::thread::sleep(Duration::from_millis(300));
    let finals = rig.platform.reports_for(&device(), "cancel.bin");
    assert!(
        finals
            .iter()
            .all(|m| m["progress"]["state"] == "downloading"),
        "nothing final reported: {finals:?}"
    );
}

#[test]
fn status_and_check_talk_to_the_running_daemon() {
    let mut rig = Rig::new();
    let (_f, task) = rig.task("st.bin", 8 << 20, 16);
    rig.throttle(&task, 2 << 20);
    let (code, _, err) = rig.cli(&["check"]);
    assert_eq!(code, 1, "no daemon yet: {err}");
    assert!(err.contains("no resagent daemon runs"), "{err}");
    let agent = rig.start_agent();
    rig.platform.offer(&device(), task.clone());
    let asks = || {
        rig.platform
            .received(&device())
            .iter()
            .filter(|m| m["type"] == "get_download_task")
            .count()
    };
    let before = asks();
    let (code, out, _) = rig.cli(&["check"]);
    assert_eq!(code, 0, "{out}");
    rig.wait_staged("st.bin", 1 << 20);
    assert!(asks() > before, "SIGUSR1 asked for a task");
    let (code, out, _) = rig.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("running (pid"), "{out}");
    assert!(out.contains("connected to tcp://127.0.0.1"), "{out}");
    assert!(out.contains("st.bin"), "{out}");
    assert!(!out.contains("sign="), "{out}");
    let (code, out, _) = rig.cli(&["status", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["download"]["name"], "st.bin");
    assert!(v["download"]["percent"].as_u64().unwrap() < 100);
    assert_eq!(
        state_of(&rig.final_report(&agent, "st.bin", T)),
        ("done", 0)
    );
    let (_, out, _) = rig.cli(&["status"]);
    assert!(out.contains("Installed:   1"), "{out}");
}

#[test]
fn a_server_that_stalls_ends_minus_1_after_one_resumed_retry() {
    let mut rig = Rig::new();
    rig.config["transfer_timeout_s"] = json!(1);
    let (_f, task) = rig.task("stall.bin", 1 << 20, 17);
    rig.fault(
        &task,
        resagent_platform::HttpFault {
            stall_after: Some(0),
            stall_for: Duration::from_secs(30),
            ..Default::default()
        },
    );
    let mut agent = rig.start_agent();
    rig.platform.push(&device(), &task).unwrap();
    let r = rig.final_report(&agent, "stall.bin", Duration::from_secs(20));
    assert_eq!(state_of(&r), ("fail", -1), "{r}");
    assert_eq!(rig.gets(&task).0, 2, "one retry");
    assert!(agent.is_alive());
}

#[test]
fn a_fail_says_how_far_the_download_got() {
    let mut rig = Rig::new();
    rig.config["transfer_timeout_s"] = json!(1);
    let (_f, task) = rig.task("half.bin", 2 << 20, 19);
    rig.fault(
        &task,
        resagent_platform::HttpFault {
            stall_after: Some(STALL_AT),
            stall_for: Duration::from_secs(30),
            ..Default::default()
        },
    );
    let agent = rig.start_agent();
    rig.platform.push(&device(), &task).unwrap();
    rig.wait_staged("half.bin", STALL_AT);
    // The resource is gone when the download resumes.
    rig.fault(
        &task,
        resagent_platform::HttpFault {
            status: Some(404),
            ..Default::default()
        },
    );
    let r = rig.final_report(&agent, "half.bin", Duration::from_secs(20));
    assert_eq!(r["progress"]["state"], "fail", "{r}");
    // 256 KiB of 2 MiB were in: the fail says 12 %, not 0 or 100.
    assert_eq!(r["progress"]["percent"], 12, "{r}");
}

const STALL_AT: u64 = 256 * 1024;

/// A stalled server (one whole chunk of the reader, then silence, the socket open) with
/// the default one-minute read timeout. The tests wait for some bytes, not all: on a
/// loaded machine the reader may hand a part on and hold the rest until its next read.
fn stalled_download(rig: &mut Rig, name: &str, seed: u64) -> serde_json::Value {
    rig.config["transfer_timeout_s"] = json!(60);
    let (_f, task) = rig.task(name, 4 << 20, seed);
    rig.fault(
        &task,
        resagent_platform::HttpFault {
            stall_after: Some(STALL_AT),
            stall_for: Duration::from_secs(120),
            ..Default::default()
        },
    );
    task
}

#[test]
fn a_withdrawal_while_the_server_is_silent_stops_the_download_at_once() {
    let mut rig = Rig::new();
    let task = stalled_download(&mut rig, "silent.bin", 18);
    let mut agent = rig.start_agent();
    rig.platform.push(&device(), &task).unwrap();
    rig.wait_staged("silent.bin", 1);
    std::thread::sleep(Duration::from_millis(500));
    rig.platform
        .send(
            &device(),
            br#"{"type":"report_download_progress_rsp","result_code":-3,"result_msg":"withdrawn"}"#,
        )
        .unwrap();
    // Seen while waiting for bytes, not after the read timeout (60 s).
    wait_log_within(&agent, "staged bytes removed", Duration::from_secs(10));
    assert_eq!(rig.staged("silent.bin"), 0);
    assert!(rig.journal()["download"].is_null());
    assert!(agent.is_alive());
}

#[test]
fn sigterm_while_the_server_is_silent_stops_the_download_at_its_boundary() {
    let mut rig = Rig::new();
    let task = stalled_download(&mut rig, "hush.bin", 19);
    rig.platform.offer(&device(), task);
    let mut agent = rig.start_agent();
    rig.wait_staged("hush.bin", 1);
    std::thread::sleep(Duration::from_millis(500));
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(10)), Some(Some(0)));
    let log = agent.log_text();
    assert!(log.contains("stopped"), "{log}");
    assert!(
        !log.contains("did not reach a chunk boundary"),
        "the download thread was left behind:\n{log}"
    );
    assert_eq!(
        rig.journal()["download"]["task"]["name"],
        "hush.bin",
        "resumable"
    );
    assert!((1..=STALL_AT).contains(&rig.staged("hush.bin")), "{log}");
}

#[test]
fn poll_interval_and_reload_take_effect() {
    let mut rig = Rig::new();
    rig.config["poll_interval_s"] = json!(1);
    let mut agent = rig.start_agent();
    std::thread::sleep(Duration::from_millis(3500));
    let asks = rig
        .platform
        .received(&device())
        .iter()
        .filter(|m| m["type"] == "get_download_task")
        .count();
    assert!(asks >= 3, "asked {asks} times in 3.5 s");

    // A broken configuration on SIGHUP is refused and the daemon keeps going.
    let good = rig.config.clone();
    rig.config["bogus_key"] = json!(1);
    rig.config_path();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(agent.is_alive());
    assert!(
        agent
            .log_text()
            .contains("keeping the current configuration"),
        "{}",
        agent.log_text()
    );

    // A valid one is used for the next task: without allow_http an http URL is -10.
    rig.config = good;
    rig.config["allow_http"] = json!(false);
    rig.config_path();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    let (_f, task) = rig.task("h.bin", 1000, 18);
    rig.platform.push(&device(), &task).unwrap();
    let r = rig.final_report(&agent, "h.bin", T);
    assert_eq!(state_of(&r), ("fail", -10), "{r}");
}

/// Crash-resume from a journal written before the start, as a kill would leave it: the
/// task in flight with half its bytes staged, another waiting, and a final report the
/// broker never acknowledged.
#[test]
fn a_prewritten_journal_is_resumed() {
    let mut rig = Rig::new();
    let size = 4u64 << 20;
    let (f, task) = rig.task("pre.bin", size, 19);
    let (_g, waiting) = rig.task("next.bin", 10_000, 20);
    let staging = rig.path().join("resources/.resagent-staging");
    std::fs::create_dir_all(&staging).unwrap();
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(staging.join("pre.bin"), &bytes[..(size / 2) as usize]).unwrap();
    std::fs::create_dir_all(rig.path().join("state")).unwrap();
    let journal = json!({
        "download": {"task": task, "phase": "downloading"},
        "waiting": [waiting],
        "installed": {},
        "unacked_reports": [{"direction": "download", "name": "earlier.bin", "state": "done",
                             "percent": 100, "result_code": 0, "result_msg": "success"}]
    });
    std::fs::write(rig.path().join("state/journal.json"), journal.to_string()).unwrap();
    let agent = rig.spawn_agent();
    let r = rig.final_report(&agent, "pre.bin", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    assert_eq!(
        state_of(&rig.final_report(&agent, "next.bin", T)),
        ("done", 0)
    );
    assert_eq!(std::fs::read(rig.resource("pre.bin")).unwrap(), bytes);
    let reqs = rig.requests_for(&task);
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(
        reqs[0].range.as_deref(),
        Some(format!("bytes={}-", size / 2).as_str())
    );
    assert_eq!(reqs[0].body_bytes, size / 2);
    let old = rig.final_report(&agent, "earlier.bin", T);
    assert_eq!(
        state_of(&old),
        ("done", 0),
        "the unacknowledged report was sent again"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rig.journal()["unacked_reports"], json!([]));
}

#[test]
fn a_40_s_storage_outage_keeps_the_staged_bytes_and_the_download_goes_on() {
    let mut rig = Rig::new();
    let (_, direct) = rig.task("long.bin", 6 << 20, 41);
    rig.throttle(&direct, 1 << 20);
    let storage_port: u16 = direct["url"].as_str().unwrap()["http://127.0.0.1:".len()..]
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let gate = resagent_platform::rig::Relay::start(storage_port);
    let task = gate.route(&direct);
    let agent = rig.start_agent();
    rig.platform.push(&device(), &task).unwrap();
    rig.wait_staged("long.bin", 1 << 20);
    gate.set_down(true);
    std::thread::sleep(Duration::from_secs(40));
    let staged = rig.staged("long.bin");
    assert!(
        staged >= 1 << 20,
        "the staged bytes stay through the outage: {staged}"
    );
    assert!(
        finals(&rig, "long.bin").is_empty(),
        "no fail during the outage"
    );
    let waiting = rig.platform.reports_for(&device(), "long.bin");
    assert!(
        waiting
            .iter()
            .any(|m| m["progress"]["state"] == "downloading" && msg(m).contains("retrying in")),
        "the platform hears why nothing moves"
    );
    gate.set_down(false);
    let r = rig.final_report(&agent, "long.bin", Duration::from_secs(120));
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    rig.assert_installed("long.bin", &task);
    let (gets, bytes) = rig.gets(&direct);
    assert!(
        gets >= 2 && bytes < 2 * (6 << 20),
        "resumed, not started over: {gets} GETs, {bytes} bytes"
    );
}

#[test]
fn an_unusable_proxy_fails_the_download_and_nothing_goes_around_it() {
    let mut rig = Rig::new();
    let agent = rig.spawn_agent_under(
        &[
            "env",
            "-u",
            "no_proxy",
            "-u",
            "NO_PROXY",
            "http_proxy=socks9://proxy.invalid:1080",
        ],
        "info",
    );
    wait_log(&agent, "connected to");
    let (_, task) = rig.task("proxied.bin", 1000, 44);
    rig.platform.push(&device(), &task).unwrap();
    let r = rig.final_report(&agent, "proxied.bin", T);
    assert_eq!(state_of(&r), ("fail", -11), "{r}");
    assert!(
        msg(&r).contains("proxy `socks9://proxy.invalid:1080`"),
        "{r}"
    );
    assert_eq!(rig.gets(&task).0, 0, "no request went around the proxy");
    assert!(!rig.resource("proxied.bin").exists());
}
