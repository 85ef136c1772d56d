use resnet::backend::cpu::gemm::*;
use std::time::Instant;
/// As the `resnet` binary: large blocks on cache lines (`resnet::alloc`).
#[global_allocator]
static ALLOC: resnet::alloc::CacheAligned = resnet::alloc::CacheAligned;

fn main() {
    let threads: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    for &(m, n, k) in &[
        (3136usize, 64usize, 576usize),
        (784, 128, 1152),
        (196, 256, 2304),
        (49, 512, 4608),
        (8192, 16, 144),
        (1024, 64, 576),
        (3136, 256, 64),
        (50176, 64, 147),
    ] {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0.0f32; m * n];
        let mut pb = PackedB::default();
        pb.pack(&Strided { data: &b, row_stride: 1, k_stride: n }, n, k);
        let aop = Strided { data: &a, row_stride: k, k_stride: 1 };
        let iters = (2e9 / (2.0 * (m * n * k) as f64)).max(3.0) as usize;
        pool.install(|| {
            for _ in 0..2 {
                gemm(m, n, k, &aop, BSource::Packed(&pb), OutMat { data: &mut c, ld: n }, &Epilogue::default());
            }
            let t = Instant::now();
            for _ in 0..iters {
                gemm(m, n, k, &aop, BSource::Packed(&pb), OutMat { data: &mut c, ld: n }, &Epilogue::default());
            }
            let dt = t.elapsed().as_secs_f64() / iters as f64;
            println!("m{m:6} n{n:5} k{k:5}: {:.1} GFLOP/s", 2.0 * (m * n * k) as f64 / dt / 1e9);
        });
    }
}
