//! The fast CPU convolution kernels against the naive NCHW reference, over
//! random shapes: forward directly, backward-data and backward-filter through
//! the adjoint identities `<conv(x), dy> = <x, bwd_data(dy)> = <w, bwd_filter(x, dy)>`.

use resnet::backend::reference::{conv2d_nchw, nchw_to_nhwc, nhwc_to_nchw, ohwi_to_oihw};
use resnet::backend::{Backend, ConvDesc, ConvEpilogue, Cpu, FilterUse};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0).collect()
    }
}

fn random_desc(r: &mut Rng) -> ConvDesc {
    loop {
        let groups = [1, 1, 2, 4][r.below(4)];
        let k = [1, 3, 3, 5, 7][r.below(5)];
        let kw = if r.below(4) == 0 { [1, 3][r.below(2)] } else { k };
        let d = ConvDesc {
            n: 1 + r.below(3),
            h: 1 + r.below(12),
            w: 1 + r.below(12),
            c_in: groups * (1 + r.below(9)),
            c_out: groups * (1 + r.below(20)),
            kernel: [k, kw],
            stride: [1 + r.below(3), 1 + r.below(2)],
            pad: [r.below(4), r.below(3)],
            dilation: [1 + r.below(2), 1 + r.below(2)],
            groups,
        };
        if d.out_h() > 0 && d.out_w() > 0 {
            return d;
        }
    }
}

/// A square-kernel convolution padded to keep the size at stride 1.
#[allow(clippy::too_many_arguments)]
fn square(n: usize, h: usize, w: usize, c_in: usize, c_out: usize, k: usize, stride: usize, groups: usize) -> ConvDesc {
    ConvDesc {
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
    }
}

/// The naive reference convolution of NHWC `x` with OHWI `w`, as NHWC.
fn reference(d: &ConvDesc, x: &[f32], w: &[f32]) -> Vec<f32> {
    let y = conv2d_nchw(
        &nhwc_to_nchw(x, d.n, d.c_in, d.h, d.w),
        d.n,
        d.c_in,
        d.h,
        d.w,
        &ohwi_to_oihw(w, d.c_out, d.cin_g(), d.kernel[0], d.kernel[1]),
        d.c_out,
        d.kernel,
        d.stride,
        d.pad,
        d.dilation,
        d.groups,
    );
    nchw_to_nhwc(&y, d.n, d.c_out, d.out_h(), d.out_w())
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

#[test]
fn conv_matches_reference_and_adjoints() {
    let cpu = Cpu::new(Some(2)).unwrap();
    let mut r = Rng(0x9e3779b97f4a7c15);
    for case in 0..300 {
        let d = random_desc(&mut r);
        let x = r.vec(d.in_len());
        let w = r.vec(d.weight_len());
        let dy = r.vec(d.out_len());

        // Forward against the reference.
        let mut f = Default::default();
        cpu.prepare_filter(&d, &w, FilterUse::Forward, &mut f);
        let mut y = vec![0.0; d.out_len()];
        cpu.conv_forward(&d, &x, &f, &mut y, &ConvEpilogue::default());
        let want = reference(&d, &x, &w);
        for (i, (a, b)) in y.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-4, "case {case} {d:?}: y[{i}] = {a}, reference {b}");
        }

        // Backward-data: <y, dy> = <x, dx>.
        let mut fb = Default::default();
        cpu.prepare_filter(&d, &w, FilterUse::BackwardData, &mut fb);
        let mut dx = vec![f32::NAN; d.in_len()];
        cpu.conv_backward_data(&d, &dy, &fb, &mut dx, false);
        let (lhs, rhs) = (dot(&y, &dy), dot(&x, &dx));
        assert!((lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()), "case {case} {d:?}: bwd-data {lhs} vs {rhs}");

        // Backward-filter: <y, dy> = <w, dw>.
        let mut dw = vec![0.0; d.weight_len()];
        cpu.conv_backward_filter(&d, &x, &dy, &mut dw);
        let rhs = dot(&w, &dw);
        assert!((lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()), "case {case} {d:?}: bwd-filter {lhs} vs {rhs}");

        // Accumulation adds.
        let mut dx2 = dx.clone();
        cpu.conv_backward_data(&d, &dy, &fb, &mut dx2, true);
        for (a, b) in dx2.iter().zip(&dx) {
            assert!((a - 2.0 * b).abs() < 1e-4);
        }
    }
}

