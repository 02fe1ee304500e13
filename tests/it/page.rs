//! The local platform's page, seen in a real browser: headless Chromium driven through
//! its DevTools protocol (`tests/browser/page.py`) watches the page while the real agent
//! reports a download; the report must appear within a second of the platform receiving
//! it, and the screenshot is kept (target/page/platform-page.png; the one in
//! docs/platform-page.png, shown by the README, was taken by this test). `/reports.json`
//! gives scripts the same reports. Needs Debian's chromium and python3-websocket.

use crate::common::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_report_appears_on_the_page_within_a_second_and_in_reports_json() {
    let mut rig = Rig::new();
    let agent = rig.start_agent();
    let url = format!("{}/", rig.platform.storage().base_url());
    let shot_dir = project().join("target/page");
    std::fs::create_dir_all(&shot_dir).unwrap();
    let shot = shot_dir.join("platform-page.png");
    let _ = std::fs::remove_file(&shot);
    let mut browser = Command::new("/usr/bin/python3")
        .arg(project().join("tests/browser/page.py"))
        .arg(&url)
        .arg("firmware-2.4.bin")
        .arg(&shot)
        .arg("20")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 runs page.py (apt-get install chromium python3-websocket)");
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "loaded", "the page opened");

    // The page is open; now the agent downloads and reports.
    let (_, task) = rig.task("firmware-2.4.bin", 2 << 20, 7);
    rig.throttle(&task, 1 << 20);
    rig.platform.push(&device(), &task).unwrap();
    let seen = lines.next().unwrap().unwrap();
    let seen_ms: u64 = seen
        .strip_prefix("seen ")
        .unwrap_or_else(|| panic!("the report never showed: {seen}"))
        .parse()
        .unwrap();
    let first_report_ms = rig
        .platform
        .received_at(&device())
        .into_iter()
        .find(|(_, m)| m["name"] == "firmware-2.4.bin")
        .map(|(at, _)| at)
        .unwrap();
    let latency = seen_ms.saturating_sub(first_report_ms);
    println!("the first report showed on the page {latency} ms after the platform got it");
    assert!(latency < 1000, "{latency} ms");
    assert_eq!(lines.next().unwrap().unwrap(), "screenshot");
    assert!(browser.wait().unwrap().success());
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );

    // Scripts get the same reports as JSON.
    assert_eq!(
        state_of(&rig.final_report(&agent, "firmware-2.4.bin", Duration::from_secs(60))),
        ("done", 0)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let json: Value = loop {
        let out = Command::new("curl")
            .args(["-sf", &format!("{url}reports.json")])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let done = v["reports"].as_array().unwrap().iter().any(|r| {
            r["message"]["name"] == "firmware-2.4.bin"
                && r["message"]["progress"]["state"] == "done"
        });
        if done {
            break v;
        }
        assert!(Instant::now() < deadline, "{v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(json["connected"], true);
    assert_eq!(json["devices"][0]["device"], device());
}

#[test]
fn the_page_shows_what_a_patch_saves() {
    let mut rig = Rig::new();
    let agent = rig.start_agent();
    let base: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    let (_, t) = rig.serve_bytes("model.bin", &base);
    rig.platform.push(&device(), &t).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "model.bin", Duration::from_secs(60))),
        ("done", 0)
    );
    let mut target = base.clone();
    target[5000..5100].fill(1);
    let patch = crate::delta::make_patch(rig.path(), &base, &target);
    let (_, t) = rig.serve_bytes("model.bin.rdelta", &patch);
    rig.platform.push(&device(), &t).unwrap();
    assert_eq!(
        state_of(&rig.final_report(&agent, "model.bin.rdelta", Duration::from_secs(60))),
        ("done", 0)
    );
    // The page, in a real browser: the patch's row says what it saved.
    let url = format!("{}/", rig.platform.storage().base_url());
    let shot = project().join("target/page/platform-page-delta.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let saved = 1_048_576 - patch.len() as u64;
    let needle = format!("for 1.0 MiB: {:.1} KiB saved", saved as f64 / 1024.0);
    let out = Command::new("/usr/bin/python3")
        .arg(project().join("tests/browser/page.py"))
        .arg(&url)
        .arg(&needle)
        .arg(&shot)
        .arg("20")
        .output()
        .expect("python3 runs page.py");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("seen "), "{needle:?} not on the page: {said}");
    assert!(out.status.success());
    // And in /reports.json, for scripts.
    let json = reports_json(&url);
    let d = &json["deltas"][0];
    assert_eq!(d["name"], "model.bin.rdelta", "{json}");
    assert_eq!(d["patch_bytes"], patch.len() as u64);
    assert_eq!(d["target_bytes"], 1_048_576);
    assert_eq!(d["saved_bytes"], saved);
}

