//! Uploads end to end: `resagent upload` into the outbox, the daemon's
//! create_upload_task, the PUT with Content-MD5 to the local platform's storage, and the
//! reports — with a real mosquitto and the real binary.

use crate::common::*;
use resagent_platform::{upload_path, HttpFault};
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn outbox(rig: &Rig) -> std::path::PathBuf {
    rig.path().join("outbox")
}

/// Regular, non-dot files waiting in the outbox.
fn waiting(rig: &Rig) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(outbox(rig))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn upload_done(rig: &Rig, agent: &Agent, name: &str) -> serde_json::Value {
    let r = rig
        .platform
        .wait_for(&device(), T, |m| {
            m["type"] == "report_upload_progress"
                && m["name"] == name
                && m["progress"]["state"] == "done"
        })
        .unwrap_or_else(|| panic!("no done for {name}; log:\n{}", agent.log_text()));
    r
}

fn stored(rig: &Rig, name: &str) -> resagent_platform::http::StoredUpload {
    let path = upload_path(&device(), name);
    rig.platform
        .uploads()
        .into_iter()
        .find(|u| u.path == path)
        .unwrap_or_else(|| panic!("{name} not stored"))
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`wait_until`], with the agent's log in the message should it time out.
fn wait_with_log(agent: &Agent, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; log:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_32_mib_file_uploaded_through_the_cli_ends_done_and_identical() {
    let mut rig = Rig::new();
    let agent = rig.start_agent();
    let src = rig.make_file("camera.rec", 32 << 20, 31);
    let before = std::fs::metadata(&src).unwrap();
    let (code, out, err) = rig.cli(&["upload", src.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("told resagent"), "{out}");
    let done = upload_done(&rig, &agent, "camera.rec");
    assert_eq!(done["progress"]["percent"], 100);
    let s = stored(&rig, "camera.rec");
    assert!(s.content_md5_checked, "the server checked Content-MD5");
    assert_eq!(s.md5_hex, md5_hex(&src));
    assert_eq!(
        std::fs::read(&s.file).unwrap(),
        std::fs::read(&src).unwrap()
    );
    wait_until("outbox empty", || {
        std::fs::read_dir(outbox(&rig)).unwrap().count() == 0
    });
    let after = std::fs::metadata(&src).unwrap();
    assert_eq!(
        (before.len(), before.modified().unwrap()),
        (after.len(), after.modified().unwrap()),
        "the user's file is untouched"
    );
    let announce = rig
        .platform
        .received(&device())
        .into_iter()
        .find(|m| m["type"] == "create_upload_task")
        .unwrap();
    assert_eq!(announce["size"], 32 << 20);
    assert_eq!(announce["md5sum"], md5_hex(&src));
    let reports = rig.platform.reports_for(&device(), "camera.rec");
    assert_eq!(reports[0]["progress"]["state"], "uploading");
    let log = agent.log_text();
    assert!(
        !log.contains("sign="),
        "the URL's signature is never logged"
    );
    let (_, status, _) = rig.cli(&["status"]);
    assert!(status.contains("Outbox:      empty"), "{status}");
}

#[test]
fn a_file_queued_without_a_daemon_is_sent_when_it_starts() {
    let mut rig = Rig::new();
    let src = rig.make_file("boot.log", 10_000, 32);
    let (code, out, _) = rig.cli(&["upload", src.to_str().unwrap(), "--name", "first-boot.log"]);
    assert_eq!(code, 0);
    assert!(out.contains("no resagent daemon runs"), "{out}");
    assert_eq!(waiting(&rig), ["first-boot.log"]);
    let (_, status, _) = rig.cli(&["status"]);
    assert!(
        status.contains("first-boot.log") && status.contains("queued"),
        "{status}"
    );
    let agent = rig.start_agent();
    upload_done(&rig, &agent, "first-boot.log");
    assert_eq!(stored(&rig, "first-boot.log").md5_hex, md5_hex(&src));
    wait_until("outbox empty", || waiting(&rig).is_empty());
}

#[test]
fn a_refused_task_keeps_the_file_and_a_later_retry_succeeds() {
    let mut rig = Rig::new();
    rig.platform.refuse_uploads(1);
    let agent = rig.start_agent();
    let src = rig.make_file("diag.tgz", 50_000, 33);
    rig.cli(&["upload", src.to_str().unwrap()]);
    wait_until("a retry is scheduled", || {
        agent.log_text().contains("upload of diag.tgz failed")
    });
    assert_eq!(waiting(&rig), ["diag.tgz"]);
    assert!(
        rig.platform.reports_for(&device(), "diag.tgz").is_empty(),
        "no report is owed for a task the platform did not create"
    );
    upload_done(&rig, &agent, "diag.tgz");
    let asks = rig
        .platform
        .received(&device())
        .iter()
        .filter(|m| m["type"] == "create_upload_task")
        .count();
    assert_eq!(asks, 2);
    wait_until("outbox empty", || waiting(&rig).is_empty());
}

#[test]
fn bad_digest_is_reported_and_retried_with_backoff_not_in_a_hot_loop() {
    let mut rig = Rig::new();
    let _agent = rig.start_agent();
    rig.platform.set_fault(
        &upload_path(&device(), "snap.jpg"),
        HttpFault {
            bad_digest: true,
            ..Default::default()
        },
    );
    let src = rig.make_file("snap.jpg", 20_000, 34);
    rig.cli(&["upload", src.to_str().unwrap()]);
    let fail = rig
        .platform
        .wait_upload_final(&device(), "snap.jpg", T)
        .unwrap();
    assert_eq!(state_of(&fail), ("fail", -8), "{fail}");
    assert!(
        fail["progress"]["result_msg"]
            .as_str()
            .unwrap()
            .contains("BadDigest"),
        "{fail}"
    );
    // Every byte went out before the storage refused it: the fail says so.
    assert_eq!(fail["progress"]["percent"], 100, "{fail}");
    assert!(!fail["progress"]["result_msg"]
        .as_str()
        .unwrap()
        .contains("sign="));
    std::thread::sleep(Duration::from_secs(6));
    let puts = rig
        .platform
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert!(
        (2..=4).contains(&puts),
        "{puts} PUTs in ~6 s: retried, but with backoff"
    );
    assert_eq!(waiting(&rig), ["snap.jpg"], "the file stays for a retry");
    // Between two attempts `status` shows the retry (during one, the upload itself).
    wait_until("status shows the retry", || {
        rig.cli(&["status"]).1.contains("retry in")
    });
}

#[test]
fn a_kill_mid_put_uploads_the_file_after_restart() {
    let mut rig = Rig::new();
    let mut agent = rig.start_agent();
    let path = upload_path(&device(), "video.mp4");
    rig.platform.set_fault(
        &path,
        HttpFault {
            rate: Some(2 << 20),
            ..Default::default()
        },
    );
    let src = rig.make_file("video.mp4", 8 << 20, 35);
    rig.cli(&["upload", src.to_str().unwrap()]);
    wait_until("the PUT started", || {
        rig.platform.requests().iter().any(|r| r.method == "PUT")
    });
    std::thread::sleep(Duration::from_millis(800));
    agent.kill9();
    assert_eq!(waiting(&rig), ["video.mp4"]);
    assert!(
        rig.platform.uploads().is_empty(),
        "nothing was stored by the cut PUT"
    );
    rig.platform.set_fault(&path, HttpFault::default());
    let agent = rig.spawn_agent();
    upload_done(&rig, &agent, "video.mp4");
    assert_eq!(stored(&rig, "video.mp4").md5_hex, md5_hex(&src));
    wait_until("outbox empty", || waiting(&rig).is_empty());
}

#[test]
fn a_rejection_after_done_keeps_the_file_for_a_retry() {
    let mut rig = Rig::new();
    rig.platform.set_upload_result(Some(-1));
    let agent = rig.start_agent();
    let src = rig.make_file("report.csv", 5_000, 36);
    rig.cli(&["upload", src.to_str().unwrap()]);
    upload_done(&rig, &agent, "report.csv");
    wait_with_log(&agent, "the rejection is seen", || {
        agent.log_text().contains("rejected the upload")
    });
    assert_eq!(waiting(&rig), ["report.csv"]);
    rig.platform.set_upload_result(Some(0));
    wait_until("accepted on retry", || waiting(&rig).is_empty());
    assert_eq!(rig.platform.uploads().len(), 2);
}

#[test]
fn move_hands_the_file_over_and_special_files_are_refused() {
    let mut rig = Rig::new();
    let agent = rig.start_agent();
    let src = rig.make_file("big.rec", 1 << 20, 37);
    let md5 = md5_hex(&src);
    let (code, out, err) = rig.cli(&["upload", "--move", src.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!src.exists(), "moved, not copied");
    upload_done(&rig, &agent, "big.rec");
    assert_eq!(stored(&rig, "big.rec").md5_hex, md5);
    wait_until("outbox empty", || waiting(&rig).is_empty());

    let (code, _, err) = rig.cli(&["upload", rig.path().to_str().unwrap(), "--name", "d"]);
    assert_eq!(code, 1);
    assert!(err.contains("a directory"), "{err}");
    let fifo = rig.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let (code, _, err) = rig.cli(&["upload", fifo.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("a FIFO"), "{err}");
    let (code, _, err) = rig.cli(&["upload", "/nonexistent/file"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent/file"), "{err}");
    let f = rig.make_file("ok", 10, 38);
    let (code, _, err) = rig.cli(&["upload", f.to_str().unwrap(), "--name", "../escape"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn move_across_file_systems_is_refused_with_the_reason() {
    let rig = Rig::new();
    let shm = Path::new("/dev/shm");
    use std::os::unix::fs::MetadataExt;
    let other_fs = std::fs::metadata(shm).map(|m| m.dev()).ok();
    let ours = std::fs::metadata(rig.path()).unwrap().dev();
    if other_fs.is_none() || other_fs == Some(ours) {
        eprintln!("skipped: /dev/shm is not a separate file system here");
        return;
    }
    let src = shm.join(format!("resagent-test-{}", std::process::id()));
    std::fs::write(&src, b"data").unwrap();
    let (code, _, err) = rig.cli(&["upload", "--move", src.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("another file system"), "{err}");
    assert!(src.exists(), "nothing lost");
    std::fs::remove_file(&src).unwrap();
}

#[test]
fn peak_memory_does_not_grow_with_the_file_size() {
    let mut hwm = Vec::new();
    for (size, seed) in [(1u64 << 20, 39), (64 << 20, 40)] {
        let mut rig = Rig::new();
        let agent = rig.start_agent();
        let src = rig.make_file("mem.bin", size, seed);
        rig.cli(&["upload", src.to_str().unwrap()]);
        upload_done(&rig, &agent, "mem.bin");
        hwm.push(vm_hwm_kib(agent.pid()));
    }
    assert!(
        hwm[1] < hwm[0] + 4096,
        "peak RSS {} KiB after 1 MiB, {} KiB after 64 MiB",
        hwm[0],
        hwm[1]
    );
}

/// A third-party S3 server (nanio, from PyPI) on loopback, enforcing SigV4 presigned
/// URLs and Content-MD5 like COS does.
struct Nanio {
    child: std::process::Child,
    port: u16,
}

impl Drop for Nanio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_nanio(dir: &Path) -> Nanio {
    let port = free_port();
    let data = dir.join("nanio-data");
    std::fs::create_dir_all(data.join("devices")).unwrap();
    // scripts/setup.sh installs it into target/tools-venv; NANIO overrides.
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools-venv/bin/nanio");
    let bin = std::env::var_os("NANIO")
        .map(std::path::PathBuf::from)
        .unwrap_or(venv);
    let child = std::process::Command::new(&bin)
        .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(&data)
        .env("NANIO_ACCESS_KEY", "resagent-test")
        .env("NANIO_SECRET_KEY", "resagent-test-secret")
        .stdout(std::fs::File::create(dir.join("nanio.out")).unwrap())
        .stderr(std::fs::File::create(dir.join("nanio.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/setup.sh installs nanio)", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nanio did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    Nanio { child, port }
}

#[test]
fn uploads_work_against_a_third_party_s3_server_that_checks_content_md5() {
    let mut rig = Rig::new();
    let s3 = start_nanio(rig.path());
    let target = resagent_platform::s3::S3Target {
        endpoint: format!("http://127.0.0.1:{}", s3.port),
        bucket: "devices".into(),
        region: "us-east-1".into(),
        access_key: "resagent-test".into(),
        secret_key: "resagent-test-secret".into(),
    };
    // The server really enforces Content-MD5: a wrong digest is refused.
    let date = resagent_platform::s3::amz_date(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let probe = target.presign("PUT", "probe", &date, 300);
    let wrong = std::process::Command::new("curl")
        .args([
            "-s",
            "-X",
            "PUT",
            "-H",
            "Content-MD5: AAAAAAAAAAAAAAAAAAAAAA==",
        ])
        .args(["--data-binary", "hello", "-w", "\n%{http_code}", &probe])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&wrong.stdout);
    assert!(
        said.ends_with("\n400") && said.contains("BadDigest"),
        "nanio accepted a wrong Content-MD5: {said}"
    );
    rig.platform.use_s3(target.clone());
    let agent = rig.start_agent();
    let src = rig.make_file("field.rec", 3 << 20, 41);
    rig.cli(&["upload", src.to_str().unwrap()]);
    upload_done(&rig, &agent, "field.rec");
    let get = target.presign("GET", &format!("{PRODUCT}/{DEVICE}/field.rec"), &date, 300);
    let got = std::process::Command::new("curl")
        .args(["-sf", &get])
        .output()
        .unwrap();
    assert!(
        got.status.success(),
        "GET from S3 failed; agent log:\n{}\nnanio log:\n{}",
        agent.log_text(),
        std::fs::read_to_string(rig.path().join("nanio.log")).unwrap_or_default()
            + &std::fs::read_to_string(rig.path().join("nanio.out")).unwrap_or_default()
    );
    let stored = got.stdout;
    assert_eq!(
        stored,
        std::fs::read(&src).unwrap(),
        "the S3 server holds the same bytes"
    );
    wait_until("outbox empty", || waiting(&rig).is_empty());
    assert!(
        !agent.log_text().contains("X-Amz-Signature"),
        "signature never logged"
    );
}

#[test]
fn an_entry_still_being_queued_is_not_read_or_sent_until_its_claim_ends() {
    let mut rig = Rig::new();
    let agent = rig.start_agent();
    std::fs::create_dir_all(outbox(&rig)).unwrap();
    // An entry under its name with no saved MD5, claimed (an exclusive flock) as
    // `resagent upload` claims one while it hashes it.
    let src = rig.make_file("claimed.bin", 300_000, 60);
    let entry = outbox(&rig).join("claimed.bin");
    std::fs::copy(&src, &entry).unwrap();
    let held = std::fs::File::open(&entry).unwrap();
    #[allow(deprecated)]
    nix::fcntl::flock(
        std::os::fd::AsRawFd::as_raw_fd(&held),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .unwrap();
    // A file queued after it goes first (its SIGUSR2 makes the daemon look at both).
    let other = rig.make_file("other.bin", 10_000, 61);
    let (code, out, err) = rig.cli(&["upload", other.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    upload_done(&rig, &agent, "other.bin");
    let announced = |name: &str| {
        rig.platform
            .received(&device())
            .iter()
            .any(|m| m["type"] == "create_upload_task" && m["name"] == name)
    };
    assert!(!announced("claimed.bin"), "{}", agent.log_text());
    assert!(!agent.log_text().contains("claimed.bin: no saved MD5"));
    // The claim ends with no MD5 saved (as when `upload` is killed): the daemon reads
    // the file for its MD5 and sends it, without another SIGUSR2.
    drop(held);
    upload_done(&rig, &agent, "claimed.bin");
    assert_eq!(stored(&rig, "claimed.bin").md5_hex, md5_hex(&src));
    assert!(agent
        .log_text()
        .contains("claimed.bin: no saved MD5; reading the file for it"));
}

/// Bytes of `path` in the page cache (util-linux's `fincore`).
fn cached_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux-extra) runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn a_large_upload_leaves_little_of_its_file_in_the_page_cache() {
    let mut rig = Rig::new();
    rig.config["max_bytes_per_s"] = serde_json::json!(16 << 20);
    let src = rig.make_file("big.log", 64 << 20, 62);
    let (code, out, err) = rig.cli(&["upload", src.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let entry = outbox(&rig).join("big.log");
    // The copy was written back and dropped as it went: its last rounds may stay (two of
    // 8 MiB, more when a slow disk made the flusher skip some), not the whole file.
    let after_copy = cached_bytes(&entry);
    assert!(
        after_copy <= 40 << 20,
        "{after_copy} bytes of 64 MiB cached after the copy"
    );
    // The PUT drops what it has sent: looked at well into it.
    let agent = rig.start_agent();
    wait_until("60 % sent", || {
        rig.journal()["upload"]["percent"].as_u64().unwrap_or(0) >= 60
    });
    let during = cached_bytes(&entry);
    assert!(
        during <= 24 << 20,
        "{during} bytes of 64 MiB cached at 60 % of the PUT"
    );
    upload_done(&rig, &agent, "big.log");
    assert_eq!(stored(&rig, "big.log").md5_hex, md5_hex(&src));
}

#[test]
fn a_batch_of_small_files_confirmed_at_once_goes_at_the_pace_of_the_link() {
    let mut rig = Rig::new();
    let agent = rig.start_agent();
    let files: Vec<_> = (0..10)
        .map(|i| rig.make_file(&format!("log-{i}.txt"), 1 << 20, 50 + i))
        .collect();
    let started = Instant::now();
    for f in &files {
        let (code, out, err) = rig.cli(&["upload", f.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}{err}");
    }
    wait_until("all ten uploaded", || {
        waiting(&rig).is_empty() && rig.platform.uploads().len() == 10
    });
    let took = started.elapsed();
    // Waiting out the 5 s window after each `done` would take over 50 s.
    assert!(
        took < Duration::from_secs(20),
        "ten 1 MiB uploads took {took:?}; log:\n{}",
        agent.log_text()
    );
}

#[test]
fn a_rejection_answering_done_keeps_the_file_and_it_is_retried() {
    let mut rig = Rig::new();
    rig.platform.reject_upload_done(1);
    let agent = rig.start_agent();
    let src = rig.make_file("rejected.csv", 300_000, 61);
    rig.cli(&["upload", src.to_str().unwrap()]);
    wait_with_log(&agent, "the rejection is seen", || {
        agent
            .log_text()
            .contains("rejected the upload (result_code -1)")
    });
    assert_eq!(waiting(&rig), ["rejected.csv"], "kept");
    wait_until("accepted on the retry", || waiting(&rig).is_empty());
    assert_eq!(rig.platform.uploads().len(), 2, "uploaded twice");
}

#[test]
fn no_verdict_within_5_s_and_the_upload_stands() {
    let mut rig = Rig::new();
    rig.platform.silent_on_upload_done(true);
    let agent = rig.start_agent();
    let src = rig.make_file("quiet.bin", 10_000, 62);
    rig.cli(&["upload", src.to_str().unwrap()]);
    upload_done(&rig, &agent, "quiet.bin");
    let after_done = Instant::now();
    wait_until("the upload stands", || waiting(&rig).is_empty());
    assert!(
        after_done.elapsed() >= Duration::from_secs(4),
        "removed {:?} after done, before the window ended",
        after_done.elapsed()
    );
    assert_eq!(rig.platform.uploads().len(), 1);
}

#[test]
fn an_uploaded_file_that_cannot_leave_a_read_only_outbox_is_not_sent_again() {
    let mut rig = Rig::new();
    let fs = Tmpfs::mount(&outbox(&rig), "16m");
    std::fs::write(outbox(&rig).join("stuck.log"), vec![7u8; 200_000]).unwrap();
    // An I/O error made the file system read-only (errors=remount-ro).
    fs.remount_ro();
    let agent = rig.start_agent();
    upload_done(&rig, &agent, "stuck.log");
    std::thread::sleep(Duration::from_secs(5));
    let path = upload_path(&device(), "stuck.log");
    let puts = || {
        rig.platform
            .uploads()
            .iter()
            .filter(|u| u.path == path)
            .count()
    };
    let dones = rig
        .platform
        .received(&device())
        .iter()
        .filter(|m| {
            m["type"] == "report_upload_progress"
                && m["name"] == "stuck.log"
                && m["progress"]["state"] == "done"
        })
        .count();
    assert_eq!((puts(), dones), (1, 1), "sent once, not in a loop");
    assert_eq!(rig.journal()["uploaded_kept"][0]["name"], "stuck.log");
    let (_, status, _) = rig.cli(&["status"]);
    assert!(
        status.contains("stuck.log") && status.contains("cannot leave the outbox"),
        "{status}"
    );
    // Writable again: the next look removes it, without sending it again.
    fs.remount_rw();
    agent.signal(nix::sys::signal::Signal::SIGUSR2);
    wait_until("the file left the outbox", || {
        !outbox(&rig).join("stuck.log").exists()
    });
    wait_until("the record is gone", || {
        rig.journal()["uploaded_kept"].is_null()
    });
    assert_eq!(puts(), 1);
}

#[test]
fn sighup_during_a_long_put_reaches_the_upload_thread() {
    let mut rig = Rig::new();
    rig.config["max_bytes_per_s"] = serde_json::json!(2 << 20);
    let long = rig.make_file("a-long.log", 16 << 20, 41);
    let next = rig.make_file("b-next.log", 1000, 42);
    let mut agent = rig.start_agent();
    let (code, out, err) = rig.cli(&["upload", long.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    // The PUT takes ~8 s; its `uploading` reports (one per 128 KiB read) are answered
    // while it runs — more answers than the upload thread's queue holds.
    wait_until("80 answered uploading reports", || {
        rig.platform
            .received(&device())
            .iter()
            .filter(|m| m["type"] == "report_upload_progress" && m["name"] == "a-long.log")
            .count()
            >= 80
    });
    rig.config["allow_http"] = serde_json::json!(false);
    rig.config_path();
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    wait_log(&agent, "SIGHUP: configuration");
    let (code, out, err) = rig.cli(&["upload", next.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    upload_done(&rig, &agent, "a-long.log");
    let r = rig
        .platform
        .wait_for(&device(), T, |m| {
            m["type"] == "report_upload_progress"
                && m["name"] == "b-next.log"
                && m["progress"]["state"] != "uploading"
        })
        .unwrap_or_else(|| panic!("no final for b-next.log; log:\n{}", agent.log_text()));
    assert_eq!(state_of(&r), ("fail", -10), "allow_http off applies: {r}");
    assert!(msg(&r).contains("upload URL refused"), "{r}");
    assert_eq!(waiting(&rig), ["b-next.log"], "kept");
    stop(&mut agent);
}

#[test]
fn hard_linked_and_foreign_owned_entries_are_refused_and_kept() {
    use std::os::unix::fs::PermissionsExt;
    let mut rig = Rig::new();
    std::fs::create_dir_all(outbox(&rig)).unwrap();
    // A file only its owner may read, linked into the outbox by whoever can write there.
    let secret = rig.path().join("shadow");
    std::fs::write(&secret, b"root-only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::hard_link(&secret, outbox(&rig).join("linked.log")).unwrap();
    let foreign = outbox(&rig).join("foreign.log");
    std::fs::write(&foreign, b"someone else's").unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    let fine = rig.make_file("fine.log", 1000, 43);
    let mut agent = rig.start_agent();
    let (code, out, err) = rig.cli(&["upload", fine.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    upload_done(&rig, &agent, "fine.log");
    wait_log(&agent, "belongs to uid 65534");
    wait_log(&agent, "has 2 hard links");
    let announced: Vec<_> = rig
        .platform
        .received(&device())
        .into_iter()
        .filter(|m| m["type"] == "create_upload_task")
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(announced, ["fine.log"], "{}", agent.log_text());
    wait_until("only the refused entries kept", || {
        waiting(&rig) == ["foreign.log", "linked.log"]
    });
    assert_eq!(std::fs::read(&secret).unwrap(), b"root-only");

    // `--move` says so at once, the file not moved.
    let other = rig.path().join("other.log");
    std::fs::write(&other, b"x").unwrap();
    std::fs::hard_link(&other, rig.path().join("other-link.log")).unwrap();
    let (code, _, err) = rig.cli(&["upload", "--move", other.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("2 hard links"), "{err}");
    assert!(other.exists());
    stop(&mut agent);
}

/// The rig's agent talks to the broker through a relay that delays every byte by
/// `one_way` in each direction (a cellular link's latency); the relay lives as long as
/// the returned value.
fn via_slow_link(rig: &mut Rig, one_way: Duration) -> resagent_platform::rig::Relay {
    let broker_port: u16 = rig.broker.port;
    let relay = resagent_platform::rig::Relay::start_delayed(broker_port, one_way);
    rig.config["broker"] = serde_json::json!(format!("tcp://127.0.0.1:{}", relay.port));
    relay
}

/// Queues `n` files of `len` bytes named `f-NN.bin` through `resagent upload`.
fn queue_files(rig: &Rig, n: usize, len: u64) -> Vec<std::path::PathBuf> {
    (0..n)
        .map(|i| {
            let f = rig.make_file(&format!("f-{i:02}.bin"), len, 300 + i as u64);
            let (code, out, err) = rig.cli(&["upload", f.to_str().unwrap()]);
            assert_eq!(code, 0, "{out}{err}");
            f
        })
        .collect()
}

/// The upload messages `device` sent, as (type, name, state).
fn upload_messages(rig: &Rig) -> Vec<(String, String, String)> {
    rig.platform
        .received(&device())
        .iter()
        .filter(|m| {
            m["type"] == "create_upload_task"
                || (m["type"] == "report_upload_progress" && m["progress"]["state"] == "done")
        })
        .map(|m| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
            (s(&m["type"]), s(&m["name"]), s(&m["progress"]["state"]))
        })
        .collect()
}

#[test]
fn pipelined_uploads_keep_their_order_and_announce_while_a_file_is_sent() {
    let mut rig = Rig::new();
    let _link = via_slow_link(&mut rig, Duration::from_millis(100));
    let agent = rig.start_agent();
    let files = queue_files(&rig, 12, 256 << 10);
    wait_with_log(&agent, "all twelve uploaded", || {
        waiting(&rig).is_empty() && rig.platform.uploads().len() == 12
    });
    // Each file once, intact.
    for (i, f) in files.iter().enumerate() {
        let name = format!("f-{i:02}.bin");
        assert_eq!(stored(&rig, &name).md5_hex, md5_hex(f), "{name}");
    }
    let msgs = upload_messages(&rig);
    let dones: Vec<&str> = msgs
        .iter()
        .filter(|m| m.2 == "done")
        .map(|m| m.1.as_str())
        .collect();
    let names: Vec<String> = (0..12).map(|i| format!("f-{i:02}.bin")).collect();
    assert_eq!(
        dones, names,
        "done reports in the outbox's order, once each"
    );
    // The next files were announced before the one ahead of them reported done: the
    // announce round trips overlap the sending.
    let at = |kind: &str, name: &str| {
        msgs.iter()
            .position(|m| m.1 == name && (m.0 == kind || m.2 == kind))
            .unwrap_or_else(|| panic!("no {kind} of {name}: {msgs:?}"))
    };
    assert!(
        at("create_upload_task", "f-03.bin") < at("done", "f-01.bin"),
        "announced ahead: {msgs:?}"
    );
}

#[test]
fn a_rejection_mid_window_keeps_that_file_only_and_it_is_retried() {
    let mut rig = Rig::new();
    rig.platform.reject_upload_done_of("f-02.bin");
    let _link = via_slow_link(&mut rig, Duration::from_millis(50));
    let agent = rig.start_agent();
    queue_files(&rig, 6, 64 << 10);
    wait_with_log(&agent, "the rejection is seen", || {
        agent.log_text().contains(
            "upload of f-02.bin failed (the platform rejected the upload (result_code -1))",
        )
    });
    wait_with_log(&agent, "all six uploaded", || waiting(&rig).is_empty());
    let puts = rig.platform.uploads();
    let count = |name: &str| {
        let path = upload_path(&device(), name);
        puts.iter().filter(|u| u.path == path).count()
    };
    assert_eq!(count("f-02.bin"), 2, "the rejected file is sent again");
    for i in [0, 1, 3, 4, 5] {
        assert_eq!(count(&format!("f-{i:02}.bin")), 1, "f-{i:02}.bin once");
    }
    let dones: Vec<String> = upload_messages(&rig)
        .into_iter()
        .filter(|m| m.2 == "done")
        .map(|m| m.1)
        .collect();
    assert_eq!(
        &dones[..6],
        ["f-00.bin", "f-01.bin", "f-02.bin", "f-03.bin", "f-04.bin", "f-05.bin"],
        "{dones:?}"
    );
    assert_eq!(dones[6], "f-02.bin", "{dones:?}");
}

#[test]
fn a_kill_mid_window_loses_nothing_and_sends_again_only_what_was_in_flight() {
    let mut rig = Rig::new();
    let _link = via_slow_link(&mut rig, Duration::from_millis(100));
    let mut agent = rig.start_agent();
    let files = queue_files(&rig, 16, 128 << 10);
    wait_with_log(&agent, "five done", || {
        upload_messages(&rig)
            .iter()
            .filter(|m| m.2 == "done")
            .count()
            >= 5
    });
    agent.kill9();
    let before = rig.platform.uploads().len();
    let agent = rig.spawn_agent();
    wait_with_log(&agent, "all sixteen uploaded", || waiting(&rig).is_empty());
    for (i, f) in files.iter().enumerate() {
        let name = format!("f-{i:02}.bin");
        assert_eq!(stored(&rig, &name).md5_hex, md5_hex(f), "{name}");
    }
    // Sent again at most: the file whose PUT ran and the four whose verdicts were owed.
    let puts = rig.platform.uploads().len();
    assert!(
        puts <= 16 + 5,
        "{puts} PUTs for 16 files ({before} before the kill)"
    );
}
