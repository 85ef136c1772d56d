//! Times the filter gradient of 3x3 stride-1 layers (ResNet-18 and ResNet-20 shapes).
//! `RESNET_WINOGRAD=0` forces the direct path; `ONLY=i` times the `i`-th shape
//! alone, `THREADS=n` sets the threads (default 2).
use resnet::backend::{Backend, ConvDesc, Cpu};

fn main() {
    let threads = std::env::var("THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let only: Option<usize> = std::env::var("ONLY").ok().and_then(|v| v.parse().ok());
    let cpu = Cpu::new(Some(threads)).unwrap();
    let shapes = [(16, 56, 64), (16, 28, 128), (16, 14, 256), (16, 7, 512), (128, 32, 16), (128, 16, 32), (128, 8, 64)];
    for (i, &(n, h, c)) in shapes.iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        let d = ConvDesc {
            n,
            h,
            w: h,
            c_in: c,
            c_out: c,
            kernel: [3, 3],
            stride: [1, 1],
            pad: [1, 1],
            dilation: [1, 1],
            groups: 1,
        };
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
