//! What the platform's answers mean for the upload in flight — pure rules, one test
//! each (docs/protocol.md, "The verdict after `done`" and "Cancelling"). The coordinator
//! matches each `report_upload_progress_rsp` to the report it answers
//! (`report::Awaiting`, FIFO per MQTT session); these rules judge the match, so an answer
//! that belongs to another report is never taken for this one's — late or not.

use crate::protocol::ProgressState;
use crate::report::Sent;

/// Something the platform said about uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Heard {
    /// A `report_upload_progress_rsp` with its `result_code`, and the report it answers
    /// (None: no report of this session awaited one — sent unasked).
    Answer { code: i64, to: Option<Sent> },
    /// An `upload_result` with its `result_code`.
    Result(i64),
}

/// The verdict on an upload whose `done` the broker acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The file may leave the outbox.
    Confirmed,
    /// The platform refused it with this code: the file stays and is tried again.
    Rejected(i64),
    /// Not decided by this: wait on (until the window ends, when the upload stands).
    Open,
}

/// After the `done` of `name`: what `heard` decides. An `upload_result` decides at once.
/// An answer to this upload's `done` decides by its code. A non-zero answer to one of
/// this upload's earlier reports, or to none, rejects too (a refusal is never lost
/// behind an answer still owed). An answer about another upload decides nothing here.
pub(crate) fn after_done(heard: &Heard, name: &str) -> Verdict {
    match heard {
        Heard::Result(0) => Verdict::Confirmed,
        Heard::Result(code) => Verdict::Rejected(*code),
        Heard::Answer { to: Some(to), .. } if to.name != name => Verdict::Open,
        Heard::Answer { code: 0, to } => match to {
            Some(to) if to.state == ProgressState::Done => Verdict::Confirmed,
            _ => Verdict::Open,
        },
        Heard::Answer { code, .. } => Verdict::Rejected(*code),
    }
}

/// While the PUT of `name` runs: whether `heard` withdraws it — a non-zero answer to
/// one of its own reports, or to none (the same rule as for downloads).
pub(crate) fn withdraws(heard: &Heard, name: &str) -> bool {
    match heard {
        Heard::Answer { code: 0, .. } | Heard::Result(_) => false,
        Heard::Answer { to, .. } => to.as_ref().map_or(true, |to| to.name == name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: i64, name: &str, state: ProgressState) -> Heard {
        let to = Some(Sent {
            name: name.to_string(),
            state,
        });
        Heard::Answer { code, to }
    }

    #[test]
    fn an_upload_result_decides_at_once() {
        assert_eq!(after_done(&Heard::Result(0), "a"), Verdict::Confirmed);
        assert_eq!(after_done(&Heard::Result(-1), "a"), Verdict::Rejected(-1));
    }

    #[test]
    fn the_answer_to_done_decides_by_its_code() {
        let ok = answer(0, "a", ProgressState::Done);
        assert_eq!(after_done(&ok, "a"), Verdict::Confirmed);
        let no = answer(-3, "a", ProgressState::Done);
        assert_eq!(after_done(&no, "a"), Verdict::Rejected(-3));
    }

    #[test]
    fn a_late_zero_to_an_uploading_report_is_not_the_verdict() {
        let late = answer(0, "a", ProgressState::Uploading);
        assert_eq!(after_done(&late, "a"), Verdict::Open);
        let unasked = Heard::Answer { code: 0, to: None };
        assert_eq!(after_done(&unasked, "a"), Verdict::Open);
    }

    #[test]
    fn a_refusal_of_an_own_earlier_report_or_unasked_rejects() {
        let late = answer(-1, "a", ProgressState::Uploading);
        assert_eq!(after_done(&late, "a"), Verdict::Rejected(-1));
        let unasked = Heard::Answer { code: -2, to: None };
        assert_eq!(after_done(&unasked, "a"), Verdict::Rejected(-2));
    }

    #[test]
    fn an_answer_about_another_upload_decides_nothing() {
        let other = answer(-1, "b", ProgressState::Done);
        assert_eq!(after_done(&other, "a"), Verdict::Open);
        let other_ok = answer(0, "b", ProgressState::Done);
        assert_eq!(after_done(&other_ok, "a"), Verdict::Open);
    }

    #[test]
    fn a_put_is_withdrawn_by_a_refusal_of_its_own_report_or_unasked() {
        assert!(withdraws(&answer(-1, "a", ProgressState::Uploading), "a"));
        assert!(withdraws(&Heard::Answer { code: -1, to: None }, "a"));
        assert!(!withdraws(&answer(-1, "b", ProgressState::Done), "a"));
        assert!(!withdraws(&answer(0, "a", ProgressState::Uploading), "a"));
        assert!(!withdraws(&Heard::Result(-1), "a"));
    }
}
