//! Packed matrix multiply, `C = A·B`, with a fused epilogue.
//!
//! This is the engine under every convolution and linear layer. It follows the
//! BLIS/GotoBLAS scheme: the reduction dimension is cut into blocks of [`KC`],
//! operands are copied ("packed") into panels that the register-blocked
//! micro-kernel streams through, and each tile of `C` is finished by an
//! epilogue (accumulate, per-column scale and bias, residual add, ReLU) while
//! it is still in registers.
//!
//! Operands are not matrices in memory but anything that can pack itself
//! ([`Operand`]): a strided matrix, or a convolution window over an NHWC image
//! (implicit im2col, see `conv.rs`). So a 3x3 convolution never materialises
//! its im2col matrix, and a 1x1 convolution reads its input in place.
//!
//! Each tile of `C` is computed by exactly one task over the full reduction in
//! a fixed order, so results do not depend on the number of threads.

use super::mem::AlignedVec;
use std::cell::RefCell;
use std::sync::Mutex;

use rayon::prelude::*;

/// Width of a packed B panel (columns of `C` per micro-kernel call): one
/// AVX-512 vector of f32.
pub const NR: usize = 16;
/// Reduction block: one packed A micro-panel (`mr x KC`) stays in L1.
pub const KC: usize = 256;
/// Rows of `C` handled by one task (a packed A block, kept in L2).
const MC: usize = 168;
/// Columns of `C` handled by one task.
const NC: usize = 512;

/// Something that can be packed as a GEMM operand.
///
/// An operand is a logical matrix with `rows` rows and a reduction dimension
/// `k`. For `A` the rows are the rows of `C`; for `B` they are the columns of
/// `C` (so `B` is described by its transpose).
pub trait Operand: Sync {
    /// Writes rows `row0..row0 + rows` and reduction indices `k0..k0 + kc`
    /// into `dst` in panel order: for each group of `width` rows, `kc` runs of
    /// `width` values (element `(r, k)` at `k * width + r` within its panel).
    /// Rows past `rows` in the last panel are written as zeros.
    fn pack(&self, row0: usize, rows: usize, k0: usize, kc: usize, width: usize, dst: &mut [f32]);
}

/// A dense matrix view with arbitrary strides: element `(r, k)` is
/// `data[r * row_stride + k * k_stride]`.
#[derive(Clone, Copy)]
pub struct Strided<'a> {
    /// The backing storage.
    pub data: &'a [f32],
    /// Distance between consecutive rows.
    pub row_stride: usize,
    /// Distance between consecutive reduction indices.
    pub k_stride: usize,
}

impl Operand for Strided<'_> {
    fn pack(&self, row0: usize, rows: usize, k0: usize, kc: usize, width: usize, dst: &mut [f32]) {
        let panels = rows.div_ceil(width);
        for p in 0..panels {
            let out = &mut dst[p * kc * width..(p + 1) * kc * width];
            let r_begin = row0 + p * width;
            let n = width.min(row0 + rows - r_begin);
            if self.row_stride == 1 {
                // Rows are contiguous for a fixed k: copy runs of `n`.
                for kk in 0..kc {
                    let src = r_begin + (k0 + kk) * self.k_stride;
                    let o = &mut out[kk * width..(kk + 1) * width];
                    o[..n].copy_from_slice(&self.data[src..src + n]);
                    o[n..].fill(0.0);
                }
            } else {
                for r in 0..n {
                    let base = (r_begin + r) * self.row_stride + k0 * self.k_stride;
                    if self.k_stride == 1 {
                        let src = &self.data[base..base + kc];
                        for (kk, &v) in src.iter().enumerate() {
                            out[kk * width + r] = v;
                        }
                    } else {
                        for kk in 0..kc {
                            out[kk * width + r] = self.data[base + kk * self.k_stride];
                        }
                    }
                }
                if n < width {
                    for kk in 0..kc {
                        out[kk * width + n..(kk + 1) * width].fill(0.0);
                    }
                }
            }
        }
    }
}

/// `B` packed once for all its reduction blocks: reusable across calls (a
/// convolution filter at inference) and shared by all threads.
#[derive(Clone, Debug, Default)]
pub struct PackedB {
    n: usize,
    k: usize,
    data: AlignedVec<f32>,
}

