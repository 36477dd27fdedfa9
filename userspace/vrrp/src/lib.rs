//! The sans-IO core of VRRP: VRRPv3 (RFC 9568, IPv4 and IPv6) and VRRPv2
//! (RFC 3768, IPv4), in the style of rustls: pure logic, no sockets, no
//! clock reads. Time comes in as [`std::time::Instant`] arguments, so every
//! behaviour here is replayable in a unit test.
//!
//! The pieces, each with one job:
//!
//! - [`interval`]: [`Centiseconds`], the unit VRRPv3 puts on the wire, and
//!   the RFC's Skew_Time / Master_Down_Interval arithmetic.
//! - [`packet`]: encode and decode one advertisement ([`Advertisement`]),
//!   with the checksum forms of both RFCs ([`ChecksumForm`]).
//! - [`checks`]: the receive checks of RFC 9568 section 7.1 and RFC 3768
//!   section 7.1. Every reason to discard is its own [`Discard`] variant
//!   (for counters and rate-limited logs); an accepted packet becomes a
//!   [`Heard`] for the machine, plus [`Warning`]s the RFCs want logged.
//! - [`machine`]: the state machine of RFC 9568 section 6.4 / RFC 3768
//!   section 6.4 for one virtual router, plus keepalived's Fault state and
//!   `preempt_delay`. It turns [`Event`]s into [`Action`]s and tells the
//!   shell when it next needs a [`Event::Timer`].
//!
//! RFC 9568 renamed the RFC 5798 "Master" to "Active" (Active_Down_Timer,
//! Active_Adver_Interval, ...). This crate keeps "Master", the name
//! keepalived, its notify scripts and operators use; doc comments quote RFC
//! 9568 with its own words.
//!
//! - [`sync`]: sync groups (keepalived's `vrrp_sync_group`): which
//!   instances must follow a sibling to Fault or out of Master, decided
//!   from the members' states and fed to their machines as events.
//! - [`auth`]: fulcrum's own, non-standard HMAC-SHA256 trailer with a
//!   replay counter, between fulcrum nodes only (off by default).
//!
//! - [`shell`] (Linux only): the I/O around the core, one OS thread per
//!   instance. The core modules above stay pure; the shell is the only
//!   code that touches sockets, netlink or the clock.
//!
//! What the I/O shell does: raw IP protocol 112 sockets joined
//! to 224.0.0.18 / ff02::12, reading TTL / hop limit and addresses from the
//! IP header or control messages, running [`checks::check`] then
//! [`Machine::handle`], encoding [`Action::SendAdvert`] with
//! [`Advertisement::encode`], adding and removing the VIPs over netlink,
//! gratuitous ARP / unsolicited NA, and sleeping until
//! [`Machine::next_deadline`].

// One function of the shell builds a link-layer socket address and needs
// `unsafe` (it says why); everything else is safe code.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod checks;
pub mod interval;
pub mod machine;
pub mod packet;
#[cfg(target_os = "linux")]
pub mod shell;
pub mod sync;
pub mod track;

pub use checks::{check, Accepted, Discard, Expected, Heard, IpMeta, Warning};
pub use interval::Centiseconds;
pub use machine::{Action, Config, ConfigError, Event, Machine, Reason, State, Transition};
pub use packet::{
    Addresses, Advertisement, Auth, ChecksumForm, DecodeError, EncodeError, Family,
    Ipv4ChecksumMode, Version,
};