/// The filter gradient by its definition, OHWI: `dw[co][ky][kx][ci] = sum
/// over images and output pixels of dy[co] * x[ci]` at the tap's offset.
fn naive_filter_gradient(d: &ConvDesc, x: &[f32], dy: &[f32]) -> Vec<f64> {
    let (kh, kw, ci, co) = (d.kernel[0], d.kernel[1], d.c_in, d.c_out);
    assert_eq!((d.groups, d.stride, d.dilation), (1, [1, 1], [1, 1]), "naive gradient: plain layers only");
    let mut dw = vec![0.0f64; d.weight_len()];
    for n in 0..d.n {
        for oy in 0..d.out_h() {
            for ox in 0..d.out_w() {
                let g = &dy[((n * d.out_h() + oy) * d.out_w() + ox) * co..][..co];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let (iy, ix) = ((oy + ky) as isize - d.pad[0] as isize, (ox + kx) as isize - d.pad[1] as isize);
                        if iy < 0 || ix < 0 || iy as usize >= d.h || ix as usize >= d.w {
                            continue;
                        }
                        let xs = &x[((n * d.h + iy as usize) * d.w + ix as usize) * ci..][..ci];
                        for (o, &gv) in g.iter().enumerate() {
                            let row = &mut dw[((o * kh + ky) * kw + kx) * ci..][..ci];
                            for (acc, &xv) in row.iter_mut().zip(xs) {
                                *acc += gv as f64 * xv as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    dw
}

/// 3x3 stride-1 layers with 16+ channels and enough tiles take the Winograd
/// path by default: forward against the reference, backward-data through the
/// adjoint identity, the filter gradient (accumulated) against its definition.
/// The shapes cover F(4, 3) and F(2, 3), edge tiles, no padding, channel
/// counts that are not multiples of 16, output channels split across tasks and
/// tiles split into slabs; also the batch statistics taken on the way.
#[test]
fn winograd_layers_match_reference() {
    let cpu = Cpu::new(Some(2)).unwrap();
    let mut r = Rng(0x1234567);
    let mut with_stats = 0;
    for &(n, h, w, ci, co, pad) in &[
        (1, 7, 7, 32, 48, 1),
        (2, 9, 6, 40, 32, 1),
        (1, 14, 14, 64, 64, 1),
        (2, 5, 8, 33, 35, 0),
        (12, 11, 13, 16, 16, 1),
        (5, 30, 29, 17, 80, 1),
        (3, 16, 16, 96, 24, 0),
        (64, 16, 16, 16, 16, 1), // several slabs of tiles, added in order
    ] {
        let d = ConvDesc {
            n,
            h,
            w,
            c_in: ci,
            c_out: co,
            kernel: [3, 3],
            stride: [1, 1],
            pad: [pad, pad],
            dilation: [1, 1],
            groups: 1,
        };
        let x = r.vec(d.in_len());
        let wt = r.vec(d.weight_len());
        let mut f = Default::default();
        cpu.prepare_filter(&d, &wt, FilterUse::Forward, &mut f);
        let mut y = vec![0.0; d.out_len()];
        cpu.conv_forward(&d, &x, &f, &mut y, &ConvEpilogue::default());
        let want = reference(&d, &x, &wt);
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-4 * scale, "{d:?}: {a} vs {b}");
        }
        // The batch statistics taken on the way, for a batch norm, against
        // two-pass f64 sums over y (inputs shifted so that means are large).
        let shifted: Vec<f32> = x.iter().map(|v| v + 2.0).collect();
        let (mut ys, mut stats) = (vec![0.0; d.out_len()], Vec::new());
        let taken = cpu.conv_forward_stats(&d, &shifted, &f, &mut ys, &mut stats);
        with_stats += taken as usize;
        let rows = d.out_len() / co;
        for ch in (0..co).filter(|_| taken) {
            let mean = ys.iter().skip(ch).step_by(co).map(|&v| v as f64).sum::<f64>() / rows as f64;
            let var = ys.iter().skip(ch).step_by(co).map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / rows as f64;
            assert!((stats[ch] as f64 - mean).abs() <= 1e-5 * (1.0 + mean.abs()), "{d:?}: mean {ch}");
            assert!((stats[co + ch] as f64 - var).abs() <= 1e-5 * var, "{d:?}: variance {ch}");
        }
        let dy = r.vec(d.out_len());
        let mut fb = Default::default();
        cpu.prepare_filter(&d, &wt, FilterUse::BackwardData, &mut fb);
        let mut dx = vec![0.0; d.in_len()];
        cpu.conv_backward_data(&d, &dy, &fb, &mut dx, false);
        let (lhs, rhs) = (dot(&y, &dy), dot(&x, &dx));
        assert!((lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()), "{d:?}: bwd-data {lhs} vs {rhs}");

        let want = naive_filter_gradient(&d, &x, &dy);
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let before = r.vec(d.weight_len());
        let mut dw = before.clone();
        cpu.conv_backward_filter(&d, &x, &dy, &mut dw);
        let worst = (0..dw.len()).map(|i| ((dw[i] - before[i]) as f64 - want[i]).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-5 * scale, "{d:?}: filter gradient off by {worst} (largest {scale})");
    }
    assert!(with_stats >= 5, "only {with_stats} layers took their statistics on the way");
}

/// bf16 convolutions (inference) compute exactly the f32 convolution of the
/// bf16-rounded input and weights, up to f32 summation order: random shapes
/// plus the special paths (the stem's odd channel count, 1x1 layers that round
/// their input tile by tile), with the fused epilogue. Grouped layers with odd
/// groups have no bf16 form and must give the f32 result.
#[test]
fn bf16_conv_is_the_f32_conv_of_rounded_values() {
    use resnet::backend::cpu::bf16::Bf16;
    let round = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| Bf16::from_f32(x).to_f32()).collect() };
    let cpu = Cpu::new(Some(2)).unwrap();
    let mut r = Rng(0xb16b16);
    let conv = square;
    let mut cases = vec![
        conv(2, 23, 19, 3, 24, 7, 2, 1),   // the stem: a zero channel, row taps
        conv(3, 9, 9, 96, 40, 1, 1, 1),    // 1x1: rounded tile by tile
        conv(2, 10, 10, 64, 130, 1, 2, 1), // strided 1x1 (projection shortcut)
        conv(2, 9, 7, 48, 36, 3, 2, 1),    // strided 3x3
        conv(1, 6, 6, 64, 64, 3, 1, 32),   // ResNeXt-like groups of two channels
    ];
    cases.extend((0..150).map(|_| random_desc(&mut r)));
    for (case, d) in cases.into_iter().enumerate() {
        let x = r.vec(d.in_len());
        let w = r.vec(d.weight_len());
        let bias = r.vec(d.c_out);
        let res = r.vec(d.out_len());
        let with_epilogue = case % 2 == 0;
        let epi = ConvEpilogue {
            bias: with_epilogue.then_some(&bias),
            residual: with_epilogue.then_some(&res),
            relu: with_epilogue,
            scale: None,
            residual_in_output: false,
        };
        let mut f = Default::default();
        cpu.prepare_filter(&d, &w, FilterUse::ForwardBf16, &mut f);
        let mut y = vec![f32::NAN; d.out_len()];
        cpu.conv_forward(&d, &x, &f, &mut y, &epi);
        let has_bf16_form = d.cin_g() % 2 == 0 || d.groups == 1;
        let (xr, wr) = if has_bf16_form { (round(&x), round(&w)) } else { (x.clone(), w.clone()) };
        let want = reference(&d, &xr, &wr);
        for (i, (&a, &b)) in y.iter().zip(&want).enumerate() {
            let b = if with_epilogue { (b + bias[i % d.c_out] + res[i]).max(0.0) } else { b };
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "case {case} {d:?}: y[{i}] = {a}, reference {b}");
        }
    }
}

