//! The Linux I/O shell around the sans-IO core: one dedicated OS thread per
//! virtual router instance, so that no table write, health event or L7
//! load on the daemon's tokio runtime can delay an advertisement
//! (issue 11, "Design").
//!
//! [`spawn`] checks the [`InstanceConfig`], looks up the interface over
//! rtnetlink, opens the sockets *on the calling thread* (so they belong
//! to its network namespace) and starts the instance's thread, which then:
//!
//! - waits in `poll(2)` on the raw protocol-112 socket and a wake-up
//!   socket, with [`Machine::next_deadline`] (and the next gratuitous ARP
//!   repeat) as the timeout;
//! - runs every received packet through [`crate::checks::check`] and feeds
//!   accepted ones to [`Machine::handle`]; discards are counted per
//!   [`crate::Discard::kind`] and logged at most once per kind per
//!   [`LOG_EVERY`];
//! - performs the machine's [`Action`]s: sends adverts (multicast to
//!   224.0.0.18 / ff02::12, or to each unicast peer), adds / removes the
//!   VIPs over rtnetlink, sends gratuitous ARPs / unsolicited NAs, and
//!   reports each transition as a [`StateChange`] on the owner's channel.
//!
//! [`Instance::stop`] (and drop) shut down gracefully: a Master sends its
//! priority-0 advert (RFC 9568 section 6.4.3) and releases the VIPs.
//! [`Instance::kill`] stops as a crash would: nothing more is sent and the
//! VIPs stay where they are.
//!
//! Sync groups: [`spawn_synced`] starts an instance as a member of a
//! [`SyncGroup`]. Each member's thread publishes its status to the group
//! (under a mutex, never held across I/O) after every event, and sends the
//! siblings whose [`crate::sync::SyncInputs`] changed a command on their
//! channels, so a sibling follows within one wake-up of its thread, with no
//! detour through the daemon's control loop.
//!
//! HMAC: with [`InstanceConfig::hmac`] set, every advert carries the
//! [`crate::auth`] trailer, and received adverts that pass the RFC checks
//! must also carry a valid one with a fresh counter (else they count as
//! `hmac` or `replay` discards).
//!
//! At start the instance removes its VIPs from the interface if they are
//! there (left by a crashed predecessor): it starts as Backup (or as
//! Master, if it is the address owner, and adds them again).

mod frames;
mod netlink;
mod runner;
mod sockets;

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::os::unix::net::UnixDatagram;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[cfg(doc)]
use crate::machine::{Action, Machine};
use crate::machine::{Reason, State};
use crate::auth::Key;
use crate::packet::{Auth, Family, Ipv4ChecksumMode, Version};
use crate::sync::{MemberStatus, SyncInputs};
use crate::Centiseconds;

pub use sockets::{GROUP_V4, GROUP_V6};

/// How often, at most, one kind of receive-check failure is logged per
/// instance (RFC 9568 section 7.1: "log the event (subject to
/// rate-limiting)"). Every one is counted in [`Counters::discards`].
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// One virtual address and the prefix length it gets on the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vip {
    /// The address; all VIPs of an instance share a family.
    pub address: IpAddr,
    /// Prefix length for `ip addr add`: 0..=32 (IPv4), 0..=128 (IPv6).
    /// keepalived's default is 32 / 128.
    pub prefix_len: u8,
}

/// How a new Master announces its VIPs (RFC 9568 section 6.4.2: gratuitous
/// ARP for IPv4, unsolicited Neighbor Advertisement for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Garp {
    /// Announcements per VIP after each takeover, at least 1 (keepalived's
    /// `garp_master_repeat`, default 5).
    pub repeat: u32,
    /// Time between two announcements of one takeover. Zero sends them in
    /// one burst, as keepalived's default `garp_interval 0` does.
    pub delay: Duration,
}

impl Default for Garp {
    /// 5 announcements, 100 ms apart: a burst would be lost together if a
    /// switch port or a neighbour is briefly busy.
    fn default() -> Garp {
        Garp {
            repeat: 5,
            delay: Duration::from_millis(100),
        }
    }
}

