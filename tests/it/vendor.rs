//! The vendor's desk (issue #27): the local platform as Tencent's own device SDK meets it
//! — its resource sample, unchanged, against `resagent-platform` — and the signed login
//! checked at CONNECT, as Tencent checks it.

use crate::common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Waits until the rig's front judged a login that `pred` accepts.
fn wait_login(
    rig: &Rig,
    timeout: Duration,
    pred: impl Fn(&resagent_platform::front::Login) -> bool,
) -> Option<resagent_platform::front::Login> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(l) = rig.front.logins().into_iter().find(|l| pred(l)) {
            return Some(l);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn a_wrong_device_secret_is_refused_at_connect_and_the_right_one_gets_in() {
    use resagent_platform::front::Refusal;
    let mut rig = Rig::new();
    // "wrong-secret": well-formed base64, not the device's.
    rig.config["key_deviceinfo"] = json!({"deviceSecret": "d3Jvbmctc2VjcmV0"});
    let mut agent = rig.spawn_agent();
    let refused = wait_login(&rig, Duration::from_secs(15), |l| l.refused.is_some());
    let refused = refused.unwrap_or_else(|| panic!("no refused login; log:\n{}", agent.log_text()));
    assert_eq!(refused.client_id, format!("{PRODUCT}{DEVICE}"));
    assert_eq!(refused.refused, Some(Refusal::BadSignature));
    // Nothing of the device reached the platform: the session never existed.
    std::thread::sleep(Duration::from_secs(2));
    assert!(rig.platform.received(&device()).is_empty());
    assert!(
        rig.front.logins().iter().all(|l| l.refused.is_some()),
        "{:?}",
        rig.front.logins()
    );
    let log = agent.log_text();
    assert!(
        log.contains("refused the signed login of TESTPROD01dev1"),
        "the agent says why: {log}"
    );
    assert!(!log.contains("d3Jvbmctc2VjcmV0"), "no secret in the log");
    agent.terminate();

    rig.config["key_deviceinfo"] = json!({"deviceSecret": SECRET_B64});
    let mut agent = rig.start_agent();
    assert!(rig.front.logins().iter().any(|l| l.refused.is_none()));
    agent.terminate();
}

/// Where Tencent's SDK is: `TENCENT_SDK_SRC`, a source tree or a bare git snapshot of
/// github.com/TencentCloud/tencentcloud-iot-sdk-embedded-c.
fn sdk_source() -> Option<PathBuf> {
    let src = PathBuf::from(std::env::var_os("TENCENT_SDK_SRC")?);
    src.exists().then_some(src)
}

/// Builds the SDK's `resource_mqtt_sample` with the SDK's own defaults (MQTT without
/// TLS, multithreaded, resource management on) in a copy under target/; its path.
fn build_sample(src: &Path) -> PathBuf {
    let target = Path::new(env!("CARGO_BIN_EXE_resagent"))
        .parent()
        .unwrap()
        .join("tencent-sdk");
    let tree = target.join("src");
    let bin = tree.join("output/release/bin/resource_mqtt_sample");
    if bin.exists() {
        return bin;
    }
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir_all(&tree).unwrap();
    // A bare snapshot (what `fetch` brings) is unpacked; a tree is copied. The SDK's
    // CMake writes into its own tree (output/), so it builds in a copy either way.
    let unpack = if src.join("HEAD").exists() && !src.join("CMakeLists.txt").exists() {
        format!(
            "git --git-dir='{}' archive HEAD | tar -x -C '{}'",
            src.display(),
            tree.display()
        )
    } else {
        format!("cp -a '{}/.' '{}'", src.display(), tree.display())
    };
    let build = format!(
        "set -e; {unpack}; mkdir -p '{t}/build'; cd '{t}/build'; \
         cmake .. > cmake.log 2>&1; make -j2 resource_mqtt_sample > make.log 2>&1",
        t = tree.display()
    );
    let st = Command::new("sh").args(["-c", &build]).status().unwrap();
    assert!(
        st.success() && bin.exists(),
        "building Tencent's SDK sample failed: see {}/build/*.log",
        tree.display()
    );
    bin
}

/// Tencent's SDK dials `${productId}.iotcloud.tencentdevices.com:1883` and fetches
/// URLs on port 80: it runs in a network and mount namespace of its own, where those
/// ports are free, that host name is 127.0.0.1 (/etc/hosts bound over), and the
/// platform serves on them — the sample and the SDK unchanged.
#[test]
fn tencents_sdk_sample_downloads_and_uploads_through_the_local_platform() {
    let Some(src) = sdk_source() else {
        eprintln!(
            "SKIPPED tencents_sdk_sample…: TENCENT_SDK_SRC is not set (a source tree or a bare \
             git snapshot of github.com/TencentCloud/tencentcloud-iot-sdk-embedded-c; README, \
             \"Tencent's SDK against the platform\")"
        );
        return;
    };
    if not_root() {
        eprintln!("SKIPPED tencents_sdk_sample…: needs root for its network namespace");
        return;
    }
    let sample = build_sample(&src);
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path();
    let run = w.join("run");
    std::fs::create_dir_all(&run).unwrap();
    write_random(&w.join("sdk-resource.bin"), 1 << 20, 27);
    write_random(&run.join("uploadtest"), (1 << 20) + 7, 28);
    let (product, dev, secret) = ("SDKPROD001", "sdkdev1", "c2RrLWRldmljZS1zZWNyZXQ=");
    let device_info = |secret: &str| {
        json!({
            "auth_mode": "KEY", "region": "china", "productId": product,
            "productSecret": "unused", "deviceName": dev,
            "key_deviceinfo": {"deviceSecret": secret},
        })
        .to_string()
    };
    std::fs::write(run.join("device_info.json"), device_info(secret)).unwrap();
    let wrong = w.join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    std::fs::write(
        wrong.join("device_info.json"),
        device_info("d3Jvbmctc2VjcmV0"),
    )
    .unwrap();
    std::fs::write(
        w.join("mosquitto.conf"),
        "listener 1884 127.0.0.1\nallow_anonymous true\npersistence false\n",
    )
    .unwrap();
    let platform_bin =
        Path::new(env!("CARGO_BIN_EXE_resagent")).with_file_name("resagent-platform");
    let script = format!(
        r#"set -u
ip link set lo up
printf '127.0.0.1 localhost {product}.iotcloud.tencentdevices.com\n' > '{w}/hosts'
mount --bind '{w}/hosts' /etc/hosts
mosquitto -c '{w}/mosquitto.conf' > '{w}/mosquitto.log' 2>&1 &
sleep 0.5
'{platform}' --device '{product}/{dev}:{secret}' --broker tcp://127.0.0.1:1884 \
  --mqtt-listen 127.0.0.1:1883 --listen 127.0.0.1:80 --uploads '{w}/uploads' \
  --offer '{w}/sdk-resource.bin' --reports '{w}/reports.jsonl' > '{w}/platform.log' 2>&1 &
sleep 1
# A device holding the wrong secret first: refused, never served.
(cd '{w}/wrong' && timeout 6 '{sample}' > '{w}/wrong.log' 2>&1)
(cd '{w}/run' && timeout 150 '{sample}' > '{w}/sample.log' 2>&1)
echo "sample exit $?" > '{w}/sample.exit'
kill $(jobs -p) 2>/dev/null
wait
"#,
        w = w.display(),
        platform = platform_bin.display(),
        sample = sample.display(),
    );
    let st = Command::new("unshare")
        .args(["--net", "--mount", "--fork", "bash", "-c", &script])
        .status()
        .unwrap();
    assert!(st.success(), "the namespace script ran");
    let read = |f: &str| std::fs::read_to_string(w.join(f)).unwrap_or_default();
    let logs = || {
        format!(
            "platform:\n{}\nsample (last 4000 bytes):\n{}",
            read("platform.log"),
            read("sample.log")
                .chars()
                .rev()
                .take(4000)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        )
    };
    // The wrong secret was refused at CONNECT.
    assert!(
        read("platform.log").contains(&format!(
            "MQTT login of `{product}{dev}` refused: signature does not match"
        )),
        "{}",
        logs()
    );
    assert_eq!(read("sample.exit").trim(), "sample exit 0", "{}", logs());
    // Download: the bytes the SDK wrote are the offered ones, and it reported `done`.
    let downloaded: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("download_") && n.ends_with("_sdk-resource.bin")
        })
        .collect();
    let listing: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(downloaded.len(), 1, "{listing:?}\n{}", logs());
    assert_eq!(
        std::fs::read(downloaded[0].path()).unwrap(),
        std::fs::read(w.join("sdk-resource.bin")).unwrap()
    );
    // Upload: the platform stored the SDK's bytes under the name it gave.
    let stored = std::fs::read_dir(w.join("uploads"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().contains("uploadtest"))
        .unwrap_or_else(|| panic!("no upload stored; {}", logs()));
    assert_eq!(
        std::fs::read(stored.path()).unwrap(),
        std::fs::read(run.join("uploadtest")).unwrap()
    );
    // Both final reports reached the platform, as the SDK sent them.
    let reports = read("reports.jsonl");
    let finals: Vec<serde_json::Value> = reports
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|m: &serde_json::Value| m["progress"]["state"] == "done")
        .collect();
    assert!(
        finals
            .iter()
            .any(|m| m["type"] == "report_download_progress" && m["name"] == "sdk-resource.bin"),
        "{reports}"
    );
    assert!(
        finals
            .iter()
            .any(|m| m["type"] == "report_upload_progress" && m["name"] == "uploadtest"),
        "{reports}"
    );
}

