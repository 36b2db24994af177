//! What one turn of the switchboard changed that must be on disk before
//! anyone hears of it: the writes a turn needs, carrying them out, and
//! settling the turn when settings could not be stored.

use std::time::Instant;

use keyline_proto::call::{Action, Switchboard};
use keyline_proto::msg::ReqId;

use crate::db::{CdrRow, Db};

/// What one turn of the switchboard changed that must be on disk before
/// anyone hears of it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Write {
    /// A station's settings, changed by a feature code it dialled.
    Settings {
        ext: String,
        settings: keyline_proto::msg::LineSettings,
    },
    /// The record of a call that ended.
    Record(CdrRow),
}

/// The writes a turn's actions need, in their order; `wall_ms` turns the
/// switchboard's instants into wall-clock time.
pub(super) fn writes_of(batch: &[Action], wall_ms: impl Fn(Instant) -> i64) -> Vec<Write> {
    batch
        .iter()
        .filter_map(|a| match a {
            Action::Settings { ext, settings, .. } => Some(Write::Settings {
                ext: ext.clone(),
                settings: settings.clone(),
            }),
            Action::Record(rec) => Some(Write::Record(CdrRow {
                id: 0,
                call_id: rec.call.map(|c| c as i64),
                caller: rec.caller.clone(),
                callee: rec.callee.clone(),
                start_ms: wall_ms(rec.started),
                answer_ms: rec.answered.map(&wall_ms),
                end_ms: wall_ms(rec.ended),
                outcome: rec.outcome.as_str().to_string(),
            })),
            _ => None,
        })
        .collect()
}

/// The extensions whose settings `writes` store.
pub(super) fn settings_written(writes: &[Write]) -> Vec<String> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Settings { ext, .. } => Some(ext.clone()),
            Write::Record(_) => None,
        })
        .collect()
}

/// Carry out `writes` in order (blocking: run it off the event loop).
/// Returns the extensions whose settings could not be stored, with why. A
/// call record that cannot be written is kept in memory and written later
/// (`Db::insert_cdr`): the call has ended either way.
pub(super) fn store(db: &Db, writes: &[Write]) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for w in writes {
        match w {
            Write::Settings { ext, settings } => {
                if let Err(e) = db.save_settings(ext, settings) {
                    tracing::error!("could not store the settings of {ext}: {e:#}");
                    failed.push((ext.clone(), format!("{e:#}")));
                }
            }
            Write::Record(row) => {
                if let Err(e) = db.insert_cdr(row) {
                    tracing::error!("could not write the call record: {e:#}");
                }
            }
        }
    }
    failed
}

/// What the switch does with one action of a stored turn.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    Act(Action),
    /// Tell `ext` its request `req` did not happen.
    Refuse {
        ext: String,
        req: ReqId,
        message: String,
    },
}

