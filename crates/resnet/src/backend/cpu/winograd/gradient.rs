//! The filter gradient of a Winograd layer: `dw = G^T (sum over tiles of
//! V_p^T dM_p) G`, in slabs of tiles whose partial sums add in order.

use rayon::prelude::*;

use super::transform::{grad_transform, input_transform};
use super::{Grid, SCRATCH, Scratch, Transforms, applicable, grow, point_stride, transforms};
use crate::backend::ConvDesc;
use crate::backend::cpu::direct::Rows;
use crate::backend::cpu::kernel;
use crate::backend::cpu::mem::AlignedVec;
use crate::backend::cpu::tile;

/// Output channels per filter-gradient task (wider layers are split).
const GRAD_COLS: usize = 64;
/// Bytes of transformed tiles a filter-gradient task keeps per chunk.
const GRAD_CHUNK_BYTES: usize = 512 << 10;
/// Bytes of per-slab partial sums a filter gradient may hold.
const GRAD_PARTS_BYTES: usize = 64 << 20;

/// Whether the Winograd filter gradient beats the direct one for a layer: a
/// task's partial sums (`a^2 x 64 x c_in` floats) are read and written once
/// per chunk of tiles, which pays while they stay near the core; with 256 or
/// more input channels they do not, and the direct outer products win
/// (`cargo run --release --example wgrad` times both).
pub fn filter_gradient_pays(d: &ConvDesc) -> bool {
    d.c_in <= 128
}

/// Filter gradient of a 3x3 stride-1 layer by Winograd `F(m, 3)`:
/// `dw += G^T (sum over tiles of V_p^T dM_p) G`, with `V = B^T d B` the input
/// tiles and `dM = A dY A^T` the output-gradient tiles. Per tile and channel
/// pair that is `a^2` multiply-adds (`a = m + 2`) against `9 m^2` for the
/// direct correlation.
///
/// Tiles are cut into slabs, a number fixed by the layer's shape (never by
/// the thread count); each (slab, output-channel group) task sums its tiles'
/// products into its own partial `dU`, and the partials are added in slab
/// order, so the result is the same on any number of threads. `dw` is OHWI
/// (`[c_out][3][3][c_in]`) and is accumulated into.
pub fn filter_gradient(m: usize, d: &ConvDesc, x: &[f32], dy: &[f32], dw: &mut [f32]) {
    assert!(applicable(d), "Winograd filter gradient of a layer that is not 3x3 stride 1");
    assert!(dw.len() >= d.weight_len(), "filter gradient too small");
    let t = transforms(m);
    let aa = t.a * t.a;
    let (ci, co) = (d.c_in, d.c_out);
    let tiles = d.n * d.out_h().div_ceil(m) * d.out_w().div_ceil(m);
    if tiles == 0 {
        return;
    }
    let width = co.min(GRAD_COLS);
    let ldw = width.next_multiple_of(kernel::MO);
    let groups = co.div_ceil(width);
    let part_len = aa * ldw * ci;
    let chunk = (GRAD_CHUNK_BYTES / 4 / (aa * (ci + ldw))).clamp(8, 64);
    let most = (GRAD_PARTS_BYTES / 4 / (groups * part_len)).max(1);
    let per_slab = tiles.div_ceil((tiles / (4 * chunk)).clamp(1, 8).min(most));
    let slabs = tiles.div_ceil(per_slab);
    let mut parts = AlignedVec::<f32>::zeroed(slabs * groups * part_len);
    parts.par_chunks_mut(part_len).enumerate().for_each(|(k, part)| {
        let (sl, g) = (k / groups, k % groups);
        let own = sl * per_slab..((sl + 1) * per_slab).min(tiles);
        let cols = g * width..((g + 1) * width).min(co);
        SCRATCH.with(|s| grad_slab(t, d, x, dy, own, cols, chunk, ldw, part, &mut s.borrow_mut()));
    });
    let parts = &parts[..];
    dw[..d.weight_len()].par_chunks_mut(9 * ci).enumerate().for_each(|(o, dwo)| {
        let (g, col) = (o / width, o % width);
        let first = &parts[g * part_len + col * ci..];
        grad_filter_transform(t.g, t.a, first, slabs, groups * part_len, ldw * ci, ci, dwo);
    });
}

