//! The conformance battery: every operation of the `Backend` trait, on every
//! backend (`for_each_backend!`: the reference and the CPU today; a new
//! backend is one line in `common/mod.rs`), against the reference backend,
//! over the descriptor shapes the ResNet family uses (stems, 3x3 and 1x1,
//! strided, grouped, the classifier, shapes that take the CPU's special
//! paths) and random ones; forward and backward; f32 and, where a backend
//! says it supports them, bf16 storage. The backend's answers to the plan
//! compiler (`conv_storage`, `conv_algorithm`) are checked for what the plan
//! relies on: bf16 reads and writes that change nothing but one rounding,
//! residuals in the output buffer that give bit-identical results, and
//! filters that serve every shape with their algorithm.

mod common;

use common::{Rng, Scale};
use resnet::backend::reference::round_bf16;
use resnet::backend::{
    Backend, Bf16, BnGrads, BnParams, BnSaved, BnTail, Buffer, ConvDesc, ConvEpilogue, DType, FilterUse, InputRead,
    PadShortcutDesc, PoolDesc, Reference, SgdStep,
};
use resnet::model::graph::Conv;

impl Rng {
    /// Uniform values in [-1, 1).
    fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0).collect()
    }
}

/// `|a - b| <= tol * max(1, max |want|)` element-wise.
fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= tol * scale, "{what}: [{i}] = {a}, reference {b} (scale {scale})");
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| round_bf16(x)).collect()
}

/// `relative L2` of `a` against `b`.
fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (d / n.max(f64::MIN_POSITIVE)).sqrt()
}

/// Host values in a buffer of `dtype` (f32 or bf16, rounded to nearest).
fn buf<B: Backend>(b: &B, v: &[f32], dtype: DType) -> B::Buf {
    match dtype {
        DType::Bf16 => b.upload(&v.iter().map(|&x| Bf16::from_f32(x)).collect::<Vec<_>>()).unwrap(),
        _ => b.upload(v).unwrap(),
    }
}

fn down<B: Backend>(b: &B, buf: &B::Buf) -> Vec<f32> {
    b.download(buf).unwrap()
}