impl PackedB {
    /// Packs a `k x n` operand (given as its `n`-row transpose).
    pub fn pack(&mut self, b: &dyn Operand, n: usize, k: usize) {
        let npanels = n.div_ceil(NR);
        self.n = n;
        self.k = k;
        self.data.resize(npanels * NR * k, 0.0);
        // Layout: reduction block by reduction block; inside one, panel by panel.
        let mut off = 0;
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let len = npanels * NR * kc;
            b.pack(0, n, k0, kc, NR, &mut self.data[off..off + len]);
            off += len;
        }
    }

    /// Panels `jp..` of reduction block starting at `k0` (which has length `kc`).
    fn block(&self, k0: usize, kc: usize, panel: usize) -> &[f32] {
        let npanels = self.n.div_ceil(NR);
        let start = k0 * npanels * NR + panel * NR * kc;
        &self.data[start..]
    }
}

/// The output matrix: `rows x cols` with row stride `ld` and unit column stride.
pub struct OutMat<'a> {
    /// Storage; element `(i, j)` at `i * ld + j`.
    pub data: &'a mut [f32],
    /// Row stride.
    pub ld: usize,
}

/// What happens to a finished tile of `C` before it is stored.
///
/// `C = relu?( (acc + C_old?) * scale + bias + residual )`, each part optional.
#[derive(Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// Add the previous contents of `C` (`beta = 1`).
    pub accumulate: bool,
    /// Per-column multiplier.
    pub scale: Option<&'a [f32]>,
    /// Per-column addend.
    pub bias: Option<&'a [f32]>,
    /// A matrix of `C`'s shape added element-wise, with its own row stride.
    pub residual: Option<(&'a [f32], usize)>,
    /// Clamp at zero.
    pub relu: bool,
}

/// The instruction set chosen for the micro-kernel, detected once.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Isa {
    /// AVX-512F: 32 vector registers of 16 f32.
    Avx512,
    /// AVX2 + FMA: 16 registers of 8 f32.
    Avx2,
    /// Portable Rust, vectorised by the compiler as it can.
    Generic,
}

/// The micro-kernel ISA in use on this machine.
pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::env::var_os("RESNET_NO_AVX512").is_none() && is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Generic
    })
}

/// Rows per micro-kernel call for an ISA.
fn mr_of(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 28,
        Isa::Avx2 => 6,
        Isa::Generic => 4,
    }
}

thread_local! {
    /// Per-thread buffer for packed A blocks (never borrowed across a rayon call).
    static A_PACK: RefCell<AlignedVec<f32>> = const { RefCell::new(AlignedVec::new()) };
}

/// Recycled buffers for on-the-fly packed B blocks, so steady state allocates nothing.
static B_POOL: Mutex<Vec<PackedB>> = Mutex::new(Vec::new());

/// `C[m x n] (op)= A[m x k] · B[k x n]`, parallel on the current rayon pool.
///
/// `a` has `m` rows, `b` describes `B` by its `n`-row transpose. See
/// [`Epilogue`] for what is applied to each tile.
pub fn gemm(m: usize, n: usize, k: usize, a: &dyn Operand, b: &dyn Operand, c: OutMat<'_>, epi: &Epilogue<'_>) {
    gemm_isa(isa(), m, n, k, a, b, c, epi)
}

/// [`gemm`] with an explicit micro-kernel (tests run every kernel the CPU has).
#[allow(clippy::too_many_arguments)]
fn gemm_isa(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &dyn Operand,
    b: &dyn Operand,
    c: OutMat<'_>,
    epi: &Epilogue<'_>,
) {
    if m == 0 || n == 0 {
        return;
    }
    debug_assert!(c.ld >= n && c.data.len() >= (m - 1) * c.ld + n);
    if k == 0 {
        // Nothing to multiply: C is just the epilogue applied to zeros (or C_old).
        epilogue_of_zero(c.data, c.ld, m, n, epi);
        return;
    }
    let mut pb = B_POOL.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
    pb.pack(b, n, k);
    gemm_packed(isa, m, n, k, a, &pb, c, epi);
    B_POOL.lock().unwrap_or_else(|e| e.into_inner()).push(pb);
}

/// A raw pointer to `C` that tasks share; each task writes a disjoint tile.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tasks write disjoint tiles of C (see `gemm_packed`), so sharing the
// pointer across threads creates no data race.
unsafe impl Send for CPtr {}
// SAFETY: as above.
unsafe impl Sync for CPtr {}

