//! Leases and fencing: one runner drives a stream at a time; a takeover gets a larger token,
//! and a writer holding an old token, an expired lease, or no lease at all is refused
//! without writing anything.

use rekey_journal::{Append, Error, Lease, Leases, ManualClock};

use crate::common::{
    Engine, Kind, Place, T0, append_ok, assert_chain, assert_intact, expect_err, head_seq,
    manual_clock, memory, numbered, on_both_engines, open_sqlite, read, scratch,
};

const S: &str = "rotation-1";

/// Asserts the stream still holds exactly `n` events: a refused append wrote nothing.
async fn assert_len<J: Engine>(j: &J, n: u64, context: &str) {
    assert_eq!(head_seq(j, S).await, n, "{context}: the head must not move");
    let events = read(j, S).await;
    assert_eq!(events.len() as u64, n, "{context}: no event may be written");
    assert_chain(S, &events);
    let all = j.read_after(0, 1_000).await.expect("read_after");
    assert_eq!(all.len() as u64, n, "{context}: nothing written anywhere");
}

/// The whole lease life cycle; both engines share the rules, so both run it.
async fn lease_rules<J: Engine>(j: &J, clock: &ManualClock) {
    let a = j.acquire(S, "runner-a", 1_000).await.expect("a free lease");
    assert_eq!(
        a,
        Lease {
            stream_id: S.into(),
            owner: "runner-a".into(),
            token: 1,
            expires_at_ms: T0 + 1_000,
        },
        "the first lease on a stream has token 1"
    );
    expect_err!(
        j.acquire(S, "runner-b", 1_000).await,
        Error::LeaseHeld { holder, expires_at_ms, .. }
            if holder == "runner-a" && *expires_at_ms == T0 + 1_000,
        "another owner cannot take a live lease"
    );
    let a = j
        .acquire(S, "runner-a", 2_000)
        .await
        .expect("re-acquiring one's own lease");
    assert_eq!(
        (a.token, a.expires_at_ms),
        (1, T0 + 2_000),
        "re-acquiring keeps the token"
    );

    append_ok(j, Append::new(S, 0, vec![numbered(1)]).fenced(a.fence())).await;
    expect_err!(
        j.append(Append::new(S, 1, vec![numbered(2)])).await,
        Error::LeaseHeld { holder, .. } if holder == "runner-a",
        "an unfenced append while a lease is live"
    );
    assert_len(j, 1, "unfenced append under a live lease").await;

    clock.advance(1_500);
    let a = j.renew(&a, 1_000).await.expect("renewing a live lease");
    assert_eq!(
        (a.token, a.expires_at_ms),
        (1, T0 + 2_500),
        "renew extends from now"
    );
    clock.advance(1_000); // now == expiry: the lease is over
    expect_err!(
        j.append(Append::new(S, 1, vec![numbered(2)]).fenced(a.fence())).await,
        Error::LeaseExpired { token: 1, expired_at_ms, .. } if *expired_at_ms == T0 + 2_500,
        "an append under an expired lease"
    );
    assert_len(j, 1, "append under an expired lease").await;
    expect_err!(
        j.renew(&a, 1_000).await,
        Error::LeaseExpired { .. },
        "renewing an expired lease"
    );

    let b = j
        .acquire(S, "runner-b", 1_000)
        .await
        .expect("taking over an expired lease");
    assert!(
        b.token > a.token,
        "a takeover must get a larger token ({b:?} after {a:?})"
    );
    expect_err!(
        j.append(Append::new(S, 1, vec![numbered(2)]).fenced(a.fence())).await,
        Error::StaleFence { presented: 1, current, holder, .. }
            if *current == b.token && holder == "runner-b",
        "the old runner's append after a takeover"
    );
    assert_len(j, 1, "append with a stale fence").await;
    expect_err!(
        j.renew(&a, 1_000).await,
        Error::StaleFence { .. },
        "renewing a lost lease"
    );
    expect_err!(
        j.release(&a).await,
        Error::StaleFence { .. },
        "releasing a lost lease"
    );
    expect_err!(
        j.append(Append::new(S, 1, vec![numbered(2)])).await,
        Error::LeaseHeld { holder, .. } if holder == "runner-b",
        "an unfenced append under the new lease"
    );
    assert_len(j, 1, "unfenced append under the new lease").await;

    append_ok(j, Append::new(S, 1, vec![numbered(2)]).fenced(b.fence())).await;
    j.release(&b).await.expect("releasing a held lease");
    expect_err!(
        j.append(Append::new(S, 2, vec![numbered(3)]).fenced(b.fence()))
            .await,
        Error::LeaseExpired { .. },
        "an append under a released lease"
    );
    append_ok(j, Append::new(S, 2, vec![numbered(3)])).await; // a released lease blocks nobody

    let a2 = j
        .acquire(S, "runner-a", 1_000)
        .await
        .expect("acquiring a released lease");
    assert!(
        a2.token > b.token,
        "tokens never repeat, even after a release"
    );
    clock.advance(5_000);
    j.release(&a2)
        .await
        .expect("releasing an expired, untaken lease is a no-op");

    expect_err!(
        j.append(Append::new("unleased", 0, vec![numbered(1)]).fenced(a2.fence()))
            .await,
        Error::StaleFence { current: 0, .. },
        "a fenced append to a stream that was never leased"
    );
    expect_err!(
        j.acquire(S, "runner-c", 0).await,
        Error::InvalidEvent { .. },
        "a lease of zero duration"
    );
    expect_err!(
        j.acquire(S, "", 1_000).await,
        Error::InvalidEvent { .. },
        "an unnamed owner"
    );
    expect_err!(
        j.acquire("bad stream", "runner-c", 1_000).await,
        Error::InvalidEvent { .. },
        "a bad stream id"
    );
    assert_len(j, 3, "after the whole life cycle").await;
}

on_both_engines!(lease_life_cycle_and_fencing);

async fn lease_life_cycle_and_fencing(kind: Kind) {
    let place = Place::new(kind);
    let clock = manual_clock();
    let j = place.open(&clock);
    lease_rules(&j, &clock).await;
    assert_intact(
        &j.verify(None).await.expect("verify"),
        "after the lease tests",
    );
}

#[tokio::test]
async fn lease_life_cycle_and_fencing_in_memory() {
    let clock = manual_clock();
    let j = memory(&clock);
    lease_rules(&j, &clock).await;
    assert_intact(&j.verify(), "after the lease tests");
}

/// Leases are durable: after a restart, the old holder still blocks others until expiry, and
/// a takeover still gets a larger token than any issued before.
#[tokio::test]
async fn leases_survive_reopen() {
    let (_dir, path) = scratch();
    let clock = manual_clock();
    let a = {
        let j = open_sqlite(&path, &clock);
        j.acquire(S, "runner-a", 1_000).await.expect("acquire")
    };
    let j = open_sqlite(&path, &clock);
    expect_err!(
        j.acquire(S, "runner-b", 1_000).await,
        Error::LeaseHeld { holder, .. } if holder == "runner-a",
        "the lease taken before the restart is still live"
    );
    append_ok(&j, Append::new(S, 0, vec![numbered(1)]).fenced(a.fence())).await;
    clock.advance(1_000);
    let b = j
        .acquire(S, "runner-b", 1_000)
        .await
        .expect("takeover after expiry");
    assert_eq!(
        b.token,
        a.token + 1,
        "the takeover's token follows the stored one"
    );
}
