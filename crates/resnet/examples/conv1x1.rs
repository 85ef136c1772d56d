use resnet::backend::{Backend, ConvDesc, ConvEpilogue, Cpu, FilterUse};
use std::time::Instant;
fn main() {
    for threads in [1, 2] {
        let cpu = Cpu::new(Some(threads)).unwrap();
        for (h, ci, co) in
            [(14, 1024, 256), (14, 256, 1024), (7, 2048, 512), (7, 512, 2048), (56, 64, 256), (28, 128, 512)]
        {
            let d = ConvDesc {
                n: 1,
                h,
                w: h,
                c_in: ci,
                c_out: co,
                kernel: [1, 1],
                stride: [1, 1],
                pad: [0, 0],
                dilation: [1, 1],
                groups: 1,
            };
            let x = vec![0.5f32; d.in_len()];
            let w = vec![0.01f32; d.weight_len()];
            let mut y = vec![0.0f32; d.out_len()];
            let mut f = Default::default();
            cpu.prepare_filter(&d, &w, FilterUse::Forward, &mut f);
            let macs = (d.out_len() * d.k_len()) as f64;
            let it = 300;
            for _ in 0..20 {
                cpu.conv_forward(&d, &x, &f, &mut y, &ConvEpilogue::default());
            }
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = Instant::now();
                for _ in 0..it {
                    cpu.conv_forward(&d, &x, &f, &mut y, &ConvEpilogue::default());
                }
                best = best.min(t.elapsed().as_secs_f64() / it as f64);
            }
            println!(
                "{threads}T 1x1 {ci:4}->{co:4} at {h}x{h}: {:.3} ms, {:.1} GFLOP/s",
                best * 1e3,
                2.0 * macs / best / 1e9
            );
        }
    }
}
