//! Winograd convolution for 3x3, stride-1 layers (Lavin & Gray 2016).
//!
//! `F(m x m, 3 x 3)` computes an `m x m` output tile from an `a x a` input
//! tile (`a = m + 2`) with `a^2` products per channel pair instead of `9 m^2`:
//! 2.25x fewer for `F(2, 3)`, 4x fewer for `F(4, 3)`. The work becomes:
//!
//! 1. input transform `V = B^T d B` of every tile, for all channels at once
//!    (vectorised along channels, NHWC);
//! 2. `a^2` independent matrix products `M_p = V_p U_p` (tiles x c_in times
//!    c_in x c_out), by the indirect kernel of `direct.rs`;
//! 3. output transform `Y = A^T M A`, fused with the epilogue (bias, residual,
//!    ReLU).
//!
//! Filters are transformed once (`U = G g G^T`). Tiles are processed in chunks
//! so the transformed data stays in cache.

use super::mem::AlignedVec;
use rayon::prelude::*;

use super::bf16::Bf16;
use super::direct::{self, MR, Rows};
use super::gemm::Epilogue;
use crate::backend::ConvDesc;

/// The transforms of one `F(m, 3)`.
struct Transforms {
    m: usize,
    a: usize,
    bt: &'static [f32],
    g: &'static [f32],
    at: &'static [f32],
    /// `A = (A^T)^T`, `a x m`, for the output-gradient transform `A dY A^T`.
    am: &'static [f32],
}

/// `F(2, 3)`: interpolation points 0, 1, -1, infinity.
const F2: Transforms = Transforms {
    m: 2,
    a: 4,
    bt: &[1., 0., -1., 0., 0., 1., 1., 0., 0., -1., 1., 0., 0., 1., 0., -1.],
    g: &[1., 0., 0., 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0., 0., 1.],
    at: &[1., 1., 1., 0., 0., 1., -1., -1.],
    am: &[1., 0., 1., 1., 1., -1., 0., -1.],
};

/// `F(4, 3)`: points 0, 1, -1, 2, -2, infinity.
const F4: Transforms = Transforms {
    m: 4,
    a: 6,
    bt: &[
        4., 0., -5., 0., 1., 0., //
        0., -4., -4., 1., 1., 0., //
        0., 4., -4., -1., 1., 0., //
        0., -2., -1., 2., 1., 0., //
        0., 2., -1., -2., 1., 0., //
        0., 4., 0., -5., 0., 1.,
    ],
    g: &[
        1. / 4.,
        0.,
        0., //
        -1. / 6.,
        -1. / 6.,
        -1. / 6., //
        -1. / 6.,
        1. / 6.,
        -1. / 6., //
        1. / 24.,
        1. / 12.,
        1. / 6., //
        1. / 24.,
        -1. / 12.,
        1. / 6., //
        0.,
        0.,
        1.,
    ],
    at: &[
        1., 1., 1., 1., 1., 0., //
        0., 1., -1., 2., -2., 0., //
        0., 1., 1., 4., 4., 0., //
        0., 1., -1., 8., -8., 1.,
    ],
    am: &[
        1., 0., 0., 0., //
        1., 1., 1., 1., //
        1., -1., 1., -1., //
        1., 2., 4., 8., //
        1., -2., 4., -8., //
        0., 0., 0., 1.,
    ],
};

fn transforms(m: usize) -> &'static Transforms {
    if m == 4 { &F4 } else { &F2 }
}

/// Whether a convolution can run as Winograd: 3x3, stride 1, dilation 1,
/// one group, padding at most 1 (the ResNets' 3x3 layers).
pub fn applicable(d: &ConvDesc) -> bool {
    d.kernel == [3, 3] && d.stride == [1, 1] && d.dilation == [1, 1] && d.groups == 1 && d.pad[0] <= 1 && d.pad[1] <= 1
}

/// A filter transformed for `F(m, 3)`: for each transform point `p` and
/// each panel `q` of 16 output channels, `c_in` rows of 16 values (the layout
/// of [`direct::Panels`], all points in one buffer so it can be refilled in
/// place at every training step).
#[derive(Debug, Default)]
pub struct WinogradFilter {
    /// Output tile side (2 or 4); 0 when empty.
    pub m: usize,
    c_in: usize,
    c_out: usize,
    data: AlignedVec<f32>,
}

impl WinogradFilter {
    /// Panel `q` of transform point `p`.
    fn panel(&self, p: usize, q: usize) -> &[f32] {
        let np = self.c_out.div_ceil(direct::NR);
        &self.data[(p * np + q) * self.c_in * direct::NR..][..self.c_in * direct::NR]
    }
}

/// How [`prepare`] reads the 3x3 filter it transforms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterSource {
    /// The forward filter: OHWI weights `w[c_out][3][3][c_in]`.
    Forward,
    /// The backward-data filter of the OHWI weights `w[c_in][3][3][c_out]`
    /// (the roles of `c_in`, `c_out` as in the convolution it runs): flipped
    /// and transposed, `w'[co][ky][kx][ci] = w[ci][2 - ky][2 - kx][co]`.
    FlippedTransposed,
}

/// Transforms a 3x3 filter (read as `src` says) into `U = G g G^T` for each
/// (output, input) channel pair, straight into the panel layout. Panels are
/// filled in parallel; within one, the 16 output channels are the vector
/// lanes, so the transform runs 16 channel pairs at a time, in f64 and
/// rounded once. Training refills every filter at each step, so this is not
/// a one-off cost: the scalar form took 16% of a ResNet-18 training step.
pub fn prepare(m: usize, w: &[f32], c_out: usize, c_in: usize, src: FilterSource, out: &mut WinogradFilter) {
    const NR: usize = direct::NR;
    let t = transforms(m);
    let aa = t.a * t.a;
    let np = c_out.div_ceil(NR);
    let len = aa * np * c_in * NR;
    assert_eq!(w.len(), 9 * c_out * c_in, "a 3x3 filter has 9 * c_out * c_in weights");
    if (out.m, out.c_in, out.c_out) != (m, c_in, c_out) || out.data.len() != len {
        out.data.clear();
        out.data.resize(len, 0.0);
    }
    (out.m, out.c_in, out.c_out) = (m, c_in, c_out);
    let dst = SyncPtr(out.data.as_mut_ptr());
    (0..np).into_par_iter().for_each(|q| {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            panel_filter(t, w, (c_out, c_in), q, src, &mut s.tile, dst)
        });
    });
}

/// Panel `q` of [`prepare`], with `taps` as scratch.
fn panel_filter(
    t: &Transforms,
    w: &[f32],
    (c_out, c_in): (usize, usize),
    q: usize,
    src: FilterSource,
    taps: &mut AlignedVec<f32>,
    dst: SyncPtr,
) {
    const NR: usize = direct::NR;
    let (aa, np) = (t.a * t.a, c_out.div_ceil(NR));
    let lanes = NR.min(c_out - q * NR);
    // The panel's taps, [ci][tap][lane]; missing lanes are zero.
    grow(taps, c_in * 9 * NR);
    let taps = &mut taps[..c_in * 9 * NR];
    if lanes < NR {
        taps.fill(0.0);
    }
    match src {
        FilterSource::Forward => {
            for lane in 0..lanes {
                let co = q * NR + lane;
                for tap in 0..9 {
                    for (ci, &v) in w[(co * 9 + tap) * c_in..][..c_in].iter().enumerate() {
                        taps[(ci * 9 + tap) * NR + lane] = v;
                    }
                }
            }
        }
        FilterSource::FlippedTransposed => {
            for ci in 0..c_in {
                for tap in 0..9 {
                    let row = &w[(ci * 9 + 8 - tap) * c_out + q * NR..][..lanes];
                    taps[(ci * 9 + tap) * NR..][..lanes].copy_from_slice(row);
                }
            }
        }
    }
    let mut u = [0.0f32; 36 * NR];
    for ci in 0..c_in {
        transform_filter(t.a, t.g, &taps[ci * 9 * NR..][..9 * NR], &mut u[..aa * NR]);
        for p in 0..aa {
            // SAFETY: row ci of panel q of point p lies inside the buffer
            // (len above), and only this task writes panel q.
            unsafe {
                std::ptr::copy_nonoverlapping(u[p * NR..].as_ptr(), dst.get().add(((p * np + q) * c_in + ci) * NR), NR)
            };
        }
    }
}