/// A turn's actions once its writes were tried: settings that could not
/// be stored (`failed`) are undone in `sb`, so it holds what the disk
/// holds, their station is not shown them, and the feature code that
/// changed them is refused instead of confirmed.
pub(super) fn settle(
    sb: &mut Switchboard,
    batch: Vec<Action>,
    failed: &[(String, String)],
) -> Vec<Step> {
    let why = |ext: &str| failed.iter().find(|(e, _)| e == ext).map(|(_, w)| w);
    batch
        .into_iter()
        .filter_map(|a| match a {
            Action::Settings { ext, before, .. } if why(&ext).is_some() => {
                sb.set_settings(&ext, before);
                None
            }
            Action::Feature { caller, req, .. } if why(&caller).is_some() => {
                let message = format!(
                    "the change could not be stored, so nothing changed: {}",
                    why(&caller).map_or("", String::as_str)
                );
                Some(Step::Refuse {
                    ext: caller,
                    req,
                    message,
                })
            }
            a => Some(Step::Act(a)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keyline_proto::call::Config as CallConfig;
    use keyline_proto::msg::LineSettings;
    use std::path::PathBuf;

    /// A scratch database, removed on drop.
    struct TestDb {
        dir: PathBuf,
        db: Db,
    }

    impl TestDb {
        fn new(tag: &str) -> TestDb {
            let dir = std::env::temp_dir().join(format!("kl-gw-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let db = Db::open(&dir.join("gatewayd.db")).unwrap();
            TestDb { dir, db }
        }

        /// Make every write of settings fail, as a full disk would.
        fn refuse_settings(&self) {
            let c = rusqlite::Connection::open(self.dir.join("gatewayd.db")).unwrap();
            c.execute_batch(
                "CREATE TRIGGER full BEFORE INSERT ON line_settings
                 BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
            )
            .unwrap();
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn board() -> (Switchboard, Instant) {
        let now = Instant::now();
        let mut sb = Switchboard::new(CallConfig::default());
        for l in ["201", "202"] {
            sb.add_line(l);
            sb.handle_line_up(now, l);
        }
        (sb, now)
    }

    fn turn(sb: &mut Switchboard) -> Vec<Action> {
        std::iter::from_fn(|| sb.poll_action()).collect()
    }

    fn dnd_on_disk(db: &Db, ext: &str) -> Option<bool> {
        db.all_settings()
            .unwrap()
            .into_iter()
            .find(|(e, _)| e == ext)
            .map(|(_, s)| s.dnd)
    }

    #[test]
    fn a_feature_code_is_on_disk_before_it_is_confirmed() {
        let t = TestDb::new("store");
        let (mut sb, now) = board();
        sb.handle_dial(now, "201", 1, "*78");
        let batch = turn(&mut sb);
        let writes = writes_of(&batch, |_| 0);
        assert_eq!(
            writes,
            [Write::Settings {
                ext: "201".into(),
                settings: LineSettings {
                    dnd: true,
                    ..LineSettings::default()
                },
            }]
        );
        // Nothing of the turn has been carried out yet, and the write is
        // what comes first.
        assert_eq!(dnd_on_disk(&t.db, "201"), None);
        assert!(store(&t.db, &writes).is_empty());
        assert_eq!(dnd_on_disk(&t.db, "201"), Some(true));
        let steps = settle(&mut sb, batch, &[]);
        assert!(steps
            .iter()
            .any(|s| matches!(s, Step::Act(Action::Feature { req: 1, .. }))));
        assert!(steps
            .iter()
            .any(|s| matches!(s, Step::Act(Action::Settings { settings, .. }) if settings.dnd)));
        assert!(sb.settings("201").is_some_and(|s| s.dnd));
    }

    #[test]
    fn settings_that_cannot_be_stored_are_undone_and_refused() {
        let t = TestDb::new("refuse");
        let (mut sb, now) = board();
        sb.handle_dial(now, "201", 1, "*72202");
        let batch = turn(&mut sb);
        assert!(store(&t.db, &writes_of(&batch, |_| 0)).is_empty());
        let steps = settle(&mut sb, batch, &[]);
        assert!(steps.iter().any(|s| matches!(s, Step::Act(_))));

        t.refuse_settings();
        sb.handle_dial(now, "201", 2, "*78");
        let batch = turn(&mut sb);
        let failed = store(&t.db, &writes_of(&batch, |_| 0));
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(failed[0].1.contains("full"), "{failed:?}");
        let steps = settle(&mut sb, batch, &failed);
        // The station hears that nothing changed, not that it did.
        assert_eq!(steps.len(), 1, "{steps:?}");
        match &steps[0] {
            Step::Refuse { ext, req, message } => {
                assert_eq!((ext.as_str(), *req), ("201", 2));
                assert!(message.contains("could not be stored"), "{message}");
                assert!(message.contains("full"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // The switchboard holds what the disk holds: the earlier
        // forwarding, no do-not-disturb.
        let held = sb.settings("201").cloned().unwrap();
        assert!(!held.dnd);
        assert_eq!(held.forward_always.as_deref(), Some("202"));
        assert_eq!(dnd_on_disk(&t.db, "201"), Some(false));
    }

    #[test]
    fn a_call_record_is_written_in_the_turn_that_ends_the_call() {
        let t = TestDb::new("cdr");
        let (mut sb, now) = board();
        sb.handle_dial(now, "201", 1, "202");
        let _ = turn(&mut sb);
        let call = sb.calls().next().unwrap().id;
        sb.handle_answer(now, "202", call).unwrap();
        let _ = turn(&mut sb);
        sb.handle_hangup(now, "201", call).unwrap();
        let batch = turn(&mut sb);
        assert!(batch.iter().any(|a| matches!(a, Action::Ended { .. })));
        let writes = writes_of(&batch, |_| 1_000);
        assert!(matches!(&writes[..], [Write::Record(r)] if r.outcome == "answered"));
        assert!(store(&t.db, &writes).is_empty());
        let rows = t.db.cdr(10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].caller.as_str(), rows[0].callee.as_str()),
            ("201", "202")
        );
    }
}
