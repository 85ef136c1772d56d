//! Memory of the CPU backend: growable arrays that start on a cache line,
//! and the typed buffers ([`CpuBuf`]) built on them.
//!
//! The kernels read and write 64-byte vectors (16 f32 lanes, or 32 bf16) of
//! weights, activations and scratch rows. The system allocator aligns blocks
//! to 16 bytes, so in three buffers out of four every such vector would
//! straddle two cache lines: each access touches two lines, and a store split
//! across lines costs more than two stores. Every array the kernels stream
//! through is therefore an [`AlignedVec`], whose first element is on a 64-byte
//! boundary. (`aligned-vec` on crates.io has no `Default` and no `const`
//! constructor, which the kernels' derived and thread-local scratch need; the
//! few methods used here are written out instead.)

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::Bf16;
use crate::backend::{Buffer, DType, Element};
use crate::error::{Error, Result};

/// The alignment of every array: one cache line.
pub const ALIGN: usize = 64;

/// Bytes held by every [`AlignedVec`] of the process now, and the most held
/// since the last [`reset_peak`]: the CPU backend's memory (buffers, prepared
/// filters, kernel scratch), which the training memory plan estimates.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn count_alloc(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

fn count_free(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

/// `(live, peak)` bytes of the CPU backend's memory (see [`reset_peak`]).
pub fn allocated() -> (usize, usize) {
    (LIVE.load(Ordering::Relaxed), PEAK.load(Ordering::Relaxed))
}

/// Starts a new peak of [`allocated`] from what is live now.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Plain data: any bit pattern (all zeros included) is a valid value, and
/// nothing needs dropping.
///
/// # Safety
/// Implement only for types that are `Copy`, have no padding and accept any
/// bit pattern.
pub unsafe trait Pod: Copy + Default + Send + Sync + 'static {}
// SAFETY: primitive numbers (and `Bf16`, a `u16`): any bits are a value.
unsafe impl Pod for f32 {}
// SAFETY: as above.
unsafe impl Pod for u32 {}
// SAFETY: as above.
unsafe impl Pod for u8 {}
// SAFETY: as above.
unsafe impl Pod for i8 {}
// SAFETY: `Bf16` is a `repr(transparent)` `u16`.
unsafe impl Pod for Bf16 {}

/// A `Vec` of plain data whose first element starts on a cache line.
pub struct AlignedVec<T: Pod> {
    ptr: NonNull<T>,
    len: usize,
    cap: usize,
}

// SAFETY: an `AlignedVec` owns its elements like a `Vec` does.
unsafe impl<T: Pod> Send for AlignedVec<T> {}
// SAFETY: shared access only reads.
unsafe impl<T: Pod> Sync for AlignedVec<T> {}

/// Memory the system could not give (or a size no allocation can have).
#[derive(Clone, Copy, Debug)]
pub struct AllocError {
    /// Bytes asked for (`usize::MAX` when the size itself overflowed).
    pub bytes: usize,
}

impl From<AllocError> for Error {
    fn from(e: AllocError) -> Self {
        match e.bytes {
            usize::MAX => Error::Backend("a buffer larger than memory can address".into()),
            n => Error::Backend(format!("out of memory: cannot allocate {n} bytes")),
        }
    }
}

impl<T: Pod> AlignedVec<T> {
    /// An empty array (no allocation; its pointer is dangling but on a cache
    /// line, so any view of it is aligned).
    pub const fn new() -> Self {
        // SAFETY: ALIGN is not zero; the pointer is never dereferenced while cap is 0.
        let ptr = unsafe { NonNull::new_unchecked(std::ptr::without_provenance_mut(ALIGN)) };
        Self { ptr, len: 0, cap: 0 }
    }

    /// `len` zeros, from zeroed pages where the system has them.
    pub fn zeroed(len: usize) -> Self {
        Self::try_zeroed(len).unwrap_or_else(|e| oom(e, Self::layout(len).ok()))
    }

    /// [`AlignedVec::zeroed`], or an error where the memory is not there.
    pub fn try_zeroed(len: usize) -> std::result::Result<Self, AllocError> {
        let mut v = Self::new();
        if len > 0 {
            let layout = Self::layout(len).map_err(|_| AllocError { bytes: usize::MAX })?;
            // SAFETY: the layout has a non-zero size; zero bits are a valid `T` (`Pod`).
            let p = unsafe { std::alloc::alloc_zeroed(layout) };
            v.ptr = NonNull::new(p.cast()).ok_or(AllocError { bytes: layout.size() })?;
            count_alloc(layout.size());
            v.cap = len;
            v.len = len;
        }
        Ok(v)
    }

    /// A copy of `src`.
    pub fn from_slice(src: &[T]) -> Self {
        let mut v = Self::new();
        v.extend_from_slice(src);
        v
    }

    fn layout(cap: usize) -> std::result::Result<Layout, std::alloc::LayoutError> {
        Layout::array::<T>(cap).and_then(|l| l.align_to(ALIGN))
    }

    /// Makes room for at least `additional` more elements.
    pub fn reserve(&mut self, additional: usize) {
        self.try_reserve(additional).unwrap_or_else(|e| oom(e, None));
    }

    /// [`AlignedVec::reserve`], or an error where the memory is not there.
    pub fn try_reserve(&mut self, additional: usize) -> std::result::Result<(), AllocError> {
        let too_big = AllocError { bytes: usize::MAX };
        let need = self.len.checked_add(additional).ok_or(too_big)?;
        if need <= self.cap {
            return Ok(());
        }
        // Twice the capacity, as `Vec` grows, or what is needed where that is too much.
        let cap = need.max(self.cap.saturating_mul(2));
        let (cap, new) = match Self::layout(cap) {
            Ok(l) => (cap, l),
            Err(_) => (need, Self::layout(need).map_err(|_| too_big)?),
        };
        let p = if self.cap == 0 {
            // SAFETY: the layout has a non-zero size (need > cap >= 0 elements of a sized `T`).
            unsafe { std::alloc::alloc(new) }
        } else {
            let old = Self::layout(self.cap).map_err(|_| too_big)?;
            // SAFETY: `ptr` was allocated with `old`; the new size is non-zero and, with the
            // same alignment, does not overflow isize (checked by `layout`).
            unsafe { std::alloc::realloc(self.ptr.as_ptr().cast(), old, new.size()) }
        };
        // On failure the old block is untouched and still ours.
        self.ptr = NonNull::new(p.cast()).ok_or(AllocError { bytes: new.size() })?;
        count_alloc(new.size());
        count_free(Self::layout(self.cap).map_or(0, |l| l.size()));
        self.cap = cap;
        Ok(())
    }

    /// Sets the length, filling new elements with `value`.
    pub fn resize(&mut self, len: usize, value: T) {
        self.try_resize(len, value).unwrap_or_else(|e| oom(e, None));
    }

    /// [`AlignedVec::resize`], or an error where the memory is not there.
    pub fn try_resize(&mut self, len: usize, value: T) -> std::result::Result<(), AllocError> {
        if len > self.len {
            self.try_reserve(len - self.len)?;
            // SAFETY: capacity >= len; the new elements are written before they are read.
            unsafe {
                let tail = std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(self.len), len - self.len);
                tail.fill(value);
            }
        }
        self.len = len;
        Ok(())
    }

    /// Shortens the array (keeps the capacity).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Removes every element (keeps the capacity).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends one element.
    pub fn push(&mut self, value: T) {
        self.reserve(1);
        // SAFETY: capacity > len after `reserve`.
        unsafe { self.ptr.as_ptr().add(self.len).write(value) };
        self.len += 1;
    }

    /// Appends a copy of `src`.
    pub fn extend_from_slice(&mut self, src: &[T]) {
        self.reserve(src.len());
        // SAFETY: capacity >= len + src.len(); `src` cannot overlap our spare capacity.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(self.len), src.len()) };
        self.len += src.len();
    }
}