wide_fn! {
    /// `U = G g G^T` for 16 channel pairs at once: `g` is `[tap][lane]`, `u`
    /// is `[point][lane]`; `G` is `a x 3`.
    fn transform_filter(a: usize, gm: &[f32], g: &[f32], u: &mut [f32]) {
        const NR: usize = direct::NR;
        // tmp[i][kx] = sum over ky of G[i][ky] g[ky][kx].
        let mut tmp = [[0.0f64; NR]; 18];
        for i in 0..a {
            for kx in 0..3 {
                let row = &mut tmp[i * 3 + kx];
                for ky in 0..3 {
                    let c = gm[i * 3 + ky] as f64;
                    let src = &g[(ky * 3 + kx) * NR..][..NR];
                    for l in 0..NR {
                        row[l] += c * src[l] as f64;
                    }
                }
            }
        }
        for i in 0..a {
            for j in 0..a {
                let mut acc = [0.0f64; NR];
                for kx in 0..3 {
                    let c = gm[j * 3 + kx] as f64;
                    let row = &tmp[i * 3 + kx];
                    for l in 0..NR {
                        acc[l] += row[l] * c;
                    }
                }
                for (o, v) in u[(i * a + j) * NR..][..NR].iter_mut().zip(acc) {
                    *o = v as f32;
                }
            }
        }
    }
}

/// Per-thread buffers for a block of tiles: transformed inputs `V` and the
/// products `M`, both `[a^2][MR][channels]`.
#[derive(Default)]
struct Scratch {
    v: AlignedVec<f32>,
    mm: AlignedVec<f32>,
    tile: AlignedVec<f32>,
    /// Each block's rows of one `V_p` and `M_p`, for the micro-kernel.
    rows: Vec<([*const f32; MR], [*mut f32; MR])>,
}

thread_local! {
    /// Never borrowed across a rayon call.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Makes `v` at least `len` long (never shorter).
fn grow(v: &mut AlignedVec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: every task writes a disjoint part of the output (its own pixels and channels).
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The output tiles of a layer, numbered image by image, row by row.
#[derive(Clone, Copy, Debug)]
struct Grid {
    /// Tile side.
    m: usize,
    /// Tile rows and columns per image.
    th: usize,
    tw: usize,
    /// Tiles in all.
    count: usize,
}

/// Tiles ahead whose pixels the transforms prefetch.
const PREFETCH_TILES: usize = 2;

/// Floats from row `i` of `V_p` (or `M_p`, `D_p`) to row `i` of the next
/// point's, for `rows` rows of `ld` floats: one cache line more than the rows
/// need. Without it, a tile's `a^2` rows lie a multiple of 4 KiB apart
/// whenever `rows * ld` is a multiple of 1024 floats (`c_in` 256 with 12-row
/// blocks, 16 with 64-tile chunks), all in one set of the L1 cache, and every
/// store of a transform evicts another (ResNet-20's 16-channel filter
/// gradient ran 1.35x as long).
fn point_stride(rows: usize, ld: usize) -> usize {
    rows * ld + 16
}

impl Grid {
    fn new(d: &ConvDesc, m: usize) -> Self {
        let (th, tw) = (d.out_h().div_ceil(m), d.out_w().div_ceil(m));
        Self { m, th, tw, count: d.n * th * tw }
    }

    /// Image and output corner `(n, oy, ox)` of a tile.
    fn corner(&self, tile: usize) -> (usize, usize, usize) {
        (tile / (self.th * self.tw), (tile / self.tw) % self.th * self.m, tile % self.tw * self.m)
    }

    /// The tile [`PREFETCH_TILES`] after `tile`, if any: the next tile row's
    /// or image's first when a row ends.
    fn ahead(&self, tile: usize) -> Option<(usize, usize, usize)> {
        let next = tile + PREFETCH_TILES;
        (next < self.count).then(|| self.corner(next))
    }
}

/// `y = epilogue(conv3x3(x))` by Winograd (see [`applicable`]).
///
/// Work is cut into spans of tiles times groups of output channels (see
/// [`split`]); a task transforms its span's input, runs the `a^2` products
/// for its output channels, [`MR`] tiles (the micro-kernel's rows) at a time,
/// and transforms the results into `y`, all in cache.
///
/// With `stats` (`2 * c_out` floats), each task also takes the moments of
/// its freshly written, cache-resident outputs, and the blocks' moments are
/// combined in block order into the per-channel mean and biased variance of
/// `y` (`[mean; c_out]`, then `[var; c_out]`), for a training-mode batch norm.
pub fn forward(
    d: &ConvDesc,
    x: &[f32],
    f: &WinogradFilter,
    y: &mut [f32],
    epi: &Epilogue<'_>,
    stats: Option<&mut [f32]>,
) {
    assert!(y.len() >= d.out_len(), "output too small");
    forward_to(d, Rows::F32(x), f, Dst { ptr: y.as_mut_ptr(), bf16: false }, epi, stats);
}

/// [`forward`] into bf16 rows (rounded to nearest, ties to even, after the
/// epilogue), for a bf16 inference plan whose next layer rounds its input
/// to bf16 anyway: the same values in half the memory. The input may be
/// stored in bf16 too (widened as each patch is loaded).
pub fn forward_bf16(d: &ConvDesc, x: Rows<'_>, f: &WinogradFilter, y: &mut [Bf16], epi: &Epilogue<'_>) {
    assert!(y.len() >= d.out_len(), "output too small");
    assert!(!epi.accumulate, "bf16 rows are never accumulated into");
    forward_to(d, x, f, Dst { ptr: y.as_mut_ptr().cast(), bf16: true }, epi, None);
}

/// The output rows, f32 or bf16 (`ptr` then points at bf16 values).
#[derive(Clone, Copy)]
struct Dst {
    ptr: *mut f32,
    bf16: bool,
}
// SAFETY: every task writes a disjoint part of the output (its own pixels and channels).
unsafe impl Send for Dst {}
// SAFETY: as above.
unsafe impl Sync for Dst {}

impl Dst {
    /// Stores value `idx`.
    ///
    /// # Safety
    /// `idx` lies inside the output and is the caller's to write.
    unsafe fn store(self, idx: usize, v: f32) {
        // SAFETY: the caller's contract.
        unsafe {
            if self.bf16 {
                *self.ptr.cast::<Bf16>().add(idx) = Bf16::from_f32(v);
            } else {
                *self.ptr.add(idx) = v;
            }
        }
    }

    /// Reads value `idx` back (f32 rows only: the batch statistics and `accumulate`).
    ///
    /// # Safety
    /// As [`Dst::store`].
    unsafe fn load(self, idx: usize) -> f32 {
        debug_assert!(!self.bf16);
        // SAFETY: the caller's contract.
        unsafe { *self.ptr.add(idx) }
    }
}

fn forward_to(d: &ConvDesc, x: Rows<'_>, f: &WinogradFilter, y: Dst, epi: &Epilogue<'_>, stats: Option<&mut [f32]>) {
    let t = transforms(f.m);
    let tiles = Grid::new(d, t.m).count;
    let cut = split(t.a * t.a, d.c_in, d.c_out, tiles, rayon::current_num_threads());
    forward_cut(d, x, f, y, epi, stats, cut);
}

/// [`forward_to`] cut into spans of `span_len` tiles times `groups` groups of
/// output-channel panels (see [`split`]).
fn forward_cut(
    d: &ConvDesc,
    x: Rows<'_>,
    f: &WinogradFilter,
    y: Dst,
    epi: &Epilogue<'_>,
    stats: Option<&mut [f32]>,
    (span_len, groups): (usize, usize),
) {
    assert!(x.len() >= d.in_len(), "input too small");
    let t = transforms(f.m);
    let grid = Grid::new(d, t.m);
    let tiles = grid.count;
    let np = d.c_out.div_ceil(direct::NR);
    let threads = rayon::current_num_threads();
    // With statistics, spans are whole blocks, so that the blocks' moments
    // (combined in block order) do not depend on the cut.
    let span_len = if stats.is_some() { span_len.next_multiple_of(MR) } else { span_len }.clamp(1, tiles);
    let (spans, groups) = (tiles.div_ceil(span_len), groups.clamp(1, np));
    let per_group = np.div_ceil(groups);
    let groups = np.div_ceil(per_group);
    // Span sp covers tiles span_start(sp)..span_start(sp + 1).
    let span_start = |sp: usize| (sp * span_len).min(tiles);
    // Blocks of MR tiles per span, at most: each has its moments.
    let subs = span_len.div_ceil(MR);
    // Per block: its pixel count, then the mean and the sum of squared
    // deviations of each channel.
    let (want_stats, part_len) = (stats.is_some(), 1 + 2 * d.c_out);
    let mut parts = AlignedVec::new();
    if want_stats {
        parts = BLOCK_MOMENTS.with(|p| std::mem::take(&mut *p.borrow_mut()));
        grow(&mut parts, spans * subs * part_len);
        // Blocks a span lacks stay empty.
        parts.chunks_exact_mut(part_len).take(spans * subs).for_each(|p| p[0] = 0.0);
    }
    let parts_ptr = SyncPtr(parts.as_mut_ptr());
    let task = |k: usize| {
        let (sp, g) = (k / groups, k % groups);
        let panels = g * per_group..((g + 1) * per_group).min(np);
        let span_tiles = span_start(sp)..span_start(sp + 1);
        // SAFETY: the span's parts lie inside `parts` (spans * subs * part_len floats).
        let parts = want_stats.then(|| unsafe { parts_ptr.get().add(sp * subs * part_len) });
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            // SAFETY: the task writes only the pixels of its tiles, in its
            // channels, and only its channels of its blocks' parts.
            unsafe {
                if span_tiles.len() <= MR {
                    block(t, d, x, f, span_tiles.start, span_tiles.len(), &grid, panels, y, epi, parts, &mut s)
                } else {
                    span(t, d, x, f, span_tiles, &grid, panels, y, epi, parts, part_len, &mut s)
                }
            }
        });
    };
    let tasks = spans * groups;
    if tasks == 1 || threads == 1 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
    if let Some(stats) = stats {
        let co = d.c_out;
        let mut all = super::norm::Moments::new(co);
        for part in parts.chunks_exact(part_len).take(spans * subs) {
            all.add(part[0] as usize, &part[1..1 + co], &part[1 + co..]);
        }
        all.write(stats);
        BLOCK_MOMENTS.with(|p| *p.borrow_mut() = parts);
    }
}

