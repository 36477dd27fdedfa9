//! The VRRP state machine of one virtual router: RFC 9568 section 6.4
//! (VRRPv3) and RFC 3768 section 6.4 (VRRPv2), plus two keepalived
//! extensions operators expect: the Fault state and `preempt_delay`.
//!
//! Sans-IO: [`Machine::handle`] takes an [`Event`] and the current time and
//! returns the [`Action`]s for the shell to perform, in order;
//! [`Machine::next_deadline`] says when the shell must next call
//! `handle(Event::Timer, now)`. The machine never reads a clock, so a
//! `Timer` call before the deadline does nothing (spurious wake-ups are
//! harmless) and tests replay exact timelines.
//!
//! Only advertisements that passed [`crate::checks`] reach the machine, so
//! invalid or discarded packets cannot move its timers.
//!
//! States: Initialize, Backup and Master are the RFC's (RFC 9568 calls
//! Master "Active"). [`State::Fault`] is keepalived's: a tracked object
//! with weight 0 failed (or the interface is down), so the router must not
//! be Master and does not take part in the election until the fault
//! clears. The shell aggregates fault sources and sends [`Event::Fault`] /
//! [`Event::FaultCleared`].
//!
//! Sync groups (keepalived's `vrrp_sync_group`) stay outside the machine:
//! [`crate::sync`] decides from the members' states and feeds each member
//! two inputs, [`Event::SyncFault`] (a sibling is in Fault: follow it) and
//! [`Event::SyncHold`] (a sibling is not ready to be Master: do not be
//! Master). A held Master leaves as a faulted one does (priority-0
//! advert); a held Backup whose Master_Down_Timer fires stays Backup and
//! reports [`Machine::wants_master`], which is what releases the group.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::checks::Heard;
use crate::interval::{
    master_down_interval_v2, master_down_interval_v3, skew_time_v2, skew_time_v3, Centiseconds,
};
use crate::packet::Version;

/// Priority of the address owner (RFC 9568 section 5.2.4).
pub const PRIORITY_OWNER: u8 = 255;
/// Priority in the advert of a Master that stops (RFC 9568 section 5.2.4:
/// "the current Active Router has stopped participating in VRRP").
pub const PRIORITY_STOP: u8 = 0;

/// Configuration of one virtual router, as the machine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// VRRPv3 (RFC 9568) or VRRPv2 (RFC 3768): selects the timer formulas
    /// and whether a Backup learns the Master's interval.
    pub version: Version,
    /// Configured priority: 1..=254, or 255 for the address owner
    /// (RFC 9568 section 5.2.4).
    pub priority: u8,
    /// Advertisement_Interval. V3: 1..=4095 cs. V2: 1..=255 whole seconds
    /// (a multiple of 100 cs).
    pub advert_interval: Centiseconds,
    /// Preempt_Mode (RFC 9568 section 6.1): whether a higher-priority Backup
    /// takes over from a lower-priority Master. keepalived's `nopreempt`
    /// is `false` here.
    pub preempt: bool,
    /// keepalived's `preempt_delay`: after first hearing a lower-priority
    /// Master, keep accepting its adverts (as if `preempt` were off) for
    /// this long before preempting it. Zero: preempt at once. Ignored
    /// without `preempt`.
    pub preempt_delay: Duration,
    /// Our primary address on the interface: the source of our adverts and
    /// our side of the equal-priority tie-break (RFC 9568 section 6.4.3).
    pub primary_address: IpAddr,
}

/// A [`Config`] the machine cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Priority 0 is reserved for the stop advert (RFC 9568 section 5.2.4).
    #[error("priority must be 1..=255, got {0}")]
    Priority(u8),
    /// Out of the version's range (see [`Config::advert_interval`]).
    #[error("advertisement interval {0} is out of range for this VRRP version")]
    Interval(Centiseconds),
}

impl Config {
    /// Checks the ranges documented on each field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.priority == PRIORITY_STOP {
            return Err(ConfigError::Priority(self.priority));
        }
        let i = self.advert_interval;
        let ok = match self.version {
            Version::V3 => i.0 >= 1 && i <= Centiseconds::MAX_V3,
            Version::V2 => i.0 >= 100 && i <= Centiseconds::MAX_V2 && i.0 % 100 == 0,
        };
        if !ok {
            return Err(ConfigError::Interval(i));
        }
        Ok(())
    }
}