/// Namespaces need root (CI and this machine run as root).
fn not_root() -> bool {
    !nix::unistd::Uid::effective().is_root()
}

#[test]
fn the_platforms_first_push_reaches_a_device_that_asked_before_it_started() {
    // The device asked (into the void) and will not ask again for an hour: only the
    // platform's push, made once its own session is up, can deliver the offer.
    let d = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(d.path(), "");
    let config = hand_config(d.path(), &broker.uri(), json!({"poll_interval_s": 3600}));
    let log = d.path().join("agent.log");
    let _agent = Running(
        Command::new(env!("CARGO_BIN_EXE_resagent"))
            .args(["run", "-c"])
            .arg(&config)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("connected to")
    {
        assert!(Instant::now() < deadline, "the agent never connected");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let offered = d.path().join("first.bin");
    write_random(&offered, 200_000, 31);
    let platform_log = d.path().join("platform.log");
    // The platform's way to the broker is down for its first 1.5 s (its first connects
    // fail): the offer must still reach the device once the platform's session is up.
    let far = resagent_platform::rig::Relay::start(broker.port);
    far.set_down(true);
    let _platform = Running(
        Command::new(Path::new(env!("CARGO_BIN_EXE_resagent")).with_file_name("resagent-platform"))
            .args(["--device", &device(), "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", far.port))
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--uploads")
            .arg(d.path().join("uploads"))
            .arg("--offer")
            .arg(&offered)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&platform_log).unwrap())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(1500));
    far.set_down(false);
    let installed = d.path().join("res/first.bin");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read(&installed).ok() != std::fs::read(&offered).ok() {
        assert!(
            Instant::now() < deadline,
            "the push never arrived; platform:\n{}\nagent:\n{}",
            std::fs::read_to_string(&platform_log).unwrap_or_default(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let said = std::fs::read_to_string(&platform_log).unwrap();
    assert!(!said.contains("not sent"), "{said}");
}
