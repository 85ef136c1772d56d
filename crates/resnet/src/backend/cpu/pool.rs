//! Pooling over NHWC batches.

use rayon::prelude::*;

use crate::backend::PoolDesc;

/// The input rows and columns a window at output `(oy, ox)` covers.
fn window(d: &PoolDesc, oy: usize, ox: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let y0 = (oy * d.stride) as isize - d.pad as isize;
    let x0 = (ox * d.stride) as isize - d.pad as isize;
    let ys = y0.max(0) as usize..((y0 + d.kernel as isize).min(d.h as isize)).max(0) as usize;
    let xs = x0.max(0) as usize..((x0 + d.kernel as isize).min(d.w as isize)).max(0) as usize;
    (ys, xs)
}

/// `out = max(out, src)` element-wise, propagating NaN as PyTorch does;
/// written as selects so that it vectorises.
#[inline(always)]
fn max_into(out: &mut [f32], src: &[f32]) {
    for (o, &v) in out.iter_mut().zip(src) {
        let m = if v > *o { v } else { *o };
        *o = if v.is_nan() { v } else { m };
    }
}

/// One output row of max pooling.
#[inline(always)]
fn max_row(d: &PoolDesc, x: &[f32], n: usize, oy: usize, yr: &mut [f32]) {
    let c = d.c;
    for ox in 0..d.out_w() {
        let out = &mut yr[ox * c..(ox + 1) * c];
        out.fill(f32::NEG_INFINITY);
        let (ys, xs) = window(d, oy, ox);
        for iy in ys {
            let row = &x[((n * d.h + iy) * d.w + xs.start) * c..((n * d.h + iy) * d.w + xs.end) * c];
            for src in row.chunks_exact(c) {
                max_into(out, src);
            }
        }
    }
}

/// Max pooling (padding counts as -inf, as in PyTorch).
pub fn max_forward(d: &PoolDesc, x: &[f32], y: &mut [f32]) {
    let (oh, ow, c) = (d.out_h(), d.out_w(), d.c);
    let wide = super::gemm::isa() == super::gemm::Isa::Avx512;
    y.par_chunks_mut(ow * c).enumerate().for_each(|(row, yr)| {
        let (n, oy) = (row / oh, row % oh);
        #[cfg(target_arch = "x86_64")]
        if wide {
            #[target_feature(enable = "avx512f")]
            fn row512(d: &PoolDesc, x: &[f32], n: usize, oy: usize, yr: &mut [f32]) {
                max_row(d, x, n, oy, yr)
            }
            // SAFETY: the CPU has avx512f (checked once by `isa`).
            return unsafe { row512(d, x, n, oy, yr) };
        }
        let _ = wide;
        max_row(d, x, n, oy, yr)
    });
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
