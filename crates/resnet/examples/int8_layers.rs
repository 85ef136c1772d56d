//! Times single int8 convolutions (development aid):
//! `cargo run --release --example int8_layers`.

use resnet::backend::{Backend, ConvDesc, Cpu, DType, FilterUse, Quant, QuantEpilogue, QuantResidual};
use resnet::model::graph::Conv;

fn main() {
    let cpu = Cpu::new(Some(2)).unwrap();
    let layers = [
        ("stem 7x7/2 3->64 f32 in", Conv::square(3, 64, 7, 2, 3, 1).desc(16, 224, 224), true, false),
        ("1x1 64->256 +res", Conv::square(64, 256, 1, 1, 0, 1).desc(16, 56, 56), false, true),
        ("1x1 128->512@28 +res", Conv::square(128, 512, 1, 1, 0, 1).desc(16, 28, 28), false, true),
        ("1x1 256->1024@14 +res", Conv::square(256, 1024, 1, 1, 0, 1).desc(16, 14, 14), false, true),
        ("proj 1x1 64->256", Conv::square(64, 256, 1, 1, 0, 1).desc(16, 56, 56), false, false),
        ("1x1 64->256", Conv::square(64, 256, 1, 1, 0, 1).desc(16, 56, 56), false, false),
        ("1x1 256->64", Conv::square(256, 64, 1, 1, 0, 1).desc(16, 56, 56), false, false),
        ("1x1 256->128", Conv::square(256, 128, 1, 1, 0, 1).desc(16, 56, 56), false, false),
        ("3x3 64->64", Conv::square(64, 64, 3, 1, 1, 1).desc(16, 56, 56), false, false),
        ("3x3 256->256 at 14", Conv::square(256, 256, 3, 1, 1, 1).desc(16, 14, 14), false, false),
    ];
    let only = std::env::args().nth(1).unwrap_or_default();
    for (name, d, f32_in, res) in layers {
        if !name.contains(&only) {
            continue;
        }
        let d: ConvDesc = d;
        let w: Vec<f32> = (0..d.weight_len()).map(|i| (i % 255) as f32 - 127.0).collect();
        let w = cpu.upload(&w).unwrap();
        let mut f = Default::default();
        cpu.prepare_filter(&d, &w, FilterUse::ForwardInt8, &mut f).unwrap();
        let x = if f32_in {
            cpu.upload(&(0..d.in_len()).map(|i| (i % 97) as f32 * 0.01).collect::<Vec<_>>()).unwrap()
        } else {
            cpu.upload(&(0..d.in_len()).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap()
        };
        let r = cpu.upload(&(0..d.out_len()).map(|i| (i % 13) as u8).collect::<Vec<_>>()).unwrap();
        let m = cpu.upload(&vec![1e-5f32; d.c_out]).unwrap();
        let q = QuantEpilogue {
            input: Quant { scale: 0.02, zero: if f32_in { 100 } else { 0 } },
            multiplier: &m,
            bias: None,
            residual: res.then_some(QuantResidual::Apart(&r, Quant { scale: 0.1, zero: 0 })),
            relu: !name.starts_with("proj"),
            output: Some(Quant { scale: 0.05, zero: if name.starts_with("proj") { 100 } else { 0 } }),
        };
        let mut y = cpu.alloc(DType::U8, d.out_len()).unwrap();
        let mut best = f64::MAX;
        for _ in 0..if only.is_empty() { 8 } else { 60 } {
            let t = std::time::Instant::now();
            cpu.scope(|| cpu.conv_forward_int8(&d, &x, &f, &mut y, &q)).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        let macs = (d.out_len() * d.k_len()) as f64;
        println!("{name:24} {:7.2} ms  {:6.0} GMAC/s", best * 1e3, macs / best / 1e9);
    }
}
