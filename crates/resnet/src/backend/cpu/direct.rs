//! Convolution by indirection: the micro-kernel reads each output pixel's
//! input rows in place, through one pointer per (pixel, tap), instead of
//! packing an im2col panel.
//!
//! In NHWC a tap of a pixel is `c_in` contiguous floats, so a tile of `MR`
//! pixels needs `MR` pointers per tap and nothing is copied; padding taps
//! point at a shared zero row. Packing im2col panels costs as much as the
//! arithmetic when a layer has few output channels (each input value feeds
//! only `c_out` multiply-adds), which is exactly the CIFAR ResNets' case
//! (16-64 channels); reading in place removes that cost. The filter is packed
//! once per weight update into panels of [`NR`] output channels.

use super::mem::{AlignedVec, Pod};
use std::sync::OnceLock;

use rayon::prelude::*;

use super::bf16::{self, Bf16};
use super::gemm::{Epilogue, Isa, isa};

/// Output channels per panel (one AVX-512 vector).
pub const NR: usize = 16;
/// Output pixels per micro-kernel call (pointers kept in registers).
pub const MR: usize = 12;

/// A zero row as long as any channel run: the source of padding taps.
pub fn zeros<T: Elem>(len: usize) -> *const T {
    static Z: OnceLock<AlignedVec<f32>> = OnceLock::new();
    let z = Z.get_or_init(|| AlignedVec::zeroed(1 << 16));
    assert!(len <= z.len(), "channel run of {len} exceeds the zero row");
    // Every element type is at most four bytes and zero when all its bits are.
    z.as_ptr().cast()
}

/// An element type of the indirect kernels: f32, or bf16 for inference.
pub trait Elem: Pod {
    /// Whether this is bf16 (whose kernels also store and read bf16 rows).
    const BF16: bool;
    /// Values per tap in a panel for runs of `klen` (bf16 pads odd runs to
    /// whole pairs).
    fn panel_klen(klen: usize) -> usize {
        klen
    }
    /// The `MR x NR` micro-kernel (see [`tile`]).
    ///
    /// # Safety
    /// Every `a[t][i]` points at `klen` readable values; `b` holds
    /// `a.len() * klen * NR` values; `out` rows are valid for `col + nr`
    /// floats and written by this call alone.
    unsafe fn kernel(a: &[[*const Self; MR]], klen: usize, b: &[Self], out: &Out<'_>);
    /// The micro-kernel for two adjacent panels.
    ///
    /// # Safety
    /// As [`Elem::kernel`], for both panels.
    unsafe fn kernel2(a: &[[*const Self; MR]], klen: usize, b0: &[Self], b1: &[Self], o0: &Out<'_>, o1: &Out<'_>);
}

impl Elem for f32 {
    const BF16: bool = false;
    unsafe fn kernel(a: &[[*const f32; MR]], klen: usize, b: &[f32], out: &Out<'_>) {
        // SAFETY: forwarded contract.
        unsafe { kernel(isa(), a, klen, b, out) }
    }
    unsafe fn kernel2(a: &[[*const f32; MR]], klen: usize, b0: &[f32], b1: &[f32], o0: &Out<'_>, o1: &Out<'_>) {
        // SAFETY: forwarded contract.
        unsafe { kernel2(isa(), a, klen, b0, b1, o0, o1) }
    }
}

impl Elem for Bf16 {
    const BF16: bool = true;
    fn panel_klen(klen: usize) -> usize {
        bf16::pairs(klen)
    }
    unsafe fn kernel(a: &[[*const Bf16; MR]], klen: usize, b: &[Bf16], out: &Out<'_>) {
        // SAFETY: forwarded contract.
        unsafe { bf16::kernel(a, klen, b, out) }
    }
    unsafe fn kernel2(a: &[[*const Bf16; MR]], klen: usize, b0: &[Bf16], b1: &[Bf16], o0: &Out<'_>, o1: &Out<'_>) {
        // SAFETY: forwarded contract.
        unsafe { bf16::kernel2(a, klen, b0, b1, o0, o1) }
    }
}

/// Filter panels: for each panel of `NR` output channels, `k` rows of `NR`
/// values (`k = taps * channels per tap`), zero-padded past the last channel.
/// bf16 panels interleave reduction pairs (see `bf16.rs`).
#[derive(Clone, Debug, Default)]
pub struct Panels<T: Pod = f32> {
    /// Output channels.
    pub n: usize,
    /// Reduction length.
    pub k: usize,
    data: AlignedVec<T>,
}

impl<T: Pod> Panels<T> {
    /// The packed values of panel `p` (`k` rows of [`NR`]).
    pub fn panel(&self, p: usize) -> &[T] {
        &self.data[p * self.k * NR..(p + 1) * self.k * NR]
    }
}

impl Panels<Bf16> {
    /// Packs `w[n][k]` (row stride `ld`, `k` even) as bf16 pairs.
    pub fn pack(&mut self, w: &[f32], n: usize, k: usize, ld: usize) {
        self.n = n;
        self.k = k;
        bf16::pack(w, n, k, ld, &mut self.data);
    }
}

impl Panels {
    /// Packs `w[n][k]` (row-major, row stride `ld`), panels in parallel.
    pub fn pack(&mut self, w: &[f32], n: usize, k: usize, ld: usize) {
        self.n = n;
        self.k = k;
        let np = n.div_ceil(NR);
        self.data.clear();
        self.data.resize(np * k * NR, 0.0);
        self.data.par_chunks_mut(k * NR).enumerate().for_each(|(p, panel)| {
            for j in 0..NR.min(n - p * NR) {
                let row = &w[(p * NR + j) * ld..][..k];
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * NR + j] = v;
                }
            }
        });
    }

    /// Packs `w[k][n]` (row-major, row stride `ld`): the transpose of [`pack`](Self::pack).
    pub fn pack_transposed(&mut self, w: &[f32], n: usize, k: usize, ld: usize) {
        self.n = n;
        self.k = k;
        let np = n.div_ceil(NR);
        self.data.clear();
        self.data.resize(np * k * NR, 0.0);
        for kk in 0..k {
            let row = &w[kk * ld..][..n];
            for p in 0..np {
                let m = NR.min(n - p * NR);
                self.data[(p * k + kk) * NR..][..m].copy_from_slice(&row[p * NR..p * NR + m]);
            }
        }
    }
}

