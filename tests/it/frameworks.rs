//! The update-framework plugins end to end (docs/plugins.md, "Update frameworks"): the
//! real SWUpdate daemon and the real RAUC service from Debian's packages, driven by
//! `plugins/swupdate/swupdate.c` and `plugins/rauc/rauc.c` as compiled by a vendor,
//! inside the real resagent daemon, with mosquitto and the local platform. Images are
//! built here with the tools a vendor uses (openssl, cpio for `.swu`; `rauc bundle` for
//! `.raucb`) and signed by a CA made for the test. "Slots" are files: SWUpdate's raw
//! handler and RAUC's raw slot type write them as they would a partition.

use crate::common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(90);

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed signing certificate and its key in `dir` (`NAME.pem`, `NAME.key`).
fn make_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
        ])
        .arg("-subj")
        .arg(format!("/CN={name}"))
        .args(["-addext", "keyUsage=digitalSignature"])
        .args(["-addext", "extendedKeyUsage=emailProtection"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    (cert, key)
}

fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(59).wrapping_add(seed))
        .collect()
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------------------- SWUpdate

/// A running `swupdate` with its sockets in `run_dir`: board "test" revision 1.0, images
/// verified against `cert`, the default (in-memory) bootloader environment.
struct SwUpdate {
    child: Child,
    run_dir: PathBuf,
    log: PathBuf,
}

