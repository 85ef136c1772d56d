//! The input and output transforms of tiles (and of output-gradient tiles
//! for the filter gradient), vectorised along channels.

use super::Transforms;
#[cfg(target_arch = "x86_64")]
use super::x86;
use super::{Dst, Grid};
use crate::backend::ConvDesc;
use crate::backend::cpu::direct::Rows;
use crate::backend::cpu::gemm::Epilogue;
use crate::backend::cpu::mem::AlignedVec;

/// The offsets of a `side x side` patch with its corner at `(y, x)` in image
/// `n` of an NHWC tensor with `c` channels per pixel (plus `c0`), row-major,
/// `None` for pixels outside the image and for entries past `side^2`; the
/// side is made a constant so that the loops unroll.
#[inline(always)]
pub(super) fn offsets<const N: usize>(
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
pub(super) unsafe fn input_transform(
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
    if crate::backend::cpu::gemm::isa() == crate::backend::cpu::gemm::Isa::Avx512 {
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
pub(super) unsafe fn output_transform(
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
    if crate::backend::cpu::gemm::isa() == crate::backend::cpu::gemm::Isa::Avx512 {
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

/// Transforms the output-gradient tile at `(oy, ox)` of image `n`, channels
/// `cols`, into row `i` of every `D_p` (`dM = A dY A^T`; rows of stride `ld`,
/// `D_p` starting `ldp` floats after `D_{p-1}`); pixels past the output's edge
/// count as zero.
///
/// # Safety
/// `dm` holds `a^2 * ldp` floats, `(i + 1) * ld <= ldp` and `cols.len() <= ld`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn grad_transform(
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
    if crate::backend::cpu::gemm::isa() == crate::backend::cpu::gemm::Isa::Avx512 {
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