/// Activation rows in memory: f32, or bf16 where a bf16 inference plan
/// stores them so (see `infer.rs`).
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// bf16 values.
    Bf16(&'a [Bf16]),
}

/// Destination rows: f32 or bf16.
#[derive(Debug)]
pub enum RowsMut<'a> {
    /// f32 values.
    F32(&'a mut [f32]),
    /// bf16 values.
    Bf16(&'a mut [Bf16]),
}

impl Rows<'_> {
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            Rows::F32(s) => s.len(),
            Rows::Bf16(s) => s.len(),
        }
    }
    /// The rows from value `off` on.
    pub fn from(self, off: usize) -> Self {
        match self {
            Rows::F32(s) => Rows::F32(&s[off..]),
            Rows::Bf16(s) => Rows::Bf16(&s[off..]),
        }
    }
}

/// The residual a convolution's epilogue adds.
#[derive(Clone, Copy, Debug)]
pub enum Residual<'a> {
    /// Rows of their own.
    Rows(Rows<'a>),
    /// The output rows themselves: a residual stored where the output goes,
    /// each value read just before the same tile overwrites it. That saves
    /// reading one buffer and fetching another for writing (in a bottleneck
    /// block the output and its residual are the block's largest tensors).
    /// Single-tap windows only: a tile whose taps are split stores partial
    /// sums in its output rows before it reads the residual.
    InOutput,
}

impl Residual<'_> {
    /// The residual from value `off` of each row on.
    pub fn from(self, off: usize) -> Self {
        match self {
            Residual::Rows(r) => Residual::Rows(r.from(off)),
            Residual::InOutput => Residual::InOutput,
        }
    }
}

impl RowsMut<'_> {
    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            RowsMut::F32(s) => s.len(),
            RowsMut::Bf16(s) => s.len(),
        }
    }
    /// The rows from value `off` on, reborrowed.
    pub fn from(&mut self, off: usize) -> RowsMut<'_> {
        match self {
            RowsMut::F32(s) => RowsMut::F32(&mut s[off..]),
            RowsMut::Bf16(s) => RowsMut::Bf16(&mut s[off..]),
        }
    }
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
    const NONE: Next = Next { runs: std::ptr::null(), taps: 0 };

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
/// bytes of each at a time) is one the hardware prefetchers follow poorly;
/// ResNet-50's 256->64 layer at 56x56, batch 16, runs 20-33% faster with it
/// in bf16 and 17-19% in f32 (ARCHITECTURE.md, "Prefetch"). Smaller inputs
/// stay in cache, where the prefetches cost issue slots for nothing (batch 1
/// was about 1% slower with them).
pub(super) const PREFETCH_INPUT_BYTES: usize = 4 << 20;