/// The state of a virtual router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Waiting for a Startup event (RFC 9568 section 6.4.1).
    Initialize,
    /// Monitoring the Master (RFC 9568 section 6.4.2).
    Backup,
    /// Forwarding for the virtual addresses (RFC 9568 section 6.4.3,
    /// "Active").
    Master,
    /// keepalived's extension, outside the RFCs: a weight-0 tracked object
    /// failed; no VIPs, no adverts, adverts ignored.
    Fault,
}

impl fmt::Display for State {
    /// keepalived's notify names, which operators' scripts match on.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        })
    }
}

/// An input to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// Start the virtual router (RFC 9568 section 6.4.1).
    Startup,
    /// Stop it (RFC 9568 sections 6.4.2, 6.4.3).
    Shutdown,
    /// The time in [`Machine::next_deadline`] may have come.
    Timer,
    /// An advertisement that passed [`crate::checks::check`].
    Advert(Heard),
    /// The effective priority changed (tracking weights). Clamped to
    /// 1..=254, or 255 when configured as the owner.
    PriorityChanged(u8),
    /// keepalived Fault: a weight-0 tracked object failed.
    Fault,
    /// The fault cleared.
    FaultCleared,
    /// Sync group: a sibling instance is in Fault (true) or none is any
    /// more (false). A second fault source, kept apart from
    /// [`Event::Fault`] so that the instance's own fault and its group's
    /// clear independently (keepalived `vrrp_sync_fault`).
    SyncFault(bool),
    /// Sync group: some sibling is not ready to be Master (true), or every
    /// sibling is (false). While held the machine is never Master: a
    /// Master leaves with a priority-0 advert (keepalived
    /// `vrrp_sync_backup`), and a Backup whose Master_Down_Timer fires
    /// waits, wanting Master, until released (keepalived
    /// `vrrp_sync_goto_master`: "Only sync to master if everyone wants to
    /// i.e. prefer backup state to avoid thrashing").
    SyncHold(bool),
}

/// Why a transition happened, for the log and notify scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Startup as the address owner (priority 255): Master at once.
    StartupAsOwner,
    /// Startup as a non-owner: Backup, waiting Master_Down_Interval.
    Startup,
    /// No advertisement for Master_Down_Interval.
    MasterDown,
    /// The Master sent priority 0 (it stopped), and Skew_Time passed.
    MasterResigned,
    /// We preempted a lower-priority Master (its adverts were discarded
    /// until Master_Down_Interval passed).
    Preempting {
        /// The lower priority we heard last.
        priority: u8,
        /// Its sender.
        source: IpAddr,
    },
    /// As Master we heard a higher priority.
    HigherPriority {
        /// The priority heard.
        priority: u8,
        /// Its sender.
        source: IpAddr,
    },
    /// As Master we heard our own priority from a higher address.
    TieBreakLost {
        /// The sender with the higher primary address.
        source: IpAddr,
    },
    /// A Shutdown event.
    Shutdown,
    /// A Fault event (keepalived).
    Fault,
    /// A FaultCleared event (keepalived).
    FaultCleared,
    /// The instance's sync group made it follow a sibling: to Fault
    /// ([`Event::SyncFault`]) or out of Master ([`Event::SyncHold`]).
    SyncGroup,
}

/// One state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transition {
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// Why.
    pub reason: Reason,
}

/// Something the shell must do, in the order returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send one ADVERTISEMENT with these fields (the shell adds VRID,
    /// addresses, auth; [`crate::Advertisement::encode`]).
    SendAdvert {
        /// Priority to advertise: the effective priority, or 0 when leaving.
        priority: u8,
        /// Advertisement_Interval to advertise.
        interval: Centiseconds,
    },
    /// Becoming Master: add the VIPs and announce them (gratuitous ARP for
    /// IPv4, unsolicited Neighbor Advertisements for IPv6, RFC 9568 6.4.2).
    AnnounceVips,
    /// Leaving Master: remove the VIPs.
    ReleaseVips,
    /// Tell the datapath whether this node takes traffic for the VIPs.
    SetForwarding(bool),
    /// A state change, for the log and notify scripts.
    Notify(Transition),
}

/// Why the Backup's Master_Down_Timer is armed: decides the [`Reason`]
/// when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DownCause {
    Silence,
    Resigned,
    Preempting { priority: u8, source: IpAddr },
}

