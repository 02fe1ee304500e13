//! `resagent-bench`: measures resagent beside the shell pipeline an integrator would
//! otherwise script (curl, md5sum, sync, mv), in the same run, on the same local broker
//! and storage server, and writes the results as JSON (bench/results/) and a table.
//! It measures; it asserts nothing but that every transfer ended `done`.

mod delta;

use resagent_platform::rig::{free_port, write_random, Mosquitto, Relay};
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
    /// Rate of the link-limited download (the storage server paced), bytes/s.
    link_rate: u64,
    link_mib: u64,
    /// Files of the batch-upload case, and their size.
    batch: usize,
    batch_kib: u64,
    /// The cases to run (all by default): download, upload, md5, batch, link, delta, idle, cap, fleet.
    only: Vec<String>,
    /// `--smoke`: the smallest inputs, once.
    smoke: bool,
    bin: PathBuf,
    work: PathBuf,
    results: PathBuf,
}

impl Opts {
    fn runs_case(&self, case: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|c| c == case)
    }
}

fn parse_opts() -> Opts {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut o = Opts {
        sizes_mib: vec![64, 256, 1024],
        // Five: on the bench's VM one run in three or four can pay host page faults
        // (seconds of system time in the page-cache copies of whichever side hit them);
        // a median of five stands two such runs.
        runs: 5,
        fleet: 200,
        fleet_mib: 8,
        fleet_jitter_s: 30,
        idle_secs: 60,
        cap_mib_s: 16,
        link_rate: 20_000_000,
        link_mib: 64,
        batch: 20,
        batch_kib: 1024,
        only: Vec::new(),
        smoke: false,
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
            "--runs" => o.runs = val(i).parse().unwrap_or(5),
            "--fleet" => o.fleet = val(i).parse().unwrap_or(200),
            "--idle-secs" => o.idle_secs = val(i).parse().unwrap_or(60),
            "--bin" => o.bin = PathBuf::from(val(i)),
            "--only" => o.only = val(i).split(',').map(str::to_owned).collect(),
            "--smoke" => {
                o.sizes_mib = vec![64];
                o.runs = 1;
                o.fleet = 5;
                o.fleet_jitter_s = 3;
                o.idle_secs = 5;
                o.link_mib = 8;
                o.batch = 5;
                o.smoke = true;
                i += 1;
                continue;
            }
            other => {
                eprintln!("resagent-bench: unknown option {other}\nusage: resagent-bench [--sizes 64,256,1024] [--runs 5] [--fleet 200] [--idle-secs 60] [--bin PATH] [--only download,upload,md5,batch,link,delta,idle,cap,fleet] [--smoke]");
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

/// What an integrator would script for a download: fetch, hash, make it durable, put it
/// in place.
fn download_script(url: &str, tmp: &Path, dest: &Path) -> String {
    format!(
        "curl -sf -o '{t}' '{url}' && md5sum '{t}' >/dev/null && sync && mv '{t}' '{d}' && sync",
        t = tmp.display(),
        d = dest.display()
    )
}

/// What an integrator would script for an upload: hash, then PUT with Content-MD5.
fn upload_script(file: &Path, url: &str) -> String {
    format!(
        "h=$(openssl dgst -md5 -binary '{f}' | base64) && curl -sf -T '{f}' -H \"Content-MD5: $h\" '{url}' >/dev/null",
        f = file.display()
    )
}

fn sh(script: &str) -> f64 {
    sh_cpu(script).0
}

/// Runs a baseline script: its wall time and the user+system seconds of every command
/// it ran (bash's `times`, children's line).
fn sh_cpu(script: &str) -> (f64, f64) {
    let t = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -e; {script}; times"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let wall = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "baseline failed: {script}");
    let text = String::from_utf8_lossy(&out.stdout);
    // `times` prints the shell's own line, then its children's: "0m0.123s 0m0.045s".
    let cpu = text
        .lines()
        .last()
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|x| {
            let (m, s) = x.trim_end_matches('s').split_once('m')?;
            Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
        })
        .sum();
    (wall, cpu)
}

/// Writes back every dirty page first, so no run pays for the previous one's writes.
fn settle() {
    let _ = Command::new("sync").status();
}

/// User+system seconds the process `pid` (all its threads) has used so far.
fn cpu_s(pid: u32) -> f64 {
    cpu_and_wakeups(pid).0 as f64 / 1000.0
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
    let (mut our_cpu, mut their_cpu) = (Vec::new(), Vec::new());
    // The tasks are made first: making one hashes the source, and doing that between
    // the runs gave the side after it seconds of idle in which the VM's free-page
    // reporting handed the previous run's freed page cache back to the host, so that
    // side alone paid host page faults in its writes (perf: 2.6 s in
    // copy_folio_from_iter_atomic against 0.1 s).
    let tasks: Vec<(String, Value)> = (0..o.runs)
        .map(|run| {
            let name = format!("dl-{mib}-{run}.bin");
            let task = platform.task_for(&name, &src);
            (name, task)
        })
        .collect();
    for (run, (name, task)) in tasks.iter().enumerate() {
        let url = task["url"].as_str().unwrap_or_default().to_string();
        let (tmp, dest) = (base_dir.join("tmp"), base_dir.join(name));
        // A B B A …: neither side always runs on what the other just freed.
        for ours_now in [run % 2 == 0, run % 2 == 1] {
            settle();
            if ours_now {
                let cpu0 = cpu_s(d.pid());
                let t = Instant::now();
                let pushed_ms = unix_ms();
                platform.push(&d.device, task).unwrap();
                wait_state(platform, &d.device, "report_download_progress", name);
                ours.push(t.elapsed().as_secs_f64());
                our_cpu.push(cpu_s(d.pid()) - cpu0);
                phases.push(phase_times(platform, &d.device, name, pushed_ms));
                let _ = std::fs::remove_file(d.dir.join("resources").join(name));
            } else {
                let (wall, cpu) = sh_cpu(&download_script(&url, &tmp, &dest));
                theirs.push(wall);
                their_cpu.push(cpu);
                let _ = std::fs::remove_file(&dest);
            }
        }
    }
    let hwm = d.status_kib("VmHWM:");
    json!({"size_mib": mib, "resagent_s": ours, "baseline_s": theirs, "peak_rss_kib": hwm, "phases_ms": phases,
           "resagent_cpu_s": our_cpu, "baseline_cpu_s": their_cpu})
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

/// Who goes in one round of the upload case.
#[derive(Clone, Copy, Debug)]
enum Side {
    Copy,
    Move,
    Script,
}

fn upload_case(o: &Opts, broker: &Mosquitto, platform: &Platform, mib: u64) -> Value {
    let src = o.work.join(format!("up-{mib}.bin"));
    write_random(&src, mib * MIB, mib + 7);
    let d = Daemon::start(o, broker, platform, &format!("up{mib}"), json!({}));
    let (mut copy, mut moved, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    // How long `resagent upload` itself took (the queueing: copy or rename, and MD5).
    let (mut copy_cli, mut move_cli) = (Vec::new(), Vec::new());
    // The files `--move` hands over, made before any timing: writing 1 GiB just before a
    // timed run left the (virtual) disk busy through it.
    let movers: Vec<PathBuf> = (0..o.runs)
        .map(|run| {
            let mv = o.work.join(format!("mv-{mib}-{run}.bin"));
            std::fs::copy(&src, &mv).unwrap();
            mv
        })
        .collect();
    settle();
    std::thread::sleep(Duration::from_secs(1));
    for (run, mv) in movers.iter().enumerate() {
        // copy, move, script; then script, move, copy; …: neither the script nor
        // `--move` always runs on what the other just left behind.
        let mut order = [Side::Copy, Side::Move, Side::Script];
        if run % 2 == 1 {
            order.reverse();
        }
        for side in order {
            settle();
            let (args, cli_s, done_s) = match side {
                Side::Script => {
                    let url = platform.storage().signed_url(
                        "PUT",
                        &upload_path(&d.device, &format!("baseline-{mib}-{run}")),
                        3600,
                    );
                    theirs.push(sh(&upload_script(&src, &url)));
                    continue;
                }
                Side::Copy => (vec![src.to_str().unwrap()], &mut copy_cli, &mut copy),
                Side::Move => (
                    vec!["--move", mv.to_str().unwrap()],
                    &mut move_cli,
                    &mut moved,
                ),
            };
            let name = format!("up-{mib}-{side:?}-{run}");
            let t = Instant::now();
            d.cli(o, &[&["upload"], &args[..], &["--name", &name]].concat());
            cli_s.push(t.elapsed().as_secs_f64());
            wait_state(platform, &d.device, "report_upload_progress", &name);
            done_s.push(t.elapsed().as_secs_f64());
        }
        for u in platform.uploads() {
            let _ = std::fs::remove_file(u.file);
        }
    }
    let hwm = d.status_kib("VmHWM:");
    json!({"size_mib": mib, "copy_s": copy, "move_s": moved, "baseline_s": theirs, "peak_rss_kib": hwm,
           "copy_cli_s": copy_cli, "move_cli_s": move_cli})
}

/// MD5 inside the shipped binary: `resagent upload --move` with no daemon running (a
/// rename into the outbox, then one pass of MD5 over the file, from the page cache)
/// beside `openssl dgst -md5` over the same file.
fn md5_case(o: &Opts) -> Value {
    let mib = 256.min(*o.sizes_mib.iter().max().unwrap_or(&256));
    let dir = o.work.join("md5");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src.bin");
    write_random(&src, mib * MIB, 42);
    let cfg = dir.join("config.json");
    let c = json!({
        "productId": PRODUCT, "deviceName": "md5",
        "key_deviceinfo": {"deviceSecret": "YmVuY2g="}, "broker": "tcp://127.0.0.1:1",
        "resource_dir": dir.join("resources"), "state_dir": dir.join("state"),
        "outbox_dir": dir.join("outbox"), "plugin_dir": dir.join("plugins"),
        "pid_file": dir.join("resagent.pid"),
    });
    std::fs::write(&cfg, c.to_string()).unwrap();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..o.runs.max(3) {
        let name = format!("m{run}");
        let f = dir.join("moving.bin");
        std::fs::copy(&src, &f).unwrap();
        settle();
        let t = Instant::now();
        let st = Command::new(&o.bin)
            .args([
                "upload",
                "--move",
                f.to_str().unwrap(),
                "--name",
                &name,
                "-c",
            ])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        ours.push(t.elapsed().as_secs_f64());
        assert!(st.success(), "resagent upload --move");
        let queued = dir.join("outbox").join(&name);
        theirs.push(sh(&format!(
            "openssl dgst -md5 '{}' >/dev/null",
            queued.display()
        )));
        let _ = std::fs::remove_file(queued);
    }
    json!({"size_mib": mib, "resagent_s": ours, "baseline_s": theirs,
           "resagent_mb_s": (mib * MIB) as f64 / median(&ours) / 1e6,
           "baseline_mb_s": (mib * MIB) as f64 / median(&theirs) / 1e6})
}

/// A batch of small files queued at once: `resagent upload` for each (the CLI copies into
/// the outbox and wakes the daemon), until every one is `done`; beside a loop of
/// `openssl dgst -md5 | base64 && curl -T` over the same files.
fn batch_case(o: &Opts, broker: &Mosquitto, platform: &Platform) -> Value {
    let dir = o.work.join("batch-files");
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<PathBuf> = (0..o.batch)
        .map(|i| {
            let f = dir.join(format!("small-{i}.bin"));
            write_random(&f, o.batch_kib * 1024, 300 + i as u64);
            f
        })
        .collect();
    let d = Daemon::start(o, broker, platform, "batch", json!({}));
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..o.runs {
        settle();
        let t = Instant::now();
        for (i, f) in files.iter().enumerate() {
            d.cli(
                o,
                &[
                    "upload",
                    f.to_str().unwrap(),
                    "--name",
                    &format!("b{run}-{i}"),
                ],
            );
        }
        for i in 0..files.len() {
            wait_state(
                platform,
                &d.device,
                "report_upload_progress",
                &format!("b{run}-{i}"),
            );
        }
        ours.push(t.elapsed().as_secs_f64());
        settle();
        let script: Vec<String> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let url = platform.storage().signed_url(
                    "PUT",
                    &upload_path(&d.device, &format!("base-b{run}-{i}")),
                    3600,
                );
                upload_script(f, &url)
            })
            .collect();
        theirs.push(sh(&script.join(" && ")));
        for u in platform.uploads() {
            let _ = std::fs::remove_file(u.file);
        }
    }
    // The same batch from a daemon whose broker is 100 ms away each way (a cellular
    // link): the announces and verdicts overlap the PUTs (the storage is not delayed).
    let broker_port: u16 = broker.port;
    let relay = Relay::start_delayed(broker_port, Duration::from_millis(100));
    let far = Daemon::start(
        o,
        broker,
        platform,
        "batch-far",
        json!({"broker": format!("tcp://127.0.0.1:{}", relay.port)}),
    );
    let mut delayed = Vec::new();
    for run in 0..o.runs {
        settle();
        let t = Instant::now();
        for (i, f) in files.iter().enumerate() {
            let name = format!("far{run}-{i}");
            far.cli(o, &["upload", f.to_str().unwrap(), "--name", &name]);
        }
        for i in 0..files.len() {
            let name = format!("far{run}-{i}");
            wait_state(platform, &far.device, "report_upload_progress", &name);
        }
        delayed.push(t.elapsed().as_secs_f64());
        for u in platform.uploads() {
            let _ = std::fs::remove_file(u.file);
        }
    }
    json!({"files": o.batch, "file_kib": o.batch_kib, "resagent_s": ours, "baseline_s": theirs,
           "delayed_100ms_s": delayed})
}

/// A download through a link paced to `link_rate`: `done` should come within
/// 1.05 × size/rate + 0.5 s (hashing, writing and the final fsync hidden behind the
/// network); the script over the same paced link beside it.
fn link_case(o: &Opts, broker: &Mosquitto, platform: &Platform) -> Value {
    let src = o.work.join("served/link.bin");
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
    write_random(&src, o.link_mib * MIB, 77);
    let d = Daemon::start(o, broker, platform, "link", json!({}));
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let base_dir = o.work.join("baseline-link");
    std::fs::create_dir_all(&base_dir).unwrap();
    for run in 0..o.runs {
        let name = format!("link-{run}.bin");
        let task = platform.task_for(&name, &src);
        let path = Platform::path_of(&task);
        platform.storage().set_fault(
            &path,
            resagent_platform::HttpFault {
                rate: Some(o.link_rate),
                ..Default::default()
            },
        );
        settle();
        let t = Instant::now();
        platform.push(&d.device, &task).unwrap();
        wait_state(platform, &d.device, "report_download_progress", &name);
        ours.push(t.elapsed().as_secs_f64());
        let _ = std::fs::remove_file(d.dir.join("resources").join(&name));
        settle();
        let (tmp, dest) = (base_dir.join("tmp"), base_dir.join(&name));
        let url = platform.storage().signed_url("GET", &path, 3600);
        theirs.push(sh(&download_script(&url, &tmp, &dest)));
        let _ = std::fs::remove_file(dest);
    }
    let bytes = o.link_mib * MIB;
    let bound = 1.05 * bytes as f64 / o.link_rate as f64 + 0.5;
    json!({"size_mib": o.link_mib, "rate_bytes_per_s": o.link_rate, "bound_s": bound,
           "resagent_s": ours, "baseline_s": theirs})
}

/// CPU time (ms) and voluntary context switches of every thread of `pid`.
fn cpu_and_wakeups(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    // Every field after the `)`, the state letter (field 3) included: fields 14 and 15
    // (utime, stime) are at 11 and 12; ticks of 10 ms. (Until 2026-12-01 the letter was
    // dropped, which shifted this to stime + cutime: the idle CPU shown was wrong.)
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
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

/// Voluntary context switches of each thread of `pid`, by thread name (`comm`; threads
/// of one name summed).
fn switches_per_thread(pid: u32) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let n = status_field(
                &format!("{}/status", t.path().display()),
                "voluntary_ctxt_switches:",
            );
            *out.entry(name.trim().to_owned()).or_insert(0) += n;
        }
    }
    out
}

