//! Winograd convolution for 3x3, stride-1 layers (Lavin & Gray 2016).
//!
//! `F(m x m, 3 x 3)` computes an `m x m` output tile from an `a x a` input
//! tile (`a = m + 2`) with `a^2` products per channel pair instead of `9 m^2`:
//! 2.25x fewer for `F(2, 3)`, 4x fewer for `F(4, 3)`. The work becomes:
//!
//! 1. input transform `V = B^T d B` of every tile, for all channels at once
//!    (vectorised along channels, NHWC);
//! 2. `a^2` independent matrix products `M_p = V_p U_p` (tiles x c_in times
//!    c_in x c_out), by the indirect kernel of `direct.rs`;
//! 3. output transform `Y = A^T M A`, fused with the epilogue (bias, residual,
//!    ReLU).
//!
//! Filters are transformed once (`U = G g G^T`). Tiles are processed in chunks
//! so the transformed data stays in cache.

mod forward;
mod gradient;
mod transform;
#[cfg(target_arch = "x86_64")]
mod x86;

use rayon::prelude::*;

use super::mem::AlignedVec;
use super::tile::{self, MR};
use crate::backend::{Bf16, ConvDesc};
pub use forward::{forward, forward_bf16};
pub use gradient::{filter_gradient, filter_gradient_pays};

/// Per-thread buffers for a block of tiles: transformed inputs `V` and the
/// products `M`, both `[a^2][MR][channels]`.
#[derive(Default)]
struct Scratch {
    v: AlignedVec<f32>,
    mm: AlignedVec<f32>,
    tile: AlignedVec<f32>,
    /// Each block's rows of one `V_p` and `M_p`, for the micro-kernel.
    rows: Vec<([*const f32; MR], [*mut f32; MR])>,
}

