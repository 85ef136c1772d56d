//! Convolutions as implicit GEMMs over NHWC data.
//!
//! * forward: `y[m, co] = sum_k window(x)[m, k] * w[co, k]`, rows `m` are
//!   output pixels, `k = (ky, kx, ci)`;
//! * backward-data (gather form, no scatter, any stride):
//!   `dx[m', ci] = sum_k' window(dy)[m', k'] * w[co, ky, kx, ci]`, rows `m'`
//!   are input pixels and `k' = (ky, kx, co)`; a tap contributes only where
//!   `(iy + pad - ky * dil)` is a multiple of the stride;
//! * backward-filter: `dw[co, k] += sum_m dy[m, co] * window(x)[m, k]`, the
//!   reduction over pixels split across threads in a fixed way.
//!
//! The window never exists in memory: [`Window`] packs GEMM panels straight
//! from the image.

use rayon::prelude::*;

use super::gemm::{self, BSource, Epilogue, KC, Operand, OutMat, PackedB, Strided};
use crate::backend::ConvDesc;

/// A sliding-window view of one group of channels of an NHWC image, seen as a
/// matrix with one row per destination pixel and one column per
/// `(ky, kx, channel)` tap.
///
/// The source pixel of destination pixel `(y, x)` at tap `(ky, kx)` is
/// `((y * mul + add + ky * tap) / div)` along each axis, and exists only when
/// the division is exact and the result is inside the image.
#[derive(Clone, Copy)]
pub struct Window<'a> {
    src: &'a [f32],
    src_h: usize,
    src_w: usize,
    /// Channels per source pixel (the row stride of the NHWC image).
    src_c: usize,
    /// First channel of the group.
    c_off: usize,
    /// Channels per tap.
    c_len: usize,
    dst_h: usize,
    dst_w: usize,
    kw: usize,
    mul: [isize; 2],
    add: [isize; 2],
    tap: [isize; 2],
    div: [isize; 2],
}

impl Window<'_> {
    /// Source coordinate along one axis, or None when outside or inexact.
    #[inline(always)]
    fn coord(&self, axis: usize, dst: usize, k: usize, size: usize) -> Option<usize> {
        let num = dst as isize * self.mul[axis] + self.add[axis] + k as isize * self.tap[axis];
        let d = self.div[axis];
        if num < 0 || num % d != 0 {
            return None;
        }
        let v = (num / d) as usize;
        (v < size).then_some(v)
    }

    /// Offset of the first channel of the group at the source pixel of
    /// destination row `m`, tap `(ky, kx)`, or None for a zero tap.
    #[inline(always)]
    fn src_offset(&self, m: usize, ky: usize, kx: usize) -> Option<usize> {
        let x = m % self.dst_w;
        let y = (m / self.dst_w) % self.dst_h;
        let n = m / (self.dst_w * self.dst_h);
        let sy = self.coord(0, y, ky, self.src_h)?;
        let sx = self.coord(1, x, kx, self.src_w)?;
        Some(((n * self.src_h + sy) * self.src_w + sx) * self.src_c + self.c_off)
    }

    /// Calls `f(offset_in_k, tap_source, channel_start, run_len)` for each run
    /// of consecutive channels that `k0..k0 + kc` covers for row `m`.
    #[inline(always)]
    fn for_runs(&self, m: usize, k0: usize, kc: usize, mut f: impl FnMut(usize, Option<usize>, usize, usize)) {
        let mut k = k0;
        let end = k0 + kc;
        while k < end {
            let tap = k / self.c_len;
            let ci = k % self.c_len;
            let run = (self.c_len - ci).min(end - k);
            let src = self.src_offset(m, tap / self.kw, tap % self.kw);
            f(k - k0, src, ci, run);
            k += run;
        }
    }
}

/// The window as the `A` operand: rows are destination pixels.
impl Operand for Window<'_> {
    fn pack(&self, row0: usize, rows: usize, k0: usize, kc: usize, width: usize, dst: &mut [f32]) {
        let panels = rows.div_ceil(width);
        for p in 0..panels {
            let out = &mut dst[p * kc * width..(p + 1) * kc * width];
            let r_begin = row0 + p * width;
            let n = width.min(row0 + rows - r_begin);
            for r in 0..n {
                self.for_runs(r_begin + r, k0, kc, |at, src, ci, run| match src {
                    Some(s) => {
                        let s = &self.src[s + ci..s + ci + run];
                        for (j, &v) in s.iter().enumerate() {
                            out[(at + j) * width + r] = v;
                        }
                    }
                    None => {
                        for j in 0..run {
                            out[(at + j) * width + r] = 0.0;
                        }
                    }
                });
            }
            if n < width {
                for kk in 0..kc {
                    out[kk * width + n..(kk + 1) * width].fill(0.0);
                }
            }
        }
    }
}

