//! Sync groups: instances that fail over together (keepalived's
//! `vrrp_sync_group`, keepalived.conf(5); keepalived/vrrp/vrrp_sync.c).
//! Typical use: an outside IPv4 VIP and an inside IPv6 (or second
//! interface) VIP that must sit on the same node, or traffic would enter on
//! one node and leave through the other.
//!
//! Pure: [`SyncGroup`] takes each member's [`MemberStatus`] (from its
//! [`crate::Machine`] and the shell's own fault input) and says which
//! [`SyncInputs`] every member must now have; the shell feeds them to the
//! machines as [`crate::Event::SyncFault`] and [`crate::Event::SyncHold`].
//! The machines stay unaware of each other.
//!
//! The rules, each keepalived's:
//!
//! - **Fault** (`vrrp_sync_fault`): while any member is in Fault for its
//!   own reasons, every other member is in Fault too; the group leaves
//!   Fault when no member has a fault of its own.
//! - **Backup** (`vrrp_sync_backup`): when a member stops being Master, or
//!   is otherwise not ready (below), every other member may not be Master:
//!   a Master leaves with a priority-0 advert, so the peer node's instance
//!   takes over after Skew_Time.
//! - **Master** (`vrrp_sync_goto_master`, "Only sync to master if everyone
//!   wants to i.e. prefer backup state to avoid thrashing"): a member
//!   becomes Master only when every member is *ready*: Master already, or
//!   Backup with its Master_Down_Timer fired (no live Master heard, or one
//!   it preempts). The last member to become ready releases the others.
//!
//! Consequence worth knowing (keepalived's too, which is why it ignores
//! tracking weights in sync groups unless `sync_group_tracking_weight` is
//! set): a member whose peer instance has a higher priority keeps the
//! whole group Backup, and a member that would preempt is held while a
//! sibling still hears a live higher-priority Master. Give the members of
//! a group a consistent priority order across nodes, and move a group with
//! faults (weight-0 tracking) rather than with weights on one member.

use crate::machine::State;

/// What the group needs to know about one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemberStatus {
    /// The member's state.
    pub state: State,
    /// [`crate::Machine::wants_master`].
    pub wants_master: bool,
    /// The member has a fault of its own (its [`crate::Event::Fault`]
    /// input), as opposed to one its group gave it.
    pub own_fault: bool,
}

impl MemberStatus {
    /// A member that has not started (or has stopped): not ready.
    pub const STOPPED: MemberStatus = MemberStatus {
        state: State::Initialize,
        wants_master: false,
        own_fault: false,
    };

    /// Ready to be Master with the group.
    fn ready(&self) -> bool {
        !self.own_fault && (self.state == State::Master || (self.state == State::Backup && self.wants_master))
    }
}

/// The group's inputs to one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SyncInputs {
    /// [`crate::Event::SyncHold`]: some other member is not ready.
    pub hold: bool,
    /// [`crate::Event::SyncFault`]: some other member has its own fault.
    pub fault: bool,
}

/// One sync group's members (indices `0..len`), all [`MemberStatus::STOPPED`]
/// at first.
#[derive(Debug, Clone)]
pub struct SyncGroup {
    members: Vec<MemberStatus>,
}

impl SyncGroup {
    /// A group of `members` instances.
    pub fn new(members: usize) -> SyncGroup {
        SyncGroup {
            members: vec![MemberStatus::STOPPED; members],
        }
    }

    /// How many members the group has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the group has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// What member `i` must have now (a function of the *other* members
    /// only, so a member never holds itself).
    pub fn inputs(&self, i: usize) -> SyncInputs {
        let others = self.members.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, m)| m);
        let mut inputs = SyncInputs::default();
        for m in others {
            inputs.hold |= !m.ready();
            inputs.fault |= m.own_fault;
        }
        inputs
    }

    /// Records member `i`'s new status. Returns every *other* member whose
    /// inputs changed, with the new inputs, in index order. Out-of-range
    /// `i` changes nothing.
    pub fn update(&mut self, i: usize, status: MemberStatus) -> Vec<(usize, SyncInputs)> {
        if i >= self.members.len() || self.members[i] == status {
            return Vec::new();
        }
        let before: Vec<SyncInputs> = (0..self.members.len()).map(|j| self.inputs(j)).collect();
        self.members[i] = status;
        (0..self.members.len())
            .filter(|&j| j != i)
            .filter_map(|j| {
                let now = self.inputs(j);
                (now != before[j]).then_some((j, now))
            })
            .collect()
    }
}
