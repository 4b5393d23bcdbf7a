//! The machine's own memory latency, measured in the same run as the decision: one dependent
//! read after another through a random cycle of cache lines (a pointer chase), for working sets
//! from what fits in L2 to far past the last-level cache, with 4 KiB pages and with transparent
//! huge pages asked for (`MADV_HUGEPAGE`).
//!
//! A decision at 10 000 partners × 1 000 000 accounts cannot cost less than one read from
//! wherever a random account's slot lives, plus the in-cache decision: this ladder is that
//! floor, measured rather than assumed.

use std::alloc::{alloc, dealloc, Layout};
use std::hint::black_box;
use std::time::Instant;

use crate::extra::selected;
use crate::workload::Rng;

const LINE: usize = 64;
const HUGE_PAGE: usize = 2 << 20;
const HOPS: usize = 2_000_000;

/// A working set of whole cache lines, each holding the index of the next line to read.
struct Lines {
    ptr: *mut u64,
    layout: Layout,
}

impl Lines {
    fn new(bytes: usize, huge: bool) -> Option<Lines> {
        let layout = Layout::from_size_align(bytes, HUGE_PAGE).ok()?;
        // SAFETY: the layout's size is not zero (the sizes below are all at least 256 KiB).
        let ptr = unsafe { alloc(layout) }.cast::<u64>();
        if ptr.is_null() {
            return None;
        }
        if huge {
            // SAFETY: the range is the allocation just made, 2 MiB aligned. The advice only
            // changes how the kernel backs the pages; failure leaves 4 KiB pages.
            unsafe { libc::madvise(ptr.cast(), bytes, libc::MADV_HUGEPAGE) };
        }
        // Zeroed only now, so the first touch of each page comes after the advice.
        // SAFETY: `ptr` is valid for `bytes` bytes of writes.
        unsafe { std::ptr::write_bytes(ptr.cast::<u8>(), 0, bytes) };
        Some(Lines { ptr, layout })
    }

    fn words(&mut self) -> &mut [u64] {
        // SAFETY: `ptr` is a live, zeroed allocation of `layout.size()` bytes, aligned for u64,
        // borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size() / 8) }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr.cast(), self.layout) }
    }
}

/// Nanoseconds per dependent read through a random cycle over `bytes` of lines.
fn chase(bytes: usize, huge: bool) -> Option<f64> {
    let mut lines = Lines::new(bytes, huge)?;
    let n = bytes / LINE;
    let step = LINE / 8;
    // Sattolo's shuffle: one cycle through every line, in random order.
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(0x1a7e + bytes as u64);
    for i in (1..n).rev() {
        order.swap(i, rng.below(i));
    }
    let words = lines.words();
    for i in 0..n {
        words[order[i] * step] = (order[(i + 1) % n] * step) as u64;
    }
    let mut at = 0usize;
    for _ in 0..n.min(HOPS) {
        at = words[at] as usize;
    }
    let started = Instant::now();
    for _ in 0..HOPS {
        at = words[at] as usize;
    }
    let took = started.elapsed();
    black_box(at);
    Some(took.as_nanos() as f64 / HOPS as f64)
}

/// Prints the latency ladder: `memory/latency`.
pub fn ladder() {
    if !selected("memory/latency") {
        return;
    }
    const KIB: usize = 1 << 10;
    const MIB: usize = 1 << 20;
    println!("memory/latency: ns per dependent read, random lines over the working set");
    println!("  working set     4 KiB pages   huge pages (MADV_HUGEPAGE)");
    for bytes in [
        256 * KIB,
        MIB,
        2 * MIB,
        4 * MIB,
        8 * MIB,
        16 * MIB,
        32 * MIB,
        64 * MIB,
        256 * MIB,
    ] {
        let small = chase(bytes, false);
        let huge = chase(bytes, true);
        let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |ns| format!("{ns:.1}"));
        let size = if bytes >= MIB {
            format!("{} MiB", bytes / MIB)
        } else {
            format!("{} KiB", bytes / KIB)
        };
        println!("  {size:>11} {:>13} {:>13}", show(small), show(huge));
    }
}
