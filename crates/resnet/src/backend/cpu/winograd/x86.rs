//! AVX-512 versions of the transforms.

use super::Dst;
use crate::backend::Bf16;
use crate::backend::cpu::direct::Rows;
use crate::backend::cpu::gemm::Epilogue;
use std::arch::x86_64::*;

/// `B^T` of F(4, 3) applied to six vectors.
#[inline(always)]
unsafe fn bt6(d: [__m512; 6]) -> [__m512; 6] {
    unsafe {
        let (four, five, two) = (_mm512_set1_ps(4.0), _mm512_set1_ps(5.0), _mm512_set1_ps(2.0));
        let d4_d2 = _mm512_sub_ps(d[4], d[2]);
        let d3_d1 = _mm512_sub_ps(d[3], d[1]);
        let d1p2 = _mm512_add_ps(d[1], d[2]);
        let d1m2 = _mm512_sub_ps(d[1], d[2]);
        let d3p4 = _mm512_add_ps(d[3], d[4]);
        let d4m3 = _mm512_sub_ps(d[4], d[3]);
        [
            _mm512_fnmadd_ps(five, d[2], _mm512_fmadd_ps(four, d[0], d[4])),
            _mm512_fnmadd_ps(four, d1p2, d3p4),
            _mm512_fmadd_ps(four, d1m2, d4m3),
            _mm512_fmadd_ps(two, d3_d1, d4_d2),
            _mm512_fnmadd_ps(two, d3_d1, d4_d2),
            _mm512_fnmadd_ps(five, d[3], _mm512_fmadd_ps(four, d[1], d[5])),
        ]
    }
}

/// `A^T` of F(4, 3): six vectors to four.
#[inline(always)]
unsafe fn at6(v: [__m512; 6]) -> [__m512; 4] {
    unsafe {
        let p12 = _mm512_add_ps(v[1], v[2]);
        let m12 = _mm512_sub_ps(v[1], v[2]);
        let p34 = _mm512_add_ps(v[3], v[4]);
        let m34 = _mm512_sub_ps(v[3], v[4]);
        [
            _mm512_add_ps(_mm512_add_ps(v[0], p12), p34),
            _mm512_fmadd_ps(_mm512_set1_ps(2.0), m34, m12),
            _mm512_fmadd_ps(_mm512_set1_ps(4.0), p34, p12),
            _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0), m34, m12), v[5]),
        ]
    }
}

/// `B^T` of F(2, 3) applied to four vectors.
#[inline(always)]
unsafe fn bt4(d: [__m512; 4]) -> [__m512; 4] {
    unsafe {
        [_mm512_sub_ps(d[0], d[2]), _mm512_add_ps(d[1], d[2]), _mm512_sub_ps(d[2], d[1]), _mm512_sub_ps(d[1], d[3])]
    }
}

/// `A^T` of F(2, 3): four vectors to two.
#[inline(always)]
unsafe fn at4(v: [__m512; 4]) -> [__m512; 2] {
    unsafe { [_mm512_add_ps(_mm512_add_ps(v[0], v[1]), v[2]), _mm512_sub_ps(_mm512_sub_ps(v[1], v[2]), v[3])] }
}

/// `A` of F(4, 3) (the transpose of `A^T`): four vectors to six.
#[inline(always)]
unsafe fn a6(d: [__m512; 4]) -> [__m512; 6] {
    unsafe {
        let (e, o) = (_mm512_add_ps(d[0], d[2]), _mm512_add_ps(d[1], d[3]));
        let e4 = _mm512_fmadd_ps(_mm512_set1_ps(4.0), d[2], d[0]);
        let o4 = _mm512_fmadd_ps(_mm512_set1_ps(8.0), d[3], _mm512_add_ps(d[1], d[1]));
        [d[0], _mm512_add_ps(e, o), _mm512_sub_ps(e, o), _mm512_add_ps(e4, o4), _mm512_sub_ps(e4, o4), d[3]]
    }
}

/// `A` of F(2, 3): two vectors to four.
#[inline(always)]
unsafe fn a4(d: [__m512; 2]) -> [__m512; 4] {
    unsafe { [d[0], _mm512_add_ps(d[0], d[1]), _mm512_sub_ps(d[0], d[1]), _mm512_sub_ps(_mm512_setzero_ps(), d[1])] }
}