fn idle_case(o: &Opts, broker: &Mosquitto, platform: &Platform) -> Value {
    let d = Daemon::start(o, broker, platform, "idle", json!({}));
    std::thread::sleep(Duration::from_secs(2));
    let (c0, w0) = cpu_and_wakeups(d.pid());
    let t0 = switches_per_thread(d.pid());
    std::thread::sleep(Duration::from_secs(o.idle_secs));
    let (c1, w1) = cpu_and_wakeups(d.pid());
    let t1 = switches_per_thread(d.pid());
    let per_thread: serde_json::Map<String, Value> = t1
        .iter()
        .map(|(k, v)| (k.clone(), json!(v - t0.get(k).copied().unwrap_or(0))))
        .collect();
    json!({
        "seconds": o.idle_secs, "cpu_ms": c1 - c0, "voluntary_switches": w1 - w0,
        "wakeups_per_s": (w1 - w0) as f64 / o.idle_secs as f64, "per_thread": per_thread,
        "rss_kib": d.status_kib("VmRSS:"), "threads": std::fs::read_dir(format!("/proc/{}/task", d.pid())).map(|r| r.count()).unwrap_or(0),
    })
}

fn cap_case(o: &Opts, broker: &Mosquitto, platform: &Platform) -> Value {
    let mib = (o.cap_mib_s * 4).min(*o.sizes_mib.first().unwrap_or(&64));
    let src = o.work.join("served/cap.bin");
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
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
    let broker_port: u16 = broker.port;
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
    if let Some(mib) = r["memory_limit_mib"].as_u64() {
        println!("\nin a memory cgroup of {mib} MiB (bench/run --memory-mib)");
    }
    println!(
        "\n{:<34} {:>10} {:>10} {:>7}",
        "case", "resagent", "baseline", "ratio"
    );
    let rows = |k: &str| r[k].as_array().cloned().unwrap_or_default();
    for c in rows("download") {
        let (a, b) = (median_of(&c["resagent_s"]), median_of(&c["baseline_s"]));
        let (ca, cb) = (
            median_of(&c["resagent_cpu_s"]),
            median_of(&c["baseline_cpu_s"]),
        );
        println!(
            "{:<34} {:>9.2}s {:>9.2}s {:>7}   CPU {:.2}s vs {:.2}s = {}",
            format!("download {} MiB", c["size_mib"]),
            a,
            b,
            ratio(a, b),
            ca,
            cb,
            ratio(ca, cb)
        );
        println!(
            "{:<34} {:>10} {:>10}           CPU {} vs {}",
            "  spread (min-max)",
            spread(&c["resagent_s"]),
            spread(&c["baseline_s"]),
            spread(&c["resagent_cpu_s"]),
            spread(&c["baseline_cpu_s"])
        );
    }
    for c in rows("upload") {
        let b = median_of(&c["baseline_s"]);
        for (k, label) in [("copy_s", "upload (copy)"), ("move_s", "upload --move")] {
            let a = median_of(&c[k]);
            println!(
                "{:<34} {:>9.2}s {:>9.2}s {:>7}   spread {} vs {}",
                format!("{label} {} MiB", c["size_mib"]),
                a,
                b,
                ratio(a, b),
                spread(&c[k]),
                spread(&c["baseline_s"])
            );
        }
    }
    let m = &r["md5"];
    if !m.is_null() {
        let (x, y) = (median_of(&m["resagent_s"]), median_of(&m["baseline_s"]));
        println!(
            "{:<34} {:>9.2}s {:>9.2}s {:>7}   {:.0} vs {:.0} MB/s",
            format!("MD5 {} MiB (upload --move, no daemon)", m["size_mib"]),
            x,
            y,
            ratio(x, y),
            m["resagent_mb_s"].as_f64().unwrap_or(0.0),
            m["baseline_mb_s"].as_f64().unwrap_or(0.0)
        );
    }
    let b = &r["batch"];
    if !b.is_null() {
        let (x, y) = (median_of(&b["resagent_s"]), median_of(&b["baseline_s"]));
        println!(
            "{:<34} {:>9.2}s {:>9.2}s {:>7}",
            format!("batch: {} uploads x {} KiB", b["files"], b["file_kib"]),
            x,
            y,
            ratio(x, y)
        );
        let far = median_of(&b["delayed_100ms_s"]);
        println!(
            "{:<34} {:>9.2}s {:>10} {:>7}   {:+.2}s against the broker nearby (goal: within 2 s)",
            "  the same, broker 100 ms away",
            far,
            "",
            "",
            far - x
        );
    }
    let l = &r["link"];
    if !l.is_null() {
        let (x, y) = (median_of(&l["resagent_s"]), median_of(&l["baseline_s"]));
        println!(
            "{:<34} {:>9.2}s {:>9.2}s {:>7}   bound {:.2}s",
            format!(
                "download {} MiB at {} MB/s",
                l["size_mib"],
                l["rate_bytes_per_s"].as_u64().unwrap_or(0) / 1_000_000
            ),
            x,
            y,
            ratio(x, y),
            l["bound_s"].as_f64().unwrap_or(0.0)
        );
    }
    let d = &r["delta"];
    for row in d["inputs"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:<34} {:>9.2}s {:>9.2}s {:>7}   patch {:.2} % of {} MiB, made in {:.1} s, peak RSS {} KiB",
            format!("delta {}", row["short"].as_str().unwrap_or("")),
            median_of(&row["delta_done_s"]),
            median_of(&row["full_done_s"]),
            format!("{:.2}", row["done_ratio"].as_f64().unwrap_or(f64::NAN)),
            row["patch_percent"].as_f64().unwrap_or(f64::NAN),
            row["target_bytes"].as_u64().unwrap_or(0) / MIB,
            row["make_s"].as_f64().unwrap_or(f64::NAN),
            row["peak_rss_kib"]
        );
    }
    if let (Some(last_dl), Some(first_dl)) = (rows("download").last(), rows("download").first()) {
        println!(
            "{:<34} {:>9} KiB (at {} MiB: {} KiB)",
            format!("peak RSS, {} MiB download", last_dl["size_mib"]),
            last_dl["peak_rss_kib"],
            first_dl["size_mib"],
            first_dl["peak_rss_kib"]
        );
    }
    if let Some(last_up) = rows("upload").last() {
        println!(
            "{:<34} {:>9} KiB",
            format!("peak RSS, {} MiB upload", last_up["size_mib"]),
            last_up["peak_rss_kib"]
        );
    }
    let i = &r["idle"];
    if !i.is_null() {
        println!(
            "{:<34} {:>9} KiB, {} ms CPU, {:.2} wake-ups/s over {} s",
            "idle daemon",
            i["rss_kib"],
            i["cpu_ms"],
            i["wakeups_per_s"].as_f64().unwrap_or(0.0),
            i["seconds"]
        );
        if let Some(threads) = i["per_thread"].as_object() {
            for (name, n) in threads {
                println!("{:<34} {:>9} wake-ups", format!("  thread {name}"), n);
            }
        }
    }
    println!(
        "{:<34} {:>9} bytes ({:.2} MiB)",
        "stripped release binary",
        r["binary_bytes"],
        r["binary_bytes"].as_f64().unwrap_or(0.0) / MIB as f64
    );
    if let Some(targets) = r["binary_bytes_by_target"].as_object() {
        for (t, n) in targets {
            println!(
                "{:<34} {:>9} bytes ({:.2} MiB)",
                format!("  {t}"),
                n,
                n.as_f64().unwrap_or(0.0) / MIB as f64
            );
        }
    }
    let c = &r["cap"];
    if !c.is_null() {
        println!(
            "{:<34} {:>9.2} MiB/s for a {:.0} MiB/s cap ({:.1} %)",
            "max_bytes_per_s",
            c["measured_bytes_per_s"].as_f64().unwrap_or(0.0) / MIB as f64,
            c["cap_bytes_per_s"].as_f64().unwrap_or(0.0) / MIB as f64,
            c["ratio"].as_f64().unwrap_or(0.0) * 100.0
        );
    }
    let f = &r["fleet"];
    if f.is_null() {
        return;
    }
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