impl CPtr {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[allow(clippy::too_many_arguments)]
fn gemm_packed(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    a: &dyn Operand,
    b: &PackedB,
    c: OutMat<'_>,
    epi: &Epilogue<'_>,
) {
    let mr = mr_of(isa);
    let ld = c.ld;
    let cptr = CPtr(c.data.as_mut_ptr());
    let clen = c.data.len();

    // Tasks: blocks of rows x blocks of columns. Make at least ~2 tasks per
    // thread when the shape allows, splitting columns when rows are few.
    let threads = rayon::current_num_threads().max(1);
    let mc = MC.min(m.div_ceil(mr) * mr);
    let mblocks = m.div_ceil(mc);
    let npanels = n.div_ceil(NR);
    let mut nc_panels = (NC / NR).min(npanels);
    while mblocks * npanels.div_ceil(nc_panels) < 2 * threads && nc_panels > 1 {
        nc_panels = nc_panels.div_ceil(2);
    }
    let nblocks = npanels.div_ceil(nc_panels);
    let tasks = mblocks * nblocks;

    let run = |t: usize| {
        let (ib, jb) = (t / nblocks, t % nblocks);
        let i0 = ib * mc;
        let rows = mc.min(m - i0);
        let p0 = jb * nc_panels;
        let p1 = (p0 + nc_panels).min(npanels);
        A_PACK.with(|buf| {
            let mut buf = buf.borrow_mut();
            let need = rows.div_ceil(mr) * mr * KC;
            if buf.len() < need {
                buf.resize(need, 0.0);
            }
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                let last = k0 + kc == k;
                a.pack(i0, rows, k0, kc, mr, &mut buf[..rows.div_ceil(mr) * mr * kc]);
                for ip in 0..rows.div_ceil(mr) {
                    let apanel = &buf[ip * mr * kc..(ip + 1) * mr * kc];
                    let r0 = i0 + ip * mr;
                    let mr_eff = mr.min(m - r0);
                    for jp in p0..p1 {
                        let bpanel = &b.block(k0, kc, jp)[..NR * kc];
                        let c0 = jp * NR;
                        let nr_eff = NR.min(n - c0);
                        let tile = Tile {
                            c: cptr.get(),
                            clen,
                            ld,
                            r0,
                            c0,
                            mr: mr_eff,
                            nr: nr_eff,
                            load_c: k0 > 0 || epi.accumulate,
                            epi: if last { Some(epi) } else { None },
                        };
                        // SAFETY: the tile lies inside C (r0 + mr_eff <= m,
                        // c0 + nr_eff <= n, checked against clen in debug), and
                        // no other task writes it.
                        unsafe { micro_kernel(isa, kc, apanel, bpanel, &tile) };
                    }
                }
            }
        });
    };
    if tasks == 1 || threads == 1 {
        (0..tasks).for_each(run);
    } else {
        (0..tasks).into_par_iter().for_each(run);
    }
}

/// One micro-kernel output tile and what to do when storing it.
struct Tile<'a> {
    c: *mut f32,
    clen: usize,
    ld: usize,
    r0: usize,
    c0: usize,
    mr: usize,
    nr: usize,
    /// Add the current contents of C (a previous reduction block or beta = 1).
    load_c: bool,
    /// Present on the last reduction block.
    epi: Option<&'a Epilogue<'a>>,
}

/// Dispatches to the micro-kernel for `isa`.
///
/// # Safety
/// `tile` must describe a region inside C that no other thread accesses.
unsafe fn micro_kernel(isa: Isa, kc: usize, a: &[f32], b: &[f32], tile: &Tile<'_>) {
    debug_assert!((tile.r0 + tile.mr - 1) * tile.ld + tile.c0 + tile.nr <= tile.clen);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is only selected when the CPU reports avx512f.
        Isa::Avx512 => unsafe { x86::kernel_avx512::<28>(kc, a, b, tile) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only selected when the CPU reports avx2 and fma.
        Isa::Avx2 => unsafe { x86::kernel_avx2::<6>(kc, a, b, tile) },
        // SAFETY: forwarded caller contract.
        _ => unsafe { kernel_generic::<4>(kc, a, b, tile) },
    }
}

/// Portable micro-kernel: accumulate in a local tile, then store through the
/// shared scalar epilogue.
///
/// # Safety
/// As [`micro_kernel`].
unsafe fn kernel_generic<const MR: usize>(kc: usize, a: &[f32], b: &[f32], tile: &Tile<'_>) {
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..kc {
        let bv = &b[p * NR..(p + 1) * NR];
        let av = &a[p * MR..(p + 1) * MR];
        for i in 0..MR {
            for j in 0..NR {
                acc[i][j] = av[i].mul_add(bv[j], acc[i][j]);
            }
        }
    }
    // SAFETY: forwarded caller contract.
    unsafe { store_tile_scalar(&acc, tile) };
}