/// The state machine of one virtual router (see the module docs).
#[derive(Debug, Clone)]
pub struct Machine {
    cfg: Config,
    state: State,
    /// Effective priority (configured, adjusted by tracking).
    priority: u8,
    /// Master_Adver_Interval (RFC 9568 6.1, "Active_Adver_Interval"):
    /// learned from the Master's adverts in Backup (VRRPv3 only).
    master_adver_interval: Centiseconds,
    /// Backup: the Master_Down_Timer. Master: the Adver_Timer.
    timer: Option<Instant>,
    down_cause: DownCause,
    /// When a pending preemption (held by `preempt_delay`) may happen.
    preempt_at: Option<Instant>,
    /// A fault is present (tracked even in Initialize).
    faulted: bool,
    /// The sync group's fault input ([`Event::SyncFault`]).
    sync_faulted: bool,
    /// The sync group's hold input ([`Event::SyncHold`]).
    held: bool,
    /// Held in Backup with the Master_Down_Timer fired (or as the owner at
    /// startup): the reason we would have become Master for.
    pending: Option<Reason>,
    /// The source of the last accepted advert from the current Master
    /// (outside Master); `None` before any, and again after this node was
    /// Master itself until it hears one.
    last_master: Option<IpAddr>,
}

impl Machine {
    /// A machine in Initialize. `_now` is accepted so that every
    /// constructor and handler takes the time the same way; the machine
    /// arms nothing until Startup.
    pub fn new(cfg: Config, _now: Instant) -> Result<Machine, ConfigError> {
        cfg.validate()?;
        Ok(Machine {
            priority: cfg.priority,
            master_adver_interval: cfg.advert_interval,
            cfg,
            state: State::Initialize,
            timer: None,
            down_cause: DownCause::Silence,
            preempt_at: None,
            faulted: false,
            sync_faulted: false,
            held: false,
            pending: None,
            last_master: None,
        })
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether this instance is, or would be, Master: in Master, or held in
    /// Backup by its sync group after its Master_Down_Timer fired. What
    /// [`crate::sync`] calls "ready".
    pub fn wants_master(&self) -> bool {
        self.state == State::Master || (self.state == State::Backup && self.pending.is_some())
    }

    /// The current Master's primary address as far as this node knows:
    /// its own primary address while Master, else the source of the last
    /// accepted advert from the Master (a Backup hears only Masters), or
    /// `None` before any (and after leaving Master until one is heard).
    pub fn master_address(&self) -> Option<IpAddr> {
        match self.state {
            State::Master => Some(self.cfg.primary_address),
            _ => self.last_master,
        }
    }

    /// The effective priority.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Master_Adver_Interval: our own interval until a VRRPv3 Backup learns
    /// the Master's.
    pub fn master_adver_interval(&self) -> Centiseconds {
        self.master_adver_interval
    }

    /// Skew_Time for the current priority and Master_Adver_Interval
    /// (RFC 9568 6.1 for V3, RFC 3768 6.1 for V2).
    pub fn skew_time(&self) -> Duration {
        match self.cfg.version {
            Version::V3 => skew_time_v3(self.priority, self.master_adver_interval),
            Version::V2 => skew_time_v2(self.priority),
        }
    }

    /// Master_Down_Interval for the current priority and
    /// Master_Adver_Interval (RFC 9568 6.1 for V3, RFC 3768 6.1 for V2).
    pub fn master_down_interval(&self) -> Duration {
        match self.cfg.version {
            Version::V3 => master_down_interval_v3(self.priority, self.master_adver_interval),
            Version::V2 => master_down_interval_v2(self.priority, self.cfg.advert_interval),
        }
    }

    /// When the shell must next call `handle(Event::Timer, now)`: the
    /// Master_Down_Timer in Backup, the Adver_Timer in Master, none
    /// otherwise.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timer
    }

