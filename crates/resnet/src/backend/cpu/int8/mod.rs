//! int8 inference: u8 activations times int8 weights, exact i32 sums,
//! requantized in the epilogue.
//!
//! On CPUs with AVX-512 VNNI, `vpdpbusd` multiplies four u8 values by four
//! i8 values and adds the four products to an i32 lane: four times the
//! multiply-adds of an f32 FMA per instruction. The convolution is the
//! indirect one of `direct/` with int8 panels and runs:
//!
//! * a panel holds, per tap, *quads* of reduction indices for [`NR`] output
//!   channels: `[w[j][k..k + 4] for j in panel]` (64 bytes, one vector);
//! * an input pixel's quad of channels is broadcast as one 32-bit value.
//!
//! Windows: a u8 input with a channel count divisible by four is read in
//! place, one run of channels per (pixel, tap), padding taps pointing at a
//! shared zero row (its zero point is 0). Any other input (the first layer's
//! f32 image, quantized as it is copied) goes into a padded copy whose border
//! holds the zero point, read one run of `kw * c` values per kernel row (the
//! stem's 7 pixels of 3 colours: 21 values, padded to 24 with zero weights).
//!
//! The epilogue: `y = relu?((acc - zero * colsum) * multiplier + bias +
//! residual)`, `acc - zero * colsum` exact in i32, the rest in f32 with one
//! fused multiply-add per step. For a u8 output the multipliers, the bias and
//! the residual's scale are first multiplied by `1 / output scale`, so `y` is
//! already in output steps: it is rounded (ties to even), offset by the zero
//! point and clamped. The reference backend computes the same operations in
//! the same order, so the two agree bit for bit.

#[cfg(target_arch = "x86_64")]
mod x86;

use rayon::prelude::*;

use super::direct::split;
use super::mem::AlignedVec;
use super::tile::{MR, zeros};
use crate::backend::{ConvDesc, PoolDesc, Quant};

/// Output channels per panel (one vector of 16 i32 lanes).
pub const NR: usize = 16;
/// Reduction indices per broadcast (one 32-bit lane of u8 values).
const QUAD: usize = 4;

/// Whether this CPU runs the int8 kernels natively (AVX-512 F, BW, VL and VNNI).
/// Elsewhere portable kernels give the same results far more slowly.
/// `RESNET_NO_VNNI` disables the native path.
pub fn native() -> bool {
    static NATIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NATIVE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::env::var_os("RESNET_NO_VNNI").is_none() {
            return is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni");
        }
        false
    })
}

/// Whether to run the native kernels: [`native`], unless a test asks for
/// the portable ones.
fn use_native() -> bool {
    #[cfg(test)]
    if tests::PORTABLE.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    native()
}

/// A filter packed for the int8 kernels.
#[derive(Clone, Debug, Default)]
pub struct QPanels {
    /// Output channels.
    n: usize,
    /// Values per tap: `c_in` (a tap per pixel of the window) or `kw * c_in`
    /// (a tap per kernel row) where `c_in` is not a multiple of four.
    klen: usize,
    /// Taps per output pixel.
    taps: usize,
    /// Panels: `[panel][tap][quad][NR][QUAD]`.
    data: AlignedVec<i8>,
    /// Sum of each output channel's weights (for an input's zero point).
    colsum: Vec<i32>,
}

impl QPanels {
    /// Packs OHWI weights `w` (integers in `-127..=127`, held as f32).
    pub fn pack(d: &ConvDesc, w: &[f32]) -> Self {
        let ([kh, kw], c) = (d.kernel, d.c_in);
        let (taps, klen) = if c.is_multiple_of(QUAD) { (kh * kw, c) } else { (kh, kw * c) };
        let quads = klen.div_ceil(QUAD);
        let np = d.c_out.div_ceil(NR);
        let mut data = AlignedVec::zeroed(np * taps * quads * NR * QUAD);
        let mut colsum = vec![0i32; d.c_out];
        for (o, sum) in colsum.iter_mut().enumerate() {
            let row = &w[o * taps * klen..][..taps * klen];
            let (p, j) = (o / NR, o % NR);
            for t in 0..taps {
                for k in 0..klen {
                    let v = row[t * klen + k].clamp(-127.0, 127.0) as i8;
                    *sum += v as i32;
                    data[(((p * taps + t) * quads + k / QUAD) * NR + j) * QUAD + k % QUAD] = v;
                }
            }
        }
        Self { n: d.c_out, klen, taps, data, colsum }
    }