/// Fails as `Vec` does where memory runs out (for the kernels' scratch; the
/// backend's buffers use the `try_` forms and return an error).
fn oom(e: AllocError, layout: Option<Layout>) -> ! {
    match layout.or_else(|| Layout::from_size_align(e.bytes, ALIGN).ok()) {
        Some(l) if e.bytes != usize::MAX => std::alloc::handle_alloc_error(l),
        _ => panic!("capacity overflow"),
    }
}

impl<T: Pod> Drop for AlignedVec<T> {
    fn drop(&mut self) {
        if self.cap > 0
            && let Ok(layout) = Self::layout(self.cap)
        {
            // SAFETY: allocated with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), layout) };
            count_free(layout.size());
        }
    }
}

impl<T: Pod> std::ops::Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the first `len` elements are initialised; `ptr` is dangling only when len is 0.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Pod> std::ops::DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Pod> Default for AlignedVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Pod> Clone for AlignedVec<T> {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl<T: Pod + std::fmt::Debug> std::fmt::Debug for AlignedVec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedVec(len {})", self.len)
    }
}

impl<T: Pod> FromIterator<T> for AlignedVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let iter = iter.into_iter();
        let mut v = Self::new();
        v.reserve(iter.size_hint().0);
        for x in iter {
            v.push(x);
        }
        v
    }
}

