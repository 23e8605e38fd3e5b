//! Tamper evidence: an attacker with write access to the file (or to the database schema)
//! drops the append-only triggers and edits, deletes, reorders or truncates history. `verify`
//! must name the stream and the sequence where the chain stops holding, and reads must refuse
//! the broken stream. Every attack runs on both durable engines.

use rekey_journal::{Digest32, Error, Head, JournalRead, chain_hash};
use rusqlite::{Connection, params};

use crate::common::{
    Kind, Place, assert_chain, assert_intact, expect_err, fill, manual_clock, on_both_engines, read,
};

/// Streams of the victim journal and their lengths; verify reads them in this (id) order.
const VICTIM: [(&str, u64); 3] = [("alpha", 4), ("bravo", 6), ("charlie", 3)];

/// Writes the journal every attack starts from (streams interleaved in global order), closes
/// it, and returns the heads exported while it was healthy.
async fn victim(place: &Place) -> Vec<Head> {
    let clock = manual_clock();
    let j = place.open(&clock);
    for round in 0..6 {
        for (stream, len) in VICTIM {
            if round < len {
                clock.advance(7);
                fill(&j, stream, 1).await;
            }
        }
    }
    let heads = j.heads().await.expect("heads");
    assert_intact(
        &j.verify(Some(&heads)).await.expect("verify"),
        "the victim before the attack",
    );
    heads
}

/// Direct access to the journal's storage, as an attacker with file or database access has.
enum Attacker {
    Sqlite(Connection),
    Postgres(tokio_postgres::Client),
}

/// Opens the journal's storage directly and drops the append-only triggers.
async fn attacker(place: &Place) -> Attacker {
    let a = connect(place).await;
    a.exec(match place.kind {
        Kind::Sqlite => {
            "DROP TRIGGER events_append_only_update;
             DROP TRIGGER events_append_only_delete;
             DROP TRIGGER streams_no_delete;
             DROP TRIGGER streams_head_forward;"
        }
        Kind::Postgres => {
            "DROP TRIGGER events_append_only ON events;
             DROP TRIGGER events_no_truncate ON events;
             DROP TRIGGER streams_no_delete ON streams;
             DROP TRIGGER streams_no_truncate ON streams;
             DROP TRIGGER streams_head_forward ON streams;"
        }
    })
    .await;
    a
}

/// Opens the journal's storage directly, triggers in place.
async fn connect(place: &Place) -> Attacker {
    match place.kind {
        Kind::Sqlite => {
            Attacker::Sqlite(Connection::open(&place.path).expect("opening the file directly"))
        }
        Kind::Postgres => {
            let c = crate::pg_server::client().await;
            c.batch_execute(&format!("SET search_path TO {}", place.schema))
                .await
                .expect("entering the journal's schema");
            Attacker::Postgres(c)
        }
    }
}

impl Attacker {
    async fn try_exec(&self, sql: &str) -> Result<(), String> {
        match self {
            Attacker::Sqlite(c) => c.execute_batch(sql).map_err(|e| e.to_string()),
            Attacker::Postgres(c) => c.batch_execute(sql).await.map_err(|e| {
                e.as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned())
            }),
        }
    }

    async fn exec(&self, sql: &str) {
        self.try_exec(sql)
            .await
            .unwrap_or_else(|e| panic!("attack {sql:?} failed: {e}"));
    }

    async fn get_row(&self, stream: &str, seq: u64) -> Row {
        let sql = "SELECT kind, schema_version, recorded_at_ms, payload, prev_hash, hash
                   FROM events WHERE stream_id = $1 AND stream_seq = $2";
        match self {
            Attacker::Sqlite(c) => c
                .query_row(sql, params![stream, seq as i64], |r| {
                    Ok(Row {
                        kind: r.get(0)?,
                        schema_version: r.get(1)?,
                        recorded_at_ms: r.get(2)?,
                        payload: r.get(3)?,
                        prev_hash: r.get(4)?,
                        hash: r.get(5)?,
                    })
                })
                .unwrap_or_else(|e| panic!("reading {stream}#{seq}: {e}")),
            Attacker::Postgres(c) => {
                let r = c
                    .query_one(sql, &[&stream, &(seq as i64)])
                    .await
                    .unwrap_or_else(|e| panic!("reading {stream}#{seq}: {e}"));
                Row {
                    kind: r.get(0),
                    schema_version: u32::try_from(r.get::<_, i64>(1)).expect("a version"),
                    recorded_at_ms: r.get(2),
                    payload: String::from_utf8(r.get(3)).expect("UTF-8"),
                    prev_hash: r.get(4),
                    hash: r.get(5),
                }
            }
        }
    }

    async fn put_row(&self, stream: &str, seq: u64, row: &Row) {
        let sql = "UPDATE events SET kind = $3, schema_version = $4, recorded_at_ms = $5,
                       payload = $6, prev_hash = $7, hash = $8
                   WHERE stream_id = $1 AND stream_seq = $2";
        let n = match self {
            Attacker::Sqlite(c) => c
                .execute(
                    // SQLite numbers `$n` parameters in order of appearance; `?n` by n.
                    &sql.replace('$', "?"),
                    params![
                        stream,
                        seq as i64,
                        row.kind,
                        row.schema_version,
                        row.recorded_at_ms,
                        row.payload,
                        row.prev_hash,
                        row.hash
                    ],
                )
                .map(|n| n as u64)
                .unwrap_or_else(|e| panic!("rewriting {stream}#{seq}: {e}")),
            Attacker::Postgres(c) => c
                .execute(
                    sql,
                    &[
                        &stream,
                        &(seq as i64),
                        &row.kind,
                        &i64::from(row.schema_version),
                        &row.recorded_at_ms,
                        &row.payload.as_bytes(),
                        &row.prev_hash,
                        &row.hash,
                    ],
                )
                .await
                .unwrap_or_else(|e| panic!("rewriting {stream}#{seq}: {e}")),
        };
        assert_eq!(n, 1, "rewriting {stream}#{seq} must touch one row");
    }
}

