//! The I/O shell in a namespace lab (tests/common): real raw sockets,
//! netlink and gratuitous ARP between instances in separate namespaces.
//! Needs root.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use common::{wait_for, wait_state, VrrpLab};
use fulcrum_vrrp::interval::{master_down_interval_v3, skew_time_v3};
use fulcrum_vrrp::shell::{Garp, Instance, InstanceConfig, StateChange, Vip};
use fulcrum_vrrp::{Centiseconds, Ipv4ChecksumMode, Reason, State, Version};

/// 20 cs: short enough for quick tests, long enough that two busy cores
/// do not make adverts late by a sizeable fraction of an interval.
const INTERVAL: Centiseconds = Centiseconds(20);
/// What the tests allow beyond the RFC's timers (the brief's 100 ms).
const SLACK: Duration = Duration::from_millis(100);

fn config(name: &str, vip: IpAddr, priority: u8) -> InstanceConfig {
    InstanceConfig {
        name: name.to_string(),
        interface: "eth0".to_string(),
        vrid: 51,
        version: Version::V3,
        priority,
        advert_interval: INTERVAL,
        preempt: true,
        preempt_delay: Duration::ZERO,
        password: None,
        vips: vec![Vip {
            address: vip,
            prefix_len: if vip.is_ipv4() { 32 } else { 128 },
        }],
        unicast_peers: Vec::new(),
        v4_checksum: Ipv4ChecksumMode::default(),
        garp: Garp {
            repeat: 5,
            delay: Duration::from_millis(100),
        },
        hmac: None,
        wait_for_forwarding: None,
        virtual_mac: false,
    }
}

/// Priority elects exactly one Master, which alone holds the VIP; a
/// graceful stop hands over within Skew_Time + 100 ms (RFC 9568 section
/// 6.4.3: priority-0 advert; 6.4.2: Backup waits Skew_Time).
#[test]
fn ipv4_election_and_graceful_handover() -> Result<()> {
    let lab = VrrpLab::up(2)?;
    let vip = IpAddr::V4(lab.vip4());
    let (r2, rx2) = lab.spawn(2, config("r2", vip, 100))?;
    let (r1, rx1) = lab.spawn(1, config("r1", vip, 200))?;
    let m = wait_state(&rx1, State::Master, Duration::from_secs(3))?;
    assert!(m.forwarding);
    wait_for(Duration::from_secs(2), "the VIP on r1 only", || {
        lab.holders(vip) == vec![1]
    })?;
    // r2 started first: it may have become Master before r1 existed, so
    // give the election one more Master_Down_Interval to settle.
    std::thread::sleep(master_down_interval_v3(100, INTERVAL));
    assert_eq!(r1.state(), State::Master);
    assert_eq!(r2.state(), State::Backup);
    assert_eq!(lab.holders(vip), vec![1], "VIP on the Master only");
    assert_eq!(scheduling_policy("vrrp-r1"), Some(SCHED_RR), "instance threads run in real time");
    while rx2.try_recv().is_ok() {}

    let stop = Instant::now();
    r1.stop();
    let took = wait_state(&rx2, State::Master, Duration::from_secs(2))?;
    let gap = took.at - stop;
    let bound = skew_time_v3(100, INTERVAL) + SLACK;
    assert_eq!(took.reason, Reason::MasterResigned);
    assert!(
        gap <= bound,
        "graceful handover took {gap:?}, allowed {bound:?}"
    );
    wait_for(Duration::from_secs(1), "the VIP on r2 only", || {
        lab.holders(vip) == vec![2]
    })?;
    eprintln!("graceful handover: {gap:?} (bound {bound:?})");
    // The last report of r1 is its shutdown.
    let last = rx1.try_iter().last().expect("r1 reported its stop");
    assert_eq!(
        (last.state, last.reason),
        (State::Initialize, Reason::Shutdown)
    );
    r2.stop();
    assert!(
        lab.holders(vip).is_empty(),
        "a stopped Master releases the VIP"
    );
    Ok(())
}

