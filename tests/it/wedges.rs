//! What never wedges (docs/agent.md): each case of the never-wedges review, against the
//! real binary, mosquitto and the local platform — what is read back from disk checked
//! again, bounds, answers that may belong to another report, CLI output to a closed
//! pipe, folders, URLs. (The journal on a full or read-only disk and one daemon per
//! `state_dir` are in hostile.rs.)

use crate::common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn write_journal(rig: &Rig, journal: &Value) {
    std::fs::create_dir_all(rig.path().join("state")).unwrap();
    std::fs::write(rig.path().join("state/journal.json"), journal.to_string()).unwrap();
}

#[test]
fn unsafe_names_in_a_journal_are_dropped_and_nothing_is_written_outside() {
    let mut rig = Rig::new();
    let (_, good) = rig.task("good.bin", 5000, 1);
    let (_, escape) = rig.task("escape.bin", 5000, 2);
    let mut evil = escape.clone();
    evil["name"] = json!("../outside.bin");
    write_journal(
        &rig,
        &json!({
            "download": {"task": evil, "phase": "verified"},
            "waiting": [good],
            "installed": {"../../etc/owned": {"md5sum": "0".repeat(32), "size": 1, "installed_at": 1}},
        }),
    );
    let agent = rig.spawn_agent();
    assert_eq!(
        state_of(&rig.final_report(&agent, "good.bin", T)),
        ("done", 0)
    );
    rig.assert_installed("good.bin", &good);
    let log = agent.log_text();
    assert!(log.contains("dropped the download in flight"), "{log}");
    assert!(log.contains("dropped an installed record"), "{log}");
    assert!(!rig.path().join("outside.bin").exists());
    assert_eq!(rig.gets(&escape).0, 0, "nothing fetched for it");
    let journal = rig.journal();
    assert!(
        journal["installed"].get("../../etc/owned").is_none(),
        "{journal}"
    );
}

#[test]
fn the_waiting_list_is_bounded_and_a_task_past_it_fails_minus_11() {
    let mut rig = Rig::new();
    let (_, big) = rig.task("big.bin", 4 << 20, 1);
    rig.throttle(&big, 256 << 10);
    let waiting: Vec<Value> = (0..64)
        .map(|i| rig.task(&format!("w{i}.bin"), 100, 10 + i).1)
        .collect();
    write_journal(
        &rig,
        &json!({"download": {"task": big}, "waiting": waiting}),
    );
    let agent = rig.start_agent();
    rig.wait_staged("big.bin", 1);
    let (_, extra) = rig.task("extra.bin", 100, 99);
    rig.platform.push(&device(), &extra).unwrap();
    let r = rig.final_report(&agent, "extra.bin", T);
    assert_eq!(state_of(&r), ("fail", -11), "{r}");
    assert!(
        r["progress"]["result_msg"]
            .as_str()
            .unwrap()
            .contains("64 tasks wait"),
        "{r}"
    );
    assert_eq!(rig.journal()["waiting"].as_array().unwrap().len(), 64);
}

#[test]
fn a_verified_staged_file_is_read_again_after_a_restart_not_trusted_on_its_size() {
    let mut rig = Rig::new();
    let (src, task) = rig.task("v.bin", 100_000, 3);
    let staging = rig.path().join("resources/.resagent-staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("v.bin"), vec![0u8; 100_000]).unwrap();
    write_journal(
        &rig,
        &json!({"download": {"task": task, "phase": "verified"}}),
    );
    let agent = rig.spawn_agent();
    assert_eq!(state_of(&rig.final_report(&agent, "v.bin", T)), ("done", 0));
    assert_eq!(
        std::fs::read(rig.resource("v.bin")).unwrap(),
        std::fs::read(src).unwrap(),
        "the right bytes, fetched again"
    );
    assert!(rig.gets(&task).0 >= 1);
}

#[test]
fn a_late_non_zero_answer_to_a_refused_tasks_fail_does_not_cancel_the_download_in_flight() {
    let mut rig = Rig::new();
    let agent = rig.start_agent();
    let (src, big) = rig.task("healthy.bin", 2 << 20, 4);
    rig.throttle(&big, 128 << 10);
    rig.platform.push(&device(), &big).unwrap();
    rig.wait_staged("healthy.bin", 64 << 10);
    // A slow platform (every answer 6 s late, in order) that answers `fail` reports
    // with an error (it never created that task).
    rig.platform.set_answer_delay(Duration::from_secs(6));
    rig.platform.set_fail_rsp_code(-1);
    let bogus = json!({"type": "download", "name": "bogus.bin", "size": 10,
                       "md5sum": "not-an-md5", "url": "https://x/y"});
    rig.platform.push(&device(), &bogus).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "bogus.bin", T)),
        ("fail", -10)
    );
    let r = rig.final_report(&agent, "healthy.bin", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}\n{}", agent.log_text());
    assert_eq!(
        std::fs::read(rig.resource("healthy.bin")).unwrap(),
        std::fs::read(src).unwrap()
    );
    assert!(agent
        .log_text()
        .contains("answers the report about bogus.bin: healthy.bin goes on"));
}