#[allow(clippy::too_many_arguments)]
fn square(n: usize, h: usize, w: usize, c_in: usize, c_out: usize, k: usize, stride: usize, groups: usize) -> ConvDesc {
    Conv::square(c_in, c_out, k, stride, k / 2, groups).desc(n, h, w)
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

/// The convolutions of the family, and shapes that take special paths on
/// the CPU (Winograd F(4,3) and F(2,3), edge tiles, input pixels 4 KiB apart,
/// inputs of 4 MiB and more), then random descriptors.
fn descriptors(scale: Scale, r: &mut Rng) -> Vec<ConvDesc> {
    let mut v = vec![
        square(2, 23, 19, 3, 24, 7, 2, 1),                            // ImageNet stem
        square(1, 16, 16, 1, 16, 7, 2, 1),                            // grayscale stem
        square(2, 16, 16, 3, 16, 3, 1, 1),                            // CIFAR stem
        square(2, 16, 16, 16, 16, 3, 1, 1),                           // CIFAR 3x3 (F(4,3) on the CPU)
        square(1, 14, 14, 64, 64, 3, 1, 1),                           // F(2,3) at batch 1
        square(1, 7, 7, 64, 48, 3, 1, 1),                             // too few tiles: direct
        square(2, 9, 7, 48, 36, 3, 2, 1),                             // strided 3x3
        square(2, 10, 10, 64, 40, 1, 1, 1),                           // bottleneck 1x1
        square(2, 10, 10, 64, 130, 1, 2, 1),                          // projection shortcut
        square(2, 8, 8, 64, 64, 3, 1, 32),                            // ResNeXt 3x3, groups of two channels
        square(2, 8, 8, 64, 64, 3, 2, 32),                            // strided ResNeXt 3x3
        square(3, 1, 1, 96, 10, 1, 1, 1),                             // the classifier
        ConvDesc { pad: [0, 0], ..square(2, 5, 8, 33, 35, 3, 1, 1) }, // no padding
        square(1, 5, 4, 1024, 40, 1, 1, 1),                           // input pixels 4 KiB apart
        square(1, 5, 5, 512, 24, 1, 2, 1),
        square(1, 7, 7, 512, 20, 3, 2, 1),
    ];
    if scale == Scale::Full {
        v.push(square(2, 64, 64, 128, 24, 1, 1, 1)); // 4 MiB of input: fetched ahead
        v.push(square(2, 64, 64, 128, 40, 3, 2, 1));
        v.push(square(4, 30, 29, 17, 80, 3, 1, 1));
        v.push(square(64, 16, 16, 16, 16, 3, 1, 1)); // many tiles, filter gradient in slabs
    }
    let random = if scale == Scale::Full { 120 } else { 40 };
    v.extend((0..random).map(|_| random_desc(r)));
    v
}

/// The epilogue of a test convolution, on the host.
#[derive(Clone, Default)]
struct Epi {
    bias: Option<Vec<f32>>,
    residual: Option<Vec<f32>>,
    relu: bool,
}

/// One forward convolution on `b`: input, output and residual stored as
/// `(x, y, r)`, the residual apart or in the output.
#[allow(clippy::too_many_arguments)]
fn conv<B: Backend>(
    b: &B,
    d: &ConvDesc,
    x: &[f32],
    w: &[f32],
    usage: FilterUse,
    e: &Epi,
    types: (DType, DType, DType),
    in_output: bool,
) -> Vec<f32> {
    let mut f = B::Filter::default();
    b.prepare_filter(d, &b.upload(w).unwrap(), usage, &mut f).unwrap();
    let xb = buf(b, x, types.0);
    let bias = e.bias.as_ref().map(|v| b.upload(v).unwrap());
    let res = e.residual.as_ref().map(|v| buf(b, v, types.2));
    let mut y = match (&e.residual, in_output) {
        (Some(v), true) => buf(b, v, types.1),
        _ => b.alloc(types.1, d.out_len()).unwrap(),
    };
    let epi = ConvEpilogue {
        bias: bias.as_ref(),
        residual: res.as_ref().filter(|_| !in_output),
        relu: e.relu,
        residual_in_output: in_output && e.residual.is_some(),
    };
    b.conv_forward(d, &xb, &f, &mut y, &epi).unwrap();
    down(b, &y)
}

const F32: (DType, DType, DType) = (DType::F32, DType::F32, DType::F32);

fn buffers_hold_their_type_and_values<B: Backend>(b: &B, _: Scale) {
    let z = b.alloc(DType::F32, 7).unwrap();
    assert_eq!((z.dtype(), z.len(), down(b, &z)), (DType::F32, 7, vec![0.0; 7]));
    let v = vec![1.5f32, -2.0, 3.25, f32::MAX, -0.0];
    let mut x = b.upload(&v).unwrap();
    assert_eq!(bits(&down(b, &x)), bits(&v));
    b.write(&mut x, &[9.0f32, 8.0]).unwrap();
    assert_eq!((x.len(), down(b, &x)), (2, vec![9.0, 8.0]));
    b.fill(&mut x, 0.5).unwrap();
    assert_eq!(down(b, &x), vec![0.5, 0.5]);
    // The same buffer retyped: labels, then bf16 (rounded to nearest, ties to even).
    b.write(&mut x, &[3u32, 1, 4]).unwrap();
    assert_eq!((x.dtype(), x.len()), (DType::U32, 3));
    assert!(b.download(&x).is_err(), "labels are not floats");
    let h = [1.0f32, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -3.3, 1e-3];
    b.write(&mut x, &h.map(Bf16::from_f32)).unwrap();
    assert_eq!((x.dtype(), down(b, &x)), (DType::Bf16, rounded(&h)));
    assert_eq!(down(b, &x)[1], 1.0, "a tie rounds to even");
    b.resize(&mut x, DType::F32, 11).unwrap();
    assert_eq!((x.dtype(), x.len()), (DType::F32, 11));
    // Wrong types and sizes are errors, not panics.
    let d = square(1, 4, 4, 2, 3, 3, 1, 1);
    let mut f = B::Filter::default();
    b.prepare_filter(&d, &b.upload(&vec![0.1f32; d.weight_len()]).unwrap(), FilterUse::Forward, &mut f).unwrap();
    let labels = b.upload(&vec![1u32; d.in_len()]).unwrap();
    let mut y = b.alloc(DType::F32, d.out_len()).unwrap();
    assert!(b.conv_forward(&d, &labels, &f, &mut y, &ConvEpilogue::default()).is_err());
    let unprepared = B::Filter::default();
    let xf = b.alloc(DType::F32, d.in_len()).unwrap();
    assert!(b.conv_forward(&d, &xf, &unprepared, &mut y, &ConvEpilogue::default()).is_err(), "unprepared filter");
    let mut short = b.alloc(DType::F32, d.out_len() - 1).unwrap();
    let xs = b.alloc(DType::F32, d.in_len()).unwrap();
    assert!(b.conv_forward(&d, &xs, &f, &mut short, &ConvEpilogue::default()).is_err());
}

fn convolutions_match_the_reference<B: Backend>(b: &B, scale: Scale) {
    let mut r = Rng(0x9e3779b97f4a7c15);
    for (case, d) in descriptors(scale, &mut r).into_iter().enumerate() {
        let (x, w, dy) = (r.vec(d.in_len()), r.vec(d.weight_len()), r.vec(d.out_len()));
        let e = match case % 3 {
            0 => Epi::default(),
            1 => Epi { bias: Some(r.vec(d.c_out)), relu: true, ..Epi::default() },
            _ => Epi { bias: Some(r.vec(d.c_out)), residual: Some(r.vec(d.out_len())), relu: true },
        };
        let what = format!("case {case} {d:?}");
        let want = conv(&Reference, &d, &x, &w, FilterUse::Forward, &e, F32, false);
        close(&format!("{what}: forward"), &conv(b, &d, &x, &w, FilterUse::Forward, &e, F32, false), &want, 1e-4);

        let (got, want) = (conv_backward(b, &d, &x, &w, &dy), conv_backward(&Reference, &d, &x, &w, &dy));
        for (name, g, w) in
            [("backward-data", &got.0, &want.0), ("accumulated", &got.1, &want.1), ("backward-filter", &got.2, &want.2)]
        {
            close(&format!("{what}: {name}"), g, w, 1e-4);
        }
    }
}

/// Backward-data overwriting, then accumulating onto that; backward-filter
/// accumulating onto 0.5.
fn conv_backward<B: Backend>(b: &B, d: &ConvDesc, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut f = B::Filter::default();
    b.prepare_filter(d, &b.upload(w).unwrap(), FilterUse::BackwardData, &mut f).unwrap();
    let dyb = b.upload(dy).unwrap();
    let mut dx = b.upload(&vec![f32::NAN; d.in_len()]).unwrap();
    b.conv_backward_data(d, &dyb, &f, &mut dx, false).unwrap();
    let once = down(b, &dx);
    b.conv_backward_data(d, &dyb, &f, &mut dx, true).unwrap();
    let mut dw = b.upload(&vec![0.5f32; d.weight_len()]).unwrap();
    b.conv_backward_filter(d, &b.upload(x).unwrap(), &dyb, &mut dw).unwrap();
    (once, down(b, &dx), down(b, &dw))
}

fn filters_serve_every_shape_with_their_algorithm<B: Backend>(b: &B, _: Scale) {
    let mut r = Rng(0xa160);
    let mut reused = 0;
    for (c_in, c_out, k, stride) in [(16, 16, 3, 1), (32, 32, 3, 1), (64, 32, 1, 1), (24, 48, 3, 2), (3, 16, 7, 2)] {
        let w = r.vec(c_out * k * k * c_in);
        for usage in [FilterUse::Forward, FilterUse::ForwardBf16, FilterUse::BackwardData] {
            // One filter object, prepared at one shape and used at others while
            // the algorithm stays the same (a compiled model's cache), and
            // prepared again (reusing its memory) when it changes.
            let mut f = B::Filter::default();
            let mut algo = None;
            for (n, side) in [(1, 7), (4, 16), (1, 16), (8, 8), (2, 5)] {
                let d = square(n, side, side, c_in, c_out, k, stride, 1);
                let a = b.conv_algorithm(&d, usage);
                if algo == Some(a) {
                    reused += 1;
                } else {
                    b.prepare_filter(&d, &b.upload(&w).unwrap(), usage, &mut f).unwrap();
                    algo = Some(a);
                }
                let x = r.vec(d.in_len());
                let what = format!("{usage:?} {d:?}");
                if usage == FilterUse::BackwardData {
                    let dy = r.vec(d.out_len());
                    let mut dx = b.alloc(DType::F32, d.in_len()).unwrap();
                    b.conv_backward_data(&d, &b.upload(&dy).unwrap(), &f, &mut dx, false).unwrap();
                    close(&what, &down(b, &dx), &conv_backward(&Reference, &d, &x, &w, &dy).0, 1e-4);
                    continue;
                }
                let mut y = b.alloc(DType::F32, d.out_len()).unwrap();
                b.conv_forward(&d, &b.upload(&x).unwrap(), &f, &mut y, &ConvEpilogue::default()).unwrap();
                let exact = conv(&Reference, &d, &x, &w, FilterUse::Forward, &Epi::default(), F32, false);
                let got = down(b, &y);
                match usage {
                    FilterUse::Forward => close(&what, &got, &exact, 1e-4),
                    _ => assert!(relative_l2(&got, &exact) < 1e-2, "{what}: bf16 off by {}", relative_l2(&got, &exact)),
                }
            }
        }
    }
    assert!(reused > 0, "no shape pair shared an algorithm");
}

fn statistics_taken_on_the_way_are_the_outputs<B: Backend>(b: &B, scale: Scale) {
    let mut r = Rng(0x57a7);
    for d in descriptors(scale, &mut r).into_iter().take(16) {
        // Inputs shifted so that means are large.
        let x: Vec<f32> = r.vec(d.in_len()).iter().map(|v| v + 2.0).collect();
        let w = r.vec(d.weight_len());
        let mut f = B::Filter::default();
        b.prepare_filter(&d, &b.upload(&w).unwrap(), FilterUse::Forward, &mut f).unwrap();
        let (xb, mut y, mut stats) =
            (b.upload(&x).unwrap(), b.alloc(DType::F32, d.out_len()).unwrap(), B::Buf::default());
        let taken = b.conv_forward_stats(&d, &xb, &f, &mut y, &mut stats).unwrap();
        let plain = conv(b, &d, &x, &w, FilterUse::Forward, &Epi::default(), F32, false);
        let ys = down(b, &y);
        assert_eq!(bits(&ys), bits(&plain), "{d:?}: the statistics pass changed the output");
        if !taken {
            continue;
        }
        let (co, rows) = (d.c_out, d.out_len() / d.c_out);
        let stats = down(b, &stats);
        for ch in 0..co {
            let mean = ys.iter().skip(ch).step_by(co).map(|&v| v as f64).sum::<f64>() / rows as f64;
            let var = ys.iter().skip(ch).step_by(co).map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / rows as f64;
            assert!((stats[ch] as f64 - mean).abs() <= 1e-5 * (1.0 + mean.abs()), "{d:?}: mean {ch}");
            assert!((stats[co + ch] as f64 - var).abs() <= 1e-5 * (var + 1e-6), "{d:?}: variance {ch}");
        }
    }
}

/// What the plan compiler relies on, for every descriptor the backend is
/// asked about: a bf16 input where the layer rounds its input anyway changes
/// nothing; a bf16 output is the rounding of the f32 output; a bf16
/// residual is the f32 residual of rounded values; a residual in the output
/// buffer gives the result of one apart, bit for bit. And the bf16 result is
/// near the exact one.
fn storage_answers_hold<B: Backend>(b: &B, scale: Scale) {
    let mut r = Rng(0x5707ed);
    let (f32, bf16) = (DType::F32, DType::Bf16);
    for d in descriptors(scale, &mut r) {
        let (x, w) = (r.vec(d.in_len()), r.vec(d.weight_len()));
        let e = Epi { bias: Some(r.vec(d.c_out)), residual: Some(r.vec(d.out_len())), relu: true };
        for usage in [FilterUse::Forward, FilterUse::ForwardBf16] {
            let s = b.conv_storage(&d, usage);
            let what = format!("{usage:?} {d:?} {s:?}");
            let base = conv(b, &d, &x, &w, usage, &e, F32, false);
            if s.residual_in_output {
                assert_eq!(bits(&conv(b, &d, &x, &w, usage, &e, F32, true)), bits(&base), "{what}: in place");
            }
            if usage == FilterUse::Forward {
                continue;
            }
            let exact = conv(&Reference, &d, &x, &w, FilterUse::Forward, &e, F32, false);
            let err = relative_l2(&base, &exact);
            assert!(err < 1e-2, "{what}: bf16 result off by {err} (relative L2)");
            let xr = rounded(&x);
            if s.input == InputRead::Bf16 {
                let stored = conv(b, &d, &x, &w, usage, &e, (bf16, f32, f32), false);
                assert_eq!(bits(&stored), bits(&base), "{what}: a bf16 input changed the result");
            }
            if s.input == InputRead::Bf16Rounding {
                let stored = conv(b, &d, &x, &w, usage, &e, (bf16, f32, f32), false);
                let of_rounded = conv(b, &d, &xr, &w, usage, &e, F32, false);
                assert_eq!(bits(&stored), bits(&of_rounded), "{what}: a bf16 input is not its rounded values");
            }
            if s.output_bf16 {
                let stored = conv(b, &d, &x, &w, usage, &e, (f32, bf16, f32), false);
                assert_eq!(bits(&stored), bits(&rounded(&base)), "{what}: a bf16 output is not the rounded output");
            }
            if s.residual_bf16 {
                let er = Epi { residual: e.residual.as_deref().map(rounded), ..e.clone() };
                let stored = conv(b, &d, &x, &w, usage, &e, (f32, f32, bf16), false);
                assert_eq!(bits(&stored), bits(&conv(b, &d, &x, &w, usage, &er, F32, false)), "{what}: bf16 residual");
                if s.output_bf16 && s.residual_in_output {
                    let apart = conv(b, &d, &x, &w, usage, &e, (f32, bf16, bf16), false);
                    let in_place = conv(b, &d, &x, &w, usage, &e, (f32, bf16, bf16), true);
                    assert_eq!(bits(&in_place), bits(&apart), "{what}: bf16 residual in place");
                }
            }
        }
    }
}

/// Runs the three batch-norm operations on `b`; returns every output.
fn batch_norm_outputs<B: Backend>(
    b: &B,
    rows: usize,
    c: usize,
    data: &[Vec<f32>; 6],
    residual: bool,
    relu: bool,
) -> Vec<Vec<f32>> {
    let [x, gamma, beta, res, dy, run] = data;
    let (xb, gb, bb) = (b.upload(x).unwrap(), b.upload(gamma).unwrap(), b.upload(beta).unwrap());
    let rb = b.upload(res).unwrap();
    let p = BnParams { weight: &gb, bias: &bb, eps: 1e-5 };
    let tail = BnTail { residual: residual.then_some(&rb), relu };
    let (mean, var) =
        (b.upload(&run[..c]).unwrap(), b.upload(&run[c..].iter().map(|v| v.abs() + 0.5).collect::<Vec<_>>()).unwrap());
    let mut y = b.alloc(DType::F32, rows * c).unwrap();
    b.bn_forward_inference(rows, c, &xb, &p, &mean, &var, &tail, &mut y).unwrap();
    let inference = down(b, &y);
    let (mut rm, mut rv) =
        (b.upload(&run[..c]).unwrap(), b.upload(&run[c..].iter().map(|v| v.abs() + 0.5).collect::<Vec<_>>()).unwrap());
    let (mut sm, mut si) = (B::Buf::default(), B::Buf::default());
    let saved = BnSaved { mean: &mut sm, invstd: &mut si };
    b.bn_forward_training(rows, c, &xb, None, &p, Some((&mut rm, &mut rv, 0.1)), saved, &tail, &mut y).unwrap();
    let training = down(b, &y);
    // The output again from the saved statistics: the same bits (what the
    // training memory plan relies on to release a norm's output).
    let mut again = b.alloc(DType::F32, rows * c).unwrap();
    b.bn_forward_saved(rows, c, &xb, &p, &sm, &si, &tail, &mut again).unwrap();
    let again = down(b, &again);
    assert!(
        again.iter().zip(&training).all(|(a, t)| a.to_bits() == t.to_bits()),
        "bn_forward_saved differs from the training output ({rows}x{c}, residual={residual}, relu={relu})"
    );
    let (mut dx, mut dsum) = (b.alloc(DType::F32, rows * c).unwrap(), b.alloc(DType::F32, rows * c).unwrap());
    let (mut dg, mut db) = (b.upload(&vec![0.25f32; c]).unwrap(), b.upload(&vec![-0.5f32; c]).unwrap());
    let grads = BnGrads { dx: &mut dx, dweight: &mut dg, dbias: &mut db, dsum: residual.then_some(&mut dsum) };
    b.bn_backward(rows, c, &xb, &y, relu, &b.upload(dy).unwrap(), &p, &sm, &si, grads).unwrap();
    let mut out = vec![inference, training, down(b, &rm), down(b, &rv), down(b, &sm), down(b, &si)];
    out.extend([down(b, &dx), down(b, &dg), down(b, &db)]);
    if residual {
        out.push(down(b, &dsum));
    }
    out
}

fn batch_norm_matches_the_reference<B: Backend>(b: &B, _: Scale) {
    let mut r = Rng(0xb47c);
    for (rows, c) in [(2 * 5 * 7, 16), (1, 3), (300, 64), (2 * 28 * 28, 20)] {
        for (residual, relu) in [(false, false), (false, true), (true, true)] {
            let data = [r.vec(rows * c), r.vec(c), r.vec(c), r.vec(rows * c), r.vec(rows * c), r.vec(2 * c)];
            let got = batch_norm_outputs(b, rows, c, &data, residual, relu);
            let want = batch_norm_outputs(&Reference, rows, c, &data, residual, relu);
            let names = [
                "inference",
                "training",
                "running mean",
                "running var",
                "saved mean",
                "saved invstd",
                "dx",
                "dgamma",
                "dbeta",
                "dsum",
            ];
            for ((g, w), name) in got.iter().zip(&want).zip(names) {
                close(&format!("{rows}x{c} residual={residual} relu={relu}: {name}"), g, w, 1e-4);
            }
        }
    }
}

/// Max pooling forward (f32, and bf16 where the backend pools bf16) and
/// backward, the global average pool forward and backward, on `b`.
fn pooling_outputs<B: Backend>(b: &B, d: &PoolDesc, x: &[f32], dy: &[f32], bf16: bool) -> Vec<Vec<f32>> {
    let (n_in, n_out) = (d.n * d.h * d.w * d.c, d.n * d.out_h() * d.out_w() * d.c);
    let mut out = Vec::new();
    let mut types = vec![(DType::F32, DType::F32)];
    if bf16 {
        types.extend([(DType::Bf16, DType::Bf16), (DType::F32, DType::Bf16)]);
    }
    for (xt, yt) in types {
        let mut y = b.alloc(yt, n_out).unwrap();
        b.max_pool_forward(d, &buf(b, x, xt), &mut y).unwrap();
        out.push(down(b, &y));
    }
    let mut dx = b.alloc(DType::F32, n_in).unwrap();
    b.max_pool_backward(d, &b.upload(x).unwrap(), &b.upload(dy).unwrap(), &mut dx).unwrap();
    out.push(down(b, &dx));
    let (n, hw, c) = (d.n, d.h * d.w, d.c);
    let (mut y, mut dx) = (b.alloc(DType::F32, n * c).unwrap(), b.alloc(DType::F32, n * hw * c).unwrap());
    b.global_avg_pool_forward(n, hw, c, &b.upload(x).unwrap(), &mut y).unwrap();
    b.global_avg_pool_backward(n, hw, c, &b.upload(&dy[..n * c]).unwrap(), &mut dx).unwrap();
    out.extend([down(b, &y), down(b, &dx)]);
    out
}

fn pooling_matches_the_reference<B: Backend>(b: &B, _: Scale) {
    let mut r = Rng(0x9001);
    for d in [
        PoolDesc { n: 2, h: 11, w: 10, c: 5, kernel: 3, stride: 2, pad: 1 },
        PoolDesc { n: 1, h: 8, w: 8, c: 64, kernel: 3, stride: 2, pad: 1 },
        PoolDesc { n: 1, h: 4, w: 5, c: 3, kernel: 2, stride: 2, pad: 0 },
    ] {
        // Coarse values: ties, for the backward pass's first-maximum rule.
        let x: Vec<f32> = r.vec(d.n * d.h * d.w * d.c).iter().map(|v| (v * 4.0).round()).collect();
        let dy = r.vec(d.n * d.out_h() * d.out_w() * d.c);
        let bf16 = b.max_pool_bf16();
        let (got, want) = (pooling_outputs(b, &d, &x, &dy, bf16), pooling_outputs(&Reference, &d, &x, &dy, bf16));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            close(&format!("{d:?}: pooling output {i}"), g, w, 1e-6);
        }
        // NaN wins a window, as in PyTorch.
        let mut xn = x.clone();
        xn[x.len() / 2] = f32::NAN;
        let nans = |v: &[f32]| v.iter().filter(|v| v.is_nan()).count();
        let (got, want) = (pooling_outputs(b, &d, &xn, &dy, bf16), pooling_outputs(&Reference, &d, &xn, &dy, bf16));
        for (g, w) in got.iter().zip(&want).take(if bf16 { 3 } else { 1 }) {
            assert!(nans(g) > 0 && nans(g) == nans(w), "{d:?}: NaN through max pooling");
        }
    }
}