thread_local! {
    /// The per-block moments of [`forward`], kept between calls (grown, never
    /// shrunk) so that training steps do not allocate them again.
    static BLOCK_MOMENTS: std::cell::RefCell<AlignedVec<f32>> = const { std::cell::RefCell::new(AlignedVec::new()) };
}

wide_fn! {
    /// Mean and sum of squared deviations per channel of the pixels at
    /// offsets `px` of `y`, `cols` channels each (two passes over
    /// cache-resident data, 16 channels at a time, four pixels in flight).
    fn pixel_moments(y: *const f32, px: &[usize], cols: usize, mean: &mut [f32], m2: &mut [f32]) {
        const L: usize = 16;
        // 16 channels from pixel offset p, channel c; zeros past `cols`.
        let load = |p: usize, c: usize| -> [f32; L] {
            let mut v = [0.0f32; L];
            let w = L.min(cols - c);
            // SAFETY: the caller's pixels hold `cols` floats from each offset,
            // written by the caller and by no one else meanwhile.
            let src = unsafe { std::slice::from_raw_parts(y.add(p + c), w) };
            if w == L {
                v.copy_from_slice(src);
            } else {
                v[..w].copy_from_slice(src);
            }
            v
        };
        let inv = 1.0 / px.len() as f32;
        let (quads, rest) = (px.chunks_exact(4), px.chunks_exact(4).remainder());
        for c in (0..cols).step_by(L) {
            let mut acc = [[0.0f32; L]; 4];
            for q in quads.clone() {
                for (a, &p) in acc.iter_mut().zip(q) {
                    let v = load(p, c);
                    for l in 0..L {
                        a[l] += v[l];
                    }
                }
            }
            for &p in rest {
                let v = load(p, c);
                for l in 0..L {
                    acc[0][l] += v[l];
                }
            }
            let mut mu = [0.0f32; L];
            for l in 0..L {
                mu[l] = (acc[0][l] + acc[1][l] + (acc[2][l] + acc[3][l])) * inv;
            }
            let mut acc = [[0.0f32; L]; 4];
            for q in quads.clone() {
                for (a, &p) in acc.iter_mut().zip(q) {
                    let v = load(p, c);
                    for l in 0..L {
                        a[l] += (v[l] - mu[l]) * (v[l] - mu[l]);
                    }
                }
            }
            for &p in rest {
                let v = load(p, c);
                for l in 0..L {
                    acc[0][l] += (v[l] - mu[l]) * (v[l] - mu[l]);
                }
            }
            for l in 0..L.min(cols - c) {
                mean[c + l] = mu[l];
                m2[c + l] = acc[0][l] + acc[1][l] + (acc[2][l] + acc[3][l]);
            }
        }
    }
}

/// Transformed filters up to this size stay in L2 and L3 while every block
/// of tiles reads them.
const U_CACHED_BYTES: usize = 1 << 20;
/// Transformed filters above this size come from memory at each read.
const U_STREAMED_BYTES: usize = 16 << 20;
/// The transformed inputs and products of a span at most, where each span
/// reads `U` from memory.
const SPAN_BYTES: usize = 8 << 20;

/// How the work is cut: `(span_len, groups)`, spans of `span_len` tiles
/// times groups of output-channel panels; a task is one of each, and each
/// group transforms its span's inputs again.
///
/// - Transformed filters `U` small enough to stay in L2 and L3 while every
///   block of [`MR`] tiles reads them, or many blocks and a `U` that fits in
///   L3: a span per block, the panels split only as far as `3 * threads`
///   tasks need.
/// - Otherwise (`U` larger than L3, or few blocks, as at batch 1) each span
///   reads `U` from memory: spans are as long as [`SPAN_BYTES`] of
///   transformed inputs and products (`V`, `M`) allow, and the panels are
///   split only when there are fewer spans than threads (at batch 1 the
///   cheapest cut: the threads share `U` and redo only the small input
///   transforms).
fn split(aa: usize, ci: usize, co: usize, tiles: usize, threads: usize) -> (usize, usize) {
    let np = co.div_ceil(direct::NR);
    let fl = std::mem::size_of::<f32>();
    let u_bytes = aa * ci * co * fl;
    let blocks = tiles.div_ceil(MR);
    if u_bytes <= U_CACHED_BYTES || (blocks >= 3 * threads && u_bytes <= U_STREAMED_BYTES) {
        let mut groups = 1;
        while blocks * groups < 3 * threads && groups < np {
            groups += 1;
        }
        return (MR, groups);
    }
    let spans = (tiles * aa * (ci + co) * fl).div_ceil(SPAN_BYTES).clamp(1, tiles);
    if spans >= threads {
        let spans = if spans < 4 * threads { spans.next_multiple_of(threads) } else { spans };
        (tiles.div_ceil(spans), 1)
    } else {
        (tiles.div_ceil(spans), threads.div_ceil(spans).min(np))
    }
}

/// The tiles `tiles` (more than [`MR`]; a single block goes to [`block`])
/// for the output-channel panels `panels`: their input transforms, the
/// products panel by panel (each block of [`MR`] tiles in turn while the
/// panel is in cache), the output transforms and, with `parts`, each block's
/// moments.
///
/// # Safety
/// `y` is the output tensor; no other task writes these tiles' pixels in
/// these channels. `parts`, if any, points at the first block's part, each
/// `part_len` floats.
#[allow(clippy::too_many_arguments)]
unsafe fn span(
    t: &Transforms,
    d: &ConvDesc,
    x: Rows<'_>,
    f: &WinogradFilter,
    tiles: std::ops::Range<usize>,
    grid: &Grid,
    panels: std::ops::Range<usize>,
    y: Dst,
    epi: &Epilogue<'_>,
    parts: Option<*mut f32>,
    part_len: usize,
    s: &mut Scratch,
) {
    let (ci, co) = (d.c_in, d.c_out);
    let t0 = tiles.start;
    // Tiles of the span: the rows of each V_p and M_p.
    let nt = tiles.len();
    // 1. Input transforms into V[p][i][..].
    let l = transform_inputs(t, d, x, grid, t0..t0 + nt, nt, &panels, s);
    let (lv, lm, ldm) = (l.lv, l.lm, l.ldm);
    // 2. The products M_p = V_p U_p for these rows and channels.
    let zero = direct::zeros(ci);
    let (vp, mp) = (s.v.as_ptr(), s.mm.as_mut_ptr());
    for p in 0..t.a * t.a {
        // The rows of V_p and M_p, a block at a time.
        let block = |r0: usize| {
            let mut rows_in = [zero; MR];
            let mut rows_out = [std::ptr::null_mut(); MR];
            for i in 0..MR.min(nt - r0) {
                // SAFETY: V_p and M_p have nt rows of ci and ldm floats (grown above).
                unsafe {
                    rows_in[i] = vp.add(p * lv + (r0 + i) * ci);
                    rows_out[i] = mp.add(p * lm + (r0 + i) * ldm);
                }
            }
            (rows_in, rows_out)
        };
        s.rows.clear();
        s.rows.extend((0..nt).step_by(MR).map(block));
        // SAFETY: as `products` asks (rows of V_p and M_p, this task's panels).
        unsafe { products(f, p, &s.rows, &panels, ci, co) };
    }
    // 3. Output transforms of M into y, with the epilogue.
    // SAFETY: the caller owns these pixels and channels of y.
    unsafe { transform_outputs(t, d, grid, t0..t0 + nt, &l, y, epi, s) };
    // 4. The moments of what was just written, block by block, for a batch norm.
    let Some(parts) = parts else { return };
    for (k, r0) in (0..nt).step_by(MR).enumerate() {
        let block = t0 + r0..t0 + (r0 + MR).min(nt);
        // SAFETY: block k's part follows the span's first (the caller's contract).
        unsafe { block_moments(t.m, d, grid, block, l.c0, l.cols, y, parts.add(k * part_len)) };
    }
}

/// Where a task's transformed tiles lie in the scratch: `V_p` and `M_p`
/// start `lv` and `lm` floats apart, rows of `M_p` hold the task's output
/// channels `c0..c0 + cols` from column 0, `ldm` floats apart.
struct Layout {
    lv: usize,
    lm: usize,
    c0: usize,
    cols: usize,
    ldm: usize,
}