/// Output-gradient transform of one tile, 16 channels at a time: `A dY
/// A^T`, columns then rows, each result stored into its row of `D_p`.
///
/// # Safety
/// avx512f; `src` offsets are valid runs of `cw` floats in `dy`; `dm` as in the caller.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // i indexes the columns' rows
pub(super) unsafe fn grad(
    m: usize,
    dy: &[f32],
    src: &[Option<usize>],
    cw: usize,
    dm: *mut f32,
    ldp: usize,
    ld: usize,
    row: usize,
) {
    for c0 in (0..cw).step_by(16) {
        let k = mask(cw - c0);
        // SAFETY: row `row` of D_p has ld >= cw floats; the mask keeps the tail inside.
        let store = |p: usize, o: __m512| unsafe { _mm512_mask_storeu_ps(dm.add(p * ldp + row * ld + c0), k, o) };
        if m == 4 {
            // SAFETY: the caller's contract on src.
            let d: [__m512; 16] = unsafe { patch(Rows::F32(dy), src, c0, k) };
            // SAFETY: register arithmetic.
            let cols: [[__m512; 6]; 4] = std::array::from_fn(|q| unsafe { a6([d[q], d[4 + q], d[8 + q], d[12 + q]]) });
            for i in 0..6 {
                // SAFETY: register arithmetic.
                let r = unsafe { a6([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]) };
                for (j, o) in r.into_iter().enumerate() {
                    store(i * 6 + j, o);
                }
            }
        } else {
            // SAFETY: the caller's contract on src.
            let d: [__m512; 4] = unsafe { patch(Rows::F32(dy), src, c0, k) };
            // SAFETY: register arithmetic.
            let cols: [[__m512; 4]; 2] = std::array::from_fn(|q| unsafe { a4([d[q], d[2 + q]]) });
            for i in 0..4 {
                // SAFETY: register arithmetic.
                let r = unsafe { a4([cols[0][i], cols[1][i]]) };
                for (j, o) in r.into_iter().enumerate() {
                    store(i * 4 + j, o);
                }
            }
        }
    }
}

fn mask(n: usize) -> __mmask16 {
    if n >= 16 { 0xffff } else { (1u16 << n) - 1 }
}

/// Loads the `a x a` patch of 16 channels at `c0` (zero for padding);
/// built element by element, since a zeroed array first costs a memset.
///
/// # Safety
/// avx512f; every `Some` offset plus `c0` starts `mask`'s lanes inside `x`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn patch<const N: usize>(x: Rows<'_>, src: &[Option<usize>], c0: usize, k: __mmask16) -> [__m512; N] {
    match x {
        Rows::F32(x) => std::array::from_fn(|p| match src[p] {
            // SAFETY: the caller's contract.
            Some(o) => unsafe { _mm512_maskz_loadu_ps(k, x.as_ptr().add(o + c0)) },
            None => _mm512_setzero_ps(),
        }),
        Rows::Bf16(x) => std::array::from_fn(|p| match src[p] {
            Some(o) => {
                let h = if k == 0xffff {
                    // SAFETY: the caller's contract: 16 values from o + c0.
                    unsafe { _mm256_loadu_si256(x.as_ptr().add(o + c0).cast()) }
                } else {
                    // A short tail: through a buffer, not past the end of `x`.
                    let mut t = [Bf16::default(); 16];
                    let n = k.count_ones() as usize;
                    t[..n].copy_from_slice(&x[o + c0..o + c0 + n]);
                    // SAFETY: t holds 16 values.
                    unsafe { _mm256_loadu_si256(t.as_ptr().cast()) }
                };
                // bf16 to f32: the 16 bits become the upper half.
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
            None => _mm512_setzero_ps(),
        }),
    }
}

/// Input transform of one tile, 16 channels at a time: `B^T d B`, columns
/// then rows, each result stored straight into its row of `V_p`.
///
/// # Safety
/// avx512f; `src` offsets are valid runs of `c` floats in `x`; `v` as in the caller.
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // q indexes the columns' rows
pub(super) unsafe fn input(m: usize, x: Rows<'_>, src: &[Option<usize>], c: usize, v: *mut f32, ldp: usize, i: usize) {
    for c0 in (0..c).step_by(16) {
        let k = mask(c - c0);
        // SAFETY: row i of V_p has c floats; the mask keeps the tail inside.
        let store = |p: usize, o: __m512| unsafe { _mm512_mask_storeu_ps(v.add(p * ldp + i * c + c0), k, o) };
        if m == 4 {
            // SAFETY: the caller's contract on src.
            let d: [__m512; 36] = unsafe { patch(x, src, c0, k) };
            // cols[j] = B^T applied to column j of the patch.
            // SAFETY: register arithmetic.
            let cols: [[__m512; 6]; 6] =
                std::array::from_fn(|j| unsafe { bt6([d[j], d[6 + j], d[12 + j], d[18 + j], d[24 + j], d[30 + j]]) });
            for q in 0..6 {
                // SAFETY: register arithmetic.
                let r = unsafe { bt6([cols[0][q], cols[1][q], cols[2][q], cols[3][q], cols[4][q], cols[5][q]]) };
                for (j, o) in r.into_iter().enumerate() {
                    store(q * 6 + j, o);
                }
            }
        } else {
            // SAFETY: the caller's contract on src.
            let d: [__m512; 16] = unsafe { patch(x, src, c0, k) };
            // SAFETY: register arithmetic.
            let cols: [[__m512; 4]; 4] = std::array::from_fn(|j| unsafe { bt4([d[j], d[4 + j], d[8 + j], d[12 + j]]) });
            for q in 0..4 {
                // SAFETY: register arithmetic.
                let r = unsafe { bt4([cols[0][q], cols[1][q], cols[2][q], cols[3][q]]) };
                for (j, o) in r.into_iter().enumerate() {
                    store(q * 4 + j, o);
                }
            }
        }
    }
}