impl<'a> Out<'a> {
    /// f32 rows without a residual.
    fn plain(rows: [*mut f32; MR], nr: usize, col: usize, epi: &'a Epilogue<'a>) -> Self {
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
    fn live_rows(&self) -> usize {
        self.rows.iter().rposition(|r| !r.is_null()).map_or(0, |i| i + 1)
    }

    /// Address of this tile's first value in output row `i` (non-null).
    fn row_start(&self, i: usize) -> *const i8 {
        let size = if self.bf16_out { 2 } else { 4 };
        self.rows[i].cast::<i8>().wrapping_add(self.col * size)
    }

    /// Address of this tile's first value in residual row `i` (non-null).
    fn res_start(&self, i: usize) -> *const i8 {
        let size = if self.bf16_res { 2 } else { 4 };
        self.res[i].cast::<i8>().wrapping_add(self.col * size)
    }
}

/// Calls the micro-kernel `f::<R>` that computes the first `R` rows of a
/// tile, `R` the tile's live rows (those with an output pointer) rounded up
/// to even: a short last row group (49 pixels at 7x7 make four groups of 12
/// and one of 1) then costs its own rows, not twelve.
macro_rules! by_live_rows {
    ($out:expr, $($f:ident)::+, [$($g:expr),*], ($($arg:expr),*)) => {
        match $out.live_rows() {
            0..=2 => $($f)::+::<2 $(, $g)*>($($arg),*),
            3..=4 => $($f)::+::<4 $(, $g)*>($($arg),*),
            5..=6 => $($f)::+::<6 $(, $g)*>($($arg),*),
            7..=8 => $($f)::+::<8 $(, $g)*>($($arg),*),
            9..=10 => $($f)::+::<10 $(, $g)*>($($arg),*),
            _ => $($f)::+::<12 $(, $g)*>($($arg),*),
        }
    };
}

/// Computes `MR x NR` outputs: `sum_t sum_c a[t][i][c] * b[t * klen + c][j]`.
///
/// # Safety
/// Every `a[t][i]` points at `klen` readable floats; `b` holds
/// `a.len() * klen * NR` floats; `out` rows are valid for `col + nr` floats
/// and written by this call alone.
unsafe fn kernel(isa: Isa, a: &[[*const f32; MR]], klen: usize, b: &[f32], out: &Out<'_>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is selected only when the CPU has avx512f; the rest is the caller's contract.
        Isa::Avx512 => unsafe { by_live_rows!(out, x86::kernel_avx512, [], (a, klen, b, out)) },
        // SAFETY: the caller's contract.
        _ => unsafe { kernel_generic(a, klen, b, out) },
    }
}

