//! Hostile conditions, with real parts: write ordering under strace, full disks on a
//! tmpfs mounted by the test, servers that lie, awkward names and files, a resource over
//! 4 GiB, secrets at RUST_LOG=trace, and a kill loop. (docs/reliability.md maps each
//! promise to its test.)

use crate::common::*;
use resagent_platform::HttpFault;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

#[test]
fn installs_and_journal_writes_are_ordered_fsync_rename_fsync() {
    let mut rig = Rig::new();
    let (_, task) = rig.task("ordered.bin", 3 << 20, 1);
    rig.platform.offer(&device(), task);
    let trace = rig.path().join("strace.out");
    let t = trace.to_str().unwrap().to_string();
    let agent = rig.spawn_agent_under(
        &[
            "strace",
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2",
            "-o",
            &t,
        ],
        "info",
    );
    assert_eq!(
        state_of(&rig.final_report(&agent, "ordered.bin", T)),
        ("done", 0)
    );
    std::thread::sleep(Duration::from_millis(500));
    let text = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let resources = rig.path().join("resources");
    let staging = resources.join(".resagent-staging/ordered.bin");
    let dest = resources.join("ordered.bin");
    let is_sync_of = |l: &str, p: &Path| {
        (l.contains("fsync(") || l.contains("fdatasync("))
            && l.contains(&format!("<{}>", p.display()))
    };
    let rename_at = lines
        .iter()
        .position(|l| {
            l.contains("rename")
                && l.contains(&format!("\"{}\"", staging.display()))
                && l.contains(&format!("\"{}\"", dest.display()))
        })
        .unwrap_or_else(|| panic!("no rename of the staging file:\n{text}"));
    assert!(
        lines[..rename_at].iter().any(|l| is_sync_of(l, &staging)),
        "data fsync before the rename:\n{text}"
    );
    assert!(
        lines[rename_at..].iter().any(|l| is_sync_of(l, &resources)),
        "folder fsync after the rename:\n{text}"
    );

    let state = rig.path().join("state");
    let journal_tmp = state.join(".journal.json.tmp");
    let renames: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            l.contains("rename") && l.contains(&format!("\"{}\"", journal_tmp.display()))
        })
        .map(|(i, _)| i)
        .collect();
    assert!(
        renames.len() >= 3,
        "the journal is replaced at every state change:\n{text}"
    );
    let mut prev = 0;
    for r in renames {
        assert!(
            lines[prev..r].iter().any(|l| is_sync_of(l, &journal_tmp)),
            "journal data fsync before its rename (line {r})"
        );
        let next_sync_dir = lines[r..].iter().position(|l| is_sync_of(l, &state));
        assert!(
            next_sync_dir.is_some(),
            "state folder fsync after the journal rename (line {r})"
        );
        prev = r + 1;
    }
}

#[test]
fn a_task_larger_than_the_free_space_fails_minus_6_before_any_byte() {
    let mut rig = Rig::new();
    let _fs = Tmpfs::mount(&rig.path().join("resources"), "8m");
    let (_, task) = rig.task("huge.bin", 16 << 20, 2);
    let agent = rig.start_agent();
    rig.platform.push(&device(), &task).unwrap();
    let r = rig.final_report(&agent, "huge.bin", T);
    assert_eq!(state_of(&r), ("fail", -6), "{r}");
    assert_eq!(rig.gets(&task).0, 0, "nothing was fetched");
}

