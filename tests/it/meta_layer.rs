//! The meta layer's checkable parts: resagent-crates.inc agrees with Cargo.lock (every
//! package, version and sha256), the systemd unit passes `systemd-analyze verify`, and
//! the SysV init script starts, reports, reloads and stops the real binary; the Python
//! of the classes (a plugin recipe's config fragment and unit drop-in, the rootfs step
//! that merges plugin_config and pins plugins) runs outside bitbake on fake trees.

use crate::common::{project, sha256_hex};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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
        .replace(
            "@RW_PATHS@",
            &format!(
                "{} {} /run",
                dir.join("state").display(),
                dir.join("outbox").display()
            ),
        );
    assert!(!text.contains('@'), "every placeholder is substituted");
    let unit = dir.join("resagent.service");
    std::fs::write(&unit, text).unwrap();
    unit
}

/// `systemd-analyze verify` of `units` (`unit_path` searched first, for units they name):
/// it must succeed and say nothing on a line that names `ours`.
fn assert_verifies(units: &[&Path], unit_path: Option<&Path>, ours: &str) {
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--man=no"]).args(units);
    if let Some(dir) = unit_path {
        cmd.env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()));
    }
    let out = cmd
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let about_ours: Vec<&str> = text.lines().filter(|l| l.contains(ours)).collect();
    assert!(
        out.status.success() && about_ours.is_empty(),
        "systemd-analyze verify: {text}"
    );
}