thread_local! {
    /// Never borrowed across a rayon call.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Makes `v` at least `len` long (never shorter).
fn grow(v: &mut AlignedVec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: every task writes a disjoint part of the output (its own pixels and channels).
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The output tiles of a layer, numbered image by image, row by row.
#[derive(Clone, Copy, Debug)]
pub(super) struct Grid {
    /// Tile side.
    m: usize,
    /// Tile rows and columns per image.
    th: usize,
    tw: usize,
    /// Tiles in all.
    count: usize,
}

/// Tiles ahead whose pixels the transforms prefetch.
pub(super) const PREFETCH_TILES: usize = 2;

/// Floats from row `i` of `V_p` (or `M_p`, `D_p`) to row `i` of the next
/// point's, for `rows` rows of `ld` floats: one cache line more than the rows
/// need. Without it, a tile's `a^2` rows lie a multiple of 4 KiB apart
/// whenever `rows * ld` is a multiple of 1024 floats (`c_in` 256 with 12-row
/// blocks, 16 with 64-tile chunks), all in one set of the L1 cache, and every
/// store of a transform evicts another.
pub(super) fn point_stride(rows: usize, ld: usize) -> usize {
    rows * ld + 16
}

impl Grid {
    pub(super) fn new(d: &ConvDesc, m: usize) -> Self {
        let (th, tw) = (d.out_h().div_ceil(m), d.out_w().div_ceil(m));
        Self { m, th, tw, count: d.n * th * tw }
    }

    /// Image and output corner `(n, oy, ox)` of a tile.
    pub(super) fn corner(&self, tile: usize) -> (usize, usize, usize) {
        (tile / (self.th * self.tw), (tile / self.tw) % self.th * self.m, tile % self.tw * self.m)
    }

    /// The tile [`PREFETCH_TILES`] after `tile`, if any: the next tile row's
    /// or image's first when a row ends.
    pub(super) fn ahead(&self, tile: usize) -> Option<(usize, usize, usize)> {
        let next = tile + PREFETCH_TILES;
        (next < self.count).then(|| self.corner(next))
    }
}

/// The output rows, f32 or bf16 (`ptr` then points at bf16 values).
#[derive(Clone, Copy)]
pub(super) struct Dst {
    pub(super) ptr: *mut f32,
    pub(super) bf16: bool,
}
// SAFETY: every task writes a disjoint part of the output (its own pixels and channels).
unsafe impl Send for Dst {}
// SAFETY: as above.
unsafe impl Sync for Dst {}

impl Dst {
    /// Stores value `idx`.
    ///
    /// # Safety
    /// `idx` lies inside the output and is the caller's to write.
    pub(super) unsafe fn store(self, idx: usize, v: f32) {
        // SAFETY: the caller's contract.
        unsafe {
            if self.bf16 {
                *self.ptr.cast::<Bf16>().add(idx) = Bf16::from_f32(v);
            } else {
                *self.ptr.add(idx) = v;
            }
        }
    }

    /// Reads value `idx` back (f32 rows only: the batch statistics and `accumulate`).
    ///
    /// # Safety
    /// As [`Dst::store`].
    pub(super) unsafe fn load(self, idx: usize) -> f32 {
        debug_assert!(!self.bf16);
        // SAFETY: the caller's contract.
        unsafe { *self.ptr.add(idx) }
    }
}

/// The transforms of one `F(m, 3)`.
struct Transforms {
    m: usize,
    a: usize,
    bt: &'static [f32],
    g: &'static [f32],
    at: &'static [f32],
    /// `A = (A^T)^T`, `a x m`, for the output-gradient transform `A dY A^T`.
    am: &'static [f32],
}

/// `F(2, 3)`: interpolation points 0, 1, -1, infinity.
const F2: Transforms = Transforms {
    m: 2,
    a: 4,
    bt: &[1., 0., -1., 0., 0., 1., 1., 0., 0., -1., 1., 0., 0., 1., 0., -1.],
    g: &[1., 0., 0., 0.5, 0.5, 0.5, 0.5, -0.5, 0.5, 0., 0., 1.],
    at: &[1., 1., 1., 0., 0., 1., -1., -1.],
    am: &[1., 0., 1., 1., 1., -1., 0., -1.],
};

/// `F(4, 3)`: points 0, 1, -1, 2, -2, infinity.
const F4: Transforms = Transforms {
    m: 4,
    a: 6,
    bt: &[
        4., 0., -5., 0., 1., 0., //
        0., -4., -4., 1., 1., 0., //
        0., 4., -4., -1., 1., 0., //
        0., -2., -1., 2., 1., 0., //
        0., 2., -1., -2., 1., 0., //
        0., 4., 0., -5., 0., 1.,
    ],
    g: &[
        1. / 4.,
        0.,
        0., //
        -1. / 6.,
        -1. / 6.,
        -1. / 6., //
        -1. / 6.,
        1. / 6.,
        -1. / 6., //
        1. / 24.,
        1. / 12.,
        1. / 6., //
        1. / 24.,
        -1. / 12.,
        1. / 6., //
        0.,
        0.,
        1.,
    ],
    at: &[
        1., 1., 1., 1., 1., 0., //
        0., 1., -1., 2., -2., 0., //
        0., 1., 1., 4., 4., 0., //
        0., 1., -1., 8., -8., 1.,
    ],
    am: &[
        1., 0., 0., 0., //
        1., 1., 1., 1., //
        1., -1., 1., -1., //
        1., 2., 4., 8., //
        1., -2., 4., -8., //
        0., 0., 0., 1.,
    ],
};

fn transforms(m: usize) -> &'static Transforms {
    if m == 4 { &F4 } else { &F2 }
}

/// Whether a convolution can run as Winograd: 3x3, stride 1, dilation 1,
/// one group, padding at most 1 (the ResNets' 3x3 layers).
pub fn applicable(d: &ConvDesc) -> bool {
    d.kernel == [3, 3] && d.stride == [1, 1] && d.dilation == [1, 1] && d.groups == 1 && d.pad[0] <= 1 && d.pad[1] <= 1
}

/// A filter transformed for `F(m, 3)`: for each transform point `p` and
/// each panel `q` of 16 output channels, `c_in` rows of 16 values (the layout
/// of [`direct::Panels`], all points in one buffer so it can be refilled in
/// place at every training step).
#[derive(Debug, Default)]
pub struct WinogradFilter {
    /// Output tile side (2 or 4); 0 when empty.
    pub m: usize,
    c_in: usize,
    c_out: usize,
    data: AlignedVec<f32>,
}

impl WinogradFilter {
    /// Panel `q` of transform point `p`.
    fn panel(&self, p: usize, q: usize) -> &[f32] {
        let np = self.c_out.div_ceil(tile::NR);
        &self.data[(p * np + q) * self.c_in * tile::NR..][..self.c_in * tile::NR]
    }
}

/// How [`prepare`] reads the 3x3 filter it transforms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterSource {
    /// The forward filter: OHWI weights `w[c_out][3][3][c_in]`.
    Forward,
    /// The backward-data filter of the OHWI weights `w[c_in][3][3][c_out]`
    /// (the roles of `c_in`, `c_out` as in the convolution it runs): flipped
    /// and transposed, `w'[co][ky][kx][ci] = w[ci][2 - ky][2 - kx][co]`.
    FlippedTransposed,
}

