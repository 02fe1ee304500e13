/* SPDX-License-Identifier: MIT */
/*
 * swupdate.c — a resagent install plugin that hands `*.swu` images to the SWUpdate daemon
 * already running on the device (meta-swupdate), over SWUpdate's own IPC through its
 * client library (libswupdate: network_ipc.h, progress_ipc.h).
 *
 * install: the image is streamed into SWUpdate (which verifies its signature, checks the
 *   hardware compatibility and runs the handlers of its sw-description); SWUpdate's
 *   progress becomes resagent's `burning` percent; a refusal fails the task with
 *   SWUpdate's own error message; success returns RESAGENT_PENDING when the update takes
 *   effect after a reboot ("reboot": true, the default), RESAGENT_OK otherwise. SWUpdate
 *   not reachable yet (socket missing or refused) is asked again for connect_timeout_s.
 *   The image's MD5 is recorded (`submitted`) before it is handed over: when resagent
 *   restarts while SWUpdate still runs that update (a kill, a timeout), the next call
 *   follows it to its end instead of starting another.
 * confirm (resagent asks only in a later boot): SWUpdate's update state in the
 *   bootloader environment (`ustate`, GET_UPDATE_STATE): INSTALLED or TESTING — the new
 *   image runs: it is marked OK (SET_UPDATE_STATE) and the task is `done`; OK — already
 *   confirmed: `done`; FAILED — rolled back: `fail`; IN_PROGRESS/WAIT or SWUpdate not
 *   reachable yet — still pending (asked again); no state at all — `fail`, saying why.
 *   A confirmed image's MD5 is recorded (`installed`).
 * installed: the image is what SWUpdate installed last and confirmed (the `installed`
 *   record) and `ustate` is not FAILED; otherwise (a rollback, a downgrade since, SWUpdate
 *   not reachable) not installed — resagent installs it again instead of saying `done`.
 *
 * plugin_config (resagent's configuration, key "swupdate"), all optional:
 *   "socket_dir":   folder of SWUpdate's sockets `sockinstctrl` and `swupdateprog`
 *                   (SWUpdate's default: $TMPDIR, else /tmp)
 *   "reboot":       true (default) or false — whether a successful install needs a reboot
 *   "software_set", "running_mode": the selection sent with the request (SWUpdate's `-e`)
 *   "dry_run":      true — SWUpdate checks the image and installs nothing (then `done`
 *                   means "accepted"; for bring-up only)
 *   "connect_timeout_s": how long an unreachable SWUpdate is asked again at install
 *                   (default 30)
 *
 * Build: cc -shared -fPIC -I resagent/plugins/include swupdate.c -lswupdate -o 30-swupdate.so
 */
#define _GNU_SOURCE /* strcasestr */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <network_ipc.h>
#include <progress_ipc.h>

#include "resagent_plugin.h"
#include "resagent_plugin_config.h"

/* SWUpdate's update states (update_state_t of its state.h; characters in `ustate`). */
#define USTATE_OK '0'
#define USTATE_INSTALLED '1'
#define USTATE_TESTING '2'
#define USTATE_FAILED '3'
#define USTATE_NOT_AVAILABLE '4'
#define USTATE_ERROR '5'
#define USTATE_WAIT '6'
#define USTATE_IN_PROGRESS '7'

uint32_t resagent_plugin_abi(void) { return RESAGENT_PLUGIN_ABI; }
const char *resagent_plugin_name(void) { return "swupdate"; }
const char *resagent_plugin_claims(void) { return "*.swu"; }

/* The sockets live where plugin_config says; libswupdate reads TMPDIR for the control
 * socket and SOCKET_PROGRESS_PATH for the progress one. The child's environment is
 * resagent's allow-list, so setting TMPDIR here touches nothing else. */
static char progress_path[4200];
static char ctrl_path[4200];

static void use_sockets(const char *config) {
    char dir[4096];
    if (rp_config_string(config, "socket_dir", dir, sizeof dir) && dir[0]) {
        setenv("TMPDIR", dir, 1);
        snprintf(progress_path, sizeof progress_path, "%s/swupdateprog", dir);
        SOCKET_PROGRESS_PATH = progress_path;
    }
    snprintf(ctrl_path, sizeof ctrl_path, "%s", get_ctrl_socket());
}

/* What one install call keeps of SWUpdate's messages. */
struct run {
    const struct resagent_host *host;
    int progress_fd;
    unsigned last_percent;
    int installing;   /* SWUpdate said "Installation in progress" */
    char error[1024]; /* the first cause SWUpdate reported */
    char last[1024];  /* its summary ("Installation failed !") */
};

