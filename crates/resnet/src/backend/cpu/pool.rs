//! Pooling over NHWC batches.

use rayon::prelude::*;

use super::direct::{Rows, RowsMut};
use crate::backend::Bf16;
use crate::backend::PoolDesc;

/// The input rows and columns a window at output `(oy, ox)` covers.
fn window(d: &PoolDesc, oy: usize, ox: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let y0 = (oy * d.stride) as isize - d.pad as isize;
    let x0 = (ox * d.stride) as isize - d.pad as isize;
    let ys = y0.max(0) as usize..((y0 + d.kernel as isize).min(d.h as isize)).max(0) as usize;
    let xs = x0.max(0) as usize..((x0 + d.kernel as isize).min(d.w as isize)).max(0) as usize;
    (ys, xs)
}

/// A stored activation value: f32, or bf16 (exact in f32).
trait Value: Copy + Send + Sync {
    /// Whether the value is a [`Bf16`] (else an f32).
    const BF16: bool;
    fn get(self) -> f32;
    fn put(v: f32) -> Self;
}

impl Value for f32 {
    const BF16: bool = false;
    #[inline(always)]
    fn get(self) -> f32 {
        self
    }
    #[inline(always)]
    fn put(v: f32) -> Self {
        v
    }
}

impl Value for Bf16 {
    const BF16: bool = true;
    #[inline(always)]
    fn get(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn put(v: f32) -> Self {
        Bf16::from_f32(v)
    }
}

/// `out = max(out, src)` element-wise, propagating NaN as PyTorch does;
/// written as selects so that it vectorises.
#[inline(always)]
fn max_into<X: Value>(out: &mut [f32], src: &[X]) {
    for (o, &v) in out.iter_mut().zip(src) {
        let v = v.get();
        let m = if v > *o { v } else { *o };
        *o = if v.is_nan() { v } else { m };
    }
}

/// One output row of max pooling; `acc` holds a pixel's running maxima.
#[inline(always)]
fn max_row<X: Value, Y: Value>(d: &PoolDesc, x: &[X], n: usize, oy: usize, yr: &mut [Y], acc: &mut [f32]) {
    let c = d.c;
    for ox in 0..d.out_w() {
        acc.fill(f32::NEG_INFINITY);
        let (ys, xs) = window(d, oy, ox);
        for iy in ys {
            let row = &x[((n * d.h + iy) * d.w + xs.start) * c..((n * d.h + iy) * d.w + xs.end) * c];
            for src in row.chunks_exact(c) {
                max_into(acc, src);
            }
        }
        for (o, &v) in yr[ox * c..(ox + 1) * c].iter_mut().zip(acc.iter()) {
            *o = Y::put(v);
        }
    }
}

/// Max pooling (padding counts as -inf, as in PyTorch) over stored rows,
/// f32 or bf16 on either side.
pub fn max_forward_stored(d: &PoolDesc, x: Rows<'_>, y: RowsMut<'_>) {
    match (x, y) {
        (Rows::F32(x), RowsMut::F32(y)) => max_forward_as(d, x, y),
        (Rows::F32(x), RowsMut::Bf16(y)) => max_forward_as(d, x, y),
        (Rows::Bf16(x), RowsMut::F32(y)) => max_forward_as(d, x, y),
        (Rows::Bf16(x), RowsMut::Bf16(y)) => max_forward_as(d, x, y),
    }
}

fn max_forward_as<X: Value, Y: Value>(d: &PoolDesc, x: &[X], y: &mut [Y]) {
    let (oh, ow, c) = (d.out_h(), d.out_w(), d.c);
    let wide = super::gemm::isa() == super::gemm::Isa::Avx512;
    y[..d.n * oh * ow * c].par_chunks_mut(ow * c).enumerate().for_each_init(
        || vec![0.0f32; c],
        |acc, (row, yr)| {
            let (n, oy) = (row / oh, row % oh);
            #[cfg(target_arch = "x86_64")]
            if wide && c.is_multiple_of(16) {
                assert!(x.len() >= d.n * d.h * d.w * c, "input too small");
                // SAFETY: the CPU has avx512f (checked once by `isa`); `x`
                // holds the whole input, `yr` is this output row.
                return unsafe { x86::max_row(d, x, n, oy, yr) };
            }
            #[cfg(target_arch = "x86_64")]
            if wide {
                #[target_feature(enable = "avx512f")]
                fn row512<X: Value, Y: Value>(
                    d: &PoolDesc,
                    x: &[X],
                    n: usize,
                    oy: usize,
                    yr: &mut [Y],
                    acc: &mut [f32],
                ) {
                    max_row(d, x, n, oy, yr, acc)
                }
                // SAFETY: the CPU has avx512f (checked once by `isa`).
                return unsafe { row512(d, x, n, oy, yr, acc) };
            }
            let _ = wide;
            max_row(d, x, n, oy, yr, acc)
        },
    );
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PoolDesc, Value, window};
    use std::arch::x86_64::*;