#[test]
fn space_vanishing_mid_download_fails_minus_6_keeps_the_old_file_and_the_agent_works() {
    let mut rig = Rig::new();
    let fs = Tmpfs::mount(&rig.path().join("resources"), "24m");
    let agent = rig.start_agent();
    let (old_src, v1) = rig.task("app.bin", 1 << 20, 3);
    rig.platform.push(&device(), &v1).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "app.bin", T)),
        ("done", 0)
    );
    let old = std::fs::read(&old_src).unwrap();

    let big = rig.make_file("app-v2", 12 << 20, 4);
    let v2 = rig.platform.task_for("app.bin", &big);
    rig.throttle(&v2, 4 << 20);
    rig.platform.push(&device(), &v2).unwrap();
    rig.wait_staged("app.bin", 2 << 20);
    // Another writer fills the file system.
    let filler = fs.0.join("filler");
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=1M", "count=64"])
        .status();
    let r = rig
        .platform
        .wait_for(&device(), T, |m| {
            m["name"] == "app.bin" && m["progress"]["state"] == "fail"
        })
        .unwrap_or_else(|| panic!("no fail; log:\n{}", agent.log_text()));
    assert_eq!(state_of(&r), ("fail", -6), "{r}");
    assert_eq!(
        std::fs::read(rig.resource("app.bin")).unwrap(),
        old,
        "the old file is intact"
    );
    assert_eq!(rig.staged("app.bin"), 0, "the temp file is removed");
    std::fs::remove_file(&filler).unwrap();
    let (_, small) = rig.task("after.bin", 1000, 5);
    rig.platform.push(&device(), &small).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "after.bin", T)),
        ("done", 0),
        "still working"
    );
}

/// Kills the agent a third into a download, makes the server lie with `fault`, restarts
/// the agent and waits for the task to end `done` with the right bytes.
fn resume_against(fault: HttpFault, name: &str, seed: u64) -> (Rig, Agent, serde_json::Value) {
    let mut rig = Rig::new();
    let size = 12u64 << 20;
    let (_, task) = rig.task(name, size, seed);
    rig.throttle(&task, 6 << 20);
    rig.platform.offer(&device(), task.clone());
    let mut agent = rig.start_agent();
    rig.wait_staged(name, size / 3);
    agent.kill9();
    rig.fault(&task, fault);
    let agent = rig.spawn_agent();
    assert_eq!(state_of(&rig.final_report(&agent, name, T)), ("done", 0));
    rig.assert_installed(name, &task);
    (rig, agent, task)
}

#[test]
fn a_server_ignoring_range_on_resume_restarts_cleanly_from_zero() {
    let fault = HttpFault {
        ignore_range: true,
        ..Default::default()
    };
    let (rig, _agent, task) = resume_against(fault, "norange.bin", 6);
    let reqs: Vec<_> = rig.requests_for(&task);
    assert!(
        reqs.iter().any(|r| r.range.is_some() && r.status == 200),
        "{reqs:?}"
    );
}

#[test]
fn a_206_with_a_wrong_content_range_is_not_trusted() {
    let fault = HttpFault {
        wrong_content_range: true,
        ..Default::default()
    };
    let (_rig, agent, _task) = resume_against(fault, "badrange.bin", 7);
    assert!(
        agent.log_text().contains("resume not trusted")
            || agent.log_text().contains("starting over"),
        "{}",
        agent.log_text()
    );
}

#[test]
fn lying_headers_and_bad_redirects_end_with_the_right_codes() {
    let mut rig = Rig::new();
    let agent = rig.start_agent();
    let (_, long) = rig.task("length.bin", 10_000, 8);
    rig.fault(
        &long,
        HttpFault {
            content_length: Some(20_000),
            ..Default::default()
        },
    );
    let (_, looped) = rig.task("loop.bin", 100, 9);
    let loop_url = looped["url"].as_str().unwrap().to_string();
    rig.fault(
        &looped,
        HttpFault {
            redirect: Some(loop_url),
            ..Default::default()
        },
    );
    let (_, ftp) = rig.task("ftp.bin", 100, 10);
    rig.fault(
        &ftp,
        HttpFault {
            redirect: Some("ftp://127.0.0.1/x".into()),
            ..Default::default()
        },
    );
    for (name, task, code) in [
        ("length.bin", &long, -4),
        ("loop.bin", &looped, -11),
        ("ftp.bin", &ftp, -10),
    ] {
        rig.platform.push(&device(), task).unwrap();
        let r = rig.final_report(&agent, name, T);
        assert_eq!(state_of(&r), ("fail", code), "{name}: {r}");
    }
    assert_eq!(
        rig.gets(&looped).0,
        6,
        "five redirects followed, the sixth refused"
    );
}