    /// Bytes of panel `p`.
    fn panel(&self, p: usize) -> &[i8] {
        let len = self.taps * self.klen.div_ceil(QUAD) * NR * QUAD;
        &self.data[p * len..(p + 1) * len]
    }
}

/// The input of an int8 convolution.
pub enum Src<'a> {
    /// u8 values with this zero point.
    U8(&'a [u8], u8),
    /// f32 values, quantized as they are read.
    F32(&'a [f32], Quant),
}

/// Where an int8 convolution's results go.
pub enum Dst<'a> {
    /// Requantized.
    U8(&'a mut [u8], Quant),
    /// f32 values.
    F32(&'a mut [f32]),
}

/// The residual an int8 convolution adds.
#[derive(Clone, Copy)]
pub enum Res<'a> {
    /// u8 values, quantized as given.
    U8(&'a [u8], Quant),
    /// f32 values.
    F32(&'a [f32]),
    /// u8 values in the output rows, quantized as given.
    InOutput(Quant),
}

/// The per-channel parameters of an epilogue.
pub struct Params<'a> {
    /// Input scale times weight scale, per output channel.
    pub multiplier: &'a [f32],
    /// Per-output-channel addend.
    pub bias: Option<&'a [f32]>,
    /// Clamp at zero.
    pub relu: bool,
}

/// An epilogue ready for the kernels: per-channel terms for every column.
/// Per-channel terms are in output steps for a u8 output (times `1 / scale`).
struct Epi {
    comp: Vec<i32>,
    /// Whether any of `comp` is not 0 (the input has a zero point).
    with_comp: bool,
    mult: Vec<f32>,
    bias: Vec<f32>,
    relu: bool,
    /// What one step of the residual adds (its scale; 1 for f32), and the
    /// zero point of a u8 residual.
    res_scale: f32,
    res_zero: i32,
    res_u8: bool,
    /// Zero point of a u8 output.
    out_zero: i32,
    out_u8: bool,
}

/// A row group's output and residual rows (byte addresses of each row's
/// first value; null past the last row).
struct Rows {
    out: [*mut u8; MR],
    res: [*const u8; MR],
    /// Bytes from an output row and a residual row to the same rows of the
    /// next row group, whose lines the kernel fetches ahead (0: none).
    ahead: (usize, usize),
    /// Bytes per output and residual value.
    sizes: (usize, usize),
}

/// Raw output pointer shared by tasks that write disjoint tiles.
#[derive(Clone, Copy)]
struct SendPtr(*mut u8);
// SAFETY: tasks write disjoint tiles (distinct rows or columns).
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// The y = relu?(...) of one value (the portable epilogue; the vector one
/// computes the same operations).
#[inline(always)]
fn finish(acc: i32, j: usize, e: &Epi, res: Option<f32>) -> f32 {
    let mut y = ((acc - e.comp[j]) as f32).mul_add(e.mult[j], e.bias[j]);
    if let Some(r) = res {
        y = r.mul_add(e.res_scale, y);
    }
    if e.relu { crate::backend::relu(y) } else { y }
}

/// `y` (in output steps) requantized: `round(y) + zero` clamped to
/// `0..=255` (ties to even, NaN giving 0).
#[inline(always)]
fn requantize(y: f32, zero: i32) -> u8 {
    (y.round_ties_even() + zero as f32).clamp(0.0, 255.0) as u8
}

/// Stores a tile's sums (portable).
///
/// # Safety
/// Non-null rows are valid for `col + nr` values of their type, this call's alone.
unsafe fn store_portable(acc: &[[i32; NR]; MR], rows: &Rows, col: usize, nr: usize, e: &Epi) {
    for (i, a) in acc.iter().enumerate() {
        if rows.out[i].is_null() {
            continue;
        }
        for (j, &v) in a.iter().enumerate().take(nr) {
            let c = col + j;
            // SAFETY: the caller's contract.
            unsafe {
                let res = (!rows.res[i].is_null()).then(|| match e.res_u8 {
                    true => (*rows.res[i].add(c) as i32 - e.res_zero) as f32,
                    false => *rows.res[i].cast::<f32>().add(c),
                });
                let y = finish(v, c, e, res);
                if e.out_u8 {
                    *rows.out[i].add(c) = requantize(y, e.out_zero);
                } else {
                    *rows.out[i].cast::<f32>().add(c) = y;
                }
            }
        }
    }
}

/// One or two panels of a row group (portable).
///
/// # Safety
/// Runs hold `quads * 4` readable bytes; `b` holds the panels' taps.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_portable(
    a: &[[*const u8; MR]],
    toffs: &[usize],
    quads: usize,
    b: &[&[i8]],
    rows: &Rows,
    col: usize,
    n: usize,
    e: &Epi,
) {
    for (q, panel) in b.iter().enumerate() {
        let mut acc = [[0i32; NR]; MR];
        for (runs, &t) in a.iter().zip(toffs) {
            for k in 0..quads * QUAD {
                let w = &panel[((t * quads + k / QUAD) * NR) * QUAD..];
                for (i, &r) in runs.iter().enumerate() {
                    // SAFETY: runs hold quads * 4 bytes (contract).
                    let x = unsafe { *r.add(k) } as i32;
                    for (j, s) in acc[i].iter_mut().enumerate() {
                        *s += x * w[j * QUAD + k % QUAD] as i32;
                    }
                }
            }
        }
        let c0 = col + q * NR;
        // SAFETY: the caller's contract.
        unsafe { store_portable(&acc, rows, c0, NR.min(n - c0), e) };
    }
}

/// An int8 convolution: `dst = epilogue(sum (src - zero) * w)`.
pub fn conv(d: &ConvDesc, src: Src<'_>, f: &QPanels, p: &Params<'_>, res: Option<Res<'_>>, dst: Dst<'_>) {
    assert_eq!(d.groups, 1, "int8 convolutions are not grouped");
    assert_eq!(d.dilation, [1, 1], "int8 convolutions are not dilated");
    let ([kh, kw], [sh, sw], [ph, pw]) = (d.kernel, d.stride, d.pad);
    let (oh, ow) = (d.out_h(), d.out_w());
    let m = d.n * oh * ow;
    let n = d.c_out;
    assert!(p.multiplier.len() >= n && p.bias.is_none_or(|b| b.len() >= n), "per-channel terms too short");
    let in_place = matches!(src, Src::U8(_, 0)) && d.c_in.is_multiple_of(QUAD);
    let zero = match src {
        Src::U8(_, z) => z,
        Src::F32(_, q) => q.zero,
    };
    // The padded copy (border = the zero point), unless read in place.
    let (hp, wp) = (d.h + 2 * ph, d.w + 2 * pw);
    let padded = (!in_place).then(|| padded_copy(d, &src, zero, hp, wp));
    let x_in: &[u8] = match (&src, &padded) {
        (_, Some(v)) => v,
        (Src::U8(x, _), None) => x,
        (Src::F32(..), None) => unreachable!("f32 inputs are always copied"),
    };
    // Row taps read `kw * c` values per kernel row; the filter's taps are
    // per pixel where `c` is a multiple of four (the same bytes in the
    // same order).
    let (taps, klen) = if in_place { (kh * kw, d.c_in) } else { (kh, kw * d.c_in) };
    assert_eq!(taps * klen, f.taps * f.klen, "filter does not match the layer");
    assert_eq!(f.n, n, "filter does not match the layer");
    let quads = klen.div_ceil(QUAD);
    // A u8 output's steps: every term times `1 / scale`.
    let inv = match dst {
        Dst::U8(_, q) => Some(1.0 / q.scale),
        Dst::F32(_) => None,
    };
    let steps = |v: f32| inv.map_or(v, |i| v * i);
    let e = Epi {
        comp: f.colsum.iter().map(|&s| s * zero as i32).collect(),
        with_comp: zero != 0,
        mult: p.multiplier[..n].iter().map(|&v| steps(v)).collect(),
        bias: (0..n).map(|c| steps(p.bias.map_or(0.0, |b| b[c]))).collect(),
        relu: p.relu,
        res_scale: steps(match res {
            Some(Res::U8(_, q) | Res::InOutput(q)) => q.scale,
            _ => 1.0,
        }),
        res_zero: match res {
            Some(Res::U8(_, q) | Res::InOutput(q)) => q.zero as i32,
            _ => 0,
        },
        res_u8: matches!(res, Some(Res::U8(..) | Res::InOutput(_))),
        out_zero: match dst {
            Dst::U8(_, q) => q.zero as i32,
            Dst::F32(_) => 0,
        },
        out_u8: matches!(dst, Dst::U8(..)),
    };
    let size = if e.out_u8 { 1 } else { 4 };
    let out = match dst {
        Dst::U8(y, _) => {
            assert!(y.len() >= m * n, "output too small");
            SendPtr(y.as_mut_ptr())
        }
        Dst::F32(y) => {
            assert!(y.len() >= m * n, "output too small");
            SendPtr(y.as_mut_ptr().cast())
        }
    };
    // Addresses, so that the tasks may share them.
    let (res_addr, res_size) = match res {
        Some(Res::U8(r, _)) => (r.as_ptr() as usize, 1),
        Some(Res::F32(r)) => (r.as_ptr() as usize, 4),
        Some(Res::InOutput(_)) => {
            assert!(e.out_u8, "a residual in the output rows is u8 like them");
            (out.0 as usize, 1)
        }
        None => (0, 0),
    };
    if let Some(r) = res {
        let len = match r {
            Res::U8(v, _) => v.len(),
            Res::F32(v) => v.len(),
            Res::InOutput(_) => m * n,
        };
        assert!(len >= m * n, "residual too small");
    }
    let (groups, np) = (m.div_ceil(MR), n.div_ceil(NR));
    let (tasks_g, pchunk) = split(groups, np, rayon::current_num_threads());
    let tasks = tasks_g * np.div_ceil(pchunk);
    let task = |tk: usize| {
        let (out, zero_row) = (out, zeros::<u8>(klen.next_multiple_of(QUAD)));
        let (tg, tp) = (tk % tasks_g, tk / tasks_g);
        let gs = tg * groups / tasks_g..(tg + 1) * groups / tasks_g;
        let ps = tp * pchunk..((tp + 1) * pchunk).min(np);
        let mut runs = vec![[zero_row; MR]; taps];
        let mut active: Vec<[*const u8; MR]> = Vec::with_capacity(taps);
        let mut toffs: Vec<usize> = Vec::with_capacity(taps);
        let all_taps: Vec<usize> = (0..taps).collect();
        // Where each tap of an inner window reads, from its first.
        let tap_offsets: Vec<usize> = match in_place {
            true => (0..kh * kw).map(|t| ((t / kw) * d.w + t % kw) * d.c_in).collect(),
            false => Vec::new(),
        };
        let gs_end = gs.end;
        for g in gs {
            let r0 = g * MR;
            // The next group's rows are fetched ahead where it is this task's.
            let ahead = if g + 1 < gs_end { (MR * n * size, MR * n * res_size) } else { (0, 0) };
            let mut rows =
                Rows { out: [std::ptr::null_mut(); MR], res: [std::ptr::null(); MR], ahead, sizes: (size, res_size) };
            let mut edge = false;
            // The group's first pixel, then one step at a time (no division per pixel).
            let (mut b, rest) = (r0 / (oh * ow), r0 % (oh * ow));
            let (mut oy, mut ox) = (rest / ow, rest % ow);
            for i in 0..MR.min(m - r0) {
                let pix = r0 + i;
                rows.out[i] = out.0.wrapping_add(pix * n * size);
                if res_addr != 0 {
                    rows.res[i] = (res_addr as *const u8).wrapping_add(pix * n * res_size);
                }
                let (y0, x0) = ((oy * sh) as isize - ph as isize, (ox * sw) as isize - pw as isize);
                if !in_place {
                    let base = x_in.as_ptr().wrapping_add(((b * hp + oy * sh) * wp + ox * sw) * d.c_in);
                    for (ky, r) in runs.iter_mut().enumerate() {
                        r[i] = base.wrapping_add(ky * wp * d.c_in);
                    }
                } else if y0 >= 0 && x0 >= 0 && y0 as usize + kh <= d.h && x0 as usize + kw <= d.w {
                    // The whole window inside the map.
                    let base = x_in.as_ptr().wrapping_add(((b * d.h + y0 as usize) * d.w + x0 as usize) * d.c_in);
                    for (r, &off) in runs.iter_mut().zip(&tap_offsets) {
                        r[i] = base.wrapping_add(off);
                    }
                } else {
                    edge = true;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let (iy, ix) = (y0 + ky as isize, x0 + kx as isize);
                            runs[ky * kw + kx][i] = if iy < 0 || ix < 0 || iy >= d.h as isize || ix >= d.w as isize {
                                zero_row
                            } else {
                                x_in[((b * d.h + iy as usize) * d.w + ix as usize) * d.c_in..].as_ptr()
                            };
                        }
                    }
                }
                ox += 1;
                if ox == ow {
                    (ox, oy) = (0, oy + 1);
                    if oy == oh {
                        (oy, b) = (0, b + 1);
                    }
                }
            }
            for i in MR.min(m - r0)..MR {
                runs.iter_mut().for_each(|r| r[i] = zero_row);
            }
            // Taps that read padding for every pixel of the group are skipped.
            let (active, toffs): (&[[*const u8; MR]], &[usize]) = if edge {
                active.clear();
                toffs.clear();
                for (t, r) in runs.iter().enumerate() {
                    if r.iter().any(|&q| q != zero_row) {
                        active.push(*r);
                        toffs.push(t);
                    }
                }
                (&active, &toffs)
            } else {
                (&runs, &all_taps)
            };
            for p in ps.clone().step_by(2) {
                let two = p + 1 < ps.end;
                // SAFETY: runs point at klen valid bytes (plus the quad's
                // slack of the padded copy) or the zero row; rows belong to
                // this task's tile; panels hold every tap.
                unsafe {
                    let b1 = if two { f.panel(p + 1) } else { f.panel(p) };
                    #[cfg(target_arch = "x86_64")]
                    if use_native() {
                        x86::kernel(active, toffs, quads, f.panel(p), b1, two, &rows, p * NR, n, &e);
                        continue;
                    }
                    let pair = [f.panel(p), b1];
                    kernel_portable(active, toffs, quads, &pair[..1 + two as usize], &rows, p * NR, n, &e);
                }
            }
        }
    };
    if tasks == 1 || rayon::current_num_threads() == 1 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// The input as u8 with a border of `zero` (`hp x wp` per image), and a