/// A crashed Master (no priority-0 advert): the Backup takes over within
/// Master_Down_Interval + 100 ms of the crash (RFC 9568 section 6.4.2),
/// and its gratuitous ARPs move the observer's neighbour entry to it.
#[test]
fn ipv4_crash_handover_and_gratuitous_arp() -> Result<()> {
    let lab = VrrpLab::up(2)?;
    let vip = IpAddr::V4(lab.vip4());
    let (r1, r2, rx2) = master_and_backup(&lab, config("r1", vip, 200), config("r2", vip, 100))?;
    assert!(
        lab.observer_reaches(vip),
        "the observer reaches the VIP on r1"
    );
    let mac1 = lab.mac(&lab.router(1))?;
    let mac2 = lab.mac(&lab.router(2))?;
    assert_eq!(lab.observer_neighbour(vip).as_deref(), Some(mac1.as_str()));
    // Let the ARP entry age past the kernel's locktime (1 s), after which
    // a gratuitous ARP may override it.
    std::thread::sleep(Duration::from_millis(1000));

    let crash = Instant::now();
    r1.kill();
    let took = wait_state(&rx2, State::Master, Duration::from_secs(3))?;
    let gap = took.at - crash;
    let bound = master_down_interval_v3(100, INTERVAL) + SLACK;
    assert_eq!(took.reason, Reason::MasterDown);
    assert!(
        gap <= bound,
        "crash handover took {gap:?}, allowed {bound:?}"
    );
    eprintln!("crash handover: {gap:?} (bound {bound:?})");
    // A crash leaves the VIP on r1 (nobody removed it); r2 holds it too.
    wait_for(Duration::from_secs(1), "the VIP on r2", || {
        lab.has_addr(&lab.router(2), vip)
    })?;
    wait_for(
        Duration::from_secs(2),
        "the observer's neighbour entry on r2's MAC",
        || lab.observer_neighbour(vip).as_deref() == Some(mac2.as_str()),
    )?;
    assert!(r2.counters().announcements >= 1);
    r2.stop();
    Ok(())
}

/// Equal priorities: the higher primary address wins (RFC 9568 section
/// 6.4.3, "If the Priority in the ADVERTISEMENT is equal to the local
/// Priority and the primary IPvX Address of the sender is greater than
/// the local primary IPvX Address, then ... Transition to the {Backup}
/// state"). That rule applies between two Masters, so the test makes two:
/// r2's switch port is down while both start (split brain), then comes
/// up. (A Backup never preempts an equal priority, so two staggered
/// starts keep whichever came first, as in keepalived.)
#[test]
fn equal_priority_tie_break_by_higher_address() -> Result<()> {
    let lab = VrrpLab::up(2)?;
    let vip = IpAddr::V4(lab.vip4());
    lab.set_port(2, false)?;
    let (r1, rx1) = lab.spawn(1, config("r1", vip, 100))?;
    let (r2, _rx2) = lab.spawn(2, config("r2", vip, 100))?;
    wait_for(
        Duration::from_secs(3),
        "both Master while partitioned",
        || r1.state() == State::Master && r2.state() == State::Master,
    )?;
    assert_eq!(lab.holders(vip), vec![1, 2]);
    while rx1.try_recv().is_ok() {}
    lab.set_port(2, true)?;
    // r2 (198.19.x.2) has the higher address.
    let yielded = wait_state(&rx1, State::Backup, Duration::from_secs(3))?;
    assert!(
        matches!(yielded.reason, Reason::TieBreakLost { source } if source == IpAddr::V4(lab.addr4(2))),
        "{yielded:?}"
    );
    wait_for(Duration::from_secs(1), "the VIP on r2 only", || {
        lab.holders(vip) == vec![2]
    })?;
    std::thread::sleep(master_down_interval_v3(100, INTERVAL) * 2);
    assert_eq!(
        (r1.state(), r2.state()),
        (State::Backup, State::Master),
        "stable"
    );
    Ok(())
}

/// IPv6 (VRRPv3 over ff02::12 from link-local sources): election, the VIP
/// on the Master only, graceful handover, and the VIP reachable from the
/// observer after it (unsolicited NA, no DAD on the VIP).
#[test]
fn ipv6_election_and_handover() -> Result<()> {
    let lab = VrrpLab::up(2)?;
    let vip = IpAddr::V6(lab.vip6());
    let (r1, r2, rx2) = master_and_backup(&lab, config("r1", vip, 200), config("r2", vip, 100))?;
    wait_for(Duration::from_secs(1), "the VIP on r1 only", || {
        lab.holders(vip) == vec![1]
    })?;
    std::thread::sleep(master_down_interval_v3(100, INTERVAL));
    assert_eq!(r2.state(), State::Backup, "r2 hears r1's IPv6 adverts");
    assert!(r2.counters().adverts_accepted > 0);
    assert!(
        lab.observer_reaches(vip),
        "the observer reaches the VIP on r1"
    );

    let stop = Instant::now();
    r1.stop();
    let took = wait_state(&rx2, State::Master, Duration::from_secs(2))?;
    let gap = took.at - stop;
    let bound = skew_time_v3(100, INTERVAL) + SLACK;
    assert!(
        gap <= bound,
        "IPv6 graceful handover took {gap:?}, allowed {bound:?}"
    );
    wait_for(Duration::from_secs(1), "the VIP on r2 only", || {
        lab.holders(vip) == vec![2]
    })?;
    wait_for(
        Duration::from_secs(3),
        "the observer reaching the VIP on r2",
        || lab.observer_reaches(vip),
    )?;
    let mac2 = lab.mac(&lab.router(2))?;
    wait_for(
        Duration::from_secs(2),
        "the observer's neighbour entry on r2's MAC",
        || lab.observer_neighbour(vip).as_deref() == Some(mac2.as_str()),
    )?;
    r2.stop();
    Ok(())
}

