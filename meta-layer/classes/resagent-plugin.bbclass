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
#
# Optional, per plugin recipe:
#   RESAGENT_PLUGIN_CONFIG = '{"partition": "/dev/mmcblk0p3"}'
#       the plugin's plugin_config entry (a JSON object, checked at build time); it lands
#       in the image's /etc/resagent/config.json (resagent-rootfs.bbclass), where an entry
#       the image already has wins.
#   RESAGENT_PLUGIN_RW_PATHS = "/dev/mmcblk0p3 /data/firmware"
#       paths the plugin writes outside resagent's folders: the hardened resagent.service
#       (ProtectSystem=strict) would refuse them. They go into a drop-in,
#       resagent.service.d/ORDER-NAME.conf, as ReadWritePaths=-PATH (ignored if absent).
#   RESAGENT_PLUGIN_SERVICE = "PrivateTmp=no"
#       further [Service] settings for that drop-in, space-separated KEY=VALUE items
#       (values without spaces), e.g. to reach a daemon's socket in the real /tmp.
#   RESAGENT_PLUGIN_CLAIMS = "*.swu"
#       the shell patterns of the names only this plugin may install (what its
#       resagent_plugin_claims returns): resagent-rootfs.bbclass adds them to the image
#       config's "plugin_only", so such a name never reaches the default installer even
#       when the plugin does not load on the device.

# Where resagent looks for plugins (its plugin_dir).
RESAGENT_PLUGIN_DIR ?= "${libdir}/resagent/plugins"
# Two digits: lower runs first (10-firmware.so before 50-audio.so).
RESAGENT_PLUGIN_ORDER ?= "50"
# File name without the order prefix and the .so suffix.
RESAGENT_PLUGIN_NAME ?= "${@d.getVar('BPN').replace('resagent-plugin-', '')}"
# The built library, as the build step leaves it.
RESAGENT_PLUGIN_SO ?= "${B}/${RESAGENT_PLUGIN_NAME}.so"

RESAGENT_PLUGIN_CONFIG ?= ""
# The key of that entry: what the plugin's resagent_plugin_name() returns.
RESAGENT_PLUGIN_CONFIG_KEY ?= "${RESAGENT_PLUGIN_NAME}"
RESAGENT_PLUGIN_RW_PATHS ?= ""
RESAGENT_PLUGIN_SERVICE ?= ""
RESAGENT_PLUGIN_CLAIMS ?= ""

# scarthgap unpacks into WORKDIR, wrynose into UNPACKDIR.
UNPACKDIR_OR_WORKDIR = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

DEPENDS:append = " resagent"
FILES:${PN} += "${RESAGENT_PLUGIN_DIR}/*.so \
                ${datadir}/resagent/plugin-config.d \
                ${datadir}/resagent/plugin-only.d \
                ${systemd_system_unitdir}/resagent.service.d \
                "
RDEPENDS:${PN}:append = " resagent"

resagent_plugin_install() {
    install -d ${D}${RESAGENT_PLUGIN_DIR}
    install -m 0755 ${RESAGENT_PLUGIN_SO} \
        ${D}${RESAGENT_PLUGIN_DIR}/${RESAGENT_PLUGIN_ORDER}-${RESAGENT_PLUGIN_NAME}.so
}
resagent_plugin_install[doc] = "Installs RESAGENT_PLUGIN_SO into RESAGENT_PLUGIN_DIR with its order prefix, mode 0755"

python resagent_plugin_install_extras() {
    import json
    import os
    dest = d.getVar('D')
    name = d.getVar('RESAGENT_PLUGIN_NAME')
    order = d.getVar('RESAGENT_PLUGIN_ORDER')
    config = (d.getVar('RESAGENT_PLUGIN_CONFIG') or '').strip()
    if config:
        try:
            entry = json.loads(config)
        except ValueError as e:
            bb.fatal('RESAGENT_PLUGIN_CONFIG of %s is not JSON: %s' % (d.getVar('PN'), e))
        if not isinstance(entry, dict):
            bb.fatal('RESAGENT_PLUGIN_CONFIG of %s must be a JSON object' % d.getVar('PN'))
        folder = dest + d.getVar('datadir') + '/resagent/plugin-config.d'
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, '%s-%s.json' % (order, name))
        with open(path, 'w') as f:
            json.dump({d.getVar('RESAGENT_PLUGIN_CONFIG_KEY'): entry}, f, indent=2, sort_keys=True)
            f.write('\n')
        os.chmod(path, 0o644)
    claims = (d.getVar('RESAGENT_PLUGIN_CLAIMS') or '').split()
    if claims:
        folder = dest + d.getVar('datadir') + '/resagent/plugin-only.d'
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, '%s-%s' % (order, name))
        with open(path, 'w') as f:
            f.write('\n'.join(claims) + '\n')
        os.chmod(path, 0o644)
    paths = (d.getVar('RESAGENT_PLUGIN_RW_PATHS') or '').split()
    settings = (d.getVar('RESAGENT_PLUGIN_SERVICE') or '').split()
    systemd = bb.utils.contains('DISTRO_FEATURES', 'systemd', True, False, d)
    if systemd and (paths or settings):
        folder = dest + d.getVar('systemd_system_unitdir') + '/resagent.service.d'
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, '%s-%s.conf' % (order, name))
        with open(path, 'w') as f:
            f.write('# From %s (RESAGENT_PLUGIN_RW_PATHS, RESAGENT_PLUGIN_SERVICE)\n' % d.getVar('PN'))
            f.write('[Service]\n')
            for p in paths:
                f.write('ReadWritePaths=-%s\n' % p)
            for s in settings:
                f.write('%s\n' % s)
        os.chmod(path, 0o644)
}
resagent_plugin_install_extras[doc] = "Writes the plugin's plugin_config fragment, its plugin_only patterns and its resagent.service.d drop-in"
resagent_plugin_install_extras[vardeps] += "RESAGENT_PLUGIN_CONFIG RESAGENT_PLUGIN_RW_PATHS RESAGENT_PLUGIN_SERVICE RESAGENT_PLUGIN_CLAIMS"

# Defined here rather than exported (a class name with a dash cannot export functions):
# inherit resagent-plugin after a build class such as cargo, so this install wins.
do_install() {
    resagent_plugin_install
}
do_install[postfuncs] += "resagent_plugin_install_extras"
