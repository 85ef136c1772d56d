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

mod gradient;

use rayon::prelude::*;

use super::bf16;
use super::gemm::{Epilogue, isa};
use super::kernel;
use super::mem::{AlignedVec, Pod};
use super::tile::{MR, NR, Next, Out, PREFETCH_INPUT_BYTES, zeros};
use crate::backend::Bf16;
pub use gradient::filter_gradient;

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
        unsafe { kernel::kernel(isa(), a, klen, b, out) }
    }
    unsafe fn kernel2(a: &[[*const f32; MR]], klen: usize, b0: &[f32], b1: &[f32], o0: &Out<'_>, o1: &Out<'_>) {
        // SAFETY: forwarded contract.
        unsafe { kernel::kernel2(isa(), a, klen, b0, b1, o0, o1) }
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

/// How a convolution of `groups` row groups and `np` panels is cut into
/// tasks on `threads` threads: `(runs of row groups, panels per task)`.
pub(super) fn split(groups: usize, np: usize, threads: usize) -> (usize, usize) {
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
    if !by_rows {
        let pc = np.div_ceil(want).max(2).min(np);
        let pt = np.div_ceil(pc);
        (if pt >= 2 * threads { 1 } else { want.div_ceil(pt).min(groups) }, pc)
    } else {
        let tg = want.min(groups);
        (tg, if tg >= 2 * threads { np } else { np.div_ceil(want.div_ceil(tg)) })
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
    let (tasks_g, pchunk) = split(groups, np, threads);
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