/// VRRPv2 with simple-password authentication (RFC 3768 section 5.3.6),
/// with unicast peers: matching passwords elect by priority; a wrong
/// password is discarded and counted, and leaves its router alone (it
/// becomes Master too: the adverts it hears do not count).
#[test]
fn ipv4_v2_password_and_unicast_peers() -> Result<()> {
    let lab = VrrpLab::up(3)?;
    let vip = IpAddr::V4(lab.vip4());
    let v2 = |name: &str, prio: u8, pass: &[u8], me: u8| {
        let mut c = config(name, vip, prio);
        c.version = Version::V2;
        c.advert_interval = Centiseconds::from_secs(1);
        c.password = Some(pass.to_vec());
        c.unicast_peers = [1u8, 2, 3]
            .into_iter()
            .filter(|i| *i != me)
            .map(|i| IpAddr::V4(lab.addr4(i)))
            .collect();
        c
    };
    let (r1, rx1) = lab.spawn(1, v2("r1", 200, b"secret", 1))?;
    wait_state(&rx1, State::Master, Duration::from_secs(5))?;
    let (r2, _rx2) = lab.spawn(2, v2("r2", 100, b"secret", 2))?;
    let (r3, _rx3) = lab.spawn(3, v2("r3", 150, b"wrong", 3))?;
    wait_for(
        Duration::from_secs(3),
        "r3 counting password discards",
        || {
            r3.counters()
                .discards
                .get("auth_password")
                .copied()
                .unwrap_or(0)
                >= 2
        },
    )?;
    // RFC 3768 Master_Down_Interval at priority 150: 3 s + 0.41 s.
    wait_for(Duration::from_secs(6), "r3 Master despite r1", || {
        r3.state() == State::Master
    })?;
    wait_for(
        Duration::from_secs(3),
        "r1 counting r3's adverts as password discards",
        || {
            r1.counters()
                .discards
                .get("auth_password")
                .copied()
                .unwrap_or(0)
                >= 1
        },
    )?;
    assert_eq!(
        r1.state(),
        State::Master,
        "r3's adverts are discarded by r1"
    );
    assert_eq!(r2.state(), State::Backup);
    assert!(r2.counters().adverts_accepted >= 2);
    r3.stop();
    r2.stop();
    r1.stop();
    Ok(())
}

/// Tracking, as the daemon will drive it: lowering the Master's effective
/// priority below the Backup's hands over (the Backup preempts after
/// Master_Down_Interval, RFC 9568 section 6.4.2), and a Fault on the
/// Master hands over within Skew_Time (it leaves with a priority-0 advert,
/// as keepalived does).
#[test]
fn priority_change_and_fault_hand_over() -> Result<()> {
    let lab = VrrpLab::up(2)?;
    let vip = IpAddr::V4(lab.vip4());
    let (r1, rx1) = lab.spawn(1, config("r1", vip, 200))?;
    wait_state(&rx1, State::Master, Duration::from_secs(3))?;
    let (r2, rx2) = lab.spawn(2, config("r2", vip, 150))?;
    wait_for(Duration::from_secs(1), "r2 in Backup", || r2.state() == State::Backup)?;

    r1.set_priority(100);
    let m = wait_state(&rx2, State::Master, master_down_interval_v3(150, INTERVAL) + Duration::from_secs(1))?;
    assert!(matches!(m.reason, Reason::Preempting { priority: 100, .. }), "{m:?}");
    let b = wait_state(&rx1, State::Backup, Duration::from_secs(1))?;
    assert!(matches!(b.reason, Reason::HigherPriority { priority: 150, .. }), "{b:?}");
    wait_for(Duration::from_secs(1), "the VIP on r2 only", || lab.holders(vip) == vec![2])?;
    assert_eq!(r1.priority(), 100);

    // Back to 200: r1 preempts r2 again.
    r1.set_priority(200);
    wait_state(&rx1, State::Master, master_down_interval_v3(200, INTERVAL) + Duration::from_secs(1))?;
    wait_for(Duration::from_secs(1), "the VIP on r1 only", || lab.holders(vip) == vec![1])?;

    let fault = Instant::now();
    r1.set_fault(true);
    let f = wait_state(&rx1, State::Fault, Duration::from_secs(1))?;
    assert!(!f.forwarding);
    let m = wait_state(&rx2, State::Master, Duration::from_secs(1))?;
    let bound = skew_time_v3(150, INTERVAL) + SLACK;
    assert!(m.at - fault <= bound, "fault handover took {:?}, allowed {bound:?}", m.at - fault);
    wait_for(Duration::from_secs(1), "the VIP on r2 only", || lab.holders(vip) == vec![2])?;
    r1.set_fault(false);
    wait_state(&rx1, State::Master, master_down_interval_v3(200, INTERVAL) + Duration::from_secs(1))?;
    Ok(())
}

