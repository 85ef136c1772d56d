//! Times the filter gradient of 3x3 stride-1 layers (ResNet-18 and ResNet-20 shapes).
//! `RESNET_WINOGRAD=0` forces the direct path; `ONLY=i` times the `i`-th shape
//! alone, `THREADS=n` sets the threads (default 2).
use resnet::backend::{Backend, Cpu};
use resnet::model::graph::Conv;

fn main() {
    let threads = std::env::var("THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let only: Option<usize> = std::env::var("ONLY").ok().and_then(|v| v.parse().ok());
    let cpu = Cpu::new(Some(threads)).unwrap();
    let shapes = [(16, 56, 64), (16, 28, 128), (16, 14, 256), (16, 7, 512), (128, 32, 16), (128, 16, 32), (128, 8, 64)];
    for (i, &(n, h, c)) in shapes.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let d = Conv::square(c, c, 3, 1, 1, 1).desc(n, h, h);
        let x = cpu.upload(&vec![0.5f32; d.in_len()]).unwrap();
        let dy = cpu.upload(&vec![0.25f32; d.out_len()]).unwrap();
        let mut dw = cpu.alloc(resnet::backend::DType::F32, d.weight_len()).unwrap();
        cpu.conv_backward_filter(&d, &x, &dy, &mut dw).unwrap();
        let t = std::time::Instant::now();
        let reps = std::env::var("REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
        for _ in 0..reps {
            cpu.conv_backward_filter(&d, &x, &dy, &mut dw).unwrap();
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        let gf = 2.0 * 9.0 * (n * h * h * c * c) as f64 / ms / 1e6;
        println!("n{n} {h}x{h} c{c}: {ms:.2} ms ({gf:.0} effective GFLOP/s)");
    }
}
