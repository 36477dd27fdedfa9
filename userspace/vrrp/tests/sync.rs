//! Sync groups without sockets: the pure [`SyncGroup`] deciding, the
//! machines following through `SyncFault` / `SyncHold`, wired as the
//! shell wires them. Each test quotes the keepalived rule it checks
//! (keepalived/vrrp/vrrp_sync.c).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use fulcrum_vrrp::sync::{MemberStatus, SyncGroup, SyncInputs};
use fulcrum_vrrp::{Action, Centiseconds, Config, Event, Heard, Machine, Reason, State, Version};

const SEC: Centiseconds = Centiseconds(100);
const PEER4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20));
const PEER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2));

/// Member 0: IPv4 instance, member 1: IPv6 instance, one node.
struct Node {
    ms: Vec<Machine>,
    group: SyncGroup,
    own_fault: Vec<bool>,
    t0: Instant,
    /// (member, action), in order.
    log: Vec<(usize, Action)>,
}

impl Node {
    fn new(priorities: [u8; 2]) -> Node {
        let t0 = Instant::now();
        let addrs = [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)), IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1))];
        let ms = (0..2)
            .map(|i| {
                let cfg = Config {
                    version: Version::V3,
                    priority: priorities[i],
                    advert_interval: SEC,
                    preempt: true,
                    preempt_delay: Duration::ZERO,
                    primary_address: addrs[i],
                };
                Machine::new(cfg, t0).unwrap()
            })
            .collect();
        Node { ms, group: SyncGroup::new(2), own_fault: vec![false; 2], t0, log: Vec::new() }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Feeds `event` to member `i` and lets the group propagate, as the
    /// shell does: after each event the member publishes its status; every
    /// sibling whose inputs changed gets SyncFault then SyncHold.
    fn feed(&mut self, i: usize, event: Event, ms: u64) {
        let now = self.at(ms);
        let mut queue = VecDeque::from([(i, event)]);
        while let Some((i, event)) = queue.pop_front() {
            if event == Event::Fault {
                self.own_fault[i] = true;
            } else if event == Event::FaultCleared {
                self.own_fault[i] = false;
            }
            for a in self.ms[i].handle(event, now) {
                self.log.push((i, a));
            }
            let status = MemberStatus {
                state: self.ms[i].state(),
                wants_master: self.ms[i].wants_master(),
                own_fault: self.own_fault[i],
            };
            for (j, inputs) in self.group.update(i, status) {
                queue.push_back((j, Event::SyncFault(inputs.fault)));
                queue.push_back((j, Event::SyncHold(inputs.hold)));
            }
        }
    }

    fn start(&mut self) {
        for i in 0..2 {
            let SyncInputs { hold, fault } = self.group.inputs(i);
            self.feed(i, Event::SyncFault(fault), 0);
            self.feed(i, Event::SyncHold(hold), 0);
            self.feed(i, Event::Startup, 0);
        }
    }

    /// Fires member `i`'s timer at its deadline; returns that time in ms.
    fn fire(&mut self, i: usize) -> u64 {
        let d = self.ms[i].next_deadline().expect("a timer is armed");
        let ms = d.duration_since(self.t0).as_millis() as u64;
        self.feed(i, Event::Timer, ms);
        ms
    }

    fn states(&self) -> [State; 2] {
        [self.ms[0].state(), self.ms[1].state()]
    }

    fn take_log(&mut self) -> Vec<(usize, Action)> {
        std::mem::take(&mut self.log)
    }
}

fn heard(priority: u8, source: IpAddr) -> Event {
    Event::Advert(Heard { priority, interval: SEC, source })
}

fn transitions(log: &[(usize, Action)]) -> Vec<(usize, State, Reason)> {
    log.iter()
        .filter_map(|(i, a)| match a {
            Action::Notify(t) => Some((*i, t.to, t.reason)),
            _ => None,
        })
        .collect()
}

/// "Only sync to master if everyone wants to i.e. prefer backup state to
/// avoid thrashing" (vrrp_sync_goto_master): the first member whose
/// Master_Down_Timer fires waits, wanting Master; the last one releases
/// both.
#[test]
fn the_group_becomes_master_when_every_member_is_ready() {
    let mut n = Node::new([150, 150]);
    n.start();
    assert_eq!(n.states(), [State::Backup, State::Backup]);
    // Member 1 hears its peer once at 1 s: its timer now runs later.
    n.feed(1, heard(200, PEER6), 1000);
    let t0 = n.fire(0);
    assert_eq!(n.states(), [State::Backup, State::Backup], "member 0 is held at {t0} ms");
    assert!(n.ms[0].wants_master());
    assert_eq!(n.ms[0].next_deadline(), None, "held: no timer, the release decides");
    n.take_log();
    n.fire(1);
    assert_eq!(n.states(), [State::Master, State::Master]);
    let t = transitions(&n.take_log());
    assert_eq!(t.len(), 2, "{t:?}");
    assert!(t.iter().all(|(_, s, r)| *s == State::Master && *r == Reason::MasterDown), "{t:?}");
}

