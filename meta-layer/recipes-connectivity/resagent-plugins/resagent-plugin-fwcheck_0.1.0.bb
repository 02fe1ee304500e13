SUMMARY = "resagent example validate plugin: RSFW firmware header and size checks"
DESCRIPTION = "Refuses *.fw resources that lack this product's RSFW header (version 1) \
               or do not fit the firmware partition. Built from resagent_plugin.h alone."
HOMEPAGE = "https://cloud.tencent.com/product/iothub"
SECTION = "net"
CVE_PRODUCT = "resagent"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://LICENSE;md5=1a54421cbcd203b6e3154e7f2a8460b7"

require recipes-connectivity/resagent/resagent-source.inc

RESAGENT_PLUGIN_ORDER = "10"

inherit resagent-plugin

do_compile() {
    ${CC} ${CFLAGS} ${LDFLAGS} -std=c99 -shared -fPIC -I${STAGING_INCDIR} \
        -o ${RESAGENT_PLUGIN_SO} ${S}/plugins/examples/fwcheck.c
}
