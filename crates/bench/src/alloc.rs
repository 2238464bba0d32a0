//! Counting allocator: allocations made on the SFU worker threads (`sfu-worker-*`), so
//! the harness reports allocations per forwarded packet (style.md, A5). Other threads
//! (clients, signaling, load) are counted apart.
//!
//! A thread learns its class once, from its name, on its first allocation; a
//! re-entrancy guard covers the allocation `thread::current()` may make for an unnamed
//! thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Counting;

static SFU: AtomicU64 = AtomicU64::new(0);
static OTHER: AtomicU64 = AtomicU64::new(0);

const UNKNOWN: u8 = 0;
const CLASSIFYING: u8 = 1;
const SFU_THREAD: u8 = 2;
const OTHER_THREAD: u8 = 3;

thread_local! {
    static CLASS: Cell<u8> = const { Cell::new(UNKNOWN) };
}

fn count() {
    let class = CLASS.try_with(|c| {
        if c.get() == UNKNOWN {
            c.set(CLASSIFYING);
            let sfu = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("sfu-worker"));
            c.set(if sfu { SFU_THREAD } else { OTHER_THREAD });
        }
        c.get()
    });
    match class {
        Ok(SFU_THREAD) => SFU.fetch_add(1, Ordering::Relaxed),
        _ => OTHER.fetch_add(1, Ordering::Relaxed),
    };
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches
// only atomics and a const-initialised thread-local without a destructor.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations so far on SFU worker threads.
pub fn sfu_allocations() -> u64 {
    SFU.load(Ordering::Relaxed)
}