/// The window transposed, as the `B` operand of the filter gradient: rows are
/// taps `(ky, kx, ci)`, the reduction runs over destination pixels `m0..`.
struct WindowT<'a> {
    w: Window<'a>,
    m0: usize,
}

impl Operand for WindowT<'_> {
    fn pack(&self, row0: usize, rows: usize, k0: usize, kc: usize, width: usize, dst: &mut [f32]) {
        let w = &self.w;
        let panels = rows.div_ceil(width);
        for p in 0..panels {
            let out = &mut dst[p * kc * width..(p + 1) * kc * width];
            let t_begin = row0 + p * width;
            let n = width.min(row0 + rows - t_begin);
            for kk in 0..kc {
                let o = &mut out[kk * width..(kk + 1) * width];
                w.for_runs(self.m0 + k0 + kk, t_begin, n, |at, src, ci, run| match src {
                    Some(s) => o[at..at + run].copy_from_slice(&w.src[s + ci..s + ci + run]),
                    None => o[at..at + run].fill(0.0),
                });
                o[n..].fill(0.0);
            }
        }
    }
}

/// Forward window: output pixels over input `x`, group `g`.
fn forward_window<'a>(d: &ConvDesc, x: &'a [f32], g: usize) -> Window<'a> {
    Window {
        src: x,
        src_h: d.h,
        src_w: d.w,
        src_c: d.c_in,
        c_off: g * d.cin_g(),
        c_len: d.cin_g(),
        dst_h: d.out_h(),
        dst_w: d.out_w(),
        kw: d.kernel[1],
        mul: [d.stride[0] as isize, d.stride[1] as isize],
        add: [-(d.pad[0] as isize), -(d.pad[1] as isize)],
        tap: [d.dilation[0] as isize, d.dilation[1] as isize],
        div: [1, 1],
    }
}

/// Backward-data window: input pixels over output gradient `dy`, group `g`.
fn backward_window<'a>(d: &ConvDesc, dy: &'a [f32], g: usize) -> Window<'a> {
    Window {
        src: dy,
        src_h: d.out_h(),
        src_w: d.out_w(),
        src_c: d.c_out,
        c_off: g * d.cout_g(),
        c_len: d.cout_g(),
        dst_h: d.h,
        dst_w: d.w,
        kw: d.kernel[1],
        mul: [1, 1],
        add: [d.pad[0] as isize, d.pad[1] as isize],
        tap: [-(d.dilation[0] as isize), -(d.dilation[1] as isize)],
        div: [d.stride[0] as isize, d.stride[1] as isize],
    }
}

/// A filter packed for the CPU GEMM: one packed `B` per group.
#[derive(Debug, Default)]
pub struct CpuFilter {
    groups: Vec<PackedB>,
    scratch: Vec<f32>,
}

/// Packs OHWI weights for the forward GEMM: `B[k, co] = w[co, k]` per group.
pub fn prepare_forward(d: &ConvDesc, w: &[f32], out: &mut CpuFilter) {
    let (kl, cg) = (d.k_len(), d.cout_g());
    out.groups.resize_with(d.groups, PackedB::default);
    for (g, pb) in out.groups.iter_mut().enumerate() {
        let wg = &w[g * cg * kl..(g + 1) * cg * kl];
        pb.pack(&Strided { data: wg, row_stride: kl, k_stride: 1 }, cg, kl);
    }
}

/// Packs OHWI weights for the backward-data GEMM:
/// `B[(ky, kx, co), ci] = w[co, ky, kx, ci]` per group.
pub fn prepare_backward_data(d: &ConvDesc, w: &[f32], out: &mut CpuFilter) {
    let (kl, cg, cig) = (d.k_len(), d.cout_g(), d.cin_g());
    let taps = d.kernel[0] * d.kernel[1];
    out.groups.resize_with(d.groups, PackedB::default);
    out.scratch.resize(taps * cg * cig, 0.0);
    for (g, pb) in out.groups.iter_mut().enumerate() {
        let wg = &w[g * cg * kl..(g + 1) * cg * kl];
        // Reorder to [tap][co][ci] so that (tap, co) is one reduction index.
        for co in 0..cg {
            for t in 0..taps {
                let src = &wg[co * kl + t * cig..co * kl + (t + 1) * cig];
                out.scratch[(t * cg + co) * cig..(t * cg + co + 1) * cig].copy_from_slice(src);
            }
        }
        pb.pack(&Strided { data: &out.scratch, row_stride: 1, k_stride: cig }, cig, taps * cg);
    }
}

