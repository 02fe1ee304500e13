/* SPDX-License-Identifier: MIT */
/* Test plugin: an install plugin that misbehaves the way its build defines say, to try
 * the plugin host's isolation:
 *   RAISE=SIGSEGV|SIGBUS   raise(3) that signal (a crash reporter re-raising)
 *   ABORT                  abort(3)
 *   HELPER_PID="file"      fork a helper that writes its pid there and sleeps 25 s,
 *                          holding stdout and stderr; with HANG the plugin then hangs,
 *                          else it returns ok at once; with SETSID the helper first
 *                          leaves the group as a daemon does (setsid, then a second fork)
 *   FLOOD                  200 000 progress calls and 20 000 log lines, then ok
 *   INSPECT="file"         write what the process sees (its descriptors, environment and
 *                          signal state) to that file, then ok
 *   HANG_IN_ABI            hang in resagent_plugin_abi (the scan's probe)
 *   LOAD_MARKER="file"     append a line to that file whenever the library is loaded
 *   SLOW_INIT_S=n          sleep n s in a library initialiser (every load, the probe too)
 *   KILL_AGENT="file"      for names starting `reboot-`: append a line to that file, then
 *                          SIGKILL the agent (the parent of the call's group leader), as a reboot during
 *                          the install would; other names install at once
 *   PENDING_AFTER_MS=n     sleep n ms, then return RESAGENT_PENDING (confirm: ok)
 *   INSTALLED_IF="file"    export resagent_installed: 0 when that file exists, else -1 */
#define _GNU_SOURCE
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "resagent_plugin.h"

/* The parent of process `pid`, from /proc/PID/stat (after the command's closing paren). */
__attribute__((unused)) static pid_t parent_of(pid_t pid) {
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    char *paren = got ? strrchr(line, ')') : NULL;
    int ppid = -1;
    if (paren) sscanf(paren + 2, "%*c %d", &ppid);
    return (pid_t)ppid;
}

#ifdef LOAD_MARKER
__attribute__((constructor)) static void loaded(void) {
    FILE *f = fopen(LOAD_MARKER, "a");
    if (f) {
        fputs("loaded\n", f);
        fclose(f);
    }
}
#endif

#ifdef SLOW_INIT_S
__attribute__((constructor)) static void slow_init(void) { sleep(SLOW_INIT_S); }
#endif

uint32_t resagent_plugin_abi(void) {
#ifdef HANG_IN_ABI
    for (;;) pause();
#endif
    return RESAGENT_PLUGIN_ABI;
}
const char *resagent_plugin_name(void) { return PLUGIN_NAME; }

#ifdef INSPECT
static void inspect(void) {
    FILE *out = fopen(INSPECT, "w");
    if (!out) return;
    DIR *d = opendir("/proc/self/fd");
    int own = d ? dirfd(d) : -1;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == own) continue;
        char target[512] = "", link[300];
        snprintf(link, sizeof link, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0) target[n] = '\0';
        fprintf(out, "fd %s %s\n", e->d_name, target);
    }
    if (d) closedir(d);
    for (char **v = environ; *v; v++) fprintf(out, "env %s\n", *v);
    FILE *st = fopen("/proc/self/status", "r");
    char line[256];
    while (st && fgets(line, sizeof line, st))
        if (!strncmp(line, "SigBlk", 6) || !strncmp(line, "SigIgn", 6) ||
            !strncmp(line, "SigCgt", 6))
            fprintf(out, "%s", line);
    if (st) fclose(st);
    fprintf(out, "pgid %d pid %d ppid %d\n", (int)getpgid(0), (int)getpid(), (int)getppid());
    fclose(out);
}
#endif

int resagent_install(const struct resagent_host *h, const struct resagent_resource *r, char *e,
                     size_t n) {
    (void)r;
    (void)e;
    (void)n;
#if defined(RAISE)
    (void)h;
    raise(RAISE);
#elif defined(ABORT)
    (void)h;
    abort();
#elif defined(HELPER_PID)
    (void)h;
    pid_t helper = fork();
    if (helper == 0) {
#ifdef SETSID
        setsid();
        if (fork() > 0) _exit(0);
#endif
        FILE *f = fopen(HELPER_PID, "w");
        if (f) {
            fprintf(f, "%d\n", (int)getpid());
            fclose(f);
        }
        sleep(25);
        _exit(0);
    }
    usleep(200000); /* the helper has written its pid */
#ifdef HANG
    for (;;) pause();
#endif
#elif defined(FLOOD)
    char line[64];
    for (unsigned i = 0; i < 200000; i++) h->progress(i % 101);
    for (unsigned i = 0; i < 20000; i++) {
        snprintf(line, sizeof line, "flood line %u", i);
        h->log(RESAGENT_LOG_INFO, line);
    }
#elif defined(INSPECT)
    (void)h;
    inspect();
#elif defined(PENDING_AFTER_MS)
    (void)h;
    usleep(PENDING_AFTER_MS * 1000);
    return RESAGENT_PENDING;
#elif defined(KILL_AGENT)
    (void)h;
    if (strncmp(r->name, "reboot-", 7) == 0) {
        FILE *f = fopen(KILL_AGENT, "a");
        if (f) {
            fprintf(f, "install %s\n", r->name);
            fclose(f);
        }
        kill(parent_of(getpgid(0)), SIGKILL);
        for (;;) pause();
    }
#else
    (void)h;
#endif
    return RESAGENT_OK;
}

#ifdef PENDING_AFTER_MS
int resagent_confirm(const struct resagent_host *h, const struct resagent_resource *r, char *e,
                     size_t n) {
    (void)h;
    (void)r;
    (void)e;
    (void)n;
    return RESAGENT_OK;
}
#endif

#ifdef INSTALLED_IF
int resagent_installed(const struct resagent_host *h, const struct resagent_resource *r, char *e,
                       size_t n) {
    (void)h;
    (void)r;
    FILE *f = fopen(INSTALLED_IF, "r");
    if (!f) {
        snprintf(e, n, "not installed");
        return RESAGENT_FAILED;
    }
    fclose(f);
    return RESAGENT_OK;
}
#endif
