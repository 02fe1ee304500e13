//! Power cuts: the agent's `state_dir`, `resource_dir` and outbox live on a file system
//! that forgets every write not made durable (`tests/powercut/forgetfs.py`, a FUSE
//! passthrough keeping only what fsync made durable). Each round offers the next version
//! of two resources (one for the default installer, one for an install plugin) and
//! queues an upload, starts the real agent, cuts the power at a random instant (SIGKILL,
//! then the file system drops what was not synced), and checks what a device would find
//! on its next boot: each destination holds a whole version, the journal agrees with the
//! disk, no upload is lost. Then one last run must end `done`. 10 cuts by default (CI);
//! `RESAGENT_POWER_CUTS=100 cargo test --test powercut -- --nocapture` for the full run.
//! Needs root, /dev/fuse and Debian's python3-fusepy (scripts/setup.sh installs it).

use crate::common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(90);
const SIZE: u64 = 1 << 20;

/// Which of `versions` the file at `path` holds (None: absent); panics on anything else.
fn which(path: &Path, versions: &[Vec<u8>]) -> Option<usize> {
    let bytes = std::fs::read(path).ok()?;
    Some(
        versions
            .iter()
            .position(|v| *v == bytes)
            .unwrap_or_else(|| panic!("{} is torn ({} bytes)", path.display(), bytes.len())),
    )
}

/// Whether the journal agrees with `name` holding `md5` on disk.
fn agrees(journal: &Value, name: &str, md5: &str) -> bool {
    journal["installed"][name]["md5sum"] == md5
        || (journal["download"]["task"]["name"] == name
            && journal["download"]["task"]["md5sum"] == md5
            && journal["download"]["phase"] == "verified")
        || journal["pending"][name]["task"]["md5sum"] == md5
}