#[test]
fn a_report_without_percent_is_shown_as_such() {
    // Tencent's SDK leaves `percent` out of `done` and `fail`: the page must not say
    // "undefined%". The report is published as the SDK would, straight to the broker.
    let rig = Rig::new();
    let port = rig.broker.port.to_string();
    let topic = format!("$resource/up/service/{}", device());
    let report = r#"{"type":"report_download_progress","name":"sdk.bin","progress":{"state":"done","result_code":0,"result_msg":"success"}}"#;
    let url = format!("{}/", rig.platform.storage().base_url());
    let deadline = Instant::now() + Duration::from_secs(20);
    while rig.platform.received(&device()).is_empty() {
        let st = Command::new("mosquitto_pub")
            .args(["-p", &port, "-q", "1", "-t", &topic, "-m", report])
            .status()
            .expect("mosquitto_pub (mosquitto-clients)");
        assert!(st.success());
        assert!(
            Instant::now() < deadline,
            "the platform never heard the report"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let shot = project().join("target/page/platform-page-no-percent.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let out = Command::new("/usr/bin/python3")
        .arg(project().join("tests/browser/page.py"))
        .arg(&url)
        .arg("done  (no percent)  0  success")
        .arg(&shot)
        .arg("20")
        .output()
        .expect("python3 runs page.py");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("seen "), "not on the page: {said}");
    assert!(!said.contains("undefined"), "{said}");
}

#[test]
fn a_file_offered_from_the_page_is_installed_and_an_upload_is_linked_to_its_bytes() {
    let mut rig = Rig::new();
    let agent = rig.start_agent();
    // An upload first, so the page lists it with a link.
    let src = rig.make_file("camera.jpg", 300_000, 41);
    rig.cli(&["upload", src.to_str().unwrap()]);
    let up = rig
        .platform
        .wait_upload_final(&device(), "camera.jpg", Duration::from_secs(30))
        .unwrap();
    assert_eq!(state_of(&up), ("done", 0), "{up}");

    // A person picks a file in the page's form and presses Offer.
    let picked = rig.path().join("picked").join("sensor-model.bin");
    std::fs::create_dir_all(picked.parent().unwrap()).unwrap();
    write_random(&picked, 700_000, 42);
    let url = format!("{}/", rig.platform.storage().base_url());
    let shot = project().join("target/page/platform-page-offer.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    // The resource's row, done, with its bar full (innerText joins cells with tabs).
    let needle = "download\tsensor-model.bin\tdone\t100%";
    let out = Command::new("/usr/bin/python3")
        .arg(project().join("tests/browser/page.py"))
        .arg(&url)
        .arg(needle)
        .arg(&shot)
        .arg("40")
        .arg(&picked)
        .output()
        .expect("python3 runs page.py");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("offered"), "{said}");
    assert!(
        said.contains("seen "),
        "{needle:?} not on the page: {said}\n{}",
        agent.log_text()
    );
    // The bytes the person picked are what the device installed.
    assert_eq!(
        std::fs::read(rig.resource("sensor-model.bin")).unwrap(),
        std::fs::read(&picked).unwrap()
    );
    // The page draws a bar per resource and links the upload's bytes.
    let html = Command::new("curl")
        .args(["-sf", &url])
        .output()
        .unwrap()
        .stdout;
    let html = String::from_utf8_lossy(&html);
    assert!(html.contains("createElement(\"progress\")"));
    assert!(
        !html.contains("__OFFER_TOKEN__"),
        "the page carries its token"
    );
    let json = reports_json(&url);
    let link = json["uploads"][0]["link"].as_str().unwrap();
    assert!(link.starts_with("/uploads/"), "{json}");
    let bytes = Command::new("curl")
        .args([
            "-sf",
            &format!("{}{link}", rig.platform.storage().base_url()),
        ])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        bytes,
        std::fs::read(&src).unwrap(),
        "the link serves the uploaded bytes"
    );
    assert_eq!(json["uploads"][0]["size"], 300_000);
}

#[test]
fn an_offer_without_the_page_token_or_with_a_path_for_a_name_is_refused() {
    let rig = Rig::new();
    let base = rig.platform.storage().base_url();
    let f = rig.path().join("x.bin");
    std::fs::write(&f, b"payload").unwrap();
    let post = |query: &str| -> String {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--data-binary",
            ])
            .arg(format!("@{}", f.display()))
            .arg(format!("{base}/offer?{query}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dev = device().replace('/', "%2F");
    assert_eq!(post(&format!("device={dev}&name=x.bin&token=nope")), "403");
    let html = Command::new("curl")
        .args(["-sf", &format!("{base}/")])
        .output()
        .unwrap()
        .stdout;
    let html = String::from_utf8_lossy(&html);
    let token = html
        .split("token: \"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap()
        .to_string();
    for name in ["..%2Fescape", "%2Fetc%2Fpasswd", ".hidden", ""] {
        assert_eq!(
            post(&format!("device={dev}&name={name}&token={token}")),
            "400",
            "{name}"
        );
    }
    assert!(!rig.path().join("escape").exists());
    // Nothing was offered.
    assert!(rig.platform.received(&device()).is_empty());
    assert_eq!(
        post(&format!("device={dev}&name=x.bin&token={token}")),
        "200"
    );
    let offered = rig.path().join("platform-uploads/.offered/x.bin");
    assert_eq!(std::fs::read(offered).unwrap(), b"payload");
}

/// The platform's `/reports.json` at the page's `url`, as a script reads it.
fn reports_json(url: &str) -> Value {
    let out = Command::new("curl")
        .args(["-sf", &format!("{url}reports.json")])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}
