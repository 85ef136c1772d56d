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

use rayon::prelude::*;

use super::direct::{self, MR, Panels, Taps};
use super::gemm::Epilogue;
use crate::backend::ConvDesc;

/// The transforms of one `F(m, 3)`.
struct Transforms {
    m: usize,
    a: usize,
    bt: &'static [f32],
    g: &'static [f32],
    at: &'static [f32],
}

/// `F(2, 3)`: interpolation points 0, 1, -1, infinity.
const F2: Transforms = Transforms {
    m: 2,
    a: 4,
    bt: &[1., 0., -1., 0., 0., 1., 1., 0., 0., -1., 1., 0., 0., 1., 0., -1.],
    g: &[1., 0., 0., 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0., 0., 1.],
    at: &[1., 1., 1., 0., 0., 1., -1., -1.],
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
};

fn transforms(m: usize) -> &'static Transforms {
    if m == 4 { &F4 } else { &F2 }
}

/// Whether a convolution can run as Winograd: 3x3, stride 1, dilation 1,
/// one group, padding at most 1 (the ResNets' 3x3 layers).
pub fn applicable(d: &ConvDesc) -> bool {
    d.kernel == [3, 3] && d.stride == [1, 1] && d.dilation == [1, 1] && d.groups == 1 && d.pad[0] <= 1 && d.pad[1] <= 1
}

/// A filter transformed for `F(m, 3)`: one set of panels per transform point.
#[derive(Debug, Default)]
pub struct WinogradFilter {
    /// Output tile side (2 or 4); 0 when empty.
    pub m: usize,
    points: Vec<Panels>,
    c_in: usize,
    c_out: usize,
}

/// Transforms OHWI 3x3 weights `w[c_out][3][3][c_in]`.
pub fn prepare(m: usize, w: &[f32], c_out: usize, c_in: usize, out: &mut WinogradFilter) {
    let t = transforms(m);
    let a = t.a;
    // u[co][p][ci] first (each output channel independently, in parallel), then per point.
    let mut u_co = vec![0.0f32; c_out * a * a * c_in];
    u_co.par_chunks_mut(a * a * c_in).enumerate().for_each(|(co, uc)| {
        let mut tmp = vec![0.0f64; a * 3];
        for ci in 0..c_in {
            let g = |ky: usize, kx: usize| w[((co * 3 + ky) * 3 + kx) * c_in + ci] as f64;
            // tmp = G g (a x 3), then U = tmp G^T (a x a); in f64, rounded once.
            for i in 0..a {
                for kx in 0..3 {
                    tmp[i * 3 + kx] = (0..3).map(|ky| t.g[i * 3 + ky] as f64 * g(ky, kx)).sum();
                }
            }
            for i in 0..a {
                for j in 0..a {
                    let v: f64 = (0..3).map(|kx| tmp[i * 3 + kx] * t.g[j * 3 + kx] as f64).sum();
                    uc[(i * a + j) * c_in + ci] = v as f32;
                }
            }
        }
    });
    let mut u = vec![0.0f32; a * a * c_out * c_in];
    for co in 0..c_out {
        for p in 0..a * a {
            u[(p * c_out + co) * c_in..][..c_in].copy_from_slice(&u_co[(co * a * a + p) * c_in..][..c_in]);
        }
    }
    out.m = m;
    out.c_in = c_in;
    out.c_out = c_out;
    out.points.resize_with(a * a, Panels::default);
    for (p, panels) in out.points.iter_mut().enumerate() {
        panels.pack(&u[p * c_out * c_in..(p + 1) * c_out * c_in], c_out, c_in, c_in);
    }
}

/// Rows of a row-major matrix as one-tap windows for the indirect kernel.
struct Rows<'a> {
    data: &'a [f32],
    rows: usize,
    k: usize,
}

impl Taps for Rows<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn taps(&self) -> usize {
        1
    }
    fn klen(&self) -> usize {
        self.k
    }
    fn fill(&self, m0: usize, zero: *const f32, out: &mut [[*const f32; MR]]) {
        for (i, slot) in out[0].iter_mut().enumerate() {
            *slot = if m0 + i < self.rows { self.data[(m0 + i) * self.k..].as_ptr() } else { zero };
        }
    }
    fn fill_tap(&self, m0: usize, count: usize, _t: usize, _zero: *const f32, out: &mut Vec<*const f32>) {
        out.extend((m0..m0 + count).map(|m| self.data[m * self.k..].as_ptr()));
    }
}

/// Tiles per chunk: the transformed input of a chunk (`a^2 x tiles x c_in`)
/// is kept to about 4 MB.
fn chunk_tiles(a: usize, c: usize) -> usize {
    ((1 << 20) / (a * a * c.max(1))).clamp(MR, 4096) / MR * MR
}

