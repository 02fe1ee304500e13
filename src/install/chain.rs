//! The validate/install chain (docs/plugins.md, "How the agent calls them"), beside the
//! default installer it falls back to: every validate plugin is asked in file-name
//! order (a failure rejects the resource), then the first install plugin that does not
//! decline owns it (its failure fails the install). A resource a plugin claims
//! (`resagent_plugin_claims`) never reaches the default installer: when its owner
//! declines or fails, the install fails. Only when no plugin claims it and all decline
//! does the default installer place the file. Each call runs in a child process.

use super::{discard_staging, install_default, Paths};
use crate::fsutil::FsError;
use crate::plugin::{CallOutcome, Op, Plugin, PluginFailure, PluginHost, PluginSet, ResourceArgs};

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

/// How the chain ended when nothing failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChainEnd {
    Installed(InstalledBy),
    /// The install plugin of this name wrote the image; it takes effect after a reboot.
    Pending {
        plugin: String,
    },
}

/// Why the chain did not install.
#[derive(Debug)]
pub(crate) enum ChainStop {
    /// A validate plugin refused (or crashed, or timed out): -9.
    Rejected(PluginFailure),
    /// The install plugin that took the resource failed: -5.
    PluginFailed(PluginFailure),
    /// The plugin claiming the resource declined it or exports no install: -5.
    ClaimedNotInstalled { plugin: String },
    /// The default installer could not place the file: -5.
    DefaultFailed(FsError),
    /// The agent is stopping: the chain runs again after the restart.
    Interrupted,
}

/// The plugins and how to call them.
pub(crate) struct Chain<'a> {
    pub(crate) plugins: &'a PluginSet,
    pub(crate) host: &'a PluginHost<'a>,
}

impl Chain<'_> {
    /// Validates and installs the verified file at `paths.staging`; `on_progress` gets
    /// the plugins' progress (0..100), `before_install` the name of each install plugin
    /// before it is called (the journal records it: asked after a cut).
    pub(crate) fn run(
        &self,
        resource: &ResourceArgs,
        paths: &Paths,
        mut on_progress: impl FnMut(u8),
        mut before_install: impl FnMut(&str),
    ) -> Result<ChainEnd, ChainStop> {
        for p in self.plugins.validators() {
            match self.call(p, Op::Validate, resource, &mut on_progress) {
                // (A 2 from validate is a failure: `PluginHost::call` maps it so.)
                CallOutcome::Ok | CallOutcome::Declined | CallOutcome::Pending => {}
                CallOutcome::Interrupted => return Err(ChainStop::Interrupted),
                CallOutcome::Failed(f) => return Err(ChainStop::Rejected(f)),
            }
        }
        let owner = self.plugins.owner_of(&resource.name);
        for p in self.plugins.installers() {
            before_install(&p.name);
            match self.call(p, Op::Install, resource, &mut on_progress) {
                CallOutcome::Declined if p.claims(&resource.name) => {
                    return Err(ChainStop::ClaimedNotInstalled {
                        plugin: p.name.clone(),
                    })
                }
                CallOutcome::Declined => {}
                CallOutcome::Ok => {
                    discard_staging(&paths.staging);
                    return Ok(ChainEnd::Installed(InstalledBy::Plugin(p.name.clone())));
                }
                CallOutcome::Pending => {
                    discard_staging(&paths.staging);
                    return Ok(ChainEnd::Pending {
                        plugin: p.name.clone(),
                    });
                }
                CallOutcome::Interrupted => return Err(ChainStop::Interrupted),
                CallOutcome::Failed(f) => return Err(ChainStop::PluginFailed(f)),
            }
        }
        if let Some(owner) = owner {
            return Err(ChainStop::ClaimedNotInstalled {
                plugin: owner.name.clone(),
            });
        }
        install_default(paths)
            .map(|()| ChainEnd::Installed(InstalledBy::Default))
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
        let outcome = self
            .host
            .call(plugin, op, resource, |p| on_progress(p.min(100) as u8));
        log::info!(
            "{}: plugin {} {}: {outcome:?}",
            resource.name,
            plugin.name,
            op.as_str()
        );
        outcome
    }
}