/// Output transform of one tile with the epilogue, 16 channels at a time:
/// `A^T M A`, columns then rows, each pixel sent through the epilogue as
/// it is produced.
///
/// # Safety
/// avx512f; the caller owns these pixels and channels of `y`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // rr indexes the columns' rows
pub(super) unsafe fn output(
    m: usize,
    mm: &[f32],
    ldp: usize,
    i: usize,
    ldm: usize,
    c0: usize,
    cols: usize,
    co: usize,
    dst: &[Option<usize>],
    y: Dst,
    e: &Epilogue<'_>,
) {
    for j0 in (0..cols).step_by(16) {
        let k = mask(cols - j0);
        // SAFETY: row i of M_p has ldm >= cols floats.
        let load = |p: usize| unsafe { _mm512_maskz_loadu_ps(k, mm.as_ptr().add(p * ldp + i * ldm + j0)) };
        let ch = c0 + j0;
        let emit = |kk: usize, x: __m512| {
            let Some(px) = dst[kk] else { return };
            // SAFETY: pixel px, channels ch.. (masked) are inside y and the epilogue slices.
            unsafe { epilogue(y, px * co + ch, k, x, e, px, ch) }
        };
        if m == 4 {
            let v: [__m512; 36] = std::array::from_fn(load);
            // SAFETY: register arithmetic.
            let cols: [[__m512; 4]; 6] =
                std::array::from_fn(|q| unsafe { at6([v[q], v[6 + q], v[12 + q], v[18 + q], v[24 + q], v[30 + q]]) });
            for rr in 0..4 {
                // SAFETY: register arithmetic.
                let r = unsafe { at6([cols[0][rr], cols[1][rr], cols[2][rr], cols[3][rr], cols[4][rr], cols[5][rr]]) };
                for (q, x) in r.into_iter().enumerate() {
                    emit(rr * 4 + q, x);
                }
            }
        } else {
            let v: [__m512; 16] = std::array::from_fn(load);
            // SAFETY: register arithmetic.
            let cols: [[__m512; 2]; 4] = std::array::from_fn(|q| unsafe { at4([v[q], v[4 + q], v[8 + q], v[12 + q]]) });
            for rr in 0..2 {
                // SAFETY: register arithmetic.
                let r = unsafe { at4([cols[0][rr], cols[1][rr], cols[2][rr], cols[3][rr]]) };
                for (q, x) in r.into_iter().enumerate() {
                    emit(rr * 2 + q, x);
                }
            }
        }
    }
}

/// Applies the epilogue to one pixel's masked lanes and stores them at `o`.
///
/// # Safety
/// avx512f; `o` and the epilogue's slices hold the masked lanes at this
/// pixel and channel.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn epilogue(y: Dst, idx: usize, k: __mmask16, mut x: __m512, e: &Epilogue<'_>, px: usize, ch: usize) {
    // SAFETY: the caller's contract.
    unsafe {
        if e.accumulate {
            x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(k, y.ptr.add(idx)));
        }
        if let Some(s) = e.scale {
            x = _mm512_mul_ps(x, _mm512_maskz_loadu_ps(k, s.as_ptr().add(ch)));
        }
        if let Some(b) = e.bias {
            x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(k, b.as_ptr().add(ch)));
        }
        if let Some((res, ld)) = e.residual {
            x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(k, res.as_ptr().add(px * ld + ch)));
        }
        if e.relu {
            x = _mm512_max_ps(_mm512_setzero_ps(), x);
        }
        if y.bf16 {
            // Round to nearest, ties to even (as `Bf16::from_f32`), then
            // keep the upper halves.
            let b = _mm512_castps_si512(x);
            let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
            let r = _mm512_srli_epi32::<16>(_mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff))));
            _mm512_mask_cvtepi32_storeu_epi16(y.ptr.cast::<Bf16>().add(idx).cast(), k, r);
        } else {
            _mm512_mask_storeu_ps(y.ptr.add(idx), k, x);
        }
    }
}
