//! Batch normalisation over NHWC rows (`rows = n*h*w`, `c` channels), with
//! PyTorch's semantics: biased batch variance to normalise, unbiased variance
//! for the running estimate, and a fused tail (`+ residual`, ReLU).
//!
//! Rows are processed in fixed chunks (so sums are reproducible whatever the
//! thread count) with the channel loop innermost, where it vectorises.

use rayon::prelude::*;

/// Rows per chunk: a chunk of a 64-channel tensor is 64 KB.
const CHUNK_ROWS: usize = 256;

/// Per-chunk results, reduced in chunk order.
fn per_chunk<T: Send>(rows: usize, f: impl Fn(std::ops::Range<usize>) -> T + Sync) -> Vec<T> {
    let chunks = rows.div_ceil(CHUNK_ROWS);
    (0..chunks).into_par_iter().map(|j| f(j * CHUNK_ROWS..((j + 1) * CHUNK_ROWS).min(rows))).collect()
}

/// Applies `f(row_range, y_chunk)` over chunks of rows of `y` in parallel.
fn rows_mut(y: &mut [f32], c: usize, f: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync) {
    y.par_chunks_mut(CHUNK_ROWS * c).enumerate().for_each(|(j, yc)| {
        let r0 = j * CHUNK_ROWS;
        f(r0..r0 + yc.len() / c, yc)
    });
}

/// `y = relu?(x * a + b + residual?)`, `a` and `b` per channel.
fn affine_tail(c: usize, x: &[f32], a: &[f32], b: &[f32], residual: Option<&[f32]>, relu: bool, y: &mut [f32]) {
    rows_mut(y, c, |rows, yc| {
        let span = rows.start * c..rows.end * c;
        affine_rows(c, &x[span.clone()], a, b, residual.map(|r| &r[span]), relu, yc)
    });
}

