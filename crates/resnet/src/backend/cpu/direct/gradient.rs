//! The filter gradient of the indirect convolution: outer products of input
//! runs and output gradients, read in place.

use rayon::prelude::*;

use super::{SendPtr, TapColumns};
use crate::backend::cpu::gemm::isa;
use crate::backend::cpu::kernel::{MO, outer};
use crate::backend::cpu::mem::AlignedVec;
use crate::backend::cpu::tile::{NR, zeros};

/// A convolution's filter gradient by outer products, tile by tile: task
/// `(tap, channel panel)` owns its columns of `dw` and reduces over every
/// pixel in order, so the result does not depend on the thread count.
///
/// `dw` is `[c_out][taps][c_in]` for this group (row stride `taps * cin`);
/// `dy` rows have stride `ldy` and start at this group's first channel.
pub fn filter_gradient(w: &dyn TapColumns, dy: &[f32], ldy: usize, cout: usize, dw: &mut [f32]) {
    let (m, taps, cin) = (w.rows(), w.taps(), w.klen());
    let k = taps * cin;
    assert!(dw.len() >= cout * k, "filter gradient too small");
    if m == 0 {
        return;
    }
    let isa = isa();
    let np = cin.div_ceil(NR);
    let ncb = cout.div_ceil(MO);
    let dptr = SendPtr(dw.as_mut_ptr());
    const CHUNK: usize = 96;
    let task = |tk: usize| {
        let (t, p) = (tk / np, tk % np);
        let nr = NR.min(cin - p * NR);
        let zero = zeros(cin);
        let mut xs: Vec<*const f32> = Vec::with_capacity(CHUNK);
        let mut packed = AlignedVec::<f32>::zeroed(CHUNK * MO);
        for m0 in (0..m).step_by(CHUNK) {
            let ms = CHUNK.min(m - m0);
            xs.clear();
            w.fill_tap(m0, ms, t, zero, &mut xs);
            if p > 0 {
                for q in xs.iter_mut().filter(|q| **q != zero) {
                    // SAFETY: q is a run of `cin` floats and p * NR < cin.
                    *q = unsafe { q.add(p * NR) };
                }
            }
            for cb in 0..ncb {
                let mo = MO.min(cout - cb * MO);
                let mut rows = [std::ptr::null_mut(); MO];
                for (i, r) in rows.iter_mut().enumerate().take(mo) {
                    // SAFETY: row cb*MO + i < cout, column t*cin + p*NR + nr <= k: inside dw.
                    *r = unsafe { dptr.get().add((cb * MO + i) * k + t * cin + p * NR) };
                }
                let (a, lda) = if mo == MO {
                    (dy[m0 * ldy + cb * MO..].as_ptr(), ldy)
                } else {
                    // A partial block (or the very last rows): a zero-padded copy.
                    for j in 0..ms {
                        let src = &dy[(m0 + j) * ldy + cb * MO..][..mo];
                        packed[j * MO..j * MO + mo].copy_from_slice(src);
                        packed[j * MO + mo..(j + 1) * MO].fill(0.0);
                    }
                    (packed.as_ptr(), MO)
                };
                // SAFETY: a covers ms rows of MO readable floats (a full block lies inside each
                // dy row); xs hold nr floats each; rows are this task's own columns.
                unsafe { outer(isa, a, lda, &xs, &rows, nr) };
            }
        }
    };
    let tasks = taps * np;
    if tasks == 1 || rayon::current_num_threads() == 1 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}
