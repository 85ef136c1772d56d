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

use super::direct::{self, Panels};
use super::gemm::Epilogue;
use super::winograd;
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
    kh: usize,
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
        if d == 1 {
            // The forward window (and stride-1 backward): no division.
            return (num >= 0 && (num as usize) < size).then_some(num as usize);
        }
        if num < 0 || num % d != 0 {
            return None;
        }
        let v = (num / d) as usize;
        (v < size).then_some(v)
    }
}

/// The window for the indirect kernels: one channel run per (pixel, tap).
impl direct::Taps for Window<'_> {
    fn rows(&self) -> usize {
        self.src.len() / (self.src_h * self.src_w * self.src_c).max(1) * self.dst_h * self.dst_w
    }
    fn taps(&self) -> usize {
        self.kh * self.kw
    }
    fn klen(&self) -> usize {
        self.c_len
    }
    fn fill_tap(&self, m0: usize, count: usize, t: usize, zero: *const f32, out: &mut Vec<*const f32>) {
        let base = self.src.as_ptr();
        let (ky, kx) = (t / self.kw, t % self.kw);
        let mut x = m0 % self.dst_w;
        let mut y = (m0 / self.dst_w) % self.dst_h;
        let mut n = m0 / (self.dst_w * self.dst_h);
        let mut sy = self.coord(0, y, ky, self.src_h);
        for _ in 0..count {
            out.push(match (sy, self.coord(1, x, kx, self.src_w)) {
                // SAFETY: (sy, sx) is inside the image, so the run is inside `src`.
                (Some(sy), Some(sx)) => unsafe {
                    base.add(((n * self.src_h + sy) * self.src_w + sx) * self.src_c + self.c_off)
                },
                _ => zero,
            });
            // Next pixel, without divisions.
            x += 1;
            if x == self.dst_w {
                x = 0;
                y += 1;
                if y == self.dst_h {
                    y = 0;
                    n += 1;
                }
                sy = self.coord(0, y, ky, self.src_h);
            }
        }
    }
    fn fill(&self, m0: usize, zero: *const f32, out: &mut [[*const f32; direct::MR]]) {
        let rows = direct::Taps::rows(self);
        let base = self.src.as_ptr();
        // Walk the pixels incrementally (no divisions after the first).
        let mut x = m0 % self.dst_w;
        let mut y = (m0 / self.dst_w) % self.dst_h;
        let mut n = m0 / (self.dst_w * self.dst_h);
        let mut sy = [None; 16];
        let kh = self.kh.min(16);
        let row_taps = |y: usize, sy: &mut [Option<usize>; 16]| {
            for (ky, s) in sy.iter_mut().enumerate().take(kh) {
                *s = self.coord(0, y, ky, self.src_h);
            }
        };
        row_taps(y, &mut sy);
        for i in 0..direct::MR {
            if m0 + i >= rows {
                out.iter_mut().for_each(|t| t[i] = zero);
                continue;
            }
            let img = n * self.src_h;
            for kx in 0..self.kw {
                let sx = self.coord(1, x, kx, self.src_w);
                for ky in 0..self.kh {
                    let yy = if ky < 16 { sy[ky] } else { self.coord(0, y, ky, self.src_h) };
                    out[ky * self.kw + kx][i] = match (yy, sx) {
                        // SAFETY: (yy, sx) is inside the image, so the run is inside `src`.
                        (Some(yy), Some(sx)) => unsafe {
                            base.add(((img + yy) * self.src_w + sx) * self.src_c + self.c_off)
                        },
                        _ => zero,
                    };
                }
            }
            x += 1;
            if x == self.dst_w {
                x = 0;
                y += 1;
                if y == self.dst_h {
                    y = 0;
                    n += 1;
                }
                row_taps(y, &mut sy);
            }
        }
    }
}

/// A convolution over a zero-padded copy of its input, with one tap per
/// kernel *row*: a row of `kw` pixels is `kw * c_in` contiguous floats. For
/// layers with few input channels (the 7x7 stem has three) this gives the
/// micro-kernel runs of 21 floats instead of 3.
struct RowWindow<'a> {
    /// The padded input, `[n][hp][wp][c]`.
    padded: &'a [f32],
    hp: usize,
    wp: usize,
    c: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    stride: [usize; 2],
    dil_y: usize,
}

impl direct::Taps for RowWindow<'_> {
    fn rows(&self) -> usize {
        self.padded.len() / (self.hp * self.wp * self.c) * self.oh * self.ow
    }
    fn taps(&self) -> usize {
        self.kh
    }
    fn klen(&self) -> usize {
        self.kw * self.c
    }
    fn fill(&self, m0: usize, zero: *const f32, out: &mut [[*const f32; direct::MR]]) {
        let rows = direct::Taps::rows(self);
        for i in 0..direct::MR {
            let m = m0 + i;
            for (ky, t) in out.iter_mut().enumerate().take(self.kh) {
                t[i] = if m < rows { self.run(m, ky) } else { zero };
            }
        }
    }
    fn fill_tap(&self, m0: usize, count: usize, t: usize, _zero: *const f32, out: &mut Vec<*const f32>) {
        out.extend((m0..m0 + count).map(|m| self.run(m, t)));
    }
}