/// RFC 9568 section 7.1 receive checks on the wire: adverts with a bad
/// checksum, TTL below 255, another VRID or cut short, sent every 50 ms
/// by the observer, are counted per reason and change nothing: the Master
/// keeps advertising on schedule (keepalived 2.2.7 restarted its advert
/// timer on each, issue 11) and the Backup never takes over.
#[test]
fn invalid_adverts_are_counted_and_change_nothing() -> Result<()> {
    use fulcrum_vrrp::{Addresses, Advertisement, Auth};
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::{Ipv4Addr, SocketAddrV4};

    let lab = VrrpLab::up(2)?;
    let vip = IpAddr::V4(lab.vip4());
    let IpAddr::V4(vip4) = vip else { unreachable!() };
    let (r1, rx1) = lab.spawn(1, config("r1", vip, 200))?;
    wait_state(&rx1, State::Master, Duration::from_secs(3))?;
    let (r2, rx2) = lab.spawn(2, config("r2", vip, 100))?;
    wait_for(Duration::from_secs(1), "r2 in Backup", || r2.state() == State::Backup)?;
    let sent_before = r1.counters().adverts_sent;

    let obs = lab.addr4(100);
    let group = Ipv4Addr::new(224, 0, 0, 18);
    let advert = |vrid: u8, priority: u8| Advertisement {
        version: Version::V3,
        vrid,
        priority,
        interval: INTERVAL,
        addresses: Addresses::V4(vec![vip4]),
        auth: Auth::None,
    };
    let good = advert(51, 254).encode(IpAddr::V4(obs), IpAddr::V4(group), Ipv4ChecksumMode::default())?;
    let mut bad_sum = good.clone();
    bad_sum[6] ^= 0xff;
    let other = advert(52, 254).encode(IpAddr::V4(obs), IpAddr::V4(group), Ipv4ChecksumMode::default())?;
    let short = good[..good.len() - 2].to_vec();
    let rounds = 20;
    let period = Duration::from_millis(50);
    let start = Instant::now();
    fulcrum_lab::in_netns(&lab.observer(), || -> Result<()> {
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(112)))?;
        s.bind_device(Some(b"eth0"))?;
        s.set_multicast_if_v4(&obs)?;
        let to = SocketAddrV4::new(group, 0).into();
        for _ in 0..rounds {
            s.set_multicast_ttl_v4(255)?;
            s.send_to(&bad_sum, &to)?;
            s.send_to(&other, &to)?;
            s.send_to(&short, &to)?;
            // A valid priority-254 advert, but one hop away.
            s.set_multicast_ttl_v4(64)?;
            s.send_to(&good, &to)?;
            std::thread::sleep(period);
        }
        Ok(())
    })??;
    let elapsed = start.elapsed();
    for (name, r) in [("r1", &r1), ("r2", &r2)] {
        let c = r.counters();
        for kind in ["checksum", "other_vrid", "malformed", "ttl"] {
            let n = c.discards.get(kind).copied().unwrap_or(0);
            assert!(n >= rounds - 1, "{name}: {n} {kind} discards of {rounds}: {c:?}");
        }
    }
    // r1 kept its schedule: one advert per interval, none lost or delayed.
    let sent = r1.counters().adverts_sent - sent_before;
    let expected = (elapsed.as_millis() / INTERVAL.as_duration().as_millis()) as u64;
    assert!(sent + 1 >= expected, "r1 sent {sent} adverts in {elapsed:?}, expected about {expected}");
    assert_eq!((r1.state(), r2.state()), (State::Master, State::Backup));
    assert!(rx2.try_iter().all(|c| c.state != State::Master), "r2 never became Master");
    assert_eq!(lab.holders(vip), vec![1]);
    Ok(())
}

