//! fulcrum's daemon as a library: one module per concern.
//!
//! Data flows one way:
//! `config` (desired) -> `health` (observed) -> `state::effective` ->
//! `datapath` (BPF maps) and, later, the L7 pools.
//!
//! - `config`: the TOML file, validated; errors carry file:line:col.
//! - `health`: active checks with rise/fall; emits state changes.
//! - `neighbours`: the interface's MAC and the kernel's neighbour table.
//! - `state`: pure functions from config + observations to `Effective`.
//! - `maglev`: the lookup table builder.
//! - `datapath`: the XDP program and its maps; the only code touching them.
//! - `admin`: the admin HTTP API (`GET /stats`) and its client.
//! - `daemon`: the control loop that owns the running state.
pub mod admin;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod health;
pub mod maglev;
pub mod neighbours;
pub mod state;
