# resagent-plugin.bbclass: a vendor's resagent plugin recipe is a source, a build step
# that produces a shared library, and `inherit resagent-plugin`.
#
#   SUMMARY = "Firmware checks for our board"
#   LICENSE = "CLOSED"
#   SRC_URI = "file://fwcheck.c"
#   RESAGENT_PLUGIN_ORDER = "10"
#   inherit resagent-plugin          (last, after any build class such as cargo)
#   do_compile() {
#       ${CC} ${CFLAGS} ${LDFLAGS} -shared -fPIC -o ${RESAGENT_PLUGIN_SO} ${UNPACKDIR_OR_WORKDIR}/fwcheck.c
#   }
#
# The class makes the plugin header available (it comes with resagent-dev), installs
# ${RESAGENT_PLUGIN_SO} as ${RESAGENT_PLUGIN_DIR}/${RESAGENT_PLUGIN_ORDER}-${RESAGENT_PLUGIN_NAME}.so
# with mode 0755 (resagent refuses plugins that group or others can write), and makes
# the package depend on resagent. The order prefix sets when it runs: validators in file
# name order, then the first installer that does not decline.

# Where resagent looks for plugins (its plugin_dir).
RESAGENT_PLUGIN_DIR ?= "${libdir}/resagent/plugins"
# Two digits: lower runs first (10-firmware.so before 50-audio.so).
RESAGENT_PLUGIN_ORDER ?= "50"
# File name without the order prefix and the .so suffix.
RESAGENT_PLUGIN_NAME ?= "${@d.getVar('BPN').replace('resagent-plugin-', '')}"
# The built library, as the build step leaves it.
RESAGENT_PLUGIN_SO ?= "${B}/${RESAGENT_PLUGIN_NAME}.so"

# scarthgap unpacks into WORKDIR, wrynose into UNPACKDIR.
UNPACKDIR_OR_WORKDIR = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

DEPENDS:append = " resagent"
FILES:${PN} += "${RESAGENT_PLUGIN_DIR}/*.so"
RDEPENDS:${PN}:append = " resagent"

resagent_plugin_install() {
    install -d ${D}${RESAGENT_PLUGIN_DIR}
    install -m 0755 ${RESAGENT_PLUGIN_SO} \
        ${D}${RESAGENT_PLUGIN_DIR}/${RESAGENT_PLUGIN_ORDER}-${RESAGENT_PLUGIN_NAME}.so
}
resagent_plugin_install[doc] = "Installs RESAGENT_PLUGIN_SO into RESAGENT_PLUGIN_DIR with its order prefix, mode 0755"

# Defined here rather than exported (a class name with a dash cannot export functions):
# inherit resagent-plugin after a build class such as cargo, so this install wins.
do_install() {
    resagent_plugin_install
}