/// Two adjacent panels (see `x86::kernel2_avx512`); two single calls elsewhere.
///
/// # Safety
/// As [`kernel`], for both panels.
unsafe fn kernel2(
    isa: Isa,
    a: &[[*const f32; MR]],
    klen: usize,
    b0: &[f32],
    b1: &[f32],
    out0: &Out<'_>,
    out1: &Out<'_>,
) {
    static NO_PAIRS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *NO_PAIRS.get_or_init(|| std::env::var_os("RESNET_NO_PAIRS").is_some()) {
        // SAFETY: the caller's contract.
        return unsafe {
            kernel(isa, a, klen, b0, out0);
            kernel(isa, a, klen, b1, out1);
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is selected only when the CPU has avx512f; the rest is the caller's contract.
        Isa::Avx512 if out0.next.is_some() && out0.live_rows() == MR => unsafe {
            // SAFETY: as below; `next` holds the next group's runs.
            x86::kernel2_avx512::<MR, true>(a, klen, b0, b1, out0, out1)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is selected only when the CPU has avx512f; the rest is the caller's contract.
        Isa::Avx512 => unsafe { by_live_rows!(out0, x86::kernel2_avx512, [false], (a, klen, b0, b1, out0, out1)) },
        // SAFETY: the caller's contract.
        _ => unsafe {
            kernel_generic(a, klen, b0, out0);
            kernel_generic(a, klen, b1, out1);
        },
    }
}

/// Portable version.
///
/// # Safety
/// As [`kernel`].
unsafe fn kernel_generic(a: &[[*const f32; MR]], klen: usize, b: &[f32], out: &Out<'_>) {
    let mut acc = [[0.0f32; NR]; MR];
    for (t, rows) in a.iter().enumerate() {
        for c in 0..klen {
            let bv = &b[(t * klen + c) * NR..][..NR];
            for (i, &r) in rows.iter().enumerate() {
                // SAFETY: r points at klen floats (contract).
                let av = unsafe { *r.add(c) };
                for j in 0..NR {
                    acc[i][j] = av.mul_add(bv[j], acc[i][j]);
                }
            }
        }
    }
    // SAFETY: forwarded contract.
    unsafe { store_generic(&acc, out) }
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
    use super::{MO, MR, NR, Out};
    use std::arch::x86_64::*;

    /// # Safety
    /// avx512f must be available; otherwise as `outer`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn outer_avx512(a: *const f32, lda: usize, xs: &[*const f32], rows: &[*mut f32; MO], nr: usize) {
        let mask: __mmask16 = if nr >= 16 { 0xffff } else { (1u16 << nr) - 1 };
        let mut acc = [_mm512_setzero_ps(); MO];
        for (j, &x) in xs.iter().enumerate() {
            // SAFETY: x holds nr floats (masked load); a row j holds MO floats.
            unsafe {
                let xv = _mm512_maskz_loadu_ps(mask, x);
                let ar = a.add(j * lda);
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    *acc_i = _mm512_fmadd_ps(_mm512_set1_ps(*ar.add(i)), xv, *acc_i);
                }
            }
        }
        for (i, &r) in rows.iter().enumerate() {
            if !r.is_null() {
                // SAFETY: r is writable for nr floats (masked).
                unsafe { _mm512_mask_storeu_ps(r, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, r), acc[i])) };
            }
        }
    }

    /// # Safety
    /// avx512f must be available; otherwise as `kernel`.
    #[target_feature(enable = "avx512f")]
    /// Computes the first `R` rows only: the rest have no output (see
    /// `by_live_rows`).
    pub(super) unsafe fn kernel_avx512<const R: usize>(a: &[[*const f32; MR]], klen: usize, b: &[f32], out: &Out<'_>) {
        // SAFETY: the caller's contract.
        unsafe { prefetch(out) };
        let mut acc = [_mm512_setzero_ps(); MR];
        let mut bp = b.as_ptr();
        for rows in a {
            let r = *rows;
            for c in 0..klen {
                // SAFETY: b holds a.len() * klen * NR floats; each row pointer klen floats.
                unsafe {
                    let bv = _mm512_loadu_ps(bp.add(c * NR));
                    for i in 0..R {
                        acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(*r[i].add(c)), bv, acc[i]);
                    }
                }
            }
            // SAFETY: advancing within b (see above).
            bp = unsafe { bp.add(klen * NR) };
        }
        // SAFETY: forwarded contract.
        unsafe { store_avx512(&acc, out) }
    }

    /// Two adjacent panels at once: each broadcast feeds two FMAs, halving
    /// the loads per multiply-add (`b1` is the next panel, `out1` its tile).
    /// With `PF`, it also fetches the next row group's runs (`out0.next`).
    ///
    /// # Safety
    /// As `kernel_avx512`, for both panels.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel2_avx512<const R: usize, const PF: bool>(
        a: &[[*const f32; MR]],
        klen: usize,
        b0: &[f32],
        b1: &[f32],
        out0: &Out<'_>,
        out1: &Out<'_>,
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            prefetch(out0);
            prefetch(out1);
        }
        let mut acc0 = [_mm512_setzero_ps(); MR];
        let mut acc1 = [_mm512_setzero_ps(); MR];
        let (mut p0, mut p1) = (b0.as_ptr(), b1.as_ptr());
        for (t, rows) in a.iter().enumerate() {
            let r = *rows;
            for c in 0..klen {
                if PF && c % 16 == 0 {
                    // SAFETY: `next` is the next group's runs (see `Out`).
                    unsafe { out0.next.fetch::<R>(t, c * 4) };
                }
                // SAFETY: both panels hold a.len() * klen * NR floats; row pointers klen floats.
                unsafe {
                    let v0 = _mm512_loadu_ps(p0.add(c * NR));
                    let v1 = _mm512_loadu_ps(p1.add(c * NR));
                    for i in 0..R {
                        let av = _mm512_set1_ps(*r[i].add(c));
                        acc0[i] = _mm512_fmadd_ps(av, v0, acc0[i]);
                        acc1[i] = _mm512_fmadd_ps(av, v1, acc1[i]);
                    }
                }
            }
            // SAFETY: advancing within the panels (see above).
            unsafe {
                p0 = p0.add(klen * NR);
                p1 = p1.add(klen * NR);
            }
        }
        // SAFETY: forwarded contract.
        unsafe {
            store_avx512(&acc0, out0);
            store_avx512(&acc1, out1);
        }
    }

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
                    x = _mm512_max_ps(x, _mm512_setzero_ps());
                }
                _mm512_mask_storeu_ps(dst, mask, x);
            }
        }
    }
}