#[test]
fn the_documented_path_unit_that_restarts_an_application_verifies() {
    // docs/agent.md, "When a resource is replaced": the example units, with a stand-in
    // for the application they restart.
    let d = tempfile::tempdir().unwrap();
    for f in ["model-replaced.path", "model-replaced.service"] {
        std::fs::copy(project().join("docs/examples").join(f), d.path().join(f)).unwrap();
    }
    std::fs::write(
        d.path().join("inference.service"),
        "[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    assert_verifies(
        &[
            &d.path().join("model-replaced.path"),
            &d.path().join("model-replaced.service"),
        ],
        Some(d.path()),
        "model-replaced",
    );
    let path = std::fs::read_to_string(d.path().join("model-replaced.path")).unwrap();
    assert!(path.contains("PathChanged=/var/lib/resagent/resources/model.bin"));
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let d = tempfile::tempdir().unwrap();
    let unit = unit_for_test(d.path());
    assert_verifies(&[&unit], None, "resagent.service");
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    for needle in [
        "After=network-online.target time-sync.target",
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
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

/// Runs a `python NAME()` function of a class of the layer (tests/layer/bbfunc.py):
/// its exit status and stderr.
fn bbfunc(class: &str, name: &str, vars: serde_json::Value) -> (i32, String) {
    let out = Command::new("python3")
        .arg(project().join("tests/layer/bbfunc.py"))
        .arg(project().join("meta-layer/classes").join(class))
        .arg(name)
        .arg(vars.to_string())
        .output()
        .expect("python3");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_plugin_recipe_installs_its_config_fragment_and_a_drop_in_that_systemd_accepts() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("image");
    let vars = |config: &str| {
        serde_json::json!({
            "D": dest, "PN": "resagent-plugin-swupdate", "RESAGENT_PLUGIN_NAME": "swupdate",
            "RESAGENT_PLUGIN_ORDER": "30", "RESAGENT_PLUGIN_CONFIG": config,
            "RESAGENT_PLUGIN_CONFIG_KEY": "swupdate",
            "RESAGENT_PLUGIN_RW_PATHS": "/tmp /data/firmware",
            "RESAGENT_PLUGIN_SERVICE": "PrivateTmp=no",
            "RESAGENT_PLUGIN_CLAIMS": "*.swu  *.SWU",
            "DISTRO_FEATURES": "acl ipv6 systemd usrmerge",
            "datadir": "/usr/share", "systemd_system_unitdir": "/usr/lib/systemd/system",
        })
    };
    let (code, err) = bbfunc(
        "resagent-plugin.bbclass",
        "resagent_plugin_install_extras",
        vars(r#"{"socket_dir": "/tmp", "reboot": true}"#),
    );
    assert_eq!(code, 0, "{err}");
    let fragment: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dest.join("usr/share/resagent/plugin-config.d/30-swupdate.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        fragment,
        serde_json::json!({"swupdate": {"socket_dir": "/tmp", "reboot": true}})
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("usr/share/resagent/plugin-only.d/30-swupdate")).unwrap(),
        "*.swu\n*.SWU\n",
        "its claims, for the image's plugin_only"
    );
    let dropin = dest.join("usr/lib/systemd/system/resagent.service.d/30-swupdate.conf");
    let text = std::fs::read_to_string(&dropin).unwrap();
    assert!(
        text.contains(
            "[Service]\nReadWritePaths=-/tmp\nReadWritePaths=-/data/firmware\nPrivateTmp=no\n"
        ),
        "{text}"
    );

    // systemd reads the unit with the drop-in beside it.
    let unit = unit_for_test(d.path());
    let dir = unit.parent().unwrap().join("resagent.service.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&dropin, dir.join("30-swupdate.conf")).unwrap();
    assert_verifies(&[&unit], None, "30-swupdate.conf");

    // A configuration that is not a JSON object stops the build, naming the recipe.
    for bad in [r#"{"socket_dir": "/tmp""#, "[1, 2]"] {
        let (code, err) = bbfunc(
            "resagent-plugin.bbclass",
            "resagent_plugin_install_extras",
            vars(bad),
        );
        assert_eq!(code, 3, "{err}");
        assert!(
            err.contains("RESAGENT_PLUGIN_CONFIG of resagent-plugin-swupdate"),
            "{err}"
        );
    }
}

#[test]
fn the_rootfs_step_merges_plugin_config_and_pins_the_plugins_that_ship() {
    let d = tempfile::tempdir().unwrap();
    let rootfs = d.path().join("rootfs");
    let etc = rootfs.join("etc/resagent");
    let plugins = rootfs.join("usr/lib/resagent/plugins");
    let fragments = rootfs.join("usr/share/resagent/plugin-config.d");
    for dir in [&etc, &plugins, &fragments] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(
        etc.join("config.json"),
        r#"{"plugin_dir": "/usr/lib/resagent/plugins", "plugin_config": {"rauc": {"bus": "session"}}}"#,
    )
    .unwrap();
    std::fs::write(
        fragments.join("30-swupdate.json"),
        r#"{"swupdate": {"socket_dir": "/tmp"}}"#,
    )
    .unwrap();
    std::fs::write(
        fragments.join("40-rauc.json"),
        r#"{"rauc": {"bus": "system"}}"#,
    )
    .unwrap();
    let fwcheck = plugins.join("10-fwcheck.so");
    let cc = Command::new("cc")
        .args(["-std=c99", "-shared", "-fPIC", "-I"])
        .arg(project().join("plugins/include"))
        .arg(project().join("plugins/examples/fwcheck.c"))
        .arg("-o")
        .arg(&fwcheck)
        .status()
        .unwrap();
    assert!(cc.success());
    std::fs::write(plugins.join("30-swupdate.so"), b"stripped plugin one").unwrap();
    std::fs::write(plugins.join("40-rauc.so"), b"stripped plugin two").unwrap();
    std::fs::write(plugins.join("README"), b"not a plugin").unwrap();
    let vars = |pin: &str| {
        serde_json::json!({
            "IMAGE_ROOTFS": rootfs, "RESAGENT_IMAGE_CONFIG": "/etc/resagent/config.json",
            "RESAGENT_PIN_PLUGINS": pin, "datadir": "/usr/share", "libdir": "/usr/lib",
        })
    };
    let (code, err) = bbfunc(
        "resagent-rootfs.bbclass",
        "resagent_rootfs_config",
        vars("0"),
    );
    assert_eq!(code, 0, "{err}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(etc.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["plugin_config"],
        serde_json::json!({"swupdate": {"socket_dir": "/tmp"}, "rauc": {"bus": "session"}}),
        "fragments merged; the image's own entry wins"
    );
    assert!(
        config.get("plugin_sha256").is_none(),
        "no pins unless asked"
    );

    let (code, err) = bbfunc(
        "resagent-rootfs.bbclass",
        "resagent_rootfs_config",
        vars("1"),
    );
    assert_eq!(code, 0, "{err}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(etc.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["plugin_sha256"],
        serde_json::json!({
            "10-fwcheck.so": sha256_hex(&fwcheck),
            "30-swupdate.so": sha256_hex(&plugins.join("30-swupdate.so")),
            "40-rauc.so": sha256_hex(&plugins.join("40-rauc.so")),
        })
    );

    // The real agent accepts that file and holds the plugins to those pins.
    let cfg = d.path().join("agent.json");
    let mut c = config.clone();
    c["plugin_dir"] = serde_json::json!(plugins);
    for (k, v) in [
        ("productId", "P1"),
        ("deviceName", "d"),
        ("broker", "tcp://127.0.0.1:1"),
    ] {
        c[k] = serde_json::json!(v);
    }
    c["key_deviceinfo"] = serde_json::json!({"deviceSecret": "YmVuY2g="});
    for k in ["resource_dir", "state_dir", "outbox_dir"] {
        c[k] = serde_json::json!(d.path().join(k));
    }
    std::fs::write(&cfg, c.to_string()).unwrap();
    let check = || {
        let out = Command::new(env!("CARGO_BIN_EXE_resagent"))
            .args(["plugin", "check"])
            .arg(&fwcheck)
            .arg("-c")
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, text) = check();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("pinned") || text.contains("pin:"), "{text}");
    // A plugin changed on the device after the image was made is refused.
    let mut bytes = std::fs::read(&fwcheck).unwrap();
    bytes.push(0);
    std::fs::write(&fwcheck, bytes).unwrap();
    let (code, text) = check();
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("differs from the pinned"), "{text}");

    // An image without resagent's configuration is not touched.
    let other = d.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let mut v = vars("1");
    v["IMAGE_ROOTFS"] = serde_json::json!(other);
    let (code, err) = bbfunc("resagent-rootfs.bbclass", "resagent_rootfs_config", v);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 0);
}