/* Takes in every progress message already waiting (never blocks). */
static void drain_progress(struct run *r) {
    while (r->progress_fd >= 0) {
        struct pollfd p = {.fd = r->progress_fd, .events = POLLIN};
        if (poll(&p, 1, 0) <= 0) return;
        struct progress_msg m;
        if (progress_ipc_receive(&r->progress_fd, &m) <= 0) {
            r->progress_fd = -1;
            return;
        }
        if (m.nsteps > 0 && m.cur_step > 0 && m.cur_step <= m.nsteps) {
            unsigned pct =
                ((m.cur_step - 1) * 100 + (m.cur_percent > 100 ? 100 : m.cur_percent)) / m.nsteps;
            if (pct != r->last_percent) {
                r->last_percent = pct;
                r->host->progress(pct);
            }
        }
    }
}

/* Whether a handler's message reads as the cause of a failure. SWUpdate marks only its
 * own errors ("ERROR : ..."); a handler's (a raw device that cannot be opened, a hash
 * mismatch) arrive as plain trace lines while installing. */
static int sounds_failed(const char *text) {
    static const char *const words[] = {"cannot",   "failed",  "not successful", "error",
                                        "mismatch", "invalid", "not compatible", "refused"};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strcasestr(text, words[i])) return 1;
    return 0;
}

/* `desc` past its leading "ERROR : " and "[function] : " prefixes. */
static const char *skip_prefixes(const char *desc) {
    for (;;) {
        if (strncmp(desc, "ERROR : ", 8) == 0) {
            desc += 8;
            continue;
        }
        const char *close = desc[0] == '[' ? strchr(desc, ']') : NULL;
        if (close && strncmp(close + 1, " : ", 3) == 0) {
            desc = close + 4;
            continue;
        }
        return desc;
    }
}

/* Takes in one status message SWUpdate queued. */
static void on_status(struct run *r, ipc_message *msg) {
    char *desc = msg->data.status.desc;
    desc[sizeof msg->data.status.desc - 1] = '\0';
    size_t n = strlen(desc);
    while (n > 0 && (desc[n - 1] == '\n' || desc[n - 1] == ' ')) desc[--n] = '\0';
    if (n > 0) {
        /* Messages read "ERROR : text" or "[function] : text": drop those prefixes and
         * keep the text whole ("HASH mismatch : a <--> b", not "a <--> b"). */
        const char *text = skip_prefixes(desc);
        if (strstr(desc, "Installation in progress")) r->installing = 1;
        if (msg->data.status.error != 0) {
            snprintf(r->last, sizeof r->last, "%.1000s", text); /* the summary */
        } else if (!r->error[0] &&
                   (strncmp(desc, "ERROR", 5) == 0 || (r->installing && sounds_failed(text)))) {
            snprintf(r->error, sizeof r->error, "%.1000s", text); /* the first cause */
        }
        char line[1100];
        snprintf(line, sizeof line, "SWUpdate: %.1000s", desc);
        r->host->log(RESAGENT_LOG_DEBUG, line);
    }
    drain_progress(r);
}

/* Empties SWUpdate's queue of status messages (left from earlier updates). */
static void drop_old_status(void) {
    ipc_message msg;
    for (int i = 0; i < 10000; i++) {
        if (ipc_get_status(&msg) < 0 || msg.data.status.desc[0] == '\0') return;
    }
}

/* Follows SWUpdate until this update ends: its result (SUCCESS or FAILURE), or -1 when
 * SWUpdate could not be asked. SWUpdate answers GET_STATUS with its state and the next
 * queued message; the update is over once it was seen running (or said something) and
 * is idle with nothing left to say. libswupdate's ipc_wait_for_complete is not used: it
 * can return the result of the previous update when asked before this one started. */
static int wait_for_result(struct run *r) {
    int seen = 0;
    for (;;) {
        ipc_message msg;
        if (ipc_get_status(&msg) < 0) return -1;
        if (msg.data.status.desc[0] != '\0') {
            on_status(r, &msg);
            seen = 1;
            continue;
        }
        if (msg.data.status.current != IDLE)
            seen = 1;
        else if (seen)
            return msg.data.status.last_result;
        drain_progress(r);
        usleep(100 * 1000);
    }
}

/* Seconds on the monotonic clock. */
static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

/* Whether SWUpdate runs an update now (1), is idle (0), or cannot be asked (-1). Queued
 * messages are read past (each carries the state it was queued in): the state that
 * counts comes with the empty answer after them. */
static int swupdate_busy(void) {
    for (int i = 0; i < 10000; i++) {
        ipc_message msg;
        if (ipc_get_status(&msg) < 0) return -1;
        if (msg.data.status.desc[0] != '\0') continue;
        int current = msg.data.status.current;
        return current == START || current == RUN || current == DOWNLOAD;
    }
    return 1;
}