/// One micro-kernel call for callers that manage their own rows (Winograd):
/// `rows[i][col..col + nr] (+)= sum_t sum_c a[t][i][c] * panel[t * klen + c]`,
/// finished by `epi` (its residual is ignored). Null rows are skipped.
///
/// # Safety
/// Every `a[t][i]` points at `klen` readable floats; `panel` holds
/// `a.len() * klen * NR` floats; non-null rows are writable for `col + nr`
/// floats by this call alone.
pub unsafe fn tile(
    a: &[[*const f32; MR]],
    klen: usize,
    panel: &[f32],
    rows: [*mut f32; MR],
    col: usize,
    nr: usize,
    epi: &Epilogue<'_>,
) {
    let out = Out::plain(rows, nr, col, epi);
    // SAFETY: forwarded contract.
    unsafe { kernel(isa(), a, klen, panel, &out) }
}

/// [`tile`] for two adjacent panels (`col1`, `nr1` for the second).
///
/// # Safety
/// As [`tile`], for both panels.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile2(
    a: &[[*const f32; MR]],
    klen: usize,
    p0: &[f32],
    p1: &[f32],
    rows: [*mut f32; MR],
    col: usize,
    nr: usize,
    nr1: usize,
    epi: &Epilogue<'_>,
) {
    let o0 = Out::plain(rows, nr, col, epi);
    let o1 = Out { nr: nr1, col: col + NR, ..o0 };
    // SAFETY: forwarded contract.
    unsafe { kernel2(isa(), a, klen, p0, p1, &o0, &o1) }
}

/// A sliding window: which source row each destination pixel reads at each
/// tap (see `conv.rs` for the forward and backward-data mappings).
pub trait Taps<T: Pod = f32>: Sync {
    /// Destination pixels.
    fn rows(&self) -> usize;
    /// Taps per pixel.
    fn taps(&self) -> usize;
    /// Values per tap (the channel run).
    fn klen(&self) -> usize;
    /// Fills `out[t][i]` with the run of destination pixel `m0 + i` at tap
    /// `t`, or `zero` where the tap reads padding (or `m0 + i` is past the end).
    /// Windows that build their runs (see `conv::Rounded`) keep them in
    /// `own`, which lives as long as the tile.
    fn fill(&self, m0: usize, zero: *const T, out: &mut [[*const T; MR]], own: &mut AlignedVec<T>);
    /// Values in the source that the runs point into, to decide whether the
    /// kernels fetch them ahead; 0 where the window builds its runs (in `own`).
    fn source_len(&self) -> usize {
        0
    }
}

/// A window whose runs can be listed one tap at a time (the filter gradient).
pub trait TapColumns: Taps<f32> {
    /// Appends the runs of destination pixels `m0..m0 + count` at tap `t`.
    fn fill_tap(&self, m0: usize, count: usize, t: usize, zero: *const f32, out: &mut Vec<*const f32>);
}

/// Raw pointer wrapper shared by tasks that write disjoint rows.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint tiles (distinct rows or columns).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A row group's pointers: output rows, residual rows, and the input runs of
/// the taps that are not all padding (`boffs` holds their tap indices).
struct Tile<T: Pod> {
    /// Runs built by the window (their storage; see [`Taps::fill`]).
    own: AlignedVec<T>,
    /// Every tap's runs, before the all-padding taps are dropped.
    ptrs: Vec<[*const T; MR]>,
    rows: [*mut f32; MR],
    res: [*const f32; MR],
    bf16_out: bool,
    bf16_res: bool,
    ahead: (usize, usize),
    next: Next,
    active: Vec<[*const T; MR]>,
    boffs: Vec<usize>,
}

