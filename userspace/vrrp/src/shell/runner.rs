//! The instance's thread: the poll loop that connects sockets, netlink and
//! the clock to the [`Machine`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::netlink::{self, Netlink};
use super::sockets::{AdvertSocket, Announcer, GROUP_V4, GROUP_V6};
use super::{
    machine_config, Command, Counters, InstanceConfig, Membership, ShellError, StateChange, Status, Vip,
    LOG_EVERY,
};
use crate::auth::{self, Signer, Verifier};
use crate::sync::MemberStatus;
use crate::checks::{self, Expected, Warning};
use crate::machine::{Action, Event, Machine, State, PRIORITY_OWNER};
use crate::packet::{Addresses, Advertisement, Family};

/// Largest packet read: an IPv4 header with options (60 B) plus a VRRPv2
/// advert with 255 addresses (1036 B), or an IPv6 advert with 255
/// addresses (4088 B); anything longer is malformed anyway.
const RECV_BUF: usize = 4096 + 64;

/// Gratuitous ARP / NA repeats still to send after a takeover.
struct Announcing {
    next: Instant,
    left: u32,
}

/// Rate-limited logging per kind (discards and warnings).
#[derive(Default)]
struct RateLimit {
    /// Per kind: when last logged, and how many were not logged since.
    last: HashMap<&'static str, (Instant, u64)>,
}

