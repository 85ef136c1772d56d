//! The AVX-512 VNNI micro-kernel and its requantizing epilogue.

use std::arch::x86_64::*;

use super::{Epi, MR, NR, QUAD, Quant, Rows};

/// `round(v) + zero` clamped to `0..=255`, 16 lanes, NaN giving 0, as
/// `Quant::quantize` and `super::requantize` compute it: `v` is first
/// capped at 256 keeping NaN (the second operand of `min` wins when one is
/// NaN), converted rounding to nearest even (NaN and values below -2^31
/// become i32::MIN, which stays negative after the offset), offset (where
/// `zero` is not 0), floored at 0 and saturated to 255.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn to_u8(v: __m512, zero: Option<__m512i>) -> __m128i {
    let mut q = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_set1_ps(256.0), v));
    if let Some(z) = zero {
        q = _mm512_add_epi32(q, z);
    }
    _mm512_cvtusepi32_epi8(_mm512_max_epi32(q, _mm512_setzero_si512()))
}

/// `dst = q.quantize(src)` (see `super::quantize`).
///
/// # Safety
/// avx512f, avx512bw and avx512vl; equal lengths.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn quantize(src: &[f32], q: Quant, dst: &mut [u8]) {
    let (inv, zero) = (_mm512_set1_ps(1.0 / q.scale), (q.zero != 0).then(|| _mm512_set1_epi32(q.zero as i32)));
    let n = src.len();
    let mut i = 0;
    // SAFETY: every access is below n (masks on the tail).
    unsafe {
        while i < n {
            let m: __mmask16 = if n - i >= 16 { 0xffff } else { (1u16 << (n - i)) - 1 };
            let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, src.as_ptr().add(i)), inv);
            _mm_mask_storeu_epi8(dst.as_mut_ptr().add(i).cast(), m, to_u8(v, zero));
            i += 16;
        }
    }
}

/// One or two panels of a row group (see `super::kernel_portable`), the
/// rows computed rounded up to four.
///
/// # Safety
/// The CPU has avx512f, avx512bw, avx512vl and avx512vnni; runs hold `quads * 4`
/// readable bytes; `b0` and `b1` hold every tap of their panels; non-null
/// rows are valid for `col + nr` values and this call's alone.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kernel(
    a: &[[*const u8; MR]],
    toffs: &[usize],
    quads: usize,
    b0: &[i8],
    b1: &[i8],
    two: bool,
    rows: &Rows,
    col: usize,
    n: usize,
    e: &Epi,
) {
    let live = rows.out.iter().rposition(|r| !r.is_null()).map_or(0, |i| i + 1);
    macro_rules! call {
        ($r:literal) => {
            // SAFETY: the caller's contract.
            unsafe {
                if two {
                    tile::<$r, true>(a, toffs, quads, b0, b1, rows, col, n, e)
                } else {
                    tile::<$r, false>(a, toffs, quads, b0, b1, rows, col, n, e)
                }
            }
        };
    }
    match live {
        0..=4 => call!(4),
        5..=8 => call!(8),
        _ => call!(12),
    }
}