#[test]
fn a_withdrawal_right_after_another_tasks_report_cancels_the_download() {
    let mut rig = Rig::new();
    let agent = rig.start_agent();
    let (_, big) = rig.task("wanted.bin", 2 << 20, 4);
    rig.throttle(&big, 128 << 10);
    rig.platform.push(&device(), &big).unwrap();
    rig.wait_staged("wanted.bin", 64 << 10);
    let bogus = json!({"type": "download", "name": "bogus.bin", "size": 10,
                       "md5sum": "not-an-md5", "url": "https://x/y"});
    rig.platform.push(&device(), &bogus).unwrap();
    rig.final_report(&agent, "bogus.bin", T);
    // Answered (0) already; the next answer, to a report of wanted.bin, withdraws it.
    rig.platform.set_download_rsp_code(-1);
    wait_log(&agent, "cancelled by the platform");
    let log = agent.log_text();
    assert!(log.contains("the platform withdrew wanted.bin"), "{log}");
    assert!(!log.contains("goes on"), "{log}");
    assert!(!rig
        .path()
        .join("resources/.resagent-staging/wanted.bin")
        .exists());
    assert!(
        finals(&rig, "wanted.bin").is_empty(),
        "nothing final for a withdrawal"
    );
}

#[test]
fn upload_urls_obey_allow_http() {
    let mut rig = Rig::new();
    rig.config["allow_http"] = json!(false);
    let agent = rig.start_agent();
    let file = rig.make_file("log.txt", 1000, 5);
    let (code, out, err) = rig.cli(&["upload", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let r = rig
        .platform
        .wait_upload_final(&device(), "log.txt", T)
        .unwrap_or_else(|| panic!("no report; log:\n{}", agent.log_text()));
    assert_eq!(state_of(&r), ("fail", -10), "{r}");
    assert!(
        r["progress"]["result_msg"]
            .as_str()
            .unwrap()
            .contains("allow_http"),
        "{r}"
    );
    assert!(
        rig.platform.uploads().is_empty(),
        "nothing sent over plain http"
    );
    assert!(rig.path().join("outbox/log.txt").exists(), "kept for later");
}

#[test]
fn status_to_a_closed_pipe_ends_quietly_and_escapes_control_characters() {
    let rig = Rig::new();
    let mut installed = serde_json::Map::new();
    for i in 0..3000 {
        installed.insert(
            format!("resource-{i:05}-with-a-long-name.bin"),
            json!({"md5sum": "0".repeat(32), "size": 1, "installed_at": 1}),
        );
    }
    installed.insert(
        "evil\u{1b}[2J.bin".into(),
        json!({"md5sum": "0".repeat(32), "size": 1, "installed_at": 1}),
    );
    write_journal(&rig, &json!({"installed": installed}));
    let cfg = rig.config_path();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "'{}' status -c '{}' | head -c1 >/dev/null; echo ${{PIPESTATUS[0]}}",
            env!("CARGO_BIN_EXE_resagent"),
            cfg.display()
        ))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "0",
        "status | head ends 0: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    let (code, text, _) = rig.cli(&["status"]);
    assert_eq!(code, 0);
    assert!(
        !text.contains('\u{1b}'),
        "no raw escape reaches the terminal"
    );
    assert!(text.contains("evil\\u{1b}[2J.bin"), "shown escaped");
}

