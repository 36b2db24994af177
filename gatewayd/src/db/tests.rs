//! The store's unit tests.

use super::*;

/// A new database opened by several at once (the daemon and an admin
/// command on a fresh appliance): every opener gets the full schema.
#[test]
fn a_new_database_opened_by_several_at_once_is_made_once() {
    for round in 0..20 {
        let dir = std::env::temp_dir().join(format!("kl-gwdb-race-{}-{round}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("gateway.sqlite");
        std::thread::scope(|s| {
            let opens: Vec<_> = (0..4).map(|_| s.spawn(|| Db::open(&path))).collect();
            for o in opens {
                let db = o.join().expect("thread").expect("open");
                assert!(db.agents().expect("the agents table").is_empty());
            }
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn the_ring_group_keeps_its_office_mailbox() {
    let db = Db::open_in_memory().expect("db");
    assert_eq!(db.ring_group().expect("read"), None);
    let mut g = RingGroup {
        mode: "hunt".into(),
        members: vec!["202".into(), "201".into()],
        step_secs: 7,
        mailbox: Some("201".into()),
    };
    db.set_ring_group(Some(&g)).expect("store");
    assert_eq!(db.ring_group().expect("read").as_ref(), Some(&g));
    g.mailbox = None;
    db.set_ring_group(Some(&g)).expect("store");
    assert_eq!(db.ring_group().expect("read").as_ref(), Some(&g));
    db.set_ring_group(None).expect("clear");
    assert_eq!(db.ring_group().expect("read"), None);
}

#[test]
fn approve_assigns_next_free_extension_and_refuses_conflicts() {
    let db = Db::open_in_memory().expect("db");
    db.upsert_pending("fa", "111111", Some("desk a"), "10.0.0.2:1")
        .expect("insert");
    db.upsert_pending("fb", "222222", None, "10.0.0.3:1")
        .expect("insert");
    db.upsert_pending("fc", "333333", None, "10.0.0.4:1")
        .expect("insert");
    let a = db
        .approve("111111", None, None, (201, 499))
        .expect("approve");
    assert_eq!(a.ext.as_deref(), Some("201"));
    assert_eq!(a.name.as_deref(), Some("desk a"));
    let b = db
        .approve("222222", Some("300"), Some("Bob"), (201, 499))
        .expect("approve");
    assert_eq!(
        (b.ext.as_deref(), b.name.as_deref()),
        (Some("300"), Some("Bob"))
    );
    let err = db
        .approve("333333", Some("300"), None, (201, 499))
        .expect_err("taken");
    assert!(err.to_string().contains("already taken"));
    let err = db
        .approve("999999", None, None, (201, 499))
        .expect_err("no such");
    assert!(err.to_string().contains("no station"));
    // approving twice is refused: the code is no longer pending
    assert!(db.approve("111111", None, None, (201, 499)).is_err());
}

/// Stations waiting for approval that went away are forgotten after a
/// while, at most `cap` are kept (the ones gone longest go first), and
/// a connected one is never forgotten; approved stations stay.
#[test]
fn pending_stations_that_left_are_pruned_and_capped() {
    let db = Db::open_in_memory().expect("db");
    for i in 0..6 {
        db.upsert_pending(&format!("f{i}"), &format!("{i}{i}{i}"), None, "10.0.0.2:1")
            .expect("insert");
    }
    db.approve("000", None, None, (201, 499)).expect("approve");
    let t = now_ms();
    // f1 left long ago, f2 a while ago, f3 just now; f4 and f5 wait.
    db.pending_left("f1", t - 10_000).expect("left");
    db.pending_left("f2", t - 5_000).expect("left");
    db.pending_left("f3", t).expect("left");
    let waiting = vec!["f4".to_string(), "f5".to_string()];
    assert_eq!(
        db.prune_pending(t - 8_000, 100, &waiting).expect("prune"),
        (1, 4)
    );
    // Over the cap: the one gone longest (f2) first, never f4 or f5.
    assert_eq!(db.prune_pending(0, 3, &waiting).expect("prune"), (1, 3));
    let mut left: Vec<String> = db
        .agents()
        .expect("agents")
        .into_iter()
        .map(|a| format!("{} {}", a.fingerprint, a.state))
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["f0 approved", "f3 pending", "f4 pending", "f5 pending"]
    );
    // Only connected ones left over the cap: kept, and counted.
    assert_eq!(db.prune_pending(0, 1, &waiting).expect("prune"), (1, 2));
    db.forget_pending("f5").expect("forget");
    assert_eq!(db.prune_pending(0, 1, &waiting).expect("prune"), (0, 1));
    assert!(db.approve("444", None, None, (201, 499)).is_ok());
}

#[test]
fn cdr_roundtrip_and_file_survives_reopen() {
    let dir = std::env::temp_dir().join(format!("kl-db-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("t.sqlite");
    let _ = std::fs::remove_file(&path);
    {
        let db = Db::open(&path).expect("open");
        db.insert_cdr(&CdrRow {
            id: 0,
            call_id: Some(7),
            caller: "201".into(),
            callee: "202".into(),
            start_ms: 1,
            answer_ms: Some(2),
            end_ms: 3,
            outcome: "answered".into(),
        })
        .expect("insert");
    }
    let db = Db::open(&path).expect("reopen");
    let rows = db.cdr(10).expect("cdr");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, "answered");
    assert_eq!(db.max_call_id().expect("max"), 7);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn call_records_wait_in_memory_while_the_database_is_full() {
    let db = Db::open_in_memory().expect("db");
    let row = |call: i64| CdrRow {
        id: 0,
        call_id: Some(call),
        caller: "201".into(),
        callee: "202".into(),
        start_ms: call,
        answer_ms: None,
        end_ms: call + 1,
        outcome: "no-answer".into(),
    };
    db.insert_cdr(&row(1)).expect("room");
    // SQLite's own limit on the file: inserts fail with "database or
    // disk is full", as on a full disk.
    let pages: i64 = db
        .with(|c| Ok(c.query_row("PRAGMA page_count", [], |r| r.get(0))?))
        .expect("pages");
    db.with(|c| Ok(c.pragma_update(None, "max_page_count", pages)?))
        .expect("limit");
    let mut big = row(2);
    big.caller = "x".repeat(20_000);
    let err = db.insert_cdr(&big).expect_err("full");
    assert!(format!("{err:#}").contains("full"), "{err:#}");
    assert!(
        format!("{err:#}").contains("1 call record(s) kept"),
        "{err:#}"
    );
    let err = db.insert_cdr(&row(3)).expect_err("still full");
    assert!(
        format!("{err:#}").contains("2 call record(s) kept"),
        "{err:#}"
    );
    assert_eq!(db.unwritten_count(), 2);
    // Shown meanwhile, after the ones written.
    let shown: Vec<Option<i64>> = db.cdr(10).expect("cdr").iter().map(|r| r.call_id).collect();
    assert_eq!(shown, vec![Some(1), Some(2), Some(3)]);
    // Room again: written in order, nothing lost, nothing twice.
    db.with(|c| Ok(c.pragma_update(None, "max_page_count", 1_000_000)?))
        .expect("room");
    assert_eq!(db.write_unwritten().expect("write"), 2);
    assert_eq!(db.unwritten_count(), 0);
    let rows = db.cdr(10).expect("cdr");
    let ids: Vec<Option<i64>> = rows.iter().map(|r| r.call_id).collect();
    assert_eq!(ids, vec![Some(1), Some(2), Some(3)]);
    assert!(rows.iter().all(|r| r.id > 0));
    assert_eq!(db.write_unwritten().expect("nothing"), 0);
}

#[test]
fn mail_the_directory_delivers_again_is_kept_once() {
    let db = Db::open_in_memory().expect("db");
    let at = 1_700_000_000_000;
    let first = db
        .insert_delivered_text((7, at), "1001", "204", "call me")
        .expect("keep");
    assert_eq!(first.map(|t| t.body).as_deref(), Some("call me"));
    // Delivered again (the gateway was killed before it acknowledged).
    let again = db
        .insert_delivered_text((7, at), "1001", "204", "call me")
        .expect("again");
    assert!(again.is_none());
    assert_eq!(db.unread_texts("204").expect("texts").len(), 1);
    // Another message is another message.
    assert!(db
        .insert_delivered_text((8, at), "1001", "204", "call me")
        .expect("another")
        .is_some());
    assert_eq!(db.unread_texts("204").expect("texts").len(), 2);

    let path = "/var/lib/keyline/voicemail/204/1-1001.opus";
    assert!(db
        .insert_delivered_voicemail((9, at), "204", "1001", path, 1.5)
        .expect("keep")
        .is_some());
    assert!(db
        .insert_delivered_voicemail((9, at), "204", "1001", path, 1.5)
        .expect("again")
        .is_none());
    assert_eq!(db.voicemails("204").expect("voicemails").len(), 1);
}

#[test]
fn settings_speed_dials_and_texts() {
    let db = Db::open_in_memory().expect("db");
    let s = LineSettings {
        forward_busy: Some("205".into()),
        dnd: true,
        ..LineSettings::default()
    };
    db.save_settings("201", &s).expect("save");
    assert_eq!(
        db.all_settings().expect("load"),
        vec![("201".to_string(), s)]
    );
    db.set_speed_dial("*1", Some("+15550100")).expect("set");
    assert_eq!(
        db.speed_dials().expect("list"),
        vec![("*1".into(), "+15550100".into())]
    );
    assert!(db.set_speed_dial("*1", None).expect("rm"));
    assert!(!db.set_speed_dial("*1", None).expect("rm again"));
    let t = db.insert_text("201", "202", "hello").expect("text");
    assert_eq!(db.unread_texts("202").expect("unread").len(), 1);
    // Only the recipient can mark it read.
    assert_eq!(db.mark_read("203", &[t.id as u64]).expect("mark"), 0);
    assert_eq!(db.mark_read("202", &[t.id as u64]).expect("mark"), 1);
    assert!(db.unread_texts("202").expect("unread").is_empty());
}

/// A database upgraded through every migration has the same schema as
/// a fresh one.
#[test]
fn upgraded_schema_equals_fresh_schema() {
    let schema = |c: &Connection| -> Vec<String> {
        let mut st = c
            .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name")
            .expect("prepare");
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .expect("query")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows");
        rows
    };
    let mut old = Connection::open_in_memory().expect("db");
    old.execute_batch(MIGRATIONS[0]).expect("v1");
    old.pragma_update(None, "user_version", 1).expect("pragma");
    migrate(&mut old).expect("upgrade");
    let mut fresh = Connection::open_in_memory().expect("db");
    migrate(&mut fresh).expect("fresh");
    assert_eq!(schema(&old), schema(&fresh));
}

#[test]
fn the_migration_carries_reception_into_the_ring_groups() {
    let mut conn = Connection::open_in_memory().expect("db");
    for sql in &MIGRATIONS[..8] {
        conn.execute_batch(sql).expect("old schema");
    }
    conn.pragma_update(None, "user_version", 8).expect("pragma");
    conn.execute(
        "INSERT INTO ring_group (id, mode, members, step_secs, mailbox)
         VALUES (1, 'hunt', '[\"203\",\"202\"]', 9, '202')",
        [],
    )
    .expect("old row");
    migrate(&mut conn).expect("upgrade");
    let db = Db::with_connection(conn);
    assert_eq!(
        db.ring_group().expect("read"),
        Some(RingGroup {
            mode: "hunt".into(),
            members: vec!["203".into(), "202".into()],
            step_secs: 9,
            mailbox: Some("202".into()),
        })
    );
    // Reception is not one of the groups with an extension.
    assert_eq!(db.ring_groups().expect("groups"), vec![]);
    assert_eq!(db.extension_range().expect("range"), None);
}

fn group(ext: &str, name: &str, members: &[&str]) -> NamedRingGroup {
    NamedRingGroup {
        ext: ext.into(),
        name: name.into(),
        group: RingGroup {
            mode: "all".into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            step_secs: 15,
            mailbox: None,
        },
    }
}

#[test]
fn ring_groups_keep_their_extensions_apart_from_the_stations() {
    let db = Db::open_in_memory().expect("db");
    db.upsert_pending("fa", "111111", Some("Ann"), "10.0.0.2:1")
        .expect("insert");
    db.approve("111111", Some("202"), None, (201, 499))
        .expect("approve");
    let range = (201, 699);
    let sales = group("600", "Sales", &["202"]);
    db.put_ring_group(&sales, Put::Add, range).expect("add");
    // Reception beside them stays apart.
    let r = RingGroup {
        mode: "all".into(),
        members: vec!["202".into()],
        step_secs: 15,
        mailbox: None,
    };
    db.set_ring_group(Some(&r)).expect("reception");
    let e = db
        .put_ring_group(&group("600", "Other", &["202"]), Put::Add, range)
        .expect_err("taken");
    assert_eq!(
        e.to_string(),
        "Extension: 600 is taken by the ring group Sales"
    );
    let e = db
        .put_ring_group(&group("202", "Desk", &["202"]), Put::Add, range)
        .expect_err("a station's");
    assert_eq!(e.to_string(), "Extension: 202 is taken by the station Ann");
    let e = db
        .put_ring_group(&group("700", "Far", &["202"]), Put::Add, range)
        .expect_err("outside");
    assert_eq!(
        e.to_string(),
        "Extension: 700 is outside the extension range 201-699"
    );
    let e = db
        .put_ring_group(&group("610", "Support", &["202"]), Put::Edit, range)
        .expect_err("no such group");
    assert_eq!(e.to_string(), "Extension: there is no ring group 610");
    let mut changed = group("600", "Sales team", &["202"]);
    changed.group.mode = "hunt".into();
    changed.group.mailbox = Some("202".into());
    db.put_ring_group(&changed, Put::Edit, range).expect("edit");
    db.put_ring_group(&group("99", "Short", &["202"]), Put::Add, (10, 699))
        .expect("add");
    assert_eq!(
        db.ring_groups().expect("groups"),
        vec![group("99", "Short", &["202"]), changed]
    );
    assert_eq!(db.ring_group().expect("reception"), Some(r));
    // A station cannot take a group's extension, and the next free one
    // skips it.
    db.upsert_pending("fb", "222222", None, "10.0.0.3:1")
        .expect("insert");
    let e = db
        .approve("222222", Some("600"), None, range)
        .expect_err("a group's");
    assert!(e.to_string().contains("ring group"), "{e}");
    let e = db
        .set_extension("202", Some("600"), None, range)
        .expect_err("a group's");
    assert!(e.to_string().contains("ring group"), "{e}");
    let b = db
        .approve("222222", None, None, (600, 601))
        .expect("approve");
    assert_eq!(b.ext.as_deref(), Some("601"));
    assert!(db.remove_ring_group("600").expect("remove"));
    assert!(!db.remove_ring_group("600").expect("again"));
    assert!(!db.remove_ring_group(RECEPTION).expect("reception"));
    assert_eq!(db.ring_groups().expect("groups").len(), 1);
}

#[test]
fn a_revoked_or_renumbered_extension_leaves_or_follows_the_ring_groups() {
    let db = Db::open_in_memory().expect("db");
    let range = (201, 699);
    for (fp, code, ext) in [("fa", "111111", "202"), ("fb", "222222", "203")] {
        db.upsert_pending(fp, code, None, "10.0.0.2:1")
            .expect("insert");
        db.approve(code, Some(ext), None, range).expect("approve");
    }
    let mut sales = group("600", "Sales", &["202", "203"]);
    sales.group.mailbox = Some("202".into());
    db.put_ring_group(&sales, Put::Add, range).expect("add");
    db.put_ring_group(&group("610", "Other", &["203"]), Put::Add, range)
        .expect("add");
    let reception = RingGroup {
        mode: "all".into(),
        members: vec!["203".into(), "202".into()],
        step_secs: 5,
        mailbox: Some("202".into()),
    };
    db.set_ring_group(Some(&reception)).expect("reception");

    // Renumbered: 202 becomes 250 in members and mailboxes.
    let (row, touched) = db
        .set_extension("202", Some("250"), None, range)
        .expect("renumber");
    assert_eq!(row.ext.as_deref(), Some("250"));
    assert_eq!(
        touched,
        GroupsTouched {
            reception: true,
            named: true
        }
    );
    let groups = db.ring_groups().expect("groups");
    assert_eq!(groups[0].group.members, vec!["250", "203"]);
    assert_eq!(groups[0].group.mailbox.as_deref(), Some("250"));
    assert_eq!(groups[1].group.members, vec!["203"]);
    let r = db.ring_group().expect("read").expect("reception");
    assert_eq!(r.members, vec!["203", "250"]);
    assert_eq!(r.mailbox.as_deref(), Some("250"));
    // A name alone touches no group.
    let (_, touched) = db
        .set_extension("250", None, Some("Ann"), range)
        .expect("rename");
    assert_eq!(touched, GroupsTouched::default());

    // Revoked: 250 leaves every group and mailbox; a new station given
    // 250 later is rung by none of them.
    let (fp, touched) = db.revoke("250").expect("revoke");
    assert_eq!(fp, "fa");
    assert!(touched.reception && touched.named);
    let groups = db.ring_groups().expect("groups");
    assert_eq!(groups[0].group.members, vec!["203"]);
    assert_eq!(groups[0].group.mailbox, None);
    let r = db.ring_group().expect("read").expect("reception");
    assert_eq!(r.members, vec!["203"]);
    assert_eq!(r.mailbox, None);
    // An extension in no group touches none; an unknown one changes
    // nothing.
    let (_, touched) = db
        .set_extension("203", Some("203"), None, range)
        .expect("same");
    assert_eq!(touched, GroupsTouched::default());
    assert!(db.revoke("250").is_err());
    assert_eq!(db.ring_groups().expect("groups"), groups);

    assert_eq!(
        rename_member(&["1".into(), "2".into()], "1", Some("2")),
        vec!["2"]
    );
}

#[test]
fn a_range_that_leaves_someone_outside_is_refused_and_nothing_saved() {
    let db = Db::open_in_memory().expect("db");
    db.upsert_pending("fa", "111111", Some("Ann"), "10.0.0.2:1")
        .expect("insert");
    db.approve("111111", Some("205"), None, (201, 499))
        .expect("approve");
    db.put_ring_group(&group("450", "Sales", &["205"]), Put::Add, (201, 499))
        .expect("add");
    let file = (201, 499);
    let e = db
        .set_extension_range(Some((300, 399)), file)
        .expect_err("both outside");
    assert_eq!(
        e.to_string(),
        "the range 300-399 would leave station 205 (Ann), ring group 450 (Sales) outside it: change them first"
    );
    assert_eq!(db.extension_range().expect("range"), None);
    db.set_extension_range(Some((200, 459)), file).expect("set");
    assert_eq!(db.extension_range().expect("range"), Some((200, 459)));
    // Going back to a file's range that would leave 450 outside.
    let e = db
        .set_extension_range(None, (201, 299))
        .expect_err("group outside");
    assert!(e.to_string().contains("ring group 450 (Sales)"), "{e}");
    assert_eq!(db.extension_range().expect("range"), Some((200, 459)));
    db.set_extension_range(None, file).expect("clear");
    assert_eq!(db.extension_range().expect("range"), None);
}

#[test]
fn newer_schema_is_refused() {
    let mut conn = Connection::open_in_memory().expect("db");
    conn.pragma_update(None, "user_version", 99)
        .expect("pragma");
    assert!(migrate(&mut conn).is_err());
}