impl SwUpdate {
    fn start(dir: &Path, cert: &Path) -> SwUpdate {
        let run_dir = dir.join("swupdate-run");
        std::fs::create_dir_all(&run_dir).unwrap();
        let cfg = dir.join("swupdate.cfg");
        std::fs::write(
            &cfg,
            "globals :\n{\n\tverbose = true;\n\tloglevel = 6;\n};\n",
        )
        .unwrap();
        let log = dir.join("swupdate.log");
        let child = Command::new("swupdate")
            .arg("-f")
            .arg(&cfg)
            .args(["-H", "test:1.0", "-v", "-k"])
            .arg(cert)
            .env("TMPDIR", &run_dir)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("swupdate.err")).unwrap(),
            ))
            .spawn()
            .expect("swupdate (Debian package swupdate; scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !run_dir.join("sockinstctrl").exists() || !run_dir.join("swupdateprog").exists() {
            assert!(
                Instant::now() < deadline,
                "swupdate did not open its sockets: {}",
                std::fs::read_to_string(dir.join("swupdate.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SwUpdate {
            child,
            run_dir,
            log,
        }
    }

    /// SWUpdate's update state (`ustate`), asked over its IPC by a client compiled here.
    fn ustate(&self, dir: &Path) -> char {
        self.ustate_client(dir, None)
    }

    /// Sets `ustate` as the bootloader does after a fallback ('3': FAILED).
    fn set_ustate(&self, dir: &Path, state: char) {
        assert_eq!(self.ustate_client(dir, Some(state)), state);
    }

    fn ustate_client(&self, dir: &Path, set: Option<char>) -> char {
        let src = dir.join("ustate.c");
        let bin = dir.join("ustate");
        if !bin.exists() {
            std::fs::write(
                &src,
                "#include <stdio.h>\n#include <string.h>\n#include <network_ipc.h>\n\
                 int main(int argc, char **argv) { ipc_message m; memset(&m, 0, sizeof m);\n\
                 if (argc > 1) { m.type = SET_UPDATE_STATE; m.data.msg[0] = argv[1][0];\n\
                   if (ipc_send_cmd(&m) != 0 || m.type != ACK) return 1;\n\
                   memset(&m, 0, sizeof m); }\n\
                 m.type = GET_UPDATE_STATE;\n\
                 if (ipc_send_cmd(&m) != 0 || m.type != ACK) return 1;\n\
                 printf(\"%c\", m.data.msg[0]); return 0; }\n",
            )
            .unwrap();
            run(Command::new("cc")
                .arg(&src)
                .arg("-o")
                .arg(&bin)
                .arg("-lswupdate"));
        }
        let mut cmd = Command::new(&bin);
        if let Some(c) = set {
            cmd.arg(c.to_string());
        }
        let out = cmd.env("TMPDIR", &self.run_dir).output().unwrap();
        assert!(out.status.success(), "GET_UPDATE_STATE");
        String::from_utf8_lossy(&out.stdout)
            .chars()
            .next()
            .unwrap_or('?')
    }
}

impl Drop for SwUpdate {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// A `.swu`: sw-description (raw handler writing `device`, for hardware revision `hw`),
/// its CMS signature, the image — a newc cpio with CRC, as SWUpdate wants it.
fn make_swu(dir: &Path, ca: &(PathBuf, PathBuf), image: &[u8], hw: &str, device: &Path) -> Vec<u8> {
    make_swu_claiming(dir, ca, image, hw, device, None)
}

/// [`make_swu`] whose sw-description claims the image's SHA-256 is `sha` (a wrong one:
/// SWUpdate's "HASH mismatch").
fn make_swu_claiming(
    dir: &Path,
    ca: &(PathBuf, PathBuf),
    image: &[u8],
    hw: &str,
    device: &Path,
    sha: Option<&str>,
) -> Vec<u8> {
    let work = dir.join(format!("swu-{hw}-{}-{}", image.len(), sha.is_some()));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("rootfs.img"), image).unwrap();
    let sha = sha.map_or_else(|| sha256_hex(&work.join("rootfs.img")), str::to_string);
    std::fs::write(
        work.join("sw-description"),
        format!(
            "software =\n{{\n\tversion = \"1.0.1\";\n\thardware-compatibility = [ \"{hw}\" ];\n\
             \timages: (\n\t\t{{\n\t\t\tfilename = \"rootfs.img\";\n\t\t\tdevice = \"{}\";\n\
             \t\t\ttype = \"raw\";\n\t\t\tsha256 = \"{sha}\";\n\t\t}}\n\t);\n}}\n",
            device.display()
        ),
    )
    .unwrap();
    sign_and_pack(
        &work,
        ca,
        &["sw-description", "sw-description.sig", "rootfs.img"],
    )
}

/// A `.swu` like [`make_swu`] whose shell script sleeps `secs` after the image is
/// written (SWUpdate's `shellscript` handler runs it as `postinst`): an update that is
/// still running after its whole stream was taken.
fn make_slow_swu(
    dir: &Path,
    ca: &(PathBuf, PathBuf),
    image: &[u8],
    device: &Path,
    secs: u32,
) -> Vec<u8> {
    let work = dir.join(format!("swu-slow-{}", image.len()));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("rootfs.img"), image).unwrap();
    std::fs::write(
        work.join("post.sh"),
        format!("#!/bin/sh\nif [ \"$1\" = postinst ]; then sleep {secs}; fi\nexit 0\n"),
    )
    .unwrap();
    let (img_sha, sh_sha) = (
        sha256_hex(&work.join("rootfs.img")),
        sha256_hex(&work.join("post.sh")),
    );
    std::fs::write(
        work.join("sw-description"),
        format!(
            "software =\n{{\n\tversion = \"1.0.1\";\n\thardware-compatibility = [ \"1.0\" ];\n\
             \timages: (\n\t\t{{\n\t\t\tfilename = \"rootfs.img\";\n\t\t\tdevice = \"{}\";\n\
             \t\t\ttype = \"raw\";\n\t\t\tsha256 = \"{img_sha}\";\n\t\t}}\n\t);\n\
             \tscripts: (\n\t\t{{\n\t\t\tfilename = \"post.sh\";\n\t\t\ttype = \"shellscript\";\n\
             \t\t\tsha256 = \"{sh_sha}\";\n\t\t}}\n\t);\n}}\n",
            device.display()
        ),
    )
    .unwrap();
    sign_and_pack(
        &work,
        ca,
        &[
            "sw-description",
            "sw-description.sig",
            "rootfs.img",
            "post.sh",
        ],
    )
}