/// Step 1 of [`span`] and [`block`]: sizes the scratch for `rows` rows per
/// point and the output-channel panels `panels`, and transforms the inputs
/// of `tiles` (at most `rows`) into rows `0..` of every `V_p`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn transform_inputs(
    t: &Transforms,
    d: &ConvDesc,
    x: Rows<'_>,
    grid: &Grid,
    tiles: std::ops::Range<usize>,
    rows: usize,
    panels: &std::ops::Range<usize>,
    s: &mut Scratch,
) -> Layout {
    let aa = t.a * t.a;
    let c0 = panels.start * direct::NR;
    let cols = (panels.end * direct::NR).min(d.c_out) - c0;
    let ldm = cols.next_multiple_of(direct::NR);
    let (lv, lm) = (point_stride(rows, d.c_in), point_stride(rows, ldm));
    // Grown, never shrunk: layers of different sizes share the scratch, and
    // shrinking would zero-fill it again at every growth.
    grow(&mut s.v, aa * lv);
    grow(&mut s.mm, aa * lm);
    for (i, tile) in tiles.enumerate() {
        // SAFETY: V has aa * lv floats; the tile writes row i < rows of each V_p.
        unsafe { input_transform(t, d, x, grid, tile, s.v.as_mut_ptr(), lv, i, &mut s.tile) };
    }
    Layout { lv, lm, c0, cols, ldm }
}

/// Step 3 of [`span`] and [`block`]: transforms rows `0..` of every `M_p`
/// (laid out as `l`) into the pixels of `tiles` in `y`, with the epilogue.
///
/// # Safety
/// The caller owns these pixels and channels of `y`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn transform_outputs(
    t: &Transforms,
    d: &ConvDesc,
    grid: &Grid,
    tiles: std::ops::Range<usize>,
    l: &Layout,
    y: Dst,
    epi: &Epilogue<'_>,
    s: &mut Scratch,
) {
    for (i, tile) in tiles.enumerate() {
        let (n, oy, ox) = grid.corner(tile);
        // SAFETY: the caller's contract.
        unsafe { output_transform(t, d, &s.mm, l.lm, i, l.ldm, l.c0, l.cols, n, oy, ox, y, epi, &mut s.tile) };
    }
}

/// The moments of the block of tiles `tiles` (at most [`MR`]) just written
/// into `y`, channels `c0..c0 + cols`, into `part` (`[count, mean; c_out,
/// m2; c_out]`).
///
/// # Safety
/// `part` holds `1 + 2 * c_out` floats, whose channels `c0..c0 + cols` this
/// task alone writes (and the count, where `c0` is 0); `y`'s pixels of these
/// tiles are written.
#[allow(clippy::too_many_arguments)]
unsafe fn block_moments(
    m: usize,
    d: &ConvDesc,
    grid: &Grid,
    tiles: std::ops::Range<usize>,
    c0: usize,
    cols: usize,
    y: Dst,
    part: *mut f32,
) {
    let co = d.c_out;
    let mut px = [0usize; MR * 16];
    let mut count = 0;
    for tile in tiles {
        let (n, oy, ox) = grid.corner(tile);
        let dst: [Option<usize>; 16] = offsets(m, (oy as isize, ox as isize), (d.out_h(), d.out_w()), n, co, c0);
        for &p in dst[..m * m].iter().flatten() {
            px[count] = p;
            count += 1;
        }
    }
    // SAFETY: the caller's contract.
    unsafe {
        let mean = std::slice::from_raw_parts_mut(part.add(1 + c0), cols);
        let m2 = std::slice::from_raw_parts_mut(part.add(1 + co + c0), cols);
        pixel_moments(y.ptr, &px[..count], cols, mean, m2);
        if c0 == 0 {
            *part = count as f32;
        }
    }
}

/// `M_p = V_p U_p` for the output-channel panels `panels` (their columns
/// from 0 in the rows of `M_p`), panel pair by panel pair, each block of rows
/// in turn while the pair is in cache.
///
/// # Safety
/// Each block's input rows hold `ci` floats (or are the zero row); its
/// non-null output rows have room for the panels' columns and are this
/// task's alone.
unsafe fn products(
    f: &WinogradFilter,
    p: usize,
    blocks: &[([*const f32; MR], [*mut f32; MR])],
    panels: &std::ops::Range<usize>,
    ci: usize,
    co: usize,
) {
    let none = Epilogue::default();
    let mut q = panels.start;
    while q < panels.end {
        let nr = direct::NR.min(co - q * direct::NR);
        let col = (q - panels.start) * direct::NR;
        let pair = q + 1 < panels.end;
        for (rows_in, rows_out) in blocks {
            let rows_in = std::slice::from_ref(rows_in);
            // SAFETY: the caller's contract; panels hold ci * NR floats.
            unsafe {
                if pair {
                    let nr1 = direct::NR.min(co - (q + 1) * direct::NR);
                    direct::tile2(rows_in, ci, f.panel(p, q), f.panel(p, q + 1), *rows_out, col, nr, nr1, &none);
                } else {
                    direct::tile(rows_in, ci, f.panel(p, q), *rows_out, col, nr, &none);
                }
            }
        }
        q += if pair { 2 } else { 1 };
    }
}

/// One block of `nt <= MR` tiles starting at tile `t0`, for the
/// output-channel panels `panels`: [`span`] for a single block, with the
/// products' rows built once per position and no list of blocks (small
/// training layers make many short kernel calls: ResNet-20's step ran 1.5-3.5%
/// faster this way than through `span`, alternating `resnet bench --arch
/// resnet20 --batch 128 --mode train` runs).
///
/// # Safety
/// `y` is the output tensor; no other task writes these tiles' pixels in
/// these channels.
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    t: &Transforms,
    d: &ConvDesc,
    x: Rows<'_>,
    f: &WinogradFilter,
    t0: usize,
    nt: usize,
    grid: &Grid,
    panels: std::ops::Range<usize>,
    y: Dst,
    epi: &Epilogue<'_>,
    part: Option<*mut f32>,
    s: &mut Scratch,
) {
    let (ci, co) = (d.c_in, d.c_out);
    // 1. Input transforms into V[p][i][..].
    let l = transform_inputs(t, d, x, grid, t0..t0 + nt, MR, &panels, s);
    let (lv, lm, ldm) = (l.lv, l.lm, l.ldm);
    // 2. The products M_p = V_p U_p for this block's rows and channels.
    let zero = direct::zeros(ci);
    let none = Epilogue::default();
    for p in 0..t.a * t.a {
        let mut rows_in = [zero; MR];
        let mut rows_out = [std::ptr::null_mut(); MR];
        for i in 0..nt {
            rows_in[i] = s.v[p * lv + i * ci..].as_ptr();
            // SAFETY: row i of M_p has ldm floats.
            rows_out[i] = unsafe { s.mm.as_mut_ptr().add(p * lm + i * ldm) };
        }
        let mut q = panels.start;
        while q < panels.end {
            let nr = direct::NR.min(co - q * direct::NR);
            let col = (q - panels.start) * direct::NR;
            let u = |q: usize| f.panel(p, q);
            // SAFETY: input rows hold ci floats (or are the zero row); panels hold
            // ci * NR floats; output rows have room for the columns written.
            unsafe {
                if q + 1 < panels.end {
                    let nr1 = direct::NR.min(co - (q + 1) * direct::NR);
                    direct::tile2(&[rows_in], ci, u(q), u(q + 1), rows_out, col, nr, nr1, &none);
                    q += 2;
                } else {
                    direct::tile(&[rows_in], ci, u(q), rows_out, col, nr, &none);
                    q += 1;
                }
            }
        }
    }
    // 3. Output transforms of M into y, with the epilogue.
    // SAFETY: the caller owns these pixels and channels of y.
    unsafe { transform_outputs(t, d, grid, t0..t0 + nt, &l, y, epi, s) };
    // 4. The moments of what was just written, for a batch norm.
    if let Some(part) = part {
        // SAFETY: the block's part (the caller's contract).
        unsafe { block_moments(t.m, d, grid, t0..t0 + nt, l.c0, l.cols, y, part) };
    }
}

/// The offsets of a `side x side` patch with its corner at `(y, x)` in image
/// `n` of an NHWC tensor with `c` channels per pixel (plus `c0`), row-major,
/// `None` for pixels outside the image and for entries past `side^2`; the
/// side is made a constant so that the loops unroll.
#[inline(always)]
fn offsets<const N: usize>(
    side: usize,
    (y, x): (isize, isize),
    (h, w): (usize, usize),
    n: usize,
    c: usize,
    c0: usize,
) -> [Option<usize>; N] {
    #[inline(always)]
    fn build<const S: usize, const N: usize>(
        y: isize,
        x: isize,
        h: usize,
        w: usize,
        n: usize,
        c: usize,
        c0: usize,
    ) -> [Option<usize>; N] {
        let mut out = [None; N];
        for r in 0..S {
            let iy = y + r as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            for q in 0..S {
                let ix = x + q as isize;
                if ix >= 0 && ix < w as isize {
                    out[r * S + q] = Some(((n * h + iy as usize) * w + ix as usize) * c + c0);
                }
            }
        }
        out
    }
    match side {
        6 => build::<6, N>(y, x, h, w, n, c, c0),
        4 => build::<4, N>(y, x, h, w, n, c, c0),
        2 => build::<2, N>(y, x, h, w, n, c, c0),
        _ => unreachable!("Winograd tiles have side 2, 4 or 6"),
    }
}

