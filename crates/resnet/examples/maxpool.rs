//! Times ResNet's 3x3/2 max pool at 112x112x64 (after the stem):
//!
//! `THREADS=n cargo run --release --example maxpool -- [batch]`
use resnet::backend::{Backend, Cpu, PoolDesc};
use std::time::Instant;

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(1);
    let threads = std::env::var("THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let cpu = Cpu::new(Some(threads)).unwrap();
    let d = PoolDesc { n, h: 112, w: 112, c: 64, kernel: 3, stride: 2, pad: 1 };
    let x: Vec<f32> = (0..n * 112 * 112 * 64).map(|i| (i % 13) as f32).collect();
    let x = cpu.upload(&x).unwrap();
    let mut y = cpu.alloc(resnet::backend::DType::F32, n * 56 * 56 * 64).unwrap();
    let it = 200 / n.min(200);
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..it {
            cpu.max_pool_forward(&d, &x, &mut y).unwrap();
        }
        best = best.min(t.elapsed().as_secs_f64() / it as f64);
    }
    println!("max pool 3x3/2 at 112x112x64 n{n}, {threads} threads: {:.3} ms", best * 1e3);
}
