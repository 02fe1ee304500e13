SUMMARY = "resagent install plugin: hands *.raucb bundles to RAUC"
DESCRIPTION = "Installs *.raucb resources delivered by resagent through RAUC's D-Bus API \
               (InstallBundle, Progress, LastError), and confirms a rebooted update when \
               the slot it wrote is the one that booted, marking it good."
HOMEPAGE = "https://cloud.tencent.com/product/iothub"
SECTION = "net"
CVE_PRODUCT = "resagent"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=1a54421cbcd203b6e3154e7f2a8460b7"

require recipes-connectivity/resagent/resagent-source.inc

# GIO (glib-2.0) is the D-Bus library RAUC itself is built on.
DEPENDS += "glib-2.0"
RDEPENDS:${PN} += "rauc"

# The bus RAUC's service is on: "system", "session" or a D-Bus address.
RESAGENT_RAUC_BUS ?= "system"

RESAGENT_PLUGIN_ORDER = "40"
# How long one call may take: an install is followed to RAUC's own end.
RESAGENT_RAUC_TIMEOUT ?= "3600"
RESAGENT_PLUGIN_CONFIG = '{"bus": "${RESAGENT_RAUC_BUS}", "timeout_s": ${RESAGENT_RAUC_TIMEOUT}}'
# A *.raucb is never placed by the default installer, even if this plugin does not load.
RESAGENT_PLUGIN_CLAIMS = "*.raucb"

inherit pkgconfig resagent-plugin

do_compile() {
    ${CC} ${CFLAGS} ${LDFLAGS} -std=gnu99 -shared -fPIC -I${S}/plugins/include \
        -o ${RESAGENT_PLUGIN_SO} ${S}/plugins/rauc/rauc.c \
        $(pkg-config --cflags --libs gio-2.0)
}