/// One filter-gradient task: the tiles `tiles`, output channels `cols`,
/// summed into `part` (`[a^2][ldw][c_in]`), `chunk` tiles at a time.
#[allow(clippy::too_many_arguments)]
fn grad_slab(
    t: &Transforms,
    d: &ConvDesc,
    x: &[f32],
    dy: &[f32],
    tiles: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    chunk: usize,
    ldw: usize,
    part: &mut [f32],
    s: &mut Scratch,
) {
    let (m, aa, ci) = (t.m, t.a * t.a, d.c_in);
    let grid = Grid::new(d, m);
    let (lv, lm) = (point_stride(chunk, ci), point_stride(chunk, ldw));
    grow(&mut s.v, aa * lv);
    grow(&mut s.mm, aa * lm);
    let isa = crate::backend::cpu::gemm::isa();
    let mut xs = Vec::with_capacity(chunk);
    for t0 in tiles.clone().step_by(chunk) {
        let nt = chunk.min(tiles.end - t0);
        for i in 0..nt {
            // SAFETY: V holds aa * lv floats and D aa * lm; i < chunk.
            unsafe {
                input_transform(t, d, Rows::F32(x), &grid, t0 + i, s.v.as_mut_ptr(), lv, i, &mut s.tile);
                grad_transform(t, d, dy, &grid, t0 + i, cols.clone(), s.mm.as_mut_ptr(), lm, ldw, i, &mut s.tile);
            }
        }
        for p in 0..aa {
            for c0 in (0..ci).step_by(tile::NR) {
                let nr = tile::NR.min(ci - c0);
                xs.clear();
                xs.extend((0..nt).map(|i| s.v[p * lv + i * ci + c0..].as_ptr()));
                for cb in (0..cols.len()).step_by(kernel::MO) {
                    let mut rows = [std::ptr::null_mut(); kernel::MO];
                    for (j, r) in rows.iter_mut().enumerate().take(cols.len() - cb) {
                        *r = part[(p * ldw + cb + j) * ci + c0..].as_mut_ptr();
                    }
                    // SAFETY: D_p's rows hold ldw >= cb + MO floats (chunk rows, stride ldw);
                    // each xs entry holds nr floats of V_p; rows are this task's partial sums.
                    unsafe { kernel::outer(isa, s.mm[p * lm + cb..].as_ptr(), ldw, &xs, &rows, nr) };
                }
            }
        }
    }
}

wide_fn! {
    /// `dw[ky][kx][c] += sum_ij G[i][ky] dU[i][j][c] G[j][kx]` for one output
    /// channel, `dU` being the sum of the slabs' partials: point `p` of slab
    /// `sl` is the row of `ci` floats at `parts[sl * ld_slab + p * ld_point..]`.
    fn grad_filter_transform(
        g: &[f32],
        a: usize,
        parts: &[f32],
        slabs: usize,
        ld_slab: usize,
        ld_point: usize,
        ci: usize,
        dw: &mut [f32],
    ) {
        let mut du = vec![0.0f32; a * a * ci];
        for p in 0..a * a {
            let acc = &mut du[p * ci..(p + 1) * ci];
            for sl in 0..slabs {
                for (v, &r) in acc.iter_mut().zip(&parts[sl * ld_slab + p * ld_point..][..ci]) {
                    *v += r;
                }
            }
        }
        // Along i first: tmp[ky][j] = sum_i G[i][ky] dU[i][j].
        let mut tmp = vec![0.0f32; 3 * a * ci];
        for ky in 0..3 {
            for i in 0..a {
                let gi = g[i * 3 + ky];
                if gi == 0.0 {
                    continue;
                }
                for j in 0..a {
                    let (o, u) = (&mut tmp[(ky * a + j) * ci..][..ci], &du[(i * a + j) * ci..][..ci]);
                    for (ov, &uv) in o.iter_mut().zip(u) {
                        *ov += gi * uv;
                    }
                }
            }
        }
        for ky in 0..3 {
            for kx in 0..3 {
                let o = &mut dw[(ky * 3 + kx) * ci..][..ci];
                for j in 0..a {
                    let gj = g[j * 3 + kx];
                    if gj != 0.0 {
                        for (ov, &tv) in o.iter_mut().zip(&tmp[(ky * a + j) * ci..][..ci]) {
                            *ov += gj * tv;
                        }
                    }
                }
            }
        }
    }
}
