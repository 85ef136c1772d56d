//! bf16 inference kernels: bf16 weights and activations, f32 accumulation.
//!
//! A bf16 value is the upper half of an f32 (8 exponent bits, 7 mantissa
//! bits). On CPUs with AVX-512-BF16, `vdpbf16ps` multiplies pairs of bf16 and
//! adds both products to an f32 lane, twice the multiply-adds of an f32 FMA
//! per instruction. The indirect convolution of `direct.rs` runs unchanged
//! with bf16 runs and panels; only its micro-kernel differs:
//!
//! * a panel row holds a *pair* of reduction indices, interleaved per output
//!   channel: `[w[k][0], w[k+1][0], w[k][1], w[k+1][1], ...]` (32 values,
//!   one vector);
//! * an input pixel's pair `(x[k], x[k+1])` is broadcast as one 32-bit value.
//!   A run of odd length ends in a half pair, its last value and a zero (read
//!   alone, never the value after the run), and each tap's part of a panel is
//!   padded to whole pairs with a zero weight ([`pairs`]). Row taps (the
//!   stem's seven pixels of three colours, 21 values) use this; other windows
//!   with an odd channel count get a zero channel (`conv.rs`).
//!
//! Inputs are rounded to bf16 once per layer (round to nearest even); sums,
//! bias, residual and ReLU stay in f32.

use super::mem::AlignedVec;
use super::tile::{MR, NR, Out};
use crate::backend::Bf16;

/// Whether this CPU runs the bf16 kernels natively (AVX-512-BF16, with the
/// AVX-512 BW and VL extensions every such CPU has). Elsewhere
/// the portable kernels give the same results far more slowly, so callers
/// should run in f32 instead. `RESNET_NO_BF16` disables the native path.
pub fn native() -> bool {
    static NATIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NATIVE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::env::var_os("RESNET_NO_BF16").is_none() {
            return is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512bf16");
        }
        false
    })
}

/// Rounds `src` to bf16 into `dst` (same length).
pub fn convert(src: &[f32], dst: &mut [Bf16]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: the CPU has avx512f and avx512bf16; lengths are equal.
        return unsafe { x86::convert(src, dst) };
    }
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = Bf16::from_f32(s);
    }
}

/// Packs `w[n][k]` (row stride `ld`, `k` even) into bf16 panels of [`NR`]
/// output channels, reduction pairs interleaved: panel `p` row-pair `r` is
/// `[w[r*2][j], w[r*2+1][j] for j in panel]`.
pub fn pack(w: &[f32], n: usize, k: usize, ld: usize, out: &mut AlignedVec<Bf16>) {
    assert!(k.is_multiple_of(2), "bf16 panels need an even reduction length");
    let np = n.div_ceil(NR);
    out.clear();
    out.resize(np * k * NR, Bf16::default());
    for (p, panel) in out.chunks_mut(k * NR).enumerate() {
        for j in 0..NR.min(n - p * NR) {
            let row = &w[(p * NR + j) * ld..][..k];
            for (kk, &v) in row.iter().enumerate() {
                panel[(kk / 2) * 2 * NR + 2 * j + kk % 2] = Bf16::from_f32(v);
            }
        }
    }
}

/// Values per tap of a bf16 panel for runs of `klen`: whole pairs.
pub fn pairs(klen: usize) -> usize {
    klen.next_multiple_of(2)
}

/// Computes `MR x NR` outputs from bf16 runs and a bf16 panel (see
/// `direct::kernel` for the f32 original).
///
/// # Safety
/// Every `a[t][i]` points at `klen` readable values; `b` holds
/// `a.len() * pairs(klen) * NR` values; `out` rows are valid for `col + nr`
/// floats and written by this call alone.
pub(super) unsafe fn kernel(a: &[[*const Bf16; MR]], klen: usize, b: &[Bf16], out: &Out<'_>) {
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: the CPU has avx512bf16; the rest is the caller's contract.
        return unsafe { x86::kernel(a, klen, b, out) };
    }
    // SAFETY: the caller's contract.
    unsafe { kernel_portable(a, klen, b, out) }
}