impl RateLimit {
    /// Whether to log one event of `kind` now; if so, how many were
    /// suppressed since the last line.
    fn allow(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        match self.last.get_mut(kind) {
            Some((at, suppressed)) if now.duration_since(*at) < LOG_EVERY => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                let n = *suppressed;
                *at = now;
                *suppressed = 0;
                Some(n)
            }
            None => {
                self.last.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// The macvlan of InstanceConfig::virtual_mac.
struct Vmac {
    index: u32,
    up: bool,
    /// Adverts go out through the macvlan (from the virtual MAC).
    tx: AdvertSocket,
}

/// Writes a sysctl of the calling thread's network namespace (/proc/sys
/// resolves `net` at open time by the opener's namespace).
fn write_sysctl(path: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/{path}"), value)
}

pub(crate) struct Runner {
    cfg: InstanceConfig,
    machine: Machine,
    expected: Expected,
    addresses: Addresses,
    socket: AdvertSocket,
    announcer: Announcer,
    netlink: Netlink,
    /// Our advert source: primary IPv4 address or IPv6 link-local.
    source: IpAddr,
    destinations: Vec<IpAddr>,
    commands: mpsc::Receiver<Command>,
    wake: UnixDatagram,
    reports: mpsc::Sender<StateChange>,
    status: Arc<Mutex<Status>>,
    counters: Counters,
    forwarding: bool,
    announcing: Option<Announcing>,
    /// A new MASTER's addresses wait for the owner's forwarding
    /// confirmation until this deadline (see `wait_for_forwarding`).
    pending_announce: Option<Instant>,
    logs: RateLimit,
    /// Sync group membership, if any.
    sync: Option<Membership>,
    /// The instance's own fault input (Command::Fault), for the group.
    own_fault: bool,
    /// The virtual-MAC macvlan, if configured.
    vmac: Option<Vmac>,
    /// Where the VIPs go: the macvlan's index, or the interface's.
    vip_index: u32,
    /// HMAC trailer: signing and checking (InstanceConfig::hmac).
    signer: Option<Signer>,
    verifier: Option<Verifier>,
}

impl Runner {
    /// Everything that can fail happens here, on the caller's thread.
    pub fn new(
        cfg: InstanceConfig,
        commands: mpsc::Receiver<Command>,
        wake: UnixDatagram,
        reports: mpsc::Sender<StateChange>,
        sync: Option<Membership>,
    ) -> Result<Runner, ShellError> {
        cfg.validate()?;
        let name = cfg.name.clone();
        let io = |what: &'static str| {
            let name = name.clone();
            move |source| ShellError::Io { name, what, source }
        };
        let netlink = Netlink::open().map_err(io("opening rtnetlink"))?;
        let link = netlink
            .link(&cfg.interface)
            .map_err(io("looking up the interface"))?;
        let addrs = netlink
            .addresses(link.index)
            .map_err(io("listing the interface's addresses"))?;
        let family = cfg.family();
        let source = match family {
            Family::V4 => netlink::primary_v4(&addrs, &cfg.vips).map(IpAddr::V4),
            Family::V6 => netlink::link_local_v6(&addrs).map(IpAddr::V6),
        }
        .ok_or_else(|| ShellError::Interface {
            name: name.clone(),
            what: format!(
                "{} has no {} to send adverts from",
                cfg.interface,
                if family == Family::V4 {
                    "IPv4 address (other than a VIP)"
                } else {
                    "IPv6 link-local address"
                }
            ),
        })?;
        let machine = Machine::new(machine_config(&cfg, source), Instant::now())
            .map_err(|e| ShellError::Machine(name.clone(), e))?;
        let addresses = match family {
            Family::V4 => Addresses::V4(
                cfg.vips
                    .iter()
                    .filter_map(|v| {
                        if let IpAddr::V4(a) = v.address {
                            Some(a)
                        } else {
                            None
                        }
                    })
                    .collect(),
            ),
            Family::V6 => Addresses::V6(
                cfg.vips
                    .iter()
                    .filter_map(|v| {
                        if let IpAddr::V6(a) = v.address {
                            Some(a)
                        } else {
                            None
                        }
                    })
                    .collect(),
            ),
        };
        let expected = Expected {
            version: cfg.version,
            vrid: cfg.vrid,
            addresses: addresses.clone(),
            advert_interval: cfg.advert_interval,
            auth: cfg.auth(),
            owner: cfg.priority == PRIORITY_OWNER,
        };
        let multicast = cfg.unicast_peers.is_empty();
        let destinations = if multicast {
            vec![match family {
                Family::V4 => IpAddr::V4(GROUP_V4),
                Family::V6 => IpAddr::V6(GROUP_V6),
            }]
        } else {
            cfg.unicast_peers.clone()
        };
        let socket = AdvertSocket::open(&cfg.interface, link.index, source, multicast)
            .map_err(io("opening the VRRP raw socket"))?;
        let (vmac, announcer) = if cfg.virtual_mac {
            let name_v = cfg.vmac_name();
            let index = netlink
                .macvlan_create(&name_v, link.index, cfg.vmac())
                .map_err(io("creating the virtual MAC's macvlan"))?;
            let rest = (|| -> Result<(Vmac, Announcer), ShellError> {
                if family == Family::V4 {
                    // The parent must not tie the VIPs (on the macvlan)
                    // to its own MAC: it answers no ARP for them, and its
                    // own ARP requests (for the replies to clients, which
                    // leave through it) name its own address as sender,
                    // not a VIP.
                    let conf = format!("net/ipv4/conf/{}", cfg.interface);
                    write_sysctl(&format!("{conf}/arp_ignore"), "1")
                        .map_err(io("setting arp_ignore on the interface"))?;
                    write_sysctl(&format!("{conf}/arp_announce"), "2")
                        .map_err(io("setting arp_announce on the interface"))?;
                }
                if let IpAddr::V6(ll) = source {
                    // As keepalived does: no link-local of its own (one
                    // from the shared MAC would be the same on every
                    // router, a DAD conflict at each handover) but the
                    // parent's, so adverts leave from the virtual MAC with
                    // the source the election compares (RFC 9568 section
                    // 5.1.2.1: the link-local address of the sending
                    // interface). Kept while the macvlan is down between
                    // Master periods.
                    netlink
                        .link_no_addr_gen(index)
                        .map_err(io("turning off the macvlan's IPv6 address generation"))?;
                    write_sysctl(&format!("net/ipv6/conf/{name_v}/keep_addr_on_down"), "1")
                        .map_err(io("setting keep_addr_on_down on the macvlan"))?;
                    netlink
                        .add(index, &Vip { address: IpAddr::V6(ll), prefix_len: 64 })
                        .map_err(io("adding the link-local address to the macvlan"))?;
                }
                let tx = AdvertSocket::open(&name_v, index, source, false)
                    .map_err(io("opening the macvlan's VRRP socket"))?;
                let announcer = Announcer::open(index, cfg.vmac(), true)
                    .map_err(io("opening the packet socket"))?;
                Ok((Vmac { index, up: false, tx }, announcer))
            })();
            match rest {
                Ok((v, a)) => (Some(v), a),
                Err(e) => {
                    let _ = netlink.link_del(index);
                    return Err(e);
                }
            }
        } else {
            let a = Announcer::open(link.index, link.mac, false)
                .map_err(io("opening the packet socket"))?;
            (None, a)
        };
        let vip_index = vmac.as_ref().map_or(link.index, |v| v.index);
        let status = Arc::new(Mutex::new(Status {
            state: State::Initialize,
            priority: cfg.priority,
            master_address: None,
            counters: Counters::default(),
        }));
        // The epoch of the replay counter: wall-clock seconds now, so a
        // restarted node's counters exceed its previous life's
        // (crate::auth module docs). A clock before 1970 gives 0.
        let signer = cfg.hmac.clone().map(|k| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Signer::new(k, secs)
        });
        let verifier = cfg.hmac.clone().map(Verifier::new);
        Ok(Runner {
            cfg,
            machine,
            expected,
            addresses,
            socket,
            announcer,
            netlink,
            source,
            destinations,
            commands,
            wake,
            reports,
            status,
            counters: Counters::default(),
            forwarding: false,
            announcing: None,
            pending_announce: None,
            logs: RateLimit::default(),
            sync,
            own_fault: false,
            vmac,
            vip_index,
            signer,
            verifier,
        })
    }

    pub fn status(&self) -> Arc<Mutex<Status>> {
        Arc::clone(&self.status)
    }

    pub fn run(mut self) {
        tracing::info!(
            instance = %self.cfg.name, vrid = self.cfg.vrid, interface = %self.cfg.interface,
            source = %self.source, priority = self.cfg.priority, "VRRP instance starting"
        );
        // Leftovers of a crashed predecessor: a Backup must not hold them.
        self.release_vips(false);
        // A sync group member learns its inputs before starting, so it
        // never claims Master while a sibling is not ready.
        self.sync_publish();
        let actions = self.machine.handle(Event::Startup, Instant::now());
        self.apply(actions);
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            let now = Instant::now();
            if self.machine.next_deadline().is_some_and(|d| d <= now) {
                let actions = self.machine.handle(Event::Timer, now);
                self.apply(actions);
                // A held member's timer fires without actions: it now
                // wants Master, which its group must hear.
                self.publish();
            }
            if self.announcing.as_ref().is_some_and(|a| a.next <= now) {
                self.announce_round(now);
            }
            if self.pending_announce.is_some_and(|d| d <= now) {
                tracing::warn!(instance = %self.cfg.name, "forwarding not confirmed in time: adding and announcing the addresses anyway");
                self.pending_announce = None;
                self.announce_vips();
            }
            let deadline = [
                self.machine.next_deadline(),
                self.announcing.as_ref().map(|a| a.next),
                self.pending_announce,
            ]
            .into_iter()
            .flatten()
            .min();
            let (sock_ready, wake_ready) = match self.wait(deadline) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(instance = %self.cfg.name, error = %e, "poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if sock_ready {
                self.receive_all(&mut buf);
            }
            if wake_ready {
                let mut b = [0u8; 64];
                while self.wake.recv(&mut b).is_ok() {}
            }
            // Every iteration, not only on a wake-up, and in one place: a
            // command must never be taken off the channel and dropped.
            loop {
                match self.commands.try_recv() {
                    Ok(Command::Stop { graceful }) => {
                        self.stop(graceful);
                        return;
                    }
                    Ok(c) => self.command(c),
                    Err(mpsc::TryRecvError::Empty) => break,
                    // Every handle gone without a stop request (cannot
                    // happen through `Instance`, whose drop stops).
                    Err(mpsc::TryRecvError::Disconnected) => {
                        self.stop(true);
                        return;
                    }
                }
            }
        }
    }