/// Convolution forward with a fused epilogue.
pub fn forward(d: &ConvDesc, x: &[f32], f: &CpuFilter, y: &mut [f32], epi: &Epilogue<'_>) {
    let m = d.n * d.out_h() * d.out_w();
    let (cg, cig) = (d.cout_g(), d.cin_g());
    for g in 0..d.groups {
        let off = g * cg;
        let ge = Epilogue {
            scale: epi.scale.map(|s| &s[off..]),
            bias: epi.bias.map(|b| &b[off..]),
            residual: epi.residual.map(|(r, ld)| (&r[off..], ld)),
            ..*epi
        };
        let out = OutMat { data: &mut y[off..], ld: d.c_out };
        let b = BSource::Packed(&f.groups[g]);
        if d.is_pointwise() && d.stride == [1, 1] {
            let a = Strided { data: &x[g * cig..], row_stride: d.c_in, k_stride: 1 };
            gemm::gemm(m, cg, d.k_len(), &a, b, out, &ge);
        } else {
            gemm::gemm(m, cg, d.k_len(), &forward_window(d, x, g), b, out, &ge);
        }
    }
}

/// Convolution backward-data (gather form).
pub fn backward_data(d: &ConvDesc, dy: &[f32], f: &CpuFilter, dx: &mut [f32], accumulate: bool) {
    let m = d.n * d.h * d.w;
    let (cg, cig) = (d.cout_g(), d.cin_g());
    let k = d.kernel[0] * d.kernel[1] * cg;
    let epi = Epilogue { accumulate, ..Default::default() };
    for g in 0..d.groups {
        let out = OutMat { data: &mut dx[g * cig..], ld: d.c_in };
        let b = BSource::Packed(&f.groups[g]);
        if d.is_pointwise() && d.stride == [1, 1] {
            let a = Strided { data: &dy[g * cg..], row_stride: d.c_out, k_stride: 1 };
            gemm::gemm(m, cig, k, &a, b, out, &epi);
        } else {
            gemm::gemm(m, cig, k, &backward_window(d, dy, g), b, out, &epi);
        }
    }
}

/// Pixels per reduction chunk of the filter gradient: bounds the packed
/// window (`chunk x k_len` values) to about 4 MB.
fn filter_chunk(k_len: usize) -> usize {
    ((1 << 20) / k_len.max(1)).clamp(KC, 16 * KC) / KC * KC
}

/// Convolution backward-filter: `dw += correlation(x, dy)`.
///
/// The pixel reduction is cut into fixed chunks; chunk `j` goes to partial
/// sum `j % parts` and the partials are added in order, so the result depends
/// only on the thread count, not on scheduling.
pub fn backward_filter(d: &ConvDesc, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let m = d.n * d.out_h() * d.out_w();
    let (cg, kl) = (d.cout_g(), d.k_len());
    let chunk = filter_chunk(kl);
    let chunks = m.div_ceil(chunk);
    let parts = rayon::current_num_threads().min(chunks).max(1);
    for g in 0..d.groups {
        let dwg = &mut dw[g * cg * kl..(g + 1) * cg * kl];
        let window = forward_window(d, x, g);
        let partial = |p: usize, acc: &mut [f32], accumulate: bool| {
            let mut first = !accumulate;
            for j in (p..chunks).step_by(parts) {
                let m0 = j * chunk;
                let mm = chunk.min(m - m0);
                // A = dy^T restricted to this chunk: rows co, reduction pixels.
                let a = Strided { data: &dy[m0 * d.c_out + g * cg..], row_stride: 1, k_stride: d.c_out };
                let b = WindowT { w: window, m0 };
                let epi = Epilogue { accumulate: !first, ..Default::default() };
                gemm::gemm(cg, kl, mm, &a, BSource::Operand(&b), OutMat { data: acc, ld: kl }, &epi);
                first = false;
            }
        };
        if parts == 1 {
            partial(0, dwg, true);
        } else {
            let mut bufs: Vec<Vec<f32>> = PARTIALS.with(|p| std::mem::take(&mut *p.borrow_mut()));
            bufs.resize_with(parts, Vec::new);
            for b in bufs.iter_mut() {
                b.resize(cg * kl, 0.0);
            }
            bufs.par_iter_mut().enumerate().for_each(|(p, b)| partial(p, b, false));
            for b in &bufs {
                for (o, v) in dwg.iter_mut().zip(b.iter()) {
                    *o += v;
                }
            }
            PARTIALS.with(|p| *p.borrow_mut() = bufs);
        }
    }
}

thread_local! {
    /// Recycled partial-sum buffers for `backward_filter` (taken, not borrowed, across rayon calls).
    static PARTIALS: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}