/// Computes panels `p..p + count` (one or two) of a row group.
///
/// # Safety
/// As [`kernel`]: the tile's pointers are valid runs of `klen` floats (or the
/// zero row) and its rows are the caller's to write.
#[allow(clippy::too_many_arguments)]
unsafe fn panel_tile<T: Elem>(
    t: &Tile<T>,
    panels: &Panels<T>,
    p: usize,
    count: usize,
    taps: usize,
    klen: usize,
    col0: usize,
    epi: &Epilogue<'_>,
) {
    let (rows, res, active, boffs) = (t.rows, t.res, &t.active, &t.boffs);
    let out = |q: usize| Out {
        rows,
        nr: NR.min(panels.n - q * NR),
        col: col0 + q * NR,
        res,
        bf16_out: t.bf16_out,
        bf16_res: t.bf16_res,
        ahead: t.ahead,
        next: t.next,
        epi,
    };
    if active.len() == taps {
        if count == 2 {
            // SAFETY: forwarded contract.
            return unsafe { T::kernel2(active, klen, panels.panel(p), panels.panel(p + 1), &out(p), &out(p + 1)) };
        }
        // SAFETY: forwarded contract.
        return unsafe { T::kernel(active, klen, panels.panel(p), &out(p)) };
    }
    for q in p..p + count {
        let o = out(q);
        let panel = panels.panel(q);
        // Contiguous runs of active taps share one kernel call.
        let mut s = 0;
        let mut first = true;
        while s < active.len() {
            let mut e = s + 1;
            while e < active.len() && boffs[e] == boffs[e - 1] + 1 {
                e += 1;
            }
            let sub = &panel[boffs[s] * T::panel_klen(klen) * NR..];
            let last = e == active.len();
            assert!(!t.bf16_out || (first && last), "a tile whose taps are split cannot sum its parts in bf16 rows");
            let part = Epilogue {
                accumulate: epi.accumulate || !first,
                scale: if last { epi.scale } else { None },
                bias: if last { epi.bias } else { None },
                relu: last && epi.relu,
                residual: None,
            };
            let o = Out { res: if last { res } else { [std::ptr::null(); MR] }, epi: &part, ..o };
            // SAFETY: as above; the panel slice starts at the run's first tap.
            unsafe { T::kernel(&active[s..e], klen, sub, &o) };
            s = e;
            first = false;
        }
        if active.is_empty() {
            // Every tap is padding: the result is the epilogue of zero.
            // SAFETY: as above.
            unsafe { T::kernel(&[], klen, panel, &o) };
        }
    }
}