/// Sync group on the wire (keepalived's vrrp_sync_group): r1 runs an IPv4
/// and an IPv6 instance in one group and is Master for both; r2 runs both
/// ungrouped, its IPv4 instance with a higher priority and its IPv6 one
/// with a lower. r2's IPv4 instance wins, so r1's IPv6 instance follows
/// it out of Master (priority-0 advert: r2 takes over after Skew_Time)
/// and does not preempt back while its sibling hears a live Master.
#[test]
fn sync_group_follows_a_member_that_loses() -> Result<()> {
    use fulcrum_vrrp::shell::{spawn_synced, SyncGroup};
    let lab = VrrpLab::up(2)?;
    let vip4 = IpAddr::V4(lab.vip4());
    let vip6 = IpAddr::V6(lab.vip6());
    let group = SyncGroup::new("g", 2);
    let (tx4, rx14) = std::sync::mpsc::channel();
    let (tx6, rx16) = std::sync::mpsc::channel();
    let c14 = config("r1-v4", vip4, 100);
    let c16 = InstanceConfig { vrid: 52, ..config("r1-v6", vip6, 200) };
    let g = group.clone();
    let r14 = fulcrum_lab::in_netns(&lab.router(1), move || spawn_synced(c14, tx4, &g, 0))??;
    let g = group.clone();
    let r16 = fulcrum_lab::in_netns(&lab.router(1), move || spawn_synced(c16, tx6, &g, 1))??;
    wait_state(&rx14, State::Master, Duration::from_secs(3))?;
    wait_state(&rx16, State::Master, Duration::from_secs(3))?;

    let (r24, _rx24) = lab.spawn(2, config("r2-v4", vip4, 150))?;
    let (r26, rx26) = lab.spawn(2, InstanceConfig { vrid: 52, ..config("r2-v6", vip6, 100) })?;
    let b = wait_state(&rx14, State::Backup, master_down_interval_v3(150, INTERVAL) + Duration::from_secs(1))?;
    assert!(matches!(b.reason, Reason::HigherPriority { priority: 150, .. }), "{b:?}");
    let f = wait_state(&rx16, State::Backup, Duration::from_secs(1))?;
    assert_eq!(f.reason, Reason::SyncGroup);
    let m = wait_state(&rx26, State::Master, Duration::from_secs(1))?;
    assert_eq!(m.reason, Reason::MasterResigned, "r1's IPv6 instance resigned with priority 0");
    assert!(m.at - f.at <= skew_time_v3(100, INTERVAL) + SLACK, "took {:?}", m.at - f.at);
    wait_for(Duration::from_secs(2), "both VIPs on r2 only", || {
        lab.holders(vip4) == vec![2] && lab.holders(vip6) == vec![2]
    })?;
    // No thrashing: r1's IPv6 instance (200) outranks r2's (100) but stays
    // Backup, for several Master_Down_Intervals.
    std::thread::sleep(3 * master_down_interval_v3(200, INTERVAL));
    assert_eq!((r14.state(), r16.state()), (State::Backup, State::Backup));
    assert_eq!((r24.state(), r26.state()), (State::Master, State::Master));
    assert!(rx16.try_iter().all(|c| c.state != State::Master));

    // r2's IPv4 instance stops: r1's group takes both back.
    r24.stop();
    wait_state(&rx14, State::Master, Duration::from_secs(2))?;
    wait_state(&rx16, State::Master, Duration::from_secs(2))?;
    wait_state(&rx26, State::Backup, Duration::from_secs(2))?;
    wait_for(Duration::from_secs(2), "both VIPs on r1 only", || {
        lab.holders(vip4) == vec![1] && lab.holders(vip6) == vec![1]
    })?;
    Ok(())
}

/// fulcrum's HMAC trailer: r1 and r2 share a key and elect normally (r1
/// Master, r2 Backup, graceful handover); r3 has another key and the
/// highest priority, and is ignored: its adverts count as `hmac` discards
/// and move nothing.
#[test]
fn hmac_peers_elect_and_a_wrong_key_is_ignored() -> Result<()> {
    use fulcrum_vrrp::auth::Key;
    let lab = VrrpLab::up(3)?;
    let vip = IpAddr::V4(lab.vip4());
    let good = Key::new(b"fulcrum-lab-shared-key-0123456789".to_vec())?;
    let wrong = Key::new(b"fulcrum-lab-other-key-01234567890".to_vec())?;
    let with_key = |name: &str, prio: u8, key: &Key| InstanceConfig { hmac: Some(key.clone()), ..config(name, vip, prio) };
    let (r1, rx1) = lab.spawn(1, with_key("r1", 200, &good))?;
    wait_state(&rx1, State::Master, Duration::from_secs(3))?;
    let (r2, rx2) = lab.spawn(2, with_key("r2", 100, &good))?;
    let (r3, _rx3) = lab.spawn(3, with_key("r3", 250, &wrong))?;
    std::thread::sleep(3 * master_down_interval_v3(100, INTERVAL));
    assert_eq!((r1.state(), r2.state()), (State::Master, State::Backup));
    assert_eq!(r3.state(), State::Master, "r3 hears no authentic Master");
    let (c1, c2) = (r1.counters(), r2.counters());
    assert!(c2.adverts_accepted >= 5, "r2 hears r1: {c2:?}");
    for (name, c) in [("r1", &c1), ("r2", &c2)] {
        assert!(c.discards.get("hmac").copied().unwrap_or(0) >= 5, "{name} counts r3's adverts: {c:?}");
        assert_eq!(c.discards.get("replay"), None, "{name}: {c:?}");
    }
    assert!(rx2.try_iter().all(|c| c.state != State::Master));
    // An authentic handover still works.
    r1.stop();
    let m = wait_state(&rx2, State::Master, Duration::from_secs(2))?;
    assert_eq!(m.reason, Reason::MasterResigned);
    Ok(())
}

/// `SCHED_RR` in `/proc/.../stat`.
const SCHED_RR: u32 = 2;

/// The scheduling policy (field 41 of `/proc/self/task/TID/stat`) of this
/// process's thread named `name`, if there is one.
fn scheduling_policy(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc/self/task").ok()?.flatten().find_map(|task| {
        let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
        if comm.trim() != name {
            return None;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Fields after the `)` that ends comm start at field 3.
        stat.rsplit_once(')')?.1.split_whitespace().nth(41 - 3)?.parse().ok()
    })
}