/// Transforms a 3x3 filter (read as `src` says) into `U = G g G^T` for each
/// (output, input) channel pair, straight into the panel layout. Panels are
/// filled in parallel; within one, the 16 output channels are the vector
/// lanes, so the transform runs 16 channel pairs at a time, in f64 and
/// rounded once. Training refills every filter at each step, so this is not
/// a one-off cost.
pub fn prepare(m: usize, w: &[f32], c_out: usize, c_in: usize, src: FilterSource, out: &mut WinogradFilter) {
    const NR: usize = tile::NR;
    let t = transforms(m);
    let aa = t.a * t.a;
    let np = c_out.div_ceil(NR);
    let len = aa * np * c_in * NR;
    assert_eq!(w.len(), 9 * c_out * c_in, "a 3x3 filter has 9 * c_out * c_in weights");
    if (out.m, out.c_in, out.c_out) != (m, c_in, c_out) || out.data.len() != len {
        out.data.clear();
        out.data.resize(len, 0.0);
    }
    (out.m, out.c_in, out.c_out) = (m, c_in, c_out);
    let dst = SyncPtr(out.data.as_mut_ptr());
    (0..np).into_par_iter().for_each(|q| {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            panel_filter(t, w, (c_out, c_in), q, src, &mut s.tile, dst)
        });
    });
}

/// Panel `q` of [`prepare`], with `taps` as scratch.
fn panel_filter(
    t: &Transforms,
    w: &[f32],
    (c_out, c_in): (usize, usize),
    q: usize,
    src: FilterSource,
    taps: &mut AlignedVec<f32>,
    dst: SyncPtr,
) {
    const NR: usize = tile::NR;
    let (aa, np) = (t.a * t.a, c_out.div_ceil(NR));
    let lanes = NR.min(c_out - q * NR);
    // The panel's taps, [ci][tap][lane]; missing lanes are zero.
    grow(taps, c_in * 9 * NR);
    let taps = &mut taps[..c_in * 9 * NR];
    if lanes < NR {
        taps.fill(0.0);
    }
    match src {
        FilterSource::Forward => {
            for lane in 0..lanes {
                let co = q * NR + lane;
                for tap in 0..9 {
                    for (ci, &v) in w[(co * 9 + tap) * c_in..][..c_in].iter().enumerate() {
                        taps[(ci * 9 + tap) * NR + lane] = v;
                    }
                }
            }
        }
        FilterSource::FlippedTransposed => {
            for ci in 0..c_in {
                for tap in 0..9 {
                    let row = &w[(ci * 9 + 8 - tap) * c_out + q * NR..][..lanes];
                    taps[(ci * 9 + tap) * NR..][..lanes].copy_from_slice(row);
                }
            }
        }
    }
    let mut u = [0.0f32; 36 * NR];
    for ci in 0..c_in {
        transform_filter(t.a, t.g, &taps[ci * 9 * NR..][..9 * NR], &mut u[..aa * NR]);
        for p in 0..aa {
            // SAFETY: row ci of panel q of point p lies inside the buffer
            // (len above), and only this task writes panel q.
            unsafe {
                std::ptr::copy_nonoverlapping(u[p * NR..].as_ptr(), dst.get().add(((p * np + q) * c_in + ci) * NR), NR)
            };
        }
    }
}