/// Signs `work/sw-description` with `ca` and packs `files` as SWUpdate's newc cpio.
fn sign_and_pack(work: &Path, ca: &(PathBuf, PathBuf), files: &[&str]) -> Vec<u8> {
    run(Command::new("openssl")
        .current_dir(work)
        .args([
            "cms",
            "-sign",
            "-in",
            "sw-description",
            "-out",
            "sw-description.sig",
        ])
        .arg("-signer")
        .arg(&ca.0)
        .arg("-inkey")
        .arg(&ca.1)
        .args(["-outform", "DER", "-nosmimecap", "-binary"]));
    let mut cpio = Command::new("cpio")
        .current_dir(work)
        .args(["-o", "-H", "crc"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cpio");
    use std::io::Write;
    let list: String = files.iter().map(|f| format!("{f}\n")).collect();
    cpio.stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    let out = cpio.wait_with_output().unwrap();
    assert!(out.status.success() && !out.stdout.is_empty(), "cpio");
    out.stdout
}

/// The SWUpdate plugin as a vendor builds it, in the rig's plugin_dir.
fn build_swupdate_plugin(rig: &Rig) {
    cc_linked(
        &project().join("plugins/swupdate/swupdate.c"),
        &plugin_dir(rig).join("30-swupdate.so"),
        &["-lswupdate".to_string()],
    );
}

fn swupdate_rig(reboot: bool) -> (Rig, SwUpdate, (PathBuf, PathBuf)) {
    let mut rig = Rig::new();
    let ca = make_ca(rig.path(), "swu-signer");
    let sw = SwUpdate::start(rig.path(), &ca.0);
    rig.config["plugin_config"] = json!({"swupdate": {
        "socket_dir": sw.run_dir, "reboot": reboot
    }});
    build_swupdate_plugin(&rig);
    (rig, sw, ca)
}

fn push(rig: &Rig, name: &str, bytes: &[u8]) {
    let (_, task) = rig.serve_bytes(name, bytes);
    rig.platform.push(&device(), &task).unwrap();
}

#[test]
fn swupdate_installs_a_good_image_byte_for_byte_and_refusals_fail_minus_5_with_its_message() {
    let (mut rig, sw, ca) = swupdate_rig(false);
    let slot = rig.path().join("slot-a.img");
    std::fs::write(&slot, b"old image").unwrap();
    let agent = rig.start_agent();

    // A good image: streamed into SWUpdate, written by its raw handler, `done`.
    let image = payload(1, 300_000);
    push(
        &rig,
        "rootfs-1.swu",
        &make_swu(rig.path(), &ca, &image, "1.0", &slot),
    );
    let r = rig.final_report(&agent, "rootfs-1.swu", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}\n{}", agent.log_text());
    assert_eq!(
        std::fs::read(&slot).unwrap(),
        image,
        "the slot holds the image"
    );
    let burning: Vec<i64> = rig
        .platform
        .received(&device())
        .iter()
        .filter(|m| m["name"] == "rootfs-1.swu" && m["progress"]["state"] == "burning")
        .filter_map(|m| m["progress"]["percent"].as_i64())
        .collect();
    assert!(
        burning.contains(&100) && burning.len() >= 2,
        "SWUpdate's progress shows as burning: {burning:?}"
    );
    assert!(
        !rig.resource("rootfs-1.swu").exists(),
        "a claimed image is never placed by the default installer"
    );

    // Another board's image: SWUpdate refuses it; its words reach the platform.
    let other = payload(2, 300_000);
    push(
        &rig,
        "rootfs-2.swu",
        &make_swu(rig.path(), &ca, &other, "9.9", &slot),
    );
    let r = rig.final_report(&agent, "rootfs-2.swu", T);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(
        msg(&r).contains("plugin swupdate") && msg(&r).contains("SW not compatible with hardware"),
        "{r}"
    );
    assert_eq!(
        std::fs::read(&slot).unwrap(),
        image,
        "the slot is untouched"
    );

    // A handler that fails (its device cannot be opened): SWUpdate's handler error.
    let broken = rig.path().join("no-such-dir/slot.img");
    push(
        &rig,
        "rootfs-3.swu",
        &make_swu(rig.path(), &ca, &other, "1.0", &broken),
    );
    let r = rig.final_report(&agent, "rootfs-3.swu", T);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(
        msg(&r).contains("cannot be opened") && msg(&r).contains("Installation failed"),
        "{r}"
    );

    // An image whose bytes are not the ones its signed description names: SWUpdate's
    // first error line reaches the platform whole, both hashes included.
    let wrong = "ab".repeat(32);
    push(
        &rig,
        "rootfs-5.swu",
        &make_swu_claiming(rig.path(), &ca, &other, "1.0", &slot, Some(&wrong)),
    );
    let r = rig.final_report(&agent, "rootfs-5.swu", T);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(
        msg(&r).contains("HASH mismatch") && msg(&r).contains(&wrong),
        "{r}\n{}",
        agent.log_text()
    );

    // An image signed by someone else: refused before anything is written.
    let stranger = make_ca(rig.path(), "stranger");
    push(
        &rig,
        "rootfs-4.swu",
        &make_swu(rig.path(), &stranger, &other, "1.0", &slot),
    );
    let r = rig.final_report(&agent, "rootfs-4.swu", T);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(msg(&r).contains("SWUpdate refused rootfs-4.swu"), "{r}");
    assert_eq!(
        std::fs::read(&slot).unwrap(),
        image,
        "the slot is untouched"
    );
    assert!(std::fs::read_to_string(&sw.log)
        .unwrap()
        .contains("SWUPDATE successful"));
}

fn wait_pending(rig: &Rig, agent: &Agent, name: &str) {
    nth_pending(rig, agent, name, 0);
}

#[test]
fn swupdate_pending_until_a_reboot_not_a_restart_then_confirmed_and_a_rollback_stays() {
    let (mut rig, sw, ca) = swupdate_rig(true);
    let slot = rig.path().join("slot-b.img");
    std::fs::write(&slot, b"").unwrap();
    let mut agent = rig.start_agent();
    let image = payload(7, 200_000);
    push(
        &rig,
        "rootfs-7.swu",
        &make_swu(rig.path(), &ca, &image, "1.0", &slot),
    );
    wait_pending(&rig, &agent, "rootfs-7.swu");
    assert_eq!(std::fs::read(&slot).unwrap(), image);
    assert_eq!(
        sw.ustate(rig.path()),
        '1',
        "SWUpdate marked the update INSTALLED"
    );

    // A restart of the agent (a crash, the watchdog, systemctl restart) is no reboot:
    // the old system runs, SWUpdate stays INSTALLED, nothing final is reported.
    let mut agent = restart_without_reboot(&mut rig, &mut agent, "rootfs-7.swu");
    assert_eq!(
        sw.ustate(rig.path()),
        '1',
        "ustate untouched: still INSTALLED"
    );

    // The reboot: SWUpdate's state says the update is installed; it is confirmed.
    stop(&mut agent);
    rig.reboot();
    let mut agent = rig.spawn_agent();
    let r = rig.final_report(&agent, "rootfs-7.swu", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}\n{}", agent.log_text());
    assert_eq!(sw.ustate(rig.path()), '0', "confirmed: ustate is OK again");
    assert!(rig.journal()["pending"].is_null());
    assert_eq!(
        rig.journal()["installed"]["rootfs-7.swu"]["plugin"],
        "swupdate"
    );

    // The next image does not boot: the bootloader falls back and sets ustate FAILED.
    let image8 = payload(8, 200_000);
    let (_, t8) = rig.serve_bytes(
        "rootfs-8.swu",
        &make_swu(rig.path(), &ca, &image8, "1.0", &slot),
    );
    rig.platform.push(&device(), &t8).unwrap();
    wait_pending(&rig, &agent, "rootfs-8.swu");
    stop(&mut agent);
    sw.set_ustate(rig.path(), '3');
    rig.reboot();
    let agent = rig.spawn_agent();
    let r = nth_final(&rig, &agent, "rootfs-8.swu", 0);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(msg(&r).contains("ustate=FAILED"), "{r}");
    // Offered again: refused without a transfer, saying it rolled back here.
    rig.platform.push(&device(), &t8).unwrap();
    let r = nth_final(&rig, &agent, "rootfs-8.swu", 1);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(msg(&r).contains("rolled back on this device"), "{r}");
    assert_eq!(rig.gets(&t8).0, 1, "not downloaded or flashed again");
}

#[test]
fn swupdate_downgrade_then_re_upgrade_and_a_later_rollback_are_flashed_not_reported() {
    let (mut rig, sw, ca) = swupdate_rig(false);
    let slot = rig.path().join("slot.img");
    std::fs::write(&slot, b"").unwrap();
    let agent = rig.start_agent();
    // One length: SWUpdate's raw handler writes over the slot without truncating it.
    let (v2, v1) = (payload(12, 150_000), payload(11, 150_000));
    let (_, t2) = rig.serve_bytes(
        "rootfs-1.0.2.swu",
        &make_swu(rig.path(), &ca, &v2, "1.0", &slot),
    );
    let (_, t1) = rig.serve_bytes(
        "rootfs-1.0.1.swu",
        &make_swu(rig.path(), &ca, &v1, "1.0", &slot),
    );
    for (t, name, n, image) in [
        (&t2, "rootfs-1.0.2.swu", 0, &v2),
        (&t1, "rootfs-1.0.1.swu", 0, &v1),
        (&t2, "rootfs-1.0.2.swu", 1, &v2),
    ] {
        rig.platform.push(&device(), t).unwrap();
        let r = nth_final(&rig, &agent, name, n);
        assert_eq!(
            state_of(&r),
            ("done", 0),
            "{name}: {r}\n{}",
            agent.log_text()
        );
        assert_eq!(
            &std::fs::read(&slot).unwrap(),
            image,
            "{name} is in the slot"
        );
    }
    assert_eq!(
        rig.gets(&t2).0,
        2,
        "1.0.2 downloaded and flashed again after 1.0.1"
    );
    // Offered again while it really runs: nothing to do.
    rig.platform.push(&device(), &t2).unwrap();
    assert_eq!(
        state_of(&nth_final(&rig, &agent, "rootfs-1.0.2.swu", 2)),
        ("done", 0)
    );
    assert_eq!(rig.gets(&t2).0, 2);
    // The bootloader rolled back later (ustate FAILED): the plugin says so, and the image
    // is flashed again instead of `done` from the record.
    sw.set_ustate(rig.path(), '3');
    std::fs::write(&slot, &v1).unwrap();
    rig.platform.push(&device(), &t2).unwrap();
    assert_eq!(
        state_of(&nth_final(&rig, &agent, "rootfs-1.0.2.swu", 3)),
        ("done", 0)
    );
    assert_eq!(rig.gets(&t2).0, 3);
    assert_eq!(std::fs::read(&slot).unwrap(), v2);
}

#[test]
fn swupdate_briefly_unreachable_at_install_is_asked_again() {
    let (mut rig, sw, ca) = swupdate_rig(false);
    let slot = rig.path().join("slot.img");
    std::fs::write(&slot, b"").unwrap();
    let agent = rig.start_agent();
    // SWUpdate is down (a restart of its service): its sockets are gone.
    drop(sw);
    for s in ["sockinstctrl", "swupdateprog"] {
        let _ = std::fs::remove_file(rig.path().join("swupdate-run").join(s));
    }
    let image = payload(21, 120_000);
    push(
        &rig,
        "late.swu",
        &make_swu(rig.path(), &ca, &image, "1.0", &slot),
    );
    wait_log(&agent, "late.swu: plugin swupdate install");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        finals(&rig, "late.swu").is_empty(),
        "still asking, not failed"
    );
    let _sw = SwUpdate::start(rig.path(), &rig.path().join("swu-signer.pem"));
    let r = rig.final_report(&agent, "late.swu", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}\n{}", agent.log_text());
    assert_eq!(std::fs::read(&slot).unwrap(), image);
}

// -------------------------------------------------------------------------------- RAUC

/// A private D-Bus bus and `rauc service` on it, with two file-backed raw slots
/// (rootfs.0 = A, rootfs.1 = B), a custom bootloader backend keeping its state in files,
/// and the booted slot given by `--override-boot-slot` (what a reboot changes).
struct Rauc {
    dir: PathBuf,
    bus: Child,
    service: Option<Child>,
    address: String,
}

impl Rauc {
    fn start(dir: &Path, keyring: &Path) -> Rauc {
        let dir = dir.join("rauc");
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(dir.join("boot")).unwrap();
        for s in ["slot-a.img", "slot-b.img"] {
            std::fs::write(dir.join(s), b"").unwrap();
        }
        let backend = dir.join("bootloader.sh");
        std::fs::write(
            &backend,
            format!(
                "#!/bin/sh\nd={}\ncase \"$1\" in\n\
                 get-primary) cat $d/primary 2>/dev/null || echo A ;;\n\
                 set-primary) echo \"$2\" > $d/primary ;;\n\
                 get-state) cat $d/state.$2 2>/dev/null || echo good ;;\n\
                 set-state) echo \"$3\" > $d/state.$2 ;;\n\
                 *) exit 1 ;;\nesac\n",
                dir.join("boot").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&backend, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            dir.join("system.conf"),
            format!(
                "[system]\ncompatible=resagent-test\nbootloader=custom\nmountprefix={d}/mnt\n\
                 data-directory={d}/data\n\n[handlers]\nbootloader-custom-backend={b}\n\n\
                 [keyring]\npath={k}\n\n\
                 [slot.rootfs.0]\ndevice={d}/slot-a.img\ntype=raw\nbootname=A\n\n\
                 [slot.rootfs.1]\ndevice={d}/slot-b.img\ntype=raw\nbootname=B\n",
                d = dir.display(),
                b = backend.display(),
                k = keyring.display()
            ),
        )
        .unwrap();
        let socket = dir.join("bus");
        let address = format!("unix:path={}", socket.display());
        let bus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address={address}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (Debian package dbus)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "dbus-daemon did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut r = Rauc {
            dir,
            bus,
            service: None,
            address,
        };
        r.boot("A");
        r
    }

    /// (Re)starts `rauc service` as if the device had booted slot `bootname`.
    fn boot(&mut self, bootname: &str) {
        if let Some(mut s) = self.service.take() {
            kill(&mut s);
        }
        let log = self.dir.join(format!("service-{bootname}.log"));
        let service = Command::new("rauc")
            .arg("service")
            .arg(format!("--conf={}", self.dir.join("system.conf").display()))
            .arg(format!("--override-boot-slot={bootname}"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("rauc (Debian packages rauc, rauc-service)");
        self.service = Some(service);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let st = self.status();
            if st["booted"] == bootname {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "rauc service did not come up: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops `rauc service` (a boot where it is not up yet).
    fn stop_service(&mut self) {
        if let Some(mut s) = self.service.take() {
            kill(&mut s);
        }
    }

    /// `rauc status` as JSON, through the service.
    fn status(&self) -> Value {
        let out = Command::new("rauc")
            .args(["status", "--detailed", "--output-format=json"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.address)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn slot(&self, which: &str) -> PathBuf {
        self.dir.join(which)
    }
}

impl Drop for Rauc {
    fn drop(&mut self) {
        if let Some(mut s) = self.service.take() {
            kill(&mut s);
        }
        kill(&mut self.bus);
    }
}

/// A plain bundle of one raw image for `compatible`, signed with `ca`.
fn make_bundle(dir: &Path, ca: &(PathBuf, PathBuf), image: &[u8], compatible: &str) -> Vec<u8> {
    let content = dir.join(format!("bundle-{compatible}-{}", image.len()));
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("rootfs.img"), image).unwrap();
    std::fs::write(
        content.join("manifest.raucm"),
        format!(
            "[update]\ncompatible={compatible}\nversion=1.0.1\n\n[bundle]\nformat=plain\n\n\
             [image.rootfs]\nfilename=rootfs.img\n"
        ),
    )
    .unwrap();
    let out = dir.join(format!("{compatible}-{}.raucb", image.len()));
    let _ = std::fs::remove_file(&out);
    run(Command::new("rauc")
        .arg("bundle")
        .arg(format!("--cert={}", ca.0.display()))
        .arg(format!("--key={}", ca.1.display()))
        .arg(&content)
        .arg(&out));
    std::fs::read(&out).unwrap()
}

fn rauc_rig() -> (Rig, Rauc, (PathBuf, PathBuf)) {
    let mut rig = Rig::new();
    let ca = make_ca(rig.path(), "rauc-signer");
    let rauc = Rauc::start(rig.path(), &ca.0);
    rig.config["plugin_config"] = json!({"rauc": {"bus": rauc.address}});
    let out = plugin_dir(&rig).join("40-rauc.so");
    let gio = Command::new("pkg-config")
        .args(["--cflags", "--libs", "gio-2.0"])
        .output()
        .expect("pkg-config");
    assert!(
        gio.status.success(),
        "gio-2.0 (Debian package libglib2.0-dev)"
    );
    let libs: Vec<String> = String::from_utf8_lossy(&gio.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    cc_linked(&project().join("plugins/rauc/rauc.c"), &out, &libs);
    (rig, rauc, ca)
}

#[test]
fn rauc_installs_the_inactive_slot_pending_then_confirms_the_booted_slot_or_fails_a_fallback() {
    let (mut rig, mut rauc, ca) = rauc_rig();
    let mut agent = rig.start_agent();

    // Refusals first: RAUC's LastError reaches the platform; no slot is written.
    let stranger = make_ca(rig.path(), "stranger");
    let image = payload(3, 250_000);
    push(
        &rig,
        "unsigned.raucb",
        &make_bundle(rig.path(), &stranger, &image, "resagent-test"),
    );
    let r = rig.final_report(&agent, "unsigned.raucb", T);
    assert_eq!(state_of(&r), ("fail", -5), "{r}\n{}", agent.log_text());
    assert!(
        msg(&r).contains("plugin rauc") && msg(&r).contains("signature verification failed"),
        "{r}"
    );
    push(
        &rig,
        "other.raucb",
        &make_bundle(rig.path(), &ca, &image, "other-board"),
    );
    let r = rig.final_report(&agent, "other.raucb", T);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(msg(&r).contains("Compatible mismatch"), "{r}");
    assert!(std::fs::read(rauc.slot("slot-b.img")).unwrap().is_empty());

    // A good bundle: written to the inactive slot B, pending until the reboot.
    let (_, t1) = rig.serve_bytes(
        "os-1.raucb",
        &make_bundle(rig.path(), &ca, &image, "resagent-test"),
    );
    rig.platform.push(&device(), &t1).unwrap();
    wait_pending(&rig, &agent, "os-1.raucb");
    assert_eq!(std::fs::read(rauc.slot("slot-b.img")).unwrap(), image);
    assert!(std::fs::read(rauc.slot("slot-a.img")).unwrap().is_empty());
    assert_eq!(rauc.status()["boot_primary"], "rootfs.1", "B is next");
    let marked_b = rauc.dir.join("boot/state.B");
    let _ = std::fs::remove_file(&marked_b);

    // A restart of the agent before the reboot: A still runs. No false `fail`, B is not
    // marked, nothing final is reported.
    let mut agent = restart_without_reboot(&mut rig, &mut agent, "os-1.raucb");
    assert!(!marked_b.exists(), "B not marked on the old system");

    // The device boots B with RAUC's service not up yet: still pending, and the D-Bus
    // error is logged as RAUC shows it (no "GDBus.Error:…" remote prefix). Once RAUC is
    // up (and SIGUSR1 asks again): confirmed, B marked good.
    stop(&mut agent);
    rauc.stop_service();
    rig.reboot();
    let mut agent = rig.spawn_agent();
    wait_log(&agent, "RAUC GetSlotStatus: ");
    let log = agent.log_text();
    assert!(!log.contains("GDBus.Error"), "remote prefix kept:\n{log}");
    assert!(log.contains("de.pengutronix.rauc"), "{log}");
    assert!(
        rig.journal()["pending"]["os-1.raucb"].is_object(),
        "still pending"
    );
    rauc.boot("B");
    agent.signal(nix::sys::signal::Signal::SIGUSR1);
    let r = rig.final_report(&agent, "os-1.raucb", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}\n{}", agent.log_text());
    assert_eq!(std::fs::read_to_string(&marked_b).unwrap().trim(), "good");
    assert_eq!(rig.journal()["installed"]["os-1.raucb"]["plugin"], "rauc");
    // Offered again while it runs from B: RAUC's own state says so, no transfer.
    rig.platform.push(&device(), &t1).unwrap();
    assert_eq!(
        state_of(&nth_final(&rig, &agent, "os-1.raucb", 1)),
        ("done", 0)
    );
    assert_eq!(rig.gets(&t1).0, 1);

    // A second bundle goes to A; the device falls back to B: `fail`, not `done`.
    let image2 = payload(4, 250_000);
    let (_, t2) = rig.serve_bytes(
        "os-2.raucb",
        &make_bundle(rig.path(), &ca, &image2, "resagent-test"),
    );
    rig.platform.push(&device(), &t2).unwrap();
    wait_pending(&rig, &agent, "os-2.raucb");
    assert_eq!(std::fs::read(rauc.slot("slot-a.img")).unwrap(), image2);
    stop(&mut agent);
    rauc.boot("B");
    rig.reboot();
    let mut agent = rig.spawn_agent();
    let r = rig.final_report(&agent, "os-2.raucb", T);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(
        msg(&r).contains("booted rootfs.1, not rootfs.0") && msg(&r).contains("did not stay"),
        "{r}"
    );
    assert!(rig.journal()["pending"].is_null());
    // The rolled-back bundle offered again: refused, no transfer, no second flash.
    rig.platform.push(&device(), &t2).unwrap();
    let r = nth_final(&rig, &agent, "os-2.raucb", 1);
    assert_eq!(state_of(&r), ("fail", -5), "{r}");
    assert!(msg(&r).contains("rolled back on this device"), "{r}");
    assert_eq!(rig.gets(&t2).0, 1);

    // Downgrade and back: os-3 to A and booted, then os-1 again — the record names os-3
    // now, so RAUC is asked and os-1 is written again (to B), not reported from memory.
    let image3 = payload(5, 250_000);
    push(
        &rig,
        "os-3.raucb",
        &make_bundle(rig.path(), &ca, &image3, "resagent-test"),
    );
    wait_pending(&rig, &agent, "os-3.raucb");
    stop(&mut agent);
    rauc.boot("A");
    rig.reboot();
    let agent = rig.spawn_agent();
    assert_eq!(
        state_of(&rig.final_report(&agent, "os-3.raucb", T)),
        ("done", 0)
    );
    std::fs::write(rauc.slot("slot-b.img"), b"").unwrap();
    rig.platform.push(&device(), &t1).unwrap();
    nth_pending(&rig, &agent, "os-1.raucb", 1);
    assert_eq!(rig.gets(&t1).0, 2, "downloaded again");
    assert_eq!(
        std::fs::read(rauc.slot("slot-b.img")).unwrap(),
        image,
        "and written"
    );
}

#[test]
fn swupdate_still_installing_when_the_agent_died_is_followed_not_started_again() {
    let (mut rig, sw, ca) = swupdate_rig(false);
    let slot = rig.path().join("slot.img");
    std::fs::write(&slot, b"").unwrap();
    let image = payload(41, 100_000);
    let mut agent = rig.start_agent();
    let (_, t) = rig.serve_bytes(
        "slow.swu",
        &make_slow_swu(rig.path(), &ca, &image, &slot, 6),
    );
    rig.platform.push(&device(), &t).unwrap();
    // SWUpdate took the whole image and runs its script: the agent dies (a crash, the
    // OOM killer), its plugin child with it.
    let deadline = Instant::now() + T;
    while std::fs::read(&slot).unwrap() != image {
        assert!(Instant::now() < deadline, "the image reached the slot");
        std::thread::sleep(Duration::from_millis(50));
    }
    for child in children_of(agent.pid()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(-child),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    agent.kill9();
    let agent = rig.spawn_agent();
    wait_log(
        &agent,
        "SWUpdate still installs slow.swu from before; following it",
    );
    let r = rig.final_report(&agent, "slow.swu", T);
    assert_eq!(state_of(&r), ("done", 0), "{r}\n{}", agent.log_text());
    assert_eq!(rig.gets(&t).0, 1, "not downloaded again");
    let log = std::fs::read_to_string(&sw.log).unwrap();
    assert!(log.contains("SWUPDATE successful"), "{log}");
    assert_eq!(
        log.matches("Software Update started").count(),
        1,
        "one update, not a second one started: {log}"
    );
}