/// quad's slack at the end: row taps read whole quads.
fn padded_copy(d: &ConvDesc, src: &Src<'_>, zero: u8, hp: usize, wp: usize) -> AlignedVec<u8> {
    let (c, [ph, pw]) = (d.c_in, d.pad);
    let mut xp = AlignedVec::new();
    xp.resize(d.n * hp * wp * c + QUAD, zero);
    xp[..d.n * hp * wp * c].par_chunks_mut(wp * c).enumerate().for_each(|(row, out)| {
        let (b, y) = (row / hp, row % hp);
        if y < ph || y >= ph + d.h {
            return;
        }
        let dst = &mut out[pw * c..(pw + d.w) * c];
        let at = (b * d.h + y - ph) * d.w * c;
        match *src {
            Src::U8(x, _) => dst.copy_from_slice(&x[at..at + d.w * c]),
            Src::F32(x, q) => quantize(&x[at..at + d.w * c], q, dst),
        }
    });
    xp
}

/// `dst = q.quantize(src)` element-wise ([`Quant::quantize`]'s operations).
pub fn quantize(src: &[f32], q: Quant, dst: &mut [u8]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if use_native() {
        // SAFETY: the CPU has the int8 features (avx512f, bw, vl); equal lengths.
        return unsafe { x86::quantize(src, q, dst) };
    }
    for (o, &v) in dst.iter_mut().zip(src) {
        *o = q.quantize(v);
    }
}