#[test]
fn awkward_names_symlinks_directories_and_read_only_folders() {
    let mut rig = Rig::new();
    let agent = rig.start_agent();
    let long = "n".repeat(255);
    for (i, name) in ["固件-версия-ü.bin", long.as_str()].into_iter().enumerate() {
        let (src, task) = rig.task(name, 5000, 11 + i as u64);
        rig.platform.push(&device(), &task).unwrap();
        assert_eq!(
            state_of(&rig.final_report(&agent, name, T)),
            ("done", 0),
            "{name}"
        );
        assert_eq!(
            std::fs::read(rig.resource(name)).unwrap(),
            std::fs::read(src).unwrap()
        );
    }
    // A symlink planted at the destination is replaced, never followed.
    let outside = rig.path().join("outside.txt");
    std::fs::write(&outside, b"precious").unwrap();
    std::os::unix::fs::symlink(&outside, rig.resource("link.bin")).unwrap();
    // ... and one at the staging path is not followed either.
    std::os::unix::fs::symlink(
        &outside,
        rig.path().join("resources/.resagent-staging/staged.bin"),
    )
    .unwrap();
    for name in ["link.bin", "staged.bin"] {
        let (_, task) = rig.task(name, 3000, 13);
        rig.platform.push(&device(), &task).unwrap();
        assert_eq!(
            state_of(&rig.final_report(&agent, name, T)),
            ("done", 0),
            "{name}"
        );
        assert!(!std::fs::symlink_metadata(rig.resource(name))
            .unwrap()
            .file_type()
            .is_symlink());
    }
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
    // A directory in the way: -5 with the path.
    std::fs::create_dir_all(rig.resource("dir.bin/inside")).unwrap();
    let (_, task) = rig.task("dir.bin", 100, 14);
    rig.platform.push(&device(), &task).unwrap();
    let r = rig.final_report(&agent, "dir.bin", T);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(
        r["progress"]["result_msg"]
            .as_str()
            .unwrap()
            .contains("dir.bin"),
        "{r}"
    );
}

#[test]
fn a_read_only_resource_dir_is_a_clear_fail() {
    let mut rig = Rig::new();
    let fs = Tmpfs::mount(&rig.path().join("resources"), "8m");
    let mut agent = rig.start_agent();
    fs.remount_ro();
    let (_, task) = rig.task("ro.bin", 1000, 15);
    rig.platform.push(&device(), &task).unwrap();
    let r = rig.final_report(&agent, "ro.bin", T);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(
        r["progress"]["result_msg"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("read-only"),
        "{r}"
    );
    assert!(agent.is_alive());
}

#[test]
fn a_resource_over_4_gib_downloads_with_64_bit_sizes_and_percent() {
    let mut rig = Rig::new();
    let size = (4u64 << 30) + (64 << 20);
    let src = rig.path().join("served/sparse.bin");
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let task = rig.platform.task_for("sparse.bin", &src);
    assert_eq!(task["size"], size);
    let agent = rig.start_agent();
    rig.platform.push(&device(), &task).unwrap();
    let r = rig.final_report(&agent, "sparse.bin", Duration::from_secs(600));
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    assert_eq!(
        std::fs::metadata(rig.resource("sparse.bin")).unwrap().len(),
        size
    );
    let percents: Vec<u64> = rig
        .platform
        .reports_for(&device(), "sparse.bin")
        .iter()
        .filter(|m| m["progress"]["state"] == "downloading")
        .map(|m| m["progress"]["percent"].as_u64().unwrap())
        .collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]) && percents.iter().all(|p| *p <= 100),
        "{percents:?}"
    );
    let _ = std::fs::remove_file(rig.resource("sparse.bin"));
}