/// `ip -n NS -o link show DEV`, or `None` if there is no such device.
fn link_line(ns: &str, dev: &str) -> Option<String> {
    common::ip(&["-n", ns, "-o", "link", "show", "dev", dev]).ok()
}

/// Whether `addr` is on device `dev` in `ns`.
fn addr_on(ns: &str, dev: &str, addr: IpAddr) -> bool {
    common::ip(&["-n", ns, "-o", "addr", "show", "dev", dev])
        .map(|out| {
            out.split_whitespace()
                .any(|w| w.split('/').next() == Some(&addr.to_string()))
        })
        .unwrap_or(false)
}

/// r1, r2 and r2's reports.
type Pair = (Instance, Instance, std::sync::mpsc::Receiver<StateChange>);

/// Starts `r1` and waits for it to be Master, then `r2` and waits for it
/// to be Backup; returns both, and r2's reports.
fn master_and_backup(lab: &VrrpLab, r1: InstanceConfig, r2: InstanceConfig) -> Result<Pair> {
    let (r1, rx1) = lab.spawn(1, r1)?;
    wait_state(&rx1, State::Master, Duration::from_secs(3))?;
    let (r2, rx2) = lab.spawn(2, r2)?;
    wait_for(Duration::from_secs(1), "r2 in Backup", || r2.state() == State::Backup)?;
    Ok((r1, r2, rx2))
}

/// [`master_and_backup`] for r1 (200) and r2 (100), both with
/// `virtual_mac = true` for `vip`.
fn virtual_mac_pair(lab: &VrrpLab, vip: IpAddr) -> Result<Pair> {
    let vcfg = |name: &str, prio: u8| InstanceConfig { virtual_mac: true, ..config(name, vip, prio) };
    master_and_backup(lab, vcfg("r1", 200), vcfg("r2", 100))
}

/// `virtual_mac = true`: the Master's VIP sits on the macvlan `vrrp.51`
/// and resolves, at the observer, to the virtual router MAC
/// 00:00:5e:00:01:33 (RFC 9568 section 7.3, VRID 51 = 0x33); after a
/// failover it still resolves to that MAC, now answered by the other
/// router, whose frames from that MAC the switch has learnt on its port
/// (gratuitous ARPs and adverts from the virtual MAC, sections 6.4.2,
/// 7.3). A Backup's macvlan is down; a graceful stop deletes it.
#[test]
fn ipv4_virtual_mac_follows_the_master() -> Result<()> {
    const VMAC: &str = "00:00:5e:00:01:33";
    let lab = VrrpLab::up(2)?;
    let vip = IpAddr::V4(lab.vip4());
    let (r1, r2, rx2) = virtual_mac_pair(&lab, vip)?;
    let (ns1, ns2) = (lab.router(1), lab.router(2));
    assert!(addr_on(&ns1, "vrrp.51", vip), "the VIP is on r1's macvlan");
    assert!(lab.holders(vip).is_empty(), "and on no eth0");
    let l1 = link_line(&ns1, "vrrp.51").expect("r1 has vrrp.51");
    assert!(l1.contains(VMAC) && l1.contains(",UP"), "r1's macvlan: {l1}");
    let l2 = link_line(&ns2, "vrrp.51").expect("r2 has vrrp.51");
    assert!(l2.contains(VMAC) && !l2.contains(",UP"), "a Backup's macvlan is down: {l2}");
    assert!(lab.observer_reaches(vip), "the observer reaches the VIP on r1");
    assert_eq!(lab.observer_neighbour(vip).as_deref(), Some(VMAC));
    // Past the ARP locktime (1 s).
    std::thread::sleep(Duration::from_millis(1000));
    while rx2.try_recv().is_ok() {}

    r1.stop();
    wait_state(&rx2, State::Master, Duration::from_secs(2))?;
    assert!(link_line(&ns1, "vrrp.51").is_none(), "a graceful stop deletes the macvlan");
    wait_for(Duration::from_secs(1), "the VIP on r2's macvlan", || addr_on(&ns2, "vrrp.51", vip))?;
    // The switch learnt the virtual MAC on r2's port (p1): r2 sends from it.
    wait_for(Duration::from_secs(2), "the virtual MAC learnt on r2's port", || {
        common::ip(&["-n", &lab.ns("sw"), "-o", "link", "show", "p1"]).is_ok()
            && std::process::Command::new("bridge")
                .args(["-n", &lab.ns("sw"), "fdb", "show", "br", "br0"])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .any(|l| l.starts_with(VMAC) && l.contains("dev p1 "))
                })
                .unwrap_or(false)
    })?;
    assert!(lab.observer_reaches(vip), "the observer reaches the VIP on r2");
    assert_eq!(lab.observer_neighbour(vip).as_deref(), Some(VMAC), "same MAC after failover");
    // Its adverts leave through the macvlan without error.
    let c = r2.counters();
    assert!(c.adverts_sent > 0 && c.send_errors == 0 && c.netlink_errors == 0, "{c:?}");
    r2.stop();
    assert!(link_line(&ns2, "vrrp.51").is_none(), "r2's macvlan deleted at stop");
    Ok(())
}