#[test]
fn a_symlinked_resource_dir_works_and_overlapping_folders_are_refused() {
    let mut rig = Rig::new();
    let real = rig.path().join("data-partition/resources");
    std::fs::create_dir_all(&real).unwrap();
    let link = rig.path().join("resources");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let agent = rig.start_agent();
    let (_, t) = rig.task("via-link.bin", 1000, 6);
    rig.platform.push(&device(), &t).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "via-link.bin", T)),
        ("done", 0)
    );
    assert!(real.join("via-link.bin").is_file());
    drop(agent);

    rig.config["plugin_dir"] = rig.config["resource_dir"].clone();
    let (code, _, err) = rig.cli(&["status"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plugin_dir") && err.contains("feed"), "{err}");

    // The same through a symlink: a resource named `x.so` would run as a plugin.
    let plugins = rig.path().join("plugins-link");
    std::os::unix::fs::symlink(&real, &plugins).unwrap();
    rig.config["plugin_dir"] = serde_json::json!(plugins);
    let (code, _, err) = rig.cli(&["status"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("plugin_dir") && err.contains("feed"), "{err}");
}

#[test]
fn upload_of_a_255_byte_name_works_and_two_uploads_of_one_name_do_not_overwrite() {
    let rig = Rig::new();
    let long = "n".repeat(251) + ".log";
    assert_eq!(long.len(), 255);
    let file = rig.make_file("src.log", 1000, 7);
    let (code, out, err) = rig.cli(&["upload", file.to_str().unwrap(), "--name", &long]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(rig.path().join("outbox").join(&long).is_file());

    // Two at once, same name, different content: one is queued, the other refused.
    let a = rig.make_file("a.bin", 2 << 20, 8);
    let b = rig.make_file("b.bin", 2 << 20, 9);
    let cfg = rig.config_path();
    let spawn = |f: &Path| {
        Command::new(env!("CARGO_BIN_EXE_resagent"))
            .args(["upload", "-c"])
            .arg(&cfg)
            .arg(f)
            .args(["--name", "same.bin"])
            .output()
            .unwrap()
    };
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| spawn(&a));
        let hb = s.spawn(|| spawn(&b));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let codes = [ra.status.code(), rb.status.code()];
    assert!(codes.contains(&Some(0)), "{codes:?}");
    let queued = std::fs::read(rig.path().join("outbox/same.bin")).unwrap();
    let whole = queued == std::fs::read(&a).unwrap() || queued == std::fs::read(&b).unwrap();
    assert!(whole, "the queued file is one of the two, whole");
    if codes == [Some(0), Some(0)] {
        panic!("both claimed to have queued same.bin");
    }
}

#[test]
fn an_oversized_message_is_refused_before_it_is_copied() {
    let mut rig = Rig::new();
    let agent = rig.start_agent();
    let before = vm_hwm_kib(agent.pid());
    let huge = vec![b' '; 16 << 20];
    rig.platform.send(&device(), &huge).unwrap();
    let deadline = Instant::now() + T;
    while !agent.log_text().contains("over the 65536 byte limit") {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let grew = vm_hwm_kib(agent.pid()) - before;
    eprintln!("peak RSS grew by {grew} KiB for a 16 MiB message");
    // Paho C reads the packet and hands over a copy, which the paho-mqtt crate copies
    // into its message (three copies, out of our hands: MQTT 3.1.1 cannot tell the
    // broker a size limit); a copy of ours for the check would be a fourth.
    assert!(
        grew < 56 << 10,
        "peak RSS grew by {grew} KiB for a 16 MiB message"
    );
    // The agent goes on.
    let (_, t) = rig.task("after.bin", 1000, 10);
    rig.platform.push(&device(), &t).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "after.bin", T)),
        ("done", 0)
    );
}

#[test]
fn a_size_near_u64_max_is_a_clear_fail_not_a_wrap() {
    let mut rig = Rig::new();
    rig.config["max_resource_bytes"] = json!(u64::MAX);
    let agent = rig.start_agent();
    let (_, mut t) = rig.task("huge.bin", 1000, 11);
    t["size"] = json!(u64::MAX - 1);
    rig.platform.push(&device(), &t).unwrap();
    let r = rig.final_report(&agent, "huge.bin", T);
    assert_eq!(state_of(&r), ("fail", -6), "{r}");
    assert_eq!(rig.gets(&t).0, 0);
}

