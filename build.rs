//! Records when the agent was built (`RESAGENT_BUILD_UNIX`): a clock earlier than that is
//! "not set yet" (src/clock.rs). `SOURCE_DATE_EPOCH` (Yocto, reproducible builds) wins
//! over the build machine's clock, so two builds of one commit are identical.

fn main() {
    let unix = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    println!("cargo:rustc-env=RESAGENT_BUILD_UNIX={unix}");
    // Only this variable re-runs the script: the time of a build is a lower bound of
    // "now" on any device, and it need not move with every edit.
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}
