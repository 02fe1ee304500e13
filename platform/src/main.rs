//! `resagent-platform`: runs the local platform for a demo or a vendor's desk — the MQTT
//! peer and the HTTP storage — offering the given files as download tasks to one device
//! and printing every report the device sends. The page at the HTTP address shows them live.

use resagent_platform::Platform;
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "\
resagent-platform — a local stand-in for Tencent Cloud IoT Hub's resource management

Usage:
  resagent-platform --device PRODUCT/DEVICE[:SECRET] [--broker tcp://127.0.0.1:1883]
                    [--mqtt-listen ADDR] [--listen 127.0.0.1:8080] [--public-url URL]
                    [--uploads DIR] [--offer FILE]... [--once] [--reports FILE]

--mqtt-listen ADDR (e.g. 127.0.0.1:1884) is where the device connects: the platform
checks its signed login there as Tencent does — client id PRODUCTDEVICE, username
PRODUCTDEVICE;SDKAPPID;CONNID;EXPIRY, password HMAC-SHA256/SHA1 of the username keyed
with the base64-decoded SECRET — refuses a wrong, expired or malformed one (CONNACK 4;
5 for another device) and relays the rest to --broker. It needs the SECRET in --device.
Without it the device connects to --broker directly and nothing checks its login.

Each --offer FILE becomes a download task (named after the file), one after the other
as the device ends each (`done` or `fail`: a failure moves on too, so failures can be
tried first): pushed as a `download` message when it is offered, and answered to every
get_download_task meanwhile. The last one stays on offer after its final report, as on
Tencent's platform (a device that asks again after a `fail` gets it again); --once drops
it then. Uploads the device makes are stored in DIR (default
./platform-uploads). --reports FILE appends every report the device sends to FILE, one
JSON object a line (the page at the HTTP address shows them too).

File and upload URLs carry a signed token (valid 24 h for a task, 15 min for an
upload), checked as Tencent's storage checks its own: a request without it is 403.
URLs name --public-url (e.g. http://gateway.local:8080) when given; else the listening
address (a device cannot dial 0.0.0.0: listening on all addresses, they name this
host's outbound address), with no port when it is 80.";

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let args = match parse() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("resagent-platform: {msg}\n\n{USAGE}");
            std::process::exit(2);
        }
    };
    let platform = match Platform::start(&args.broker, &args.listen, args.uploads.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("resagent-platform: cannot start: {e}");
            std::process::exit(1);
        }
    };
    // The front keeps running for as long as `main` does.
    let _front = match &args.mqtt_listen {
        Some(listen) => {
            let secrets = std::collections::HashMap::from([(
                args.device.replace('/', ""),
                args.secret.clone().unwrap_or_default(),
            )]);
            match resagent_platform::front::Front::start(listen, &args.broker_addr, secrets) {
                Ok(f) => {
                    println!(
                        "device logins checked on {listen}, relayed to {}",
                        args.broker
                    );
                    Some(f)
                }
                Err(e) => {
                    eprintln!("resagent-platform: --mqtt-listen {listen}: {e}");
                    std::process::exit(1);
                }
            }
        }
        None => {
            println!(
                "logins not checked: the device connects to {} directly",
                args.broker
            );
            None
        }
    };
    if let Some(u) = &args.public_url {
        platform.storage().set_public_url(u);
    }
    let tasks: Vec<_> = args
        .offers
        .iter()
        .map(|f| {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            platform.task_for(&name, f)
        })
        .collect();
    println!(
        "storage at {}/ — open it in a browser to watch the device",
        platform.storage().base_url()
    );
    let mut reports = match &args.reports {
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("resagent-platform: --reports {}: {e}", path.display());
                std::process::exit(1);
            }
        },
        None => None,
    };
    let mut written = 0;
    let mut next = 0;
    if let Some(t) = tasks.first() {
        // Pushed once the platform's own session is up: a push before it is lost, and a
        // device that asked before the platform subscribed asks again only after its
        // poll interval (an hour by default).
        if !platform.wait_connected(Duration::from_secs(30)) {
            eprintln!("resagent-platform: the broker does not answer yet; offering anyway");
        }
        offer(&platform, &args.device, t);
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(out) = reports.as_mut() {
            let received = platform.received(&args.device);
            for m in received.iter().skip(written) {
                let is_report = m["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("report_") && !t.ends_with("_rsp"));
                if is_report {
                    use std::io::Write;
                    // One write per line: a reader never sees half a report.
                    let _ = out.write_all(format!("{m}\n").as_bytes());
                }
            }
            written = received.len();
        }
        if let Some(t) = tasks.get(next) {
            let name = t["name"].as_str().unwrap_or("");
            let ended = platform.reports_for(&args.device, name).iter().any(|m| {
                let state = &m["progress"]["state"];
                state == "done" || state == "fail"
            });
            if ended {
                next += 1;
                match tasks.get(next) {
                    Some(t) => offer(&platform, &args.device, t),
                    // As Tencent's platform does, the last task stays on offer — a device
                    // that asks again after a failure gets it again — unless --once.
                    None if args.once => platform.offer(&args.device, serde_json::json!({})),
                    None => {}
                }
            }
        }
    }
}