/// "min-max" of the runs, in seconds.
fn spread(v: &Value) -> String {
    let xs: Vec<f64> = v
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if xs.is_empty() {
        return "-".into();
    }
    format!("{min:.2}-{max:.2}")
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
    let mut broker = Mosquitto::start(&o.work, "max_connections -1\nset_tcp_nodelay true\n");
    let platform = Platform::start(
        &broker.uri(),
        &format!("127.0.0.1:{}", free_port()),
        o.work.join("uploads"),
    )
    .unwrap();
    assert!(platform.wait_connected(Duration::from_secs(10)));
    platform.set_upload_result(Some(0));
    let started = Instant::now();
    let download: Vec<Value> = if o.runs_case("download") {
        o.sizes_mib
            .iter()
            .map(|&m| {
                eprintln!("download {m} MiB");
                download_case(&o, &broker, &platform, m)
            })
            .collect()
    } else {
        Vec::new()
    };
    let upload: Vec<Value> = if o.runs_case("upload") {
        o.sizes_mib
            .iter()
            .map(|&m| {
                eprintln!("upload {m} MiB");
                upload_case(&o, &broker, &platform, m)
            })
            .collect()
    } else {
        Vec::new()
    };
    let case = |name: &str, run: &mut dyn FnMut() -> Value| {
        if o.runs_case(name) {
            eprintln!("{name}");
            run()
        } else {
            Value::Null
        }
    };
    let md5 = case("md5", &mut || md5_case(&o));
    let batch = case("batch", &mut || batch_case(&o, &broker, &platform));
    let link = case("link", &mut || link_case(&o, &broker, &platform));
    let delta = case("delta", &mut || {
        delta::delta_case(&o, &broker, &platform, o.smoke)
    });
    let idle = case("idle", &mut || idle_case(&o, &broker, &platform));
    let cap = case("cap", &mut || cap_case(&o, &broker, &platform));
    let fleet = if o.runs_case("fleet") {
        eprintln!("fleet of {}", o.fleet);
        fleet_case(&o, &mut broker, &platform)
    } else {
        Value::Null
    };
    let binary_bytes = std::fs::metadata(&o.bin).map(|m| m.len()).unwrap_or(0);
    // The ARM builds of scripts/cross-build.sh, when present (stripped release binaries).
    let target_dir = o.bin.parent().and_then(Path::parent).map(Path::to_path_buf);
    let by_target: serde_json::Map<String, Value> =
        ["aarch64-unknown-linux-gnu", "armv7-unknown-linux-gnueabihf"]
            .iter()
            .filter_map(|t| {
                let p = target_dir.as_ref()?.join(t).join("release/resagent");
                let len = std::fs::metadata(p).ok()?.len();
                Some((t.to_string(), json!(len)))
            })
            .collect();
    let date = humantime_now();
    let results = json!({
        "date": date, "machine": machine(), "runs": o.runs,
        "memory_limit_mib": std::env::var("RESAGENT_BENCH_MEMORY_MIB").ok().and_then(|v| v.parse::<u64>().ok()), "elapsed_s": started.elapsed().as_secs_f64(),
        "download": download, "upload": upload, "md5": md5, "batch": batch, "link": link, "delta": delta, "idle": idle, "cap": cap, "fleet": fleet,
        "binary_bytes": binary_bytes, "binary_bytes_by_target": by_target,
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