/// Activations stored in bf16 (a bf16 plan's residual stream): every mix of
/// f32 and bf16 input, output and residual gives the f32 result of the
/// rounded values, rounded once more where the output is bf16; f32 filters
/// (no bf16 form) widen and narrow around their f32 kernels.
#[test]
fn stored_bf16_activations_match_the_rounded_reference() {
    use resnet::backend::Storage;
    use resnet::backend::cpu::bf16::Bf16;
    let round = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| Bf16::from_f32(x).to_f32()).collect() };
    // Packs bf16 values two to an f32 slot, as a bf16 plan's buffers hold them.
    let pack = |v: &[f32]| -> Vec<f32> {
        let bits: Vec<u16> = v.iter().map(|&x| Bf16::from_f32(x).0).collect();
        bits.chunks(2).map(|p| f32::from_bits(p[0] as u32 | (*p.get(1).unwrap_or(&0) as u32) << 16)).collect()
    };
    let unpack = |v: &[f32], len: usize| -> Vec<f32> {
        v.iter()
            .flat_map(|x| [x.to_bits() as u16, (x.to_bits() >> 16) as u16])
            .take(len)
            .map(|b| Bf16(b).to_f32())
            .collect()
    };
    let cpu = Cpu::new(Some(2)).unwrap();
    let mut r = Rng(0x5707ed);
    let conv = |c_in, c_out, k, stride, groups| square(2, 9, 7, c_in, c_out, k, stride, groups);
    let (f32s, bf16s) = (Storage::F32, Storage::Bf16);
    for (case, (d, usage)) in [
        (conv(64, 48, 1, 1, 1), FilterUse::ForwardBf16),
        (conv(32, 80, 1, 2, 1), FilterUse::ForwardBf16),
        (conv(24, 40, 3, 1, 1), FilterUse::ForwardBf16),
        // One column: every tile's taps are split by padding (bf16 output computed in f32, then rounded).
        (ConvDesc { w: 1, ..conv(24, 40, 3, 1, 1) }, FilterUse::ForwardBf16),
        (conv(15, 10, 1, 1, 5), FilterUse::ForwardBf16), // odd groups: an f32 filter
        (conv(16, 32, 1, 1, 1), FilterUse::Forward),
        // The stem: row taps over a padded copy never split, so bf16 rows are written directly.
        (square(2, 13, 11, 3, 16, 7, 2, 1), FilterUse::ForwardBf16),
        // Winograd F(2, 3) and F(4, 3), which bf16 plans keep in f32 but let round their output rows.
        (square(2, 16, 14, 24, 40, 3, 1, 1), FilterUse::ForwardBf16),
        (square(4, 16, 16, 16, 32, 3, 1, 1), FilterUse::ForwardBf16),
    ]
    .into_iter()
    .enumerate()
    {
        let x = r.vec(d.in_len());
        let w = r.vec(d.weight_len());
        let bias = r.vec(d.c_out);
        let res = r.vec(d.out_len());
        let mut f = Default::default();
        cpu.prepare_filter(&d, &w, usage, &mut f);
        // Winograd layers (the last two) keep f32 weights; the stem's odd
        // input gets a zero channel (which changes nothing).
        let winograd = case >= 7;
        let bf16_filter = usage == FilterUse::ForwardBf16 && (d.cin_g() % 2 == 0 || d.groups == 1) && !winograd;
        for (xs, ys, rs) in [(bf16s, bf16s, bf16s), (f32s, bf16s, bf16s), (bf16s, f32s, f32s), (f32s, f32s, bf16s)] {
            let stored = |v: &[f32], s: Storage| if s == bf16s { pack(v) } else { v.to_vec() };
            let (xb, rb) = (stored(&x, xs), stored(&res, rs));
            let mut y = vec![f32::NAN; d.out_len()];
            let epi = ConvEpilogue {
                bias: Some(&bias),
                residual: Some(&rb),
                relu: true,
                scale: None,
                residual_in_output: false,
            };
            cpu.conv_forward_stored(&d, &xb, xs, &f, &mut y, ys, &epi, rs);
            if ys == rs {
                // The residual stored in the output (as an inference plan keeps a
                // bottleneck's): read in place by 1x1 layers, from a copy elsewhere.
                let mut yr = rb.clone();
                let epi = ConvEpilogue { residual: None, residual_in_output: true, ..epi };
                cpu.conv_forward_stored(&d, &xb, xs, &f, &mut yr, ys, &epi, rs);
                let bits = |v: &[f32]| {
                    let v = if ys == bf16s { unpack(v, d.out_len()) } else { v.to_vec() };
                    v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                };
                assert!(bits(&yr) == bits(&y), "case {case} {xs:?}/{ys:?}: residual in the output differs");
            }
            let got = if ys == bf16s { unpack(&y, d.out_len()) } else { y };
            // What the kernels see: rounded inputs where stored or computed in bf16.
            let xr = if xs == bf16s || bf16_filter { round(&x) } else { x.clone() };
            let wr = if bf16_filter { round(&w) } else { w.clone() };
            let rr = if rs == bf16s { round(&res) } else { res.clone() };
            let want = reference(&d, &xr, &wr);
            for (i, (&a, &b)) in got.iter().zip(&want).enumerate() {
                let b = (b + bias[i % d.c_out] + rr[i]).max(0.0);
                // A bf16 output is one more rounding (half an ulp of bf16: 2^-9 relative).
                let tol = if ys == bf16s { 4e-3 * b.abs() + 1e-4 } else { 1e-4 * (1.0 + b.abs()) };
                assert!((a - b).abs() <= tol, "case {case} {xs:?}/{ys:?}/{rs:?}: y[{i}] = {a}, reference {b}");
            }
        }
    }
}

