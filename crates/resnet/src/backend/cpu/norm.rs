//! Batch normalisation over NHWC rows (`rows = n*h*w`, `c` channels), with
//! PyTorch's semantics: biased batch variance to normalise, unbiased variance
//! for the running estimate, and a fused tail (`+ residual`, ReLU).

use rayon::prelude::*;

/// Rows per reduction chunk. Chunking depends only on the shape, so sums are
/// reproducible whatever the thread count.
const CHUNK_ROWS: usize = 256;

/// Per-channel sums over rows: `f(row, out)` adds row `row`'s contributions
/// into `out` (`per_row` values per channel). Chunks are summed in f64.
fn channel_sums(rows: usize, width: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f64> {
    let chunks = rows.div_ceil(CHUNK_ROWS);
    let partial: Vec<Vec<f32>> = (0..chunks)
        .into_par_iter()
        .map(|j| {
            let mut acc = vec![0.0f32; width];
            for r in j * CHUNK_ROWS..((j + 1) * CHUNK_ROWS).min(rows) {
                f(r, &mut acc);
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f64; width];
    for p in &partial {
        for (t, &v) in total.iter_mut().zip(p) {
            *t += v as f64;
        }
    }
    total
}

/// `y = relu?(x * a + b + residual?)` row by row, `a`, `b` per channel.
fn affine_tail(c: usize, x: &[f32], a: &[f32], b: &[f32], residual: Option<&[f32]>, relu: bool, y: &mut [f32]) {
    let rows_per_task = (16384 / c.max(1)).max(1);
    y.par_chunks_mut(rows_per_task * c).enumerate().for_each(|(t, yc)| {
        let base = t * rows_per_task * c;
        let xc = &x[base..base + yc.len()];
        for (r, (yr, xr)) in yc.chunks_exact_mut(c).zip(xc.chunks_exact(c)).enumerate() {
            for ch in 0..c {
                yr[ch] = xr[ch] * a[ch] + b[ch];
            }
            if let Some(res) = residual {
                let rr = &res[base + r * c..base + (r + 1) * c];
                for ch in 0..c {
                    yr[ch] += rr[ch];
                }
            }
            if relu {
                for v in yr.iter_mut() {
                    *v = v.max(0.0);
                }
            }
        }
    });
}

/// Inference: `y = tail((x - mean) / sqrt(var + eps) * gamma + beta)`.
#[allow(clippy::too_many_arguments)]
pub fn forward_inference(
    c: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f32,
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    let (a, b) = fold(gamma, beta, mean, var, eps);
    affine_tail(c, x, &a, &b, residual, relu, y);
}

/// The per-channel `(scale, shift)` a frozen batch norm reduces to.
pub fn fold(gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = gamma.iter().zip(var).map(|(&g, &v)| g / (v + eps).sqrt()).collect();
    let b: Vec<f32> = beta.iter().zip(mean).zip(&a).map(|((&be, &m), &s)| be - m * s).collect();
    (a, b)
}

/// Training forward: batch statistics, saved for backward, running update.
#[allow(clippy::too_many_arguments)]
pub fn forward_training(
    rows: usize,
    c: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    running: Option<(&mut [f32], &mut [f32], f32)>,
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    let n = rows as f64;
    let sums = channel_sums(rows, c, |r, acc| {
        for (a, &v) in acc.iter_mut().zip(&x[r * c..(r + 1) * c]) {
            *a += v;
        }
    });
    let mean: Vec<f32> = sums.iter().map(|s| (s / n) as f32).collect();
    let sq = channel_sums(rows, c, |r, acc| {
        for ((a, &v), &m) in acc.iter_mut().zip(&x[r * c..(r + 1) * c]).zip(&mean) {
            let d = v - m;
            *a += d * d;
        }
    });
    for ch in 0..c {
        let var = sq[ch] / n;
        save_mean[ch] = mean[ch];
        save_invstd[ch] = (1.0 / (var + eps as f64).sqrt()) as f32;
    }
    if let Some((rm, rv, momentum)) = running {
        let unbias = if rows > 1 { n / (n - 1.0) } else { 1.0 };
        for ch in 0..c {
            let var_u = sq[ch] / n * unbias;
            rm[ch] = (1.0 - momentum) * rm[ch] + momentum * mean[ch];
            rv[ch] = ((1.0 - momentum as f64) * rv[ch] as f64 + momentum as f64 * var_u) as f32;
        }
    }
    let a: Vec<f32> = gamma.iter().zip(save_invstd.iter()).map(|(&g, &s)| g * s).collect();
    let b: Vec<f32> = beta.iter().zip(&mean).zip(&a).map(|((&be, &m), &s)| be - m * s).collect();
    affine_tail(c, x, &a, &b, residual, relu, y);
}

/// Backward of a training-mode batch norm with its fused tail.
///
/// `dy_eff = dy * (y > 0)` when the forward pass had a ReLU, else `dy`.
/// `dx = gamma * invstd * (dy_eff - mean(dy_eff) - xhat * mean(dy_eff * xhat))`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    rows: usize,
    c: usize,
    x: &[f32],
    y: &[f32],
    relu: bool,
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    dsum: Option<&mut [f32]>,
) {
    let eff = |i: usize| if relu && y[i] <= 0.0 { 0.0 } else { dy[i] };
    // Two sums per channel, interleaved: [sum dy, sum dy*xhat].
    let sums = channel_sums(rows, 2 * c, |r, acc| {
        let (s_dy, s_dyx) = acc.split_at_mut(c);
        for ch in 0..c {
            let i = r * c + ch;
            let g = eff(i);
            s_dy[ch] += g;
            s_dyx[ch] += g * (x[i] - mean[ch]) * invstd[ch];
        }
    });
    let n = rows as f64;
    let mut k1 = vec![0.0f32; c];
    let mut k2 = vec![0.0f32; c];
    let mut scale = vec![0.0f32; c];
    for ch in 0..c {
        dbeta[ch] += sums[ch] as f32;
        dgamma[ch] += sums[c + ch] as f32;
        k1[ch] = (sums[ch] / n) as f32;
        k2[ch] = (sums[c + ch] / n) as f32;
        scale[ch] = gamma[ch] * invstd[ch];
    }
    let rows_per_task = (16384 / c.max(1)).max(1);
    let task = |t: usize, dxc: &mut [f32], ds: Option<&mut [f32]>| {
        let base = t * rows_per_task * c;
        for (j, d) in dxc.iter_mut().enumerate() {
            let i = base + j;
            let ch = i % c;
            let g = eff(i);
            let xhat = (x[i] - mean[ch]) * invstd[ch];
            *d = scale[ch] * (g - k1[ch] - xhat * k2[ch]);
        }
        if let Some(ds) = ds {
            for (j, d) in ds.iter_mut().enumerate() {
                *d = eff(base + j);
            }
        }
    };
    let len = rows_per_task * c;
    match dsum {
        Some(ds) => dx
            .par_chunks_mut(len)
            .zip(ds.par_chunks_mut(len))
            .enumerate()
            .for_each(|(t, (dxc, dsc))| task(t, dxc, Some(dsc))),
        None => dx.par_chunks_mut(len).enumerate().for_each(|(t, dxc)| task(t, dxc, None)),
    }
}
