//! The forward pass of a Winograd layer: tiles cut into spans and blocks,
//! transformed in, multiplied point by point, transformed out.

use rayon::prelude::*;

use super::transform::offsets;
use super::transform::{input_transform, output_transform};
use super::{Dst, Grid, SCRATCH, Scratch, SyncPtr, Transforms, WinogradFilter, grow, point_stride, transforms};
use crate::backend::cpu::direct::Rows;
use crate::backend::cpu::gemm::Epilogue;
use crate::backend::cpu::kernel;
use crate::backend::cpu::mem::AlignedVec;
use crate::backend::cpu::tile::{self, MR};
use crate::backend::{Bf16, ConvDesc};

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

fn forward_to(d: &ConvDesc, x: Rows<'_>, f: &WinogradFilter, y: Dst, epi: &Epilogue<'_>, stats: Option<&mut [f32]>) {
    let t = transforms(f.m);
    let tiles = Grid::new(d, t.m).count;
    let cut = split(t.a * t.a, d.c_in, d.c_out, tiles, rayon::current_num_threads());
    forward_cut(d, x, f, y, epi, stats, cut);
}

/// [`forward_to`] cut into spans of `span_len` tiles times `groups` groups of
/// output-channel panels (see [`split`]).
pub(super) fn forward_cut(
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
    let np = d.c_out.div_ceil(tile::NR);
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
        let mut all = crate::backend::cpu::norm::Moments::new(co);
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
pub(super) fn split(aa: usize, ci: usize, co: usize, tiles: usize, threads: usize) -> (usize, usize) {
    let np = co.div_ceil(tile::NR);
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
    let zero = tile::zeros(ci);
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
    let c0 = panels.start * tile::NR;
    let cols = (panels.end * tile::NR).min(d.c_out) - c0;
    let ldm = cols.next_multiple_of(tile::NR);
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
pub(super) unsafe fn products(
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
        let nr = tile::NR.min(co - q * tile::NR);
        let col = (q - panels.start) * tile::NR;
        let pair = q + 1 < panels.end;
        for (rows_in, rows_out) in blocks {
            let rows_in = std::slice::from_ref(rows_in);
            // SAFETY: the caller's contract; panels hold ci * NR floats.
            unsafe {
                if pair {
                    let nr1 = tile::NR.min(co - (q + 1) * tile::NR);
                    kernel::tile2(rows_in, ci, f.panel(p, q), f.panel(p, q + 1), *rows_out, col, nr, nr1, &none);
                } else {
                    kernel::tile(rows_in, ci, f.panel(p, q), *rows_out, col, nr, &none);
                }
            }
        }
        q += if pair { 2 } else { 1 };
    }
}

/// One block of `nt <= MR` tiles starting at tile `t0`, for the
/// output-channel panels `panels`: [`span`] for a single block, with the
/// products' rows built once per position and no list of blocks: small
/// training layers make many short kernel calls, and there the bookkeeping
/// of `span` shows (ARCHITECTURE.md, "Winograd").
///
/// # Safety
/// `y` is the output tensor; no other task writes these tiles' pixels in
/// these channels.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block(
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
    let zero = tile::zeros(ci);
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
            let nr = tile::NR.min(co - q * tile::NR);
            let col = (q - panels.start) * tile::NR;
            let u = |q: usize| f.panel(p, q);
            // SAFETY: input rows hold ci floats (or are the zero row); panels hold
            // ci * NR floats; output rows have room for the columns written.
            unsafe {
                if q + 1 < panels.end {
                    let nr1 = tile::NR.min(co - (q + 1) * tile::NR);
                    kernel::tile2(&[rows_in], ci, u(q), u(q + 1), rows_out, col, nr, nr1, &none);
                    q += 2;
                } else {
                    kernel::tile(&[rows_in], ci, u(q), rows_out, col, nr, &none);
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
