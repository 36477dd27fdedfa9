//! Active health checks of backends, with rise/fall hysteresis.
//!
//! Owns the probing of backends and the decision whether each is UP or
//! DOWN; reports every change as a [`HealthEvent`]. It does not know about
//! pools, VIPs or BPF maps: the daemon feeds it targets (from the config)
//! and applies the events to the effective state. A target is identified
//! by what is checked ([`Probe`]: address, port, check and its timing), so
//! renaming a pool or listing one backend in two pools with the same check
//! neither restarts nor duplicates its checks.
//!
//! - [`rise_fall`]: the sans-IO state machine turning check results into
//!   UP/DOWN (HAProxy and Apache `mod_proxy_hcheck` semantics).
//! - [`probe`]: one check, TCP connect or HTTP request.
//! - [`engine`]: one task per target, probing at an interval and emitting
//!   events; the set of targets can be replaced at run time.

pub mod engine;
pub mod probe;
pub mod rise_fall;
#[cfg(test)]
mod test_server;

pub use engine::{HealthEngine, HealthEvent, Probe};
pub use probe::{probe, ProbeError};
pub use rise_fall::{Health, RiseFall};
