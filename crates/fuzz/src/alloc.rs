//! A global allocator that forwards to the system allocator and counts, per
//! thread, the bytes requested (allocations and the growth of
//! reallocations).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// Bytes this thread has requested since it started. `const`-initialised,
    /// so reading it never allocates (which the allocator must not do).
    static REQUESTED: Cell<u64> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // `try_with`: a thread being torn down has no locals left; its
    // allocations are not counted, which no test measures.
    let _ = REQUESTED.try_with(|r| r.set(r.get().saturating_add(bytes as u64)));
}

/// The system allocator, counting what each thread requests.
pub struct Counting;

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `Counting` upholds exactly `System`'s guarantees; the only
// addition is a thread-local counter update, which does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: forwarded as received; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` through this allocator
        // with `layout`, as the caller guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size.saturating_sub(layout.size()));
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s
        // contract for `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the bytes this thread requested
/// from the allocator meanwhile (meaningful only in a binary whose global
/// allocator is [`Counting`]).
pub fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = REQUESTED.with(Cell::get);
    let out = f();
    let after = REQUESTED.with(Cell::get);
    (out, after - before)
}