/// Max pooling of u8 values (padding never wins, as -inf in f32).
pub fn max_pool(d: &PoolDesc, x: &[u8], y: &mut [u8]) {
    let (oh, ow, c) = (d.out_h(), d.out_w(), d.c);
    y[..d.n * oh * ow * c].par_chunks_mut(ow * c).enumerate().for_each(|(row, yr)| {
        let (n, oy) = (row / oh, row % oh);
        for ox in 0..ow {
            let out = &mut yr[ox * c..(ox + 1) * c];
            out.fill(0);
            for ky in 0..d.kernel {
                let iy = (oy * d.stride + ky) as isize - d.pad as isize;
                if iy < 0 || iy >= d.h as isize {
                    continue;
                }
                for kx in 0..d.kernel {
                    let ix = (ox * d.stride + kx) as isize - d.pad as isize;
                    if ix < 0 || ix >= d.w as isize {
                        continue;
                    }
                    let src = &x[((n * d.h + iy as usize) * d.w + ix as usize) * c..][..c];
                    out.iter_mut().zip(src).for_each(|(o, &v)| *o = (*o).max(v));
                }
            }
        }
    });
}

/// Global average pooling of u8 values: `sum as f32 * (scale / hw)`.
pub fn gap(hw: usize, c: usize, x: &[u8], scale: f32, y: &mut [f32]) {
    let k = scale / hw as f32;
    y.par_chunks_mut(c).enumerate().for_each(|(n, yr)| {
        let mut acc = vec![0u32; c];
        for p in 0..hw {
            acc.iter_mut().zip(&x[(n * hw + p) * c..][..c]).for_each(|(a, &v)| *a += v as u32);
        }
        yr.iter_mut().zip(acc).for_each(|(o, a)| *o = a as f32 * k);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set while a test runs the portable kernels.
    pub(super) static PORTABLE: AtomicBool = AtomicBool::new(false);

    /// The native and portable paths give the same bits (on a CPU without
    /// VNNI both runs are portable, and the test checks nothing more).
    #[test]
    fn native_and_portable_kernels_agree() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (n, h, c_in, c_out, k, stride, f32_in) in [
            (2, 9, 16, 40, 3, 1, false),
            (1, 11, 3, 24, 7, 2, true),
            (3, 5, 64, 17, 1, 2, false),
            (1, 6, 6, 8, 3, 1, false),
        ] {
            let d = ConvDesc {
                n,
                h,
                w: h + 1,
                c_in,
                c_out,
                kernel: [k, k],
                stride: [stride, stride],
                pad: [k / 2, k / 2],
                dilation: [1, 1],
                groups: 1,
            };
            let w: Vec<f32> = (0..d.weight_len()).map(|_| (next() % 255) as f32 - 127.0).collect();
            let x8: Vec<u8> = (0..d.in_len()).map(|_| next() as u8).collect();
            let xf: Vec<f32> = (0..d.in_len()).map(|_| (next() % 1000) as f32 / 250.0 - 2.0).collect();
            let res: Vec<u8> = (0..d.out_len()).map(|_| next() as u8).collect();
            let mult: Vec<f32> = (0..c_out).map(|i| 1e-4 * (1 + i % 7) as f32).collect();
            let bias: Vec<f32> = (0..c_out).map(|i| i as f32 * 0.01 - 0.1).collect();
            let f = QPanels::pack(&d, &w);
            let q = Quant { scale: 0.05, zero: 3 };
            let out = |portable: bool| {
                PORTABLE.store(portable, Ordering::Relaxed);
                let mut y = vec![0u8; d.out_len()];
                let src = if f32_in { Src::F32(&xf, Quant { scale: 0.02, zero: 120 }) } else { Src::U8(&x8, 0) };
                let p = Params { multiplier: &mult, bias: Some(&bias), relu: true };
                conv(&d, src, &f, &p, Some(Res::U8(&res, q)), Dst::U8(&mut y, Quant { scale: 0.03, zero: 0 }));
                let mut qx = vec![0u8; xf.len()];
                quantize(&xf, q, &mut qx);
                PORTABLE.store(false, Ordering::Relaxed);
                (y, qx)
            };
            let (native, portable) = (out(false), out(true));
            assert_eq!(native, portable, "{d:?}");
            assert!(native.0.iter().any(|&v| v != 0) && native.0.iter().any(|&v| v != native.0[0]), "{d:?}");
        }
    }
}
