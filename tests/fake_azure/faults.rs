//! Fault injection: per-route queues of one-shot faults, and permanent denials.
//!
//! A fault is taken when a request for its route arrives *after* the request has been
//! authenticated, so the unauthenticated first leg of Key Vault's challenge flow does not
//! use up a fault meant for the real attempt. Denial wins over queued faults and leaves them
//! queued. Each service renders a fault with its own error body (see its module).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use super::state::Shared;

/// An operation a fault or denial can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    KvSet,
    KvGet,
    KvUpdate,
    KvVersions,
    KvList,
    KvDelete,
    KvGetDeleted,
    KvPurge,
    KvRecover,
    AppSettingsList,
    AppSettingsPut,
    GraphAddPassword,
    GraphRemovePassword,
    GraphGetApplication,
    /// `GET /v1.0/applications` (a listing page).
    GraphListApplications,
    /// `GET /v1.0/servicePrincipals` (a listing page).
    GraphListServicePrincipals,
    /// `GET /subscriptions/{sub}/providers/Microsoft.KeyVault/vaults`.
    ArmListVaults,
    /// `GET /{vault}/certificates`.
    KvListCertificates,
    StorageListKeys,
    StorageRegenerateKey,
    /// `POST {authority}/{tenant}/oauth2/v2.0/token`.
    Token,
    /// `GET {authority}/{tenant}/v2.0/.well-known/openid-configuration`.
    OpenIdConfiguration,
    Imds,
    IdentityEndpoint,
}

/// What an injected fault does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer `code` with the service's error body for it, without doing the operation.
    Status { code: u16 },
    /// Answer 429 with `Retry-After: retry_after_secs` and the service's throttling body.
    Throttle { retry_after_secs: u64 },
    /// Wait `ms` (real time), then handle the request normally.
    Delay { ms: u64 },
    /// Do the operation, then close the connection without sending any response.
    ApplyThenDropResponse,
}

/// The faults waiting for each route, and the routes denied outright.
#[derive(Debug, Default)]
pub(crate) struct FaultBook {
    queued: HashMap<Route, VecDeque<Fault>>,
    denied: HashSet<Route>,
    /// Answers held back after the operation was done, in ms, per route (ARM routes).
    held: HashMap<Route, VecDeque<u64>>,
}

impl FaultBook {
    pub(crate) fn inject(&mut self, route: Route, fault: Fault, times: u32) {
        let queue = self.queued.entry(route).or_default();
        queue.extend(std::iter::repeat_n(fault, times as usize));
    }

    pub(crate) fn hold(&mut self, route: Route, ms: u64, times: u32) {
        let queue = self.held.entry(route).or_default();
        queue.extend(std::iter::repeat_n(ms, times as usize));
    }

    /// How long to hold back the answer to this request, once done.
    pub(crate) fn take_hold(&mut self, route: Route) -> Option<u64> {
        self.held.get_mut(&route).and_then(VecDeque::pop_front)
    }

    pub(crate) fn deny(&mut self, route: Route) {
        self.denied.insert(route);
    }

    pub(crate) fn allow(&mut self, route: Route) {
        self.denied.remove(&route);
    }

    fn take(&mut self, route: Route) -> Option<Fault> {
        self.queued.get_mut(&route).and_then(VecDeque::pop_front)
    }
}

/// What a request for a route must do, after faults have had their say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Do the operation; if `sever`, then drop the response.
    Proceed { sever: bool },
    /// Refuse with the service's 403 for this operation.
    Denied,
    /// Fail with this status and the service's error body.
    Status(u16),
    /// Fail with 429 and `Retry-After`.
    Throttle(u64),
}

/// Consults denials and takes the next fault for `route` (sleeping out a `Delay`).
pub(crate) async fn gate(shared: &Shared, route: Route) -> Gate {
    let fault = {
        let mut state = shared.lock();
        if state.faults.denied.contains(&route) {
            return Gate::Denied;
        }
        state.faults.take(route)
    };
    match fault {
        None => Gate::Proceed { sever: false },
        Some(Fault::Delay { ms }) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Gate::Proceed { sever: false }
        }
        Some(Fault::ApplyThenDropResponse) => Gate::Proceed { sever: true },
        Some(Fault::Status { code }) => Gate::Status(code),
        Some(Fault::Throttle { retry_after_secs }) => Gate::Throttle(retry_after_secs),
    }
}