/// Prefetches, into L1, the pixels `xs` of rows `ys` of image `n` of an NHWC
/// tensor (`h x w`, `c` floats per pixel), channels `chans` of each; parts
/// outside the image are skipped. The transforms read tiles in order, so they
/// ask for the pixels of the tile [`PREFETCH_TILES`] ahead, wrapping to the
/// next tile row (small images have only two to eight tiles per row): the
/// hardware prefetcher does not follow their six (or four) interleaved row
/// streams well enough.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn prefetch_patch(
    data: Rows<'_>,
    ys: std::ops::Range<isize>,
    xs: std::ops::Range<isize>,
    (h, w): (usize, usize),
    n: usize,
    c: usize,
    chans: std::ops::Range<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let (x0, x1) = (xs.start.max(0) as usize, xs.end.clamp(0, w as isize) as usize);
        if x0 >= x1 {
            return;
        }
        let (base, size): (*const i8, usize) = match data {
            Rows::F32(v) => (v.as_ptr().cast(), 4),
            Rows::Bf16(v) => (v.as_ptr().cast(), 2),
        };
        for y in ys.start.max(0) as usize..ys.end.clamp(0, h as isize) as usize {
            for x in x0..x1 {
                let px = ((n * h + y) * w + x) * c;
                for ch in chans.clone().step_by(16) {
                    let at = base.wrapping_add((px + ch) * size);
                    // SAFETY: a prefetch never faults.
                    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at) };
                }
            }
        }
    }
}

/// Transforms the input tile at output corner `(oy, ox)` of image `n` into
/// row `i` of every `V_p` (`V_p` starts `ldp` floats after `V_{p-1}`).
///
/// # Safety
/// `v` holds `a^2 * ldp` floats and `(i + 1) * c_in <= ldp`.
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform(
    t: &Transforms,
    d: &ConvDesc,
    x: Rows<'_>,
    grid: &Grid,
    tile: usize,
    v: *mut f32,
    ldp: usize,
    i: usize,
    buf: &mut AlignedVec<f32>,
) {
    let (a, m, c) = (t.a, t.m, d.c_in);
    let patch_corner = |oy: usize, ox: usize| (oy as isize - d.pad[0] as isize, ox as isize - d.pad[1] as isize);
    // The patch's source pixels, or None for padding.
    let (n, oy, ox) = grid.corner(tile);
    let src: [Option<usize>; 36] = offsets(a, patch_corner(oy, ox), (d.h, d.w), n, c, 0);
    // The tile ahead needs its last m columns only, unless it starts a row.
    if let Some((n2, oy2, ox2)) = grid.ahead(tile) {
        let (y0, x0) = patch_corner(oy2, ox2);
        let x_from = if ox2 == 0 { x0 } else { x0 + (a - m) as isize };
        prefetch_patch(x, y0..y0 + a as isize, x_from..x0 + a as isize, (d.h, d.w), n2, c, 0..c);
    }
    #[cfg(target_arch = "x86_64")]
    if super::gemm::isa() == super::gemm::Isa::Avx512 {
        // SAFETY: the CPU has avx512f; pointers as documented.
        return unsafe { x86::input(t.m, x, &src[..a * a], c, v, ldp, i) };
    }
    // Portable: transform the whole patch with the matrices.
    buf.resize(3 * a * a * c, 0.0);
    let (patch, rest) = buf.split_at_mut(a * a * c);
    let (tmp, out) = rest.split_at_mut(a * a * c);
    for (k, s) in src[..a * a].iter().enumerate() {
        let dst = &mut patch[k * c..(k + 1) * c];
        match (s, x) {
            (Some(o), Rows::F32(x)) => dst.copy_from_slice(&x[*o..o + c]),
            (Some(o), Rows::Bf16(x)) => dst.iter_mut().zip(&x[*o..o + c]).for_each(|(d, v)| *d = v.to_f32()),
            (None, _) => dst.fill(0.0),
        }
    }
    transform_rows(t.bt, a, a, patch, tmp, c);
    transform_cols(t.bt, a, a, tmp, out, c);
    for p in 0..a * a {
        // SAFETY: row i of V_p lies inside v.
        unsafe { std::ptr::copy_nonoverlapping(out[p * c..].as_ptr(), v.add(p * ldp + i * c), c) };
    }
}

/// Transforms row `i` of every `M_p` (channels `c0..c0 + cols` of the output,
/// stored from column 0 with row stride `ldm`; `M_p` starts `ldp` floats after
/// `M_{p-1}`) into the tile's pixels of `y`.
///
/// # Safety
/// The caller owns these pixels and channels of `y`.
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    t: &Transforms,
    d: &ConvDesc,
    mm: &[f32],
    ldp: usize,
    i: usize,
    ldm: usize,
    c0: usize,
    cols: usize,
    n: usize,
    oy: usize,
    ox: usize,
    y: Dst,
    e: &Epilogue<'_>,
    buf: &mut AlignedVec<f32>,
) {
    let (a, m, co) = (t.a, t.m, d.c_out);
    let (oh, ow) = (d.out_h(), d.out_w());
    // Output pixels of the tile, or None past the image edge.
    let dst: [Option<usize>; 16] = offsets(m, (oy as isize, ox as isize), (oh, ow), n, 1, 0);
    #[cfg(target_arch = "x86_64")]
    if super::gemm::isa() == super::gemm::Isa::Avx512 {
        // SAFETY: the CPU has avx512f; the rest is the caller's contract.
        return unsafe { x86::output(t.m, mm, ldp, i, ldm, c0, cols, co, &dst[..m * m], y, e) };
    }
    buf.resize((a * a + m * a + m * m) * cols, 0.0);
    let (inp, rest) = buf.split_at_mut(a * a * cols);
    let (tmp, out) = rest.split_at_mut(m * a * cols);
    for p in 0..a * a {
        inp[p * cols..(p + 1) * cols].copy_from_slice(&mm[p * ldp + i * ldm..][..cols]);
    }
    transform_rows(t.at, m, a, inp, tmp, cols);
    transform_cols(t.at, m, a, tmp, out, cols);
    for (k, px) in dst[..m * m].iter().enumerate() {
        let Some(px) = *px else { continue };
        for j in 0..cols {
            let ch = c0 + j;
            let mut v = out[k * cols + j];
            if e.accumulate {
                // SAFETY: pixel px, channel ch is inside y and owned by the caller.
                v += unsafe { y.load(px * co + ch) };
            }
            if let Some(s) = e.scale {
                v *= s[ch];
            }
            if let Some(b) = e.bias {
                v += b[ch];
            }
            if let Some((res, ld)) = e.residual {
                v += res[px * ld + ch];
            }
            if e.relu && v < 0.0 {
                v = 0.0;
            }
            // SAFETY: as above.
            unsafe { y.store(px * co + ch, v) };
        }
    }
}

/// Output channels per filter-gradient task (wider layers are split).
const GRAD_COLS: usize = 64;
/// Bytes of transformed tiles a filter-gradient task keeps per chunk.
const GRAD_CHUNK_BYTES: usize = 512 << 10;
/// Bytes of per-slab partial sums a filter gradient may hold.
const GRAD_PARTS_BYTES: usize = 64 << 20;

/// Whether the Winograd filter gradient beats the direct one for a layer: a
/// task's partial sums (`a^2 x 64 x c_in` floats) are read and written once
/// per chunk of tiles, which pays while they stay near the core. With 256 or
/// more input channels they do not (`cargo run --release --example wgrad`,
/// batch 16: 144 ms against 23 ms direct at 14x14x256, 106 against 26 at
/// 7x7x512; but 14 against 49 at 56x56x64 and 23 against 29 at 28x28x128).
pub fn filter_gradient_pays(d: &ConvDesc) -> bool {
    d.c_in <= 128
}