#[test]
fn sigterm_ends_the_agent_within_5_s_when_the_broker_stopped_answering() {
    let mut rig = Rig::new();
    let mut agent = rig.start_agent();
    let broker = rig.broker.pid().expect("the test broker runs") as i32;
    let broker = nix::unistd::Pid::from_raw(broker);
    nix::sys::signal::kill(broker, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // The agent is now waiting on it: a task poll (QoS 1) that gets no PUBACK.
    agent.signal(nix::sys::signal::Signal::SIGUSR1);
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let exit = agent.wait_exit(Duration::from_secs(15));
    let took = start.elapsed();
    nix::sys::signal::kill(broker, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert_eq!(exit, Some(Some(0)), "{}", agent.log_text());
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
}

#[test]
fn a_file_renamed_over_an_outbox_entry_during_its_upload_is_uploaded_next() {
    let mut rig = Rig::new();
    rig.config["max_bytes_per_s"] = json!(1 << 20);
    let agent = rig.start_agent();
    let first = rig.make_file("first.bin", 2 << 20, 12);
    let second = rig.make_file("second.bin", 100_000, 13);
    let (code, out, err) = rig.cli(&["upload", first.to_str().unwrap(), "--name", "rec.bin"]);
    assert_eq!(code, 0, "{out}{err}");
    rig.platform
        .wait_for(&device(), T, |m| {
            m["type"] == "report_upload_progress" && m["progress"]["state"] == "uploading"
        })
        .expect("the upload started");
    // A new recording of the same name replaces the entry while its PUT runs.
    let tmp = rig.path().join("outbox/.newer");
    std::fs::copy(&second, &tmp).unwrap();
    std::fs::rename(&tmp, rig.path().join("outbox/rec.bin")).unwrap();
    let want = [md5_hex(&first), md5_hex(&second)];
    let deadline = Instant::now() + T;
    loop {
        let got: Vec<String> = rig
            .platform
            .uploads()
            .into_iter()
            .map(|u| u.md5_hex)
            .collect();
        if want.iter().all(|m| got.contains(m)) && !rig.path().join("outbox/rec.bin").exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "uploaded {got:?}, want {want:?}; log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent
        .log_text()
        .contains("a new file took its name during the upload"));
}

/// One raw HTTP request to the local platform's storage; its status code.
fn http_status(base: &str, method: &str, target: &str, body: &[u8]) -> u16 {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_local_platform_checks_its_url_tokens_and_names_a_dialable_host() {
    let rig = Rig::new();
    let (_, task) = rig.task("signed.bin", 1000, 45);
    let url = task["url"].as_str().unwrap();
    let base = rig.platform.storage().base_url();
    let target = url.strip_prefix(&base).unwrap();
    let path = target.split('?').next().unwrap();
    assert_eq!(http_status(&base, "GET", target, b""), 200);
    assert_eq!(http_status(&base, "GET", path, b""), 403, "no token");
    let forged = target.replacen("sign=", "sign=0", 1);
    assert_eq!(
        http_status(&base, "GET", &forged, b""),
        403,
        "a forged token"
    );
    // A GET's token is not a PUT's; an upload URL's token is for its own path only.
    assert_eq!(http_status(&base, "PUT", target, b"x"), 403);
    let up = resagent_platform::upload_path(&device(), "a.log");
    let put_url = rig.platform.storage().signed_url("PUT", &up, 60);
    let put_target = put_url.strip_prefix(&base).unwrap();
    let other = put_target.replacen("a.log", "b.log", 1);
    assert_eq!(http_status(&base, "PUT", &other, b"x"), 403);
    assert!(rig.platform.uploads().is_empty(), "nothing stored");
    let expired = rig.platform.storage().signed_url("GET", path, 0);
    std::thread::sleep(Duration::from_millis(1100));
    let expired_target = expired.strip_prefix(&base).unwrap();
    assert_eq!(
        http_status(&base, "GET", expired_target, b""),
        403,
        "expired"
    );

    // Listening on every address, URLs name an address a device can dial; a public URL
    // is used as given.
    let all = resagent_platform::Platform::start(
        &rig.broker.uri(),
        "0.0.0.0:0",
        rig.path().join("all-uploads"),
    )
    .unwrap();
    let base = all.storage().base_url();
    assert!(!base.contains("0.0.0.0"), "{base}");
    all.storage().set_public_url("http://gateway.local:8080");
    let f = rig.make_file("pub.bin", 10, 46);
    let t = all.task_for("pub.bin", &f);
    assert!(
        t["url"]
            .as_str()
            .unwrap()
            .starts_with("http://gateway.local:8080/files/pub.bin?sign="),
        "{t}"
    );
}
