//! The int8 operations of every backend against the reference, bit for bit:
//! sums are exact integers and every backend's epilogue performs the same
//! f32 operations in the same order. Shapes: the family's int8 layers (the
//! stems quantizing an f32 image with a zero point, 1x1 and 3x3, strided,
//! projections writing f32, residuals in u8 and f32), short row groups,
//! channel counts that leave part of a panel, u8 inputs whose channels are
//! not a multiple of four, and random descriptors.

mod common;

use common::{Rng, Scale};
use resnet::backend::{
    Backend, ConvDesc, DType, FilterUse, PadShortcutDesc, PoolDesc, Quant, QuantEpilogue, QuantResidual, Reference,
};
use resnet::model::graph::Conv;

impl Rng {
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 32) as u8).collect()
    }
    fn floats(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale).collect()
    }
    fn weights(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| (self.below(255) as f32) - 127.0).collect()
    }
}

fn square(n: usize, h: usize, w: usize, c_in: usize, c_out: usize, k: usize, stride: usize) -> ConvDesc {
    Conv::square(c_in, c_out, k, stride, k / 2, 1).desc(n, h, w)
}

/// The input, residual and output kinds of one test convolution.
#[derive(Clone, Copy, Debug)]
struct Case {
    f32_input: bool,
    residual: Option<DType>,
    relu: bool,
    u8_output: bool,
    /// Multipliers so large that outputs leave the u8 and i32 ranges.
    extreme: bool,
    /// A u8 residual already in the output buffer.
    in_output: bool,
}

/// One int8 convolution on `b`; the output downloaded (u8 values as floats).
fn conv_int8<B: Backend>(b: &B, d: &ConvDesc, case: Case, r: &mut Rng) -> Vec<f32> {
    let w = b.upload(&r.weights(d.weight_len())).unwrap();
    let mut f = B::Filter::default();
    b.prepare_filter(d, &w, FilterUse::ForwardInt8, &mut f).unwrap();
    let (x, input) = if case.f32_input {
        (b.upload(&r.floats(d.in_len(), 2.5)).unwrap(), Quant { scale: 0.02, zero: 110 })
    } else {
        (b.upload(&r.bytes(d.in_len())).unwrap(), Quant { scale: 0.05, zero: 0 })
    };
    // Multipliers small enough that outputs spread over the u8 range.
    let scale = if case.extreme { 1e6 } else { 1.0 / (d.k_len() as f32 * 127.0 * 8.0) };
    let mult = b.upload(&r.floats(d.c_out, scale).iter().map(|v| v.abs() + scale / 4.0).collect::<Vec<_>>()).unwrap();
    let bias = b.upload(&r.floats(d.c_out, 0.5)).unwrap();
    let residual = match case.residual {
        Some(DType::U8) if case.in_output => None,
        Some(DType::U8) => Some(b.upload(&r.bytes(d.out_len())).unwrap()),
        Some(_) => Some(b.upload(&r.floats(d.out_len(), 1.0)).unwrap()),
        None => None,
    };
    let q = QuantEpilogue {
        input,
        multiplier: &mult,
        bias: Some(&bias),
        residual: match (&residual, case.in_output) {
            (_, true) => Some(QuantResidual::InOutput(Quant { scale: 0.01, zero: 9 })),
            (Some(r), false) => Some(QuantResidual::Apart(r, Quant { scale: 0.01, zero: 9 })),
            (None, false) => None,
        },
        relu: case.relu,
        output: case.u8_output.then_some(Quant { scale: 0.004, zero: if case.relu { 0 } else { 100 } }),
    };
    let mut y = match case.in_output {
        true => b.upload(&r.bytes(d.out_len())).unwrap(),
        false => b.alloc(if case.u8_output { DType::U8 } else { DType::F32 }, d.out_len()).unwrap(),
    };
    b.conv_forward_int8(d, &x, &f, &mut y, &q).unwrap();
    b.download(&y).unwrap()
}

fn descriptors(scale: Scale, r: &mut Rng) -> Vec<ConvDesc> {
    let mut v = vec![
        square(2, 23, 19, 3, 24, 7, 2),   // ImageNet stem
        square(2, 16, 16, 1, 16, 3, 1),   // grayscale CIFAR-style stem
        square(1, 16, 16, 3, 16, 3, 1),   // CIFAR stem
        square(2, 16, 16, 16, 16, 3, 1),  // CIFAR 3x3
        square(1, 7, 7, 64, 48, 3, 1),    // 49 pixels: a short last row group
        square(2, 9, 7, 48, 36, 3, 2),    // strided 3x3
        square(2, 10, 10, 64, 40, 1, 1),  // bottleneck 1x1
        square(2, 10, 10, 64, 130, 1, 2), // projection shortcut, part of a panel
        square(3, 1, 1, 96, 10, 1, 1),    // 1x1 maps
        square(1, 5, 5, 6, 20, 3, 1),     // u8 input, channels not a multiple of four
        ConvDesc { pad: [0, 0], ..square(2, 5, 8, 32, 35, 3, 1) },
    ];
    if scale == Scale::Full {
        v.push(square(2, 28, 28, 64, 64, 3, 1));
        v.push(square(1, 14, 14, 256, 64, 1, 1));
    }
    for _ in 0..if scale == Scale::Full { 40 } else { 10 } {
        let k = [1, 3, 3, 5, 7][r.below(5)];
        let d = ConvDesc {
            n: 1 + r.below(3),
            h: 1 + r.below(12),
            w: 1 + r.below(12),
            c_in: 1 + r.below(40),
            c_out: 1 + r.below(40),
            kernel: [k, [1, k][r.below(2)]],
            stride: [1 + r.below(3), 1 + r.below(2)],
            pad: [r.below(4), r.below(3)],
            dilation: [1, 1],
            groups: 1,
        };
        if d.out_h() > 0 && d.out_w() > 0 {
            v.push(d);
        }
    }
    v
}

