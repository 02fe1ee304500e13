//! Test harness with real parts: a mosquitto broker started on a free loopback port, the
//! local platform (MQTT peer + HTTP storage) in-process, and the real `resagent` binary
//! run as a child process with a configuration written for the test.

use resagent_platform::front::Front;
pub use resagent_platform::rig::{free_port, write_random, Mosquitto};
use resagent_platform::Platform;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PRODUCT: &str = "TESTPROD01";
pub const DEVICE: &str = "dev1";
pub const SECRET_B64: &str = "dGVzdC1kZXZpY2Utc2VjcmV0";
/// `PRODUCT/DEVICE`, as the platform names the device.
pub fn device() -> String {
    format!("{PRODUCT}/{DEVICE}")
}

/// A child process (a platform, an agent started by hand) killed when dropped, whatever
/// the test's end.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The configuration of an agent a test starts by hand beside a `resagent-platform`
/// process (not the rig's): the test device on `broker`, its folders under `dir`, then
/// `extra`'s keys; written to `dir/config.json`, its path returned.
pub fn hand_config(dir: &Path, broker: &str, extra: Value) -> PathBuf {
    let mut config = json!({
        "productId": PRODUCT, "deviceName": DEVICE,
        "key_deviceinfo": {"deviceSecret": SECRET_B64},
        "broker": broker, "allow_http": true, "poll_jitter_s": 0,
        "resource_dir": dir.join("res"), "state_dir": dir.join("state"),
        "outbox_dir": dir.join("outbox"), "plugin_dir": dir.join("plugins"),
        "pid_file": dir.join("resagent.pid"),
    });
    for (k, v) in extra.as_object().into_iter().flatten() {
        config[k] = v.clone();
    }
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// A running `resagent run`.
pub struct Agent {
    pub child: Child,
    pub log: PathBuf,
    /// Started under a wrapper (strace, qemu, env) in a process group of its own: killing
    /// the wrapper alone left a traced agent running after its test (found: daemons of
    /// `installs_and_journal_writes_are_ordered…` still reconnecting an hour later).
    group: bool,
}

impl Agent {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits for the process to exit; its status code (None: killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<Option<i32>> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, then asserts a clean exit (status 0) and returns how long it took.
    pub fn terminate(&mut self) -> Duration {
        let start = Instant::now();
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let exit = self.wait_exit(Duration::from_secs(15));
        let took = start.elapsed();
        assert_eq!(exit, Some(Some(0)), "{}", self.log_text());
        took
    }

    pub fn is_alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL to the agent, and to everything in its group when it has one.
    pub fn kill9(&mut self) {
        if self.group {
            let pgid = nix::unistd::Pid::from_raw(self.pid());
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Before the broker goes and its port is free for another test's broker.
        self.platform.stop();
        self.front.stop();
    }
}

/// One test's world: a temp folder, a broker, the platform, a config for the agent.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub broker: Mosquitto,
    /// Where the agent connects: its signed login checked, then relayed to `broker`
    /// (as Tencent refuses a wrong secret at CONNECT).
    pub front: Front,
    pub platform: Platform,
    pub config: Value,
    runs: u32,
}

impl Rig {
    pub fn new() -> Rig {
        Self::with_broker_conf(|_| String::new())
    }

    /// A rig whose mosquitto gets more configuration, written by `extra` (given the
    /// rig's folder) — for TLS listeners.
    pub fn with_broker_conf(extra: impl FnOnce(&Path) -> String) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let conf = extra(dir.path());
        let broker = Mosquitto::start(dir.path(), &conf);
        let platform = Platform::start(
            &broker.uri(),
            "127.0.0.1:0",
            dir.path().join("platform-uploads"),
        )
        .unwrap();
        assert!(
            platform.wait_connected(Duration::from_secs(10)),
            "platform connects to mosquitto"
        );
        let front = Front::start(
            "127.0.0.1:0",
            &format!("127.0.0.1:{}", broker.port),
            std::collections::HashMap::from([(
                format!("{PRODUCT}{DEVICE}"),
                SECRET_B64.to_string(),
            )]),
        )
        .unwrap();
        let d = dir.path();
        let config = json!({
            "productId": PRODUCT,
            "deviceName": DEVICE,
            "key_deviceinfo": {"deviceSecret": SECRET_B64},
            "broker": format!("tcp://127.0.0.1:{}", front.port),
            "resource_dir": d.join("resources"),
            "state_dir": d.join("state"),
            "outbox_dir": d.join("outbox"),
            "plugin_dir": d.join("plugins"),
            "pid_file": d.join("run/resagent.pid"),
            "allow_http": true,
            "progress_interval_s": 0,
            "transfer_timeout_s": 5,
            "poll_jitter_s": 0,
        });
        Rig {
            dir,
            broker,
            front,
            platform,
            config,
            runs: 0,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The file the rig's agents read as the kernel's boot identity
    /// (`RESAGENT_BOOT_ID_FILE`); written with the first boot's identity.
    pub fn boot_id_file(&self) -> PathBuf {
        let p = self.path().join("boot_id");
        if !p.exists() {
            std::fs::write(&p, "boot-1\n").unwrap();
        }
        p
    }

    /// "Reboots" the device: a new boot identity for the agents started from now on
    /// (the agent must be stopped first, as a reboot would).
    pub fn reboot(&self) {
        let p = self.boot_id_file();
        let n: u32 = std::fs::read_to_string(&p)
            .unwrap()
            .trim()
            .trim_start_matches("boot-")
            .parse()
            .unwrap();
        std::fs::write(&p, format!("boot-{}\n", n + 1)).unwrap();
    }

    pub fn resource(&self, name: &str) -> PathBuf {
        self.path().join("resources").join(name)
    }

    pub fn journal(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.path().join("state/journal.json")).unwrap())
            .unwrap()
    }

    pub fn config_path(&self) -> PathBuf {
        let p = self.path().join("config.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&self.config).unwrap()).unwrap();
        p
    }

    /// Starts `resagent run` and waits until the platform heard from it.
    pub fn start_agent(&mut self) -> Agent {
        let agent = self.spawn_agent();
        let dev = device();
        let asked = self.platform.wait_for(&dev, Duration::from_secs(15), |m| {
            m["type"] == "get_download_task"
        });
        assert!(
            asked.is_some(),
            "agent asked for a task; log:\n{}",
            agent.log_text()
        );
        agent
    }

    /// Waits until `agent` asked for a task: it is subscribed, so a push is not lost.
    pub fn wait_asked(&self, agent: &Agent) {
        let asked = self
            .platform
            .wait_for(&device(), Duration::from_secs(30), |m| {
                m["type"] == "get_download_task"
            });
        assert!(
            asked.is_some(),
            "agent asked for a task; log:\n{}",
            agent.log_text()
        );
    }

    /// Starts `resagent run` without waiting.
    pub fn spawn_agent(&mut self) -> Agent {
        self.spawn_agent_under(&[], "debug")
    }

    /// Starts `resagent run` under `wrapper` (e.g. strace and its options) with RUST_LOG.
    pub fn spawn_agent_under(&mut self, wrapper: &[&str], rust_log: &str) -> Agent {
        self.spawn_binary_under(Path::new(env!("CARGO_BIN_EXE_resagent")), wrapper, rust_log)
    }

    /// Starts `bin run` (another build of resagent, e.g. a cross-built one) under
    /// `wrapper` with RUST_LOG.
    pub fn spawn_binary_under(&mut self, bin: &Path, wrapper: &[&str], rust_log: &str) -> Agent {
        self.runs += 1;
        let cfg = self.config_path();
        let log = self.path().join(format!("agent-{}.log", self.runs));
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let group = !wrapper.is_empty();
        if group {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let child = command
            .args(["run", "-c"])
            .arg(&cfg)
            .env("RUST_LOG", rust_log)
            .env("RESAGENT_BOOT_ID_FILE", self.boot_id_file())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent { child, log, group }
    }

    /// Runs a resagent subcommand to completion: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let cfg = self.config_path();
        let out = Command::new(env!("CARGO_BIN_EXE_resagent"))
            .args(args)
            .arg("-c")
            .arg(&cfg)
            .env("RESAGENT_BOOT_ID_FILE", self.boot_id_file())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Where the file served as `name` lives (its folder made).
    fn served(&self, name: &str) -> PathBuf {
        let dir = self.path().join("served");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// Writes a file of `size` pseudo-random bytes (seeded) to serve.
    pub fn make_file(&self, name: &str, size: u64, seed: u64) -> PathBuf {
        let p = self.served(name);
        write_random(&p, size, seed);
        p
    }

    /// Serves `bytes` as resource `name`: the file and the task a device would get.
    pub fn serve_bytes(&self, name: &str, bytes: &[u8]) -> (PathBuf, Value) {
        let p = self.served(name);
        std::fs::write(&p, bytes).unwrap();
        let task = self.platform.task_for(name, &p);
        (p, task)
    }

    /// A served file of `size` bytes and the task a device would get for it.
    pub fn task(&self, name: &str, size: u64, seed: u64) -> (PathBuf, Value) {
        let file = self.make_file(name, size, seed);
        let task = self.platform.task_for(name, &file);
        (file, task)
    }

    /// Bytes of `name` in the staging folder (0 when there is no staging file).
    pub fn staged(&self, name: &str) -> u64 {
        std::fs::metadata(self.path().join("resources/.resagent-staging").join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Waits until at least `at_least` bytes of `name` are staged.
    pub fn wait_staged(&self, name: &str, at_least: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.staged(name) < at_least {
            assert!(
                Instant::now() < deadline,
                "download of {name} did not progress"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Makes the storage misbehave for the URL of `task`.
    pub fn fault(&self, task: &Value, fault: resagent_platform::HttpFault) {
        self.platform.set_fault(&Platform::path_of(task), fault);
    }

    /// Serves the URL of `task` at `bytes_per_s`, so a transfer lasts long enough to
    /// interfere with.
    pub fn throttle(&self, task: &Value, bytes_per_s: u64) {
        self.fault(
            task,
            resagent_platform::HttpFault {
                rate: Some(bytes_per_s),
                ..Default::default()
            },
        );
    }

    /// GET requests the storage saw for the URL of `task`, and the body bytes sent.
    pub fn gets(&self, task: &Value) -> (usize, u64) {
        self.platform.gets(&Platform::path_of(task))
    }

    /// Every request the storage saw for the URL of `task`, in order.
    pub fn requests_for(&self, task: &Value) -> Vec<resagent_platform::http::RequestLog> {
        let path = Platform::path_of(task);
        self.platform
            .requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Asserts `resource_dir/NAME` holds exactly the content of `task`.
    pub fn assert_installed(&self, name: &str, task: &Value) {
        assert_eq!(
            md5_hex(&self.resource(name)),
            task["md5sum"].as_str().unwrap(),
            "{name} installed with the task's content"
        );
    }

    /// Final download report of `name` (panics with the agent log if none comes).
    pub fn final_report(&self, agent: &Agent, name: &str, timeout: Duration) -> Value {
        match self.platform.wait_final(&device(), name, timeout) {
            Some(r) => r,
            None => panic!(
                "no final report for {name}; agent log:\n{}",
                agent.log_text()
            ),
        }
    }
}

pub fn md5_hex(path: &Path) -> String {
    resagent_platform::file_md5(path).1
}

/// SHA-256 of a file as lowercase hex, by `sha256sum` (what a vendor pins, what a
/// sw-description names).
pub fn sha256_hex(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

pub fn state_of(report: &Value) -> (&str, i64) {
    (
        report["progress"]["state"].as_str().unwrap_or(""),
        report["progress"]["result_code"].as_i64().unwrap_or(0),
    )
}

pub fn project() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Compiles a C plugin with the system compiler, from `resagent_plugin.h` alone.
pub fn cc(src: &Path, out: &Path, std: &str, defines: &[&str]) {
    cc_against(&project().join("plugins/include"), src, out, std, defines)
}

/// Compiles a C plugin against the header in `include` (an older header, for the ABI
/// compatibility test).
pub fn cc_against(include: &Path, src: &Path, out: &Path, std: &str, defines: &[&str]) {
    let defines: Vec<String> = defines.iter().map(|d| format!("-D{d}")).collect();
    cc_build(include, src, out, std, &defines, &[]);
}

/// Compiles a C plugin from the project's header, linked with `libs` (e.g. `-lswupdate`,
/// or what `pkg-config --libs` says), as a vendor would.
pub fn cc_linked(src: &Path, out: &Path, libs: &[String]) {
    cc_build(
        &project().join("plugins/include"),
        src,
        out,
        "-std=gnu99",
        &[],
        libs,
    );
}

fn cc_build(include: &Path, src: &Path, out: &Path, std: &str, flags: &[String], libs: &[String]) {
    let output = Command::new("cc")
        .args([std, "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I"])
        .arg(include)
        .args(flags)
        .arg(src)
        .args(libs)
        .arg("-o")
        .arg(out)
        .output()
        .expect("cc runs");
    assert!(
        output.status.success(),
        "cc {}: {}",
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755)).unwrap();
}

pub fn plugin_dir(rig: &Rig) -> PathBuf {
    let d = rig.path().join("plugins");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A test plugin from `tests/plugins/NAME.c`, installed as `FILE` in the rig's plugin_dir.
pub fn fixture(rig: &Rig, src: &str, file: &str, defines: &[&str]) -> PathBuf {
    let out = plugin_dir(rig).join(file);
    cc(
        &project().join("tests/plugins").join(src),
        &out,
        "-std=gnu99",
        defines,
    );
    out
}

/// Waits until `needle` is in the agent's log (a minute at most).
pub fn wait_log(agent: &Agent, needle: &str) {
    wait_log_within(agent, needle, Duration::from_secs(60))
}

/// Waits until `needle` is in the agent's log, failing after `within`.
pub fn wait_log_within(agent: &Agent, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !agent.log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file system that forgets unsynced writes on a cut (tests/powercut/forgetfs.py).
pub struct ForgetFs {
    pub mount: PathBuf,
    child: Child,
}

impl ForgetFs {
    pub fn mount(backing: &Path, mount: &Path) -> ForgetFs {
        std::fs::create_dir_all(backing).unwrap();
        std::fs::create_dir_all(mount).unwrap();
        let child = Command::new("/usr/bin/python3")
            .arg(project().join("tests/powercut/forgetfs.py"))
            .arg(backing)
            .arg(mount)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs forgetfs (apt-get install python3-fusepy)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(mount) {
            assert!(
                Instant::now() < deadline,
                "forgetfs did not mount {}",
                mount.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ForgetFs {
            mount: mount.to_path_buf(),
            child,
        }
    }

    /// The cut: everything not durable is gone when this returns.
    pub fn cut(&self) {
        match std::fs::create_dir(self.mount.join(".forgetfs-cut")) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            other => panic!("cut: {other:?}"),
        }
    }

    /// Every write on the file system hangs from now until [`ForgetFs::thaw`].
    pub fn freeze(&self) {
        self.control(".forgetfs-freeze");
    }

    pub fn thaw(&self) {
        self.control(".forgetfs-thaw");
    }

    /// Every read takes 40 ms more from now on (a slow card reading gigabytes back).
    pub fn slow_reads(&self) {
        self.control(".forgetfs-slow-reads");
    }

    fn control(&self, name: &str) {
        match std::fs::create_dir(self.mount.join(name)) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            other => panic!("{name}: {other:?}"),
        }
    }
}

impl Drop for ForgetFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_mounted(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(p.to_str().unwrap()))
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// CRC-32 (IEEE), as the RSFW image header of plugins/examples carries it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & 0u32.wrapping_sub(crc & 1));
        }
    }
    !crc
}

/// An RSFW image (plugins/examples/firmware.c): magic, header version 1, payload length,
/// CRC-32, payload.
pub fn rsfw_image(seed: u8, len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    let mut out = b"RSFW".to_vec();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&crc32(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The processes whose parent is `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<i32>()
                        .ok()
                })
                == Some(pid)
        })
        .collect()
}

/// A report's `result_msg`.
pub fn msg(r: &Value) -> String {
    r["progress"]["result_msg"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The final reports (`done`, `fail`) of `name` received so far, in order.
pub fn finals(rig: &Rig, name: &str) -> Vec<Value> {
    rig.platform
        .reports_for(&device(), name)
        .into_iter()
        .filter(|m| matches!(m["progress"]["state"].as_str(), Some("done" | "fail")))
        .collect()
}

/// Waits up to a minute for the `n`th (from 0) final report of `name`.
pub fn nth_final(rig: &Rig, agent: &Agent, name: &str, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(r) = finals(rig, name).get(n) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no final report #{n} for {name}; log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits up to a minute for the `n`th (from 0) `burning` 100 "reboot pending" report of
/// `name`.
pub fn nth_pending(rig: &Rig, agent: &Agent, name: &str, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending: Vec<Value> = rig
            .platform
            .reports_for(&device(), name)
            .into_iter()
            .filter(|m| {
                m["progress"]["state"] == "burning"
                    && m["progress"]["percent"] == 100
                    && msg(m).contains("reboot pending")
            })
            .collect();
        if let Some(r) = pending.get(n) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no pending report #{n} for {name}; log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, and the agent's exit within 10 s.
pub fn stop(agent: &mut Agent) {
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(10)).is_some());
}

/// A tmpfs of `size` mounted at `dir` for the test's life (the tests run as root in CI).
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs (the hostile tests need root)");
        Tmpfs(dir.to_path_buf())
    }

    pub fn remount_ro(&self) {
        let st = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Tmpfs {
    pub fn remount_rw(&self) {
        let st = Command::new("mount")
            .args(["-o", "remount,rw"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A restart of the agent that is not a reboot (the boot identity stays): stops `agent`,
/// starts another, and checks that the install of `name` it finds waiting stays pending,
/// with nothing final reported.
pub fn restart_without_reboot(rig: &mut Rig, agent: &mut Agent, name: &str) -> Agent {
    stop(agent);
    let agent = rig.start_agent();
    wait_log(
        &agent,
        &format!("{name}: written in this boot; waiting for a reboot"),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        finals(rig, name).is_empty(),
        "nothing final for {name} before a reboot"
    );
    agent
}

/// Peak resident memory (VmHWM) of process `pid`, in KiB.
pub fn vm_hwm_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}