/// A layer's input and weights as a test stores them: the filter use, the
/// values the kernels see (rounded where `storage` is bf16), and the input
/// as stored (bf16 values two to each f32 slot, as a bf16 plan keeps them).
fn stored(x: &[f32], w: &[f32], storage: resnet::backend::Storage) -> (FilterUse, Vec<f32>, Vec<f32>, Vec<f32>) {
    use resnet::backend::cpu::bf16::Bf16;
    if storage == resnet::backend::Storage::F32 {
        return (FilterUse::Forward, x.to_vec(), w.to_vec(), x.to_vec());
    }
    let bf16 = |v: &[f32]| v.iter().map(|&x| Bf16::from_f32(x)).collect::<Vec<_>>();
    let (xb, wb) = (bf16(x), bf16(w));
    let packed = xb.chunks(2).map(|p| f32::from_bits(p[0].0 as u32 | (p[1].0 as u32) << 16)).collect();
    let widen = |v: &[Bf16]| v.iter().map(|b| b.to_f32()).collect();
    (FilterUse::ForwardBf16, widen(&xb), widen(&wb), packed)
}

/// Inputs of 4 MiB and more, where the kernels fetch the next row group's
/// runs while they compute a group's (two tiles in turn in `direct::run`):
/// 1x1, strided 1x1 and strided 3x3 windows, f32 and bf16-stored inputs,
/// still match the reference.
#[test]
fn large_inputs_match_the_reference() {
    use resnet::backend::Storage;
    let cpu = Cpu::new(Some(2)).unwrap();
    let mut r = Rng(0x1a7e);
    for (d, storage) in [
        (square(2, 64, 64, 128, 24, 1, 1, 1), Storage::F32),
        (square(2, 64, 64, 128, 40, 3, 2, 1), Storage::F32),
        (square(2, 64, 64, 256, 24, 1, 1, 1), Storage::Bf16),
        (square(2, 66, 63, 256, 40, 1, 2, 1), Storage::Bf16),
    ] {
        let value_bytes = if storage == Storage::Bf16 { 2 } else { 4 };
        assert!(d.in_len() * value_bytes >= 4 << 20, "{d:?} is too small to take the prefetching path");
        let x = r.vec(d.in_len());
        let w = r.vec(d.weight_len());
        let mut f = Default::default();
        let (usage, xr, wr, xs) = stored(&x, &w, storage);
        cpu.prepare_filter(&d, &w, usage, &mut f);
        let mut y = vec![f32::NAN; d.out_len()];
        let epi = ConvEpilogue::default();
        cpu.conv_forward_stored(&d, &xs, storage, &f, &mut y, Storage::F32, &epi, Storage::F32);
        let want = reference(&d, &xr, &wr);
        for (i, (&a, &b)) in y.iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{d:?} {storage:?}: y[{i}] = {a}, reference {b}");
        }
    }
}

