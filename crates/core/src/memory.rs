//! Hiding memory latency on the request path: software prefetch of lines a decision is about
//! to read. With thousands of partners and a million accounts, a decision's partner state is
//! rarely in cache, and each line missed costs 100–300 ns; lines whose addresses are known early
//! are asked for together, so their misses overlap instead of following one another.

/// Asks the CPU to bring the line holding `value` into cache. A hint: it never faults, never
/// blocks and has no effect on what the program computes.
#[inline(always)]
pub fn prefetch<T: ?Sized>(value: &T) {
    prefetch_address(address_of(value));
}

/// [`prefetch`] for an address kept as a number: a structure's lines, noted in a compact
/// table so they can be asked for before the pointers leading to them are read. The address
/// may be stale or dangling: a prefetch never faults and never reads into the program.
#[inline(always)]
pub fn prefetch_address(address: usize) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `prefetcht0` is a hint that reads nothing into a register and cannot fault, for
    // any address, mapped or not; nothing is dereferenced. SSE is baseline on x86_64.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(address as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// The address of `value`, for [`prefetch_address`].
#[inline]
pub fn address_of<T: ?Sized>(value: &T) -> usize {
    (value as *const T).cast::<u8>() as usize
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefetch_changes_nothing() {
        let values = vec![1u64, 2, 3];
        super::prefetch(&values[1]);
        super::prefetch(values.as_slice());
        super::prefetch_address(super::address_of(&values[2]));
        super::prefetch_address(0);
        assert_eq!(values, [1, 2, 3]);
    }
}
