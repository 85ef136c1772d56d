//! Times ResNet-50's convolution shapes one by one, 2 threads (`THREADS=n` for others):
//!
//! `cargo run --release --example conv1x1 -- [batch] [f32|bf16] [res|-] [stored|mixed]`
//!
//! `SHAPE=side,c_in,c_out,kernel` adds a shape of your own (index 18; a negative kernel side is a strided 1x1).
//! `res` adds a residual to the epilogue (with bias and ReLU always); `stored` keeps input, output and residual in
//! bf16, `mixed` only output and residual (as a bf16 plan stores its residual stream). `ONLY=i` runs shape `i`.
use resnet::backend::{Backend, Bf16, ConvEpilogue, Cpu, DType, FilterUse};
use resnet::model::graph::Conv;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(1);
    let usage =
        if args.get(2).map(String::as_str) == Some("bf16") { FilterUse::ForwardBf16 } else { FilterUse::Forward };
    let res = args.get(3).map(String::as_str) == Some("res");
    assert!(args.get(4).is_none_or(|s| s == "stored" || s == "mixed"), "the fourth argument is stored or mixed");
    // Activations stored in bf16 (as a bf16 plan keeps the residual stream).
    let st = if args.get(4).is_some() { DType::Bf16 } else { DType::F32 };
    // `mixed`: f32 input, bf16 output and residual.
    let xst = if args.get(4).map(String::as_str) == Some("mixed") { DType::F32 } else { st };
    let threads = std::env::var("THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let cpu = Cpu::new(Some(threads)).unwrap();
    let only: Option<usize> = std::env::var("ONLY").ok().and_then(|v| v.parse().ok());
    // `SHAPE=side,c_in,c_out,kernel` adds one shape (index 18).
    let shape = std::env::var("SHAPE").ok().map(|v| {
        let f: Vec<i64> = v.split(',').map(|x| x.trim().parse().expect("SHAPE=side,c_in,c_out,kernel")).collect();
        assert_eq!(f.len(), 4, "SHAPE=side,c_in,c_out,kernel");
        (f[0] as usize, f[1] as usize, f[2] as usize, f[3])
    });
    for (idx, (h, ci, co, k)) in [
        // (side, c_in, c_out, kernel side)
        (56, 64, 256, 1),
        (56, 256, 64, 1),
        (28, 128, 512, 1),
        (28, 512, 128, 1),
        (14, 1024, 256, 1),
        (14, 256, 1024, 1),
        (7, 2048, 512, 1),
        (7, 512, 2048, 1),
        (56, 64, 64, 3),
        (14, 256, 256, 3),
        (7, 512, 512, 3),
        (224, 3, 64, 7),
        (28, 128, 128, 3),
        (56, 256, 128, 1),
        (56, 256, 512, -1),
        (28, 512, 1024, -1),
        (14, 1024, 2048, -1),
        (28, 512, 256, 1),
    ]
    .into_iter()
    .chain(shape)
    .enumerate()
    {
        if only.is_some_and(|o| o != idx) {
            continue;
        }
        // A negative kernel side: a strided 1x1 (the projection shortcuts).
        let (k, s) = if k < 0 { (1, 2) } else { (k as usize, if k == 7 { 2 } else { 1 }) };
        let d = Conv::square(ci, co, k, s, k / 2, 1).desc(n, h, h);
        // Activations of the stored type.
        let stored = |v: Vec<f32>, t: DType| match t {
            DType::Bf16 => cpu.upload(&v.into_iter().map(Bf16::from_f32).collect::<Vec<_>>()).unwrap(),
            _ => cpu.upload(&v).unwrap(),
        };
        let x = stored((0..d.in_len()).map(|i| (i % 7) as f32 * 0.1).collect(), xst);
        let w = cpu.upload(&vec![0.01f32; d.weight_len()]).unwrap();
        let r = stored(vec![0.5f32; d.out_len()], st);
        let bias = cpu.upload(&vec![0.1f32; co]).unwrap();
        let mut y = cpu.alloc(st, d.out_len()).unwrap();
        let mut f = Default::default();
        cpu.prepare_filter(&d, &w, usage, &mut f).unwrap();
        let epi =
            ConvEpilogue { bias: Some(&bias), residual: res.then_some(&r), relu: true, residual_in_output: false };
        let macs = (d.out_len() * d.k_len()) as f64;
        let it = (2e9 / macs).clamp(3.0, 300.0) as usize;
        for _ in 0..it.min(20) {
            cpu.conv_forward(&d, &x, &f, &mut y, &epi).unwrap();
        }
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..it {
                cpu.conv_forward(&d, &x, &f, &mut y, &epi).unwrap();
            }
            best = best.min(t.elapsed().as_secs_f64() / it as f64);
        }
        println!(
            "{k}x{k} {ci:4}->{co:4} at {h}x{h} n{n}: {:.3} ms, {:.1} GFLOP/s",
            best * 1e3,
            2.0 * macs / best / 1e9
        );
    }
}
