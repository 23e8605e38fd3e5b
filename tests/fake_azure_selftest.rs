//! Self-tests of the fake Azure services (`fake_azure`): each checks one faithful behaviour
//! from the contract (`/work/shared/contracts/azure.md`) through a real reqwest client over
//! loopback HTTP, so a fake that drifts from the contract fails here before it misleads the
//! provider tests.

mod support;

mod arm;
mod discovery;
mod faults;
mod graph;
mod keyvault;
mod login;
mod managed_identity;
