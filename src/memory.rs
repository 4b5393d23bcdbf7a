//! Hiding memory latency on the request path: software prefetch of lines a decision is about
//! to read. With thousands of partners and a million accounts, a decision's partner state is
//! rarely in cache, and each line missed costs 100–300 ns; lines whose addresses are known early
//! are asked for together, so their misses overlap instead of following one another.

/// Asks the CPU to bring the line holding `value` into cache. A hint: it never faults, never
/// blocks and has no effect on what the program computes.
#[inline(always)]
pub fn prefetch<T: ?Sized>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `prefetcht0` is a hint that reads nothing into a register and cannot fault, even
    // for an invalid address; here the address is a live reference. SSE is baseline on x86_64.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefetch_changes_nothing() {
        let values = vec![1u64, 2, 3];
        super::prefetch(&values[1]);
        super::prefetch(values.as_slice());
        assert_eq!(values, [1, 2, 3]);
    }
}