    /// Feeds one event at time `now` (monotonic; never earlier than a
    /// previous call's). Returns the actions to perform, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Startup => {
                if self.state == State::Initialize {
                    if self.faulted || self.sync_faulted {
                        self.enter_fault(Reason::Fault, &mut out);
                    } else {
                        self.start(now, false, &mut out);
                    }
                }
            }
            Event::Shutdown => self.shutdown(&mut out),
            Event::Timer => self.timer(now, &mut out),
            Event::Advert(heard) => match self.state {
                State::Backup => self.backup_advert(heard, now),
                State::Master => self.master_advert(heard, now, &mut out),
                // Initialize and Fault take no part in the election.
                State::Initialize | State::Fault => {}
            },
            Event::PriorityChanged(p) => {
                // The new priority shows in the next advert (Master) and the
                // next Master_Down_Interval (Backup). Neither timer moves.
                self.priority = if self.cfg.priority == PRIORITY_OWNER && p == PRIORITY_OWNER {
                    PRIORITY_OWNER
                } else {
                    p.clamp(1, 254)
                };
            }
            Event::Fault | Event::FaultCleared | Event::SyncFault(_) => {
                let was = self.faulted || self.sync_faulted;
                let reason = match event {
                    Event::Fault => {
                        self.faulted = true;
                        Reason::Fault
                    }
                    Event::FaultCleared => {
                        self.faulted = false;
                        Reason::FaultCleared
                    }
                    Event::SyncFault(on) => {
                        self.sync_faulted = on;
                        Reason::SyncGroup
                    }
                    _ => unreachable!("matched above"),
                };
                let is = self.faulted || self.sync_faulted;
                if !was && is && matches!(self.state, State::Backup | State::Master) {
                    self.enter_fault(reason, &mut out);
                } else if was && !is && self.state == State::Fault {
                    self.start(now, true, &mut out);
                }
            }
            Event::SyncHold(on) => {
                if self.held != on {
                    self.held = on;
                    match self.state {
                        State::Master if on => self.sync_leave_master(now, &mut out),
                        State::Backup if !on => {
                            if let Some(reason) = self.pending.take() {
                                self.become_master(now, reason, &mut out);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        out
    }

    /// RFC 9568 6.4.1 "When a Startup event is received": also the way out
    /// of Fault.
    fn start(&mut self, now: Instant, after_fault: bool, out: &mut Vec<Action>) {
        if self.priority == PRIORITY_OWNER {
            let reason = if after_fault {
                Reason::FaultCleared
            } else {
                Reason::StartupAsOwner
            };
            if self.held {
                // The owner waits for its sync group like any member whose
                // timer fired.
                self.timer = None;
                self.pending = Some(reason);
                self.transition(State::Backup, reason, out);
            } else {
                self.become_master(now, reason, out);
            }
        } else {
            // "Set Active_Adver_Interval to Advertisement_Interval; Set the
            // Active_Down_Timer to Active_Down_Interval; Transition to the
            // {Backup} state"
            self.master_adver_interval = self.cfg.advert_interval;
            self.down_cause = DownCause::Silence;
            self.preempt_at = None;
            self.timer = Some(now + self.master_down_interval());
            let reason = if after_fault {
                Reason::FaultCleared
            } else {
                Reason::Startup
            };
            self.transition(State::Backup, reason, out);
        }
    }

    fn shutdown(&mut self, out: &mut Vec<Action>) {
        match self.state {
            State::Initialize => {}
            State::Master => {
                // RFC 9568 6.4.3: "Cancel the Adver_Timer; Send an
                // ADVERTISEMENT with Priority = 0; Transition to the
                // {Initialize} state"
                self.timer = None;
                out.push(self.advert(PRIORITY_STOP));
                out.push(Action::ReleaseVips);
                out.push(Action::SetForwarding(false));
                self.transition(State::Initialize, Reason::Shutdown, out);
            }
            State::Backup | State::Fault => {
                // RFC 9568 6.4.2: "Cancel the Active_Down_Timer; Transition
                // to the {Initialize} state"
                self.timer = None;
                self.preempt_at = None;
                self.pending = None;
                self.transition(State::Initialize, Reason::Shutdown, out);
            }
        }
    }

    fn timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(at) = self.timer else { return };
        if now < at {
            return;
        }
        match self.state {
            State::Backup => {
                // RFC 9568 6.4.2 "If the Active_Down_Timer fires".
                let reason = match self.down_cause {
                    DownCause::Silence => Reason::MasterDown,
                    DownCause::Resigned => Reason::MasterResigned,
                    DownCause::Preempting { priority, source } => {
                        Reason::Preempting { priority, source }
                    }
                };
                if self.held {
                    // Sync group: wait for the siblings, wanting Master.
                    // No timer: an accepted advert or the release decides.
                    self.timer = None;
                    self.pending = Some(reason);
                } else {
                    self.become_master(now, reason, out);
                }
            }
            State::Master => {
                // RFC 9568 6.4.3 "If the Adver_Timer fires, then: Send an
                // ADVERTISEMENT; Reset the Adver_Timer to
                // Advertisement_Interval". Counted from the deadline, not
                // from `now`, so a late wake-up does not drift the schedule;
                // after a stall of more than one interval, restart from now
                // rather than send a burst.
                out.push(self.advert(self.priority));
                let interval = self.cfg.advert_interval.as_duration();
                let mut next = at + interval;
                if next <= now {
                    next = now + interval;
                }
                self.timer = Some(next);
            }
            State::Initialize | State::Fault => self.timer = None,
        }
    }

    /// RFC 9568 6.4.2 / RFC 3768 6.4.2 "If an ADVERTISEMENT is received".
    /// Accepting or discarding an advert is silent: no actions.
    fn backup_advert(&mut self, heard: Heard, now: Instant) {
        // Only a Master advertises: whatever we do with it (even a
        // priority-0 resignation, or a lower priority we will preempt),
        // its sender is the Master now.
        self.last_master = Some(heard.source);
        if heard.priority == PRIORITY_STOP {
            // "If the Priority in the ADVERTISEMENT is 0, then: Set the
            // Active_Down_Timer to Skew_Time". Held and already wanting
            // Master: nothing to wait for.
            if self.pending.is_none() {
                self.timer = Some(now + self.skew_time());
                self.down_cause = DownCause::Resigned;
            }
            return;
        }
        let lower = heard.priority < self.priority;
        let preempt_now = self.cfg.preempt && lower && !self.preempt_delay_holds(now);
        if !preempt_now {
            // "If Preempt_Mode is False, or if the Priority in the
            // ADVERTISEMENT is greater than or equal to the local Priority,
            // then: Set the Active_Adver_Interval to the Max Advertise
            // Interval contained in the ADVERTISEMENT; Recompute the
            // Skew_Time; Recompute the Active_Down_Interval; Set the
            // Active_Down_Timer to Active_Down_Interval". VRRPv2 has no
            // learning (RFC 3768 6.4.2 only resets the timer; its receive
            // checks discard a differing interval).
            if self.cfg.version == Version::V3 {
                self.master_adver_interval = heard.interval;
            }
            self.timer = Some(now + self.master_down_interval());
            self.down_cause = DownCause::Silence;
            // A Master is alive: a held instance no longer wants Master.
            self.pending = None;
            // keepalived's preempt_delay: a lower-priority Master starts the
            // delay; hearing an equal or higher priority cancels it.
            if !lower {
                self.preempt_at = None;
            } else if self.cfg.preempt && self.preempt_at.is_none() {
                self.preempt_at = Some(now + self.cfg.preempt_delay);
            }
        } else {
            // "else // preempt was true and priority was less than the local
            // priority: Discard the ADVERTISEMENT". The timer keeps running;
            // when it fires we preempt.
            self.down_cause = DownCause::Preempting {
                priority: heard.priority,
                source: heard.source,
            };
        }
    }

    /// Whether `preempt_delay` still holds back a preemption at `now`: the
    /// delay is configured and has not started (the first lower-priority
    /// advert starts it) or not yet passed.
    fn preempt_delay_holds(&self, now: Instant) -> bool {
        !self.cfg.preempt_delay.is_zero() && self.preempt_at.is_none_or(|at| now < at)
    }

    /// RFC 9568 6.4.3 / RFC 3768 6.4.3 "If an ADVERTISEMENT is received".
    fn master_advert(&mut self, heard: Heard, now: Instant, out: &mut Vec<Action>) {
        if heard.priority == PRIORITY_STOP {
            // "If the Priority in the ADVERTISEMENT is 0, then: Send an
            // ADVERTISEMENT; Reset the Adver_Timer to Advertisement_Interval"
            out.push(self.advert(self.priority));
            self.timer = Some(now + self.cfg.advert_interval.as_duration());
            return;
        }
        let higher = heard.priority > self.priority;
        let tie_lost = heard.priority == self.priority
            && addr_greater(&heard.source, &self.cfg.primary_address);
        if higher || tie_lost {
            // "Cancel Adver_Timer; Set the Active_Adver_Interval to the Max
            // Advertise Interval contained in the ADVERTISEMENT; Recompute
            // the Skew_Time; Recompute the Active_Down_Interval; Set the
            // Active_Down_Timer to Active_Down_Interval; Transition to the
            // {Backup} state"
            if self.cfg.version == Version::V3 {
                self.master_adver_interval = heard.interval;
            }
            self.timer = Some(now + self.master_down_interval());
            self.down_cause = DownCause::Silence;
            self.preempt_at = None;
            out.push(Action::ReleaseVips);
            out.push(Action::SetForwarding(false));
            self.last_master = Some(heard.source);
            let reason = if higher {
                Reason::HigherPriority {
                    priority: heard.priority,
                    source: heard.source,
                }
            } else {
                Reason::TieBreakLost {
                    source: heard.source,
                }
            };
            self.transition(State::Backup, reason, out);
        } else if self.cfg.version == Version::V3 {
            // RFC 9568 6.4.3: "else // new Active Router logic: Discard the
            // ADVERTISEMENT; Send an ADVERTISEMENT immediately to assert the
            // {Active} state to the sending VRRP Router and to update any
            // learning bridges with the correct Active VRRP Router path."
            // The Adver_Timer is not reset: the RFC does not say so, and the
            // regular schedule must not depend on what others send.
            out.push(self.advert(self.priority));
        }
        // VRRPv2 (RFC 3768 6.4.3): "else: Discard ADVERTISEMENT".
    }

    /// Backup -> Master, RFC 9568 6.4.2 "If the Active_Down_Timer fires"
    /// and 6.4.1 for the owner: "Send an ADVERTISEMENT; ... gratuitous ARP
    /// / unsolicited ND Neighbor Advertisement ...; Set the Adver_Timer to
    /// Advertisement_Interval; Transition to the {Active} state".
    fn become_master(&mut self, now: Instant, reason: Reason, out: &mut Vec<Action>) {
        out.push(self.advert(self.priority));
        out.push(Action::AnnounceVips);
        out.push(Action::SetForwarding(true));
        self.timer = Some(now + self.cfg.advert_interval.as_duration());
        self.preempt_at = None;
        self.pending = None;
        // Whoever was Master before is not any more.
        self.last_master = None;
        self.transition(State::Master, reason, out);
    }

    /// Master -> Backup because the sync group holds us (a sibling left
    /// Master or is not ready). Leaves as on Shutdown, with a priority-0
    /// advert, so the peer's instance takes over after its Skew_Time rather
    /// than Master_Down_Interval (RFC 9568 6.4.2), and then waits as a
    /// Backup with a fresh Master_Down_Timer.
    fn sync_leave_master(&mut self, now: Instant, out: &mut Vec<Action>) {
        out.push(self.advert(PRIORITY_STOP));
        out.push(Action::ReleaseVips);
        out.push(Action::SetForwarding(false));
        self.master_adver_interval = self.cfg.advert_interval;
        self.timer = Some(now + self.master_down_interval());
        self.down_cause = DownCause::Silence;
        self.preempt_at = None;
        self.pending = None;
        self.transition(State::Backup, Reason::SyncGroup, out);
    }

    /// To keepalived's Fault: a Master leaves as on Shutdown (priority 0
    /// advert so a Backup takes over after Skew_Time, VIPs released).
    fn enter_fault(&mut self, reason: Reason, out: &mut Vec<Action>) {
        if self.state == State::Master {
            out.push(self.advert(PRIORITY_STOP));
            out.push(Action::ReleaseVips);
            out.push(Action::SetForwarding(false));
        }
        self.timer = None;
        self.preempt_at = None;
        self.pending = None;
        self.transition(State::Fault, reason, out);
    }

    fn transition(&mut self, to: State, reason: Reason, out: &mut Vec<Action>) {
        let from = self.state;
        self.state = to;
        out.push(Action::Notify(Transition { from, to, reason }));
    }

    fn advert(&self, priority: u8) -> Action {
        Action::SendAdvert {
            priority,
            interval: self.cfg.advert_interval,
        }
    }
}

/// RFC 9568 6.4.3: "based on an unsigned integer comparison of the IPvX
/// addresses in network byte order". `Ipv4Addr`/`Ipv6Addr` order is exactly
/// that; mixed families cannot happen (the checks discard them).
fn addr_greater(a: &IpAddr, b: &IpAddr) -> bool {
    a > b
}