#[test]
fn power_cuts_leave_old_or_new_a_journal_that_agrees_and_no_lost_upload() {
    let rounds: u64 = std::env::var("RESAGENT_POWER_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut rig = Rig::new();
    let fs = ForgetFs::mount(&rig.path().join("backing"), &rig.path().join("disk"));
    let disk = fs.mount.clone();
    rig.config["state_dir"] = json!(disk.join("state"));
    rig.config["resource_dir"] = json!(disk.join("resources"));
    rig.config["outbox_dir"] = json!(disk.join("outbox"));
    rig.config["transfer_timeout_s"] = json!(10);
    // Downloads slow enough for cuts to land mid-transfer, yet each round can finish.
    let plugins = plugin_dir(&rig);
    cc(
        &project().join("tests/plugins/copyinstall.c"),
        &plugins.join("20-copy.so"),
        "-std=gnu99",
        &[],
    );
    // Two versions of each name, each served from a path of its own.
    let version = |rig: &Rig, name: &str, v: u64, size: u64| {
        let served = format!("{name}-v{v}");
        let file = rig.make_file(&served, size, 100 * (v + 1) + size % 97);
        let task = rig.platform.task_served_as(name, &file, &served);
        (file, task)
    };
    let k: Vec<(PathBuf, Value)> = (0..2).map(|v| version(&rig, "k.bin", v, SIZE)).collect();
    let c: Vec<(PathBuf, Value)> = (0..2).map(|v| version(&rig, "c.cfg", v, 200_000)).collect();
    for (_, t) in &k {
        rig.throttle(t, 8 << 20);
    }
    let k_bytes: Vec<Vec<u8>> = k.iter().map(|(p, _)| std::fs::read(p).unwrap()).collect();
    let c_bytes: Vec<Vec<u8>> = c.iter().map(|(p, _)| std::fs::read(p).unwrap()).collect();
    let mut gen = resagent_platform::rig::XorShift(0x9E37_79B9_7F4A_7C15);
    let mut queued: Vec<(String, String)> = Vec::new(); // (name, md5) of each upload
    let dev = device();
    for round in 0..rounds {
        let v = (round % 2) as usize;
        let up = rig.make_file(&format!("up-{round}.log"), 20_000 + round, 300 + round);
        let (code, out, err) = rig.cli(&["upload", up.to_str().unwrap()]);
        assert_eq!(code, 0, "round {round}: {out}{err}");
        queued.push((format!("up-{round}.log"), md5_hex(&up)));
        let agent = rig.spawn_agent_under(&[], "info");
        wait_log(&agent, "connected to");
        rig.platform.push(&dev, &k[v].1).unwrap();
        rig.platform.push(&dev, &c[v].1).unwrap();
        let instant = 300 + gen.next_u64() % 3700;
        std::thread::sleep(Duration::from_millis(instant));
        let log = agent.log_text();
        let phase = [
            "burning",
            "installed at",
            "installed by",
            "uploaded",
            "downloading",
        ]
        .iter()
        .filter(|p| log.contains(*p))
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
        // The cut: the process dies (plugin children with it), then the disk forgets.
        let mut agent = agent;
        for child in children_of(agent.pid()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        agent.kill9();
        fs.cut();

        let k_on_disk = which(&disk.join("resources/k.bin"), &k_bytes);
        let c_on_disk = which(&disk.join("resources/c.cfg"), &c_bytes);
        let journal: Value = match std::fs::read(disk.join("state/journal.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .unwrap_or_else(|e| panic!("round {round}: the journal is damaged: {e}")),
            Err(_) => Value::Null,
        };
        for (name, on_disk, tasks) in [("k.bin", k_on_disk, &k), ("c.cfg", c_on_disk, &c)] {
            if let Some(i) = on_disk {
                let md5 = tasks[i].1["md5sum"].as_str().unwrap();
                assert!(
                    agrees(&journal, name, md5),
                    "round {round}: {name} holds version {i} ({md5}), the journal says {journal}; log:\n{}",
                    agent.log_text()
                );
            }
        }
        let uploaded = uploaded_md5s(&rig);
        for (name, md5) in &queued {
            let kept = disk.join("outbox").join(name).is_file();
            assert!(
                kept || uploaded.contains(md5),
                "round {round}: {name} was lost (neither in the outbox nor uploaded)"
            );
        }
        if std::env::var_os("RESAGENT_POWER_CUTS_VERBOSE").is_some() {
            println!("{}", agent.log_text());
        }
        println!(
            "cut {round:3} at {instant:4} ms [{phase}]: k.bin {k_on_disk:?}, c.cfg {c_on_disk:?}, outbox {}",
            std::fs::read_dir(disk.join("outbox")).map(|d| d.count()).unwrap_or(0)
        );
    }

    // The next boot: the last offered versions end `done`, every upload arrives.
    let last = ((rounds + 1) % 2) as usize;
    let agent = rig.spawn_agent_under(&[], "info");
    wait_log(&agent, "connected to");
    rig.platform.push(&dev, &k[last].1).unwrap();
    rig.platform.push(&dev, &c[last].1).unwrap();
    let deadline = Instant::now() + T;
    loop {
        let j: Value = std::fs::read(disk.join("state/journal.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        let done = j["installed"]["k.bin"]["md5sum"] == k[last].1["md5sum"]
            && j["installed"]["c.cfg"]["md5sum"] == c[last].1["md5sum"]
            && j["download"].is_null();
        let uploaded = uploaded_md5s(&rig);
        let all_up = queued.iter().all(|(_, m)| uploaded.contains(m));
        if done && all_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not done after the cuts: {j}\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read(disk.join("resources/k.bin")).unwrap(),
        k_bytes[last]
    );
    assert_eq!(
        std::fs::read(disk.join("resources/c.cfg")).unwrap(),
        c_bytes[last]
    );
    let uploads = rig.platform.uploads();
    let mut distinct: Vec<&String> = uploads.iter().map(|u| &u.md5_hex).collect();
    distinct.sort();
    distinct.dedup();
    println!(
        "{} files queued, {} uploads received, {} of them again after a cut (the removal was not yet durable: allowed)",
        queued.len(),
        uploads.len(),
        uploads.len() - distinct.len()
    );
    let fetched: u64 = k.iter().map(|(_, t)| rig.gets(t).1).sum();
    let per_cut = fetched as f64 / (rounds + 1) as f64;
    println!(
        "{rounds} cuts: {fetched} bytes of k.bin fetched, {per_cut:.0} per round ({:.2} × the resource)",
        per_cut / SIZE as f64
    );
    assert!(
        per_cut < 2.0 * SIZE as f64,
        "resume works from what was synced: {per_cut:.0} bytes per round"
    );
}

/// The MD5 of every upload the platform stored.
fn uploaded_md5s(rig: &Rig) -> Vec<String> {
    rig.platform
        .uploads()
        .into_iter()
        .map(|u| u.md5_hex)
        .collect()
}