wide_fn! {
    /// [`affine_tail`] on one chunk of rows, in one sweep.
    fn affine_rows(c: usize, x: &[f32], a: &[f32], b: &[f32], residual: Option<&[f32]>, relu: bool, y: &mut [f32]) {
        let (a, b) = (&a[..c], &b[..c]);
        match residual {
            Some(res) => {
                for ((yr, xr), rr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(res.chunks_exact(c)) {
                    for ch in 0..c {
                        let v = xr[ch] * a[ch] + b[ch] + rr[ch];
                        yr[ch] = if relu { crate::backend::relu(v) } else { v };
                    }
                }
            }
            None => {
                for (yr, xr) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
                    for ch in 0..c {
                        let v = xr[ch] * a[ch] + b[ch];
                        yr[ch] = if relu { crate::backend::relu(v) } else { v };
                    }
                }
            }
        }
    }
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

wide_fn! {
    /// Per-channel mean and sum of squared deviations of a chunk (two passes
    /// over cache-resident data).
    fn chunk_moments(c: usize, x: &[f32]) -> (usize, Vec<f32>, Vec<f32>) {
        let n = x.len() / c;
        let mut sum = vec![0.0f32; c];
        for xr in x.chunks_exact(c) {
            for (s, &v) in sum.iter_mut().zip(xr) {
                *s += v;
            }
        }
        let mean: Vec<f32> = sum.iter().map(|s| s / n as f32).collect();
        let mut m2 = vec![0.0f32; c];
        for xr in x.chunks_exact(c) {
            for ((s, &v), &m) in m2.iter_mut().zip(xr).zip(&mean) {
                let d = v - m;
                *s += d * d;
            }
        }
        (n, mean, m2)
    }
}

/// Per-channel batch moments combined from parts (chunks of rows, blocks of
/// tiles) in a fixed order with Chan et al.'s parallel formula, in f64.
#[derive(Debug)]
pub(super) struct Moments {
    n: usize,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl Moments {
    /// No rows yet, `c` channels.
    pub(super) fn new(c: usize) -> Self {
        Self { n: 0, mean: vec![0.0; c], m2: vec![0.0; c] }
    }

    /// Adds a part of `nb` rows with per-channel mean `mb` and sum of squared
    /// deviations `m2b`.
    pub(super) fn add(&mut self, nb: usize, mb: &[f32], m2b: &[f32]) {
        if nb == 0 {
            return;
        }
        let (n, total) = (self.n as f64, (self.n + nb) as f64);
        for ((mean, m2), (&mb, &m2b)) in self.mean.iter_mut().zip(&mut self.m2).zip(mb.iter().zip(m2b)) {
            let delta = mb as f64 - *mean;
            *mean += delta * nb as f64 / total;
            *m2 += m2b as f64 + delta * delta * n * nb as f64 / total;
        }
        self.n += nb;
    }

    /// Writes the mean and the biased variance (`[mean; c]`, then `[var; c]`).
    pub(super) fn write(&self, out: &mut [f32]) {
        let c = self.mean.len();
        let n = self.n.max(1) as f64;
        for ch in 0..c {
            out[ch] = self.mean[ch] as f32;
            out[c + ch] = (self.m2[ch] / n) as f32;
        }
    }
}

/// Training forward: batch statistics, saved for backward, running update.
/// `known` holds the batch mean and biased variance when the layer that
/// produced `x` computed them on the way (`[mean; c]`, `[var; c]`).
#[allow(clippy::too_many_arguments)]
pub fn forward_training(
    rows: usize,
    c: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    known: Option<&[f32]>,
    running: Option<(&mut [f32], &mut [f32], f32)>,
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    let (mean, m2): (Vec<f64>, Vec<f64>) = match known {
        Some(st) => (
            st[..c].iter().map(|&v| v as f64).collect(),
            st[c..2 * c].iter().map(|&v| v as f64 * rows as f64).collect(),
        ),
        None => {
            let mut all = Moments::new(c);
            for (nb, mb, m2b) in per_chunk(rows, |r| chunk_moments(c, &x[r.start * c..r.end * c])) {
                all.add(nb, &mb, &m2b);
            }
            (all.mean, all.m2)
        }
    };
    let nf = rows as f64;
    for ch in 0..c {
        save_mean[ch] = mean[ch] as f32;
        save_invstd[ch] = (1.0 / (m2[ch] / nf + eps as f64).sqrt()) as f32;
    }
    if let Some((rm, rv, momentum)) = running {
        let unbias = if rows > 1 { nf / (nf - 1.0) } else { 1.0 };
        for ch in 0..c {
            let var_u = m2[ch] / nf * unbias;
            rm[ch] = (1.0 - momentum) * rm[ch] + momentum * save_mean[ch];
            rv[ch] = ((1.0 - momentum as f64) * rv[ch] as f64 + momentum as f64 * var_u) as f32;
        }
    }
    forward_saved(c, x, gamma, beta, save_mean, save_invstd, residual, relu, y);
}

/// The output of [`forward_training`] from the statistics it saved: the
/// same operations on the same values, so the same bits.
#[allow(clippy::too_many_arguments)]
pub fn forward_saved(
    c: usize,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    invstd: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    let (a, b) = training_affine(gamma, beta, mean, invstd);
    affine_tail(c, x, &a, &b, residual, relu, y);
}

/// The per-channel `(a, b)` of a training-mode forward pass, `bn(x) = x * a +
/// b`; backward recomputes them with the same operations for its ReLU mask.
fn training_affine(gamma: &[f32], beta: &[f32], mean: &[f32], invstd: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = gamma.iter().zip(invstd).map(|(&g, &s)| g * s).collect();
    let b: Vec<f32> = beta.iter().zip(mean).zip(&a).map(|((&be, &m), &s)| be - m * s).collect();
    (a, b)
}

/// Which elements of `dy` pass back through the forward pass's ReLU.
#[derive(Clone, Copy)]
enum Mask<'a> {
    /// All (no ReLU).
    All,
    /// Those where the forward output `y` is positive (a ReLU after a
    /// residual sum).
    Output(&'a [f32]),
    /// Those where `x * a + b` is positive: the pre-ReLU value recomputed
    /// exactly as [`affine_rows`] computed it (same f32 operations, never
    /// contracted), which spares reading `y`.
    Affine(&'a [f32], &'a [f32]),
}

/// The kinds of [`Mask`] as constants, so that each kernel below is compiled
/// once per kind with the test inlined into its vectorised loop.
const ALL: u8 = 0;
const OUTPUT: u8 = 1;
const AFFINE: u8 = 2;

impl<'a> Mask<'a> {
    /// The kind, the output rows of the chunk `span` (for [`Mask::Output`],
    /// else `x`'s, unread) and the coefficients (for [`Mask::Affine`], else
    /// unread).
    fn parts(self, x: &'a [f32], span: std::ops::Range<usize>) -> (u8, &'a [f32], (&'a [f32], &'a [f32])) {
        match self {
            Mask::All => (ALL, &x[span], (&[], &[])),
            Mask::Output(y) => (OUTPUT, &y[span], (&[], &[])),
            Mask::Affine(a, b) => (AFFINE, &x[span], (a, b)),
        }
    }
}

/// `dy` where the mask of kind `K` lets it through, else 0.
#[inline(always)]
fn gate<const K: u8>(g: f32, x: f32, y: f32, a: f32, b: f32) -> f32 {
    let keep = match K {
        OUTPUT => y > 0.0,
        AFFINE => x * a + b > 0.0,
        _ => true,
    };
    if keep { g } else { 0.0 }
}

/// Per-channel sums of `g` and `g * (x - mean)` over a chunk.
#[inline(always)]
fn grad_sums_of<const K: u8>(
    c: usize,
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    mean: &[f32],
    (a, b): (&[f32], &[f32]),
) -> (Vec<f32>, Vec<f32>) {
    let mean = &mean[..c];
    let (a, b) = if K == AFFINE { (&a[..c], &b[..c]) } else { (mean, mean) };
    let mut s1 = vec![0.0f32; c];
    let mut s2 = vec![0.0f32; c];
    for ((xr, yr), gr) in x.chunks_exact(c).zip(y.chunks_exact(c)).zip(dy.chunks_exact(c)) {
        for ch in 0..c {
            let g = gate::<K>(gr[ch], xr[ch], yr[ch], a[ch], b[ch]);
            s1[ch] += g;
            s2[ch] += g * (xr[ch] - mean[ch]);
        }
    }
    (s1, s2)
}

wide_fn! {
    /// [`grad_sums_of`] for the mask's kind, on the chunk `span`.
    fn grad_sums(c: usize, x: &[f32], dy: &[f32], span: std::ops::Range<usize>, mean: &[f32], mask: Mask<'_>) -> (Vec<f32>, Vec<f32>) {
        let (kind, y, ab) = mask.parts(x, span.clone());
        let (x, dy) = (&x[span.clone()], &dy[span]);
        match kind {
            OUTPUT => grad_sums_of::<OUTPUT>(c, x, y, dy, mean, ab),
            AFFINE => grad_sums_of::<AFFINE>(c, x, y, dy, mean, ab),
            _ => grad_sums_of::<ALL>(c, x, y, dy, mean, ab),
        }
    }
}

/// `dx = ka * g + kb * (x - mean) + kc` per channel over a chunk, and `dsum =
/// g` (the gradient at the residual sum) in the same sweep when asked.
#[inline(always)]
fn write_dx_of<const K: u8>(
    c: usize,
    (x, y, dy): (&[f32], &[f32], &[f32]),
    mean: &[f32],
    k: (&[f32], &[f32], &[f32]),
    (a, b): (&[f32], &[f32]),
    dx: &mut [f32],
    dsum: Option<&mut [f32]>,
) {
    let (ka, kb, kc, mean) = (&k.0[..c], &k.1[..c], &k.2[..c], &mean[..c]);
    let (a, b) = if K == AFFINE { (&a[..c], &b[..c]) } else { (mean, mean) };
    let rows = x.chunks_exact(c).zip(y.chunks_exact(c)).zip(dy.chunks_exact(c)).zip(dx.chunks_exact_mut(c));
    match dsum {
        Some(ds) => {
            for ((((xr, yr), gr), dr), sr) in rows.zip(ds.chunks_exact_mut(c)) {
                for ch in 0..c {
                    let g = gate::<K>(gr[ch], xr[ch], yr[ch], a[ch], b[ch]);
                    sr[ch] = g;
                    dr[ch] = ka[ch] * g + kb[ch] * (xr[ch] - mean[ch]) + kc[ch];
                }
            }
        }
        None => {
            for (((xr, yr), gr), dr) in rows {
                for ch in 0..c {
                    let g = gate::<K>(gr[ch], xr[ch], yr[ch], a[ch], b[ch]);
                    dr[ch] = ka[ch] * g + kb[ch] * (xr[ch] - mean[ch]) + kc[ch];
                }
            }
        }
    }
}

wide_fn! {
    /// [`write_dx_of`] for the mask's kind, on the chunk `span`.
    fn write_dx(
        c: usize,
        x: &[f32],
        dy: &[f32],
        span: std::ops::Range<usize>,
        mean: &[f32],
        k: (&[f32], &[f32], &[f32]),
        mask: Mask<'_>,
        dx: &mut [f32],
        dsum: Option<&mut [f32]>,
    ) {
        let (kind, y, ab) = mask.parts(x, span.clone());
        let rows = (&x[span.clone()], y, &dy[span]);
        match kind {
            OUTPUT => write_dx_of::<OUTPUT>(c, rows, mean, k, ab, dx, dsum),
            AFFINE => write_dx_of::<AFFINE>(c, rows, mean, k, ab, dx, dsum),
            _ => write_dx_of::<ALL>(c, rows, mean, k, ab, dx, dsum),
        }
    }
}

/// Backward of a training-mode batch norm with its fused tail.
///
/// `g = dy * (y > 0)` when the forward pass had a ReLU, else `dy`;
/// `dx = gamma * invstd * (g - mean(g) - xhat * mean(g * xhat))`, and `dsum =
/// g` when the forward pass had a residual.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    rows: usize,
    c: usize,
    x: &[f32],
    y: &[f32],
    relu: bool,
    dy: &[f32],
    (gamma, beta): (&[f32], &[f32]),
    mean: &[f32],
    invstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    dsum: Option<&mut [f32]>,
) {
    // Without a residual, the ReLU mask follows from x (and spares reading y).
    let ab = (relu && dsum.is_none()).then(|| training_affine(gamma, beta, mean, invstd));
    let mask = match (&ab, relu) {
        (Some((a, b)), _) => Mask::Affine(a, b),
        (None, true) => Mask::Output(y),
        (None, false) => Mask::All,
    };
    // Sums of g and g * (x - mean) per channel, chunk by chunk.
    let parts = per_chunk(rows, |r| {
        let span = r.start * c..r.end * c;
        grad_sums(c, x, dy, span, mean, mask)
    });
    let mut sum_g = vec![0.0f64; c];
    let mut sum_gx = vec![0.0f64; c];
    for (s1, s2) in &parts {
        for ch in 0..c {
            sum_g[ch] += s1[ch] as f64;
            sum_gx[ch] += s2[ch] as f64;
        }
    }
    // dx = A g + B (x - mean) + C, per channel.
    let n = rows as f64;
    let mut ka = vec![0.0f32; c];
    let mut kb = vec![0.0f32; c];
    let mut kc = vec![0.0f32; c];
    for ch in 0..c {
        let is = invstd[ch] as f64;
        dbeta[ch] += sum_g[ch] as f32;
        dgamma[ch] += (sum_gx[ch] * is) as f32;
        let scale = gamma[ch] as f64 * is;
        ka[ch] = scale as f32;
        kb[ch] = (-scale * is * is * sum_gx[ch] / n) as f32;
        kc[ch] = (-scale * sum_g[ch] / n) as f32;
    }
    let k = (&ka[..], &kb[..], &kc[..]);
    let chunk = CHUNK_ROWS * c;
    match dsum {
        Some(ds) => dx.par_chunks_mut(chunk).zip(ds.par_chunks_mut(chunk)).enumerate().for_each(|(j, (dxc, dsc))| {
            let span = j * chunk..j * chunk + dxc.len();
            write_dx(c, x, dy, span, mean, k, mask, dxc, Some(dsc))
        }),
        None => rows_mut(dx, c, |r, dxc| {
            let span = r.start * c..r.end * c;
            write_dx(c, x, dy, span, mean, k, mask, dxc, None)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a residual, backward takes the ReLU mask from `x` (recomputing
    /// the forward's pre-ReLU value) instead of reading `y`: the gradients
    /// must be bit for bit those of the mask read from `y`.
    #[test]
    fn mask_from_x_is_the_mask_from_y() {
        let (rows, c) = (700, 24);
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut rand = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let x: Vec<f32> = (0..rows * c).map(|_| rand() * 3.0 + 0.5).collect();
        let dy: Vec<f32> = (0..rows * c).map(|_| rand()).collect();
        let gamma: Vec<f32> = (0..c).map(|_| rand()).collect();
        let beta: Vec<f32> = (0..c).map(|_| rand() * 0.5).collect();
        let (mut mean, mut invstd, mut y) = (vec![0.0; c], vec![0.0; c], vec![0.0; rows * c]);
        forward_training(rows, c, &x, &gamma, &beta, 1e-5, None, None, &mut mean, &mut invstd, None, true, &mut y);
        assert!(y.contains(&0.0) && y.iter().any(|&v| v > 0.0));
        let ab = training_affine(&gamma, &beta, &mean, &invstd);
        let run = |mask: Mask<'_>| {
            let (s1, s2) = grad_sums(c, &x, &dy, 0..rows * c, &mean, mask);
            let mut dx = vec![0.0; rows * c];
            write_dx(c, &x, &dy, 0..rows * c, &mean, (&gamma, &s1, &s2), mask, &mut dx, None);
            (s1, s2, dx)
        };
        let from_y = run(Mask::Output(&y));
        let from_x = run(Mask::Affine(&ab.0, &ab.1));
        assert_eq!(from_y, from_x);
        // And the whole backward pass, with and without a residual's dsum.
        let (mut dx1, mut dx2, mut dsum) = (vec![0.0; rows * c], vec![0.0; rows * c], vec![0.0; rows * c]);
        let (mut g1, mut b1, mut g2, mut b2) = (vec![0.0; c], vec![0.0; c], vec![0.0; c], vec![0.0; c]);
        let p = (&gamma[..], &beta[..]);
        backward(rows, c, &x, &y, true, &dy, p, &mean, &invstd, &mut dx1, &mut g1, &mut b1, None);
        backward(rows, c, &x, &y, true, &dy, p, &mean, &invstd, &mut dx2, &mut g2, &mut b2, Some(&mut dsum));
        assert_eq!((dx1, g1, b1), (dx2, g2, b2));
    }
}
