//! `fulcrum run`: the daemon that ties the crates together.
//!
//! Data flows one way:
//! `fulcrum-config` (desired) -> observations (`fulcrum-health` verdicts,
//! neighbour entries; later VRRP states and admin flags) ->
//! `fulcrum_state::effective` (one effective state) -> `fulcrum-l4` (BPF
//! maps, written on the L4 writer thread) and, later, the L7 pools.
//!
//! - [`control`]: the control loop that owns the configuration and the
//!   observations, and hands each new effective state on.
//! - [`l7`]: starts the L7 proxy and publishes its routing snapshots.
//! - [`report`]: the admin API's `GET /stats` answer, read from the
//!   effective state, the writer's status and the datapath's counters.
//! - [`vrrp`]: runs the VRRP instances; their states become observations.
//! - [`limits`]: process limits set at start (open files).
//! - [`decap`]: `fulcrum decap`, the IPIP/IP6IP6 decapsulator for reals.
pub mod control;
pub mod decap;
pub mod l7;
pub mod limits;
pub mod report;
pub mod vrrp;