impl RowWindow<'_> {
    /// Start of kernel row `ky` of output pixel `m` (always inside the padded input).
    fn run(&self, m: usize, ky: usize) -> *const f32 {
        let (ox, oy, n) = (m % self.ow, (m / self.ow) % self.oh, m / (self.ow * self.oh));
        let (iy, ix) = (oy * self.stride[0] + ky * self.dil_y, ox * self.stride[1]);
        self.padded[((n * self.hp + iy) * self.wp + ix) * self.c..].as_ptr()
    }
}

/// Whether a convolution runs on a padded copy with row taps (see [`RowWindow`]).
fn use_rows(d: &ConvDesc) -> bool {
    d.groups == 1 && d.kernel[1] > 1 && d.dilation[1] == 1 && d.c_in * d.kernel[1] <= 64 && d.c_in <= 4
}

/// Copies an NHWC batch into a zero-padded buffer.
fn pad_input(d: &ConvDesc, x: &[f32], out: &mut Vec<f32>) -> (usize, usize) {
    let (hp, wp) = (d.h + 2 * d.pad[0], d.w + 2 * d.pad[1]);
    let c = d.c_in;
    out.clear();
    out.resize(d.n * hp * wp * c, 0.0);
    for n in 0..d.n {
        for y in 0..d.h {
            let src = &x[((n * d.h + y) * d.w) * c..][..d.w * c];
            out[((n * hp + y + d.pad[0]) * wp + d.pad[1]) * c..][..d.w * c].copy_from_slice(src);
        }
    }
    (hp, wp)
}