/// [`kernel`] in portable Rust (the reference for the native kernel).
///
/// # Safety
/// As [`kernel`].
unsafe fn kernel_portable(a: &[[*const Bf16; MR]], klen: usize, b: &[Bf16], out: &Out<'_>) {
    let mut acc = [[0.0f32; NR]; MR];
    for (t, rows) in a.iter().enumerate() {
        for c in 0..klen {
            let bv = &b[(t * pairs(klen) + c) / 2 * 2 * NR..][..2 * NR];
            for (i, &r) in rows.iter().enumerate() {
                // SAFETY: r points at klen values (contract).
                let av = unsafe { *r.add(c) }.to_f32();
                for j in 0..NR {
                    acc[i][j] = av.mul_add(bv[2 * j + c % 2].to_f32(), acc[i][j]);
                }
            }
        }
    }
    // SAFETY: forwarded contract.
    unsafe { super::tile::store_generic(&acc, out) }
}

/// Two adjacent panels (`b1`, `out1` for the second).
///
/// # Safety
/// As [`kernel`], for both panels.
pub(super) unsafe fn kernel2(
    a: &[[*const Bf16; MR]],
    klen: usize,
    b0: &[Bf16],
    b1: &[Bf16],
    out0: &Out<'_>,
    out1: &Out<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: the CPU has avx512bf16; the rest is the caller's contract.
        return unsafe {
            if out0.next.is_some() {
                x86::kernel2::<true>(a, klen, b0, b1, out0, out1)
            } else {
                x86::kernel2::<false>(a, klen, b0, b1, out0, out1)
            }
        };
    }
    // SAFETY: the caller's contract.
    unsafe {
        kernel(a, klen, b0, out0);
        kernel(a, klen, b1, out1);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::tile::prefetch;
    use super::{Bf16, MR, Out};
    use std::arch::x86_64::*;

    /// Values `c` and `c + 1` of run `r` as one 32-bit pair.
    ///
    /// # Safety
    /// The run has at least `c + 2` values.
    #[inline(always)]
    unsafe fn pair(r: *const Bf16, c: usize) -> i32 {
        // SAFETY: the caller's contract.
        unsafe { (r.add(c) as *const i32).read_unaligned() }
    }

    /// The last value `c` of a run of odd length, paired with a zero.
    ///
    /// # Safety
    /// The run has `c + 1` values.
    #[inline(always)]
    unsafe fn last(r: *const Bf16, c: usize) -> i32 {
        // SAFETY: the caller's contract.
        unsafe { (*r.add(c)).0 as i32 }
    }

    /// # Safety
    /// avx512f and avx512bf16; equal lengths.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn convert(src: &[f32], dst: &mut [Bf16]) {
        let n = src.len();
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr() as *mut __m256i);
        let mut i = 0;
        // SAFETY: every access is below n (full vectors, then a masked tail).
        unsafe {
            while i + 16 <= n {
                let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(s.add(i)));
                _mm256_storeu_si256(d.byte_add(i * 2), std::mem::transmute::<__m256bh, __m256i>(v));
                i += 16;
            }
            if i < n {
                let m = (1u16 << (n - i)) - 1;
                let v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, s.add(i)));
                _mm256_mask_storeu_epi16(d.byte_add(i * 2) as *mut i16, m, std::mem::transmute::<__m256bh, __m256i>(v));
            }
        }
    }

    /// Stores an accumulator tile through the epilogue, reading and writing
    /// bf16 rows where the tile says so.
    ///
    /// # Safety
    /// avx512f/bw/vl and avx512bf16 (see `native`); rows valid for `col + nr` values.
    #[target_feature(enable = "avx512f,avx512bf16,avx512bw,avx512vl")]
    unsafe fn store(acc: &[__m512; MR], out: &Out<'_>) {
        if !out.bf16_out && !out.bf16_res {
            // SAFETY: the caller's contract.
            return unsafe { super::super::tile::store_avx512(acc, out) };
        }
        let mask: __mmask16 = if out.nr >= 16 { 0xffff } else { (1u16 << out.nr) - 1 };
        let e = out.epi;
        for (i, &v) in acc.iter().enumerate() {
            if out.rows[i].is_null() {
                continue;
            }
            // SAFETY: rows are valid for col + nr values; masks keep accesses inside;
            // bf16 rows are never accumulated into (checked by `direct::run`).
            unsafe {
                let mut x = v;
                if e.accumulate {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, out.rows[i].add(out.col)));
                }
                if let Some(s) = e.scale {
                    x = _mm512_mul_ps(x, _mm512_maskz_loadu_ps(mask, s.as_ptr().add(out.col)));
                }
                if let Some(bias) = e.bias {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, bias.as_ptr().add(out.col)));
                }
                if !out.res[i].is_null() {
                    let r = if out.bf16_res {
                        // bf16 to f32: the 16 bits become the upper half.
                        let h = _mm256_maskz_loadu_epi16(mask, out.res[i].cast::<Bf16>().add(out.col).cast());
                        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
                    } else {
                        _mm512_maskz_loadu_ps(mask, out.res[i].add(out.col))
                    };
                    x = _mm512_add_ps(x, r);
                }
                if e.relu {
                    x = _mm512_max_ps(_mm512_setzero_ps(), x);
                }
                if out.bf16_out {
                    let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(x));
                    _mm256_mask_storeu_epi16(out.rows[i].cast::<Bf16>().add(out.col).cast(), mask, h);
                } else {
                    _mm512_mask_storeu_ps(out.rows[i].add(out.col), mask, x);
                }
            }
        }
    }

    /// # Safety
    /// avx512bf16; otherwise as `super::kernel`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn kernel(a: &[[*const Bf16; MR]], klen: usize, b: &[Bf16], out: &Out<'_>) {
        // SAFETY: the caller's contract.
        unsafe { prefetch(out) };
        let mut acc = [_mm512_setzero_ps(); MR];
        let mut bp = b.as_ptr() as *const __m512i;
        let whole = klen & !1;
        for rows in a {
            let r = *rows;
            // The products of pair `c / 2` of every run, read by `$pair`.
            macro_rules! step {
                ($c:expr, $pair:ident) => {
                    // SAFETY: b holds a.len() * pairs(klen) * NR values; runs klen values.
                    unsafe {
                        let bv: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add($c / 2)));
                        for i in 0..MR {
                            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32($pair(r[i], $c)));
                            acc[i] = _mm512_dpbf16_ps(acc[i], av, bv);
                        }
                    }
                };
            }
            for c in (0..whole).step_by(2) {
                step!(c, pair);
            }
            if whole < klen {
                step!(whole, last);
            }
            // SAFETY: advancing within b (one vector per pair).
            bp = unsafe { bp.add(klen.div_ceil(2)) };
        }
        // SAFETY: forwarded contract.
        unsafe { store(&acc, out) }
    }

    /// Two adjacent panels: each broadcast pair feeds two `vdpbf16ps`. With
    /// `PF`, it also fetches the next row group's runs (`out0.next`).
    ///
    /// # Safety
    /// As `kernel`, for both panels; with `PF`, `out0.next` holds runs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn kernel2<const PF: bool>(
        a: &[[*const Bf16; MR]],
        klen: usize,
        b0: &[Bf16],
        b1: &[Bf16],
        out0: &Out<'_>,
        out1: &Out<'_>,
    ) {
        // SAFETY: the caller's contract.
        unsafe {
            prefetch(out0);
            prefetch(out1);
        }
        let mut acc0 = [_mm512_setzero_ps(); MR];
        let mut acc1 = [_mm512_setzero_ps(); MR];
        let (mut p0, mut p1) = (b0.as_ptr() as *const __m512i, b1.as_ptr() as *const __m512i);
        let whole = klen & !1;
        for (t, rows) in a.iter().enumerate() {
            let r = *rows;
            // The products of pair `c / 2` of every run, read by `$pair`.
            macro_rules! step {
                ($c:expr, $pair:ident) => {
                    // SAFETY: both panels hold a.len() * pairs(klen) * NR values; runs klen values.
                    unsafe {
                        let v0: __m512bh = std::mem::transmute(_mm512_loadu_si512(p0.add($c / 2)));
                        let v1: __m512bh = std::mem::transmute(_mm512_loadu_si512(p1.add($c / 2)));
                        for i in 0..MR {
                            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32($pair(r[i], $c)));
                            acc0[i] = _mm512_dpbf16_ps(acc0[i], av, v0);
                            acc1[i] = _mm512_dpbf16_ps(acc1[i], av, v1);
                        }
                    }
                };
            }
            for c in (0..whole).step_by(2) {
                if PF && c % 32 == 0 {
                    // SAFETY: `next` is the next group's runs (see `Out`).
                    unsafe { out0.next.fetch::<MR>(t, c * 2) };
                }
                step!(c, pair);
            }
            if whole < klen {
                step!(whole, last);
            }
            // SAFETY: advancing within the panels.
            unsafe {
                p0 = p0.add(klen.div_ceil(2));
                p1 = p1.add(klen.div_ceil(2));
            }
        }
        // SAFETY: forwarded contract.
        unsafe {
            store(&acc0, out0);
            store(&acc1, out1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even 1.0.
        assert_eq!(Bf16::from_f32(1.0 + 1.0 / 256.0).to_f32(), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: goes to the even 1 + 2^-6.
        assert_eq!(Bf16::from_f32(1.0 + 3.0 / 256.0).to_f32(), 1.0 + 1.0 / 64.0);
        assert_eq!(Bf16::from_f32(-2.5).to_f32(), -2.5);
        assert!(Bf16::from_f32(f32::NAN).to_f32().is_nan());
        assert_eq!(Bf16::from_f32(f32::INFINITY).to_f32(), f32::INFINITY);
    }

    /// The native micro-kernel (where the CPU has one) and the portable one
    /// agree on a tile with several taps, runs of even and odd length, with
    /// and without an epilogue.
    #[test]
    fn native_and_portable_kernels_agree() {
        for klen in [10, 21] {
            for with_epilogue in [false, true] {
                kernels_agree(3, klen, with_epilogue);
            }
        }
    }

    /// [`native_and_portable_kernels_agree`] for `taps` runs of `klen` values
    /// (each followed by a NaN that no product may read; the panel padded to
    /// whole pairs), with or without bias and ReLU.
    fn kernels_agree(taps: usize, klen: usize, with_epilogue: bool) {
        use crate::backend::cpu::gemm::Epilogue;
        let val = |i: usize| Bf16::from_f32(((i * 37 % 101) as f32 - 50.0) / 64.0);
        let mut runs = vec![Bf16::from_f32(f32::NAN); taps * MR * (klen + 1)];
        for (r, run) in runs.chunks_mut(klen + 1).enumerate() {
            for (c, v) in run[..klen].iter_mut().enumerate() {
                *v = val(r * klen + c);
            }
        }
        let run_at = |t: usize, i: usize| &runs[(t * MR + i) * (klen + 1)..][..klen];
        let a: Vec<[*const Bf16; MR]> = (0..taps).map(|t| std::array::from_fn(|i| run_at(t, i).as_ptr())).collect();
        let w: Vec<f32> = (0..NR * taps * klen).map(|i| val(i * 7 + 3).to_f32()).collect();
        // Each tap's weights padded to whole pairs, as the panels hold them.
        let kp = pairs(klen);
        let mut wp = vec![0.0f32; NR * taps * kp];
        for (row, tap) in wp.chunks_mut(kp).zip(w.chunks(klen)) {
            row[..klen].copy_from_slice(tap);
        }
        let mut b = AlignedVec::new();
        pack(&wp, NR, taps * kp, taps * kp, &mut b);
        let bias: Vec<f32> = (0..NR).map(|j| j as f32 * 0.25 - 2.0).collect();
        let epi = match with_epilogue {
            true => Epilogue { bias: Some(&bias), relu: true, ..Default::default() },
            false => Epilogue::default(),
        };
        let run = |portable: bool| {
            let mut y = vec![0.0f32; MR * NR];
            let rows: [*mut f32; MR] = std::array::from_fn(|i| y[i * NR..].as_mut_ptr());
            let out = Out::for_test(rows, &epi);
            // SAFETY: runs hold klen values, b holds taps * pairs(klen) * NR, rows NR floats each.
            unsafe {
                if portable {
                    kernel_portable(&a, klen, &b, &out);
                } else {
                    kernel(&a, klen, &b, &out);
                }
            }
            y
        };
        let (fast, slow) = (run(false), run(true));
        for (i, (x, y)) in fast.iter().zip(&slow).enumerate() {
            let want: f32 = {
                let (row, j) = (i / NR, i % NR);
                let mut s = 0.0f64;
                for t in 0..taps {
                    for (c, v) in run_at(t, row).iter().enumerate() {
                        s += v.to_f32() as f64 * w[j * taps * klen + t * klen + c] as f64;
                    }
                }
                if with_epilogue { crate::backend::relu((s + bias[j] as f64) as f32) } else { s as f32 }
            };
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "klen {klen} [{i}]: native {x}, portable {y}");
            assert!((y - want).abs() <= 1e-5 * (1.0 + want.abs()), "klen {klen} [{i}]: portable {y}, exact {want}");
        }
    }

    #[test]
    fn vector_conversion_matches_scalar() {
        let src: Vec<f32> = (0..1037).map(|i| ((i * 7919) % 1000) as f32 * 0.001_37 - 0.5).collect();
        let mut fast = vec![Bf16::default(); src.len()];
        convert(&src, &mut fast);
        let slow: Vec<Bf16> = src.iter().map(|&v| Bf16::from_f32(v)).collect();
        assert_eq!(fast, slow);
    }
}
