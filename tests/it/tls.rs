//! TLS to a real mosquitto with a CA made by the test: key authentication over TLS,
//! certificate authentication with a client certificate, and a wrong CA refused with a
//! clear log line; and HTTPS downloads from OpenSSL's own file server (`s_server -WWW`)
//! through the agent's HTTP client, a private CA trusted, another refused.

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

fn md5_bytes(dir: &Path, bytes: &[u8]) -> String {
    let p = dir.join("md5-probe");
    std::fs::write(&p, bytes).unwrap();
    md5_hex(&p)
}

/// `openssl s_server -WWW` serving `www` over TLS with `who`'s certificate (OpenSSL's
/// own HTTPS file server: HTTP/1.0, the body ends at the close); its port.
fn https_files(dir: &Path, who: &str, www: &Path) -> (std::process::Child, u16) {
    let port = free_port();
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-WWW", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(dir.join(format!("{who}.crt")))
        .arg("-key")
        .arg(dir.join(format!("{who}.key")))
        .current_dir(www)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    assert!(
        resagent_platform::rig::wait_port(port, Duration::from_secs(10)),
        "s_server listens"
    );
    (child, port)
}

#[test]
fn a_download_over_https_from_a_private_ca_arrives_and_another_ca_is_refused() {
    let mut rig = Rig::new();
    let dir = rig.path().join("https");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    make_ca(&dir, "store-ca");
    make_cert(&dir, "store-ca", "store");
    make_ca(&dir, "other-ca");
    make_cert(&dir, "other-ca", "stranger");
    let bytes: Vec<u8> = (0..700_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 9) as u8)
        .collect();
    std::fs::write(www.join("fw.bin"), &bytes).unwrap();
    rig.config["ca_file"] = json!(dir.join("store-ca.crt"));
    rig.config["allow_http"] = json!(false);
    let agent = rig.start_agent();
    let task = |port: u16| {
        json!({"name": "fw.bin", "size": bytes.len(), "md5sum": md5_bytes(&dir, &bytes),
               "url": format!("https://localhost:{port}/fw.bin")})
    };

    let (mut server, port) = https_files(&dir, "store", &www);
    rig.platform.push(&device(), &task(port)).unwrap();
    let r = rig.final_report(&agent, "fw.bin", Duration::from_secs(60));
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(state_of(&r), ("done", 0), "{r}\n{}", agent.log_text());
    assert_eq!(std::fs::read(rig.resource("fw.bin")).unwrap(), bytes);

    // A server whose certificate the configured CA did not sign: refused, nothing fetched.
    std::fs::remove_file(rig.resource("fw.bin")).unwrap();
    let (mut server, port) = https_files(&dir, "stranger", &www);
    let mut t = task(port);
    t["md5sum"] = json!(md5_bytes(&dir, b"another version"));
    rig.platform.push(&device(), &t).unwrap();
    let r = nth_final(&rig, &agent, "fw.bin", 1);
    let _ = server.kill();
    let _ = server.wait();
    // -11 at once: an untrusted certificate is not the network failing (never retried).
    assert_eq!(state_of(&r), ("fail", -11), "{r}");
    assert!(msg(&r).contains("TLS"), "{r}");
    assert!(!rig.resource("fw.bin").exists());
}

/// tinyproxy on a free port (Debian's, foreground), logging every request to `log`.
fn tinyproxy(dir: &Path, log: &Path) -> (std::process::Child, u16) {
    let port = free_port();
    let conf = dir.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\nLogLevel Info\n\
             LogFile \"{}\"\nMaxClients 20\n",
            log.display()
        ),
    )
    .unwrap();
    let child = Command::new("tinyproxy")
        .args(["-d", "-c"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tinyproxy (Debian package tinyproxy)");
    assert!(
        resagent_platform::rig::wait_port(port, Duration::from_secs(10)),
        "tinyproxy listens"
    );
    (child, port)
}

#[test]
fn downloads_go_through_a_real_proxy_plain_and_tunnelled() {
    let mut rig = Rig::new();
    let dir = rig.path().join("proxied");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    make_ca(&dir, "store-ca");
    make_cert(&dir, "store-ca", "store");
    let bytes: Vec<u8> = (0..400_000u32)
        .map(|i| (i.wrapping_mul(40503) >> 5) as u8)
        .collect();
    std::fs::write(www.join("over-tls.bin"), &bytes).unwrap();
    rig.config["ca_file"] = json!(dir.join("store-ca.crt"));
    let log = dir.join("tinyproxy.log");
    let (mut proxy, proxy_port) = tinyproxy(&dir, &log);
    let via = format!("http://127.0.0.1:{proxy_port}");
    let agent = rig.spawn_agent_under(
        &[
            "env",
            "-u",
            "no_proxy",
            "-u",
            "NO_PROXY",
            &format!("http_proxy={via}"),
            &format!("https_proxy={via}"),
        ],
        "info",
    );
    wait_log(&agent, "connected to");
    // Plain HTTP: the absolute-form request through the proxy.
    let (file, task) = rig.task("plain.bin", 300_000, 71);
    rig.platform.push(&device(), &task).unwrap();
    let r = rig.final_report(&agent, "plain.bin", Duration::from_secs(60));
    assert_eq!(state_of(&r), ("done", 0), "{r}\n{}", agent.log_text());
    assert_eq!(md5_hex(&rig.resource("plain.bin")), md5_hex(&file));
    // HTTPS: a CONNECT tunnel through the proxy, TLS inside it.
    let (mut server, port) = https_files(&dir, "store", &www);
    let t = json!({"name": "over-tls.bin", "size": bytes.len(), "md5sum": md5_bytes(&dir, &bytes),
                   "url": format!("https://localhost:{port}/over-tls.bin")});
    rig.platform.push(&device(), &t).unwrap();
    let r = rig.final_report(&agent, "over-tls.bin", Duration::from_secs(60));
    let _ = server.kill();
    let _ = server.wait();
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert_eq!(state_of(&r), ("done", 0), "{r}\n{}", agent.log_text());
    assert_eq!(std::fs::read(rig.resource("over-tls.bin")).unwrap(), bytes);
    // Both went through the proxy: its log names them.
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(said.contains("plain.bin"), "{said}");
    assert!(
        said.contains(&format!("CONNECT localhost:{port}")),
        "{said}"
    );
}
