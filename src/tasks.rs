//! The download task state machine as pure functions over the journal: what happens to a
//! task that arrives, which task runs next, and how a finished one is recorded. No I/O,
//! so every rule of docs/protocol.md ("one download at a time", "a later task for the same
//! name replaces one that waits", "a repeated task is done at once") is tested directly.

use crate::journal::{InFlight, Installed, Journal, PendingInstall, RolledBack, MAX_ROLLED_BACK};
use crate::protocol::{validate_name, validate_task, Task, TaskLimits};

/// Tasks that may wait behind the one in flight; a further one fails -11
/// (docs/agent.md, "What never wedges": a bounded journal).
pub(crate) const MAX_WAITING: usize = 64;

/// What became of a task offered to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Nothing was in flight: the task is now in flight and should start.
    Start,
    /// Another download is in flight: the task waits at the end of the line.
    Queued,
    /// A waiting task of the same name was replaced by this one, in its place.
    ReplacedWaiting,
    /// The same name and md5sum are installed already: report `done`, transfer nothing.
    AlreadyInstalled,
    /// The same name and md5sum are in flight now: nothing to do.
    DuplicateOfInFlight,
    /// [`MAX_WAITING`] tasks wait already: this one is refused.
    QueueFull,
    /// The same name and md5sum were written and wait for a reboot: report that again,
    /// download and install nothing (on an A/B device it would go to the fallback slot).
    PendingReboot(PendingInstall),
    /// The same name and md5sum rolled back on this device: `fail` -5, no transfer.
    RolledBack(RolledBack),
}

/// Offers `task` to the journal's queue. `still_present` tells whether an installed
/// resource is still where it was installed (a file removed by hand is fetched again).
pub(crate) fn offer(
    journal: &mut Journal,
    task: Task,
    still_present: impl Fn(&str, &Installed) -> bool,
) -> Offer {
    let pending = journal
        .pending
        .get(&task.name)
        .filter(|p| p.task.same_content(&task))
        .cloned();
    let rolled_back = journal
        .rolled_back
        .iter()
        .find(|r| r.name == task.name && r.md5sum == task.md5sum)
        .cloned();
    // Either is answered now, and is the newest wish for the name: an older one that
    // waits must not run after it.
    if let Some(p) = pending {
        journal.waiting.retain(|w| w.name != task.name);
        return Offer::PendingReboot(p);
    }
    if let Some(r) = rolled_back {
        journal.waiting.retain(|w| w.name != task.name);
        return Offer::RolledBack(r);
    }
    if let Some(current) = &journal.download {
        if current.task.same_content(&task) {
            // The newest wish for this name is what runs now: an older one that waits
            // behind it must not overwrite it afterwards.
            journal.waiting.retain(|w| w.name != task.name);
            return Offer::DuplicateOfInFlight;
        }
    }
    // Another version of this name is in flight: what is installed now will not be when
    // it lands, so this task waits its turn even if it equals the installed version (the
    // last task for a name wins; the download thread skips the transfer if it still can).
    let same_name_in_flight = journal
        .download
        .as_ref()
        .is_some_and(|d| d.task.name == task.name);
    let installed = !same_name_in_flight
        && journal
            .installed
            .get(&task.name)
            .filter(|i| i.md5sum == task.md5sum && still_present(&task.name, i))
            .is_some();
    if installed {
        // A newer wish for this name supersedes an older one that was still waiting.
        journal.waiting.retain(|w| w.name != task.name);
        return Offer::AlreadyInstalled;
    }
    if journal.download.is_none() {
        journal.download = Some(InFlight::new(task));
        return Offer::Start;
    }
    if let Some(slot) = journal.waiting.iter_mut().find(|w| w.name == task.name) {
        *slot = task;
        return Offer::ReplacedWaiting;
    }
    if journal.waiting.len() >= MAX_WAITING {
        return Offer::QueueFull;
    }
    journal.waiting.push(task);
    Offer::Queued
}

