//! The f32 micro-kernels: an [`MR`] x [`NR`] tile of sums over runs read in
//! place (one pointer per pixel and tap), AVX-512 where the CPU has it, and
//! the outer products of the filter gradient ([`outer`]).

use super::gemm::{Epilogue, Isa, isa};
use super::tile::{MR, NR, Out, store_generic};
#[cfg(target_arch = "x86_64")]
use super::tile::{prefetch, store_avx512};

/// Calls the micro-kernel `f::<R>` that computes the first `R` rows of a
/// tile, `R` the tile's live rows (those with an output pointer) rounded up
/// to even: a short last row group (49 pixels at 7x7 make four groups of 12
/// and one of 1) then costs its own rows, not twelve.
macro_rules! by_live_rows {
    ($out:expr, $($f:ident)::+, [$($g:expr),*], ($($arg:expr),*)) => {
        match $out.live_rows() {
            0..=2 => $($f)::+::<2 $(, $g)*>($($arg),*),
            3..=4 => $($f)::+::<4 $(, $g)*>($($arg),*),
            5..=6 => $($f)::+::<6 $(, $g)*>($($arg),*),
            7..=8 => $($f)::+::<8 $(, $g)*>($($arg),*),
            9..=10 => $($f)::+::<10 $(, $g)*>($($arg),*),
            _ => $($f)::+::<12 $(, $g)*>($($arg),*),
        }
    };
}

/// Computes `MR x NR` outputs: `sum_t sum_c a[t][i][c] * b[t * klen + c][j]`.
///
/// # Safety
/// Every `a[t][i]` points at `klen` readable floats; `b` holds
/// `a.len() * klen * NR` floats; `out` rows are valid for `col + nr` floats
/// and written by this call alone.
pub(super) unsafe fn kernel(isa: Isa, a: &[[*const f32; MR]], klen: usize, b: &[f32], out: &Out<'_>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is selected only when the CPU has avx512f; the rest is the caller's contract.
        Isa::Avx512 => unsafe { by_live_rows!(out, x86::kernel_avx512, [], (a, klen, b, out)) },
        // SAFETY: the caller's contract.
        _ => unsafe { kernel_generic(a, klen, b, out) },
    }
}

