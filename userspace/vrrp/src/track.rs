//! Tracking: how the node's own health moves an instance's priority, as
//! keepalived's `track_script` / `track_interface` with `weight` do
//! (keepalived.conf(5), "weight"). Pure: the shell's owner evaluates the
//! conditions and feeds the result to `Instance::set_priority` or
//! `Instance::set_fault`.

/// What the tracked conditions make of the configured priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// Run with this priority.
    Priority(u8),
    /// A condition with weight 0 fails: the instance goes to FAULT (a
    /// keepalived extension; RFC 9568 has no such state).
    Fault,
}

/// The priority `configured` becomes under `conditions`, each a weight
/// (-254..=254) and whether the condition holds now.
///
/// keepalived's rules: a positive weight is added while its condition
/// holds, a negative one while it fails; a failing weight-0 condition
/// means FAULT. The result stays within 1..=254, and an address owner
/// (255) keeps 255: its priority is not the node's to negotiate (RFC 9568
/// section 5.2.4).
pub fn effective_priority(configured: u8, conditions: impl IntoIterator<Item = (i32, bool)>) -> Tracked {
    let mut priority = i32::from(configured);
    for (weight, holds) in conditions {
        match (weight, holds) {
            (0, false) => return Tracked::Fault,
            (w, true) if w > 0 => priority += w,
            (w, false) if w < 0 => priority += w,
            _ => {}
        }
    }
    if configured == 255 {
        return Tracked::Priority(255);
    }
    Tracked::Priority(priority.clamp(1, 254) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_follow_keepalived() {
        assert_eq!(effective_priority(100, []), Tracked::Priority(100));
        // Negative weights count while failing, positive ones while holding.
        assert_eq!(effective_priority(100, [(-30, false), (-20, true)]), Tracked::Priority(70));
        assert_eq!(effective_priority(100, [(10, true), (50, false)]), Tracked::Priority(110));
        // Weight 0 failing is FAULT, whatever else holds.
        assert_eq!(effective_priority(100, [(50, true), (0, false)]), Tracked::Fault);
        assert_eq!(effective_priority(100, [(0, true)]), Tracked::Priority(100));
        // Clamped to 1..=254; the owner keeps 255.
        assert_eq!(effective_priority(20, [(-100, false)]), Tracked::Priority(1));
        assert_eq!(effective_priority(250, [(100, true)]), Tracked::Priority(254));
        assert_eq!(effective_priority(255, [(-100, false)]), Tracked::Priority(255));
    }
}
