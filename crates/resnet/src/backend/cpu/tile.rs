//! The micro-kernels' common ground: a tile of [`MR`] output pixels by [`NR`]
//! output channels, where its results go and how they are finished ([`Out`]:
//! bias, residual, ReLU, f32 or bf16 rows), and the lines fetched ahead. The
//! f32 kernels (`kernel.rs`) and the bf16 ones (`bf16.rs`) compute tiles; the
//! indirect convolution (`direct/`) and Winograd (`winograd/`) drive them.

use std::sync::OnceLock;

use super::gemm::Epilogue;
use super::mem::{AlignedVec, Pod};
use crate::backend::Bf16;

/// Output channels per panel (one AVX-512 vector).
pub const NR: usize = 16;
/// Output pixels per micro-kernel call (pointers kept in registers).
pub const MR: usize = 12;

/// A zero row as long as any channel run: the source of padding taps.
pub fn zeros<T: Pod>(len: usize) -> *const T {
    static Z: OnceLock<AlignedVec<f32>> = OnceLock::new();
    let z = Z.get_or_init(|| AlignedVec::zeroed(1 << 16));
    assert!(len <= z.len(), "channel run of {len} exceeds the zero row");
    // Every element type is at most four bytes and zero when all its bits are.
    z.as_ptr().cast()
}

/// Where a tile's results go and how they are finished.
pub struct Out<'a> {
    /// `MR` row pointers (null past the last row); bf16 values when `bf16_out`.
    pub(super) rows: [*mut f32; MR],
    /// Valid columns (<= NR).
    pub(super) nr: usize,
    /// Column offset of this panel within the rows.
    pub(super) col: usize,
    /// Residual rows, same layout as `rows`; bf16 values when `bf16_res`.
    pub(super) res: [*const f32; MR],
    pub(super) bf16_out: bool,
    pub(super) bf16_res: bool,
    /// Bytes from an output row and a residual row to the same rows of the
    /// next row group (0 where rows are not evenly spaced).
    pub(super) ahead: (usize, usize),
    /// The next row group's runs, one set per tap, whose lines the kernel
    /// fetches as it walks its own (null: none; see [`PREFETCH_INPUT_BYTES`]).
    pub(super) next: Next,
    pub(super) epi: &'a Epilogue<'a>,
}

/// The runs of the row group after a tile's (type-erased: only prefetched).
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(super) struct Next {
    pub(super) runs: *const [*const u8; MR],
    pub(super) taps: usize,
}

impl Next {
    pub(super) const NONE: Next = Next { runs: std::ptr::null(), taps: 0 };

    /// Whether there are runs to fetch.
    pub(super) fn is_some(self) -> bool {
        self.taps > 0
    }

    /// Fetches the line `off` bytes into each run of tap `t` (if any).
    ///
    /// # Safety
    /// `runs` is null or points at `taps` run sets; prefetching the addresses
    /// they hold never faults.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) unsafe fn fetch<const R: usize>(self, t: usize, off: usize) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        if t < self.taps {
            // SAFETY: t < taps run sets (the caller's contract); prefetches never fault.
            unsafe {
                let runs = &*self.runs.add(t);
                for r in runs.iter().take(R) {
                    _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(off).cast());
                }
            }
        }
    }
}

/// Inputs at least this large are read from memory (or the shared cache)
/// rather than a core's own: there the kernels fetch the next row group's
/// runs ahead. The pattern they read in (twelve runs side by side, a few
/// bytes of each at a time) is one the hardware prefetchers follow poorly
/// (ARCHITECTURE.md, "Prefetch"). Smaller inputs stay in cache, where the
/// prefetches cost issue slots for nothing.
pub(super) const PREFETCH_INPUT_BYTES: usize = 4 << 20;

impl<'a> Out<'a> {
    /// f32 rows without a residual.
    pub(super) fn plain(rows: [*mut f32; MR], nr: usize, col: usize, epi: &'a Epilogue<'a>) -> Self {
        Out {
            rows,
            nr,
            col,
            res: [std::ptr::null(); MR],
            bf16_out: false,
            bf16_res: false,
            ahead: (0, 0),
            next: Next::NONE,
            epi,
        }
    }

    /// A tile of `NR` columns from column 0 (for tests of the micro-kernels).
    #[cfg(test)]
    pub(super) fn for_test(rows: [*mut f32; MR], epi: &'a Epilogue<'a>) -> Self {
        Out::plain(rows, NR, 0, epi)
    }

    /// Rows up to the last with an output pointer.
    pub(super) fn live_rows(&self) -> usize {
        self.rows.iter().rposition(|r| !r.is_null()).map_or(0, |i| i + 1)
    }

