//! The validate/install chain (docs/plugins.md, "How the agent calls them"), beside the
//! default installer it falls back to: every validate plugin is asked in file-name
//! order (a failure rejects the resource), then the first install plugin that does not
//! decline owns it (its failure fails the install); when all decline, the default
//! installer places the file. Each call runs in a child process (`plugin::call`).

use super::{discard_staging, install_default, Paths};
use crate::fsutil::FsError;
use crate::plugin::{self, CallOutcome, Op, Plugin, PluginFailure, PluginSet, ResourceArgs};
use crate::shutdown::Shutdown;
use std::path::Path;
use std::time::Duration;

/// Who installed a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InstalledBy {
    /// The install plugin of this name.
    Plugin(String),
    /// The default installer, at `resource_dir/NAME`.
    Default,
}

impl InstalledBy {
    /// The plugin's name, as the journal records it (none for the default installer).
    pub(crate) fn plugin(&self) -> Option<String> {
        match self {
            InstalledBy::Plugin(p) => Some(p.clone()),
            InstalledBy::Default => None,
        }
    }
}

/// Why the chain did not install.
#[derive(Debug)]
pub(crate) enum ChainStop {
    /// A validate plugin refused (or crashed, or timed out): -9.
    Rejected(PluginFailure),
    /// The install plugin that took the resource failed: -5.
    PluginFailed(PluginFailure),
    /// The default installer could not place the file: -5.
    DefaultFailed(FsError),
    /// The agent is stopping: the chain runs again after the restart.
    Interrupted,
}

/// What the chain needs to call plugins.
pub(crate) struct Chain<'a> {
    pub(crate) plugins: &'a PluginSet,
    /// resagent's own executable, re-run as each call's child.
    pub(crate) exe: &'a Path,
    pub(crate) timeout: Duration,
    pub(crate) shutdown: &'a Shutdown,
}

impl Chain<'_> {
    /// Validates and installs the verified file at `paths.staging`; `on_progress` gets
    /// the plugins' progress (0..100).
    pub(crate) fn run(
        &self,
        resource: &ResourceArgs,
        paths: &Paths,
        mut on_progress: impl FnMut(u8),
    ) -> Result<InstalledBy, ChainStop> {
        for p in self.plugins.validators() {
            match self.call(p, Op::Validate, resource, &mut on_progress) {
                CallOutcome::Ok | CallOutcome::Declined => {}
                CallOutcome::Interrupted => return Err(ChainStop::Interrupted),
                CallOutcome::Failed(f) => return Err(ChainStop::Rejected(f)),
            }
        }
        for p in self.plugins.installers() {
            match self.call(p, Op::Install, resource, &mut on_progress) {
                CallOutcome::Declined => {}
                CallOutcome::Ok => {
                    discard_staging(&paths.staging);
                    return Ok(InstalledBy::Plugin(p.name.clone()));
                }
                CallOutcome::Interrupted => return Err(ChainStop::Interrupted),
                CallOutcome::Failed(f) => return Err(ChainStop::PluginFailed(f)),
            }
        }
        install_default(paths)
            .map(|()| InstalledBy::Default)
            .map_err(ChainStop::DefaultFailed)
    }

    fn call(
        &self,
        plugin: &Plugin,
        op: Op,
        resource: &ResourceArgs,
        on_progress: &mut impl FnMut(u8),
    ) -> CallOutcome {
        log::info!("{}: plugin {} {}", resource.name, plugin.name, op.as_str());
        let outcome = plugin::call(
            self.exe,
            plugin,
            op,
            resource,
            self.timeout,
            self.shutdown,
            |p| on_progress(p.min(100) as u8),
        );
        log::info!(
            "{}: plugin {} {}: {outcome:?}",
            resource.name,
            plugin.name,
            op.as_str()
        );
        outcome
    }
}