/// Checks what the journal read back from disk holds as if it came from the network
/// (a journal edited or damaged must not write outside `resource_dir`): tasks that fail
/// the checks of docs/protocol.md are dropped, installed and pending records whose name
/// is not a safe name too, and the waiting list is cut to [`MAX_WAITING`]. Returns one
/// line per thing dropped, for the log.
pub(crate) fn sanitize(journal: &mut Journal, limits: &TaskLimits) -> Vec<String> {
    let check = |t: &Task| -> Result<(), String> {
        let value = serde_json::to_value(t).map_err(|e| e.to_string())?;
        validate_task(&value, limits).map(|_| ())
    };
    let mut dropped = Vec::new();
    if let Some(d) = &journal.download {
        if let Err(e) = check(&d.task) {
            dropped.push(format!("the download in flight: {e}"));
            journal.download = None;
        }
    }
    journal.waiting.retain(|t| match check(t) {
        Ok(()) => true,
        Err(e) => {
            dropped.push(format!("a waiting task: {e}"));
            false
        }
    });
    if journal.waiting.len() > MAX_WAITING {
        dropped.push(format!(
            "{} waiting tasks over the {MAX_WAITING} kept",
            journal.waiting.len() - MAX_WAITING
        ));
        journal.waiting.truncate(MAX_WAITING);
    }
    journal
        .installed
        .retain(|name, _| match validate_name(name) {
            Ok(()) => true,
            Err(e) => {
                dropped.push(format!("an installed record: {e}"));
                false
            }
        });
    journal.pending.retain(|name, p| match check(&p.task) {
        Ok(()) if *name == p.task.name => true,
        Ok(()) => {
            dropped.push(format!(
                "a pending install filed under another name `{name}`"
            ));
            false
        }
        Err(e) => {
            dropped.push(format!("a pending install: {e}"));
            false
        }
    });
    dropped
}

/// Moves the first waiting task in flight when nothing is; returns the task in flight.
pub(crate) fn next(journal: &mut Journal) -> Option<Task> {
    if journal.download.is_none() && !journal.waiting.is_empty() {
        let task = journal.waiting.remove(0);
        journal.download = Some(InFlight::new(task));
    }
    journal.download.as_ref().map(|d| d.task.clone())
}

/// Records that the download in flight is installed (`plugin`: the install plugin that
/// took it) and clears it.
pub(crate) fn installed(journal: &mut Journal, task: &Task, plugin: Option<String>, now: u64) {
    // What the same plugin installed before is no longer known to be there: an A/B
    // plugin holds one image (a plugin answering `resagent_installed` is asked anyway).
    if plugin.is_some() {
        for (_, other) in journal
            .installed
            .iter_mut()
            .filter(|(name, i)| **name != task.name && i.plugin == plugin)
        {
            other.superseded = true;
        }
    }
    journal.installed.insert(
        task.name.clone(),
        Installed {
            md5sum: task.md5sum.clone(),
            size: task.size,
            installed_at: now,
            plugin,
            superseded: false,
        },
    );
    // A newer install of the name supersedes one that waited for a reboot, and one
    // installed on purpose is no longer a rollback.
    journal.pending.remove(&task.name);
    journal
        .rolled_back
        .retain(|r| !(r.name == task.name && r.md5sum == task.md5sum));
    clear_in_flight(journal, task);
}

/// Records that `plugin` wrote the download in flight in boot `boot_id`, effective after
/// a reboot: the task leaves the queue and waits, in `pending`, for the plugin's
/// confirmation in a later boot.
pub(crate) fn pending(
    journal: &mut Journal,
    task: &Task,
    written: &Task,
    plugin: &str,
    boot_id: Option<String>,
    now: u64,
) {
    journal.pending.insert(
        task.name.clone(),
        PendingInstall {
            task: task.clone(),
            target: (written != task).then(|| written.clone()),
            plugin: plugin.to_string(),
            since: now,
            boot_id,
            reboot_started: false,
            reboot_error: None,
        },
    );
    clear_in_flight(journal, task);
}