/// Filter gradient of a 3x3 stride-1 layer by Winograd `F(m, 3)`:
/// `dw += G^T (sum over tiles of V_p^T dM_p) G`, with `V = B^T d B` the input
/// tiles and `dM = A dY A^T` the output-gradient tiles. Per tile and channel
/// pair that is `a^2` multiply-adds (`a = m + 2`) against `9 m^2` for the
/// direct correlation.
///
/// Tiles are cut into slabs, a number fixed by the layer's shape (never by
/// the thread count); each (slab, output-channel group) task sums its tiles'
/// products into its own partial `dU`, and the partials are added in slab
/// order, so the result is the same on any number of threads. `dw` is OHWI
/// (`[c_out][3][3][c_in]`) and is accumulated into.
pub fn filter_gradient(m: usize, d: &ConvDesc, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    assert!(applicable(d), "Winograd filter gradient of a layer that is not 3x3 stride 1");
    assert!(dw.len() >= d.weight_len(), "filter gradient too small");
    let t = transforms(m);
    let aa = t.a * t.a;
    let (ci, co) = (d.c_in, d.c_out);
    let tiles = d.n * d.out_h().div_ceil(m) * d.out_w().div_ceil(m);
    if tiles == 0 {
        return;
    }
    let width = co.min(GRAD_COLS);
    let ldw = width.next_multiple_of(direct::MO);
    let groups = co.div_ceil(width);
    let part_len = aa * ldw * ci;
    let chunk = (GRAD_CHUNK_BYTES / 4 / (aa * (ci + ldw))).clamp(8, 64);
    let most = (GRAD_PARTS_BYTES / 4 / (groups * part_len)).max(1);
    let per_slab = tiles.div_ceil((tiles / (4 * chunk)).clamp(1, 8).min(most));
    let slabs = tiles.div_ceil(per_slab);
    let mut parts = AlignedVec::<f32>::zeroed(slabs * groups * part_len);
    parts.par_chunks_mut(part_len).enumerate().for_each(|(k, part)| {
        let (sl, g) = (k / groups, k % groups);
        let own = sl * per_slab..((sl + 1) * per_slab).min(tiles);
        let cols = g * width..((g + 1) * width).min(co);
        SCRATCH.with(|s| grad_slab(t, d, x, dy, own, cols, chunk, ldw, part, &mut s.borrow_mut()));
    });
    let parts = &parts[..];
    dw[..d.weight_len()].par_chunks_mut(9 * ci).enumerate().for_each(|(o, dwo)| {
        let (g, col) = (o / width, o % width);
        let first = &parts[g * part_len + col * ci..];
        grad_filter_transform(t.g, t.a, first, slabs, groups * part_len, ldw * ci, ci, dwo);
    });
}

/// One filter-gradient task: the tiles `tiles`, output channels `cols`,
/// summed into `part` (`[a^2][ldw][c_in]`), `chunk` tiles at a time.
#[allow(clippy::too_many_arguments)]
fn grad_slab(
    t: &Transforms,
    d: &ConvDesc,
    x: &[f32],
    dy: &[f32],
    tiles: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    chunk: usize,
    ldw: usize,
    part: &mut [f32],
    s: &mut Scratch,
) {
    let (m, aa, ci) = (t.m, t.a * t.a, d.c_in);
    let grid = Grid::new(d, m);
    let (lv, lm) = (point_stride(chunk, ci), point_stride(chunk, ldw));
    grow(&mut s.v, aa * lv);
    grow(&mut s.mm, aa * lm);
    let isa = super::gemm::isa();
    let mut xs = Vec::with_capacity(chunk);
    for t0 in tiles.clone().step_by(chunk) {
        let nt = chunk.min(tiles.end - t0);
        for i in 0..nt {
            // SAFETY: V holds aa * lv floats and D aa * lm; i < chunk.
            unsafe {
                input_transform(t, d, Rows::F32(x), &grid, t0 + i, s.v.as_mut_ptr(), lv, i, &mut s.tile);
                grad_transform(t, d, dy, &grid, t0 + i, cols.clone(), s.mm.as_mut_ptr(), lm, ldw, i, &mut s.tile);
            }
        }
        for p in 0..aa {
            for c0 in (0..ci).step_by(direct::NR) {
                let nr = direct::NR.min(ci - c0);
                xs.clear();
                xs.extend((0..nt).map(|i| s.v[p * lv + i * ci + c0..].as_ptr()));
                for cb in (0..cols.len()).step_by(direct::MO) {
                    let mut rows = [std::ptr::null_mut(); direct::MO];
                    for (j, r) in rows.iter_mut().enumerate().take(cols.len() - cb) {
                        *r = part[(p * ldw + cb + j) * ci + c0..].as_mut_ptr();
                    }
                    // SAFETY: D_p's rows hold ldw >= cb + MO floats (chunk rows, stride ldw);
                    // each xs entry holds nr floats of V_p; rows are this task's partial sums.
                    unsafe { direct::outer(isa, s.mm[p * lm + cb..].as_ptr(), ldw, &xs, &rows, nr) };
                }
            }
        }
    }
}

wide_fn! {
    /// `dw[ky][kx][c] += sum_ij G[i][ky] dU[i][j][c] G[j][kx]` for one output
    /// channel, `dU` being the sum of the slabs' partials: point `p` of slab
    /// `sl` is the row of `ci` floats at `parts[sl * ld_slab + p * ld_point..]`.
    fn grad_filter_transform(
        g: &[f32],
        a: usize,
        parts: &[f32],
        slabs: usize,
        ld_slab: usize,
        ld_point: usize,
        ci: usize,
        dw: &mut [f32],
    ) {
        let mut du = vec![0.0f32; a * a * ci];
        for p in 0..a * a {
            let acc = &mut du[p * ci..(p + 1) * ci];
            for sl in 0..slabs {
                for (v, &r) in acc.iter_mut().zip(&parts[sl * ld_slab + p * ld_point..][..ci]) {
                    *v += r;
                }
            }
        }
        // Along i first: tmp[ky][j] = sum_i G[i][ky] dU[i][j].
        let mut tmp = vec![0.0f32; 3 * a * ci];
        for ky in 0..3 {
            for i in 0..a {
                let gi = g[i * 3 + ky];
                if gi == 0.0 {
                    continue;
                }
                for j in 0..a {
                    let (o, u) = (&mut tmp[(ky * a + j) * ci..][..ci], &du[(i * a + j) * ci..][..ci]);
                    for (ov, &uv) in o.iter_mut().zip(u) {
                        *ov += gi * uv;
                    }
                }
            }
        }
        for ky in 0..3 {
            for kx in 0..3 {
                let o = &mut dw[(ky * 3 + kx) * ci..][..ci];
                for j in 0..a {
                    let gj = g[j * 3 + kx];
                    if gj != 0.0 {
                        for (ov, &tv) in o.iter_mut().zip(&tmp[(ky * a + j) * ci..][..ci]) {
                            *ov += gj * tv;
                        }
                    }
                }
            }
        }
    }
}