/// The configuration of one VRRP instance (one virtual router on one
/// interface).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// A name for logs and [`StateChange`]s (keepalived's `vrrp_instance`
    /// name).
    pub name: String,
    /// The interface to run on: adverts are sent and received there, and
    /// the VIPs are added to it.
    pub interface: String,
    /// Virtual Router Identifier, 1..=255 (RFC 9568 section 5.2.3).
    pub vrid: u8,
    /// VRRPv3 (RFC 9568) or VRRPv2 (RFC 3768, IPv4 only).
    pub version: Version,
    /// 1..=254, or 255 for the address owner (RFC 9568 section 5.2.4).
    pub priority: u8,
    /// Advertisement_Interval. V3: 1..=4095 cs. V2: whole seconds, 1..=255.
    pub advert_interval: Centiseconds,
    /// Preempt_Mode (RFC 9568 section 6.1); keepalived's `nopreempt` is
    /// `false`.
    pub preempt: bool,
    /// keepalived's `preempt_delay` (see [`crate::Config::preempt_delay`]).
    pub preempt_delay: Duration,
    /// VRRPv2 simple text password (RFC 2338 Auth Type 1; the first 8
    /// bytes are used). Must be `None` for VRRPv3.
    pub password: Option<Vec<u8>>,
    /// The virtual addresses, 1..=255 of them, one family: the instance's
    /// family (IPv4 or IPv6) is theirs.
    pub vips: Vec<Vip>,
    /// Send adverts to these addresses instead of the multicast group, and
    /// accept adverts only from them (keepalived's `unicast_peer`). Same
    /// family as the VIPs; IPv6 peers are usually link-local addresses.
    pub unicast_peers: Vec<IpAddr>,
    /// Which VRRPv3-over-IPv4 checksum to send ([`Ipv4ChecksumMode`]);
    /// both forms are accepted on receipt.
    pub v4_checksum: Ipv4ChecksumMode,
    /// Gratuitous ARP / unsolicited NA repetition.
    pub garp: Garp,
    /// fulcrum's non-standard HMAC-SHA256 trailer ([`crate::auth`]):
    /// `Some` signs every advert and refuses adverts without a valid,
    /// fresh trailer. Only between fulcrum nodes sharing the key; `None`
    /// (the default) for RFC peers such as keepalived.
    pub hmac: Option<Key>,
    /// When set, a new MASTER reports its transition first and adds and
    /// announces its addresses only once the owner confirms that it
    /// forwards their traffic ([`Instance::forwarding_ready`]), or after
    /// this long at most. Otherwise the node's own stack would own the
    /// addresses before the datapath forwards them, and answer clients'
    /// packets with resets in between. `None` announces at once.
    pub wait_for_forwarding: Option<Duration>,
    /// Use the virtual router MAC (RFC 9568 section 7.3:
    /// 00:00:5e:00:01:VRID for IPv4, 00:00:5e:00:02:VRID for IPv6) through
    /// a macvlan. Off by default, which is keepalived's default (no
    /// `use_vmac`): the VIPs go on [`InstanceConfig::interface`] and
    /// answer with its own MAC, so clients' neighbour entries change at
    /// every failover (the new Master's gratuitous ARPs / NAs update
    /// them).
    ///
    /// On: at start the shell creates a macvlan named
    /// [`InstanceConfig::vmac_name`] (`vrrp.VRID`, or `vrrp6.VRID` for
    /// IPv6) in mode private on the interface, with the virtual MAC,
    /// replacing a leftover of that name. It is up only while Master:
    /// brought up before the first advert or address of a Master, and
    /// down again once the VIPs are released, so a Backup never emits a
    /// frame from the shared MAC (which would move the switches' entry
    /// for it). The VIPs are added to the macvlan instead of the
    /// interface; the gratuitous ARPs / unsolicited NAs are sent from
    /// the virtual MAC, NAs with the Router flag set (RFC 9568 sections
    /// 6.4.2, 7.2); adverts are sent through the macvlan, so from the
    /// virtual MAC (section 7.3). For IPv6 the macvlan generates no
    /// link-local address (one from the shared MAC would be the same on
    /// every router) and carries the interface's instead, as keepalived
    /// does, so adverts keep the source address the election compares
    /// (section 5.1.2.1). For IPv4 the shell sets the interface's `arp_ignore`
    /// to 1 and `arp_announce` to 2, so that the interface neither
    /// answers ARP for the VIPs nor names a VIP as the sender of its own
    /// ARP requests (replies to clients leave through the interface),
    /// either of which would tie a VIP to the interface's own MAC in the
    /// clients' caches. A
    /// graceful stop deletes the macvlan; a crash leaves it (and the next
    /// start replaces it). Adverts are still received on the interface.
    ///
    /// XDP: a program attached to the interface (the parent) runs on the
    /// parent's receive path, before the macvlan's rx handler hands
    /// frames to the macvlan, so it sees frames addressed to the virtual
    /// MAC as well as to the parent's own, and what it passes reaches the
    /// macvlan (and the VIPs on it). This follows from where the kernel
    /// runs XDP (driver / generic XDP before `rx_handler`); it was not
    /// checked in the lab.
    pub virtual_mac: bool,
}