/// `out[m][col0 + j] = epilogue(sum over taps and runs)` for every destination
/// pixel `m` and output channel `j < panels.n`; rows of `out` have stride `ld`.
///
/// `out` and the residual may hold bf16 values only with bf16 panels.
pub fn run<T: Elem>(
    w: &dyn Taps<T>,
    panels: &Panels<T>,
    mut out: RowsMut<'_>,
    ld: usize,
    col0: usize,
    epi: &Epilogue<'_>,
    residual: Option<(Residual<'_>, usize)>,
) {
    let m = w.rows();
    let (taps, klen) = (w.taps(), w.klen());
    assert_eq!(panels.k, taps * T::panel_klen(klen), "filter does not match the window");
    if m == 0 || panels.n == 0 {
        return;
    }
    assert!(out.len() >= (m - 1) * ld + col0 + panels.n, "output too small");
    let np = panels.n.div_ceil(NR);
    let groups = m.div_ceil(MR);
    let threads = rayon::current_num_threads();
    // Tasks: runs of row groups x chunks of panels, about four per thread;
    // the longer dimension is split first, so a task keeps the other whole
    // (and can reuse it from cache). Rows are split as well when there are
    // at least 8 groups per thread (ResNet-50's 14x14 layers at batch 1):
    // then each thread reads the input rows it wrote in the layer before
    // (split the same way: rayon hands the first half of the tasks to the
    // calling thread), instead of every thread reading all of them, half
    // from the other core's cache (see ARCHITECTURE.md, "Which thread
    // touches which data").
    // Runs are dealt out evenly: group counts differ by one at most.
    let want = 4 * threads;
    let by_rows = groups * MR > np * NR || groups >= 8 * threads;
    let (tasks_g, pchunk) = if !by_rows {
        let pc = np.div_ceil(want).max(2).min(np);
        let pt = np.div_ceil(pc);
        (if pt >= 2 * threads { 1 } else { want.div_ceil(pt).min(groups) }, pc)
    } else {
        let tg = want.min(groups);
        (tg, if tg >= 2 * threads { np } else { np.div_ceil(want.div_ceil(tg)) })
    };
    let tasks = tasks_g * np.div_ceil(pchunk);
    let (optr, bf16_out) = match &mut out {
        RowsMut::F32(o) => (SendPtr(o.as_mut_ptr()), false),
        RowsMut::Bf16(o) => (SendPtr(o.as_mut_ptr().cast()), true),
    };
    let prefetch_inputs = w.source_len() * std::mem::size_of::<T>() >= PREFETCH_INPUT_BYTES;
    let in_output = matches!(residual, Some((Residual::InOutput, _)));
    assert!(!in_output || taps == 1, "a residual in the output rows needs a single-tap window");
    let bf16_res = match residual {
        Some((Residual::Rows(Rows::Bf16(_)), _)) => true,
        Some((Residual::InOutput, _)) => bf16_out,
        _ => false,
    };
    let size = |bf16: bool| if bf16 { 2 } else { 4 };
    let ahead = (MR * ld * size(bf16_out), residual.map_or(0, |(_, rld)| MR * rld * size(bf16_res)));
    assert!(!in_output || residual.is_some_and(|(_, rld)| rld == ld), "the output rows' stride is the residual's");
    assert!(T::BF16 || !(bf16_out || bf16_res), "bf16 activations need bf16 panels");
    // Split taps (padding) sum their parts in the output rows: not in bf16
    // (checked per tile in `panel_tile`; windows over a padded copy never split).
    assert!(!bf16_out || !epi.accumulate, "bf16 output rows are never accumulated into");
    let task = |tk: usize| {
        let zero = zeros(klen);
        let (tg, tp) = (tk % tasks_g, tk / tasks_g);
        let gs = tg * groups / tasks_g..(tg + 1) * groups / tasks_g;
        let ps = tp * pchunk..((tp + 1) * pchunk).min(np);
        // The pointers of a row group, with the taps that are not all padding.
        let new_tile = || Tile {
            own: AlignedVec::new(),
            ptrs: Vec::with_capacity(taps),
            rows: [std::ptr::null_mut(); MR],
            res: [std::ptr::null(); MR],
            bf16_out,
            bf16_res,
            ahead,
            next: Next::NONE,
            active: Vec::with_capacity(taps),
            boffs: Vec::with_capacity(taps),
        };
        // Fills `t` (its vectors reused) with row group `g`'s pointers.
        let fill_tile = |g: usize, t: &mut Tile<T>| {
            let r0 = g * MR;
            t.rows = [std::ptr::null_mut(); MR];
            t.res = [std::ptr::null(); MR];
            for i in 0..MR.min(m - r0) {
                // SAFETY: row r0 + i < m lies inside `out` (asserted above).
                t.rows[i] = unsafe {
                    if bf16_out {
                        optr.get().cast::<Bf16>().add((r0 + i) * ld).cast()
                    } else {
                        optr.get().add((r0 + i) * ld)
                    }
                };
                t.res[i] = match residual {
                    Some((Residual::Rows(Rows::F32(r)), rld)) => r[(r0 + i) * rld..].as_ptr(),
                    Some((Residual::Rows(Rows::Bf16(r)), rld)) => r[(r0 + i) * rld..].as_ptr().cast(),
                    // Read by the epilogue before it stores the same values.
                    Some((Residual::InOutput, _)) => t.rows[i],
                    None => std::ptr::null(),
                };
            }
            t.ptrs.clear();
            t.ptrs.resize(taps, [zero; MR]);
            w.fill(r0, zero, &mut t.ptrs, &mut t.own);
            t.active.clear();
            t.boffs.clear();
            for (i, p) in t.ptrs.iter().enumerate() {
                if p.iter().any(|&q| q != zero) {
                    t.active.push(*p);
                    t.boffs.push(i);
                }
            }
        };
        let compute = |t: &Tile<T>, p: usize, count: usize| {
            // SAFETY: pointers come from the window (valid runs of klen) or the zero row;
            // rows are this task's; panels hold taps * klen * NR floats.
            unsafe { panel_tile(t, panels, p, count, taps, klen, col0, epi) }
        };
        if gs.len() > 1 && gs.len() * MR < ps.len() * NR {
            // Few rows, many output channels: keep each filter panel in cache and
            // sweep the row groups under it.
            let tiles: Vec<Tile<T>> = gs
                .map(|g| {
                    let mut t = new_tile();
                    fill_tile(g, &mut t);
                    t
                })
                .collect();
            for p in ps.clone().step_by(2) {
                for t in &tiles {
                    compute(t, p, 2.min(ps.end - p));
                }
            }
        } else {
            // Many rows: keep a row group's inputs in cache and sweep the panels.
            // Two tiles in turn: the next group's is built before this one's sweep.
            let (mut t, mut next) = (new_tile(), new_tile());
            fill_tile(gs.start, &mut t);
            for g in gs.clone() {
                let more = g + 1 < gs.end;
                if more {
                    fill_tile(g + 1, &mut next);
                }
                for p in ps.clone().step_by(2) {
                    // The sweep's first panels fetch the next group's runs.
                    t.next = match prefetch_inputs && more && p == ps.start {
                        true => Next { runs: next.ptrs.as_ptr().cast(), taps: next.ptrs.len() },
                        false => Next::NONE,
                    };
                    compute(&t, p, 2.min(ps.end - p));
                }
                std::mem::swap(&mut t, &mut next);
            }
        }
    };
    if tasks == 1 || threads == 1 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// Rows of the filter gradient per outer-product tile.
pub const MO: usize = 16;

/// Accumulates `rows[i][0..nr] += sum_j a[j * lda + i] * x[j][0..nr]` for
/// `i < MO` (rows with a null pointer are skipped).
///
/// # Safety
/// `a` is readable for `(xs.len() - 1) * lda + MO` floats; each `xs[j]` for
/// `nr` floats; non-null rows are writable for `nr` floats, by this call alone.
pub(super) unsafe fn outer(isa: Isa, a: *const f32, lda: usize, xs: &[*const f32], rows: &[*mut f32; MO], nr: usize) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is selected only when the CPU has avx512f; the rest is the caller's contract.
        Isa::Avx512 => unsafe { x86::outer_avx512(a, lda, xs, rows, nr) },
        _ => {
            let mut acc = [[0.0f32; NR]; MO];
            for (j, &x) in xs.iter().enumerate() {
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    // SAFETY: the caller's contract.
                    let av = unsafe { *a.add(j * lda + i) };
                    for (l, acc_il) in acc_i.iter_mut().enumerate().take(nr) {
                        // SAFETY: x has nr floats.
                        *acc_il = av.mul_add(unsafe { *x.add(l) }, *acc_il);
                    }
                }
            }
            for (i, &r) in rows.iter().enumerate() {
                if !r.is_null() {
                    for (l, &v) in acc[i].iter().enumerate().take(nr) {
                        // SAFETY: the caller's contract.
                        unsafe { *r.add(l) += v };
                    }
                }
            }
        }
    }
}

