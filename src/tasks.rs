//! The download task state machine as pure functions over the journal: what happens to a
//! task that arrives, which task runs next, and how a finished one is recorded. No I/O,
//! so every rule of docs/protocol.md ("one download at a time", "a later task for the same
//! name replaces one that waits", "a repeated task is done at once") is tested directly.

use crate::journal::{InFlight, Installed, Journal, PendingInstall};
use crate::protocol::Task;

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
}

/// Offers `task` to the journal's queue. `still_present` tells whether an installed
/// resource is still where it was installed (a file removed by hand is fetched again).
pub(crate) fn offer(
    journal: &mut Journal,
    task: Task,
    still_present: impl Fn(&str, &Installed) -> bool,
) -> Offer {
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
    journal.waiting.push(task);
    Offer::Queued
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
    journal.installed.insert(
        task.name.clone(),
        Installed {
            md5sum: task.md5sum.clone(),
            size: task.size,
            installed_at: now,
            plugin,
        },
    );
    // A newer install of the name supersedes one that waited for a reboot.
    journal.pending.remove(&task.name);
    clear_in_flight(journal, task);
}

/// Records that `plugin` wrote the download in flight, effective after a reboot: the
/// task leaves the queue and waits, in `pending`, for the plugin's confirmation.
pub(crate) fn pending(journal: &mut Journal, task: &Task, plugin: &str, now: u64) {
    journal.pending.insert(
        task.name.clone(),
        PendingInstall {
            task: task.clone(),
            plugin: plugin.to_string(),
            since: now,
        },
    );
    clear_in_flight(journal, task);
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
        pending(&mut j, &task("fw", '1'), "acme", 9);
        assert!(j.download.is_none());
        assert_eq!(j.pending["fw"].plugin, "acme");
        assert_eq!(next(&mut j).unwrap().name, "b", "other tasks go on");
        installed(&mut j, &task("fw", '1'), Some("acme".into()), 10);
        assert!(j.pending.is_empty());
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
}