/* Asks SWUpdate whether it is busy until it answers or `deadline` passes. */
static int swupdate_busy_within(double deadline) {
    for (;;) {
        int busy = swupdate_busy();
        if (busy >= 0 || now_s() >= deadline) return busy;
        usleep(500 * 1000);
    }
}

/* Streams `path` into SWUpdate; 0, or -1 with the reason in err. */
static int stream_image(struct run *r, const char *config, const char *path, const char *name,
                        double deadline, char *err, size_t err_len) {
    const struct resagent_host *host = r->host;
    struct swupdate_request req;
    swupdate_prepare_req(&req);
    req.source = SOURCE_LOCAL;
    if (rp_config_bool(config, "dry_run", 0)) req.dry_run = RUN_DRYRUN;
    rp_config_string(config, "software_set", req.software_set, sizeof req.software_set);
    rp_config_string(config, "running_mode", req.running_mode, sizeof req.running_mode);
    snprintf(req.info, sizeof req.info, "resagent: %s", name);

    /* SWUpdate closes the stream when it rejects an image midway: a write then fails
     * with EPIPE instead of killing this process. */
    signal(SIGPIPE, SIG_IGN);
    int in = open(path, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        snprintf(err, err_len, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    int fd;
    while ((fd = ipc_inst_start_ext(&req, sizeof req)) < 0 && now_s() < deadline)
        usleep(500 * 1000);
    if (fd < 0) {
        snprintf(err, err_len, "SWUpdate refused the request or is not running (control socket %s)",
                 ctrl_path);
        close(in);
        return -1;
    }
    char buf[65536];
    ssize_t got;
    while ((got = read(in, buf, sizeof buf)) > 0) {
        if (ipc_send_data(fd, buf, (int)got) < 0) {
            /* SWUpdate closes the stream when it rejects the image (a bad signature,
             * another board): the reason follows in its status messages. */
            host->log(RESAGENT_LOG_DEBUG, "SWUpdate stopped reading the image");
            break;
        }
        drain_progress(r);
    }
    int read_errno = got < 0 ? errno : 0;
    ipc_end(fd);
    close(in);
    if (read_errno) {
        snprintf(err, err_len, "reading %s: %s", path, strerror(read_errno));
        return -1;
    }
    return 0;
}

/* Records `md5` as the image SWUpdate installed last and that runs (or needs no reboot). */
static void record_installed(const struct resagent_host *host, const char *md5) {
    const char *private_dir = rp_host_private_dir(host);
    if (!private_dir) return;
    char path[4200], record[64];
    snprintf(path, sizeof path, "%s/installed", private_dir);
    snprintf(record, sizeof record, "%s\n", md5);
    int rc = rp_write_record(host, path, record);
    if (rc != 0) {
        char line[300];
        snprintf(line, sizeof line, "cannot keep the installed record: %s", strerror(-rc));
        host->log(RESAGENT_LOG_WARN, line);
    }
}

int resagent_install(const struct resagent_host *host, const struct resagent_resource *res,
                     char *err, size_t err_len) {
    size_t len = strlen(res->name);
    if (len < 4 || strcmp(res->name + len - 4, ".swu") != 0) return RESAGENT_DECLINED;
    const char *config = rp_host_config(host);
    use_sockets(config);

    const char *private_dir = rp_host_private_dir(host);
    long connect_s = rp_config_long(config, "connect_timeout_s", 30);
    double deadline = now_s() + (double)connect_s;

    struct run r = {.host = host, .progress_fd = -1, .last_percent = 101};
    int busy = swupdate_busy_within(deadline);
    if (busy < 0) {
        snprintf(err, err_len, "SWUpdate is not reachable at %.400s (asked for %ld s)", ctrl_path,
                 connect_s);
        return RESAGENT_FAILED;
    }
    char submitted[64];
    rp_read_record(private_dir, "submitted", submitted, sizeof submitted);
    int attach = busy && strcmp(submitted, res->md5sum) == 0;
    if (busy && !attach) {
        snprintf(err, err_len, "SWUpdate is busy with another update; %s not started", res->name);
        return RESAGENT_FAILED;
    }
    r.progress_fd = progress_ipc_connect(false); /* optional: progress only */
    if (r.progress_fd >= 0) fcntl(r.progress_fd, F_SETFD, FD_CLOEXEC);

    if (attach) {
        /* Submitted before a restart of resagent and still running: follow it. */
        char line[400];
        snprintf(line, sizeof line, "SWUpdate still installs %.255s from before; following it",
                 res->name);
        host->log(RESAGENT_LOG_INFO, line);
    } else {
        drop_old_status();
        char record[64], path[4200];
        snprintf(record, sizeof record, "%s\n", res->md5sum);
        snprintf(path, sizeof path, "%s/submitted", private_dir ? private_dir : ".");
        if (private_dir) rp_write_record(host, path, record);
        if (stream_image(&r, config, res->path, res->name, deadline, err, err_len) != 0) {
            if (r.progress_fd >= 0) close(r.progress_fd);
            return RESAGENT_FAILED;
        }
    }
    int result = wait_for_result(&r);
    drain_progress(&r);
    if (r.progress_fd >= 0) close(r.progress_fd);

    if (result < 0) {
        snprintf(err, err_len, "lost SWUpdate (control socket %.400s) during the update of %s",
                 ctrl_path, res->name);
        return RESAGENT_FAILED;
    }
    if (result != SUCCESS) {
        if (r.error[0] && r.last[0])
            snprintf(err, err_len, "SWUpdate refused %s: %s (%s)", res->name, r.error, r.last);
        else
            snprintf(err, err_len, "SWUpdate refused %s: %s", res->name,
                     r.error[0] ? r.error : (r.last[0] ? r.last : "no reason given"));
        return RESAGENT_FAILED;
    }
    char line[512];
    snprintf(line, sizeof line, "SWUpdate installed %.255s", res->name);
    host->log(RESAGENT_LOG_INFO, line);
    host->progress(100);
    if (rp_config_bool(config, "dry_run", 0)) return RESAGENT_OK;
    if (rp_config_bool(config, "reboot", 1)) {
        host->log(RESAGENT_LOG_INFO, "the update takes effect after a reboot");
        return RESAGENT_PENDING;
    }
    record_installed(host, res->md5sum);
    return RESAGENT_OK;
}

/* SWUpdate's update state, or 0 when SWUpdate cannot be asked. */
static char get_update_state(void) {
    ipc_message msg;
    memset(&msg, 0, sizeof msg);
    msg.type = GET_UPDATE_STATE;
    if (ipc_send_cmd(&msg) != 0 || msg.type != ACK) return 0;
    return msg.data.msg[0];
}

static int set_update_state(char state) {
    ipc_message msg;
    memset(&msg, 0, sizeof msg);
    msg.type = SET_UPDATE_STATE;
    msg.data.msg[0] = state;
    return ipc_send_cmd(&msg) == 0 && msg.type == ACK ? 0 : -1;
}

int resagent_confirm(const struct resagent_host *host, const struct resagent_resource *res,
                     char *err, size_t err_len) {
    use_sockets(rp_host_config(host));
    char state = get_update_state();
    char line[512];
    switch (state) {
        case USTATE_INSTALLED:
        case USTATE_TESTING:
            if (set_update_state(USTATE_OK) != 0) {
                snprintf(err, err_len, "the new image runs, but SWUpdate did not take ustate=OK");
                return RESAGENT_FAILED;
            }
            snprintf(line, sizeof line, "%.255s runs: SWUpdate's update state set to OK",
                     res->name);
            host->log(RESAGENT_LOG_INFO, line);
            record_installed(host, res->md5sum);
            return RESAGENT_OK;
        case USTATE_OK:
            host->log(RESAGENT_LOG_INFO, "SWUpdate's update state is already OK");
            record_installed(host, res->md5sum);
            return RESAGENT_OK;
        case USTATE_FAILED:
            snprintf(err, err_len,
                     "SWUpdate reports the update of %s failed (ustate=FAILED): rolled back",
                     res->name);
            return RESAGENT_FAILED;
        case USTATE_IN_PROGRESS:
        case USTATE_WAIT: return RESAGENT_PENDING;
        case 0:
            snprintf(line, sizeof line,
                     "SWUpdate is not reachable at %.400s yet; asking again later", ctrl_path);
            host->log(RESAGENT_LOG_WARN, line);
            return RESAGENT_PENDING;
        default:
            snprintf(err, err_len,
                     "SWUpdate has no update state (ustate '%c'): nothing says the new image runs "
                     "(run SWUpdate with a bootloader interface, without -m)",
                     state);
            return RESAGENT_FAILED;
    }
}

int resagent_installed(const struct resagent_host *host, const struct resagent_resource *res,
                       char *err, size_t err_len) {
    use_sockets(rp_host_config(host));
    char last[64];
    rp_read_record(rp_host_private_dir(host), "installed", last, sizeof last);
    if (strcmp(last, res->md5sum) != 0) {
        snprintf(err, err_len, "SWUpdate's last confirmed install is %s, not %s",
                 last[0] ? last : "unknown", res->md5sum);
        return RESAGENT_FAILED;
    }
    char state = get_update_state();
    if (state == 0) {
        snprintf(err, err_len, "SWUpdate is not reachable at %.400s: cannot tell what runs",
                 ctrl_path);
        return RESAGENT_FAILED;
    }
    if (state == USTATE_FAILED) {
        snprintf(err, err_len, "SWUpdate's ustate is FAILED: the device rolled back from %s",
                 res->name);
        return RESAGENT_FAILED;
    }
    return RESAGENT_OK;
}
