//! fulcrum's daemon as a library: one module per concern.
//!
//! Data flows one way:
//! `config` -> `state::Desired` -> (`health`) -> `state::Effective` ->
//! `datapath` (BPF maps) and, later, the L7 pools.
pub mod config;
pub mod health;
pub mod maglev;