/// Reusable per-call buffers.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    mm: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
    /// Per-thread tile buffers (no rayon call happens while one is borrowed).
    static TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `input_tile` compiled for AVX-512 when the CPU has it.
///
/// # Safety
/// As `input_tile`.
#[allow(clippy::too_many_arguments)]
unsafe fn input_tile_dispatch(
    t: &Transforms,
    d: &ConvDesc,
    x: &[f32],
    n: usize,
    oy: usize,
    ox: usize,
    v: *mut f32,
    i: usize,
    chunk: usize,
    buf: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if super::gemm::isa() == super::gemm::Isa::Avx512 {
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn wide(
            t: &Transforms,
            d: &ConvDesc,
            x: &[f32],
            n: usize,
            oy: usize,
            ox: usize,
            v: *mut f32,
            i: usize,
            chunk: usize,
            buf: &mut Vec<f32>,
        ) {
            // SAFETY: forwarded contract.
            unsafe { input_tile(t, d, x, n, oy, ox, v, i, chunk, buf) }
        }
        // SAFETY: the CPU has avx512f; the rest is the caller's contract.
        return unsafe { wide(t, d, x, n, oy, ox, v, i, chunk, buf) };
    }
    // SAFETY: the caller's contract.
    unsafe { input_tile(t, d, x, n, oy, ox, v, i, chunk, buf) }
}

/// Runs `output_tile` compiled for AVX-512 when the CPU has it.
///
/// # Safety
/// As `output_tile`.
#[allow(clippy::too_many_arguments)]
unsafe fn output_tile_dispatch(
    t: &Transforms,
    d: &ConvDesc,
    mm: &[f32],
    i: usize,
    chunk: usize,
    n: usize,
    oy: usize,
    ox: usize,
    y: *mut f32,
    e: &Epilogue<'_>,
    buf: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if super::gemm::isa() == super::gemm::Isa::Avx512 {
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn wide(
            t: &Transforms,
            d: &ConvDesc,
            mm: &[f32],
            i: usize,
            chunk: usize,
            n: usize,
            oy: usize,
            ox: usize,
            y: *mut f32,
            e: &Epilogue<'_>,
            buf: &mut Vec<f32>,
        ) {
            // SAFETY: forwarded contract.
            unsafe { output_tile(t, d, mm, i, chunk, n, oy, ox, y, e, buf) }
        }
        // SAFETY: the CPU has avx512f; the rest is the caller's contract.
        return unsafe { wide(t, d, mm, i, chunk, n, oy, ox, y, e, buf) };
    }
    // SAFETY: the caller's contract.
    unsafe { output_tile(t, d, mm, i, chunk, n, oy, ox, y, e, buf) }
}