    /// Waits until a socket is readable or `deadline`. The timeout is
    /// rounded up to whole milliseconds so that waking up never comes
    /// before the deadline (which would spin).
    fn wait(&self, deadline: Option<Instant>) -> nix::Result<(bool, bool)> {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                let ms = left.as_nanos().div_ceil(1_000_000);
                PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [
            PollFd::new(self.socket.fd(), PollFlags::POLLIN),
            PollFd::new(self.wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => return Ok((false, false)),
            Err(e) => return Err(e),
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        Ok((ready(&fds[0]), ready(&fds[1])))
    }

    fn command(&mut self, c: Command) {
        let now = Instant::now();
        let event = match c {
            Command::Priority(p) => Event::PriorityChanged(p),
            Command::Fault(true) => {
                self.own_fault = true;
                Event::Fault
            }
            Command::Fault(false) => {
                self.own_fault = false;
                Event::FaultCleared
            }
            Command::Sync(inputs) => {
                self.sync_inputs(inputs, now);
                self.publish();
                return;
            }
            Command::ForwardingReady => {
                if self.pending_announce.take().is_some() {
                    self.announce_vips();
                }
                return;
            }
            Command::Stop { .. } => return,
        };
        let actions = self.machine.handle(event, now);
        self.apply(actions);
        self.publish();
    }

    /// Feeds the group's inputs to the machine: fault first, so a member
    /// that must follow a sibling to Fault never passes through Master.
    fn sync_inputs(&mut self, inputs: crate::sync::SyncInputs, now: Instant) {
        let mut actions = self.machine.handle(Event::SyncFault(inputs.fault), now);
        actions.extend(self.machine.handle(Event::SyncHold(inputs.hold), now));
        self.apply(actions);
    }

    /// Tells the sync group our status if it changed, and applies the
    /// inputs it answers with (they depend on the siblings only, so this
    /// does not recurse more than once).
    fn sync_publish(&mut self) {
        let status = MemberStatus {
            state: self.machine.state(),
            wants_master: self.machine.wants_master(),
            own_fault: self.own_fault,
        };
        let Some(m) = self.sync.as_mut() else { return };
        if let Some(inputs) = m.publish(status) {
            self.sync_inputs(inputs, Instant::now());
        }
    }

    fn stop(&mut self, graceful: bool) {
        if graceful {
            let actions = self.machine.handle(Event::Shutdown, Instant::now());
            self.apply(actions);
            tracing::info!(instance = %self.cfg.name, "VRRP instance stopped");
        } else {
            tracing::warn!(instance = %self.cfg.name, "VRRP instance killed: no priority-0 advert, VIPs left in place");
        }
        self.publish();
        if let Some(m) = self.sync.as_mut() {
            m.leave(graceful);
        }
        if graceful {
            if let Some(v) = self.vmac.take() {
                drop(v.tx);
                if let Err(e) = self.netlink.link_del(v.index) {
                    tracing::error!(instance = %self.cfg.name, error = %e, "deleting the virtual MAC's macvlan failed");
                }
            }
        }
    }

    /// Drains the socket: several adverts may have queued while we were
    /// busy, and each must reach the machine with its own arrival time.
    fn receive_all(&mut self, buf: &mut [u8]) {
        loop {
            let r = match self.socket.recv(buf) {
                Ok(None) => break,
                Ok(Some(r)) => r,
                Err(e) => {
                    tracing::warn!(instance = %self.cfg.name, error = %e, "receive failed");
                    break;
                }
            };
            let now = Instant::now();
            let Some(r) = r else {
                self.discard_other("unreadable", None, now);
                continue;
            };
            if !self.cfg.unicast_peers.is_empty() && !self.cfg.unicast_peers.contains(&r.meta.src) {
                self.discard_other("unknown_peer", Some(r.meta.src), now);
                continue;
            }
            let payload = &buf[r.payload];
            // With HMAC on, the trailer is cut off before the RFC checks
            // and verified after them (other VRIDs stay silent discards).
            let (message, trailer) = if self.verifier.is_some() {
                auth::split(payload, crate::packet::Family::of(&r.meta.src))
            } else {
                (payload, None)
            };
            match checks::check(&self.expected, &r.meta, message) {
                Ok(acc) => {
                    if let Some(v) = self.verifier.as_mut() {
                        if let Err(e) = v.check(r.meta.src, r.meta.dst, message, trailer) {
                            let kind = e.kind();
                            *self.counters.discards.entry(kind).or_default() += 1;
                            if let Some(suppressed) = self.logs.allow(kind, now) {
                                tracing::warn!(instance = %self.cfg.name, source = %r.meta.src, kind, suppressed, "VRRP advert discarded: {e}");
                            }
                            continue;
                        }
                    }
                    self.counters.adverts_accepted += 1;
                    for w in &acc.warnings {
                        let kind = match w {
                            Warning::IntervalMismatch { .. } => "interval_mismatch",
                            Warning::AddressList => "address_list",
                            Warning::OwnerConflict => "owner_conflict",
                        };
                        if let Some(suppressed) = self.logs.allow(kind, now) {
                            tracing::warn!(instance = %self.cfg.name, source = %r.meta.src, suppressed, "VRRP advert accepted with a warning: {w:?}");
                        }
                    }
                    let actions = self.machine.handle(Event::Advert(acc.heard), now);
                    self.apply(actions);
                }
                Err(d) => {
                    let kind = d.kind();
                    *self.counters.discards.entry(kind).or_default() += 1;
                    if !d.is_silent() {
                        if let Some(suppressed) = self.logs.allow(kind, now) {
                            tracing::warn!(instance = %self.cfg.name, source = %r.meta.src, kind, suppressed, "VRRP packet discarded: {d}");
                        }
                    }
                }
            }
        }
        self.publish();
    }

    fn discard_other(&mut self, kind: &'static str, src: Option<IpAddr>, now: Instant) {
        *self.counters.discards.entry(kind).or_default() += 1;
        if let Some(suppressed) = self.logs.allow(kind, now) {
            tracing::warn!(instance = %self.cfg.name, source = ?src, kind, suppressed, "VRRP packet discarded");
        }
    }

    fn apply(&mut self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        for a in actions {
            match a {
                Action::SendAdvert { priority, interval } => self.send_advert(priority, interval),
                Action::AnnounceVips => match self.cfg.wait_for_forwarding {
                    Some(bound) => self.pending_announce = Some(Instant::now() + bound),
                    None => self.announce_vips(),
                },
                Action::ReleaseVips => {
                    self.pending_announce = None;
                    self.release_vips(true)
                }
                Action::SetForwarding(on) => self.forwarding = on,
                Action::Notify(t) => {
                    self.counters.transitions += 1;
                    tracing::info!(
                        instance = %self.cfg.name, vrid = self.cfg.vrid, from = %t.from, to = %t.to,
                        reason = ?t.reason, "VRRP transition"
                    );
                    let _ = self.reports.send(StateChange {
                        instance: self.cfg.name.clone(),
                        vrid: self.cfg.vrid,
                        from: t.from,
                        state: t.to,
                        reason: t.reason,
                        forwarding: self.forwarding,
                        at: Instant::now(),
                    });
                }
            }
        }
        self.publish();
    }

    /// Brings the macvlan up (a Master's adverts and addresses need it).
    fn vmac_up(&mut self, up: bool) {
        let Some(v) = self.vmac.as_mut() else { return };
        if v.up == up {
            return;
        }
        match self.netlink.link_set_up(v.index, up) {
            Ok(()) => v.up = up,
            Err(e) => {
                self.counters.netlink_errors += 1;
                tracing::error!(instance = %self.cfg.name, up, error = %e, "setting the virtual MAC's macvlan up/down failed");
            }
        }
    }

    fn send_advert(&mut self, priority: u8, interval: crate::Centiseconds) {
        self.vmac_up(true);
        let advert = Advertisement {
            version: self.cfg.version,
            vrid: self.cfg.vrid,
            priority,
            interval,
            addresses: self.addresses.clone(),
            auth: self.expected.auth.clone(),
        };
        for i in 0..self.destinations.len() {
            let dst = self.destinations[i];
            let signer = self.signer.as_mut();
            let source = self.source;
            let sent = advert
                .encode(self.source, dst, self.cfg.v4_checksum)
                .map(|bytes| match signer {
                    Some(s) => s.sign(source, dst, bytes),
                    None => bytes,
                })
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                .and_then(|bytes| {
                    match self.vmac.as_ref().map(|v| &v.tx) {
                        Some(tx) => tx.send(&bytes, dst),
                        None => self.socket.send(&bytes, dst),
                    }
                });
            match sent {
                Ok(()) => self.counters.adverts_sent += 1,
                Err(e) => {
                    self.counters.send_errors += 1;
                    if let Some(suppressed) = self.logs.allow("send_error", Instant::now()) {
                        tracing::warn!(instance = %self.cfg.name, %dst, error = %e, suppressed, "sending a VRRP advert failed");
                    }
                }
            }
        }
    }

    fn announce_vips(&mut self) {
        self.vmac_up(true);
        for v in &self.cfg.vips {
            if let Err(e) = self.netlink.add(self.vip_index, v) {
                self.counters.netlink_errors += 1;
                tracing::error!(instance = %self.cfg.name, vip = %v.address, error = %e, "adding the VIP failed");
            }
        }
        self.announcing = Some(Announcing {
            next: Instant::now(),
            left: self.cfg.garp.repeat,
        });
        self.announce_round(Instant::now());
    }

    /// One gratuitous ARP / unsolicited NA per VIP, and the next round
    /// scheduled (not slept for: adverts go on meanwhile).
    fn announce_round(&mut self, now: Instant) {
        let Some(a) = self.announcing.as_mut() else {
            return;
        };
        a.left = a.left.saturating_sub(1);
        if a.left == 0 {
            self.announcing = None;
        } else {
            a.next = now + self.cfg.garp.delay;
        }
        for v in &self.cfg.vips {
            let r = match (v.address, self.source) {
                (IpAddr::V4(vip), _) => self.announcer.garp(vip),
                (IpAddr::V6(vip), IpAddr::V6(ll)) => self.announcer.na(ll, vip),
                (IpAddr::V6(_), IpAddr::V4(_)) => continue,
            };
            match r {
                Ok(()) => self.counters.announcements += 1,
                Err(e) => {
                    if let Some(suppressed) = self.logs.allow("announce_error", now) {
                        tracing::warn!(instance = %self.cfg.name, vip = %v.address, error = %e, suppressed, "sending a gratuitous ARP / NA failed");
                    }
                }
            }
        }
        // With a zero delay, send the whole burst now.
        if self.cfg.garp.delay.is_zero() && self.announcing.is_some() {
            self.announce_round(now);
        }
    }

    fn release_vips(&mut self, log: bool) {
        self.announcing = None;
        for v in &self.cfg.vips {
            match self.netlink.del(self.vip_index, v) {
                Ok(true) if !log => {
                    tracing::info!(instance = %self.cfg.name, vip = %v.address, "removed a VIP left on the interface")
                }
                Ok(_) => {}
                Err(e) => {
                    self.counters.netlink_errors += 1;
                    tracing::error!(instance = %self.cfg.name, vip = %v.address, error = %e, "removing the VIP failed");
                }
            }
        }
        // Only a Master shows the shared MAC.
        self.vmac_up(false);
    }

    fn publish(&mut self) {
        self.sync_publish();
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.state = self.machine.state();
        s.priority = self.machine.priority();
        s.master_address = self.machine.master_address();
        s.counters.clone_from(&self.counters);
    }
}