/// Two adjacent panels (see `x86::kernel2_avx512`); two single calls elsewhere.
///
/// # Safety
/// As [`kernel`], for both panels.
pub(super) unsafe fn kernel2(
    isa: Isa,
    a: &[[*const f32; MR]],
    klen: usize,
    b0: &[f32],
    b1: &[f32],
    out0: &Out<'_>,
    out1: &Out<'_>,
) {
    static NO_PAIRS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *NO_PAIRS.get_or_init(|| std::env::var_os("RESNET_NO_PAIRS").is_some()) {
        // SAFETY: the caller's contract.
        return unsafe {
            kernel(isa, a, klen, b0, out0);
            kernel(isa, a, klen, b1, out1);
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is selected only when the CPU has avx512f; the rest is the caller's contract.
        Isa::Avx512 if out0.next.is_some() && out0.live_rows() == MR => unsafe {
            // SAFETY: as below; `next` holds the next group's runs.
            x86::kernel2_avx512::<MR, true>(a, klen, b0, b1, out0, out1)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is selected only when the CPU has avx512f; the rest is the caller's contract.
        Isa::Avx512 => unsafe { by_live_rows!(out0, x86::kernel2_avx512, [false], (a, klen, b0, b1, out0, out1)) },
        // SAFETY: the caller's contract.
        _ => unsafe {
            kernel_generic(a, klen, b0, out0);
            kernel_generic(a, klen, b1, out1);
        },
    }
}

/// Portable version.
///
/// # Safety
/// As [`kernel`].
unsafe fn kernel_generic(a: &[[*const f32; MR]], klen: usize, b: &[f32], out: &Out<'_>) {
    let mut acc = [[0.0f32; NR]; MR];
    for (t, rows) in a.iter().enumerate() {
        for c in 0..klen {
            let bv = &b[(t * klen + c) * NR..][..NR];
            for (i, &r) in rows.iter().enumerate() {
                // SAFETY: r points at klen floats (contract).
                let av = unsafe { *r.add(c) };
                for j in 0..NR {
                    acc[i][j] = av.mul_add(bv[j], acc[i][j]);
                }
            }
        }
    }
    // SAFETY: forwarded contract.
    unsafe { store_generic(&acc, out) }
}

/// One micro-kernel call for callers that manage their own rows (Winograd):
/// `rows[i][col..col + nr] (+)= sum_t sum_c a[t][i][c] * panel[t * klen + c]`,
/// finished by `epi` (its residual is ignored). Null rows are skipped.
///
/// # Safety
/// Every `a[t][i]` points at `klen` readable floats; `panel` holds
/// `a.len() * klen * NR` floats; non-null rows are writable for `col + nr`
/// floats by this call alone.
pub unsafe fn tile(
    a: &[[*const f32; MR]],
    klen: usize,
    panel: &[f32],
    rows: [*mut f32; MR],
    col: usize,
    nr: usize,
    epi: &Epilogue<'_>,
) {
    let out = Out::plain(rows, nr, col, epi);
    // SAFETY: forwarded contract.
    unsafe { kernel(isa(), a, klen, panel, &out) }
}

/// [`tile`] for two adjacent panels (`col1`, `nr1` for the second).
///
/// # Safety
/// As [`tile`], for both panels.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile2(
    a: &[[*const f32; MR]],
    klen: usize,
    p0: &[f32],
    p1: &[f32],
    rows: [*mut f32; MR],
    col: usize,
    nr: usize,
    nr1: usize,
    epi: &Epilogue<'_>,
) {
    let o0 = Out::plain(rows, nr, col, epi);
    let o1 = Out { nr: nr1, col: col + NR, ..o0 };
    // SAFETY: forwarded contract.
    unsafe { kernel2(isa(), a, klen, p0, p1, &o0, &o1) }
}

/// Rows of the filter gradient per outer-product tile.
pub const MO: usize = 16;

/// Accumulates `rows[i][0..nr] += sum_j a[j * lda + i] * x[j][0..nr]` for
/// `i < MO` (rows with a null pointer are skipped).
///
/// # Safety
/// `a` is readable for `(xs.len() - 1) * lda + MO` floats; each `xs[j]` for
/// `nr` floats; non-null rows are writable for `nr` floats, by this call alone.
pub(super) unsafe fn outer(isa: Isa, a: *const f32, lda: usize, xs: &[*const f32], rows: &[*mut f32; MO], nr: usize) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is selected only when the CPU has avx512f; the rest is the caller's contract.
        Isa::Avx512 => unsafe { x86::outer_avx512(a, lda, xs, rows, nr) },
        _ => {
            let mut acc = [[0.0f32; NR]; MO];
            for (j, &x) in xs.iter().enumerate() {
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    // SAFETY: the caller's contract.
                    let av = unsafe { *a.add(j * lda + i) };
                    for (l, acc_il) in acc_i.iter_mut().enumerate().take(nr) {
                        // SAFETY: x has nr floats.
                        *acc_il = av.mul_add(unsafe { *x.add(l) }, *acc_il);
                    }
                }
            }
            for (i, &r) in rows.iter().enumerate() {
                if !r.is_null() {
                    for (l, &v) in acc[i].iter().enumerate().take(nr) {
                        // SAFETY: the caller's contract.
                        unsafe { *r.add(l) += v };
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MO, MR, NR, Out, prefetch, store_avx512};
    use std::arch::x86_64::*;

    /// # Safety
    /// avx512f must be available; otherwise as `outer`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn outer_avx512(a: *const f32, lda: usize, xs: &[*const f32], rows: &[*mut f32; MO], nr: usize) {
        let mask: __mmask16 = if nr >= 16 { 0xffff } else { (1u16 << nr) - 1 };
        let mut acc = [_mm512_setzero_ps(); MO];
        for (j, &x) in xs.iter().enumerate() {
            // SAFETY: x holds nr floats (masked load); a row j holds MO floats.
            unsafe {
                let xv = _mm512_maskz_loadu_ps(mask, x);
                let ar = a.add(j * lda);
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    *acc_i = _mm512_fmadd_ps(_mm512_set1_ps(*ar.add(i)), xv, *acc_i);
                }
            }
        }
        for (i, &r) in rows.iter().enumerate() {
            if !r.is_null() {
                // SAFETY: r is writable for nr floats (masked).
                unsafe { _mm512_mask_storeu_ps(r, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, r), acc[i])) };
            }
        }
    }

    /// # Safety
    /// avx512f must be available; otherwise as `kernel`.
    #[target_feature(enable = "avx512f")]
    /// Computes the first `R` rows only: the rest have no output (see
    /// `by_live_rows`).
    pub(super) unsafe fn kernel_avx512<const R: usize>(a: &[[*const f32; MR]], klen: usize, b: &[f32], out: &Out<'_>) {
        // SAFETY: the caller's contract.
        unsafe { prefetch(out) };
        let mut acc = [_mm512_setzero_ps(); MR];
        let mut bp = b.as_ptr();
        for rows in a {
            let r = *rows;
            for c in 0..klen {
                // SAFETY: b holds a.len() * klen * NR floats; each row pointer klen floats.
                unsafe {
                    let bv = _mm512_loadu_ps(bp.add(c * NR));
                    for i in 0..R {
                        acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(*r[i].add(c)), bv, acc[i]);
                    }
                }
            }
            // SAFETY: advancing within b (see above).
            bp = unsafe { bp.add(klen * NR) };
        }
        // SAFETY: forwarded contract.
        unsafe { store_avx512(&acc, out) }
    }

    /// Two adjacent panels at once: each broadcast feeds two FMAs, halving
    /// the loads per multiply-add (`b1` is the next panel, `out1` its tile).
    /// With `PF`, it also fetches the next row group's runs (`out0.next`).
    ///
    /// # Safety
    /// As `kernel_avx512`, for both panels.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn kernel2_avx512<const R: usize, const PF: bool>(
        a: &[[*const f32; MR]],
        klen: usize,
        b0: &[f32],
        b1: &[f32],
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
        let (mut p0, mut p1) = (b0.as_ptr(), b1.as_ptr());
        for (t, rows) in a.iter().enumerate() {
            let r = *rows;
            for c in 0..klen {
                if PF && c % 16 == 0 {
                    // SAFETY: `next` is the next group's runs (see `Out`).
                    unsafe { out0.next.fetch::<R>(t, c * 4) };
                }
                // SAFETY: both panels hold a.len() * klen * NR floats; row pointers klen floats.
                unsafe {
                    let v0 = _mm512_loadu_ps(p0.add(c * NR));
                    let v1 = _mm512_loadu_ps(p1.add(c * NR));
                    for i in 0..R {
                        let av = _mm512_set1_ps(*r[i].add(c));
                        acc0[i] = _mm512_fmadd_ps(av, v0, acc0[i]);
                        acc1[i] = _mm512_fmadd_ps(av, v1, acc1[i]);
                    }
                }
            }
            // SAFETY: advancing within the panels (see above).
            unsafe {
                p0 = p0.add(klen * NR);
                p1 = p1.add(klen * NR);
            }
        }
        // SAFETY: forwarded contract.
        unsafe {
            store_avx512(&acc0, out0);
            store_avx512(&acc1, out1);
        }
    }
}
