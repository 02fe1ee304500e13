//! The meta layer's checkable parts: resagent-crates.inc agrees with Cargo.lock (every
//! package, version and sha256), the systemd unit passes `systemd-analyze verify`, and
//! the SysV init script starts, reports, reloads and stops the real binary.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn project() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn recipe_dir() -> PathBuf {
    project().join("meta-layer/recipes-connectivity/resagent")
}

/// (name, version, sha256) of every crates.io package in a Cargo.lock.
fn lock_packages(lock: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                l.strip_prefix(&format!("{key} = \""))
                    .and_then(|r| r.strip_suffix('"'))
                    .map(str::to_string)
            })
        };
        if field("source").as_deref()
            == Some("registry+https://github.com/rust-lang/crates.io-index")
        {
            out.insert((
                field("name").unwrap(),
                field("version").unwrap(),
                field("checksum").unwrap(),
            ));
        }
    }
    out
}

/// (name, version, sha256) of a crates.inc: every `crate://` line must have its sum.
fn inc_packages(inc: &str) -> Result<BTreeSet<(String, String, String)>, String> {
    let mut out = BTreeSet::new();
    for line in inc.lines() {
        let Some((_, rest)) = line.split_once("crate://crates.io/") else {
            continue;
        };
        let rest = rest.trim_end_matches('\\').trim();
        let (name, version) = rest.split_once('/').ok_or(format!("bad line `{line}`"))?;
        let key = format!("SRC_URI[{name}-{version}.sha256sum] = \"");
        let sum = inc
            .lines()
            .find_map(|l| l.strip_prefix(&key).and_then(|r| r.strip_suffix('"')))
            .ok_or(format!("no sha256sum for {name} {version}"))?;
        out.insert((name.to_string(), version.to_string(), sum.to_string()));
    }
    let sums = inc.lines().filter(|l| l.starts_with("SRC_URI[")).count();
    if sums != out.len() {
        return Err(format!("{sums} sums for {} crates", out.len()));
    }
    Ok(out)
}

fn agree(lock: &str, inc: &str) -> Result<(), String> {
    let want = lock_packages(lock);
    let have = inc_packages(inc)?;
    if want == have {
        return Ok(());
    }
    let missing: Vec<_> = want.difference(&have).collect();
    let extra: Vec<_> = have.difference(&want).collect();
    Err(format!(
        "missing from crates.inc: {missing:?}; not in Cargo.lock: {extra:?}"
    ))
}

#[test]
fn crates_inc_agrees_with_cargo_lock_and_the_check_catches_any_change() {
    let lock = std::fs::read_to_string(project().join("Cargo.lock")).unwrap();
    let inc = std::fs::read_to_string(recipe_dir().join("resagent-crates.inc")).unwrap();
    assert!(lock_packages(&lock).len() > 50);
    agree(&lock, &inc).unwrap_or_else(|e| panic!("{e}\nrun scripts/update-crates-inc"));

    // The check fails when an entry changes: a version, a sum, a package left out.
    let first = inc
        .lines()
        .find(|l| l.contains("crate://crates.io/"))
        .unwrap();
    let (name, version) = first
        .split_once("crate://crates.io/")
        .unwrap()
        .1
        .trim_end_matches(" \\")
        .split_once('/')
        .unwrap();
    let bumped = inc
        .replace(
            &format!("{name}/{version} "),
            &format!("{name}/{version}9 "),
        )
        .replace(
            &format!("[{name}-{version}.sha"),
            &format!("[{name}-{version}9.sha"),
        );
    assert!(
        agree(&lock, &bumped).is_err(),
        "a changed version is caught"
    );
    let sum_line = inc.lines().find(|l| l.starts_with("SRC_URI[")).unwrap();
    let bad_sum = inc.replace(
        sum_line,
        &format!(
            "{}0\"",
            sum_line
                .trim_end_matches("\"")
                .trim_end_matches(|c: char| c.is_ascii_hexdigit())
        ),
    );
    assert!(
        agree(&lock, &bad_sum).is_err(),
        "a changed sha256 is caught"
    );
    let dropped: String = inc
        .lines()
        .filter(|l| *l != first)
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        agree(&lock, &dropped).is_err(),
        "a missing package is caught"
    );

    // And the project's own generator agrees.
    let st = Command::new(project().join("scripts/update-crates-inc"))
        .arg("--check")
        .status()
        .unwrap();
    assert!(st.success(), "scripts/update-crates-inc --check");
}