/// Stores an accumulator tile with the epilogue, one element at a time.
///
/// # Safety
/// As [`micro_kernel`].
unsafe fn store_tile_scalar<const MR: usize>(acc: &[[f32; NR]; MR], t: &Tile<'_>) {
    for (i, row) in acc.iter().enumerate().take(t.mr) {
        let r = t.r0 + i;
        for (j, &v) in row.iter().enumerate().take(t.nr) {
            let col = t.c0 + j;
            // SAFETY: (r, col) is inside the tile, which is inside C.
            let dst = unsafe { &mut *t.c.add(r * t.ld + col) };
            let mut x = v;
            if t.load_c {
                x += *dst;
            }
            if let Some(e) = t.epi {
                x = finish(x, r, col, e);
            }
            *dst = x;
        }
    }
}

/// The epilogue for one element (`x` already holds acc + C_old).
#[inline(always)]
fn finish(mut x: f32, r: usize, col: usize, e: &Epilogue<'_>) -> f32 {
    if let Some(s) = e.scale {
        x *= s[col];
    }
    if let Some(b) = e.bias {
        x += b[col];
    }
    if let Some((res, ld)) = e.residual {
        x += res[r * ld + col];
    }
    if e.relu && x < 0.0 {
        x = 0.0;
    }
    x
}