/// Layers whose adjacent output pixels read input pixels a multiple of 4 KiB
/// apart (1024 and 2048 f32 channels, 512 with stride 2; 2048 bf16, 1024 with
/// stride 2) read a copy with spaced pixels: 1x1 and 3x3, a residual beside
/// or in the output (1x1), a smaller layer after a larger one (the copy's
/// scratch is longer than its input), all still the reference.
#[test]
fn aliased_pixel_strides_match_the_reference() {
    use resnet::backend::Storage;
    let cpu = Cpu::new(Some(2)).unwrap();
    let mut r = Rng(0x4096);
    for (d, storage) in [
        (square(2, 7, 6, 1024, 40, 1, 1, 1), Storage::F32),
        (square(1, 5, 5, 1024, 24, 1, 2, 1), Storage::F32),
        (square(1, 3, 4, 2048, 36, 1, 1, 1), Storage::F32),
        (square(2, 5, 4, 2048, 40, 1, 1, 1), Storage::Bf16),
        (square(1, 3, 3, 2048, 20, 1, 2, 1), Storage::Bf16),
        (square(1, 7, 6, 1024, 20, 1, 2, 1), Storage::Bf16),
        (square(2, 6, 5, 512, 24, 1, 2, 1), Storage::F32),
        (square(1, 7, 7, 512, 20, 3, 2, 1), Storage::F32),
    ] {
        let x = r.vec(d.in_len());
        let w = r.vec(d.weight_len());
        let res = r.vec(d.out_len());
        let (usage, xr, wr, xs) = stored(&x, &w, storage);
        let mut f = Default::default();
        cpu.prepare_filter(&d, &w, usage, &mut f);
        let want = reference(&d, &xr, &wr);
        let epi = ConvEpilogue { residual: Some(&res), relu: true, ..Default::default() };
        let mut y = vec![f32::NAN; d.out_len()];
        cpu.conv_forward_stored(&d, &xs, storage, &f, &mut y, Storage::F32, &epi, Storage::F32);
        let mut in_place = res.clone();
        let epi = ConvEpilogue { residual: None, residual_in_output: true, ..epi };
        cpu.conv_forward_stored(&d, &xs, storage, &f, &mut in_place, Storage::F32, &epi, Storage::F32);
        for (i, (&a, &b)) in y.iter().zip(&want).enumerate() {
            let b = (b + res[i]).max(0.0);
            assert!((a - b).abs() < 1e-4 * (1.0 + b.abs()), "{d:?} {storage:?}: y[{i}] = {a}, reference {b}");
            assert_eq!(a.to_bits(), in_place[i].to_bits(), "{d:?} {storage:?}: residual in the output differs at {i}");
        }
    }
}