/// A convolution's filter gradient by outer products, tile by tile: task
/// `(tap, channel panel)` owns its columns of `dw` and reduces over every
/// pixel in order, so the result does not depend on the thread count.
///
/// `dw` is `[c_out][taps][c_in]` for this group (row stride `taps * cin`);
/// `dy` rows have stride `ldy` and start at this group's first channel.
pub fn filter_gradient(w: &dyn TapColumns, dy: &[f32], ldy: usize, cout: usize, dw: &mut [f32]) {
    let (m, taps, cin) = (w.rows(), w.taps(), w.klen());
    let k = taps * cin;
    assert!(dw.len() >= cout * k, "filter gradient too small");
    if m == 0 {
        return;
    }
    let isa = isa();
    let np = cin.div_ceil(NR);
    let ncb = cout.div_ceil(MO);
    let dptr = SendPtr(dw.as_mut_ptr());
    const CHUNK: usize = 96;
    let task = |tk: usize| {
        let (t, p) = (tk / np, tk % np);
        let nr = NR.min(cin - p * NR);
        let zero = zeros(cin);
        let mut xs: Vec<*const f32> = Vec::with_capacity(CHUNK);
        let mut packed = AlignedVec::<f32>::zeroed(CHUNK * MO);
        for m0 in (0..m).step_by(CHUNK) {
            let ms = CHUNK.min(m - m0);
            xs.clear();
            w.fill_tap(m0, ms, t, zero, &mut xs);
            if p > 0 {
                for q in xs.iter_mut().filter(|q| **q != zero) {
                    // SAFETY: q is a run of `cin` floats and p * NR < cin.
                    *q = unsafe { q.add(p * NR) };
                }
            }
            for cb in 0..ncb {
                let mo = MO.min(cout - cb * MO);
                let mut rows = [std::ptr::null_mut(); MO];
                for (i, r) in rows.iter_mut().enumerate().take(mo) {
                    // SAFETY: row cb*MO + i < cout, column t*cin + p*NR + nr <= k: inside dw.
                    *r = unsafe { dptr.get().add((cb * MO + i) * k + t * cin + p * NR) };
                }
                let (a, lda) = if mo == MO {
                    (dy[m0 * ldy + cb * MO..].as_ptr(), ldy)
                } else {
                    // A partial block (or the very last rows): a zero-padded copy.
                    for j in 0..ms {
                        let src = &dy[(m0 + j) * ldy + cb * MO..][..mo];
                        packed[j * MO..j * MO + mo].copy_from_slice(src);
                        packed[j * MO + mo..(j + 1) * MO].fill(0.0);
                    }
                    (packed.as_ptr(), MO)
                };
                // SAFETY: a covers ms rows of MO readable floats (a full block lies inside each
                // dy row); xs hold nr floats each; rows are this task's own columns.
                unsafe { outer(isa, a, lda, &xs, &rows, nr) };
            }
        }
    };
    let tasks = taps * np;
    if tasks == 1 || rayon::current_num_threads() == 1 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}
