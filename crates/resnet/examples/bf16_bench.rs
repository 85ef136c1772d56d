//! One convolution layer, f32 against bf16, as a bf16 inference plan runs it
//! (activations stored in bf16): time and GFLOP/s of each.
//!
//! cargo run --release --example bf16_bench -- THREADS N SIDE C_IN C_OUT [K [STRIDE]]
//! e.g. `-- 2 16 56 256 64` (a ResNet-50 1x1 layer at batch 16).
use resnet::backend::{Backend, ConvDesc, ConvEpilogue, Cpu, FilterUse, Storage};
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args[1].parse().unwrap();
    let n: usize = args[2].parse().unwrap();
    let hw: usize = args[3].parse().unwrap();
    let ci: usize = args[4].parse().unwrap();
    let co: usize = args[5].parse().unwrap();
    let k: usize = args.get(6).map(|s| s.parse().unwrap()).unwrap_or(1);
    let st: usize = args.get(7).map(|s| s.parse().unwrap()).unwrap_or(1);
    let cpu = Cpu::new(Some(threads)).unwrap();
    let d = ConvDesc {
        n,
        h: hw,
        w: hw,
        c_in: ci,
        c_out: co,
        kernel: [k, k],
        stride: [st, st],
        pad: [k / 2, k / 2],
        dilation: [1, 1],
        groups: 1,
    };
    let x: Vec<f32> = (0..d.in_len()).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
    let w: Vec<f32> = (0..d.weight_len()).map(|i| ((i * 104729) % 1000) as f32 * 1e-5 - 0.005).collect();
    let mut y = vec![0.0f32; d.out_len()];
    // A plan keeps an odd-channel input (the stem's image) in f32.
    let x_storage = |st: Storage| if ci % 2 == 1 { Storage::F32 } else { st };
    let only = std::env::var("ONLY").ok();
    for (name, usage, st) in
        [("f32", FilterUse::Forward, Storage::F32), ("bf16", FilterUse::ForwardBf16, Storage::Bf16)]
    {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let mut f = Default::default();
        cpu.prepare_filter(&d, &w, usage, &mut f);
        let macs = (d.out_len() * d.k_len()) as f64;
        let mut run = || {
            cpu.conv_forward_stored(
                &d,
                &x,
                x_storage(st),
                &f,
                &mut y,
                st,
                &ConvEpilogue { relu: true, ..Default::default() },
                Storage::F32,
            )
        };
        run();
        let it = ((6e9 / (2.0 * macs)) as usize).clamp(3, 2000);
        let t = Instant::now();
        for _ in 0..it {
            run();
        }
        let s = t.elapsed().as_secs_f64() / it as f64;
        println!("{name:5} n{n} {hw}x{hw} {ci}->{co} k{k}: {:.3} ms {:6.1} GFLOP/s", s * 1e3, 2.0 * macs / s / 1e9);
    }
}