    /// Address of this tile's first value in output row `i` (non-null).
    pub(super) fn row_start(&self, i: usize) -> *const i8 {
        let size = if self.bf16_out { 2 } else { 4 };
        self.rows[i].cast::<i8>().wrapping_add(self.col * size)
    }

    /// Address of this tile's first value in residual row `i` (non-null).
    pub(super) fn res_start(&self, i: usize) -> *const i8 {
        let size = if self.bf16_res { 2 } else { 4 };
        self.res[i].cast::<i8>().wrapping_add(self.col * size)
    }
}

/// Stores an accumulator tile through the epilogue (portable).
///
/// # Safety
/// Non-null `out` rows are valid for `col + nr` floats, written by this call alone.
pub(super) unsafe fn store_generic(acc: &[[f32; NR]; MR], out: &Out<'_>) {
    for (i, row) in acc.iter().enumerate() {
        if out.rows[i].is_null() {
            continue;
        }
        for (j, &v) in row.iter().enumerate().take(out.nr) {
            // SAFETY: the row has col + nr values (contract); bf16 rows are never accumulated into.
            unsafe {
                let mut x = if out.epi.accumulate { v + *out.rows[i].add(out.col + j) } else { v };
                if let Some(s) = out.epi.scale {
                    x *= s[out.col + j];
                }
                if let Some(bias) = out.epi.bias {
                    x += bias[out.col + j];
                }
                if !out.res[i].is_null() {
                    x += match out.bf16_res {
                        true => (*out.res[i].cast::<Bf16>().add(out.col + j)).to_f32(),
                        false => *out.res[i].add(out.col + j),
                    };
                }
                if out.epi.relu && x < 0.0 {
                    x = 0.0;
                }
                match out.bf16_out {
                    true => *out.rows[i].cast::<Bf16>().add(out.col + j) = Bf16::from_f32(x),
                    false => *out.rows[i].add(out.col + j) = x,
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{prefetch, store_avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MR, Out};
    use std::arch::x86_64::*;

    /// Starts fetching output and residual lines, so that the epilogue does
    /// not wait on memory: with short reductions (1x1 convolutions) and
    /// large outputs, those waits cost more than the sums. Where rows are
    /// evenly spaced (`ahead` bytes to the same row of the next row group),
    /// the lines fetched are the next group's, a whole sweep of panels
    /// ahead; otherwise this tile's own.
    ///
    /// # Safety
    /// None beyond computable addresses: prefetches never fault.
    #[inline(always)]
    pub(in super::super) unsafe fn prefetch(out: &Out<'_>) {
        let (row_ahead, res_ahead) = out.ahead;
        for i in 0..MR {
            // SAFETY: prefetching any address is sound.
            unsafe {
                if !out.rows[i].is_null() {
                    _mm_prefetch::<_MM_HINT_ET0>(out.row_start(i).wrapping_add(row_ahead));
                }
                if !out.res[i].is_null() {
                    _mm_prefetch::<_MM_HINT_T0>(out.res_start(i).wrapping_add(res_ahead));
                }
            }
        }
    }

    /// Stores an accumulator tile through the epilogue.
    ///
    /// # Safety
    /// avx512f; rows as in `kernel_avx512`.
    #[target_feature(enable = "avx512f")]
    pub(in super::super) unsafe fn store_avx512(acc: &[__m512; MR], out: &Out<'_>) {
        debug_assert!(!out.bf16_out && !out.bf16_res, "bf16 rows go through bf16::x86::store");
        let mask: __mmask16 = if out.nr >= 16 { 0xffff } else { (1u16 << out.nr) - 1 };
        let e = out.epi;
        for (i, &v) in acc.iter().enumerate() {
            if out.rows[i].is_null() {
                continue;
            }
            // SAFETY: rows are valid for col + nr floats; masks keep accesses inside.
            unsafe {
                let dst = out.rows[i].add(out.col);
                let mut x = v;
                if e.accumulate {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, dst));
                }
                if let Some(s) = e.scale {
                    x = _mm512_mul_ps(x, _mm512_maskz_loadu_ps(mask, s.as_ptr().add(out.col)));
                }
                if let Some(bias) = e.bias {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(out.col)));
                }
                if !out.res[i].is_null() {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, out.res[i].add(out.col)));
                }
                if e.relu {
                    x = _mm512_max_ps(_mm512_setzero_ps(), x);
                }
                _mm512_mask_storeu_ps(dst, mask, x);
            }
        }
    }
}