/// A buffer of the CPU backend: `len` elements of `dtype` in cache-aligned
/// bytes. Resizing reuses the allocation, also across element types (an
/// inference plan's slot holds f32 values in one layer and bf16 in the next).
#[derive(Clone, Debug, Default)]
pub struct CpuBuf {
    bytes: AlignedVec<u8>,
    dtype: DType,
    len: usize,
}

impl Buffer for CpuBuf {
    fn dtype(&self) -> DType {
        self.dtype
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Bytes of `len` elements of `dtype`.
fn bytes_of(dtype: DType, len: usize) -> Result<usize> {
    len.checked_mul(dtype.size()).ok_or_else(|| AllocError { bytes: usize::MAX }.into())
}

impl CpuBuf {
    /// `len` zeros of `dtype`.
    pub fn zeroed(dtype: DType, len: usize) -> Result<Self> {
        Ok(Self { bytes: AlignedVec::try_zeroed(bytes_of(dtype, len)?)?, dtype, len })
    }

    /// Gives the buffer `len` elements of `dtype`, keeping its bytes (new ones zero).
    pub fn resize(&mut self, dtype: DType, len: usize) -> Result<()> {
        self.bytes.try_resize(bytes_of(dtype, len)?, 0)?;
        (self.dtype, self.len) = (dtype, len);
        Ok(())
    }

    /// Overwrites the buffer with `src`, taking its type and length.
    pub fn write<T: Element>(&mut self, src: &[T]) -> Result<()> {
        self.resize(T::DTYPE, src.len())?;
        // SAFETY: `Element` types (f32, bf16, u32, u8) are plain numbers: their bytes can be read as `u8`.
        let bytes = unsafe { std::slice::from_raw_parts(src.as_ptr().cast::<u8>(), std::mem::size_of_val(src)) };
        self.bytes.copy_from_slice(bytes);
        Ok(())
    }

    fn check(&self, want: DType) -> Result<()> {
        if self.dtype == want {
            Ok(())
        } else {
            Err(Error::Backend(format!("a {:?} buffer where {want:?} was expected", self.dtype)))
        }
    }

    /// The values, which must be f32.
    pub fn f32(&self) -> Result<&[f32]> {
        self.check(DType::F32)?;
        Ok(self.view())
    }

    /// The values for writing, which must be f32.
    pub fn f32_mut(&mut self) -> Result<&mut [f32]> {
        self.check(DType::F32)?;
        Ok(self.view_mut())
    }

    /// The values, which must be bf16.
    pub fn bf16(&self) -> Result<&[Bf16]> {
        self.check(DType::Bf16)?;
        Ok(self.view())
    }

    /// The values for writing, which must be bf16.
    pub fn bf16_mut(&mut self) -> Result<&mut [Bf16]> {
        self.check(DType::Bf16)?;
        Ok(self.view_mut())
    }

    /// The values, which must be u8.
    pub fn u8(&self) -> Result<&[u8]> {
        self.check(DType::U8)?;
        Ok(self.view())
    }

    /// The values for writing, which must be u8.
    pub fn u8_mut(&mut self) -> Result<&mut [u8]> {
        self.check(DType::U8)?;
        Ok(self.view_mut())
    }

    /// The values, which must be u32.
    pub fn u32(&self) -> Result<&[u32]> {
        self.check(DType::U32)?;
        Ok(self.view())
    }

    /// The bytes as `len` values of `T` (the caller checked `dtype`).
    fn view<T: Pod>(&self) -> &[T] {
        debug_assert_eq!(std::mem::size_of::<T>(), self.dtype.size());
        // SAFETY: the bytes start on a cache line, allocated or not (aligned for any `T`
        // here), hold `len * size_of::<T>()` initialised bytes (`resize` keeps the two
        // in step), and any bits are a `T` (`Pod`).
        unsafe { std::slice::from_raw_parts(self.bytes.as_ptr().cast(), self.len) }
    }

    fn view_mut<T: Pod>(&mut self) -> &mut [T] {
        debug_assert_eq!(std::mem::size_of::<T>(), self.dtype.size());
        // SAFETY: as in `view`, and `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.bytes.as_mut_ptr().cast(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_start_on_cache_lines_and_keep_their_contents() {
        let mut v: AlignedVec<f32> = AlignedVec::new();
        for i in 0..10_000 {
            v.push(i as f32);
            assert_eq!(v.as_ptr() as usize % ALIGN, 0);
        }
        v.resize(20_000, -1.0);
        v.truncate(15_000);
        assert!(v.iter().take(10_000).enumerate().all(|(i, &x)| x == i as f32));
        assert!(v[10_000..].iter().all(|&x| x == -1.0));
        let z: AlignedVec<Bf16> = AlignedVec::zeroed(777);
        assert_eq!(z.as_ptr() as usize % ALIGN, 0);
        assert!(z.iter().all(|b| b.to_f32() == 0.0));
        let c: AlignedVec<f32> = (0..100).map(|i| i as f32).collect();
        assert_eq!(c.clone()[99], 99.0);
    }

    #[test]
    fn buffers_change_type_in_place_and_refuse_the_wrong_one() {
        let mut b = CpuBuf::zeroed(DType::F32, 1000).unwrap();
        b.f32_mut().unwrap()[999] = 5.0;
        let p = b.bytes.as_ptr();
        b.resize(DType::Bf16, 2000).unwrap();
        assert_eq!(b.bytes.as_ptr(), p, "same bytes, other type");
        assert_eq!((b.len(), b.dtype()), (2000, DType::Bf16));
        assert!(b.f32().is_err() && b.bf16().is_ok());
        // Empty buffers view as empty, aligned slices; impossible sizes are errors.
        assert_eq!(CpuBuf::default().f32().unwrap().as_ptr() as usize % ALIGN, 0);
        assert!(CpuBuf::zeroed(DType::Bf16, 0).unwrap().bf16().unwrap().is_empty());
        assert!(CpuBuf::zeroed(DType::F32, usize::MAX / 2).is_err());
        assert!(b.resize(DType::F32, 1 << 62).is_err());
        assert_eq!((b.len(), b.dtype()), (2000, DType::Bf16), "a failed resize leaves the buffer as it was");
    }
}