impl InstanceConfig {
    /// The address family of the VIPs (IPv4 if there are none).
    pub fn family(&self) -> Family {
        self.vips
            .first()
            .map_or(Family::V4, |v| Family::of(&v.address))
    }

    /// The virtual router MAC of RFC 9568 section 7.3:
    /// 00:00:5e:00:01:VRID (IPv4) or 00:00:5e:00:02:VRID (IPv6).
    pub fn vmac(&self) -> [u8; 6] {
        let f = if self.family() == Family::V4 { 1 } else { 2 };
        [0x00, 0x00, 0x5e, 0x00, f, self.vrid]
    }

    /// The name of the macvlan that carries the virtual MAC
    /// ([`InstanceConfig::virtual_mac`]): `vrrp.VRID` for IPv4,
    /// `vrrp6.VRID` for IPv6 (one instance per family may share a VRID).
    pub fn vmac_name(&self) -> String {
        match self.family() {
            Family::V4 => format!("vrrp.{}", self.vrid),
            Family::V6 => format!("vrrp6.{}", self.vrid),
        }
    }

    /// The VRRPv2 authentication this configuration implies.
    pub fn auth(&self) -> Auth {
        match &self.password {
            Some(p) => Auth::password(p),
            None => Auth::None,
        }
    }

    /// Checks what the machine's [`crate::Config::validate`] cannot: VRID,
    /// VIPs, peers, version/family/password combinations, GARP repeat.
    pub fn validate(&self) -> Result<(), ShellError> {
        let bad = |m: String| Err(ShellError::Config(format!("instance {}: {m}", self.name)));
        if self.vrid == 0 {
            return bad("vrid must be 1..=255".into());
        }
        if self.vips.is_empty() || self.vips.len() > 255 {
            return bad(format!(
                "needs 1..=255 virtual addresses, has {}",
                self.vips.len()
            ));
        }
        let family = self.family();
        for v in &self.vips {
            let max = if v.address.is_ipv4() { 32 } else { 128 };
            if Family::of(&v.address) != family {
                return bad(
                    "virtual addresses mix IPv4 and IPv6: use one instance per family".into(),
                );
            }
            if v.prefix_len > max {
                return bad(format!(
                    "prefix length /{} of {} is too long",
                    v.prefix_len, v.address
                ));
            }
        }
        if let Some(p) = self.unicast_peers.iter().find(|p| Family::of(p) != family) {
            return bad(format!(
                "unicast peer {p} is not of the virtual addresses' family"
            ));
        }
        if self.version == Version::V2 && family == Family::V6 {
            return bad("VRRPv2 is IPv4 only (RFC 3768)".into());
        }
        if self.version == Version::V3 && self.password.is_some() {
            return bad("VRRPv3 has no authentication (RFC 9568 removed it)".into());
        }
        if self.garp.repeat == 0 {
            return bad("garp repeat must be at least 1".into());
        }
        Ok(())
    }
}

/// A state change of one instance, for the daemon's observations, logs and
/// notify scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// [`InstanceConfig::name`].
    pub instance: String,
    /// The VRID.
    pub vrid: u8,
    /// The state left.
    pub from: State,
    /// The state entered.
    pub state: State,
    /// Why.
    pub reason: Reason,
    /// Whether the datapath must now forward the VIPs' traffic (the
    /// machine's [`Action::SetForwarding`]): true exactly in Master.
    pub forwarding: bool,
    /// When the transition happened (monotonic clock).
    pub at: Instant,
}

