//! The command line's contract (docs/agent.md): exit codes, configuration errors naming the
//! key, `--version`, and `status` without a daemon.

use serde_json::json;
use std::process::Command;

fn resagent(args: &[&str], env_config: Option<&std::path::Path>) -> (i32, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_resagent"));
    c.args(args).env_remove("RESAGENT_CONFIG");
    if let Some(p) = env_config {
        c.env("RESAGENT_CONFIG", p);
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn minimal(dir: &std::path::Path) -> serde_json::Value {
    json!({
        "productId": "P1", "deviceName": "d1",
        "key_deviceinfo": {"deviceSecret": crate::common::SECRET_B64},
        "state_dir": dir.join("state"), "resource_dir": dir.join("res"),
        "pid_file": dir.join("x.pid"), "broker": "tcp://127.0.0.1:1",
    })
}

#[test]
fn an_unknown_config_key_is_exit_2_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = minimal(d.path());
    cfg["poll_intervall_s"] = json!(10);
    let p = d.path().join("c.json");
    std::fs::write(&p, cfg.to_string()).unwrap();
    let (code, _, err) = resagent(&["run", "-c", p.to_str().unwrap()], None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown key `poll_intervall_s`"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn a_missing_config_is_exit_2_naming_the_file() {
    let (code, _, err) = resagent(&["status", "-c", "/nonexistent/resagent.json"], None);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/resagent.json"), "{err}");
}

#[test]
fn resagent_config_variable_is_the_default_path() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("c.json");
    std::fs::write(&p, minimal(d.path()).to_string()).unwrap();
    let (code, out, err) = resagent(&["status"], Some(&p));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Daemon:      not running"), "{out}");
    let (code, _, err) = resagent(
        &["status"],
        Some(std::path::Path::new("/nonexistent/env.json")),
    );
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/env.json"), "{err}");
}

#[test]
fn usage_errors_are_exit_2_and_version_and_help_exit_0() {
    assert_eq!(resagent(&[], None).0, 2);
    assert_eq!(resagent(&["frobnicate"], None).0, 2);
    // Patches are made by the build machine's binary; the agent says where.
    let (code, _, err) = resagent(&["delta", "make", "a", "b", "-o", "c"], None);
    assert_eq!(code, 2);
    assert!(
        err.contains("resagent-delta make BASE TARGET -o PATCH"),
        "{err}"
    );
    assert_eq!(resagent(&["run", "--bogus"], None).0, 2);
    let (code, out, _) = resagent(&["--version"], None);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("resagent {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, out, _) = resagent(&["--help"], None);
    assert_eq!(code, 0);
    assert!(out.contains("resagent run"));
}

#[test]
fn a_world_readable_secret_gets_a_warning_and_the_secret_never_shows() {
    let d = tempfile::tempdir().unwrap();
    let info = d.path().join("device_info.json");
    std::fs::write(
        &info,
        json!({"auth_mode":"KEY","productId":"P1","deviceName":"d1","key_deviceinfo":{"deviceSecret":crate::common::SECRET_B64}}).to_string(),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&info, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = minimal(d.path());
    for k in ["productId", "deviceName", "key_deviceinfo"] {
        cfg.as_object_mut().unwrap().remove(k);
    }
    cfg["device_info"] = json!(info);
    let p = d.path().join("c.json");
    std::fs::write(&p, cfg.to_string()).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_resagent"))
        .args(["run", "-c", p.to_str().unwrap()])
        .env("RUST_LOG", "trace")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("readable by every user"), "{err}");
    assert!(!err.contains(crate::common::SECRET_B64), "secret in log");
    assert!(
        !err.contains("hmacsha256;") && !err.contains(";hmacsha256"),
        "password in log: {err}"
    );
}