/// Linear forward and backward, the residual adds, the option-A shortcut,
/// on `b`: every output.
fn dense_outputs<B: Backend>(b: &B, r: &mut Rng) -> Vec<Vec<f32>> {
    let (n, ci, co) = (5, 37, 11);
    let (x, w, bias, dy) = (r.vec(n * ci), r.vec(co * ci), r.vec(co), r.vec(n * co));
    let (xb, wb, bb) = (b.upload(&x).unwrap(), b.upload(&w).unwrap(), b.upload(&bias).unwrap());
    let mut y = b.alloc(DType::F32, n * co).unwrap();
    b.linear_forward(n, ci, co, &xb, &wb, Some(&bb), &mut y).unwrap();
    let mut out = vec![down(b, &y)];
    b.linear_forward(n, ci, co, &xb, &wb, None, &mut y).unwrap();
    out.push(down(b, &y));
    let (mut dx, mut dw, mut db) = (
        b.alloc(DType::F32, n * ci).unwrap(),
        b.upload(&vec![1.0f32; co * ci]).unwrap(),
        b.upload(&vec![2.0f32; co]).unwrap(),
    );
    b.linear_backward(n, ci, co, &xb, &wb, &b.upload(&dy).unwrap(), Some(&mut dx), &mut dw, Some(&mut db)).unwrap();
    out.extend([down(b, &dx), down(b, &dw), down(b, &db)]);
    let (a, c) = (r.vec(100), r.vec(100));
    let (ab, cb) = (b.upload(&a).unwrap(), b.upload(&c).unwrap());
    let mut s = b.alloc(DType::F32, 100).unwrap();
    for relu in [false, true] {
        b.add(&ab, &cb, relu, &mut s).unwrap();
        out.push(down(b, &s));
    }
    b.add_assign(&mut s, &ab).unwrap();
    out.push(down(b, &s));
    let d = PadShortcutDesc { n: 2, h: 7, w: 6, c_in: 5, c_out: 12, stride: 2, pad_before: 3 };
    let x = r.vec(2 * 7 * 6 * 5);
    let mut y = b.alloc(DType::F32, 2 * 4 * 3 * 12).unwrap();
    b.pad_shortcut_forward(&d, &b.upload(&x).unwrap(), &mut y).unwrap();
    out.push(down(b, &y));
    let g = b.upload(&r.vec(2 * 4 * 3 * 12)).unwrap();
    let mut dx = b.upload(&r.vec(x.len())).unwrap();
    b.pad_shortcut_backward(&d, &g, &mut dx, true).unwrap();
    out.push(down(b, &dx));
    b.pad_shortcut_backward(&d, &g, &mut dx, false).unwrap();
    out.push(down(b, &dx));
    out
}