/// `y = epilogue(conv3x3(x))` by Winograd (see [`applicable`]).
pub fn forward(d: &ConvDesc, x: &[f32], f: &WinogradFilter, y: &mut [f32], epi: &Epilogue<'_>) {
    let t = transforms(f.m);
    let (m, a) = (t.m, t.a);
    let (oh, ow) = (d.out_h(), d.out_w());
    let (th, tw) = (oh.div_ceil(m), ow.div_ceil(m));
    let tiles = d.n * th * tw;
    let (ci, co) = (d.c_in, d.c_out);
    let chunk = chunk_tiles(a, ci.max(co)).min(tiles.div_ceil(MR) * MR);
    // Take the scratch out of the thread-local so rayon calls below are free to run anywhere.
    let mut s = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    s.v.resize(a * a * chunk * ci, 0.0);
    s.mm.resize(a * a * chunk * co, 0.0);
    for t0 in (0..tiles).step_by(chunk) {
        let nt = chunk.min(tiles - t0);
        // 1. Input transform, tile by tile.
        let v_ptr = SyncPtr(s.v.as_mut_ptr());
        (0..nt).into_par_iter().with_min_len(8).for_each(|i| {
            let tile = t0 + i;
            let (n, ty, tx) = (tile / (th * tw), (tile / tw) % th, tile % tw);
            TILE.with(|buf| {
                let mut buf = buf.borrow_mut();
                // SAFETY: tile i writes only its own rows of every V_p; the ISA check guards AVX-512.
                unsafe { input_tile_dispatch(t, d, x, n, ty * m, tx * m, v_ptr.get(), i, chunk, &mut buf) };
            });
        });
        // 2. One product per transform point.
        for p in 0..a * a {
            let rows = Rows { data: &s.v[p * chunk * ci..(p + 1) * chunk * ci], rows: nt, k: ci };
            let out = &mut s.mm[p * chunk * co..(p + 1) * chunk * co];
            direct::run(&rows, &f.points[p], out, co, 0, &Epilogue::default(), None);
        }
        // 3. Output transform with the epilogue.
        let y_ptr = SyncPtr(y.as_mut_ptr());
        let mm = &s.mm;
        (0..nt).into_par_iter().with_min_len(8).for_each(|i| {
            let tile = t0 + i;
            let (n, ty, tx) = (tile / (th * tw), (tile / tw) % th, tile % tw);
            TILE.with(|buf| {
                let mut buf = buf.borrow_mut();
                // SAFETY: each tile writes its own m x m output pixels; the ISA check guards AVX-512.
                unsafe { output_tile_dispatch(t, d, mm, i, chunk, n, ty * m, tx * m, y_ptr.get(), epi, &mut buf) };
            });
        });
    }
    SCRATCH.with(|c| *c.borrow_mut() = s);
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: every task writes a disjoint part of the buffer (see the callers).
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Transforms the input tile whose output corner is `(oy, ox)` of image `n`
/// into row `i` of every `V_p` (`V_p` is `chunk x c_in`).
///
/// # Safety
/// `v` holds `a^2 * chunk * c_in` floats and no other thread writes row `i`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn input_tile(
    t: &Transforms,
    d: &ConvDesc,
    x: &[f32],
    n: usize,
    oy: usize,
    ox: usize,
    v: *mut f32,
    i: usize,
    chunk: usize,
    buf: &mut Vec<f32>,
) {
    let (a, c) = (t.a, d.c_in);
    buf.resize(3 * a * a * c, 0.0);
    let (dbuf, rest) = buf.split_at_mut(a * a * c);
    let (tmp, out) = rest.split_at_mut(a * a * c);
    dbuf.fill(0.0);
    for r in 0..a {
        let iy = (oy + r) as isize - d.pad[0] as isize;
        if iy < 0 || iy >= d.h as isize {
            continue;
        }
        for q in 0..a {
            let ix = (ox + q) as isize - d.pad[1] as isize;
            if ix < 0 || ix >= d.w as isize {
                continue;
            }
            let src = ((n * d.h + iy as usize) * d.w + ix as usize) * c;
            dbuf[(r * a + q) * c..][..c].copy_from_slice(&x[src..src + c]);
        }
    }
    // tmp = B^T d (rows), then V = tmp B (columns), channel vectors at a time.
    transform_rows(t.bt, a, a, dbuf, tmp, c);
    transform_cols(t.bt, a, a, tmp, out, c);
    for p in 0..a * a {
        // SAFETY: row i of V_p lies inside v (caller contract).
        unsafe { std::ptr::copy_nonoverlapping(out[p * c..].as_ptr(), v.add((p * chunk + i) * c), c) };
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

/// Output transform of tile `i` into the `m x m` pixels at `(oy, ox)`.
///
/// # Safety
/// `y` is the output tensor; no other thread writes these pixels.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn output_tile(
    t: &Transforms,
    d: &ConvDesc,
    mm: &[f32],
    i: usize,
    chunk: usize,
    n: usize,
    oy: usize,
    ox: usize,
    y: *mut f32,
    e: &Epilogue<'_>,
    buf: &mut Vec<f32>,
) {
    let (a, m, c) = (t.a, t.m, d.c_out);
    let (oh, ow) = (d.out_h(), d.out_w());
    buf.resize((a * a + m * a + m * m) * c, 0.0);
    let (inp, rest) = buf.split_at_mut(a * a * c);
    let (tmp, out) = rest.split_at_mut(m * a * c);
    for p in 0..a * a {
        inp[p * c..][..c].copy_from_slice(&mm[(p * chunk + i) * c..][..c]);
    }
    // tmp = A^T M (m x a), Y = tmp A (m x m).
    transform_rows(t.at, m, a, inp, tmp, c);
    transform_cols(t.at, m, a, tmp, out, c);
    for r in 0..m {
        for q in 0..m {
            let (py, px) = (oy + r, ox + q);
            if py >= oh || px >= ow {
                continue;
            }
            let pix = (n * oh + py) * ow + px;
            let src = &out[(r * m + q) * c..][..c];
            // SAFETY: pixel (py, px) of image n is inside y and owned by this tile.
            let dst = unsafe { std::slice::from_raw_parts_mut(y.add(pix * c), c) };
            for (k, (o, &v)) in dst.iter_mut().zip(src).enumerate() {
                let mut x = if e.accumulate { *o + v } else { v };
                if let Some(s) = e.scale {
                    x *= s[k];
                }
                if let Some(b) = e.bias {
                    x += b[k];
                }
                if let Some((res, ld)) = e.residual {
                    x += res[pix * ld + k];
                }
                if e.relu && x < 0.0 {
                    x = 0.0;
                }
                *o = x;
            }
        }
    }
}