/// Answers `get_download_task` with `task` from now on, and pushes it at once for a
/// device that asked before the task was ready (a push is handled like an answer).
fn offer(platform: &Platform, device: &str, task: &serde_json::Value) {
    platform.offer(device, task.clone());
    if let Err(e) = platform.push(device, task) {
        log::info!(
            "push of {} not sent ({e}); the device gets it when it asks",
            task["name"]
        );
    }
}

struct Args {
    /// `PRODUCT/DEVICE`.
    device: String,
    /// The device secret (base64), for checking its login on `mqtt_listen`.
    secret: Option<String>,
    broker: String,
    /// `HOST:PORT` of `broker` (the front relays to it).
    broker_addr: String,
    /// Where devices connect with their login checked.
    mqtt_listen: Option<String>,
    listen: String,
    public_url: Option<String>,
    uploads: PathBuf,
    offers: Vec<PathBuf>,
    reports: Option<PathBuf>,
    /// Drop the last offer after its final report (else it stays, as on Tencent's).
    once: bool,
}

fn parse() -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_env();
    let mut a = Args {
        device: String::new(),
        secret: None,
        broker: "tcp://127.0.0.1:1883".into(),
        broker_addr: String::new(),
        mqtt_listen: None,
        listen: "127.0.0.1:8080".into(),
        public_url: None,
        uploads: PathBuf::from("platform-uploads"),
        offers: Vec::new(),
        reports: None,
        once: false,
    };
    let text = |p: &mut lexopt::Parser| -> Result<String, String> {
        p.value()
            .map_err(|e| e.to_string())?
            .into_string()
            .map_err(|_| "not UTF-8".to_string())
    };
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("device") => {
                let d = text(&mut p)?;
                // The secret is base64: never a `:`.
                match d.split_once(':') {
                    Some((dev, secret)) => {
                        use base64::Engine;
                        if base64::engine::general_purpose::STANDARD
                            .decode(secret)
                            .is_err()
                        {
                            return Err(
                                "--device PRODUCT/DEVICE:SECRET: the secret is not base64".into()
                            );
                        }
                        a.device = dev.to_string();
                        a.secret = Some(secret.to_string());
                    }
                    None => a.device = d,
                }
            }
            Long("mqtt-listen") => a.mqtt_listen = Some(text(&mut p)?),
            Long("broker") => a.broker = text(&mut p)?,
            Long("listen") => a.listen = text(&mut p)?,
            Long("public-url") => {
                let u = text(&mut p)?;
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(format!("--public-url {u}: expected http://HOST[:PORT]"));
                }
                a.public_url = Some(u)
            }
            Long("uploads") => a.uploads = PathBuf::from(text(&mut p)?),
            Long("offer") => {
                let f = PathBuf::from(text(&mut p)?);
                if !f.is_file() {
                    return Err(format!("--offer {}: not a readable file", f.display()));
                }
                a.offers.push(f)
            }
            Long("reports") => a.reports = Some(PathBuf::from(text(&mut p)?)),
            Long("once") => a.once = true,
            Long("help") | Short('h') => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    if !a.device.contains('/') {
        return Err("--device PRODUCT/DEVICE is required".into());
    }
    if a.mqtt_listen.is_some() {
        if a.secret.is_none() {
            return Err(
                "--mqtt-listen checks the device's login: give --device PRODUCT/DEVICE:SECRET"
                    .into(),
            );
        }
        a.broker_addr = a
            .broker
            .strip_prefix("tcp://")
            .filter(|hp| {
                hp.rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            })
            .map(str::to_string)
            .ok_or_else(|| format!("--broker {}: with --mqtt-listen, tcp://HOST:PORT", a.broker))?;
    }
    Ok(a)
}