wide_fn! {
    /// `U = G g G^T` for 16 channel pairs at once: `g` is `[tap][lane]`, `u`
    /// is `[point][lane]`; `G` is `a x 3`.
    fn transform_filter(a: usize, gm: &[f32], g: &[f32], u: &mut [f32]) {
        const NR: usize = tile::NR;
        // tmp[i][kx] = sum over ky of G[i][ky] g[ky][kx].
        let mut tmp = [[0.0f64; NR]; 18];
        for i in 0..a {
            for kx in 0..3 {
                let row = &mut tmp[i * 3 + kx];
                for ky in 0..3 {
                    let c = gm[i * 3 + ky] as f64;
                    let src = &g[(ky * 3 + kx) * NR..][..NR];
                    for l in 0..NR {
                        row[l] += c * src[l] as f64;
                    }
                }
            }
        }
        for i in 0..a {
            for j in 0..a {
                let mut acc = [0.0f64; NR];
                for kx in 0..3 {
                    let c = gm[j * 3 + kx] as f64;
                    let row = &tmp[i * 3 + kx];
                    for l in 0..NR {
                        acc[l] += row[l] * c;
                    }
                }
                for (o, v) in u[(i * a + j) * NR..][..NR].iter_mut().zip(acc) {
                    *o = v as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::forward::forward_cut;
    use super::*;
    use crate::backend::cpu::direct::Rows;
    use crate::backend::cpu::gemm::Epilogue;

    /// Every cut of the work (spans of tiles, groups of panels, spans of
    /// several blocks with a partial last block) writes the same output as one
    /// block per task, and the same batch statistics.
    #[test]
    fn every_cut_gives_the_same_output() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rand = |len: usize| -> Vec<f32> {
            (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 + 0.5
                })
                .collect()
        };
        for (m, n, h, ci, co) in [(4, 1, 28, 40, 72), (2, 2, 13, 24, 40), (4, 3, 9, 16, 16)] {
            let d = ConvDesc {
                n,
                h,
                w: h,
                c_in: ci,
                c_out: co,
                kernel: [3, 3],
                stride: [1, 1],
                pad: [1, 1],
                dilation: [1, 1],
                groups: 1,
            };
            let (x, w, res) = (rand(d.in_len()), rand(d.weight_len()), rand(d.out_len()));
            let mut f = WinogradFilter::default();
            prepare(m, &w, co, ci, FilterSource::Forward, &mut f);
            let bias = rand(co);
            let epi = Epilogue { bias: Some(&bias), residual: Some((&res, co)), relu: true, ..Default::default() };
            let tiles = Grid::new(&d, m).count;
            let run = |cut: (usize, usize), stats: bool| {
                let mut y = vec![0.0f32; d.out_len()];
                let mut st = vec![0.0f32; 2 * co];
                let dst = Dst { ptr: y.as_mut_ptr(), bf16: false };
                forward_cut(&d, Rows::F32(&x), &f, dst, &epi, stats.then_some(&mut st[..]), cut);
                (y, st)
            };
            let (want, want_stats) = run((MR, 1), true);
            for cut in [(tiles, 1), (tiles, 2), (tiles, 3), (tiles.div_ceil(2), 1), (5, 2), (25, 4), (1, 1), (30, 5)] {
                let (y, st) = run(cut, true);
                assert!(y == want, "F({m}, 3) {d:?}, cut {cut:?}: outputs differ");
                assert!(st == want_stats, "cut {cut:?}: statistics differ");
                assert!(run(cut, false).0 == want, "cut {cut:?} without statistics");
            }
        }
    }

    #[test]
    fn output_gradient_matrix_is_the_transpose() {
        for t in [&F2, &F4] {
            for i in 0..t.a {
                for r in 0..t.m {
                    assert_eq!(t.am[i * t.m + r], t.at[r * t.a + i], "F({}, 3): A[{i}][{r}]", t.m);
                }
            }
        }
    }
}