#[test]
fn the_rootfs_step_writes_plugin_only_and_pins_only_what_the_agent_would_load() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let d = tempfile::tempdir().unwrap();
    let rootfs = d.path().join("rootfs");
    let etc = rootfs.join("etc/resagent");
    let real = rootfs.join("opt/vendor/plugins");
    let claims = rootfs.join("usr/share/resagent/plugin-only.d");
    for dir in [&etc, &real, &claims, &rootfs.join("usr/lib/resagent")] {
        std::fs::create_dir_all(dir).unwrap();
    }
    // plugin_dir is an absolute link inside the image: it must be followed there.
    symlink(
        "/opt/vendor/plugins",
        rootfs.join("usr/lib/resagent/plugins"),
    )
    .unwrap();
    std::fs::write(etc.join("config.json"), r#"{"plugin_only": ["fw-*.bin"]}"#).unwrap();
    std::fs::write(claims.join("30-swupdate"), "*.swu\n").unwrap();
    std::fs::write(claims.join("40-rauc"), "*.raucb\n").unwrap();
    std::fs::write(real.join("30-swupdate.so"), b"plugin").unwrap();
    // The default is on: no RESAGENT_PIN_PLUGINS given means "1" (the class's ??=).
    let vars = serde_json::json!({
        "IMAGE_ROOTFS": rootfs, "RESAGENT_IMAGE_CONFIG": "/etc/resagent/config.json",
        "RESAGENT_PIN_PLUGINS": "1", "datadir": "/usr/share", "libdir": "/usr/lib",
    });
    let class =
        std::fs::read_to_string(project().join("meta-layer/classes/resagent-rootfs.bbclass"))
            .unwrap();
    assert!(
        class.contains("RESAGENT_PIN_PLUGINS ??= \"1\""),
        "pinning is the default"
    );
    let run = || {
        bbfunc(
            "resagent-rootfs.bbclass",
            "resagent_rootfs_config",
            vars.clone(),
        )
    };
    let (code, err) = run();
    assert_eq!(code, 0, "{err}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(etc.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["plugin_only"],
        serde_json::json!(["fw-*.bin", "*.swu", "*.raucb"])
    );
    assert_eq!(
        config["plugin_sha256"],
        serde_json::json!({"30-swupdate.so": sha256_hex(&real.join("30-swupdate.so"))}),
        "pinned through the link inside the image"
    );

    // What the agent refuses stops the build, with the reason.
    let group_writable = real.join("30-swupdate.so");
    std::fs::set_permissions(&group_writable, std::fs::Permissions::from_mode(0o664)).unwrap();
    let (code, err) = run();
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("30-swupdate.so is writable by group or others (mode 664)"),
        "{err}"
    );
    std::fs::set_permissions(&group_writable, std::fs::Permissions::from_mode(0o755)).unwrap();
    symlink("30-swupdate.so", real.join("40-rauc.so")).unwrap();
    let (code, err) = run();
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("40-rauc.so is a symbolic link"), "{err}");
    std::fs::remove_file(real.join("40-rauc.so")).unwrap();

    // Pinning asked, a plugin_dir in the image, nothing to pin: the build stops.
    std::fs::remove_file(real.join("30-swupdate.so")).unwrap();
    let (code, err) = run();
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("holds no plugin to pin"), "{err}");
}