    /// [`super::max_row`] for channel counts that are multiples of 16: each
    /// output pixel's 16-channel groups kept in a register while its window
    /// is read (bf16 values widened on loading, exact maxima of bf16 inputs
    /// narrowed back by truncation).
    ///
    /// # Safety
    /// avx512f; `x` holds the whole input; `d.c` is a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn max_row<X: Value, Y: Value>(d: &PoolDesc, x: &[X], n: usize, oy: usize, yr: &mut [Y]) {
        let c = d.c;
        let xp = x.as_ptr();
        let yp = yr.as_mut_ptr();
        for ox in 0..d.out_w() {
            let (ys, xs) = window(d, oy, ox);
            for c0 in (0..c).step_by(16) {
                let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
                for iy in ys.clone() {
                    for ix in xs.clone() {
                        let at = ((n * d.h + iy) * d.w + ix) * c + c0;
                        // SAFETY: pixel (iy, ix) of image n lies inside x; 16 channels from c0.
                        let v = unsafe {
                            if X::BF16 {
                                let h = _mm256_loadu_si256(xp.add(at).cast());
                                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                            } else {
                                _mm512_loadu_ps(xp.add(at).cast())
                            }
                        };
                        // max(v, m) keeps m where either is NaN; a NaN v then replaces it.
                        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                        m = _mm512_mask_mov_ps(_mm512_max_ps(v, m), nan, v);
                    }
                }
                let at = ox * c + c0;
                // SAFETY: output pixel ox of this row, channels c0..c0 + 16.
                unsafe {
                    match (X::BF16, Y::BF16) {
                        (_, false) => _mm512_storeu_ps(yp.add(at).cast(), m),
                        // The maximum of bf16 values is one of them: exact.
                        (true, true) => {
                            let h = _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(_mm512_castps_si512(m)));
                            _mm256_storeu_si256(yp.add(at).cast(), h)
                        }
                        (false, true) => {
                            let mut v = [0.0f32; 16];
                            _mm512_storeu_ps(v.as_mut_ptr(), m);
                            for (l, &f) in v.iter().enumerate() {
                                *yp.add(at + l) = Y::put(f);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Max-pool backward: the gradient of each output goes to the first maximum
/// of its window in row-major scan order (PyTorch's rule).
pub fn max_backward(d: &PoolDesc, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (oh, ow, c) = (d.out_h(), d.out_w(), d.c);
    let img = d.h * d.w * c;
    dx.par_chunks_mut(img).enumerate().for_each(|(n, dxi)| {
        dxi.fill(0.0);
        let xi = &x[n * img..(n + 1) * img];
        let mut best = vec![0usize; c];
        let mut val = vec![0.0f32; c];
        for oy in 0..oh {
            for ox in 0..ow {
                val.fill(f32::NEG_INFINITY);
                let (ys, xs) = window(d, oy, ox);
                for iy in ys {
                    for ix in xs.clone() {
                        let off = (iy * d.w + ix) * c;
                        for ch in 0..c {
                            let v = xi[off + ch];
                            if v > val[ch] || v.is_nan() {
                                val[ch] = v;
                                best[ch] = off + ch;
                            }
                        }
                    }
                }
                let g = &dy[((n * oh + oy) * ow + ox) * c..][..c];
                for ch in 0..c {
                    dxi[best[ch]] += g[ch];
                }
            }
        }
    });
}

/// `[n, hw, c] -> [n, c]` mean.
pub fn gap_forward(hw: usize, c: usize, x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(c).enumerate().for_each(|(n, yr)| {
        let mut acc = vec![0.0f64; c];
        for p in 0..hw {
            for (a, &v) in acc.iter_mut().zip(&x[(n * hw + p) * c..][..c]) {
                *a += v as f64;
            }
        }
        for (o, a) in yr.iter_mut().zip(acc) {
            *o = (a / hw as f64) as f32;
        }
    });
}

/// Backward of the global average pool.
pub fn gap_backward(hw: usize, c: usize, dy: &[f32], dx: &mut [f32]) {
    let inv = 1.0 / hw as f32;
    dx.par_chunks_mut(hw * c).enumerate().for_each(|(n, dxi)| {
        let g = &dy[n * c..(n + 1) * c];
        for px in dxi.chunks_exact_mut(c) {
            for (o, &v) in px.iter_mut().zip(g) {
                *o = v * inv;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Max pooling against its definition, NaN and infinities included, over
    /// channel counts with and without a partial last group of 16.
    #[test]
    fn max_pool_matches_its_definition() {
        for (c, kernel, stride, pad) in [(64, 3, 2, 1), (20, 3, 2, 1), (7, 2, 2, 0), (33, 3, 1, 1)] {
            let d = PoolDesc { n: 2, h: 9, w: 8, c, kernel, stride, pad };
            let len = d.n * d.h * d.w * c;
            let x: Vec<f32> = (0..len)
                .map(|i| match i % 101 {
                    5 => f32::NAN,
                    17 => f32::INFINITY,
                    23 => f32::NEG_INFINITY,
                    _ => ((i * 7919) % 1013) as f32 / 97.0 - 5.0,
                })
                .collect();
            let (oh, ow) = (d.out_h(), d.out_w());
            let mut y = vec![0.0; d.n * oh * ow * c];
            max_forward_as(&d, &x[..], &mut y[..]);
            for (i, &got) in y.iter().enumerate() {
                let (ch, ox, oy, n) = (i % c, i / c % ow, i / c / ow % oh, i / c / ow / oh);
                let (ys, xs) = window(&d, oy, ox);
                let xr = &x;
                let vals = ys.flat_map(|iy| xs.clone().map(move |ix| xr[((n * d.h + iy) * d.w + ix) * c + ch]));
                let want =
                    vals.fold(f32::NEG_INFINITY, |m, v| if v.is_nan() || m.is_nan() { f32::NAN } else { m.max(v) });
                assert!(got == want || (got.is_nan() && want.is_nan()), "{d:?} output {i}: {got} vs {want}");
            }
        }
    }

    /// Max pooling over bf16 rows gives the f32 result of the same values,
    /// rounded where the output is bf16 (which, max being monotonic, is the
    /// max of the rounded inputs).
    #[test]
    fn stored_max_pool_matches_f32() {
        for c in [20, 32] {
            stored_max_pool_matches_f32_with(c);
        }
    }

    /// `c`: 20 takes the portable rows, 32 the 16-channel ones.
    fn stored_max_pool_matches_f32_with(c: usize) {
        let d = PoolDesc { n: 2, h: 9, w: 7, c, kernel: 3, stride: 2, pad: 1 };
        let len = d.n * d.h * d.w * d.c;
        let x: Vec<f32> = (0..len).map(|i| Bf16::from_f32(((i * 7919) % 1013) as f32 / 97.0 - 5.0).to_f32()).collect();
        let xb: Vec<Bf16> = x.iter().map(|&v| Bf16::from_f32(v)).collect();
        let out = d.n * d.out_h() * d.out_w() * d.c;
        let mut want = vec![0.0; out];
        max_forward_as(&d, &x[..], &mut want[..]);
        for bf16_in in [false, true] {
            let src = if bf16_in { Rows::Bf16(&xb) } else { Rows::F32(&x) };
            let mut y = vec![f32::NAN; out];
            max_forward_stored(&d, src, RowsMut::F32(&mut y));
            assert_eq!(y, want, "f32 output, bf16 input {bf16_in}");
            let mut yb = vec![Bf16::default(); out];
            max_forward_stored(&d, src, RowsMut::Bf16(&mut yb));
            assert!(yb.iter().zip(&want).all(|(a, &b)| a.to_f32() == b), "bf16 output, bf16 input {bf16_in}");
        }
    }
}