/// Transforms the output-gradient tile at `(oy, ox)` of image `n`, channels
/// `cols`, into row `i` of every `D_p` (`dM = A dY A^T`; rows of stride `ld`,
/// `D_p` starting `ldp` floats after `D_{p-1}`); pixels past the output's edge
/// count as zero.
///
/// # Safety
/// `dm` holds `a^2 * ldp` floats, `(i + 1) * ld <= ldp` and `cols.len() <= ld`.
#[allow(clippy::too_many_arguments)]
unsafe fn grad_transform(
    t: &Transforms,
    d: &ConvDesc,
    dy: &[f32],
    grid: &Grid,
    tile: usize,
    cols: std::ops::Range<usize>,
    dm: *mut f32,
    ldp: usize,
    ld: usize,
    i: usize,
    buf: &mut AlignedVec<f32>,
) {
    let (a, m, cw) = (t.a, t.m, cols.len());
    let (oh, ow) = (d.out_h(), d.out_w());
    let (n, oy, ox) = grid.corner(tile);
    let src: [Option<usize>; 16] = offsets(m, (oy as isize, ox as isize), (oh, ow), n, d.c_out, cols.start);
    if let Some((n2, oy2, ox2)) = grid.ahead(tile) {
        let (y, x) = (oy2 as isize, ox2 as isize);
        prefetch_patch(Rows::F32(dy), y..y + m as isize, x..x + m as isize, (oh, ow), n2, d.c_out, cols.clone());
    }
    #[cfg(target_arch = "x86_64")]
    if super::gemm::isa() == super::gemm::Isa::Avx512 {
        // SAFETY: the CPU has avx512f; pointers as documented.
        return unsafe { x86::grad(m, dy, &src[..m * m], cw, dm, ldp, ld, i) };
    }
    // Portable: A applied on both sides.
    buf.resize((m * m + a * m + a * a) * cw, 0.0);
    let (patch, rest) = buf.split_at_mut(m * m * cw);
    let (tmp, out) = rest.split_at_mut(a * m * cw);
    for (k, s) in src[..m * m].iter().enumerate() {
        match s {
            Some(o) => patch[k * cw..(k + 1) * cw].copy_from_slice(&dy[*o..o + cw]),
            None => patch[k * cw..(k + 1) * cw].fill(0.0),
        }
    }
    transform_rows(t.am, a, m, patch, tmp, cw);
    transform_cols(t.am, a, m, tmp, out, cw);
    for p in 0..a * a {
        // SAFETY: row i of D_p lies inside dm.
        unsafe { std::ptr::copy_nonoverlapping(out[p * cw..].as_ptr(), dm.add(p * ldp + i * ld), cw) };
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Bf16, Dst, Rows};
    use crate::backend::cpu::gemm::Epilogue;
    use std::arch::x86_64::*;

    /// `B^T` of F(4, 3) applied to six vectors.
    #[inline(always)]
    unsafe fn bt6(d: [__m512; 6]) -> [__m512; 6] {
        unsafe {
            let (four, five, two) = (_mm512_set1_ps(4.0), _mm512_set1_ps(5.0), _mm512_set1_ps(2.0));
            let d4_d2 = _mm512_sub_ps(d[4], d[2]);
            let d3_d1 = _mm512_sub_ps(d[3], d[1]);
            let d1p2 = _mm512_add_ps(d[1], d[2]);
            let d1m2 = _mm512_sub_ps(d[1], d[2]);
            let d3p4 = _mm512_add_ps(d[3], d[4]);
            let d4m3 = _mm512_sub_ps(d[4], d[3]);
            [
                _mm512_fnmadd_ps(five, d[2], _mm512_fmadd_ps(four, d[0], d[4])),
                _mm512_fnmadd_ps(four, d1p2, d3p4),
                _mm512_fmadd_ps(four, d1m2, d4m3),
                _mm512_fmadd_ps(two, d3_d1, d4_d2),
                _mm512_fnmadd_ps(two, d3_d1, d4_d2),
                _mm512_fnmadd_ps(five, d[3], _mm512_fmadd_ps(four, d[1], d[5])),
            ]
        }
    }

    /// `A^T` of F(4, 3): six vectors to four.
    #[inline(always)]
    unsafe fn at6(v: [__m512; 6]) -> [__m512; 4] {
        unsafe {
            let p12 = _mm512_add_ps(v[1], v[2]);
            let m12 = _mm512_sub_ps(v[1], v[2]);
            let p34 = _mm512_add_ps(v[3], v[4]);
            let m34 = _mm512_sub_ps(v[3], v[4]);
            [
                _mm512_add_ps(_mm512_add_ps(v[0], p12), p34),
                _mm512_fmadd_ps(_mm512_set1_ps(2.0), m34, m12),
                _mm512_fmadd_ps(_mm512_set1_ps(4.0), p34, p12),
                _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0), m34, m12), v[5]),
            ]
        }
    }

    /// `B^T` of F(2, 3) applied to four vectors.
    #[inline(always)]
    unsafe fn bt4(d: [__m512; 4]) -> [__m512; 4] {
        unsafe {
            [_mm512_sub_ps(d[0], d[2]), _mm512_add_ps(d[1], d[2]), _mm512_sub_ps(d[2], d[1]), _mm512_sub_ps(d[1], d[3])]
        }
    }

    /// `A^T` of F(2, 3): four vectors to two.
    #[inline(always)]
    unsafe fn at4(v: [__m512; 4]) -> [__m512; 2] {
        unsafe { [_mm512_add_ps(_mm512_add_ps(v[0], v[1]), v[2]), _mm512_sub_ps(_mm512_sub_ps(v[1], v[2]), v[3])] }
    }

    /// `A` of F(4, 3) (the transpose of `A^T`): four vectors to six.
    #[inline(always)]
    unsafe fn a6(d: [__m512; 4]) -> [__m512; 6] {
        unsafe {
            let (e, o) = (_mm512_add_ps(d[0], d[2]), _mm512_add_ps(d[1], d[3]));
            let e4 = _mm512_fmadd_ps(_mm512_set1_ps(4.0), d[2], d[0]);
            let o4 = _mm512_fmadd_ps(_mm512_set1_ps(8.0), d[3], _mm512_add_ps(d[1], d[1]));
            [d[0], _mm512_add_ps(e, o), _mm512_sub_ps(e, o), _mm512_add_ps(e4, o4), _mm512_sub_ps(e4, o4), d[3]]
        }
    }

    /// `A` of F(2, 3): two vectors to four.
    #[inline(always)]
    unsafe fn a4(d: [__m512; 2]) -> [__m512; 4] {
        unsafe {
            [d[0], _mm512_add_ps(d[0], d[1]), _mm512_sub_ps(d[0], d[1]), _mm512_sub_ps(_mm512_setzero_ps(), d[1])]
        }
    }

    /// Output-gradient transform of one tile, 16 channels at a time: `A dY
    /// A^T`, columns then rows, each result stored into its row of `D_p`.
    ///
    /// # Safety
    /// avx512f; `src` offsets are valid runs of `cw` floats in `dy`; `dm` as in the caller.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // i indexes the columns' rows
    pub(super) unsafe fn grad(
        m: usize,
        dy: &[f32],
        src: &[Option<usize>],
        cw: usize,
        dm: *mut f32,
        ldp: usize,
        ld: usize,
        row: usize,
    ) {
        for c0 in (0..cw).step_by(16) {
            let k = mask(cw - c0);
            // SAFETY: row `row` of D_p has ld >= cw floats; the mask keeps the tail inside.
            let store = |p: usize, o: __m512| unsafe { _mm512_mask_storeu_ps(dm.add(p * ldp + row * ld + c0), k, o) };
            if m == 4 {
                // SAFETY: the caller's contract on src.
                let d: [__m512; 16] = unsafe { patch(Rows::F32(dy), src, c0, k) };
                // SAFETY: register arithmetic.
                let cols: [[__m512; 6]; 4] =
                    std::array::from_fn(|q| unsafe { a6([d[q], d[4 + q], d[8 + q], d[12 + q]]) });
                for i in 0..6 {
                    // SAFETY: register arithmetic.
                    let r = unsafe { a6([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]) };
                    for (j, o) in r.into_iter().enumerate() {
                        store(i * 6 + j, o);
                    }
                }
            } else {
                // SAFETY: the caller's contract on src.
                let d: [__m512; 4] = unsafe { patch(Rows::F32(dy), src, c0, k) };
                // SAFETY: register arithmetic.
                let cols: [[__m512; 4]; 2] = std::array::from_fn(|q| unsafe { a4([d[q], d[2 + q]]) });
                for i in 0..4 {
                    // SAFETY: register arithmetic.
                    let r = unsafe { a4([cols[0][i], cols[1][i]]) };
                    for (j, o) in r.into_iter().enumerate() {
                        store(i * 4 + j, o);
                    }
                }
            }
        }
    }

    fn mask(n: usize) -> __mmask16 {
        if n >= 16 { 0xffff } else { (1u16 << n) - 1 }
    }

    /// Loads the `a x a` patch of 16 channels at `c0` (zero for padding);
    /// built element by element, since a zeroed array first costs a memset.
    ///
    /// # Safety
    /// avx512f; every `Some` offset plus `c0` starts `mask`'s lanes inside `x`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn patch<const N: usize>(x: Rows<'_>, src: &[Option<usize>], c0: usize, k: __mmask16) -> [__m512; N] {
        match x {
            Rows::F32(x) => std::array::from_fn(|p| match src[p] {
                // SAFETY: the caller's contract.
                Some(o) => unsafe { _mm512_maskz_loadu_ps(k, x.as_ptr().add(o + c0)) },
                None => _mm512_setzero_ps(),
            }),
            Rows::Bf16(x) => std::array::from_fn(|p| match src[p] {
                Some(o) => {
                    let h = if k == 0xffff {
                        // SAFETY: the caller's contract: 16 values from o + c0.
                        unsafe { _mm256_loadu_si256(x.as_ptr().add(o + c0).cast()) }
                    } else {
                        // A short tail: through a buffer, not past the end of `x`.
                        let mut t = [Bf16::default(); 16];
                        let n = k.count_ones() as usize;
                        t[..n].copy_from_slice(&x[o + c0..o + c0 + n]);
                        // SAFETY: t holds 16 values.
                        unsafe { _mm256_loadu_si256(t.as_ptr().cast()) }
                    };
                    // bf16 to f32: the 16 bits become the upper half.
                    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                }
                None => _mm512_setzero_ps(),
            }),
        }
    }

    /// Input transform of one tile, 16 channels at a time: `B^T d B`, columns
    /// then rows, each result stored straight into its row of `V_p`.
    ///
    /// # Safety
    /// avx512f; `src` offsets are valid runs of `c` floats in `x`; `v` as in the caller.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)] // q indexes the columns' rows
    pub(super) unsafe fn input(
        m: usize,
        x: Rows<'_>,
        src: &[Option<usize>],
        c: usize,
        v: *mut f32,
        ldp: usize,
        i: usize,
    ) {
        for c0 in (0..c).step_by(16) {
            let k = mask(c - c0);
            // SAFETY: row i of V_p has c floats; the mask keeps the tail inside.
            let store = |p: usize, o: __m512| unsafe { _mm512_mask_storeu_ps(v.add(p * ldp + i * c + c0), k, o) };
            if m == 4 {
                // SAFETY: the caller's contract on src.
                let d: [__m512; 36] = unsafe { patch(x, src, c0, k) };
                // cols[j] = B^T applied to column j of the patch.
                // SAFETY: register arithmetic.
                let cols: [[__m512; 6]; 6] = std::array::from_fn(|j| unsafe {
                    bt6([d[j], d[6 + j], d[12 + j], d[18 + j], d[24 + j], d[30 + j]])
                });
                for q in 0..6 {
                    // SAFETY: register arithmetic.
                    let r = unsafe { bt6([cols[0][q], cols[1][q], cols[2][q], cols[3][q], cols[4][q], cols[5][q]]) };
                    for (j, o) in r.into_iter().enumerate() {
                        store(q * 6 + j, o);
                    }
                }
            } else {
                // SAFETY: the caller's contract on src.
                let d: [__m512; 16] = unsafe { patch(x, src, c0, k) };
                // SAFETY: register arithmetic.
                let cols: [[__m512; 4]; 4] =
                    std::array::from_fn(|j| unsafe { bt4([d[j], d[4 + j], d[8 + j], d[12 + j]]) });
                for q in 0..4 {
                    // SAFETY: register arithmetic.
                    let r = unsafe { bt4([cols[0][q], cols[1][q], cols[2][q], cols[3][q]]) };
                    for (j, o) in r.into_iter().enumerate() {
                        store(q * 4 + j, o);
                    }
                }
            }
        }
    }

    /// Output transform of one tile with the epilogue, 16 channels at a time:
    /// `A^T M A`, columns then rows, each pixel sent through the epilogue as
    /// it is produced.
    ///
    /// # Safety
    /// avx512f; the caller owns these pixels and channels of `y`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // rr indexes the columns' rows
    pub(super) unsafe fn output(
        m: usize,
        mm: &[f32],
        ldp: usize,
        i: usize,
        ldm: usize,
        c0: usize,
        cols: usize,
        co: usize,
        dst: &[Option<usize>],
        y: Dst,
        e: &Epilogue<'_>,
    ) {
        for j0 in (0..cols).step_by(16) {
            let k = mask(cols - j0);
            // SAFETY: row i of M_p has ldm >= cols floats.
            let load = |p: usize| unsafe { _mm512_maskz_loadu_ps(k, mm.as_ptr().add(p * ldp + i * ldm + j0)) };
            let ch = c0 + j0;
            let emit = |kk: usize, x: __m512| {
                let Some(px) = dst[kk] else { return };
                // SAFETY: pixel px, channels ch.. (masked) are inside y and the epilogue slices.
                unsafe { epilogue(y, px * co + ch, k, x, e, px, ch) }
            };
            if m == 4 {
                let v: [__m512; 36] = std::array::from_fn(load);
                // SAFETY: register arithmetic.
                let cols: [[__m512; 4]; 6] = std::array::from_fn(|q| unsafe {
                    at6([v[q], v[6 + q], v[12 + q], v[18 + q], v[24 + q], v[30 + q]])
                });
                for rr in 0..4 {
                    // SAFETY: register arithmetic.
                    let r =
                        unsafe { at6([cols[0][rr], cols[1][rr], cols[2][rr], cols[3][rr], cols[4][rr], cols[5][rr]]) };
                    for (q, x) in r.into_iter().enumerate() {
                        emit(rr * 4 + q, x);
                    }
                }
            } else {
                let v: [__m512; 16] = std::array::from_fn(load);
                // SAFETY: register arithmetic.
                let cols: [[__m512; 2]; 4] =
                    std::array::from_fn(|q| unsafe { at4([v[q], v[4 + q], v[8 + q], v[12 + q]]) });
                for rr in 0..2 {
                    // SAFETY: register arithmetic.
                    let r = unsafe { at4([cols[0][rr], cols[1][rr], cols[2][rr], cols[3][rr]]) };
                    for (q, x) in r.into_iter().enumerate() {
                        emit(rr * 2 + q, x);
                    }
                }
            }
        }
    }

    /// Applies the epilogue to one pixel's masked lanes and stores them at `o`.
    ///
    /// # Safety
    /// avx512f; `o` and the epilogue's slices hold the masked lanes at this
    /// pixel and channel.
    #[inline]
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn epilogue(y: Dst, idx: usize, k: __mmask16, mut x: __m512, e: &Epilogue<'_>, px: usize, ch: usize) {
        // SAFETY: the caller's contract.
        unsafe {
            if e.accumulate {
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(k, y.ptr.add(idx)));
            }
            if let Some(s) = e.scale {
                x = _mm512_mul_ps(x, _mm512_maskz_loadu_ps(k, s.as_ptr().add(ch)));
            }
            if let Some(b) = e.bias {
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(k, b.as_ptr().add(ch)));
            }
            if let Some((res, ld)) = e.residual {
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(k, res.as_ptr().add(px * ld + ch)));
            }
            if e.relu {
                x = _mm512_max_ps(x, _mm512_setzero_ps());
            }
            if y.bf16 {
                // Round to nearest, ties to even (as `Bf16::from_f32`), then
                // keep the upper halves.
                let b = _mm512_castps_si512(x);
                let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
                let r = _mm512_srli_epi32::<16>(_mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))));
                _mm512_mask_cvtepi32_storeu_epi16(y.ptr.cast::<Bf16>().add(idx).cast(), k, r);
            } else {
                _mm512_mask_storeu_ps(y.ptr.add(idx), k, x);
            }
        }
    }
}