/// An event row's content columns (everything but its global and stream sequences).
#[derive(Debug, Clone)]
struct Row {
    kind: String,
    schema_version: u32,
    recorded_at_ms: i64,
    payload: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

/// Asserts `verify` reports its first broken link at `stream`#`seq`, described with `what`.
async fn assert_broken_at(
    place: &Place,
    exported: Option<&[Head]>,
    stream: &str,
    seq: u64,
    what: &str,
) {
    let j = place.open_audit();
    let report = j
        .verify(exported)
        .await
        .unwrap_or_else(|e| panic!("verify must report tampering as a broken link, not fail: {e}"));
    let broken = report
        .broken
        .unwrap_or_else(|| panic!("verify must find the tampering at {stream}#{seq}"));
    assert_eq!(
        (broken.stream_id.as_str(), broken.seq),
        (stream, seq),
        "verify must name the right stream and sequence: {broken}"
    );
    assert!(
        broken.what.contains(what),
        "verify should say {what:?}: {broken}"
    );
}

/// Asserts reading `stream` fails with `Corrupt` at `seq`, while the untouched streams read.
async fn assert_read_corrupt_at(place: &Place, stream: &str, seq: u64) {
    let j = place.open_audit();
    expect_err!(
        j.read_stream(stream).await,
        Error::Corrupt { stream: s, seq: q, .. } if s == stream && *q == seq,
        "reading {stream} must refuse the broken chain at sequence {seq}"
    );
    let all: Vec<String> = VICTIM.iter().map(|(s, _)| (*s).to_owned()).collect();
    expect_err!(
        j.read_streams(&all).await,
        Error::Corrupt { stream: s, seq: q, .. } if s == stream && *q == seq,
        "reading {stream} among others must refuse the broken chain at sequence {seq}"
    );
    for (other, len) in VICTIM.into_iter().filter(|(s, _)| *s != stream) {
        let events = read(&j, other).await;
        assert_chain(other, &events);
        assert_eq!(events.len() as u64, len, "{other} was not attacked");
    }
}

on_both_engines!(
    tamper_edited_payload_is_found_at_its_sequence,
    tamper_edited_and_rehashed_event_breaks_the_next_link,
    tamper_deleted_middle_event_is_found_as_a_gap,
    tamper_swapped_events_break_the_chain_at_the_first_swapped_position,
    tamper_rows_swapped_in_global_order_are_found,
    tamper_truncation_with_a_rewritten_head_is_found_by_exported_heads,
    tamper_truncation_without_head_rewrite_is_found,
    tamper_deleted_stream_is_found_by_exported_heads,
    triggers_refuse_updates_and_deletes_of_history,
);

/// (a) An edited payload no longer matches its hash: reading it must not hand it to a runner.
async fn tamper_edited_payload_is_found_at_its_sequence(kind: Kind) {
    let place = Place::new(kind);
    victim(&place).await;
    attacker(&place)
        .await
        .exec(r#"UPDATE events SET payload = '{"i":999}' WHERE stream_id = 'bravo' AND stream_seq = 3"#)
        .await;
    assert_broken_at(&place, None, "bravo", 3, "edited").await;
    assert_read_corrupt_at(&place, "bravo", 3).await;
}

/// (a') A smarter attacker re-hashes the edited event; the next event's link then breaks.
async fn tamper_edited_and_rehashed_event_breaks_the_next_link(kind: Kind) {
    let place = Place::new(kind);
    victim(&place).await;
    let c = attacker(&place).await;
    let mut row = c.get_row("bravo", 3).await;
    row.payload = r#"{"i":999}"#.into();
    let prev = Digest32(row.prev_hash.clone().try_into().expect("32 bytes"));
    row.hash = chain_hash(
        &prev,
        "bravo",
        3,
        &row.kind,
        row.schema_version,
        row.recorded_at_ms,
        &row.payload,
    )
    .0
    .to_vec();
    c.put_row("bravo", 3, &row).await;
    drop(c);
    assert_broken_at(&place, None, "bravo", 4, "prev_hash").await;
    assert_read_corrupt_at(&place, "bravo", 4).await;
}

/// (b) A deleted middle event leaves a sequence gap. `verify` names the missing sequence;
/// `read_stream` names the first stored event that fails to follow its predecessor.
async fn tamper_deleted_middle_event_is_found_as_a_gap(kind: Kind) {
    let place = Place::new(kind);
    victim(&place).await;
    attacker(&place)
        .await
        .exec("DELETE FROM events WHERE stream_id = 'bravo' AND stream_seq = 3")
        .await;
    assert_broken_at(&place, None, "bravo", 3, "gap").await;
    assert_read_corrupt_at(&place, "bravo", 4).await;
}

/// (c) Two events of a stream swapped in place: the first swapped position no longer links.
async fn tamper_swapped_events_break_the_chain_at_the_first_swapped_position(kind: Kind) {
    let place = Place::new(kind);
    victim(&place).await;
    let c = attacker(&place).await;
    let (second, third) = (c.get_row("bravo", 2).await, c.get_row("bravo", 3).await);
    c.put_row("bravo", 2, &third).await;
    c.put_row("bravo", 3, &second).await;
    drop(c);
    assert_broken_at(&place, None, "bravo", 2, "prev_hash").await;
    assert_read_corrupt_at(&place, "bravo", 2).await;
}

/// (c') Whole rows swapped in global order (each keeps its content and stream position):
/// the stream still chains, but global order no longer follows stream order.
async fn tamper_rows_swapped_in_global_order_are_found(kind: Kind) {
    let place = Place::new(kind);
    victim(&place).await;
    attacker(&place)
        .await
        .exec(
            "CREATE TEMP TABLE g AS SELECT stream_seq, global_seq FROM events
                 WHERE stream_id = 'bravo' AND stream_seq IN (2, 3);
             UPDATE events SET global_seq = -global_seq
                 WHERE stream_id = 'bravo' AND stream_seq IN (2, 3);
             UPDATE events SET global_seq = (SELECT global_seq FROM g WHERE g.stream_seq = 5 - events.stream_seq)
                 WHERE stream_id = 'bravo' AND stream_seq IN (2, 3);",
        )
        .await;
    assert_broken_at(&place, None, "bravo", 3, "global order").await;
}

/// (d) The tail truncated and the head row rewritten to match: the journal is
/// self-consistent, so only heads exported before the attack reveal it.
async fn tamper_truncation_with_a_rewritten_head_is_found_by_exported_heads(kind: Kind) {
    let place = Place::new(kind);
    let exported = victim(&place).await;
    attacker(&place)
        .await
        .exec(
            "DELETE FROM events WHERE stream_id = 'bravo' AND stream_seq > 4;
             UPDATE streams SET head_seq = 4,
                 head_hash = (SELECT hash FROM events WHERE stream_id = 'bravo' AND stream_seq = 4)
                 WHERE stream_id = 'bravo';",
        )
        .await;
    let j = place.open_audit();
    assert_intact(
        &j.verify(None).await.expect("verify"),
        "without exported heads a consistent truncation is invisible (this is why heads are exported)",
    );
    let events = read(&j, "bravo").await;
    assert_chain("bravo", &events);
    assert_eq!(
        events.len(),
        4,
        "the truncated stream reads as its 4 remaining events"
    );
    assert_broken_at(&place, Some(&exported), "bravo", 5, "truncated").await;
}

/// (d') The tail truncated but the head row left alone: the journal's own head record shows it.
async fn tamper_truncation_without_head_rewrite_is_found(kind: Kind) {
    let place = Place::new(kind);
    victim(&place).await;
    attacker(&place)
        .await
        .exec("DELETE FROM events WHERE stream_id = 'bravo' AND stream_seq > 4")
        .await;
    assert_broken_at(&place, None, "bravo", 5, "truncated").await;
    assert_read_corrupt_at(&place, "bravo", 5).await;
}

/// (e) A whole stream deleted, head row included: exported heads name it.
async fn tamper_deleted_stream_is_found_by_exported_heads(kind: Kind) {
    let place = Place::new(kind);
    let exported = victim(&place).await;
    attacker(&place)
        .await
        .exec(
            "DELETE FROM events WHERE stream_id = 'charlie';
             DELETE FROM streams WHERE stream_id = 'charlie';",
        )
        .await;
    assert_broken_at(&place, Some(&exported), "charlie", 1, "missing").await;
}

/// (f) A column rewritten with another SQLite type (payload stored as a BLOB): still tampering,
/// so `verify` must report a broken link at that event rather than fail as a storage error.
/// (PostgreSQL columns have one type each, so this attack exists on SQLite only.)
#[tokio::test]
async fn tamper_retyped_column_is_reported_as_a_broken_link() {
    let place = Place::new(Kind::Sqlite);
    victim(&place).await;
    attacker(&place)
        .await
        .exec(
            "UPDATE events SET payload = CAST(payload AS BLOB)
             WHERE stream_id = 'bravo' AND stream_seq = 3",
        )
        .await;
    assert_broken_at(&place, None, "bravo", 3, "").await;
    assert_read_corrupt_at(&place, "bravo", 3).await;
}

/// A hash column rewritten as text is corruption at its event when read, not a storage
/// error.
#[tokio::test]
async fn tamper_hash_retyped_as_text_is_read_as_corruption_at_its_event() {
    let place = Place::new(Kind::Sqlite);
    victim(&place).await;
    attacker(&place)
        .await
        .exec("UPDATE events SET prev_hash = hex(prev_hash) WHERE stream_id = 'bravo' AND stream_seq = 4")
        .await;
    assert_read_corrupt_at(&place, "bravo", 4).await;
}

/// With its triggers in place, the journal's storage itself refuses rewrites of history.
async fn triggers_refuse_updates_and_deletes_of_history(kind: Kind) {
    let place = Place::new(kind);
    victim(&place).await;
    let c = connect(&place).await;
    let mut attacks = vec![
        (
            r#"UPDATE events SET payload = '{"i":999}' WHERE stream_id = 'bravo' AND stream_seq = 3"#,
            "append-only",
        ),
        (
            "DELETE FROM events WHERE stream_id = 'bravo' AND stream_seq = 6",
            "append-only",
        ),
        (
            "DELETE FROM streams WHERE stream_id = 'charlie'",
            "cannot be deleted",
        ),
        (
            "UPDATE streams SET head_seq = 4 WHERE stream_id = 'bravo'",
            "only move forward",
        ),
    ];
    if kind == Kind::Postgres {
        attacks.extend([
            ("TRUNCATE events", "append-only"),
            ("TRUNCATE streams CASCADE", "cannot be deleted"),
        ]);
    }
    for (sql, why) in attacks {
        let err = c
            .try_exec(sql)
            .await
            .expect_err(&format!("the triggers must refuse {sql}"));
        assert!(
            err.contains(why),
            "{sql}: refused for the wrong reason: {err}"
        );
    }
    drop(c);
    let j = place.open_audit();
    let report = j.verify(None).await.expect("verify");
    assert_intact(&report, "after the refused attacks");
    assert_eq!(report.events, 13, "every event is still there");
}

/// (SQLite only) A file whose chains hold but whose storage is damaged (an index page overwritten) is not
/// reported intact: SQLite's integrity check names the damage, and no chain is vouched for.
#[tokio::test]
async fn a_damaged_index_page_is_reported() {
    let place = Place::new(Kind::Sqlite);
    let path = place.path.clone();
    victim(&place).await;
    let (page, size): (i64, i64) = {
        let c = Connection::open(&path).expect("opening the file directly");
        let page = c
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'streams_by_status'",
                [],
                |r| r.get(0),
            )
            .expect("the index's page");
        let size = c
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .expect("the page size");
        (page, size)
    };
    let mut bytes = std::fs::read(&path).expect("reading the file");
    let at = ((page - 1) * size) as usize;
    bytes[at..at + size as usize].fill(0x55);
    std::fs::write(&path, bytes).expect("writing the damage");

    let j = place.open_audit();
    let report = j
        .verify(None)
        .await
        .expect("verify reports damage, it does not fail");
    assert!(!report.is_intact(), "{report:?}");
    assert!(
        report.damaged.as_deref().is_some_and(|d| !d.is_empty()),
        "{report:?}"
    );
    assert_eq!(report.broken, None, "damage is not a broken link");
}
