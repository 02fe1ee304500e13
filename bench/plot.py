#!/usr/bin/env python3
"""Plots throughput per resource size, resagent beside the baseline, from a results JSON.

usage: plot.py RESULTS.json OUT.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def mib_per_s(size_mib, secs):
    secs = sorted(secs)
    mid = secs[len(secs) // 2] if len(secs) % 2 else (secs[len(secs) // 2 - 1] + secs[len(secs) // 2]) / 2
    return size_mib / mid


def main():
    res = json.load(open(sys.argv[1]))
    fleet = res.get("fleet") or {}
    hist = bool(fleet.get("first_poll_s") or fleet.get("reconnect_s"))
    if hist:
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
        dl, up, fl = axes
    else:
        fig, (dl, up) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = [c["size_mib"] for c in res["download"]]
    dl.plot(sizes, [mib_per_s(c["size_mib"], c["resagent_s"]) for c in res["download"]], "o-", label="resagent (task to done, installed, fsynced)")
    dl.plot(sizes, [mib_per_s(c["size_mib"], c["baseline_s"]) for c in res["download"]], "s--", label="curl + md5sum + sync + mv + sync")
    dl.set_title("Download")
    up_sizes = [c["size_mib"] for c in res["upload"]]
    up.plot(up_sizes, [mib_per_s(c["size_mib"], c["copy_s"]) for c in res["upload"]], "o-", label="resagent upload (durable copy)")
    up.plot(up_sizes, [mib_per_s(c["size_mib"], c["move_s"]) for c in res["upload"]], "^-", label="resagent upload --move")
    up.plot(up_sizes, [mib_per_s(c["size_mib"], c["baseline_s"]) for c in res["upload"]], "s--", label="md5 + curl -T")
    up.set_title("Upload")
    for ax in (dl, up):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes)
        ax.set_xticklabels([f"{s} MiB" for s in sizes])
        ax.set_ylabel("MiB/s (median)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if hist:
        n = fleet.get("daemons")
        fl.hist(fleet.get("first_poll_s", []), bins=30, alpha=0.7,
                label=f"first task poll after start (poll_jitter_s {fleet.get('poll_jitter_s', 30)})")
        fl.hist(fleet.get("reconnect_s", []), bins=30, alpha=0.7,
                label="reconnect after a broker restart (full jitter)")
        fl.set_title(f"Fleet of {n} daemons")
        fl.set_xlabel("seconds")
        fl.set_ylabel("daemons")
        fl.grid(alpha=0.3)
        fl.legend(fontsize=8)
    m = res["machine"]
    fig.suptitle(f"resagent vs. the scripted baseline — {res['date']}, {m['cores']} cores, {m['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)


if __name__ == "__main__":
    main()