/// 100 ms adverts for the preemption tests (issue 11), to keep their
/// windows of several Master_Down_Intervals short.
const FAST: Centiseconds = Centiseconds(10);

/// r1 (150) Master, r2 (100) Backup, then r1 stops gracefully and r2
/// takes over: the "old Master gone" half of issue 11's scenario. Returns
/// r2 and its reports, drained.
fn old_master_gone(
    lab: &VrrpLab,
    vip: IpAddr,
    r1: InstanceConfig,
) -> Result<(Instance, std::sync::mpsc::Receiver<StateChange>)> {
    let (r1, rx1) = lab.spawn(1, r1)?;
    wait_state(&rx1, State::Master, Duration::from_secs(3))?;
    let (r2, rx2) = lab.spawn(2, InstanceConfig { advert_interval: FAST, ..config("r2", vip, 100) })?;
    wait_for(Duration::from_secs(1), "r2 in Backup", || r2.state() == State::Backup)?;
    wait_for(Duration::from_secs(1), "the VIP on r1 only", || lab.holders(vip) == vec![1])?;
    r1.stop();
    let m = wait_state(&rx2, State::Master, Duration::from_secs(2))?;
    assert_eq!(m.reason, Reason::MasterResigned);
    wait_for(Duration::from_secs(1), "the VIP on r2 only", || lab.holders(vip) == vec![2])?;
    while rx2.try_recv().is_ok() {}
    Ok((r2, rx2))
}