/// The unit with the recipe's substitutions, pointing at the built binary.
fn unit_for_test(dir: &Path) -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_resagent")).parent().unwrap();
    let text = std::fs::read_to_string(recipe_dir().join("files/resagent.service"))
        .unwrap()
        .replace("@BINDIR@", bin.to_str().unwrap())
        .replace("@SYSCONFDIR@", dir.to_str().unwrap())
        .replace("@STATE_DIR@", dir.join("state").to_str().unwrap())
        .replace("@OUTBOX_DIR@", dir.join("outbox").to_str().unwrap());
    assert!(!text.contains('@'), "every placeholder is substituted");
    let unit = dir.join("resagent.service");
    std::fs::write(&unit, text).unwrap();
    unit
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let d = tempfile::tempdir().unwrap();
    let unit = unit_for_test(d.path());
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("resagent.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {text}"
    );
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for needle in [
        "After=network-online.target",
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "PrivateTmp=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit_text.contains(needle), "unit lacks {needle}");
    }
}

#[test]
fn the_init_script_starts_reports_reloads_and_stops_the_daemon() {
    let d = tempfile::tempdir().unwrap();
    let pid_file = d.path().join("run/resagent.pid");
    let config = d.path().join("config.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "productId": "P1", "deviceName": "d1", "key_deviceinfo": {"deviceSecret": "ZGVtbw=="},
            "broker": "tcp://127.0.0.1:1", "state_dir": d.path().join("state"),
            "resource_dir": d.path().join("res"), "outbox_dir": d.path().join("outbox"),
            "plugin_dir": d.path().join("plugins"), "pid_file": pid_file,
        })
        .to_string(),
    )
    .unwrap();
    let script = d.path().join("resagent.init");
    let text = std::fs::read_to_string(recipe_dir().join("files/resagent.init")).unwrap();
    std::fs::write(
        &script,
        text.replace("@BINDIR@", "/nonexistent")
            .replace("@SYSCONFDIR@", "/nonexistent")
            .replace("@PID_FILE@", "/nonexistent/pid"),
    )
    .unwrap();
    let run = |action: &str| {
        let out = Command::new("sh")
            .arg(&script)
            .arg(action)
            .env("RESAGENT", env!("CARGO_BIN_EXE_resagent"))
            .env("CONFIG", &config)
            .env("PIDFILE", &pid_file)
            .env("LOGFILE", d.path().join("resagent.log"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(run("status").0, 3, "not running yet");
    let (code, out) = run("start");
    assert_eq!(code, 0, "{out}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (code, out) = run("status");
    assert_eq!(code, 0);
    assert!(out.contains(&format!("running (pid {pid})")), "{out}");
    assert_eq!(run("start").0, 0, "a second start is harmless");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        pid.to_string()
    );
    assert_eq!(run("reload").0, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(d.path().join("resagent.log"))
        .unwrap_or_default()
        .contains("SIGHUP")
    {
        assert!(Instant::now() < deadline, "the daemon saw the reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, out) = run("stop");
    assert_eq!(code, 0, "{out}");
    assert!(!pid_file.exists(), "the daemon removed its pid file");
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err(),
        "gone"
    );
    assert_eq!(run("status").0, 3);
    let (code, _) = run("bogus");
    assert_eq!(code, 2);
}