#[test]
fn no_secret_in_logs_reports_or_status_at_trace_level() {
    let mut rig = Rig::new();
    let (_, task) = rig.task("secret.bin", 1 << 20, 16);
    rig.platform.offer(&device(), task);
    let agent = rig.spawn_agent_under(&[], "trace");
    assert_eq!(
        state_of(&rig.final_report(&agent, "secret.bin", T)),
        ("done", 0)
    );
    let src = rig.make_file("up.bin", 1000, 17);
    rig.cli(&["upload", src.to_str().unwrap()]);
    rig.platform
        .wait_for(&device(), T, |m| {
            m["type"] == "report_upload_progress" && m["progress"]["state"] == "done"
        })
        .unwrap();
    let (_, status, _) = rig.cli(&["status", "--json"]);
    let (_, status_text, _) = rig.cli(&["status"]);
    let log = agent.log_text();
    let reports = serde_json::to_string(&rig.platform.received(&device())).unwrap();
    // The device secret, the MQTT password (its HMAC suffix) and URL signatures.
    for (what, needle) in [
        ("device secret", SECRET_B64),
        ("MQTT password", ";hmacsha256"),
        ("presigned signature", "sign="),
    ] {
        assert!(!log.contains(needle), "{what} in the log");
        assert!(!reports.contains(needle), "{what} in a report");
        assert!(
            !status.contains(needle) && !status_text.contains(needle),
            "{what} in status"
        );
    }
    assert!(log.lines().count() > 20, "trace logging was on");
}

/// Kills the daemon at random instants during download, verification, install and
/// journal writes, `RESAGENT_KILL_ROUNDS` times (50 by default), offering two versions in
/// turn: after every round the destination is one version or the other, byte for byte,
/// the journal parses and agrees with the disk, and in the end the task is done with no
/// temp file left.
#[test]
fn kill_loop_leaves_old_or_new_and_ends_done() {
    let rounds: u32 = std::env::var("RESAGENT_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let mut rig = Rig::new();
    let size = 6u64 << 20;
    let versions: Vec<(Vec<u8>, serde_json::Value)> = (0..2)
        .map(|v| {
            let src = rig.make_file(&format!("k-{v}"), size, 20 + v);
            let task = rig
                .platform
                .task_served_as("k.bin", &src, &format!("k-v{v}.bin"));
            rig.throttle(&task, 24 << 20);
            (std::fs::read(&src).unwrap(), task)
        })
        .collect();
    rig.platform.offer(&device(), versions[0].1.clone());
    let agent = rig.start_agent();
    assert_eq!(state_of(&rig.final_report(&agent, "k.bin", T)), ("done", 0));
    drop(agent);
    let mut seed = 0x2545F4914F6CDD1Du64;
    for round in 0..rounds {
        rig.platform
            .offer(&device(), versions[(round as usize + 1) % 2].1.clone());
        let mut agent = rig.spawn_agent();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(60 + seed % 500));
        agent.kill9();
        let on_disk = std::fs::read(rig.resource("k.bin")).unwrap();
        let which = versions.iter().position(|(bytes, _)| *bytes == on_disk);
        let which = which.unwrap_or_else(|| panic!("round {round}: the destination is torn"));
        let journal = rig.journal();
        let disk_md5 = &versions[which].1["md5sum"];
        let agrees = journal["installed"]["k.bin"]["md5sum"] == *disk_md5
            || (journal["download"]["task"]["md5sum"] == *disk_md5
                && journal["download"]["phase"] == "verified");
        assert!(
            agrees,
            "round {round}: journal disagrees with the disk: {journal}"
        );
    }
    let last = &versions[(rounds as usize) % 2];
    rig.platform.offer(&device(), last.1.clone());
    let agent = rig.spawn_agent();
    let deadline = Instant::now() + T;
    while rig.journal()["installed"]["k.bin"]["md5sum"] != last.1["md5sum"]
        || !rig.journal()["download"].is_null()
    {
        assert!(
            Instant::now() < deadline,
            "not done after the kills:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(rig.resource("k.bin")).unwrap(), last.0);
    let leftovers: Vec<_> = std::fs::read_dir(rig.path().join("resources/.resagent-staging"))
        .unwrap()
        .flatten()
        .collect();
    assert!(leftovers.is_empty(), "no temp file left: {leftovers:?}");
    let served: u64 = versions.iter().map(|(_, t)| rig.gets(t).1).sum();
    eprintln!("kill loop: {rounds} kills; {served} bytes served for {size}-byte versions");
    assert!(
        served < u64::from(rounds + 2) * size,
        "resume keeps the bytes served low: {served}"
    );
}

#[test]
fn a_trickling_server_is_not_cut_and_one_that_closes_mid_body_is_resumed() {
    let mut rig = Rig::new();
    rig.config["transfer_timeout_s"] = json!(2);
    let agent = rig.start_agent();
    let (_, slow) = rig.task("trickle.bin", 5, 30);
    rig.throttle(&slow, 1);
    rig.platform.push(&device(), &slow).unwrap();
    let r = rig.final_report(&agent, "trickle.bin", T);
    assert_eq!(
        state_of(&r),
        ("done", 0),
        "1 byte a second is slow but alive: {r}"
    );
    assert_eq!(rig.gets(&slow).0, 1, "never cut and retried");

    let size = 4u64 << 20;
    let (_, cut) = rig.task("cut.bin", size, 31);
    rig.fault(
        &cut,
        HttpFault {
            close_after: Some(size / 2),
            close_times: 1,
            ..Default::default()
        },
    );
    rig.platform.push(&device(), &cut).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "cut.bin", T)),
        ("done", 0)
    );
    rig.assert_installed("cut.bin", &cut);
    let reqs: Vec<_> = rig.requests_for(&cut);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].status, 206, "resumed with Range: {reqs:?}");
    assert!(
        reqs.iter().map(|r| r.body_bytes).sum::<u64>() <= size + (64 << 10),
        "{reqs:?}"
    );
}

