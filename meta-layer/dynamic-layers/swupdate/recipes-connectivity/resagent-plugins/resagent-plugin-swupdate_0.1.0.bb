SUMMARY = "resagent install plugin: hands *.swu images to SWUpdate"
DESCRIPTION = "Streams *.swu resources delivered by resagent into the SWUpdate daemon over \
               its IPC (libswupdate), shows SWUpdate's progress as burning, fails with \
               SWUpdate's own message, and confirms a rebooted update from SWUpdate's \
               update state (ustate)."
HOMEPAGE = "https://cloud.tencent.com/product/iothub"
SECTION = "net"
CVE_PRODUCT = "resagent"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=1a54421cbcd203b6e3154e7f2a8460b7"

require recipes-connectivity/resagent/resagent-source.inc

# libswupdate and its headers come with meta-swupdate's swupdate recipe; the plugin
# talks to the swupdate daemon, so the image needs it.
DEPENDS += "swupdate"
RDEPENDS:${PN} += "swupdate"

# Where SWUpdate's sockets are: meta-swupdate's default (its defconfig may set
# CONFIG_SOCKET_CTRL_PATH elsewhere; then set this to that folder).
RESAGENT_SWUPDATE_SOCKET_DIR ?= "/tmp"
# Whether an installed image takes effect after a reboot (then resagent reports done
# once the rebooted system confirms it; see plugins/swupdate/README.md).
RESAGENT_SWUPDATE_REBOOT ?= "true"

# How long one call may take: an install is followed to SWUpdate's own end, longer than
# resagent's plugin_timeout_s allows other plugins.
RESAGENT_SWUPDATE_TIMEOUT ?= "3600"

RESAGENT_PLUGIN_ORDER = "30"
RESAGENT_PLUGIN_CONFIG = '{"socket_dir": "${RESAGENT_SWUPDATE_SOCKET_DIR}", "reboot": ${RESAGENT_SWUPDATE_REBOOT}, "timeout_s": ${RESAGENT_SWUPDATE_TIMEOUT}}'
# A *.swu is never placed by the default installer, even if this plugin does not load.
RESAGENT_PLUGIN_CLAIMS = "*.swu"
# The hardened unit gives resagent a private /tmp: SWUpdate's sockets in the real /tmp
# are reachable only without it.
RESAGENT_PLUGIN_RW_PATHS = "${RESAGENT_SWUPDATE_SOCKET_DIR}"
RESAGENT_PLUGIN_SERVICE = "${@'PrivateTmp=no' if d.getVar('RESAGENT_SWUPDATE_SOCKET_DIR').startswith('/tmp') else ''}"

inherit resagent-plugin

do_compile() {
    ${CC} ${CFLAGS} ${LDFLAGS} -std=gnu99 -shared -fPIC -I${S}/plugins/include \
        -I${STAGING_INCDIR} -o ${RESAGENT_PLUGIN_SO} ${S}/plugins/swupdate/swupdate.c -lswupdate
}
