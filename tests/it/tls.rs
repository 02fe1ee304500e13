//! TLS to a real mosquitto with a CA made by the test: key authentication over TLS,
//! certificate authentication with a client certificate, and a wrong CA refused with a
//! clear log line.

use crate::common::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME.crt`/`NAME.key`) and a certificate signed by it for `who`.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
}

fn make_cert(dir: &Path, ca: &str, who: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{who}.key"),
            "-out",
            &format!("{who}.csr"),
            "-subj",
            &format!("/CN={who}"),
        ],
    );
    std::fs::write(
        dir.join(format!("{who}.ext")),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{who}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{who}.ext"),
        ],
    );
}

/// A rig whose mosquitto has a TLS listener (port returned) signed by `test-ca`.
fn tls_rig(require_certificate: bool) -> (Rig, u16) {
    let port = free_port();
    let rig = Rig::with_broker_conf(|dir| {
        make_ca(dir, "test-ca");
        make_cert(dir, "test-ca", "broker");
        make_cert(dir, "test-ca", "device");
        format!(
            "listener {port} 127.0.0.1\ncafile {d}/test-ca.crt\ncertfile {d}/broker.crt\nkeyfile {d}/broker.key\nrequire_certificate {require_certificate}\n",
            d = dir.display()
        )
    });
    (rig, port)
}

#[test]
fn key_auth_over_tls_with_the_test_ca_connects_and_delivers() {
    let (mut rig, port) = tls_rig(false);
    rig.config["broker"] = json!(format!("ssl://127.0.0.1:{port}"));
    rig.config["ca_file"] = json!(rig.path().join("test-ca.crt"));
    let f = rig.make_file("tls", 100_000, 21);
    let task = rig.platform.task_for("tls.bin", &f);
    rig.platform.offer(&device(), task);
    let agent = rig.start_agent();
    assert_eq!(
        state_of(&rig.final_report(&agent, "tls.bin", Duration::from_secs(30))),
        ("done", 0)
    );
}

#[test]
fn cert_mode_with_a_client_certificate_connects() {
    let (mut rig, port) = tls_rig(true);
    let d = rig.path().to_path_buf();
    let info = d.join("device_info.json");
    std::fs::write(
        &info,
        json!({"auth_mode": "CERT", "productId": PRODUCT, "deviceName": DEVICE,
               "cert_deviceinfo": {"devCertFile": "device.crt", "devPrivateKeyFile": "device.key"}})
        .to_string(),
    )
    .unwrap();
    let cfg = rig.config.as_object_mut().unwrap();
    for k in ["productId", "deviceName", "key_deviceinfo"] {
        cfg.remove(k);
    }
    cfg.insert("device_info".into(), json!(info));
    cfg.insert("broker".into(), json!(format!("mqtts://127.0.0.1:{port}")));
    cfg.insert("ca_file".into(), json!(d.join("test-ca.crt")));
    let agent = rig.start_agent();
    assert!(agent
        .log_text()
        .contains(&format!("connected to ssl://127.0.0.1:{port}")));
}

#[test]
fn a_wrong_ca_is_refused_with_a_clear_log_line() {
    let (mut rig, port) = tls_rig(false);
    make_ca(rig.path(), "other-ca");
    rig.config["broker"] = json!(format!("ssl://127.0.0.1:{port}"));
    rig.config["ca_file"] = json!(rig.path().join("other-ca.crt"));
    let mut agent = rig.spawn_agent();
    std::thread::sleep(Duration::from_secs(3));
    let log = agent.log_text();
    assert!(
        agent.is_alive(),
        "a refused connection never ends the process"
    );
    assert!(!log.contains("connected to ssl://"), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("connect to ssl://") && l.contains("failed"))
        .unwrap_or_else(|| panic!("no connect failure line:\n{log}"));
    assert!(line.contains("other-ca.crt"), "names the CA file: {line}");
    assert!(rig.platform.received(&device()).is_empty());
}
