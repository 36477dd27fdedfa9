//! Replays of event sequences against expected action sequences, one RFC
//! rule per test. Times are milliseconds since the test's `t0`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use fulcrum_vrrp::machine::PRIORITY_OWNER;
use fulcrum_vrrp::{
    Action, Centiseconds, Config, Event, Heard, Machine, Reason, State, Transition, Version,
};

const ME: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
const LOWER_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5));
const HIGHER_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20));
const SEC: Centiseconds = Centiseconds(100);

fn config(priority: u8) -> Config {
    Config {
        version: Version::V3,
        priority,
        advert_interval: SEC,
        preempt: true,
        preempt_delay: Duration::ZERO,
        primary_address: ME,
    }
}

/// A machine, its epoch and a replay log.
struct Replay {
    m: Machine,
    t0: Instant,
    /// (ms since t0, action)
    log: Vec<(u64, Action)>,
    now_ms: u64,
}

impl Replay {
    fn new(cfg: Config) -> Replay {
        let t0 = Instant::now();
        Replay {
            m: Machine::new(cfg, t0).unwrap(),
            t0,
            log: Vec::new(),
            now_ms: 0,
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        at.duration_since(self.t0).as_millis() as u64
    }

    /// Fires every timer due up to `ms` (at its deadline, as a shell that
    /// sleeps until `next_deadline` would), then leaves the clock at `ms`.
    fn advance(&mut self, ms: u64) {
        let until = self.t0 + Duration::from_millis(ms);
        while let Some(d) = self.m.next_deadline() {
            if d > until {
                break;
            }
            let acts = self.m.handle(Event::Timer, d);
            let at = self.ms(d);
            self.log.extend(acts.into_iter().map(|a| (at, a)));
        }
        self.now_ms = ms;
    }

    /// Advances to `ms`, then feeds `event`.
    fn at(&mut self, ms: u64, event: Event) -> &mut Replay {
        self.advance(ms);
        let acts = self.m.handle(event, self.t0 + Duration::from_millis(ms));
        self.log.extend(acts.into_iter().map(|a| (ms, a)));
        self
    }

    fn take(&mut self) -> Vec<(u64, Action)> {
        std::mem::take(&mut self.log)
    }

    fn deadline_ms(&self) -> Option<u64> {
        self.m.next_deadline().map(|d| self.ms(d))
    }
}

fn advert(priority: u8) -> Action {
    Action::SendAdvert {
        priority,
        interval: SEC,
    }
}

fn notify(from: State, to: State, reason: Reason) -> Action {
    Action::Notify(Transition { from, to, reason })
}

fn heard(priority: u8, source: IpAddr) -> Event {
    Event::Advert(Heard {
        priority,
        interval: SEC,
        source,
    })
}

fn become_master(reason: Reason, priority: u8) -> Vec<Action> {
    vec![
        advert(priority),
        Action::AnnounceVips,
        Action::SetForwarding(true),
        notify(State::Backup, State::Master, reason),
    ]
}

fn at(ms: u64, acts: Vec<Action>) -> Vec<(u64, Action)> {
    acts.into_iter().map(|a| (ms, a)).collect()
}

/// A non-owner Backup of `priority` that has become Master (no one else
/// around), log cleared; returns the time it became Master.
fn master(priority: u8) -> (Replay, u64) {
    let mut r = Replay::new(config(priority));
    r.at(0, Event::Startup);
    let t = r.deadline_ms().unwrap();
    r.advance(t);
    assert_eq!(r.m.state(), State::Master);
    r.take();
    (r, t)
}

/// RFC 9568 6.4.1: "If the Priority = 255 (i.e., the router owns the IPvX
/// address associated with the Virtual Router), then: Send an
/// ADVERTISEMENT ... [gratuitous ARP / unsolicited NA] ... Set the
/// Adver_Timer to Advertisement_Interval; Transition to the {Active}
/// state".
#[test]
fn owner_startup_goes_master_at_once() {
    let mut r = Replay::new(config(PRIORITY_OWNER));
    r.at(0, Event::Startup);
    assert_eq!(
        r.take(),
        at(
            0,
            vec![
                advert(255),
                Action::AnnounceVips,
                Action::SetForwarding(true),
                notify(State::Initialize, State::Master, Reason::StartupAsOwner),
            ]
        )
    );
    assert_eq!(r.deadline_ms(), Some(1000));
    r.advance(3000);
    assert_eq!(
        r.take(),
        vec![
            (1000, advert(255)),
            (2000, advert(255)),
            (3000, advert(255))
        ]
    );
}

/// RFC 9568 6.4.1: "else // Router is not the address owner: Set
/// Active_Adver_Interval to Advertisement_Interval; Set the
/// Active_Down_Timer to Active_Down_Interval; Transition to the {Backup}
/// state". With priority 100 and 1 s: Skew_Time = (156 * 100) / 256 = 60
/// cs, Active_Down_Interval = 300 + 60 = 360 cs (RFC 9568 6.1).
#[test]
fn backup_startup_waits_master_down_interval() {
    let mut r = Replay::new(config(100));
    r.at(0, Event::Startup);
    assert_eq!(
        r.take(),
        at(
            0,
            vec![notify(State::Initialize, State::Backup, Reason::Startup)]
        )
    );
    assert_eq!(r.m.master_down_interval(), Duration::from_millis(3600));
    assert_eq!(r.deadline_ms(), Some(3600));
    r.advance(3599);
    assert_eq!(r.take(), vec![]);
    assert_eq!(r.m.state(), State::Backup);
}

/// RFC 9568 6.4.2: "If the Active_Down_Timer fires, then: Send an
/// ADVERTISEMENT; ... broadcast a gratuitous ARP ...; Set the Adver_Timer to
/// Advertisement_Interval; Transition to the {Active} state".
#[test]
fn backup_hearing_nothing_becomes_master() {
    let mut r = Replay::new(config(100));
    r.at(0, Event::Startup);
    r.take();
    r.advance(5000);
    let mut want = at(3600, become_master(Reason::MasterDown, 100));
    want.push((4600, advert(100)));
    assert_eq!(r.take(), want);
}

/// RFC 9568 6.4.2: "If Preempt_Mode is False, or if the Priority in the
/// ADVERTISEMENT is greater than or equal to the local Priority, then: ...
/// Set the Active_Down_Timer to Active_Down_Interval". A Backup hearing its
/// Master every second never takes over.
#[test]
fn backup_hearing_master_stays_backup() {
    let mut r = Replay::new(config(100));
    r.at(0, Event::Startup);
    for s in 1..=10 {
        r.at(s * 1000, heard(200, HIGHER_ADDR));
    }
    r.advance(13_000);
    assert_eq!(r.m.state(), State::Backup);
    assert_eq!(r.deadline_ms(), Some(13_600));
}

/// RFC 9568 6.4.3: "If the Priority in the ADVERTISEMENT is greater than
/// the local Priority ..., then: Cancel Adver_Timer; Set the
/// Active_Adver_Interval to the Max Advertise Interval contained in the
/// ADVERTISEMENT; Recompute the Skew_Time; Recompute the
/// Active_Down_Interval; Set the Active_Down_Timer to Active_Down_Interval;
/// Transition to the {Backup} state".
#[test]
fn master_hearing_higher_priority_becomes_backup() {
    let (mut r, t) = master(100);
    r.at(t + 500, heard(200, LOWER_ADDR));
    assert_eq!(
        r.take(),
        at(
            t + 500,
            vec![
                Action::ReleaseVips,
                Action::SetForwarding(false),
                notify(
                    State::Master,
                    State::Backup,
                    Reason::HigherPriority {
                        priority: 200,
                        source: LOWER_ADDR
                    }
                ),
            ]
        )
    );
    assert_eq!(r.deadline_ms(), Some(t + 500 + 3600));
}

/// RFC 9568 6.4.3: "else // new Active Router logic: Discard the
/// ADVERTISEMENT; Send an ADVERTISEMENT immediately to assert the {Active}
/// state to the sending VRRP Router". The regular schedule is unchanged.
#[test]
fn master_hearing_lower_priority_sends_advert() {
    let (mut r, t) = master(100);
    r.at(t + 500, heard(50, HIGHER_ADDR));
    assert_eq!(r.take(), vec![(t + 500, advert(100))]);
    assert_eq!(r.m.state(), State::Master);
    assert_eq!(r.deadline_ms(), Some(t + 1000));
}

/// RFC 3768 6.4.3 (VRRPv2): "else: Discard ADVERTISEMENT" -- unlike
/// VRRPv3, a v2 Master sends nothing on hearing a lower priority.
#[test]
fn v2_master_hearing_lower_priority_discards() {
    let mut cfg = config(100);
    cfg.version = Version::V2;
    let mut r = Replay::new(cfg);
    r.at(0, Event::Startup);
    // RFC 3768 6.1: Skew_Time = (256 - 100) / 256 s = 609.375 ms.
    assert_eq!(r.m.master_down_interval(), Duration::from_micros(3_609_375));
    r.advance(3610);
    assert_eq!(r.m.state(), State::Master);
    r.take();
    r.at(4000, heard(50, HIGHER_ADDR));
    assert_eq!(r.take(), vec![]);
}

/// RFC 9568 6.4.3: "... or the Priority in the ADVERTISEMENT is equal to
/// the local Priority and the primary IPvX address of the sender is greater
/// than the local primary IPvX address (based on an unsigned integer
/// comparison of the IPvX addresses in network byte order), then: ...
/// Transition to the {Backup} state".
#[test]
fn equal_priority_tie_break_by_address() {
    let (mut r, t) = master(100);
    // Lower address, same priority: we win and assert ourselves.
    r.at(t + 100, heard(100, LOWER_ADDR));
    assert_eq!(r.take(), vec![(t + 100, advert(100))]);
    // Higher address, same priority: we yield.
    r.at(t + 200, heard(100, HIGHER_ADDR));
    assert_eq!(
        r.take(),
        at(
            t + 200,
            vec![
                Action::ReleaseVips,
                Action::SetForwarding(false),
                notify(
                    State::Master,
                    State::Backup,
                    Reason::TieBreakLost {
                        source: HIGHER_ADDR
                    }
                ),
            ]
        )
    );
}

/// RFC 9568 6.4.2: "If Preempt_Mode is False, or if the Priority in the
/// ADVERTISEMENT is greater than or equal to the local Priority, then: ...
/// Set the Active_Down_Timer to Active_Down_Interval" -- with preemption
/// off, a lower-priority Master's adverts keep a higher-priority Backup
/// down.
#[test]
fn preempt_off_higher_backup_does_not_take_over() {
    let mut cfg = config(200);
    cfg.preempt = false;
    let mut r = Replay::new(cfg);
    r.at(0, Event::Startup);
    r.take();
    for s in 1..=20 {
        r.at(s * 1000, heard(100, LOWER_ADDR));
    }
    assert_eq!(r.take(), vec![]);
    assert_eq!(r.m.state(), State::Backup);
}

/// RFC 9568 6.4.2: "else // preempt was true and priority was less than the
/// local priority: Discard the ADVERTISEMENT" -- so the Active_Down_Timer
/// set at startup fires and the higher-priority Backup preempts.
#[test]
fn preempt_on_higher_backup_takes_over() {
    let mut r = Replay::new(config(200));
    r.at(0, Event::Startup);
    r.take();
    // (256-200)*100/256 = 21 cs: Master_Down_Interval 3.21 s.
    assert_eq!(r.deadline_ms(), Some(3210));
    for s in 1..=5 {
        r.at(s * 1000, heard(100, LOWER_ADDR));
    }
    let want = at(
        3210,
        become_master(
            Reason::Preempting {
                priority: 100,
                source: LOWER_ADDR,
            },
            200,
        ),
    );
    assert_eq!(r.take()[..4], want[..]);
}

/// keepalived `preempt_delay` (keepalived.conf(5): "Seconds of delay until
/// preemption after getting the advertisement timeout at startup or when
/// seeing a lower priority master"): the first lower-priority advert starts
/// the delay; until it passes, that Master's adverts are accepted as with
/// Preempt_Mode False; then they are discarded and the Active_Down_Timer
/// runs out.
#[test]
fn preempt_delay_honoured() {
    let mut cfg = config(200);
    cfg.preempt_delay = Duration::from_secs(10);
    let mut r = Replay::new(cfg);
    r.at(0, Event::Startup);
    r.take();
    for s in 1..=20 {
        r.at(s * 1000, heard(100, LOWER_ADDR));
    }
    // Delay started at 1 s, ends at 11 s: the advert at 11 s is the first
    // discarded, so the timer set by the one at 10 s fires at 13.21 s.
    let log = r.take();
    assert_eq!(
        log[..4],
        at(
            13_210,
            become_master(
                Reason::Preempting {
                    priority: 100,
                    source: LOWER_ADDR
                },
                200
            )
        )[..]
    );
    // Without the delay it would have been 3.21 s (previous test).
}

/// A higher-priority Master cancels a pending preempt delay: hearing it
/// again later restarts the delay from scratch.
#[test]
fn preempt_delay_restarts_after_higher_master() {
    let mut cfg = config(200);
    cfg.preempt_delay = Duration::from_secs(5);
    let mut r = Replay::new(cfg);
    r.at(0, Event::Startup);
    r.take();
    r.at(1000, heard(100, LOWER_ADDR)); // delay until 6 s
    r.at(2000, heard(250, HIGHER_ADDR)); // cancelled
    for s in 3..=12 {
        r.at(s * 1000, heard(100, LOWER_ADDR)); // restarts at 3 s, until 8 s
    }
    let log = r.take();
    // Adverts at 3..=7 s accepted; the one at 7 s sets the timer to 10.21 s.
    assert_eq!(log.first().map(|(t, _)| *t), Some(10_210));
    assert_eq!(r.m.state(), State::Master);
}

/// RFC 9568 6.4.2: "If the Priority in the ADVERTISEMENT is 0, then: Set
/// the Active_Down_Timer to Skew_Time".
#[test]
fn priority_zero_backup_takes_over_after_skew_time() {
    let mut r = Replay::new(config(100));
    r.at(0, Event::Startup);
    r.take();
    r.at(1000, heard(200, HIGHER_ADDR));
    r.at(1500, heard(0, HIGHER_ADDR));
    // Skew_Time = 60 cs.
    assert_eq!(r.deadline_ms(), Some(2100));
    r.advance(2100);
    assert_eq!(
        r.take(),
        at(2100, become_master(Reason::MasterResigned, 100))
    );
}

/// RFC 9568 6.4.2: "Set the Active_Adver_Interval to the Max Advertise
/// Interval contained in the ADVERTISEMENT; Recompute the Skew_Time;
/// Recompute the Active_Down_Interval".
#[test]
fn learned_master_adver_interval_changes_master_down_interval() {
    let mut r = Replay::new(config(100));
    r.at(0, Event::Startup);
    assert_eq!(r.m.master_down_interval(), Duration::from_millis(3600));
    r.at(
        1000,
        Event::Advert(Heard {
            priority: 200,
            interval: Centiseconds(200),
            source: HIGHER_ADDR,
        }),
    );
    assert_eq!(r.m.master_adver_interval(), Centiseconds(200));
    // 3 * 200 + (156 * 200) / 256 = 600 + 121 = 721 cs.
    assert_eq!(r.m.master_down_interval(), Duration::from_millis(7210));
    assert_eq!(r.deadline_ms(), Some(8210));
    // Priority 0 now skews by the learned interval: 121 cs.
    r.at(
        2000,
        Event::Advert(Heard {
            priority: 0,
            interval: Centiseconds(200),
            source: HIGHER_ADDR,
        }),
    );
    assert_eq!(r.deadline_ms(), Some(3210));
}

/// RFC 3768 6.4.2 (VRRPv2) has no learning: "Reset the Master_Down_Timer to
/// Master_Down_Interval", with the fixed Skew_Time of RFC 3768 6.1.
#[test]
fn v2_backup_does_not_learn_interval() {
    let mut cfg = config(100);
    cfg.version = Version::V2;
    let mut r = Replay::new(cfg);
    r.at(0, Event::Startup);
    r.at(
        1000,
        Event::Advert(Heard {
            priority: 200,
            interval: Centiseconds(200),
            source: HIGHER_ADDR,
        }),
    );
    assert_eq!(r.m.master_adver_interval(), SEC);
    assert_eq!(r.m.master_down_interval(), Duration::from_micros(3_609_375));
}

/// RFC 9568 6.4.3: "If a Shutdown event is received, then: Cancel the
/// Adver_Timer; Send an ADVERTISEMENT with Priority = 0; Transition to the
/// {Initialize} state".
#[test]
fn shutdown_master_sends_priority_zero_and_releases() {
    let (mut r, t) = master(100);
    r.at(t + 300, Event::Shutdown);
    assert_eq!(
        r.take(),
        at(
            t + 300,
            vec![
                advert(0),
                Action::ReleaseVips,
                Action::SetForwarding(false),
                notify(State::Master, State::Initialize, Reason::Shutdown),
            ]
        )
    );
    assert_eq!(r.m.next_deadline(), None);
}

/// RFC 9568 6.4.2: "If a Shutdown event is received, then: Cancel the
/// Active_Down_Timer; Transition to the {Initialize} state".
#[test]
fn shutdown_backup_goes_initialize() {
    let mut r = Replay::new(config(100));
    r.at(0, Event::Startup);
    r.take();
    r.at(500, Event::Shutdown);
    assert_eq!(
        r.take(),
        at(
            500,
            vec![notify(State::Backup, State::Initialize, Reason::Shutdown)]
        )
    );
    assert_eq!(r.m.next_deadline(), None);
    r.advance(10_000);
    assert_eq!(r.take(), vec![]);
}

/// RFC 9568 6.4.3: "If the Priority in the ADVERTISEMENT is 0, then: Send
/// an ADVERTISEMENT; Reset the Adver_Timer to Advertisement_Interval".
#[test]
fn master_hearing_priority_zero_sends_and_resets() {
    let (mut r, t) = master(100);
    r.at(t + 400, heard(0, HIGHER_ADDR));
    assert_eq!(r.take(), vec![(t + 400, advert(100))]);
    assert_eq!(r.deadline_ms(), Some(t + 1400));
}

/// keepalived's Fault state (outside the RFCs): a Master leaves as on
/// shutdown (priority 0, VIPs released), takes no part while faulted, and
/// starts over as after Startup when the fault clears.
#[test]
fn fault_and_recovery() {
    let (mut r, t) = master(100);
    r.at(t + 100, Event::Fault);
    assert_eq!(
        r.take(),
        at(
            t + 100,
            vec![
                advert(0),
                Action::ReleaseVips,
                Action::SetForwarding(false),
                notify(State::Master, State::Fault, Reason::Fault),
            ]
        )
    );
    assert_eq!(r.m.next_deadline(), None);
    r.at(t + 200, heard(50, LOWER_ADDR));
    r.advance(t + 20_000);
    assert_eq!(r.take(), vec![]);
    r.at(t + 20_000, Event::FaultCleared);
    assert_eq!(
        r.take(),
        at(
            t + 20_000,
            vec![notify(State::Fault, State::Backup, Reason::FaultCleared)]
        )
    );
    assert_eq!(r.deadline_ms(), Some(t + 23_600));
}

/// A fault before Startup holds the router in Fault from the start.
#[test]
fn fault_before_startup() {
    let mut r = Replay::new(config(PRIORITY_OWNER));
    r.at(0, Event::Fault);
    r.at(10, Event::Startup);
    assert_eq!(
        r.take(),
        at(
            10,
            vec![notify(State::Initialize, State::Fault, Reason::Fault)]
        )
    );
    r.at(20, Event::FaultCleared);
    assert_eq!(r.m.state(), State::Master);
}

/// Tracking lowers the effective priority: the Master's next advert
/// carries it, and a preempting Backup of higher priority takes over. The
/// Adver_Timer is not moved by the change.
#[test]
fn priority_change_shows_in_next_advert() {
    let (mut r, t) = master(150);
    r.at(t + 100, Event::PriorityChanged(90));
    assert_eq!(r.take(), vec![]);
    r.advance(t + 1000);
    assert_eq!(r.take(), vec![(t + 1000, advert(90))]);
    r.at(t + 1500, heard(100, LOWER_ADDR));
    assert_eq!(r.m.state(), State::Backup);
    // Clamped: 0 is the stop priority, 255 only for the configured owner.
    r.at(t + 1600, Event::PriorityChanged(0));
    assert_eq!(r.m.priority(), 1);
    r.at(t + 1700, Event::PriorityChanged(255));
    assert_eq!(r.m.priority(), 254);
}

#[test]
fn config_validation() {
    let mut c = config(0);
    assert!(Machine::new(c.clone(), Instant::now()).is_err());
    c.priority = 100;
    c.advert_interval = Centiseconds(4096);
    assert!(Machine::new(c.clone(), Instant::now()).is_err());
    c.version = Version::V2;
    c.advert_interval = Centiseconds(150);
    assert!(Machine::new(c.clone(), Instant::now()).is_err());
    c.advert_interval = Centiseconds(200);
    assert!(Machine::new(c, Instant::now()).is_ok());
}

/// A `Timer` before the deadline (a spurious wake-up) does nothing.
#[test]
fn early_timer_is_harmless() {
    let mut r = Replay::new(config(100));
    r.at(0, Event::Startup);
    r.take();
    r.at(1000, Event::Timer);
    assert_eq!(r.take(), vec![]);
    assert_eq!(r.deadline_ms(), Some(3600));
}

/// Issue 11 item 7, the master address in stats. RFC 9568 6.4.2: a Backup
/// hears adverts from the {Active} Router only, so the source of the last
/// one accepted is the Master's primary address (6.4.3's tie-break uses
/// the same "primary IPvX Address of the sender"); 6.4.3: in {Active}
/// state, this router is the one.
#[test]
fn master_address_follows_the_election() {
    let mut r = Replay::new(config(100));
    assert_eq!(r.m.master_address(), None);
    r.at(0, Event::Startup);
    // Backup, nothing heard yet.
    assert_eq!(r.m.master_address(), None);
    r.at(1000, heard(200, HIGHER_ADDR));
    assert_eq!(r.m.master_address(), Some(HIGHER_ADDR));
    // A resigning Master (priority 0) is still the Master until Skew_Time.
    r.at(2000, heard(0, HIGHER_ADDR));
    assert_eq!(r.m.master_address(), Some(HIGHER_ADDR));
    // Its Skew_Time passes: we are Master, and the address is ours.
    r.advance(3000);
    assert_eq!(r.m.state(), State::Master);
    assert_eq!(r.m.master_address(), Some(ME));
    // A higher priority takes over: its source is the Master now.
    r.at(3500, heard(200, LOWER_ADDR));
    assert_eq!(r.m.state(), State::Backup);
    assert_eq!(r.m.master_address(), Some(LOWER_ADDR));
    // Leaving for Fault keeps the last Master heard; a Master going to
    // Fault knows no other Master.
    let (mut r, t) = master(100);
    r.at(t + 100, Event::Fault);
    assert_eq!(r.m.state(), State::Fault);
    assert_eq!(r.m.master_address(), None);
}
