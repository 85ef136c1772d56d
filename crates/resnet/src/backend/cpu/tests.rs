//! Tests of the CPU backend's own paths, beyond the conformance battery
//! (`tests/conformance.rs`): the thread pool's scope, and bf16 kernels that
//! compute exactly the f32 convolution of the rounded values.

use super::*;

/// The scope's spinners must end however `f` ends: nested scopes, parallel
/// work inside, and a panic (which must reach the caller, not hang).
#[test]
fn scope_runs_nested_parallel_work_and_passes_panics_on() {
    for threads in [1, 2, 3] {
        let cpu = Cpu::new(Some(threads)).unwrap();
        let sum: u64 = cpu.scope(|| cpu.scope(|| (0..10_000u64).into_par_iter().map(|v| v * v).sum()));
        assert_eq!(sum, (0..10_000u64).map(|v| v * v).sum::<u64>());
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cpu.scope(|| (0..100).into_par_iter().for_each(|i| assert!(i != 57, "task {i} fails")))
        }));
        assert!(caught.is_err(), "the panic reaches the caller");
        assert_eq!(cpu.scope(rayon::current_num_threads), threads, "the pool still works");
    }
}

/// Rounds to bf16 and back.
fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| crate::backend::Bf16::from_f32(x).to_f32()).collect()
}

/// The reference backend's f32 convolution (f64 sums) of `x` and `w`, with
/// bias, residual and ReLU.
fn reference_conv(d: &ConvDesc, x: &[f32], w: &[f32], bias: &[f32], res: &[f32]) -> Vec<f32> {
    use crate::backend::Reference;
    let r = Reference;
    let mut f = Default::default();
    r.prepare_filter(d, &r.upload(w).unwrap(), FilterUse::Forward, &mut f).unwrap();
    let mut y = r.alloc(DType::F32, d.out_len()).unwrap();
    let (b, res) = (r.upload(bias).unwrap(), r.upload(res).unwrap());
    let epi = ConvEpilogue { bias: Some(&b), residual: Some(&res), relu: true, residual_in_output: false };
    r.conv_forward(d, &r.upload(x).unwrap(), &f, &mut y, &epi).unwrap();
    r.download(&y).unwrap()
}

/// bf16 convolutions (inference) compute exactly the f32 convolution of the
/// bf16-rounded input and weights, up to f32 summation order, for every mix
/// of f32 and bf16 input, output and residual: the stem's odd channel count
/// (row taps, half pairs), 1x1 layers that round their input tile by tile,
/// strided layers, groups of two channels, windows whose taps are split by
/// padding. Layers without a bf16 form (odd groups) and Winograd layers, kept
/// in f32, compute on the unrounded input (widened where it is stored in bf16).
#[test]
fn bf16_kernels_compute_the_f32_convolution_of_rounded_values() {
    let cpu = Cpu::new(Some(2)).unwrap();
    let mut seed = 0x5707edu64;
    let mut vec = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    };
    let conv = |n, h, w, c_in, c_out, k: usize, stride: usize, groups| ConvDesc {
        n,
        h,
        w,
        c_in,
        c_out,
        kernel: [k, k],
        stride: [stride, stride],
        pad: [k / 2, k / 2],
        dilation: [1, 1],
        groups,
    };
    let (f32s, bf16s) = (DType::F32, DType::Bf16);
    for d in [
        conv(2, 23, 19, 3, 24, 7, 2, 1), // the stem: row taps of 21 values, a half pair at the end
        conv(2, 13, 11, 1, 16, 7, 2, 1), // a grayscale stem: runs of 7
        conv(3, 9, 9, 96, 40, 1, 1, 1),  // 1x1: rounded tile by tile
        conv(2, 10, 10, 64, 130, 1, 2, 1),
        conv(2, 9, 7, 48, 36, 3, 2, 1),
        conv(1, 6, 6, 64, 64, 3, 1, 32),
        ConvDesc { w: 1, ..conv(2, 9, 1, 24, 40, 3, 1, 1) }, // every tile's taps split by padding
        conv(2, 9, 7, 15, 10, 1, 1, 5),                      // odd groups: no bf16 form
        conv(2, 16, 14, 24, 40, 3, 1, 1),                    // Winograd F(2, 3), f32
        conv(4, 16, 16, 16, 32, 3, 1, 1),                    // Winograd F(4, 3), f32
    ] {
        let (x, w, bias, res) = (vec(d.in_len()), vec(d.weight_len()), vec(d.c_out), vec(d.out_len()));
        let bf16_form = conv::algorithm(&d, FilterUse::ForwardBf16) == CpuAlgo::DirectBf16;
        let mut f = Default::default();
        cpu.prepare_filter(&d, &cpu.upload(&w).unwrap(), FilterUse::ForwardBf16, &mut f).unwrap();
        for (xs, ys, rs) in [(f32s, f32s, f32s), (bf16s, bf16s, bf16s), (f32s, bf16s, bf16s), (bf16s, f32s, f32s)] {
            let store = |v: &[f32], t: DType| match t {
                DType::Bf16 => cpu.upload(&v.iter().map(|&x| crate::backend::Bf16::from_f32(x)).collect::<Vec<_>>()),
                _ => cpu.upload(v),
            };
            let (xb, rb, bb) = (store(&x, xs).unwrap(), store(&res, rs).unwrap(), cpu.upload(&bias).unwrap());
            let mut y = cpu.alloc(ys, d.out_len()).unwrap();
            let epi = ConvEpilogue { bias: Some(&bb), residual: Some(&rb), relu: true, residual_in_output: false };
            cpu.conv_forward(&d, &xb, &f, &mut y, &epi).unwrap();
            let got = cpu.download(&y).unwrap();
            // What the kernels see: rounded values where stored or computed in bf16.
            let xr = if xs == bf16s || bf16_form { rounded(&x) } else { x.clone() };
            let wr = if bf16_form { rounded(&w) } else { w.clone() };
            let rr = if rs == bf16s { rounded(&res) } else { res.clone() };
            let want = reference_conv(&d, &xr, &wr, &bias, &rr);
            for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                // A bf16 output is one more rounding (half an ulp of bf16: 2^-9 relative).
                let tol = if ys == bf16s { 4e-3 * b.abs() + 1e-4 } else { 1e-4 * (1.0 + b.abs()) };
                assert!((a - b).abs() <= tol, "{d:?} {xs:?}/{ys:?}/{rs:?}: y[{i}] = {a}, reference {b}");
            }
        }
    }
}
