//! The process's allocator. A forwarded request allocates about ten times (hyper's head
//! buffers, header maps, the answer); glibc's malloc spent about 5% of the gateway's
//! instructions on them. The binary installs [`Mimalloc`] as its global allocator, and so does
//! the bare hyper baseline of the end-to-end bench, so the two compare their work, not their
//! allocators.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc, asked the way its fast paths expect. Its aligned entry points (what the `mimalloc`
/// crate calls for every layout) take a fast path only for blocks up to 1 KiB; a larger block
/// whose size is not a power of two (a request's boxed future, hyper's buffers) goes through
/// over-allocation, about 300 instructions. Every mimalloc block is word-aligned, so a layout
/// that asks no more than that takes plain `mi_malloc`, as std's own `System` does with
/// `malloc`.
pub struct Mimalloc;

/// Layouts every mimalloc block satisfies.
#[inline]
fn plain(align: usize, size: usize) -> bool {
    align <= std::mem::size_of::<usize>() && align <= size
}

// SAFETY: every call is forwarded to mimalloc, which returns null on failure and blocks aligned
// to at least a word (so `plain` layouts are met without the aligned entry points), and whose
// `mi_free`/`mi_realloc` accept blocks from any of its allocation functions.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align(), layout.size()) {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align(), new_size) {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}
