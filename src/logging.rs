//! Logging setup: env_logger following `RUST_LOG` (default `info`), behind a filter that
//! keeps some crates' debug and trace records out whatever `RUST_LOG` says, because a
//! secret must never reach a log (docs/agent.md): at those levels `paho_mqtt` prints its
//! connect options, password included. (`http1`, ours, never logs a URL unredacted.)

use log::{LevelFilter, Log, Metadata, Record};

/// Targets whose records below `info` are dropped, and why: see the module comment.
const SECRET_LEAKING_TARGETS: &[&str] = &["paho_mqtt"];

struct Guarded {
    inner: env_logger::Logger,
}

fn allowed(metadata: &Metadata) -> bool {
    metadata.level() <= log::Level::Info
        || !SECRET_LEAKING_TARGETS
            .iter()
            .any(|t| metadata.target() == *t || metadata.target().starts_with(&format!("{t}::")))
}

impl Log for Guarded {
    fn enabled(&self, metadata: &Metadata) -> bool {
        allowed(metadata) && self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if allowed(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the logger; call once, first thing in `main`. Under journald
/// (`JOURNAL_STREAM` set) lines carry no timestamp of their own: the journal adds one.
pub(crate) fn init() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    builder.format_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.format_timestamp(None);
    }
    let inner = builder.build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Guarded { inner })).is_ok() {
        log::set_max_level(max.max(LevelFilter::Error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paho_debug_is_dropped_but_its_warnings_stay() {
        let m = |target, level| Metadata::builder().target(target).level(level).build();
        assert!(!allowed(&m("paho_mqtt::async_client", log::Level::Debug)));
        assert!(!allowed(&m("paho_mqtt", log::Level::Trace)));
        assert!(allowed(&m("paho_mqtt::client", log::Level::Warn)));
        assert!(allowed(&m("resagent::download", log::Level::Trace)));
        assert!(allowed(&m("paho_mqtt_sys_lookalike", log::Level::Debug)));
    }
}