/// Records that the pending install `task` did not take (its confirmation failed, the
/// device rolled back): it leaves `pending` and is remembered in `rolled_back`, so the
/// same name and md5sum are not installed again automatically.
pub(crate) fn rolled_back(journal: &mut Journal, task: &Task, reason: &str, now: u64) {
    if journal
        .pending
        .get(&task.name)
        .is_some_and(|p| p.task.same_content(task))
    {
        journal.pending.remove(&task.name);
    }
    journal
        .rolled_back
        .retain(|r| !(r.name == task.name && r.md5sum == task.md5sum));
    journal.rolled_back.push(RolledBack {
        name: task.name.clone(),
        md5sum: task.md5sum.clone(),
        at: now,
        reason: reason.to_string(),
    });
    let excess = journal.rolled_back.len().saturating_sub(MAX_ROLLED_BACK);
    journal.rolled_back.drain(..excess);
}

/// Forgets the rollbacks of resource `name` (an operator's `resagent retry NAME`);
/// whether there was one.
pub(crate) fn forget_rollback(journal: &mut Journal, name: &str) -> bool {
    let before = journal.rolled_back.len();
    journal.rolled_back.retain(|r| r.name != name);
    journal.rolled_back.len() != before
}

/// Clears the download in flight if it is `task` (it failed or was cancelled).
pub(crate) fn clear_in_flight(journal: &mut Journal, task: &Task) {
    if journal
        .download
        .as_ref()
        .is_some_and(|d| d.task.same_content(task))
    {
        journal.download = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Tasks and journals as fixtures, in the JSON the agent persists.
    fn task(name: &str, md5_digit: char) -> Task {
        serde_json::from_value(json!({
            "name": name, "md5sum": md5_digit.to_string().repeat(32), "size": 10,
            "url": format!("https://s.example/{name}")
        }))
        .unwrap()
    }

    fn journal(v: serde_json::Value) -> Journal {
        serde_json::from_value(v).unwrap()
    }

    const PRESENT: fn(&str, &Installed) -> bool = |_, _| true;

    #[test]
    fn first_task_starts_then_others_wait_in_order() {
        let mut j = Journal::default();
        assert_eq!(offer(&mut j, task("a", '1'), PRESENT), Offer::Start);
        assert_eq!(offer(&mut j, task("b", '1'), PRESENT), Offer::Queued);
        assert_eq!(offer(&mut j, task("c", '1'), PRESENT), Offer::Queued);
        let names: Vec<_> = j.waiting.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(next(&mut j).unwrap().name, "a", "in flight stays in flight");
    }

    #[test]
    fn same_task_as_in_flight_is_ignored() {
        let mut j = Journal::default();
        offer(&mut j, task("a", '1'), PRESENT);
        assert_eq!(
            offer(&mut j, task("a", '1'), PRESENT),
            Offer::DuplicateOfInFlight
        );
        assert!(j.waiting.is_empty());
        // Same name, new content: it waits for the one in flight.
        assert_eq!(offer(&mut j, task("a", '2'), PRESENT), Offer::Queued);
    }

    #[test]
    fn the_in_flight_version_offered_again_drops_an_older_wish_waiting_behind_it() {
        let mut j = Journal::default();
        offer(&mut j, task("k", '1'), PRESENT);
        offer(&mut j, task("k", '2'), PRESENT);
        offer(&mut j, task("other", '1'), PRESENT);
        assert_eq!(
            offer(&mut j, task("k", '1'), PRESENT),
            Offer::DuplicateOfInFlight
        );
        let names: Vec<_> = j.waiting.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["other"],
            "the last wish for `k` is the one in flight"
        );
    }

    #[test]
    fn a_later_task_replaces_a_waiting_one_in_its_place() {
        let mut j = Journal::default();
        offer(&mut j, task("x", '1'), PRESENT);
        offer(&mut j, task("a", '1'), PRESENT);
        offer(&mut j, task("b", '1'), PRESENT);
        assert_eq!(
            offer(&mut j, task("a", '2'), PRESENT),
            Offer::ReplacedWaiting
        );
        assert_eq!(j.waiting[0], task("a", '2'));
        assert_eq!(j.waiting[1].name, "b");
    }

    #[test]
    fn an_installed_task_is_done_without_transfer() {
        let mut j = journal(
            json!({"installed": {"a": {"md5sum": "1".repeat(32), "size": 10, "installed_at": 1}}}),
        );
        assert_eq!(
            offer(&mut j, task("a", '1'), PRESENT),
            Offer::AlreadyInstalled
        );
        assert!(j.download.is_none());
        assert_eq!(offer(&mut j, task("a", '2'), PRESENT), Offer::Start);
    }

    #[test]
    fn the_installed_version_offered_while_another_is_in_flight_waits_its_turn() {
        let mut j = journal(
            json!({"installed": {"a": {"md5sum": "1".repeat(32), "size": 10, "installed_at": 1}}}),
        );
        assert_eq!(offer(&mut j, task("a", '2'), PRESENT), Offer::Start);
        assert_eq!(
            offer(&mut j, task("a", '1'), PRESENT),
            Offer::Queued,
            "the last wish for `a` must win"
        );
        assert_eq!(j.waiting, vec![task("a", '1')]);
    }

    #[test]
    fn an_installed_file_removed_by_hand_is_fetched_again() {
        let mut j = journal(
            json!({"installed": {"a": {"md5sum": "1".repeat(32), "size": 10, "installed_at": 1}}}),
        );
        assert_eq!(offer(&mut j, task("a", '1'), |_, _| false), Offer::Start);
    }

    #[test]
    fn finishing_records_install_and_next_takes_the_first_waiting() {
        let mut j = Journal::default();
        offer(&mut j, task("a", '1'), PRESENT);
        offer(&mut j, task("b", '1'), PRESENT);
        installed(&mut j, &task("a", '1'), None, 42);
        assert_eq!(j.installed["a"].installed_at, 42);
        assert!(j.download.is_none());
        assert_eq!(next(&mut j).unwrap().name, "b");
        assert!(j.waiting.is_empty());
        clear_in_flight(&mut j, &task("b", '1'));
        assert_eq!(next(&mut j), None);
    }

    #[test]
    fn a_pending_install_leaves_the_queue_and_a_later_install_supersedes_it() {
        let mut j = Journal::default();
        offer(&mut j, task("fw", '1'), PRESENT);
        offer(&mut j, task("b", '1'), PRESENT);
        pending(
            &mut j,
            &task("fw", '1'),
            &task("fw", '1'),
            "acme",
            Some("boot-1".into()),
            9,
        );
        assert!(j.download.is_none());
        assert_eq!(j.pending["fw"].plugin, "acme");
        assert_eq!(next(&mut j).unwrap().name, "b", "other tasks go on");
        installed(&mut j, &task("fw", '1'), Some("acme".into()), 10);
        assert!(j.pending.is_empty());
    }

    #[test]
    fn the_waiting_list_is_bounded() {
        let mut j = Journal::default();
        offer(&mut j, task("first", '1'), PRESENT);
        for i in 0..MAX_WAITING {
            assert_eq!(
                offer(&mut j, task(&format!("t{i}"), '1'), PRESENT),
                Offer::Queued
            );
        }
        assert_eq!(
            offer(&mut j, task("one-more", '1'), PRESENT),
            Offer::QueueFull
        );
        assert_eq!(j.waiting.len(), MAX_WAITING);
        assert_eq!(
            offer(&mut j, task("t3", '2'), PRESENT),
            Offer::ReplacedWaiting,
            "replacing a waiting one still works"
        );
    }

    #[test]
    fn a_journal_from_disk_is_checked_like_the_network() {
        let limits = TaskLimits {
            max_resource_bytes: 1 << 30,
            allow_http: false,
        };
        let mut j = journal(json!({
            "download": {"task": {"name":"../escape","md5sum":"1".repeat(32),"size":10,"url":"https://s/x"}},
            "waiting": [
                {"name":"ok","md5sum":"2".repeat(32),"size":5,"url":"https://s/ok"},
                {"name":"plain","md5sum":"2".repeat(32),"size":5,"url":"http://s/plain"},
                {"name":"a/b","md5sum":"2".repeat(32),"size":5,"url":"https://s/ab"}
            ],
            "installed": {"../../etc/x": {"md5sum": "1".repeat(32), "size": 1, "installed_at": 1},
                          "good": {"md5sum": "1".repeat(32), "size": 1, "installed_at": 1}}
        }));
        let dropped = sanitize(&mut j, &limits);
        assert_eq!(dropped.len(), 4, "{dropped:?}");
        assert!(j.download.is_none());
        let names: Vec<_> = j.waiting.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["ok"]);
        assert_eq!(j.installed.keys().collect::<Vec<_>>(), ["good"]);
        assert!(
            sanitize(&mut j, &limits).is_empty(),
            "a clean journal stays as it is"
        );
    }

    #[test]
    fn a_journal_from_disk_resumes_its_task_in_flight() {
        let mut j = journal(json!({
            "download": {"task": {"name":"fw","md5sum":"1".repeat(32),"size":10,"url":"https://s/fw"}, "phase":"verified"},
            "waiting": [{"name":"m","md5sum":"2".repeat(32),"size":5,"url":"https://s/m"}]
        }));
        assert_eq!(next(&mut j).unwrap().name, "fw");
        assert_eq!(j.waiting.len(), 1);
    }

    #[test]
    fn a_task_equal_to_a_pending_install_is_answered_pending_and_never_queued() {
        let mut j = Journal::default();
        offer(&mut j, task("fw", '1'), PRESENT);
        pending(
            &mut j,
            &task("fw", '1'),
            &task("fw", '1'),
            "acme",
            Some("boot-1".into()),
            9,
        );
        offer(&mut j, task("other", '1'), PRESENT);
        offer(&mut j, task("fw", '3'), PRESENT);
        match offer(&mut j, task("fw", '1'), PRESENT) {
            Offer::PendingReboot(p) => assert_eq!(p.boot_id.as_deref(), Some("boot-1")),
            o => panic!("{o:?}"),
        }
        let names: Vec<_> = j.waiting.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            Vec::<&str>::new(),
            "no older wish for fw waits: {names:?}"
        );
        assert_eq!(j.download.as_ref().unwrap().task.name, "other");
        // Another MD5 of the name is a new install.
        assert_eq!(offer(&mut j, task("fw", '2'), PRESENT), Offer::Queued);
    }

    #[test]
    fn a_rolled_back_image_is_refused_until_forgotten_and_a_new_md5_installs() {
        let mut j = Journal::default();
        offer(&mut j, task("fw", '1'), PRESENT);
        pending(&mut j, &task("fw", '1'), &task("fw", '1'), "acme", None, 9);
        rolled_back(&mut j, &task("fw", '1'), "booted the other slot", 20);
        assert!(j.pending.is_empty());
        match offer(&mut j, task("fw", '1'), PRESENT) {
            Offer::RolledBack(r) => {
                assert_eq!((r.at, r.reason.as_str()), (20, "booted the other slot"))
            }
            o => panic!("{o:?}"),
        }
        assert!(j.download.is_none(), "nothing is fetched");
        assert_eq!(offer(&mut j, task("fw", '2'), PRESENT), Offer::Start);
        assert!(forget_rollback(&mut j, "fw"));
        assert!(!forget_rollback(&mut j, "fw"));
        clear_in_flight(&mut j, &task("fw", '2'));
        assert_eq!(offer(&mut j, task("fw", '1'), PRESENT), Offer::Start);
        for i in 0..(MAX_ROLLED_BACK + 5) {
            rolled_back(&mut j, &task(&format!("n{i}"), '1'), "x", i as u64);
        }
        assert_eq!(j.rolled_back.len(), MAX_ROLLED_BACK, "bounded");
        assert_eq!(j.rolled_back[0].name, "n5", "the oldest went first");
    }

    #[test]
    fn an_install_by_a_plugin_supersedes_what_that_plugin_installed_before() {
        let mut j = Journal::default();
        installed(&mut j, &task("os-1", '1'), Some("ab".into()), 1);
        installed(&mut j, &task("pack", '1'), Some("audio".into()), 2);
        installed(&mut j, &task("plain", '1'), None, 3);
        installed(&mut j, &task("os-2", '2'), Some("ab".into()), 4);
        assert!(j.installed["os-1"].superseded, "the slot holds os-2 now");
        assert!(!j.installed["os-2"].superseded);
        assert!(!j.installed["pack"].superseded, "another plugin's");
        assert!(!j.installed["plain"].superseded, "the default installer's");
        installed(&mut j, &task("os-1", '1'), Some("ab".into()), 5);
        assert!(!j.installed["os-1"].superseded && j.installed["os-2"].superseded);
    }
}
