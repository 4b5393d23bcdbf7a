//! Bit layouts of the breaker's atomics, so every transition is one compare-and-swap.
//!
//! Times are whole milliseconds on the breaker's clock: 40 bits hold 34 years of uptime.

use std::time::Duration;

use super::settings::{BreakerState, Transition};

const NANOS_PER_MS: u64 = 1_000_000;
const AT_BITS: u32 = 40;
const AT_MASK: u64 = (1 << AT_BITS) - 1;

/// Whole milliseconds in `nanos`, rounded down.
pub(super) fn floor_ms(nanos: u64) -> u64 {
    nanos / NANOS_PER_MS
}

/// Whole milliseconds in `nanos`, rounded up.
pub(super) fn ceil_ms(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS_PER_MS)
}

pub(super) fn ms_to_nanos(ms: u64) -> u64 {
    ms.saturating_mul(NANOS_PER_MS)
}

/// The state word: `at_ms:40 | generation:16 | level:6 | state:2`.
///
/// `generation` changes on every transition, so a probe from an earlier half-open spell cannot
/// act on a later one. `level` is how many times the open time has doubled. `at_ms` is when the
/// state began, except while open, when it is the moment the breaker turns half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Word {
    pub state: BreakerState,
    pub level: u8,
    pub generation: u16,
    pub at_ms: u64,
}

impl Word {
    pub fn pack(self) -> u64 {
        ((self.at_ms & AT_MASK) << 24)
            | (u64::from(self.generation) << 8)
            | (u64::from(self.level & 0x3f) << 2)
            | self.state.index() as u64
    }

    pub fn unpack(bits: u64) -> Self {
        Word {
            state: BreakerState::from_bits(bits),
            level: ((bits >> 2) & 0x3f) as u8,
            generation: ((bits >> 8) & 0xffff) as u16,
            at_ms: bits >> 24,
        }
    }

    /// The next state, one generation on.
    pub fn next(self, state: BreakerState, level: u8, at_ms: u64) -> Self {
        Word {
            state,
            level,
            generation: self.generation.wrapping_add(1),
            at_ms,
        }
    }
}

/// A half-open probe slot: `live:1 | generation:16 | started_ms:47`; zero when free.
pub(super) fn pack_slot(generation: u16, started_ms: u64) -> u64 {
    (1 << 63) | (u64::from(generation) << 47) | (started_ms & ((1 << 47) - 1))
}

/// The generation and start of a live slot; `None` when free.
pub(super) fn unpack_slot(bits: u64) -> Option<(u16, u64)> {
    if bits >> 63 == 0 {
        return None;
    }
    Some((((bits >> 47) & 0xffff) as u16, bits & ((1 << 47) - 1)))
}

/// Successes of one half-open spell: `generation:16 | count:48`.
pub(super) fn pack_count(generation: u16, count: u64) -> u64 {
    (u64::from(generation) << 48) | (count & ((1 << 48) - 1))
}

/// The count, if `bits` belongs to `generation`; zero otherwise.
pub(super) fn count_of(bits: u64, generation: u16) -> u64 {
    if (bits >> 48) as u16 == generation {
        bits & ((1 << 48) - 1)
    } else {
        0
    }
}

/// The last transition: `set:1 | from:2 | to:2 | at_ms:59`; zero before the first.
pub(super) fn pack_transition(from: BreakerState, to: BreakerState, at_ms: u64) -> u64 {
    (1 << 63)
        | ((from.index() as u64) << 61)
        | ((to.index() as u64) << 59)
        | (at_ms & ((1 << 59) - 1))
}

pub(super) fn unpack_transition(bits: u64) -> Option<Transition> {
    if bits >> 63 == 0 {
        return None;
    }
    Some(Transition {
        from: BreakerState::from_bits(bits >> 61),
        to: BreakerState::from_bits(bits >> 59),
        at: Duration::from_millis(bits & ((1 << 59) - 1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        let word = Word {
            state: BreakerState::HalfOpen,
            level: 5,
            generation: 65535,
            at_ms: AT_MASK,
        };
        assert_eq!(Word::unpack(word.pack()), word);
        assert_eq!(word.next(BreakerState::Open, 6, 7).generation, 0);
        assert_eq!(unpack_slot(pack_slot(9, 1234)), Some((9, 1234)));
        assert_eq!(unpack_slot(0), None);
        assert_eq!(count_of(pack_count(4, 2), 4), 2);
        assert_eq!(count_of(pack_count(4, 2), 5), 0);
        let t = pack_transition(BreakerState::Open, BreakerState::HalfOpen, 42);
        assert_eq!(
            unpack_transition(t),
            Some(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen,
                at: Duration::from_millis(42),
            })
        );
        assert_eq!(unpack_transition(0), None);
    }
}