/// `R` rows by one panel (or two, with `TWO`): each broadcast quad of input
/// bytes feeds one `vpdpbusd` per panel.
///
/// # Safety
/// As [`kernel`].
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile<const R: usize, const TWO: bool>(
    a: &[[*const u8; MR]],
    toffs: &[usize],
    quads: usize,
    b0: &[i8],
    b1: &[i8],
    rows: &Rows,
    col: usize,
    n: usize,
    e: &Epi,
) {
    // The next row group's output and residual lines at these columns: the
    // hardware prefetchers follow twelve rows written a few bytes at a time
    // poorly (see `tile::prefetch` for the f32 kernels).
    if rows.ahead.0 > 0 {
        for i in 0..R.min(MR) {
            if !rows.out[i].is_null() {
                let o = rows.out[i].wrapping_add(rows.ahead.0 + col * rows.sizes.0);
                _mm_prefetch::<_MM_HINT_T0>(o.cast());
            }
            if !rows.res[i].is_null() {
                let r = rows.res[i].wrapping_add(rows.ahead.1 + col * rows.sizes.1);
                _mm_prefetch::<_MM_HINT_T0>(r.cast());
            }
        }
    }
    let mut acc0 = [_mm512_setzero_si512(); R];
    let mut acc1 = [_mm512_setzero_si512(); R];
    let step = quads * NR * QUAD;
    for (runs, &t) in a.iter().zip(toffs) {
        // SAFETY: the panels hold every tap (contract); runs hold quads * 4 bytes.
        unsafe {
            let p0 = b0.as_ptr().add(t * step) as *const __m512i;
            let p1 = b1.as_ptr().add(t * step) as *const __m512i;
            for q in 0..quads {
                let w0 = _mm512_loadu_si512(p0.add(q));
                let w1 = if TWO { _mm512_loadu_si512(p1.add(q)) } else { w0 };
                for i in 0..R {
                    let x = _mm512_set1_epi32((runs[i].add(q * QUAD) as *const i32).read_unaligned());
                    acc0[i] = _mm512_dpbusd_epi32(acc0[i], x, w0);
                    if TWO {
                        acc1[i] = _mm512_dpbusd_epi32(acc1[i], x, w1);
                    }
                }
            }
        }
    }
    // SAFETY: the caller's contract.
    unsafe {
        store(&acc0, rows, col, NR.min(n - col), e);
        if TWO {
            store(&acc1, rows, col + NR, NR.min(n - col - NR), e);
        }
    }
}

/// Finishes and stores a panel's sums: the operations of `super::finish`
/// and `super::requantize`, sixteen channels at a time.
///
/// # Safety
/// As [`kernel`], with the features enabled.
#[inline(always)]
unsafe fn store<const R: usize>(acc: &[__m512i; R], rows: &Rows, col: usize, nr: usize, e: &Epi) {
    let mask: __mmask16 = if nr >= NR { 0xffff } else { (1u16 << nr) - 1 };
    // SAFETY: per-channel terms hold `n >= col + nr` values; masks keep
    // accesses inside; rows are valid (contract).
    unsafe {
        let comp = _mm512_maskz_loadu_epi32(mask, e.comp.as_ptr().add(col));
        let mult = _mm512_maskz_loadu_ps(mask, e.mult.as_ptr().add(col));
        let bias = _mm512_maskz_loadu_ps(mask, e.bias.as_ptr().add(col));
        let (res_scale, res_zero) = (_mm512_set1_ps(e.res_scale), _mm512_set1_epi32(e.res_zero));
        let out_zero = (e.out_zero != 0).then(|| _mm512_set1_epi32(e.out_zero));
        let (with_comp, with_res_zero) = (e.with_comp, e.res_zero != 0);
        // A ReLU before a u8 output of zero point 0 changes nothing: the
        // conversion floors at 0 (NaN giving 0 either way).
        let relu = e.relu && !(e.out_u8 && e.out_zero == 0);
        for (i, &a) in acc.iter().enumerate() {
            if i >= MR || rows.out[i].is_null() {
                continue;
            }
            let a = if with_comp { _mm512_sub_epi32(a, comp) } else { a };
            let mut y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), mult, bias);
            if !rows.res[i].is_null() {
                if e.res_u8 {
                    let r = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, rows.res[i].add(col).cast()));
                    let r = if with_res_zero { _mm512_sub_epi32(r, res_zero) } else { r };
                    y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(r), res_scale, y);
                } else {
                    let r = _mm512_maskz_loadu_ps(mask, rows.res[i].cast::<f32>().add(col));
                    y = _mm512_fmadd_ps(r, res_scale, y);
                }
            }
            if relu {
                // NaN stays (the second operand wins), as in `backend::relu`.
                y = _mm512_max_ps(_mm512_setzero_ps(), y);
            }
            if e.out_u8 {
                _mm_mask_storeu_epi8(rows.out[i].add(col).cast(), mask, to_u8(y, out_zero));
            } else {
                _mm512_mask_storeu_ps(rows.out[i].cast::<f32>().add(col), mask, y);
            }
        }
    }
}