/// vrrp_sync_backup: a member that hears a higher priority leaves Master,
/// and its sibling leaves with it, with a priority-0 advert so the peer
/// node's instance takes over after Skew_Time. The sibling then stays
/// Backup although it outranks the peer (it is held while member 0 hears
/// a live Master), and the group comes back only when member 0 may.
#[test]
fn one_member_losing_takes_the_group_to_backup_without_thrashing() {
    let mut n = Node::new([100, 200]);
    n.start();
    n.fire(0);
    n.fire(1);
    assert_eq!(n.states(), [State::Master, State::Master]);
    n.take_log();

    // The peer's IPv4 instance wins.
    n.feed(0, heard(150, PEER4), 5000);
    assert_eq!(n.states(), [State::Backup, State::Backup]);
    let log = n.take_log();
    let member1: Vec<Action> = log.iter().filter(|(i, _)| *i == 1).map(|(_, a)| *a).collect();
    assert_eq!(
        member1[..3],
        [Action::SendAdvert { priority: 0, interval: SEC }, Action::ReleaseVips, Action::SetForwarding(false)],
        "{member1:?}"
    );
    assert!(transitions(&log).contains(&(1, State::Backup, Reason::SyncGroup)));

    // The peer's IPv6 instance (priority 100) takes over; ours (200) would
    // preempt it, but waits: member 0 still hears a live Master.
    for k in 1..=5 {
        n.feed(0, heard(150, PEER4), 5000 + k * 1000);
        n.feed(1, heard(100, PEER6), 5000 + k * 1000);
    }
    let fired = n.fire(1);
    assert!(fired > 5000);
    assert_eq!(n.states(), [State::Backup, State::Backup]);
    assert!(n.ms[1].wants_master(), "held, wanting to preempt");
    n.feed(0, heard(150, PEER4), 11_000);
    assert_eq!(n.states(), [State::Backup, State::Backup]);

    // The peer's IPv4 instance stops (priority 0): member 0 takes over
    // after Skew_Time, and releases member 1 at once.
    n.take_log();
    n.feed(0, heard(0, PEER4), 12_000);
    n.fire(0);
    assert_eq!(n.states(), [State::Master, State::Master]);
    let t = transitions(&n.take_log());
    assert!(t.contains(&(0, State::Master, Reason::MasterResigned)), "{t:?}");
    assert!(t.iter().any(|(i, s, r)| *i == 1 && *s == State::Master && matches!(r, Reason::Preempting { priority: 100, .. })), "{t:?}");
}

/// vrrp_sync_fault: a member's own fault puts its siblings in Fault; the
/// group leaves Fault when no member has a fault of its own.
#[test]
fn a_fault_takes_the_group_and_clearing_it_brings_it_back() {
    let mut n = Node::new([150, 150]);
    n.start();
    n.fire(0);
    n.fire(1);
    n.take_log();
    n.feed(0, Event::Fault, 3000);
    assert_eq!(n.states(), [State::Fault, State::Fault]);
    let log = n.take_log();
    let t = transitions(&log);
    assert_eq!(t, vec![(0, State::Fault, Reason::Fault), (1, State::Fault, Reason::SyncGroup)]);
    for i in 0..2 {
        assert!(log.contains(&(i, Action::SendAdvert { priority: 0, interval: SEC })), "member {i} resigns");
    }
    // A sibling's fault does not count as the sibling's own: member 1
    // clearing nothing changes nothing; member 0 clearing brings both back.
    n.feed(0, Event::FaultCleared, 4000);
    assert_eq!(n.states(), [State::Backup, State::Backup]);
    n.fire(0);
    n.fire(1);
    assert_eq!(n.states(), [State::Master, State::Master]);
}

/// A member that has not started (or stopped) holds the others: a
/// half-started group never claims Master.
#[test]
fn a_stopped_member_holds_the_group() {
    let g = SyncGroup::new(3);
    assert_eq!(g.inputs(0), SyncInputs { hold: true, fault: false });
    let mut g = SyncGroup::new(2);
    let master = MemberStatus { state: State::Master, wants_master: true, own_fault: false };
    assert_eq!(g.update(0, master), vec![(1, SyncInputs { hold: false, fault: false })]);
    assert_eq!(g.update(1, master), vec![(0, SyncInputs { hold: false, fault: false })]);
    assert_eq!(g.update(1, MemberStatus::STOPPED), vec![(0, SyncInputs { hold: true, fault: false })]);
    assert_eq!(g.update(1, MemberStatus::STOPPED), vec![], "no change, no news");
    assert_eq!(g.update(9, master), vec![], "out of range");
}