/// `out[i][j][:] = sum_k mat[i][k] * inp[k][j][:]` for an `rows x k` matrix.
#[inline(always)]
fn transform_rows(mat: &[f32], rows: usize, k: usize, inp: &[f32], out: &mut [f32], c: usize) {
    let cols = inp.len() / (k * c);
    for i in 0..rows {
        for j in 0..cols {
            let o = &mut out[(i * cols + j) * c..][..c];
            o.fill(0.0);
            for kk in 0..k {
                let coef = mat[i * k + kk];
                if coef != 0.0 {
                    for (ov, &iv) in o.iter_mut().zip(&inp[(kk * cols + j) * c..][..c]) {
                        *ov += coef * iv;
                    }
                }
            }
        }
    }
}

/// `out[i][j][:] = sum_k inp[i][k][:] * mat[j][k]` (right-multiply by `mat^T`).
#[inline(always)]
fn transform_cols(mat: &[f32], cols: usize, k: usize, inp: &[f32], out: &mut [f32], c: usize) {
    let rows = inp.len() / (k * c);
    for i in 0..rows {
        for j in 0..cols {
            let o = &mut out[(i * cols + j) * c..][..c];
            o.fill(0.0);
            for kk in 0..k {
                let coef = mat[j * k + kk];
                if coef != 0.0 {
                    for (ov, &iv) in o.iter_mut().zip(&inp[(i * k + kk) * c..][..c]) {
                        *ov += coef * iv;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every cut of the work (spans of tiles, groups of panels, spans of
    /// several blocks with a partial last block) writes the same output as one
    /// block per task, and the same batch statistics.
    #[test]
    fn every_cut_gives_the_same_output() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rand = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 + 0.5
                })
                .collect()
        };
        for (m, n, h, ci, co) in [(4, 1, 28, 40, 72), (2, 2, 13, 24, 40), (4, 3, 9, 16, 16)] {
            let d = ConvDesc {
                n,
                h,
                w: h,
                c_in: ci,
                c_out: co,
                kernel: [3, 3],
                stride: [1, 1],
                pad: [1, 1],
                dilation: [1, 1],
                groups: 1,
            };
            let (x, w, res) = (rand(d.in_len()), rand(d.weight_len()), rand(d.out_len()));
            let mut f = WinogradFilter::default();
            prepare(m, &w, co, ci, FilterSource::Forward, &mut f);
            let bias = rand(co);
            let epi = Epilogue { bias: Some(&bias), residual: Some((&res, co)), relu: true, ..Default::default() };
            let tiles = Grid::new(&d, m).count;
            let run = |cut: (usize, usize), stats: bool| {
                let mut y = vec![0.0f32; d.out_len()];
                let mut st = vec![0.0f32; 2 * co];
                let dst = Dst { ptr: y.as_mut_ptr(), bf16: false };
                forward_cut(&d, Rows::F32(&x), &f, dst, &epi, stats.then_some(&mut st[..]), cut);
                (y, st)
            };
            let (want, want_stats) = run((MR, 1), true);
            for cut in [(tiles, 1), (tiles, 2), (tiles, 3), (tiles.div_ceil(2), 1), (5, 2), (25, 4), (1, 1), (30, 5)] {
                let (y, st) = run(cut, true);
                assert!(y == want, "F({m}, 3) {d:?}, cut {cut:?}: outputs differ");
                assert!(st == want_stats, "cut {cut:?}: statistics differ");
                assert!(run(cut, false).0 == want, "cut {cut:?} without statistics");
            }
        }
    }

    #[test]
    fn output_gradient_matrix_is_the_transpose() {
        for t in [&F2, &F4] {
            for i in 0..t.a {
                for r in 0..t.m {
                    assert_eq!(t.am[i * t.m + r], t.at[r * t.a + i], "F({}, 3): A[{i}][{r}]", t.m);
                }
            }
        }
    }
}