fn int8_convolutions_match_the_reference_bit_for_bit<B: Backend>(b: &B, scale: Scale) {
    let mut r = Rng(0x1d8);
    let cases = [
        Case { f32_input: false, residual: None, relu: true, u8_output: true, extreme: false, in_output: false },
        Case { f32_input: true, residual: None, relu: true, u8_output: true, extreme: false, in_output: false },
        Case {
            f32_input: false,
            residual: Some(DType::U8),
            relu: true,
            u8_output: true,
            extreme: false,
            in_output: false,
        },
        Case {
            f32_input: false,
            residual: Some(DType::F32),
            relu: true,
            u8_output: true,
            extreme: false,
            in_output: false,
        },
        Case { f32_input: false, residual: None, relu: false, u8_output: false, extreme: false, in_output: false },
        Case {
            f32_input: true,
            residual: Some(DType::U8),
            relu: false,
            u8_output: false,
            extreme: false,
            in_output: false,
        },
        Case { f32_input: false, residual: None, relu: true, u8_output: true, extreme: true, in_output: false },
        Case {
            f32_input: true,
            residual: Some(DType::U8),
            relu: false,
            u8_output: true,
            extreme: true,
            in_output: false,
        },
        Case {
            f32_input: false,
            residual: Some(DType::U8),
            relu: true,
            u8_output: true,
            extreme: false,
            in_output: true,
        },
        Case {
            f32_input: true,
            residual: Some(DType::U8),
            relu: false,
            u8_output: true,
            extreme: false,
            in_output: true,
        },
    ];
    for d in descriptors(scale, &mut r) {
        for case in cases {
            let seed = r.next();
            let got = conv_int8(b, &d, case, &mut Rng(seed));
            let want = conv_int8(&Reference::new(), &d, case, &mut Rng(seed));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{d:?} {case:?}");
            if case.u8_output && !case.extreme {
                // The outputs use the range (a test of something, not of zeros).
                let distinct: std::collections::BTreeSet<u32> = got.iter().map(|v| *v as u32).collect();
                assert!(distinct.len() > 3.min(got.len()), "{d:?} {case:?}: outputs {distinct:?}");
            }
        }
    }
}

/// Max pooling, global average pooling and the option-A shortcut of u8 values on `b`.
fn pooled<B: Backend>(b: &B, r: &mut Rng) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for d in [
        PoolDesc { n: 2, h: 11, w: 9, c: 24, kernel: 3, stride: 2, pad: 1 },
        PoolDesc { n: 1, h: 8, w: 8, c: 64, kernel: 3, stride: 2, pad: 1 },
    ] {
        let x = b.upload(&r.bytes(d.n * d.h * d.w * d.c)).unwrap();
        let mut y = b.alloc(DType::U8, d.n * d.out_h() * d.out_w() * d.c).unwrap();
        b.max_pool_forward(&d, &x, &mut y).unwrap();
        out.push(b.download(&y).unwrap());
    }
    let (n, hw, c) = (3, 49, 40);
    let x = b.upload(&r.bytes(n * hw * c)).unwrap();
    let mut y = b.alloc(DType::F32, n * c).unwrap();
    b.global_avg_pool_int8(n, hw, c, &x, 0.037, &mut y).unwrap();
    out.push(b.download(&y).unwrap());
    let d = PadShortcutDesc::new(2, 8, 6, 16, 32, 2);
    let x = b.upload(&r.bytes(d.in_len())).unwrap();
    let mut y = b.alloc(DType::U8, d.out_len()).unwrap();
    b.pad_shortcut_forward(&d, &x, &mut y).unwrap();
    out.push(b.download(&y).unwrap());
    out
}

fn int8_pooling_and_shortcuts_match_the_reference<B: Backend>(b: &B, _: Scale) {
    let got = pooled(b, &mut Rng(0x5eed));
    let want = pooled(&Reference::new(), &mut Rng(0x5eed));
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            w.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

resnet::for_each_backend!(
    int8_convolutions_match_the_reference_bit_for_bit,
    int8_pooling_and_shortcuts_match_the_reference
);
