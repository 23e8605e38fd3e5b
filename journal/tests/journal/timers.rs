//! Durable timers: armed and disarmed atomically with the event that carries the change,
//! visible only once due, earliest first, and kept across a restart.

use rekey_journal::{Append, Error, JournalAppend, JournalScan, NewEvent, Timer, TimerOp};
use serde_json::json;

use crate::common::{
    Engine, Kind, Place, T0, append_ok, event, expect_err, head_seq, manual_clock, memory,
    on_both_engines, open_sqlite, scratch,
};

fn timer(stream: &str, name: &str, due_at_ms: i64) -> Timer {
    Timer {
        stream_id: stream.into(),
        name: name.into(),
        due_at_ms,
    }
}

fn schedule(name: &str, due_at_ms: i64) -> NewEvent {
    event("Waiting", json!({ "timer": name })).with_timer(TimerOp::Schedule {
        name: name.into(),
        due_at_ms,
    })
}

fn clear(name: &str) -> NewEvent {
    event("Woken", json!({ "timer": name })).with_timer(TimerOp::Clear { name: name.into() })
}

/// Appends one event to `stream` at its current head.
async fn on<J: Engine>(j: &J, stream: &str, e: NewEvent) {
    append_ok(j, Append::new(stream, head_seq(j, stream).await, vec![e])).await;
}

async fn all_timers<J: Engine>(j: &J) -> Vec<Timer> {
    j.due_timers(i64::MAX, 100).await.expect("due_timers")
}

/// Arms three timers and checks visibility, order and re-arming.
async fn arm<J: Engine>(j: &J) {
    on(j, "r1", schedule("retry", T0 + 5_000)).await;
    on(j, "r2", schedule("deadline", T0 + 3_000)).await;
    on(j, "r3", schedule("expiry", T0 + 9_000)).await;

    assert_eq!(
        j.due_timers(T0, 10).await.expect("due_timers"),
        vec![],
        "nothing is due yet"
    );
    assert_eq!(
        j.due_timers(T0 + 2_999, 10).await.expect("due_timers"),
        vec![],
        "1 ms early"
    );
    assert_eq!(
        j.due_timers(T0 + 3_000, 10).await.expect("due_timers"),
        vec![timer("r2", "deadline", T0 + 3_000)],
        "a timer is due exactly at its time"
    );
    assert_eq!(
        j.due_timers(T0 + 5_000, 10).await.expect("due_timers"),
        vec![
            timer("r2", "deadline", T0 + 3_000),
            timer("r1", "retry", T0 + 5_000)
        ],
        "due timers come earliest first"
    );
    assert_eq!(
        j.due_timers(T0 + 10_000, 1).await.expect("due_timers"),
        vec![timer("r2", "deadline", T0 + 3_000)],
        "limit keeps the earliest"
    );
    assert_eq!(
        j.next_timer().await.expect("next_timer"),
        Some(timer("r2", "deadline", T0 + 3_000))
    );

    // Re-arming replaces the due time rather than adding a second timer.
    on(j, "r1", schedule("retry", T0 + 1_000)).await;
    assert_eq!(
        j.next_timer().await.expect("next_timer"),
        Some(timer("r1", "retry", T0 + 1_000))
    );
    assert_eq!(
        all_timers(j).await.len(),
        3,
        "re-arming must not duplicate a timer"
    );

    // A refused append's timer change is not applied.
    let stale = Append::new("r3", 0, vec![schedule("expiry", T0)]);
    expect_err!(
        j.append(stale).await,
        Error::Conflict { .. },
        "a stale append with a timer"
    );
    assert_eq!(
        all_timers(j).await[2],
        timer("r3", "expiry", T0 + 9_000),
        "the refused append must not have re-armed r3"
    );
}

/// Clears one timer, and clearing an unarmed one is harmless.
async fn disarm<J: Engine>(j: &J) {
    on(j, "r1", clear("retry")).await;
    assert_eq!(
        all_timers(j).await,
        vec![
            timer("r2", "deadline", T0 + 3_000),
            timer("r3", "expiry", T0 + 9_000)
        ],
        "the cleared timer is gone, the others stay"
    );
    assert_eq!(
        j.next_timer().await.expect("next_timer"),
        Some(timer("r2", "deadline", T0 + 3_000))
    );
    on(j, "r1", clear("never-armed")).await;
    on(j, "r2", clear("deadline")).await;
    on(j, "r3", clear("expiry")).await;
    assert_eq!(
        j.next_timer().await.expect("next_timer"),
        None,
        "every timer was cleared"
    );
}

on_both_engines!(timers_fire_in_order_clear_and_survive_reopen);

async fn timers_fire_in_order_clear_and_survive_reopen(kind: Kind) {
    let place = Place::new(kind);
    let clock = manual_clock();
    {
        let j = place.open(&clock);
        arm(&j).await;
    }
    let j = place.open(&clock);
    assert_eq!(
        all_timers(&j).await,
        vec![
            timer("r1", "retry", T0 + 1_000),
            timer("r2", "deadline", T0 + 3_000),
            timer("r3", "expiry", T0 + 9_000),
        ],
        "armed timers must survive close and reopen"
    );
    disarm(&j).await;
    drop(j);
    let j = place.open(&clock);
    assert_eq!(
        j.next_timer().await.expect("next_timer"),
        None,
        "cleared timers stay cleared"
    );
}

#[tokio::test]
async fn timers_fire_in_order_and_clear_in_memory() {
    let j = memory(&manual_clock());
    arm(&j).await;
    disarm(&j).await;
}

/// A timer name is validated like the event carrying it.
#[tokio::test]
async fn an_empty_timer_name_is_refused() {
    let (_dir, path) = scratch();
    let j = open_sqlite(&path, &manual_clock());
    expect_err!(
        j.append(Append::new("s", 0, vec![schedule("", T0)])).await,
        Error::InvalidEvent { .. },
        "an unnamed timer"
    );
    assert_eq!(
        j.next_timer().await.expect("next_timer"),
        None,
        "nothing armed"
    );
}
