/* SPDX-License-Identifier: MIT */
/* Test plugin: crashes in install, the way CRASH_MODE says (segv, abort, hang), and
 * can also crash in validate when built with -DIN_VALIDATE. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#include "resagent_plugin.h"

uint32_t resagent_plugin_abi(void) { return RESAGENT_PLUGIN_ABI; }
const char *resagent_plugin_name(void) { return PLUGIN_NAME; }

static int misbehave(void) {
#if defined(CRASH_SEGV)
    volatile int *p = 0;
    return *p;
#elif defined(CRASH_ABORT)
    abort();
#else
    for (;;) pause();
#endif
    return RESAGENT_FAILED; /* not reached */
}

#ifdef IN_VALIDATE
int resagent_validate(const struct resagent_host *h, const struct resagent_resource *r, char *e,
                      size_t n) {
    (void)h;
    (void)r;
    (void)e;
    (void)n;
    return misbehave();
}
#else
int resagent_install(const struct resagent_host *h, const struct resagent_resource *r, char *e,
                     size_t n) {
    (void)h;
    (void)r;
    (void)e;
    (void)n;
    return misbehave();
}
#endif
