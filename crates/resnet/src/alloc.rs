//! A global allocator that starts every large block on a cache line.
//!
//! The kernels read and write 64-byte vectors (16 f32 lanes, or 32 bf16)
//! from weights, activations and scratch buffers, all plain `Vec`s. The
//! system allocator aligns blocks to 16 bytes, so in three buffers out of
//! four every such vector straddles two cache lines: each access touches two
//! lines, and a store split across lines costs more than two stores. With
//! [`CacheAligned`] as the global allocator, blocks of at least
//! [`CacheAligned::MIN_SIZE`] bytes start on a 64-byte boundary, and a
//! vector at a multiple of 64 bytes into them lies in one line.
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: resnet::alloc::CacheAligned = resnet::alloc::CacheAligned;
//! ```
use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator, with blocks of [`CacheAligned::MIN_SIZE`] bytes or
/// more aligned to [`CacheAligned::ALIGN`] bytes (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheAligned;

impl CacheAligned {
    /// The alignment of large blocks: one cache line.
    pub const ALIGN: usize = 64;
    /// Blocks from this size up are aligned to [`Self::ALIGN`].
    pub const MIN_SIZE: usize = 1024;

    /// The layout a request is served with: its own, or the same size on a
    /// cache line. A function of the request alone, so that `dealloc` and
    /// `realloc` (which get the request's layout back) agree with `alloc`.
    fn served(layout: Layout) -> Layout {
        if layout.size() >= Self::MIN_SIZE && layout.align() < Self::ALIGN {
            // ALIGN is a power of two and size >= MIN_SIZE is far below isize::MAX - ALIGN
            // for any size the system could have served with the smaller alignment.
            Layout::from_size_align(layout.size(), Self::ALIGN).unwrap_or(layout)
        } else {
            layout
        }
    }
}

// SAFETY: every block comes from `System` with the layout `served` gives for
// the caller's layout, and goes back to it with the same one: `served` depends
// only on the layout, which the caller must pass back unchanged.
unsafe impl GlobalAlloc for CacheAligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout has a non-zero size; so has the served one.
        unsafe { System.alloc(Self::served(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(Self::served(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was served with `served(layout)` (the caller's contract).
        unsafe { System.dealloc(ptr, Self::served(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (old, new) =
            (Self::served(layout), Self::served(Layout::from_size_align(new_size, layout.align()).unwrap_or(layout)));
        if old.align() == new.align() {
            // SAFETY: `ptr` was served with `old`; `System` keeps its alignment.
            return unsafe { System.realloc(ptr, old, new_size) };
        }
        // Crossing MIN_SIZE changes the alignment: move the block.
        // SAFETY: `new` has a non-zero size; both blocks hold min(old, new) bytes;
        // `ptr` was served with `old`.
        unsafe {
            let p = System.alloc(new);
            if !p.is_null() {
                std::ptr::copy_nonoverlapping(ptr, p, old.size().min(new_size));
                System.dealloc(ptr, old);
            }
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large blocks start on a cache line, through growth and shrinking
    /// across the size threshold, and keep their contents.
    #[test]
    fn large_blocks_are_cache_aligned_and_keep_their_contents() {
        let a = CacheAligned;
        for size in [8usize, 100, 1023, 1024, 5000, 1 << 20] {
            let layout = Layout::from_size_align(size, 4).unwrap();
            // SAFETY: non-zero sizes; every block goes back with its layout.
            unsafe {
                let mut p = a.alloc(layout);
                assert!(!p.is_null());
                if size >= CacheAligned::MIN_SIZE {
                    assert_eq!(p as usize % CacheAligned::ALIGN, 0, "{size} bytes");
                }
                for i in 0..size {
                    *p.add(i) = (i % 251) as u8;
                }
                for new_size in [16usize, 2000, 3 << 20] {
                    let q = a.realloc(p, layout, new_size);
                    assert!(!q.is_null());
                    if new_size >= CacheAligned::MIN_SIZE {
                        assert_eq!(q as usize % CacheAligned::ALIGN, 0, "{size} -> {new_size} bytes");
                    }
                    for i in 0..size.min(new_size) {
                        assert_eq!(*q.add(i), (i % 251) as u8, "{size} -> {new_size} bytes, byte {i}");
                    }
                    // Back to the original size (refilled) for the next round.
                    p = a.realloc(q, Layout::from_size_align(new_size, 4).unwrap(), size);
                    assert!(!p.is_null());
                    for i in size.min(new_size)..size {
                        *p.add(i) = (i % 251) as u8;
                    }
                }
                a.dealloc(p, layout);
            }
        }
    }
}
