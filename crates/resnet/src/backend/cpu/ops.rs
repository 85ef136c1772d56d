//! Element-wise kernels, the option-A shortcut, the loss and the optimiser.

use rayon::prelude::*;

use crate::backend::{PadShortcutDesc, SgdStep};

/// Elements per parallel task for streaming kernels.
const GRAIN: usize = 1 << 14;

/// `y[i] = f(a[i], b[i])` in parallel.
pub fn zip_map(a: &[f32], b: &[f32], y: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    y.par_chunks_mut(GRAIN).enumerate().for_each(|(t, yc)| {
        let o = t * GRAIN;
        for ((v, &p), &q) in yc.iter_mut().zip(&a[o..]).zip(&b[o..]) {
            *v = f(p, q);
        }
    });
}

/// `y[i] = f(y[i], x[i])` in parallel.
pub fn update(y: &mut [f32], x: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    y.par_chunks_mut(GRAIN).enumerate().for_each(|(t, yc)| {
        for (v, &p) in yc.iter_mut().zip(&x[t * GRAIN..]) {
            *v = f(*v, p);
        }
    });
}

/// Option-A shortcut: subsample, then zero-pad channels (f32, or u8 of zero
/// point 0).
pub fn pad_shortcut_forward<T: Copy + Default + Send + Sync>(d: &PadShortcutDesc, x: &[T], y: &mut [T]) {
    let (oh, ow) = (d.out_h(), d.out_w());
    y.par_chunks_mut(ow * d.c_out).enumerate().for_each(|(row, yr)| {
        let (n, oy) = (row / oh, row % oh);
        for ox in 0..ow {
            let out = &mut yr[ox * d.c_out..(ox + 1) * d.c_out];
            let src = &x[((n * d.h + oy * d.stride) * d.w + ox * d.stride) * d.c_in..][..d.c_in];
            out[..d.pad_before].fill(T::default());
            out[d.pad_before..d.pad_before + d.c_in].copy_from_slice(src);
            out[d.pad_before + d.c_in..].fill(T::default());
        }
    });
}

/// Option-A shortcut backward: the gradient of the kept channels at the kept
/// pixels; zero elsewhere (or left as is when accumulating).
pub fn pad_shortcut_backward(d: &PadShortcutDesc, dy: &[f32], dx: &mut [f32], accumulate: bool) {
    let (oh, ow) = (d.out_h(), d.out_w());
    dx.par_chunks_mut(d.w * d.c_in).enumerate().for_each(|(row, xr)| {
        let (n, iy) = (row / d.h, row % d.h);
        if !accumulate {
            xr.fill(0.0);
        }
        if iy % d.stride != 0 {
            return;
        }
        let oy = iy / d.stride;
        for ox in 0..ow {
            let ix = ox * d.stride;
            let g = &dy[((n * oh + oy) * ow + ox) * d.c_out + d.pad_before..][..d.c_in];
            for (o, &v) in xr[ix * d.c_in..(ix + 1) * d.c_in].iter_mut().zip(g) {
                *o += v;
            }
        }
    });
}

/// Softmax cross-entropy with label smoothing `eps`: the target is
/// `(1 - eps) * onehot + eps / classes`. Writes the gradient of the mean loss
/// and returns the mean loss and the number of rows whose label has the
/// largest logit (ties go to the lower class, as in evaluation).
pub fn softmax_cross_entropy(
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    eps: f32,
    dlogits: &mut [f32],
) -> (f32, usize) {
    let n = labels.len();
    let rows: Vec<(f64, bool)> = dlogits
        .par_chunks_mut(classes)
        .zip(logits.par_chunks(classes))
        .zip(labels.par_iter())
        .map(|((g, z), &label)| {
            let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = z.iter().map(|&v| (v as f64 - max).exp()).sum();
            let lse = max + sum.ln();
            let mut loss = 0.0;
            let uniform = eps as f64 / classes as f64;
            for (j, (gj, &zj)) in g.iter_mut().zip(z).enumerate() {
                let logp = zj as f64 - lse;
                let q = uniform + if j == label as usize { 1.0 - eps as f64 } else { 0.0 };
                loss -= q * logp;
                *gj = ((logp.exp() - q) / n as f64) as f32;
            }
            let y = label as usize;
            // A NaN logit is a wrong answer (every comparison with NaN is false).
            let beaten = z.iter().enumerate().any(|(j, &v)| v > z[y] || (v == z[y] && j < y) || v.is_nan());
            (loss, !beaten)
        })
        .collect();
    let loss = rows.iter().map(|r| r.0).sum::<f64>() / n as f64;
    (loss as f32, rows.iter().filter(|r| r.1).count())
}

/// `torch.optim.SGD` for one parameter tensor.
pub fn sgd(s: &SgdStep, p: &mut [f32], g: &[f32], buf: &mut [f32]) {
    p.par_chunks_mut(GRAIN).zip(buf.par_chunks_mut(GRAIN)).enumerate().for_each(|(t, (pc, bc))| {
        let gc = &g[t * GRAIN..];
        for ((pv, bv), &gv) in pc.iter_mut().zip(bc.iter_mut()).zip(gc) {
            let mut d = gv;
            if s.weight_decay != 0.0 {
                d += s.weight_decay * *pv;
            }
            if s.momentum != 0.0 {
                *bv = if s.first { d } else { s.momentum * *bv + (1.0 - s.dampening) * d };
                d = if s.nesterov { d + s.momentum * *bv } else { *bv };
            }
            *pv -= s.lr * d;
        }
    });
}