#[test]
fn the_image_config_merges_resagent_config_json_and_the_unit_may_write_every_folder_it_names() {
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().join("image");
    let vars = |extra: &str| {
        serde_json::json!({
            "D": dest, "S": project(), "UNPACKDIR_OR_WORKDIR": recipe_dir().join("files"),
            "RESAGENT_CONFIG_JSON": extra,
            // As the recipe's defaults expand with RESAGENT_STATE_DIR = "/data/resagent":
            // the resources follow the state folder.
            "RESAGENT_STATE_DIR": "/data/resagent",
            "RESAGENT_RESOURCE_DIR": "/data/resagent/resources",
            "RESAGENT_OUTBOX_DIR": "/var/spool/resagent/outbox",
            "RESAGENT_DEVICE_INFO": "/etc/resagent/device_info.json",
            "RESAGENT_CA_FILE": "/etc/ssl/certs/ca-certificates.crt",
            "RESAGENT_PLUGIN_DIR": "/usr/lib/resagent/plugins",
            "RESAGENT_PID_FILE": "/run/resagent.pid",
            "DISTRO_FEATURES": "acl ipv6 systemd usrmerge",
            // The built binary's folder, so systemd finds the ExecStart it checks.
            "sysconfdir": "/etc",
            "bindir": Path::new(env!("CARGO_BIN_EXE_resagent")).parent().unwrap(),
            "systemd_system_unitdir": "/usr/lib/systemd/system",
        })
    };
    let recipe = std::fs::read_to_string(recipe_dir().join("resagent.inc")).unwrap();
    assert!(
        recipe.contains("RESAGENT_RESOURCE_DIR ?= \"${RESAGENT_STATE_DIR}/resources\""),
        "RESOURCE_DIR follows STATE_DIR unless set"
    );
    let (code, err) = bbfunc(
        "resagent-config.bbclass",
        "resagent_install_config",
        vars(
            r#"{"poll_interval_s": 900, "max_bytes_per_s": 262144,
                 "reboot_command": "/sbin/reboot", "outbox_dir": "/data/outbox"}"#,
        ),
    );
    assert_eq!(code, 0, "{err}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join("etc/resagent/config.json")).unwrap())
            .unwrap();
    assert_eq!(config["poll_interval_s"], 900);
    assert_eq!(config["max_bytes_per_s"], 262144);
    assert_eq!(config["reboot_command"], "/sbin/reboot");
    assert_eq!(config["outbox_dir"], "/data/outbox", "the merged key wins");
    assert_eq!(config["resource_dir"], "/data/resagent/resources");
    let unit =
        std::fs::read_to_string(dest.join("usr/lib/systemd/system/resagent.service")).unwrap();
    // Every folder the agent writes, each once; resources are inside the state folder.
    assert!(
        unit.contains("\nReadWritePaths=/data/resagent /data/outbox /run\n"),
        "{unit}"
    );
    assert!(!unit.contains('@'), "every placeholder is substituted");
    assert_verifies(
        &[&dest.join("usr/lib/systemd/system/resagent.service")],
        None,
        "resagent.service",
    );

    // The agent reads the merged file as it is (no unknown key: not exit 2).
    let mut c = config.clone();
    for (k, sub) in [
        ("state_dir", "s"),
        ("resource_dir", "r"),
        ("outbox_dir", "o"),
    ] {
        c[k] = serde_json::json!(d.path().join(sub));
    }
    c["pid_file"] = serde_json::json!(d.path().join("run/resagent.pid"));
    c["productId"] = serde_json::json!("P1");
    c["deviceName"] = serde_json::json!("d1");
    c["key_deviceinfo"] = serde_json::json!({"deviceSecret": "ZGVtbw=="});
    c.as_object_mut().unwrap().remove("device_info");
    let cfg = d.path().join("agent.json");
    std::fs::write(&cfg, c.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_resagent"))
        .args(["status", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_ne!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Bad values stop the build, naming the variable and the key.
    for (bad, says) in [
        (
            r#"{"poll_interval_s": 900"#,
            "RESAGENT_CONFIG_JSON is not JSON",
        ),
        ("[900]", "RESAGENT_CONFIG_JSON must be a JSON object"),
        (
            r#"{"poll_intervall_s": 900}"#,
            "`poll_intervall_s` is not a configuration key",
        ),
    ] {
        let (code, err) = bbfunc(
            "resagent-config.bbclass",
            "resagent_install_config",
            vars(bad),
        );
        assert_eq!(code, 3, "{bad}: {err}");
        assert!(err.contains(says), "{bad}: {err}");
    }
}