/// Preempt_Mode False (keepalived's `nopreempt`, RFC 9568 section 6.4.2:
/// "If Preempt_Mode is False ... Reset the Active_Down_Timer"): the old
/// Master (150) comes back while r2 (100) is Master and stays Backup for
/// five Master_Down_Intervals; r2 keeps Master and the VIP throughout.
#[test]
fn preempt_off_the_returning_higher_priority_router_stays_backup() -> Result<()> {
    let lab = VrrpLab::up(2)?;
    let vip = IpAddr::V4(lab.vip4());
    let r1_cfg = || InstanceConfig { advert_interval: FAST, preempt: false, ..config("r1", vip, 150) };
    let (r2, rx2) = old_master_gone(&lab, vip, r1_cfg())?;

    let (r1, rx1) = lab.spawn(1, r1_cfg())?;
    wait_for(Duration::from_secs(1), "the returning r1 in Backup", || r1.state() == State::Backup)?;
    let window = 5 * master_down_interval_v3(150, FAST);
    let end = Instant::now() + window;
    while Instant::now() < end {
        assert_eq!((r1.state(), r2.state()), (State::Backup, State::Master));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!((r1.state(), r2.state()), (State::Backup, State::Master));
    assert_eq!(lab.holders(vip), vec![2], "the VIP stays on r2");
    assert!(rx1.try_iter().all(|c| c.state != State::Master), "r1 never became Master");
    assert!(rx2.try_iter().all(|c| c.state == State::Master), "r2 never left Master");
    assert!(r1.counters().adverts_accepted >= 10, "r1 hears r2: {:?}", r1.counters());
    eprintln!("preempt off: r1 Backup for {window:?}");
    Ok(())
}

/// keepalived's `preempt_delay` on the wire: the old Master (150, preempt
/// on, 1 s delay) comes back while r2 (100) is Master. As the core
/// implements it (machine.rs, `Config::preempt_delay`), the first
/// lower-priority advert r1 hears, within one advert interval of its
/// start, opens the delay; until it passes r1 accepts r2's adverts (each
/// resets its Master_Down_Timer); the first advert after it is discarded,
/// so the timer set by the last accepted one, which came before the delay
/// ended, fires and r1 preempts. Hence r1 becomes Master after
///   start + delay                           (lower: at least
///     delay - Advert_Interval + Master_Down_Interval after the first advert)
/// and before
///   start + Advert_Interval + delay + Master_Down_Interval,
/// which the test allows as delay + Master_Down_Interval + 300 ms (one
/// 100 ms interval for the first advert, 200 ms of scheduling). With a
/// delay of ten intervals, r2's tenth advert lands at the delay's end, so
/// runs show two modes: about 1.34 s (it is discarded) and 1.43 s (it is
/// accepted), against the 1.64 s bound.
#[test]
fn preempt_delay_is_honoured_over_the_wire() -> Result<()> {
    let lab = VrrpLab::up(2)?;
    let vip = IpAddr::V4(lab.vip4());
    let delay = Duration::from_secs(1);
    let r1_cfg = || InstanceConfig { advert_interval: FAST, preempt_delay: delay, ..config("r1", vip, 150) };
    let (r2, rx2) = old_master_gone(&lab, vip, r1_cfg())?;

    let start = Instant::now();
    let (r1, rx1) = lab.spawn(1, r1_cfg())?;
    std::thread::sleep((start + delay - Duration::from_millis(200)).saturating_duration_since(Instant::now()));
    assert_eq!((r1.state(), r2.state()), (State::Backup, State::Master), "at delay - 200 ms");
    assert_eq!(lab.holders(vip), vec![2]);
    let m = wait_state(&rx1, State::Master, Duration::from_secs(3))?;
    let gap = m.at - start;
    let mdi = master_down_interval_v3(150, FAST);
    let bound = delay + mdi + Duration::from_millis(300);
    assert!(
        matches!(m.reason, Reason::Preempting { priority: 100, source } if source == IpAddr::V4(lab.addr4(2))),
        "{m:?}"
    );
    assert!(gap >= delay, "r1 preempted after {gap:?}, before the {delay:?} delay");
    assert!(gap <= bound, "r1 preempted after {gap:?}, allowed {bound:?}");
    let b = wait_state(&rx2, State::Backup, Duration::from_secs(1))?;
    assert!(matches!(b.reason, Reason::HigherPriority { priority: 150, .. }), "{b:?}");
    wait_for(Duration::from_secs(1), "the VIP on r1 only", || lab.holders(vip) == vec![1])?;
    eprintln!("preempt delay: r1 Master {gap:?} after its return (delay {delay:?}, bound {bound:?})");
    Ok(())
}

/// The IPv6 link-local addresses on `dev` in `ns`.
fn link_locals(ns: &str, dev: &str) -> Vec<String> {
    common::ip(&["-n", ns, "-o", "-6", "addr", "show", "dev", dev, "scope", "link"])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|w| w.strip_suffix("/64"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `virtual_mac = true` for IPv6: the macvlan `vrrp6.51` has the virtual
/// MAC 00:00:5e:00:02:33 (RFC 9568 section 7.3), no link-local address of
/// its own (one derived from the shared MAC would be the same on both
/// routers) but its parent's, so the Master's adverts leave from the
/// virtual MAC with the source address the election compares (section
/// 5.1.2.1). The Backup hears them from r1's link-local; the observer
/// resolves the VIP to the virtual MAC before and after a handover.
#[test]
fn ipv6_virtual_mac_follows_the_master() -> Result<()> {
    const VMAC: &str = "00:00:5e:00:02:33";
    let lab = VrrpLab::up(2)?;
    let vip = IpAddr::V6(lab.vip6());
    let (r1, r2, rx2) = virtual_mac_pair(&lab, vip)?;
    let (ns1, ns2) = (lab.router(1), lab.router(2));
    let l1 = link_line(&ns1, "vrrp6.51").expect("r1 has vrrp6.51");
    assert!(l1.contains(VMAC) && l1.contains(",UP"), "r1's macvlan: {l1}");
    assert!(addr_on(&ns1, "vrrp6.51", vip), "the VIP is on r1's macvlan");
    assert!(lab.holders(vip).is_empty(), "and on no eth0");
    let parent_ll = link_locals(&ns1, "eth0");
    assert_eq!(link_locals(&ns1, "vrrp6.51"), parent_ll, "the macvlan carries eth0's link-local only");
    // r2 keeps hearing r1's adverts, from r1's link-local, for longer than
    // a Master_Down_Interval: they leave through the macvlan unhindered.
    let heard = r2.counters().adverts_accepted;
    std::thread::sleep(master_down_interval_v3(100, INTERVAL));
    assert_eq!(r2.state(), State::Backup);
    assert!(r2.counters().adverts_accepted > heard, "r2 hears r1's adverts");
    assert_eq!(r2.master_address().map(|a| a.to_string()), parent_ll.first().cloned());
    let c = r1.counters();
    assert!(c.adverts_sent > 0 && c.send_errors == 0 && c.netlink_errors == 0, "{c:?}");
    wait_for(Duration::from_secs(3), "the observer reaching the VIP on r1", || lab.observer_reaches(vip))?;
    assert_eq!(lab.observer_neighbour(vip).as_deref(), Some(VMAC));
    while rx2.try_recv().is_ok() {}

    r1.stop();
    wait_state(&rx2, State::Master, Duration::from_secs(2))?;
    assert!(link_line(&ns1, "vrrp6.51").is_none(), "a graceful stop deletes the macvlan");
    wait_for(Duration::from_secs(1), "the VIP on r2's macvlan", || addr_on(&ns2, "vrrp6.51", vip))?;
    assert_eq!(link_locals(&ns2, "vrrp6.51"), link_locals(&ns2, "eth0"));
    wait_for(Duration::from_secs(3), "the observer reaching the VIP on r2", || lab.observer_reaches(vip))?;
    assert_eq!(lab.observer_neighbour(vip).as_deref(), Some(VMAC), "same MAC after failover");
    let c = r2.counters();
    assert!(c.adverts_sent > 0 && c.send_errors == 0 && c.netlink_errors == 0, "{c:?}");
    r2.stop();
    Ok(())
}
