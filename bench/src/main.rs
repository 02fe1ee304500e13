//! `resagent-bench`: measures resagent beside the shell pipeline an integrator would
//! otherwise script (curl, md5sum, sync, mv), in the same run, on the same local broker
//! and storage server, and writes the results as JSON (bench/results/) and a table.
//! It measures; it asserts nothing but that every transfer ended `done`.

use resagent_platform::rig::{free_port, write_random, Mosquitto};
use resagent_platform::{upload_path, Platform};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

const MIB: u64 = 1 << 20;
const PRODUCT: &str = "BENCHPROD1";
/// Generous: a 1 GiB transfer on a slow disk.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(900);

struct Opts {
    sizes_mib: Vec<u64>,
    runs: usize,
    fleet: usize,
    fleet_mib: u64,
    /// `poll_jitter_s` of the fleet (the default, 30; the smoke run uses 3).
    fleet_jitter_s: u64,
    idle_secs: u64,
    cap_mib_s: u64,
    bin: PathBuf,
    work: PathBuf,
    results: PathBuf,
}

fn parse_opts() -> Opts {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut o = Opts {
        sizes_mib: vec![64, 256, 1024],
        runs: 3,
        fleet: 200,
        fleet_mib: 8,
        fleet_jitter_s: 30,
        idle_secs: 60,
        cap_mib_s: 16,
        bin: root.join("target/release/resagent"),
        work: root.join("target/bench-work"),
        results: root.join("bench/results"),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let val = |i: usize| args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--sizes" => o.sizes_mib = val(i).split(',').filter_map(|s| s.parse().ok()).collect(),
            "--runs" => o.runs = val(i).parse().unwrap_or(3),
            "--fleet" => o.fleet = val(i).parse().unwrap_or(50),
            "--idle-secs" => o.idle_secs = val(i).parse().unwrap_or(60),
            "--bin" => o.bin = PathBuf::from(val(i)),
            "--smoke" => {
                o.sizes_mib = vec![64];
                o.runs = 1;
                o.fleet = 5;
                o.fleet_jitter_s = 3;
                o.idle_secs = 5;
                i += 1;
                continue;
            }
            other => {
                eprintln!("resagent-bench: unknown option {other}\nusage: resagent-bench [--sizes 64,256,1024] [--runs 3] [--fleet 50] [--idle-secs 60] [--bin PATH] [--smoke]");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    o
}

/// A resagent daemon of the benchmark, with its own device name and folders.
struct Daemon {
    child: Child,
    dir: PathBuf,
    device: String,
}

impl Daemon {
    fn start(
        o: &Opts,
        broker: &Mosquitto,
        platform: &Platform,
        name: &str,
        extra: Value,
    ) -> Daemon {
        let d = Daemon::spawn(o, broker, name, extra);
        let up = platform.wait_for(&d.device, Duration::from_secs(30), |m| {
            m["type"] == "get_download_task"
        });
        assert!(up.is_some(), "{} did not connect", d.device);
        d
    }

    /// Starts a daemon without waiting for it to connect.
    fn spawn(o: &Opts, broker: &Mosquitto, name: &str, extra: Value) -> Daemon {
        let dir = o.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = json!({
            "productId": PRODUCT, "deviceName": name,
            "key_deviceinfo": {"deviceSecret": "YmVuY2g="},
            "broker": broker.uri(), "allow_http": true, "poll_jitter_s": 0,
            "resource_dir": dir.join("resources"), "state_dir": dir.join("state"),
            "outbox_dir": dir.join("outbox"), "plugin_dir": dir.join("plugins"),
            "pid_file": dir.join("resagent.pid"),
        });
        if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let child = Command::new(&o.bin)
            .args(["run", "-c"])
            .arg(dir.join("config.json"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("resagent.log")).unwrap())
            .spawn()
            .expect("target/release/resagent (cargo build --release)");
        let device = format!("{PRODUCT}/{name}");
        Daemon { child, dir, device }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn status_kib(&self, key: &str) -> u64 {
        status_field(&format!("/proc/{}/status", self.pid()), key)
    }

    fn cli(&self, o: &Opts, args: &[&str]) {
        let st = Command::new(&o.bin)
            .args(args)
            .arg("-c")
            .arg(self.dir.join("config.json"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "resagent {args:?}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn status_field(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn sh(script: &str) -> f64 {
    let t = Instant::now();
    let st = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "baseline failed: {script}");
    t.elapsed().as_secs_f64()
}

fn wait_state(platform: &Platform, device: &str, kind: &str, name: &str) {
    let r = platform
        .wait_for(device, TRANSFER_TIMEOUT, |m| {
            m["type"] == kind
                && m["name"] == name
                && matches!(m["progress"]["state"].as_str(), Some("done" | "fail"))
        })
        .unwrap_or_else(|| panic!("{name}: no final report"));
    assert_eq!(r["progress"]["state"], "done", "{name}: {r}");
}

fn download_case(o: &Opts, broker: &Mosquitto, platform: &Platform, mib: u64) -> Value {
    let src = o.work.join(format!("served/dl-{mib}.bin"));
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
    write_random(&src, mib * MIB, mib);
    let d = Daemon::start(o, broker, platform, &format!("dl{mib}"), json!({}));
    let base_dir = o.work.join("baseline-dl");
    std::fs::create_dir_all(&base_dir).unwrap();
    let (mut ours, mut theirs, mut phases) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..o.runs {
        let name = format!("dl-{mib}-{run}.bin");
        let task = platform.task_for(&name, &src);
        let t = Instant::now();
        let pushed_ms = unix_ms();
        platform.push(&d.device, &task).unwrap();
        wait_state(platform, &d.device, "report_download_progress", &name);
        ours.push(t.elapsed().as_secs_f64());
        phases.push(phase_times(platform, &d.device, &name, pushed_ms));
        let _ = std::fs::remove_file(d.dir.join("resources").join(&name));
        let url = format!(
            "{}{}",
            platform.storage().base_url(),
            Platform::path_of(&task)
        );
        let (tmp, dest) = (base_dir.join("tmp"), base_dir.join(&name));
        theirs.push(sh(&format!(
            "curl -sf -o '{t}' '{url}' && md5sum '{t}' >/dev/null && sync && mv '{t}' '{d}' && sync",
            t = tmp.display(),
            d = dest.display()
        )));
        let _ = std::fs::remove_file(dest);
    }
    let hwm = d.status_kib("VmHWM:");
    json!({"size_mib": mib, "resagent_s": ours, "baseline_s": theirs, "peak_rss_kib": hwm, "phases_ms": phases})
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// When, after the push, the platform saw the first `downloading`, the first `burning`
/// and the `done` of `name`: where a download's time goes.
fn phase_times(platform: &Platform, device: &str, name: &str, pushed_ms: u64) -> Value {
    let at = |state: &str| {
        platform
            .received_at(device)
            .into_iter()
            .find(|(_, m)| m["name"] == name && m["progress"]["state"] == state)
            .map(|(t, _)| t.saturating_sub(pushed_ms))
    };
    json!({"first_downloading": at("downloading"), "burning": at("burning"), "done": at("done")})
}

fn upload_case(o: &Opts, broker: &Mosquitto, platform: &Platform, mib: u64) -> Value {
    let src = o.work.join(format!("up-{mib}.bin"));
    write_random(&src, mib * MIB, mib + 7);
    let d = Daemon::start(o, broker, platform, &format!("up{mib}"), json!({}));
    let (mut copy, mut moved, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..o.runs {
        let name = format!("up-{mib}-copy-{run}");
        let t = Instant::now();
        d.cli(o, &["upload", src.to_str().unwrap(), "--name", &name]);
        wait_state(platform, &d.device, "report_upload_progress", &name);
        copy.push(t.elapsed().as_secs_f64());

        let mv = o.work.join(format!("mv-{mib}.bin"));
        std::fs::copy(&src, &mv).unwrap();
        let name = format!("up-{mib}-move-{run}");
        let t = Instant::now();
        d.cli(
            o,
            &["upload", "--move", mv.to_str().unwrap(), "--name", &name],
        );
        wait_state(platform, &d.device, "report_upload_progress", &name);
        moved.push(t.elapsed().as_secs_f64());

        let url = format!(
            "{}{}",
            platform.storage().base_url(),
            upload_path(&d.device, &format!("baseline-{mib}-{run}"))
        );
        theirs.push(sh(&format!(
            "h=$(openssl dgst -md5 -binary '{f}' | base64) && curl -sf -T '{f}' -H \"Content-MD5: $h\" '{url}' >/dev/null",
            f = src.display()
        )));
        for u in platform.uploads() {
            let _ = std::fs::remove_file(u.file);
        }
    }
    let hwm = d.status_kib("VmHWM:");
    json!({"size_mib": mib, "copy_s": copy, "move_s": moved, "baseline_s": theirs, "peak_rss_kib": hwm})
}

/// CPU time (ms) and voluntary context switches of every thread of `pid`.
fn cpu_and_wakeups(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the `)`; ticks of 10 ms.
    let cpu_ms = (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10;
    let mut switches = 0;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            switches += status_field(
                &format!("{}/status", t.path().display()),
                "voluntary_ctxt_switches:",
            );
        }
    }
    (cpu_ms, switches)
}

fn idle_case(o: &Opts, broker: &Mosquitto, platform: &Platform) -> Value {
    let d = Daemon::start(o, broker, platform, "idle", json!({}));
    std::thread::sleep(Duration::from_secs(2));
    let (c0, w0) = cpu_and_wakeups(d.pid());
    std::thread::sleep(Duration::from_secs(o.idle_secs));
    let (c1, w1) = cpu_and_wakeups(d.pid());
    json!({
        "seconds": o.idle_secs, "cpu_ms": c1 - c0, "voluntary_switches": w1 - w0,
        "wakeups_per_s": (w1 - w0) as f64 / o.idle_secs as f64,
        "rss_kib": d.status_kib("VmRSS:"), "threads": std::fs::read_dir(format!("/proc/{}/task", d.pid())).map(|r| r.count()).unwrap_or(0),
    })
}

fn cap_case(o: &Opts, broker: &Mosquitto, platform: &Platform) -> Value {
    let mib = (o.cap_mib_s * 4).min(*o.sizes_mib.first().unwrap_or(&64));
    let src = o.work.join("served/cap.bin");
    write_random(&src, mib * MIB, 99);
    let cap = o.cap_mib_s * MIB;
    let d = Daemon::start(o, broker, platform, "cap", json!({"max_bytes_per_s": cap}));
    let task = platform.task_for("cap.bin", &src);
    let t = Instant::now();
    platform.push(&d.device, &task).unwrap();
    wait_state(platform, &d.device, "report_download_progress", "cap.bin");
    let rate = (mib * MIB) as f64 / t.elapsed().as_secs_f64();
    json!({"cap_bytes_per_s": cap, "measured_bytes_per_s": rate, "ratio": rate / cap as f64, "size_mib": mib})
}

fn fleet_case(o: &Opts, broker: &mut Mosquitto, platform: &Platform) -> Value {
    let src = o.work.join("served/fleet.bin");
    write_random(&src, o.fleet_mib * MIB, 5);
    // The whole fleet powered on at once, with the default poll_jitter_s: when does each
    // daemon first ask for a task?
    let unix_ms = || {
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    // The fleet reaches the broker through a relay that times each connection: after a
    // broker restart, a reconnect is seen there even when its first poll is lost (a
    // daemon back before the platform itself).
    let broker_port: u16 = broker
        .uri()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap();
    let relay = resagent_platform::rig::Relay::start(broker_port);
    let via_relay = format!("tcp://127.0.0.1:{}", relay.port);
    let started_ms = unix_ms();
    let daemons: Vec<Daemon> = (0..o.fleet)
        .map(|i| {
            Daemon::spawn(
                o,
                broker,
                &format!("f{i:03}"),
                json!({"poll_interval_s": 3600, "poll_jitter_s": o.fleet_jitter_s,
                       "broker": via_relay}),
            )
        })
        .collect();
    let first_poll = |d: &Daemon, since: u64| {
        platform
            .received_at(&d.device)
            .into_iter()
            .filter(|(at, m)| *at >= since && m["type"] == "get_download_task")
            .map(|(at, _)| (at - since) as f64 / 1000.0)
            .reduce(f64::min)
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut first_polls: Vec<f64> = Vec::new();
    while Instant::now() < deadline {
        first_polls = daemons
            .iter()
            .filter_map(|d| first_poll(d, started_ms))
            .collect();
        if first_polls.len() == daemons.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    first_polls.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let task = platform.task_for("fleet.bin", &src);
    let path = Platform::path_of(&task);
    let (reqs0, bytes0) = platform.gets(&path);
    let msgs0: usize = daemons
        .iter()
        .map(|d| platform.received(&d.device).len())
        .sum();
    let t = Instant::now();
    for d in &daemons {
        platform.push(&d.device, &task).unwrap();
    }
    for d in &daemons {
        wait_state(platform, &d.device, "report_download_progress", "fleet.bin");
    }
    let total = t.elapsed().as_secs_f64();
    let want = resagent_platform::file_md5(&src).1;
    let identical = daemons
        .iter()
        .all(|d| resagent_platform::file_md5(&d.dir.join("resources/fleet.bin")).1 == want);
    let (reqs1, bytes1) = platform.gets(&path);
    let msgs1: usize = daemons
        .iter()
        .map(|d| platform.received(&d.device).len())
        .sum();

    // The herd after a broker restart: when does each daemon ask again?
    let restart_ms = unix_ms();
    broker.restart();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut back: Vec<f64> = Vec::new();
    while Instant::now() < deadline {
        back = relay
            .connections_since(restart_ms)
            .into_iter()
            .map(|at| (at - restart_ms) as f64 / 1000.0)
            .collect();
        if back.len() >= daemons.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    back.sort_by(|a, b| a.partial_cmp(b).unwrap());
    back.truncate(daemons.len());
    json!({
        "daemons": o.fleet, "size_mib": o.fleet_mib, "total_s": total, "all_identical": identical,
        "storage_requests": reqs1 - reqs0, "storage_bytes": bytes1 - bytes0,
        "broker_messages_from_devices": msgs1 - msgs0,
        "reconnected": back.len(), "reconnect_first_s": back.first(), "reconnect_last_s": back.last(),
        "reconnect_median_s": median(&back), "reconnect_s": back,
        "polled": first_polls.len(), "first_poll_first_s": first_polls.first(),
        "first_poll_last_s": first_polls.last(), "first_poll_median_s": median(&first_polls),
        "first_poll_s": first_polls, "poll_jitter_s": o.fleet_jitter_s,
    })
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = status_field("/proc/meminfo", "MemTotal:");
    json!({"cpu": cpu, "cores": cores, "mem_kib": mem})
}

fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}", a / b)
}

fn print_table(r: &Value) {
    println!(
        "\n{:<34} {:>10} {:>10} {:>7}",
        "case", "resagent", "baseline", "ratio"
    );
    for c in r["download"].as_array().unwrap() {
        let (a, b) = (median_of(&c["resagent_s"]), median_of(&c["baseline_s"]));
        println!(
            "{:<34} {:>9.2}s {:>9.2}s {:>7}",
            format!("download {} MiB", c["size_mib"]),
            a,
            b,
            ratio(a, b)
        );
    }
    for c in r["upload"].as_array().unwrap() {
        let b = median_of(&c["baseline_s"]);
        for (k, label) in [("copy_s", "upload (copy)"), ("move_s", "upload --move")] {
            let a = median_of(&c[k]);
            println!(
                "{:<34} {:>9.2}s {:>9.2}s {:>7}",
                format!("{label} {} MiB", c["size_mib"]),
                a,
                b,
                ratio(a, b)
            );
        }
    }
    let last_dl = r["download"].as_array().unwrap().last().unwrap();
    let first_dl = r["download"].as_array().unwrap().first().unwrap();
    let last_up = r["upload"].as_array().unwrap().last().unwrap();
    println!(
        "{:<34} {:>9} KiB (at {} MiB: {} KiB)",
        format!("peak RSS, {} MiB download", last_dl["size_mib"]),
        last_dl["peak_rss_kib"],
        first_dl["size_mib"],
        first_dl["peak_rss_kib"]
    );
    println!(
        "{:<34} {:>9} KiB",
        format!("peak RSS, {} MiB upload", last_up["size_mib"]),
        last_up["peak_rss_kib"]
    );
    let i = &r["idle"];
    println!(
        "{:<34} {:>9} KiB, {} ms CPU, {:.2} wake-ups/s over {} s",
        "idle daemon",
        i["rss_kib"],
        i["cpu_ms"],
        i["wakeups_per_s"].as_f64().unwrap_or(0.0),
        i["seconds"]
    );
    println!(
        "{:<34} {:>9} bytes ({:.2} MiB)",
        "stripped release binary",
        r["binary_bytes"],
        r["binary_bytes"].as_f64().unwrap_or(0.0) / MIB as f64
    );
    let c = &r["cap"];
    println!(
        "{:<34} {:>9.2} MiB/s for a {:.0} MiB/s cap ({:.1} %)",
        "max_bytes_per_s",
        c["measured_bytes_per_s"].as_f64().unwrap_or(0.0) / MIB as f64,
        c["cap_bytes_per_s"].as_f64().unwrap_or(0.0) / MIB as f64,
        c["ratio"].as_f64().unwrap_or(0.0) * 100.0
    );
    let f = &r["fleet"];
    println!(
        "{:<34} {:>9.2}s for {} daemons x {} MiB, identical: {}, {} GETs, {} MiB served",
        "fleet",
        f["total_s"].as_f64().unwrap_or(0.0),
        f["daemons"],
        f["size_mib"],
        f["all_identical"],
        f["storage_requests"],
        f["storage_bytes"].as_u64().unwrap_or(0) / MIB
    );
    println!(
        "{:<34} first {:.2}s, median {:.2}s, last {:.2}s ({} of {})",
        "fleet reconnect after broker restart",
        f["reconnect_first_s"].as_f64().unwrap_or(f64::NAN),
        f["reconnect_median_s"].as_f64().unwrap_or(f64::NAN),
        f["reconnect_last_s"].as_f64().unwrap_or(f64::NAN),
        f["reconnected"],
        f["daemons"]
    );
    println!(
        "{:<34} first {:.2}s, median {:.2}s, last {:.2}s ({} of {}, poll_jitter_s {})",
        "fleet first task poll after start",
        f["first_poll_first_s"].as_f64().unwrap_or(f64::NAN),
        f["first_poll_median_s"].as_f64().unwrap_or(f64::NAN),
        f["first_poll_last_s"].as_f64().unwrap_or(f64::NAN),
        f["polled"],
        f["daemons"],
        f["poll_jitter_s"]
    );
}

fn median_of(v: &Value) -> f64 {
    let xs: Vec<f64> = v
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    median(&xs)
}

fn main() {
    let o = parse_opts();
    assert!(
        o.bin.exists(),
        "{} missing: cargo build --release",
        o.bin.display()
    );
    let _ = std::fs::remove_dir_all(&o.work);
    std::fs::create_dir_all(&o.work).unwrap();
    std::fs::create_dir_all(&o.results).unwrap();
    let mut broker = Mosquitto::start(&o.work, "max_connections -1\n");
    let platform = Platform::start(
        &broker.uri(),
        &format!("127.0.0.1:{}", free_port()),
        o.work.join("uploads"),
    )
    .unwrap();
    assert!(platform.wait_connected(Duration::from_secs(10)));
    platform.set_upload_result(Some(0));
    let started = Instant::now();
    let download: Vec<Value> = o
        .sizes_mib
        .iter()
        .map(|&m| {
            eprintln!("download {m} MiB");
            download_case(&o, &broker, &platform, m)
        })
        .collect();
    let upload: Vec<Value> = o
        .sizes_mib
        .iter()
        .map(|&m| {
            eprintln!("upload {m} MiB");
            upload_case(&o, &broker, &platform, m)
        })
        .collect();
    eprintln!("idle {} s", o.idle_secs);
    let idle = idle_case(&o, &broker, &platform);
    eprintln!("bandwidth cap");
    let cap = cap_case(&o, &broker, &platform);
    eprintln!("fleet of {}", o.fleet);
    let fleet = fleet_case(&o, &mut broker, &platform);
    let binary_bytes = std::fs::metadata(&o.bin).map(|m| m.len()).unwrap_or(0);
    let date = humantime_now();
    let results = json!({
        "date": date, "machine": machine(), "runs": o.runs, "elapsed_s": started.elapsed().as_secs_f64(),
        "download": download, "upload": upload, "idle": idle, "cap": cap, "fleet": fleet,
        "binary_bytes": binary_bytes,
        "baselines": {
            "download": "curl -o tmp URL && md5sum tmp && sync && mv tmp dest && sync",
            "upload": "h=$(openssl dgst -md5 -binary f | base64) && curl -T f -H \"Content-MD5: $h\" URL",
        },
    });
    print_table(&results);
    let text = serde_json::to_string_pretty(&results).unwrap();
    std::fs::write(o.results.join("latest.json"), &text).unwrap();
    std::fs::write(
        o.results.join(format!("{}.json", date.replace(':', "-"))),
        &text,
    )
    .unwrap();
    println!("\nresults: {}", o.results.join("latest.json").display());
}

fn humantime_now() -> String {
    let secs = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| secs.to_string())
}