fn dense_elementwise_and_shortcut_match_the_reference<B: Backend>(b: &B, _: Scale) {
    let got = dense_outputs(b, &mut Rng(0xde45e));
    let want = dense_outputs(&Reference, &mut Rng(0xde45e));
    let names = [
        "linear",
        "linear, no bias",
        "linear dx",
        "linear dw",
        "linear db",
        "add",
        "add relu",
        "add assign",
        "pad shortcut",
        "pad shortcut backward, accumulated",
        "pad shortcut backward",
    ];
    for ((g, w), name) in got.iter().zip(&want).zip(names) {
        close(name, g, w, 1e-5);
    }
}

/// The loss (with the metrics of two steps), the SGD updates and the sum of
/// squares on `b`.
fn loss_and_update_outputs<B: Backend>(b: &B, r: &mut Rng) -> Vec<Vec<f32>> {
    let (n, k) = (6, 7);
    let mut z = r.vec(n * k);
    z[2 * k + 4] = z[2 * k + 1]; // a tie for first place in row 2: the lower class wins
    z[2 * k + 1] = 5.0;
    z[2 * k + 4] = 5.0;
    let labels = b.upload(&[0u32, 3, 4, 6, 1, 1]).unwrap();
    let (zb, mut g, mut m) =
        (b.upload(&z).unwrap(), b.alloc(DType::F32, n * k).unwrap(), b.alloc(DType::F32, 6).unwrap());
    let mut out = Vec::new();
    for (slot, smoothing) in [(0, 0.0f32), (2, 0.1)] {
        b.softmax_cross_entropy(n, k, &zb, &labels, smoothing, &mut g, &mut m, slot).unwrap();
        out.push(down(b, &g));
    }
    let m = down(b, &m);
    out.push(vec![m[0], m[1], m[4], m[5]]);
    let bad = b.upload(&[0u32, 3, 4, 7, 1, 1]).unwrap();
    let mut m2 = b.alloc(DType::F32, 2).unwrap();
    assert!(b.softmax_cross_entropy(n, k, &zb, &bad, 0.0, &mut g, &mut m2, 0).is_err(), "a label out of range");
    let (p, grad) = (r.vec(50), r.vec(50));
    for (first, momentum, dampening, nesterov, weight_decay) in [
        (true, 0.9, 0.0, false, 1e-4),
        (false, 0.9, 0.0, true, 5e-4),
        (false, 0.9, 0.3, false, 0.0),
        (false, 0.0, 0.0, false, 1e-4),
    ] {
        let s = SgdStep { lr: 0.1, momentum, dampening, weight_decay, nesterov, first };
        let (mut pb, mut mb) = (b.upload(&p).unwrap(), b.upload(&[0.25f32; 50]).unwrap());
        b.sgd_update(&s, &mut pb, &b.upload(&grad).unwrap(), &mut mb).unwrap();
        out.extend([down(b, &pb), down(b, &mb)]);
    }
    out.push(vec![b.sum_squares(&b.upload(&p).unwrap()).unwrap() as f32]);
    out
}

fn loss_and_update_match_the_reference<B: Backend>(b: &B, _: Scale) {
    let got = loss_and_update_outputs(b, &mut Rng(0x1055));
    let want = loss_and_update_outputs(&Reference, &mut Rng(0x1055));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        close(&format!("output {i}"), g, w, 1e-6);
    }
    // The metrics: loss and top-1 count per slot (the tied row counts as correct only for class 1).
    let m = &want[2];
    assert_eq!((m[1], m[3]), (got[2][1], got[2][3]));
}

resnet::for_each_backend!(
    buffers_hold_their_type_and_values,
    convolutions_match_the_reference,
    filters_serve_every_shape_with_their_algorithm,
    statistics_taken_on_the_way_are_the_outputs,
    storage_answers_hold,
    batch_norm_matches_the_reference,
    pooling_matches_the_reference,
    dense_elementwise_and_shortcut_match_the_reference,
    loss_and_update_match_the_reference,
);
