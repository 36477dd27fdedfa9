//! Advertisement intervals and the timer arithmetic of RFC 9568 section 6.1
//! and RFC 3768 section 6.1.

use std::fmt;
use std::time::Duration;

/// A duration in centiseconds (1/100 s), the unit of VRRPv3's
/// Max Advertise Interval (RFC 9568 section 5.2.7).
///
/// VRRPv2 intervals (whole seconds, RFC 3768 section 5.3.7) are held in
/// this type too, as multiples of 100, so the state machine has one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Centiseconds(pub u16);

impl Centiseconds {
    /// The largest VRRPv3 Max Advertise Interval: the field has 12 bits
    /// (RFC 9568 section 5.2.7), 4095 cs = 40.95 s.
    pub const MAX_V3: Centiseconds = Centiseconds(0x0fff);
    /// The largest VRRPv2 Adver Int: 255 s (an 8-bit field of seconds,
    /// RFC 3768 section 5.3.7).
    pub const MAX_V2: Centiseconds = Centiseconds(25_500);

    /// `secs` whole seconds. Saturates at `u16::MAX` centiseconds.
    pub const fn from_secs(secs: u16) -> Centiseconds {
        Centiseconds(secs.saturating_mul(100))
    }

    /// The same span as a [`Duration`].
    pub const fn as_duration(self) -> Duration {
        Duration::from_millis(self.0 as u64 * 10)
    }
}

impl fmt::Display for Centiseconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}s", self.0 / 100, self.0 % 100)
    }
}

/// VRRPv3 Skew_Time (RFC 9568 section 6.1): "Time to skew
/// Active_Down_Interval in centiseconds. Calculated as:
/// (((256 - priority) * Active_Adver_Interval) / 256)".
///
/// Integer arithmetic in centiseconds, as the RFC's unit implies (the
/// remainder is truncated). `priority` is the local (effective) priority.
pub fn skew_time_v3(priority: u8, master_adver_interval: Centiseconds) -> Duration {
    let cs = ((256 - u32::from(priority)) * u32::from(master_adver_interval.0)) / 256;
    Duration::from_millis(u64::from(cs) * 10)
}

/// VRRPv3 Master_Down_Interval (RFC 9568 section 6.1, "Active_Down_Interval"):
/// "Time interval for Backup Router to declare Active Router down
/// (centiseconds). Calculated as: (3 * Active_Adver_Interval) + Skew_Time".
pub fn master_down_interval_v3(priority: u8, master_adver_interval: Centiseconds) -> Duration {
    master_adver_interval.as_duration() * 3 + skew_time_v3(priority, master_adver_interval)
}

/// VRRPv2 Skew_Time (RFC 3768 section 6.1): "Time to skew
/// Master_Down_Interval in seconds. Calculated as: ( (256 - Priority) / 256 )".
///
/// Exact: 1/256 s is 3 906 250 ns.
pub fn skew_time_v2(priority: u8) -> Duration {
    Duration::from_nanos((256 - u64::from(priority)) * 3_906_250)
}

/// VRRPv2 Master_Down_Interval (RFC 3768 section 6.1): "Time interval for
/// Backup to declare Master down (seconds). Calculated as:
/// (3 * Advertisement_Interval) + Skew_time".
pub fn master_down_interval_v2(priority: u8, advertisement_interval: Centiseconds) -> Duration {
    advertisement_interval.as_duration() * 3 + skew_time_v2(priority)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9568 section 6.1: Skew_Time = (((256 - priority) *
    /// Active_Adver_Interval) / 256) and Active_Down_Interval =
    /// (3 * Active_Adver_Interval) + Skew_Time, in centiseconds.
    #[test]
    fn v3_formulas() {
        // (256-100)*100/256 = 60.9 -> 60 cs.
        assert_eq!(
            skew_time_v3(100, Centiseconds(100)),
            Duration::from_millis(600)
        );
        assert_eq!(
            master_down_interval_v3(100, Centiseconds(100)),
            Duration::from_millis(3600)
        );
        // (256-254)*100/256 = 0.78 -> 0 cs.
        assert_eq!(skew_time_v3(254, Centiseconds(100)), Duration::ZERO);
        // (256-1)*4095/256 = 4079.0 -> 4079 cs.
        assert_eq!(
            skew_time_v3(1, Centiseconds::MAX_V3),
            Duration::from_millis(40_790)
        );
    }

    /// RFC 3768 section 6.1: Skew_Time = ((256 - Priority) / 256) seconds.
    #[test]
    fn v2_formulas() {
        assert_eq!(skew_time_v2(128), Duration::from_millis(500));
        assert_eq!(
            master_down_interval_v2(128, Centiseconds(100)),
            Duration::from_millis(3500)
        );
        assert_eq!(skew_time_v2(255), Duration::from_nanos(3_906_250));
    }
}
