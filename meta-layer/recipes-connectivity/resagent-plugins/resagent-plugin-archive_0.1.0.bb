SUMMARY = "resagent example install plugin: unpacks .tar/.tar.gz resources atomically"
DESCRIPTION = "Unpacks NAME.tar.gz, NAME.tgz or NAME.tar resources into the folder \
               resource_dir/NAME and swaps it in with one renameat2(RENAME_EXCHANGE). Written in Rust."
HOMEPAGE = "https://cloud.tencent.com/product/iothub"
SECTION = "net"
CVE_PRODUCT = "resagent"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=1a54421cbcd203b6e3154e7f2a8460b7"

require recipes-connectivity/resagent/resagent-source.inc
require recipes-connectivity/resagent/resagent-crates.inc

inherit cargo resagent-plugin

# The plugin is a member of resagent's workspace: its lock file is the workspace's.
CARGO_MANIFEST_PATH = "${S}/plugins/archive/Cargo.toml"
CARGO_LOCK_PATH = "${S}/Cargo.lock"
RESAGENT_PLUGIN_ORDER = "30"
RESAGENT_PLUGIN_SO = "${B}/target/${CARGO_TARGET_SUBDIR}/libresagent_archive.so"