#[test]
fn the_broker_restarted_ten_times_during_a_transfer() {
    let mut rig = Rig::new();
    let (_, task) = rig.task("ten.bin", 16 << 20, 32);
    rig.throttle(&task, 1 << 20);
    rig.platform.offer(&device(), task.clone());
    let agent = rig.start_agent();
    rig.wait_staged("ten.bin", 1 << 20);
    for _ in 0..10 {
        rig.broker.stop();
        std::thread::sleep(Duration::from_millis(300));
        rig.broker.restart();
        std::thread::sleep(Duration::from_millis(900));
    }
    let r = rig.final_report(&agent, "ten.bin", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    rig.assert_installed("ten.bin", &task);
    assert_eq!(
        rig.gets(&task).0,
        1,
        "the transfer never restarted, nothing was taken as a new task"
    );
    // Backoff means the agent need not catch every one of the ten short windows.
    let log = agent.log_text();
    assert!(
        log.contains("lost the connection") && log.matches("connected to tcp://").count() >= 2,
        "{log}"
    );
}

/// A TCP proxy the test controls: `cut()` turns every connection open at that moment
/// half-open — bytes are swallowed, nothing is forwarded, no FIN is sent — while new
/// connections are forwarded normally.
struct Proxy {
    port: u16,
    cut_below: std::sync::Arc<std::sync::atomic::AtomicU64>,
    next_id: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut_below = Arc::new(AtomicU64::new(0));
        let next_id = Arc::new(AtomicU64::new(1));
        let (cut, ids) = (cut_below.clone(), next_id.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let id = ids.fetch_add(1, Ordering::SeqCst);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let cut = cut.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let mut buf = [0u8; 16384];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => {
                                    if id >= cut.load(Ordering::SeqCst) {
                                        let _ = to.shutdown(std::net::Shutdown::Write);
                                    }
                                    return;
                                }
                                Ok(n) => n,
                            };
                            if id < cut.load(Ordering::SeqCst) {
                                continue; // half-open: swallow, never answer, never close
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        Proxy {
            port,
            cut_below,
            next_id,
        }
    }

    fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.cut_below
            .store(self.next_id.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

#[test]
fn a_half_open_broker_connection_is_noticed_and_the_final_report_resent() {
    let mut rig = Rig::new();
    let proxy = Proxy::start(rig.broker.port);
    rig.config["broker"] = json!(format!("tcp://127.0.0.1:{}", proxy.port));
    rig.config["keepalive_s"] = json!(2);
    let size = 4u64 << 20;
    let (_, task) = rig.task("halfopen.bin", size, 33);
    rig.throttle(&task, 1 << 20);
    rig.platform.offer(&device(), task.clone());
    let agent = rig.start_agent();
    rig.wait_staged("halfopen.bin", size * 3 / 4);
    proxy.cut();
    let r = rig.final_report(&agent, "halfopen.bin", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    let log = agent.log_text();
    assert!(
        log.contains("lost the connection"),
        "the keep-alive noticed: {log}"
    );
    assert!(
        log.contains("re-sending the unacknowledged done report for halfopen.bin"),
        "{log}"
    );
    assert_eq!(rig.gets(&task).0, 1, "nothing taken twice as a new task");
}

#[test]
fn a_storm_of_ten_thousand_messages_during_a_task() {
    let mut rig = Rig::new();
    let (_, task) = rig.task("storm.bin", 8 << 20, 34);
    rig.throttle(&task, 4 << 20);
    let mut agent = rig.start_agent();
    let hwm = |a: &Agent| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", a.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    rig.platform.push(&device(), &task).unwrap();
    rig.wait_staged("storm.bin", 1 << 20);
    let before = hwm(&agent);
    let mut x = 0x9E3779B97F4A7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let good = task.to_string();
    for i in 0..10_000u32 {
        let payload: Vec<u8> = match i % 10 {
            0 => {
                // Near-valid: the running task with one field broken (and an unsafe name).
                let mut t = task.clone();
                t["name"] = json!(format!("../evil-{i}"));
                t["type"] = json!("download");
                t.to_string().into_bytes()
            }
            1 => good.replace("\"size\":", "\"size\":-").into_bytes(),
            2 => format!("{{\"type\":\"download\",\"name\":{i},\"md5sum\":[],\"url\":null}}")
                .into_bytes(),
            _ => (0..(next() % 200)).map(|_| next() as u8).collect(),
        };
        rig.platform.send(&device(), &payload).unwrap();
    }
    let r = rig.final_report(&agent, "storm.bin", Duration::from_secs(120));
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    rig.assert_installed("storm.bin", &task);
    assert!(agent.is_alive());
    let after = hwm(&agent);
    assert!(
        after < before + 8 * 1024,
        "memory stays flat: {before} KiB before, {after} KiB after"
    );
    for e in std::fs::read_dir(rig.path()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with("evil"),
            "nothing written outside resource_dir: {name}"
        );
    }
    assert!(!rig.path().join("evil-0").exists());
}

/// The kill loop for uploads: SIGKILL at random instants while a file is announced and
/// PUT; the file never leaves the outbox unconfirmed, and in the end it is uploaded whole.
#[test]
fn kill_loop_during_upload_ends_with_the_file_uploaded_once_whole() {
    let rounds: u32 = std::env::var("RESAGENT_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let mut rig = Rig::new();
    let name = "clip.rec";
    let upload = resagent_platform::upload_path(&device(), name);
    rig.platform.set_fault(
        &upload,
        HttpFault {
            rate: Some(16 << 20),
            ..Default::default()
        },
    );
    rig.platform.set_upload_result(Some(0));
    let src = rig.make_file(name, 4 << 20, 35);
    let (code, _, err) = rig.cli(&["upload", src.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let queued = rig.path().join("outbox").join(name);
    let mut seed = 0x853C49E6748FEA9Bu64;
    for round in 0..rounds {
        if !queued.exists() {
            break;
        }
        let mut agent = rig.spawn_agent();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(60 + seed % 500));
        agent.kill9();
        let confirmed = rig.platform.uploads().iter().any(|u| u.path == upload);
        assert!(
            queued.exists() || confirmed,
            "round {round}: the file left the outbox unconfirmed"
        );
    }
    let agent = rig.spawn_agent();
    let deadline = Instant::now() + T;
    while queued.exists() {
        assert!(
            Instant::now() < deadline,
            "not uploaded after the kills:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let stored: Vec<_> = rig
        .platform
        .uploads()
        .into_iter()
        .filter(|u| u.path == upload)
        .collect();
    assert!(!stored.is_empty());
    assert!(
        stored
            .iter()
            .all(|u| u.md5_hex == md5_hex(&src) && u.content_md5_checked),
        "every stored copy is whole"
    );
    assert_eq!(
        std::fs::read(&stored.last().unwrap().file).unwrap(),
        std::fs::read(&src).unwrap()
    );
}

/// Fills the file system holding `dir` with a file there; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let _ = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .args(["bs=4k", "status=none"])
        .status();
    filler
}

#[test]
fn a_journal_that_cannot_be_written_fails_the_task_minus_11_and_later_tasks_run() {
    let mut rig = Rig::new();
    let state = rig.path().join("state");
    let _fs = Tmpfs::mount(&state, "512k");
    let agent = rig.start_agent();
    let dev = device();
    let attempt = |rig: &Rig, name: &str, seed: u64| {
        let (_, task) = rig.task(name, 64 << 10, seed);
        rig.platform.push(&dev, &task).unwrap();
        (rig.final_report(&agent, name, T), task)
    };

    // A full state_dir: the task cannot be recorded, so it is refused, not kept in limbo.
    let filler = fill(&state);
    let (r, task) = attempt(&rig, "full.bin", 21);
    assert_eq!(state_of(&r), ("fail", -11), "{r}");
    let msg = r["progress"]["result_msg"].as_str().unwrap();
    assert!(
        msg.contains("journal")
            && msg.contains(&state.display().to_string())
            && msg.contains("space"),
        "names the file and the cause: {msg}"
    );
    assert_eq!(
        rig.gets(&task).0,
        0,
        "nothing fetched for a task not recorded"
    );
    std::fs::remove_file(&filler).unwrap();
    let (r, task) = attempt(&rig, "after-full.bin", 22);
    assert_eq!(
        state_of(&r),
        ("done", 0),
        "room again: no restart needed; {r}"
    );
    rig.assert_installed("after-full.bin", &task);

    // A read-only state_dir: the same.
    let remount = |opts: &str| {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{opts}")])
            .arg(&state)
            .status()
            .unwrap();
        assert!(st.success(), "remount {opts}");
    };
    remount("ro");
    let (r, _) = attempt(&rig, "ro.bin", 23);
    assert_eq!(state_of(&r), ("fail", -11), "{r}");
    assert!(
        r["progress"]["result_msg"]
            .as_str()
            .unwrap()
            .contains("Read-only"),
        "{r}"
    );
    remount("rw");
    let (r, task) = attempt(&rig, "after-ro.bin", 24);
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    rig.assert_installed("after-ro.bin", &task);
    // Everything that happened while the disk refused is on disk now.
    let journal = rig.journal();
    assert!(
        journal["installed"]["after-ro.bin"].is_object(),
        "{journal}"
    );
    assert!(journal["download"].is_null(), "nothing in limbo: {journal}");
}

#[test]
fn one_daemon_per_state_dir_and_a_stale_pid_file_signals_no_stranger() {
    let mut rig = Rig::new();
    let mut first = rig.start_agent();
    // A second daemon on the same state, with a pid file of its own: refused, naming
    // the first.
    let pid_file = rig.config["pid_file"].clone();
    rig.config["pid_file"] = json!(rig.path().join("other.pid"));
    let mut second = rig.spawn_agent();
    let exit = second.wait_exit(Duration::from_secs(10));
    assert_eq!(exit, Some(Some(1)), "{}", second.log_text());
    assert!(
        second
            .log_text()
            .contains(&format!("already runs with pid {}", first.pid())),
        "{}",
        second.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(first.is_alive(), "the first daemon goes on");
    first.terminate();

    // A pid file left behind, its number now a stranger's.
    rig.config["pid_file"] = pid_file;
    let pid_path = PathBuf::from(rig.config["pid_file"].as_str().unwrap());
    let mut stranger = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(&pid_path, format!("{}\n", stranger.id())).unwrap();
    let (code, _, err) = rig.cli(&["check"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no resagent daemon runs"), "{err}");
    let file = rig.make_file("log.txt", 100, 1);
    let (code, out, _) = rig.cli(&["upload", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        stranger.try_wait().unwrap().is_none(),
        "the stranger was never signalled"
    );
    // `run` is not stopped by it, and leaves a pid file that is not its own alone.
    let mut agent = rig.spawn_agent();
    wait_log(&agent, "connected to");
    std::fs::write(&pid_path, format!("{}\n", stranger.id())).unwrap();
    agent.terminate();
    assert_eq!(
        std::fs::read_to_string(&pid_path).unwrap().trim(),
        stranger.id().to_string()
    );
    let _ = stranger.kill();
    let _ = stranger.wait();
}

#[test]
fn a_re_offer_while_the_journal_waits_for_the_disk_never_reports_fail_for_the_task_in_flight() {
    let mut rig = Rig::new();
    let state = rig.path().join("state");
    let fs = Tmpfs::mount(&state, "4m");
    let agent = rig.start_agent();
    let (_, task) = rig.task("steady.bin", 4 << 20, 31);
    rig.throttle(&task, 1 << 20);
    rig.platform.push(&device(), &task).unwrap();
    rig.wait_staged("steady.bin", 256 << 10);
    // A record the disk refuses (the connection state as the broker goes and comes back):
    // memory is ahead of the journal for a while.
    fs.remount_ro();
    rig.broker.restart();
    wait_log(
        &agent,
        "the change is kept in memory and saved again shortly",
    );
    let deadline = Instant::now() + T;
    while agent.log_text().matches("connected to").count() < 2 {
        assert!(Instant::now() < deadline, "reconnected");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(rig.platform.wait_connected(T));
    // The platform's answer to a poll: the task in flight again; and another version of
    // the name, which cannot be recorded now.
    rig.platform.push(&device(), &task).unwrap();
    let other = rig.path().join("other-steady.bin");
    std::fs::write(&other, b"another version").unwrap();
    let newer = rig
        .platform
        .task_served_as("steady.bin", &other, "other-steady.bin");
    rig.platform.push(&device(), &newer).unwrap();
    wait_log(&agent, "not reported: steady.bin is in flight");
    std::thread::sleep(Duration::from_millis(500));
    let r = rig.final_report(&agent, "steady.bin", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}");
    fs.remount_rw();
    assert_eq!(
        finals(&rig, "steady.bin").len(),
        1,
        "one final report for the name: its own done, no fail before it"
    );
    rig.assert_installed("steady.bin", &task);
}

#[test]
fn a_folder_the_agent_cannot_write_at_start_is_exit_2_naming_it() {
    let mut rig = Rig::new();
    // resource_dir read-only (a hardened unit without it in ReadWritePaths): no start.
    let fs = Tmpfs::mount(&rig.path().join("resources"), "8m");
    fs.remount_ro();
    let mut agent = rig.spawn_agent();
    assert_eq!(agent.wait_exit(T), Some(Some(2)), "exit 2");
    let log = agent.log_text();
    assert!(
        log.contains("resource_dir")
            && log.contains("is not writable")
            && log.contains("Read-only"),
        "{log}"
    );
    assert!(
        rig.platform.received(&device()).is_empty(),
        "it never connected"
    );
    // A read-only outbox only gets a warning: downloads go on.
    let mut rig = Rig::new();
    let out = Tmpfs::mount(&rig.path().join("outbox"), "8m");
    out.remount_ro();
    let agent = rig.start_agent();
    assert!(
        agent.log_text().contains("outbox_dir"),
        "{}",
        agent.log_text()
    );
    let (_, task) = rig.task("still.bin", 1000, 16);
    rig.platform.push(&device(), &task).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "still.bin", T)),
        ("done", 0)
    );
}
