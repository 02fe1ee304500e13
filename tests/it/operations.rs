//! Operations at fleet scale (docs/agent.md, "Running under systemd" and "Connection
//! life"): the notify protocol and the watchdog read from a real datagram socket, log
//! lines under journald, and the jitter that spreads a fleet — twenty real daemons.

use crate::common::*;
use serde_json::json;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Datagrams read from `sock` until `until` says stop (or `limit` passes), with the
/// instant each arrived.
fn read_notify(
    sock: &UnixDatagram,
    limit: Duration,
    mut until: impl FnMut(&[(Instant, String)]) -> bool,
) -> Vec<(Instant, String)> {
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !until(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    got
}

/// The agent started as systemd would with `WatchdogSec` of `usec` µs, and the notify
/// socket it sends to.
fn under_watchdog(rig: &mut Rig, usec: u64) -> (Agent, UnixDatagram) {
    let sock_path = rig.path().join("notify.sock");
    let _ = std::fs::remove_file(&sock_path);
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let agent = rig.spawn_agent_under(
        &[
            "env",
            &format!("NOTIFY_SOCKET={}", sock_path.display()),
            &format!("WATCHDOG_USEC={usec}"),
        ],
        "info",
    );
    (agent, sock)
}

fn pings(msgs: &[(Instant, String)]) -> Vec<Instant> {
    msgs.iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn notify_says_ready_keeps_status_and_feeds_the_watchdog_until_the_download_thread_wedges() {
    let mut rig = Rig::new();
    let fs = ForgetFs::mount(&rig.path().join("backing"), &rig.path().join("disk"));
    rig.config["resource_dir"] = json!(fs.mount.join("resources"));
    let (agent, sock) = under_watchdog(&mut rig, 2_000_000);
    // READY=1 first, then STATUS= and WATCHDOG=1 at least every 1.5 s.
    let msgs = read_notify(&sock, Duration::from_secs(8), |_| false);
    assert!(
        msgs.first()
            .is_some_and(|(_, m)| m.starts_with("READY=1\nSTATUS=")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|(_, m)| m.contains("STATUS=connected to tcp://127.0.0.1")),
        "{msgs:?}"
    );
    let p = pings(&msgs);
    assert!(p.len() >= 4, "{} pings in 8 s: {msgs:?}", p.len());
    let max_gap = p.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(max_gap <= Duration::from_millis(1500), "gap {max_gap:?}");

    // A download whose thread then hangs in a write (a disk that stops answering).
    let (_, task) = rig.task("big.bin", 8 << 20, 1);
    rig.throttle(&task, 1 << 20);
    rig.platform.push(&device(), &task).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(fs.mount.join("resources/.resagent-staging/big.bin"))
        .map_or(true, |m| m.len() < 256 << 10)
    {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let msgs = read_notify(&sock, Duration::from_secs(3), |_| false);
    assert!(
        msgs.iter().any(|(_, m)| m.contains("downloading big.bin")),
        "STATUS shows the download: {msgs:?}"
    );
    fs.freeze();
    let frozen = Instant::now();
    let msgs = read_notify(&sock, Duration::from_secs(7), |_| false);
    let late: Vec<_> = pings(&msgs)
        .into_iter()
        .filter(|t| *t > frozen + Duration::from_secs(3))
        .collect();
    fs.thaw();
    assert!(
        late.is_empty(),
        "pings went on with the download thread wedged: {} late; log:\n{}",
        late.len(),
        agent.log_text()
    );
    assert!(agent.log_text().contains("not feeding the watchdog"));
}

#[test]
fn under_journald_log_lines_carry_no_timestamp_of_their_own() {
    let mut rig = Rig::new();
    let agent = rig.spawn_agent_under(&["env", "JOURNAL_STREAM=8:12345"], "info");
    wait_log(&agent, "connected to");
    for line in agent.log_text().lines().filter(|l| l.starts_with('[')) {
        assert!(!line.starts_with("[20"), "timestamped: {line}");
    }
    let plain = rig.spawn_agent_under(&[], "info");
    std::thread::sleep(Duration::from_millis(500));
    assert!(plain.log_text().starts_with("[20"), "{}", plain.log_text());
}

/// A daemon of its own: device `name`, its own folders under `dir`.
fn fleet_member(rig: &Rig, dir: &Path, name: &str, extra: serde_json::Value) -> Child {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let mut cfg = json!({
        "productId": PRODUCT, "deviceName": name,
        "key_deviceinfo": {"deviceSecret": SECRET_B64},
        "broker": rig.broker.uri(), "allow_http": true, "poll_jitter_s": 0,
        "resource_dir": d.join("res"), "state_dir": d.join("state"),
        "outbox_dir": d.join("outbox"), "plugin_dir": d.join("plugins"),
        "pid_file": d.join("pid"),
    });
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_resagent"))
        .args(["run", "-c"])
        .arg(d.join("config.json"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// When each of `devices` first asked for a task after `since` (Unix ms).
fn first_polls(rig: &Rig, devices: &[String], since: u64) -> Vec<u64> {
    devices
        .iter()
        .filter_map(|d| {
            rig.platform
                .received_at(&format!("{PRODUCT}/{d}"))
                .into_iter()
                .find(|(at, m)| *at >= since && m["type"] == "get_download_task")
                .map(|(at, _)| at)
        })
        .collect()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn a_fleet_spreads_its_first_polls_and_its_reconnects() {
    let mut rig = Rig::new();
    let dir = rig.path().join("fleet");
    let broker_port: u16 = rig.broker.port;
    let relay = resagent_platform::rig::Relay::start(broker_port);
    let devices: Vec<String> = (0..20).map(|i| format!("fleet{i:02}")).collect();
    let started = unix_ms();
    let via_relay = format!("tcp://127.0.0.1:{}", relay.port);
    let mut members: Vec<Child> = devices
        .iter()
        .map(|d| {
            fleet_member(
                &rig,
                &dir,
                d,
                json!({"poll_jitter_s": 10, "broker": via_relay, "keepalive_s": 5}),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let polls = loop {
        let p = first_polls(&rig, &devices, started);
        if p.len() == devices.len() {
            break p;
        }
        assert!(Instant::now() < deadline, "{} of 20 polled", p.len());
        std::thread::sleep(Duration::from_millis(200));
    };
    let spread = polls.iter().max().unwrap() - polls.iter().min().unwrap();
    println!("first polls of 20 daemons spread over {spread} ms");
    assert!(spread >= 3000, "first polls spread over only {spread} ms");
    assert!(
        polls.iter().all(|p| p - started <= 10_000 + 5_000),
        "none waits past poll_jitter_s (+ start-up)"
    );

    // A 3 s broker outage: they come back spread by full jitter, none past its cap.
    rig.broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    let restarted = unix_ms();
    rig.broker.restart();
    let deadline = Instant::now() + Duration::from_secs(40);
    let back = loop {
        let p = relay.connections_since(restarted);
        if p.len() >= devices.len() {
            break p;
        }
        assert!(Instant::now() < deadline, "{} of 20 reconnected", p.len());
        std::thread::sleep(Duration::from_millis(200));
    };
    let spread = back.iter().max().unwrap() - back.iter().min().unwrap();
    println!("reconnects of 20 daemons after a 3 s outage spread over {spread} ms");
    assert!(spread >= 1000, "reconnects spread over only {spread} ms");
    for m in &mut members {
        let _ = m.kill();
        let _ = m.wait();
    }
}

#[test]
fn a_long_read_back_after_a_restart_feeds_the_watchdog_and_obeys_a_stop() {
    let mut rig = Rig::new();
    let fs = ForgetFs::mount(&rig.path().join("backing"), &rig.path().join("disk"));
    rig.config["resource_dir"] = json!(fs.mount.join("resources"));
    let (_, task) = rig.task("big.bin", 24 << 20, 3);
    rig.throttle(&task, 8 << 20);
    let mut agent = rig.spawn_agent();
    wait_log(&agent, "connected to");
    rig.platform.push(&device(), &task).unwrap();
    let staged = fs.mount.join("resources/.resagent-staging/big.bin");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&staged).map_or(true, |m| m.len() < 16 << 20) {
        assert!(Instant::now() < deadline, "{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.kill9();
    rig.throttle(&task, 256 << 10);
    // The part on disk now reads back at ~3 MiB/s: 16 MiB take over 5 s, a watchdog of 1 s.
    fs.slow_reads();
    let (mut agent, sock) = under_watchdog(&mut rig, 1_000_000);
    let msgs = read_notify(&sock, Duration::from_secs(30), |_| {
        agent.log_text().contains("resuming")
    });
    let p = pings(&msgs);
    let max_gap = p.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    assert!(
        p.len() >= 8 && max_gap <= Duration::from_millis(900),
        "{} pings, largest gap {max_gap:?} during the read back; log:\n{}",
        p.len(),
        agent.log_text()
    );
    assert!(!agent.log_text().contains("not feeding the watchdog"));
    let took = agent.terminate();

    // A stop in the middle of the read back ends it at once; the bytes stay.
    let before = std::fs::metadata(&staged).unwrap().len();
    let mut agent = rig.spawn_agent();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !agent.log_text().contains("resuming"),
        "{}",
        agent.log_text()
    );
    let took_mid_read = agent.terminate();
    assert!(
        took_mid_read < Duration::from_millis(1500),
        "{took_mid_read:?} (and {took:?})"
    );
    assert!(agent
        .log_text()
        .contains("stopped; it resumes after restart"));
    assert!(std::fs::metadata(&staged).unwrap().len() >= before);
}

#[test]
fn a_slow_plugin_probe_neither_starves_the_watchdog_nor_holds_the_scan() {
    let mut rig = Rig::new();
    rig.config["plugin_timeout_s"] = json!(120);
    fixture(
        &rig,
        "rogue.c",
        "10-slow.so",
        &["PLUGIN_NAME=\"slow\"", "SLOW_INIT_S=60"],
    );
    let started = Instant::now();
    let (agent, sock) = under_watchdog(&mut rig, 1_000_000);
    let msgs = read_notify(&sock, Duration::from_secs(15), |_| {
        agent.log_text().contains("plugin refused")
    });
    let refused_after = started.elapsed();
    let p = pings(&msgs);
    let max_gap = p.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    assert!(
        p.len() >= 8 && max_gap <= Duration::from_millis(900),
        "{} pings, largest gap {max_gap:?} while the plugin was probed; log:\n{}",
        p.len(),
        agent.log_text()
    );
    let log = agent.log_text();
    assert!(log.contains("timed out after 5 s"), "{log}");
    assert!(refused_after < Duration::from_secs(12), "{refused_after:?}");
    assert!(
        log.contains("connected to"),
        "the coordinator went on: {log}"
    );
}