/// Counters of one instance since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Advertisements sent (one per destination).
    pub adverts_sent: u64,
    /// Advertisements that could not be sent (the error is logged).
    pub send_errors: u64,
    /// Advertisements that passed the receive checks.
    pub adverts_accepted: u64,
    /// Discarded packets per reason: [`crate::Discard::kind`], plus
    /// `"unreadable"` (no IP header / control messages) and
    /// `"unknown_peer"` (unicast mode, a source not among the peers),
    /// `"hmac"` and `"replay"` ([`crate::auth::AuthError::kind`]).
    pub discards: BTreeMap<&'static str, u64>,
    /// State transitions.
    pub transitions: u64,
    /// Gratuitous ARPs and unsolicited NAs sent (one per VIP and repeat).
    pub announcements: u64,
    /// VIP additions or removals that failed (logged).
    pub netlink_errors: u64,
}

/// What the owner can read at any time.
#[derive(Debug, Clone)]
struct Status {
    state: State,
    priority: u8,
    /// [`crate::Machine::master_address`].
    master_address: Option<IpAddr>,
    counters: Counters,
}

/// An error starting an instance.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// The machine rejected its part of the configuration.
    #[error("instance {0}: {1}")]
    Machine(String, crate::ConfigError),
    /// The interface or one of its addresses is missing.
    #[error("instance {name}: {what}")]
    Interface {
        /// The instance.
        name: String,
        /// What is missing.
        what: String,
    },
    /// A socket, netlink or thread operation failed.
    #[error("instance {name}: {what}: {source}")]
    Io {
        /// The instance.
        name: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// A request from the owner to the instance's thread.
#[derive(Debug, Clone, Copy)]
enum Command {
    Stop { graceful: bool },
    ForwardingReady,
    Priority(u8),
    Fault(bool),
    Sync(SyncInputs),
}

/// A sync group shared by its members' threads (keepalived's
/// `vrrp_sync_group`; the rules are [`crate::sync`]'s). Create one per
/// group, then start each member with [`spawn_synced`].
#[derive(Clone)]
pub struct SyncGroup {
    shared: Arc<Mutex<SyncShared>>,
}

struct SyncShared {
    name: String,
    group: crate::sync::SyncGroup,
    /// Each member's command channel and wake-up socket, once spawned.
    members: Vec<Option<(mpsc::Sender<Command>, UnixDatagram)>>,
}

impl SyncGroup {
    /// A group named `name` (for logs) of `members` instances, indices
    /// `0..members`. Until every member runs, the started ones are held in
    /// Backup: a half-started group must not claim Master.
    pub fn new(name: impl Into<String>, members: usize) -> SyncGroup {
        SyncGroup {
            shared: Arc::new(Mutex::new(SyncShared {
                name: name.into(),
                group: crate::sync::SyncGroup::new(members),
                members: (0..members).map(|_| None).collect(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncShared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `member`'s status and tells every sibling whose inputs
    /// changed. Returns `member`'s own inputs.
    fn publish(&self, member: usize, status: MemberStatus) -> SyncInputs {
        let mut s = self.lock();
        let changed = s.group.update(member, status);
        for (j, inputs) in changed {
            if let Some((tx, wake)) = &s.members[j] {
                if tx.send(Command::Sync(inputs)).is_ok() {
                    let _ = wake.send(&[1]);
                }
            }
        }
        s.group.inputs(member)
    }

    fn name(&self) -> String {
        self.lock().name.clone()
    }
}

/// The runner's side of its group membership.
pub(crate) struct Membership {
    group: SyncGroup,
    member: usize,
    last: Option<MemberStatus>,
}

impl Membership {
    /// Publishes `status` if it changed; returns the member's inputs then.
    fn publish(&mut self, status: MemberStatus) -> Option<SyncInputs> {
        if self.last == Some(status) {
            return None;
        }
        self.last = Some(status);
        Some(self.group.publish(self.member, status))
    }

    /// The instance stops. Gracefully: its siblings are held (a group is
    /// Master only as a whole). Killed (a crash, for tests): nothing is
    /// published, as a crashed process would publish nothing. Either way
    /// its slot is free for a new instance.
    fn leave(&mut self, graceful: bool) {
        if graceful {
            self.group.publish(self.member, MemberStatus::STOPPED);
        }
        self.group.lock().members[self.member] = None;
    }
}

/// A running instance. Dropping it stops it gracefully, as [`Instance::stop`].
pub struct Instance {
    name: String,
    commands: mpsc::Sender<Command>,
    /// One byte written here wakes the thread's `poll`.
    wake: UnixDatagram,
    status: Arc<Mutex<Status>>,
    thread: Option<JoinHandle<()>>,
}

/// Starts an instance. Its sockets are opened on the calling thread, so
/// they belong to the calling thread's network namespace, as does the
/// instance's thread. Every [`StateChange`] is sent on `reports` (a closed
/// receiver is ignored). Returns once the sockets are open and the machine
/// has been started (Backup, or Master for an address owner).
///
/// Needs CAP_NET_RAW (raw and packet sockets) and CAP_NET_ADMIN (VIPs).
pub fn spawn(
    cfg: InstanceConfig,
    reports: mpsc::Sender<StateChange>,
) -> Result<Instance, ShellError> {
    spawn_inner(cfg, reports, None)
}

/// [`spawn`], as member `member` of `group`. The instance starts held
/// (Backup) until every member of the group runs and is ready.
///
/// # Errors
/// As [`spawn`]; also a `member` out of the group's range or already
/// started.
pub fn spawn_synced(
    cfg: InstanceConfig,
    reports: mpsc::Sender<StateChange>,
    group: &SyncGroup,
    member: usize,
) -> Result<Instance, ShellError> {
    {
        let s = group.lock();
        if s.members.get(member).is_none_or(|m| m.is_some()) {
            return Err(ShellError::Config(format!(
                "instance {}: sync group {} has no free member slot {member}",
                cfg.name, s.name
            )));
        }
    }
    spawn_inner(cfg, reports, Some((group.clone(), member)))
}

/// The real-time priority of every instance's thread (SCHED_RR, 1..=99;
/// keepalived's `vrrp_rt_priority`). An instance thread sleeps in `poll`
/// almost always; real time lets it send its adverts and run its timers
/// on time however busy the node is with table writes, health checks or
/// L7 load, so that a loaded Master is not taken for a dead one. The
/// kernel's real-time throttling (`sched_rt_runtime_us`) still bounds it.
pub const REALTIME_PRIORITY: i32 = 10;

/// Puts the calling thread in SCHED_RR at [`REALTIME_PRIORITY`], with
/// SCHED_RESET_ON_FORK so that processes it starts are ordinary; without
/// CAP_SYS_NICE it stays as it is, with one warning.
#[allow(unsafe_code)]
fn raise_to_realtime(instance: &str) {
    let param = libc::sched_param { sched_priority: REALTIME_PRIORITY };
    // SAFETY: plain syscall on this thread with a valid parameter block.
    let rc = unsafe {
        libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_RR | libc::SCHED_RESET_ON_FORK, &param)
    };
    if rc != 0 {
        let error = std::io::Error::from_raw_os_error(rc);
        tracing::warn!(%instance, %error, "VRRP thread stays at normal priority (SCHED_RR needs CAP_SYS_NICE): adverts may be late under load");
    }
}

fn spawn_inner(
    cfg: InstanceConfig,
    reports: mpsc::Sender<StateChange>,
    group: Option<(SyncGroup, usize)>,
) -> Result<Instance, ShellError> {
    let name = cfg.name.clone();
    let (tx, rx) = mpsc::channel();
    let (wake, wake_rx) = UnixDatagram::pair().map_err(|source| ShellError::Io {
        name: name.clone(),
        what: "creating the wake-up socket",
        source,
    })?;
    // Both ends non-blocking: the owner (maybe a tokio task) must never
    // block on a wake-up, and a full buffer already holds one.
    wake.set_nonblocking(true)
        .and_then(|()| wake_rx.set_nonblocking(true))
        .map_err(|source| ShellError::Io {
            name: name.clone(),
            what: "creating the wake-up socket",
            source,
        })?;
    let membership = match group {
        Some((group, member)) => {
            let wake2 = wake.try_clone().map_err(|source| ShellError::Io {
                name: name.clone(),
                what: "creating the wake-up socket",
                source,
            })?;
            group.lock().members[member] = Some((tx.clone(), wake2));
            tracing::info!(instance = %name, group = %group.name(), member, "VRRP instance joins its sync group");
            Some(Membership {
                group,
                member,
                last: None,
            })
        }
        None => None,
    };
    let registered = membership.as_ref().map(|m| (m.group.clone(), m.member));
    let runner = match runner::Runner::new(cfg, rx, wake_rx, reports, membership) {
        Ok(r) => r,
        Err(e) => {
            // Free the slot: the group must not wait on a channel nobody reads.
            if let Some((group, member)) = registered {
                group.lock().members[member] = None;
            }
            return Err(e);
        }
    };
    let status = runner.status();
    let runner_name = name.clone();
    let thread = std::thread::Builder::new()
        .name(format!("vrrp-{name}"))
        .spawn(move || {
            raise_to_realtime(&runner_name);
            runner.run()
        })
        .map_err(|source| ShellError::Io {
            name: name.clone(),
            what: "spawning the thread",
            source,
        })?;
    Ok(Instance {
        name,
        commands: tx,
        wake,
        status,
        thread: Some(thread),
    })
}

/// The id of the XDP program attached to `interface` (rtnetlink's
/// IFLA_XDP attributes), `None` if none is: for tracking that the
/// daemon's program is still there (issue 11, "Tracking").
///
/// Blocking: it runs one request on a current-thread runtime of its own,
/// so call it from a plain thread or `spawn_blocking`, never from inside
/// an async task. The answer is about the calling thread's network
/// namespace.
///
/// # Errors
/// No such interface, or netlink failed.
pub fn xdp_program_id(interface: &str) -> io::Result<Option<u32>> {
    Ok(netlink::Netlink::open()?.link(interface)?.xdp_prog_id)
}

impl Instance {
    /// The instance's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).state
    }

    /// The current effective priority.
    pub fn priority(&self) -> u8 {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .priority
    }

    /// The current Master's primary address as this instance knows it:
    /// its own while Master, else the source of the last accepted advert
    /// from the Master; `None` before any ([`crate::Machine::master_address`]).
    pub fn master_address(&self) -> Option<IpAddr> {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .master_address
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .counters
            .clone()
    }

    /// Sets the effective priority (tracking weights applied by the owner):
    /// [`crate::Event::PriorityChanged`].
    pub fn set_priority(&self, priority: u8) {
        self.send(Command::Priority(priority));
    }

    /// Confirms that the datapath now forwards the instance's addresses:
    /// a new MASTER waiting on [`InstanceConfig::wait_for_forwarding`]
    /// adds and announces them. Harmless at any other time.
    pub fn forwarding_ready(&self) {
        self.send(Command::ForwardingReady);
    }

    /// [`Instance::forwarding_ready`] as a callable that another thread
    /// (the datapath writer, once it has applied) can run later; a no-op
    /// if the instance is gone by then.
    pub fn forwarding_ready_signal(&self) -> impl FnOnce() + Send + 'static {
        let commands = self.commands.clone();
        let wake = self.wake.try_clone().ok();
        move || {
            if commands.send(Command::ForwardingReady).is_ok() {
                if let Some(wake) = wake {
                    let _ = wake.send(&[1]);
                }
            }
        }
    }

    /// Enters (`true`) or leaves keepalived's Fault state:
    /// [`crate::Event::Fault`] / [`crate::Event::FaultCleared`].
    pub fn set_fault(&self, faulted: bool) {
        self.send(Command::Fault(faulted));
    }

    /// Stops gracefully and waits for the thread: a Master sends a
    /// priority-0 advert (its Backup takes over after Skew_Time, RFC 9568
    /// section 6.4.3) and removes the VIPs; the last [`StateChange`] goes
    /// to Initialize with [`Reason::Shutdown`].
    pub fn stop(mut self) {
        self.finish(true);
    }

    /// Stops as a crash would, and waits for the thread: no priority-0
    /// advert, no report, the VIPs stay on the interface. The Backup takes
    /// over after Master_Down_Interval. For tests and failover benchmarks.
    pub fn kill(mut self) {
        self.finish(false);
    }

    fn send(&self, c: Command) {
        if self.commands.send(c).is_ok() {
            // A full socket buffer already holds a wake-up.
            let _ = self.wake.send(&[1]);
        }
    }

    fn finish(&mut self, graceful: bool) {
        if let Some(t) = self.thread.take() {
            self.send(Command::Stop { graceful });
            if t.join().is_err() {
                tracing::error!(instance = %self.name, "VRRP thread panicked");
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.finish(true);
    }
}

/// Used by the runner: the machine's config from ours.
fn machine_config(cfg: &InstanceConfig, primary: IpAddr) -> crate::Config {
    crate::Config {
        version: cfg.version,
        priority: cfg.priority,
        advert_interval: cfg.advert_interval,
        preempt: cfg.preempt,
        preempt_delay: cfg.preempt_delay,
        primary_address: primary,
    }
}