thread_local! {
    /// Padded inputs for row-tap convolutions (taken out while the kernels run).
    static PADDED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with a row window over a padded copy of `x`.
fn with_rows<R>(d: &ConvDesc, x: &[f32], f: impl FnOnce(&RowWindow<'_>) -> R) -> R {
    let mut buf = PADDED.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let (hp, wp) = pad_input(d, x, &mut buf);
    let w = RowWindow {
        padded: &buf,
        hp,
        wp,
        c: d.c_in,
        oh: d.out_h(),
        ow: d.out_w(),
        kh: d.kernel[0],
        kw: d.kernel[1],
        stride: d.stride,
        dil_y: d.dilation[0],
    };
    let r = f(&w);
    PADDED.with(|p| *p.borrow_mut() = buf);
    r
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
        kh: d.kernel[0],
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
        kh: d.kernel[0],
        kw: d.kernel[1],
        mul: [1, 1],
        add: [d.pad[0] as isize, d.pad[1] as isize],
        tap: [-(d.dilation[0] as isize), -(d.dilation[1] as isize)],
        div: [d.stride[0] as isize, d.stride[1] as isize],
    }
}

/// A filter packed for the CPU kernels: one set of panels per group, or a
/// Winograd-transformed filter for the 3x3 stride-1 layers.
#[derive(Debug, Default)]
pub struct CpuFilter {
    groups: Vec<Panels>,
    scratch: Vec<f32>,
    winograd: Option<winograd::WinogradFilter>,
}

/// The Winograd tile for a layer: 0 (direct), 2 or 4, chosen from the whole
/// descriptor as cuDNN chooses an algorithm: Winograd needs enough tiles to
/// fill the micro-kernel's rows (a 7x7 map at batch 1 has only four 4x4 tiles),
/// and channels enough for its transforms to pay. `RESNET_WINOGRAD=0|2|4`
/// overrides the choice (for benchmarks and tests).
fn winograd_tile(d: &ConvDesc) -> usize {
    static MODE: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let forced = *MODE.get_or_init(|| std::env::var("RESNET_WINOGRAD").ok().and_then(|v| v.parse().ok()));
    if !winograd::applicable(d) {
        return 0;
    }
    if let Some(m @ (0 | 2 | 4)) = forced {
        return m;
    }
    let tiles = |m: usize| d.n * d.out_h().div_ceil(m) * d.out_w().div_ceil(m);
    let enough = 4 * direct::MR;
    match () {
        _ if d.c_in < 16 || d.c_out < 16 => 0,
        _ if tiles(4) >= enough => 4,
        _ if tiles(2) >= enough => 2,
        _ => 0,
    }
}

/// Packs OHWI weights for the forward pass: per group, `w[co][k]`.
pub fn prepare_forward(d: &ConvDesc, w: &[f32], out: &mut CpuFilter) {
    let m = winograd_tile(d);
    if m > 0 {
        let wf = out.winograd.get_or_insert_with(Default::default);
        winograd::prepare(m, w, d.c_out, d.c_in, wf);
        return;
    }
    out.winograd = None;
    let (kl, cg) = (d.k_len(), d.cout_g());
    out.groups.resize_with(d.groups, Panels::default);
    for (g, p) in out.groups.iter_mut().enumerate() {
        p.pack(&w[g * cg * kl..(g + 1) * cg * kl], cg, kl, kl);
    }
}

/// Packs OHWI weights for the backward-data pass: per group,
/// `B[(tap, co)][ci] = w[co][tap][ci]`.
pub fn prepare_backward_data(d: &ConvDesc, w: &[f32], out: &mut CpuFilter) {
    let (kl, cg, cig) = (d.k_len(), d.cout_g(), d.cin_g());
    let taps = d.kernel[0] * d.kernel[1];
    let m = winograd_tile(d);
    if m > 0 {
        // The gradient is a 3x3 convolution of dy with the flipped, transposed
        // filter: w'[ci][ky][kx][co] = w[co][2 - ky][2 - kx][ci].
        out.scratch.resize(d.weight_len(), 0.0);
        for co in 0..d.c_out {
            for ky in 0..3 {
                for kx in 0..3 {
                    for ci in 0..d.c_in {
                        out.scratch[((ci * 3 + ky) * 3 + kx) * d.c_out + co] =
                            w[((co * 3 + 2 - ky) * 3 + 2 - kx) * d.c_in + ci];
                    }
                }
            }
        }
        let wf = out.winograd.get_or_insert_with(Default::default);
        winograd::prepare(m, &out.scratch, d.c_in, d.c_out, wf);
        return;
    }
    out.winograd = None;
    out.groups.resize_with(d.groups, Panels::default);
    out.scratch.resize(taps * cg * cig, 0.0);
    for (g, p) in out.groups.iter_mut().enumerate() {
        let wg = &w[g * cg * kl..(g + 1) * cg * kl];
        // Reorder to [tap][co][ci] so that (tap, co) is one reduction index.
        for co in 0..cg {
            for t in 0..taps {
                let src = &wg[co * kl + t * cig..co * kl + (t + 1) * cig];
                out.scratch[(t * cg + co) * cig..(t * cg + co + 1) * cig].copy_from_slice(src);
            }
        }
        p.pack_transposed(&out.scratch, cig, taps * cg, cig);
    }
}

/// Convolution forward with a fused epilogue.
pub fn forward(d: &ConvDesc, x: &[f32], f: &CpuFilter, y: &mut [f32], epi: &Epilogue<'_>) {
    if let Some(wf) = &f.winograd {
        return winograd::forward(d, x, wf, y, epi);
    }
    let cg = d.cout_g();
    for g in 0..d.groups {
        let off = g * cg;
        let ge =
            Epilogue { scale: epi.scale.map(|s| &s[off..]), bias: epi.bias.map(|b| &b[off..]), residual: None, ..*epi };
        let residual = epi.residual.map(|(r, ld)| (&r[off..], ld));
        direct::run(&forward_window(d, x, g), &f.groups[g], &mut y[off..], d.c_out, 0, &ge, residual);
    }
}

/// Convolution backward-data (gather form).
pub fn backward_data(d: &ConvDesc, dy: &[f32], f: &CpuFilter, dx: &mut [f32], accumulate: bool) {
    let cig = d.cin_g();
    let epi = Epilogue { accumulate, ..Default::default() };
    if let Some(wf) = &f.winograd {
        // Stride 1: dx has dy's size; the transposed convolution pads by 2 - pad.
        let t = ConvDesc {
            h: d.out_h(),
            w: d.out_w(),
            c_in: d.c_out,
            c_out: d.c_in,
            pad: [2 - d.pad[0], 2 - d.pad[1]],
            ..*d
        };
        return winograd::forward(&t, dy, wf, dx, &epi);
    }
    for g in 0..d.groups {
        direct::run(&backward_window(d, dy, g), &f.groups[g], &mut dx[g * cig..], d.c_in, 0, &epi, None);
    }
}

/// Convolution backward-filter: `dw += correlation(x, dy)`, by outer products
/// read in place (see [`direct::filter_gradient`]).
pub fn backward_filter(d: &ConvDesc, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    let (cg, kl) = (d.cout_g(), d.k_len());
    if use_rows(d) {
        return with_rows(d, x, |w| direct::filter_gradient(w, dy, d.c_out, d.c_out, dw));
    }
    for g in 0..d.groups {
        let dwg = &mut dw[g * cg * kl..(g + 1) * cg * kl];
        direct::filter_gradient(&forward_window(d, x, g), &dy[g * cg..], d.c_out, cg, dwg);
    }
}