/// Applies the epilogue to `C` with a zero product (an empty reduction).
fn epilogue_of_zero(c: &mut [f32], ld: usize, m: usize, n: usize, e: &Epilogue<'_>) {
    for r in 0..m {
        for col in 0..n {
            let old = if e.accumulate { c[r * ld + col] } else { 0.0 };
            c[r * ld + col] = finish(old, r, col, e);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{NR, Tile, store_tile_scalar};
    use std::arch::x86_64::*;

    /// AVX-512 micro-kernel: `MR x 16` accumulators in zmm registers; each
    /// reduction step loads one B vector and broadcasts `MR` A values.
    ///
    /// # Safety
    /// The CPU must support avx512f; `tile` as in `micro_kernel`; `a` holds
    /// `MR * kc` and `b` holds `NR * kc` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel_avx512<const MR: usize>(kc: usize, a: &[f32], b: &[f32], t: &Tile<'_>) {
        debug_assert!(a.len() >= MR * kc && b.len() >= NR * kc);
        let mut acc = [_mm512_setzero_ps(); MR];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for p in 0..kc {
            // SAFETY: p < kc and the panels hold kc steps (asserted above).
            unsafe {
                let bv = _mm512_loadu_ps(bp.add(p * NR));
                let arow = ap.add(p * MR);
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    *acc_i = _mm512_fmadd_ps(_mm512_set1_ps(*arow.add(i)), bv, *acc_i);
                }
            }
        }
        let mask: __mmask16 = if t.nr >= 16 { 0xffff } else { (1u16 << t.nr) - 1 };
        let fast = t.epi.is_none_or(|e| e.scale.is_none() && e.bias.is_none() && e.residual.is_none());
        for (i, acc_i) in acc.iter().enumerate().take(t.mr) {
            let r = t.r0 + i;
            // SAFETY: row r and columns c0..c0+nr are inside the tile; the mask
            // keeps loads and stores within nr columns.
            unsafe {
                let dst = t.c.add(r * t.ld + t.c0);
                let mut x = *acc_i;
                if t.load_c {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, dst));
                }
                if fast {
                    if t.epi.is_some_and(|e| e.relu) {
                        x = _mm512_max_ps(_mm512_setzero_ps(), x);
                    }
                    _mm512_mask_storeu_ps(dst, mask, x);
                } else if let Some(e) = t.epi {
                    if let Some(s) = e.scale {
                        x = _mm512_mul_ps(x, _mm512_maskz_loadu_ps(mask, s.as_ptr().add(t.c0)));
                    }
                    if let Some(bias) = e.bias {
                        x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(t.c0)));
                    }
                    if let Some((res, ld)) = e.residual {
                        debug_assert!(r * ld + t.c0 + t.nr <= res.len());
                        x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, res.as_ptr().add(r * ld + t.c0)));
                    }
                    if e.relu {
                        x = _mm512_max_ps(_mm512_setzero_ps(), x);
                    }
                    _mm512_mask_storeu_ps(dst, mask, x);
                }
            }
        }
    }

    /// AVX2 + FMA micro-kernel: `MR x 16` as two ymm vectors per row.
    ///
    /// # Safety
    /// The CPU must support avx2 and fma; otherwise as `kernel_avx512`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn kernel_avx2<const MR: usize>(kc: usize, a: &[f32], b: &[f32], t: &Tile<'_>) {
        debug_assert!(a.len() >= MR * kc && b.len() >= NR * kc);
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for p in 0..kc {
            // SAFETY: p < kc and the panels hold kc steps (asserted above).
            unsafe {
                let b0 = _mm256_loadu_ps(bp.add(p * NR));
                let b1 = _mm256_loadu_ps(bp.add(p * NR + 8));
                let arow = ap.add(p * MR);
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let av = _mm256_set1_ps(*arow.add(i));
                    acc_i[0] = _mm256_fmadd_ps(av, b0, acc_i[0]);
                    acc_i[1] = _mm256_fmadd_ps(av, b1, acc_i[1]);
                }
            }
        }
        let mut tile = [[0.0f32; NR]; MR];
        for (row, acc_i) in tile.iter_mut().zip(acc.iter()) {
            // SAFETY: row has 16 floats, written as two unaligned 8-lane stores.
            unsafe {
                _mm256_storeu_ps(row.as_mut_ptr(), acc_i[0]);
                _mm256_storeu_ps(row.as_mut_ptr().add(8), acc_i[1]);
            }
        }
        // SAFETY: forwarded contract.
        unsafe { store_tile_scalar(&tile, t) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain triple loop, `C = A·B` for row-major `A[m x k]`, `B[k x n]`: the
    /// reference the tests compare against.
    fn gemm_reference(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += a[i * k + p] as f64 * b[p * n + j] as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Every micro-kernel this CPU can run.
    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Generic];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                v.push(Isa::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
        }
        v
    }

    fn check(m: usize, n: usize, k: usize, trans_a: bool) {
        for isa in isas() {
            check_isa(isa, m, n, k, trans_a);
        }
    }

    fn check_isa(isa: Isa, m: usize, n: usize, k: usize, trans_a: bool) {
        let mut s = (m * 1000 + n * 10 + k) as u64;
        let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut s)).collect();
        let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut s)).collect();
        let bias: Vec<f32> = (0..n).map(|_| lcg(&mut s)).collect();
        let res: Vec<f32> = (0..m * n).map(|_| lcg(&mut s)).collect();
        let mut want = vec![0.0; m * n];
        gemm_reference(m, n, k, &a, &b, &mut want);
        for (i, w) in want.iter_mut().enumerate() {
            *w = crate::backend::relu(*w + bias[i % n] + res[i]);
        }
        // A either row-major or stored transposed (k x m).
        let at: Vec<f32> = (0..k * m).map(|idx| a[(idx % m) * k + idx / m]).collect();
        let a_op = if trans_a {
            Strided { data: &at, row_stride: 1, k_stride: m }
        } else {
            Strided { data: &a, row_stride: k, k_stride: 1 }
        };
        let b_op = Strided { data: &b, row_stride: 1, k_stride: n };
        let mut c = vec![f32::NAN; m * n];
        let epi = Epilogue { bias: Some(&bias), residual: Some((&res, n)), relu: true, ..Default::default() };
        gemm_isa(isa, m, n, k, &a_op, &b_op, OutMat { data: &mut c, ld: n }, &epi);
        for i in 0..m * n {
            let tol = 1e-4 * (k as f32).sqrt();
            assert!((c[i] - want[i]).abs() < tol, "{isa:?} m{m} n{n} k{k} at {i}: {} vs {}", c[i], want[i]);
        }
    }

    #[test]
    fn matches_reference_over_shapes() {
        for &(m, n, k) in
            &[(1, 1, 1), (3, 5, 7), (28, 16, 256), (29, 17, 257), (100, 70, 600), (200, 33, 40), (7, 300, 513)]
        {
            check(m, n, k, false);
            check(m, n, k, true);
        }
    }

    #[test]
    fn accumulate_adds_previous_contents() {
        let (m, n, k) = (30, 20, 10);
        let a = vec![1.0; m * k];
        let b = vec![0.5; k * n];
        let mut c = vec![2.0; m * n];
        let epi = Epilogue { accumulate: true, ..Default::default() };
        gemm(
            m,
            n,
            k,
            &Strided { data: &a, row_stride: k, k_stride: 1 },
            &Strided { data: &b, row_stride: 1, k_stride: n },
            OutMat { data: &mut c, ld: n },
            &epi,
        );
        assert!(c.iter().all(|&v| (v - 7.0).abs() < 1e-6));
    }
}
