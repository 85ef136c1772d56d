use resnet::backend::{Backend, ConvDesc, ConvEpilogue, Cpu, FilterUse};
use std::time::Instant;
/// As the `resnet` binary: large blocks on cache lines (`resnet::alloc`).
#[global_allocator]
static ALLOC: resnet::alloc::CacheAligned = resnet::alloc::CacheAligned;

fn main() {
    let threads: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(2);
    let cpu = Cpu::new(Some(threads)).unwrap();
    let cases = [
        (
            "r20 s1 3x3 16->16",
            ConvDesc {
                n: 128,
                h: 32,
                w: 32,
                c_in: 16,
                c_out: 16,
                kernel: [3, 3],
                stride: [1, 1],
                pad: [1, 1],
                dilation: [1, 1],
                groups: 1,
            },
        ),
        (
            "r20 s2 3x3 32->32",
            ConvDesc {
                n: 128,
                h: 16,
                w: 16,
                c_in: 32,
                c_out: 32,
                kernel: [3, 3],
                stride: [1, 1],
                pad: [1, 1],
                dilation: [1, 1],
                groups: 1,
            },
        ),
        (
            "r20 s3 3x3 64->64",
            ConvDesc {
                n: 128,
                h: 8,
                w: 8,
                c_in: 64,
                c_out: 64,
                kernel: [3, 3],
                stride: [1, 1],
                pad: [1, 1],
                dilation: [1, 1],
                groups: 1,
            },
        ),
        (
            "r20 down 3x3/2 16->32",
            ConvDesc {
                n: 128,
                h: 32,
                w: 32,
                c_in: 16,
                c_out: 32,
                kernel: [3, 3],
                stride: [2, 2],
                pad: [1, 1],
                dilation: [1, 1],
                groups: 1,
            },
        ),
        (
            "r50 b1 3x3 64",
            ConvDesc {
                n: 1,
                h: 56,
                w: 56,
                c_in: 64,
                c_out: 64,
                kernel: [3, 3],
                stride: [1, 1],
                pad: [1, 1],
                dilation: [1, 1],
                groups: 1,
            },
        ),
        (
            "r50 b1 1x1 64->256",
            ConvDesc {
                n: 1,
                h: 56,
                w: 56,
                c_in: 64,
                c_out: 256,
                kernel: [1, 1],
                stride: [1, 1],
                pad: [0, 0],
                dilation: [1, 1],
                groups: 1,
            },
        ),
        (
            "r50 b1 3x3 512 7x7",
            ConvDesc {
                n: 1,
                h: 7,
                w: 7,
                c_in: 512,
                c_out: 512,
                kernel: [3, 3],
                stride: [1, 1],
                pad: [1, 1],
                dilation: [1, 1],
                groups: 1,
            },
        ),
        (
            "r50 b1 stem 7x7",
            ConvDesc {
                n: 1,
                h: 224,
                w: 224,
                c_in: 3,
                c_out: 64,
                kernel: [7, 7],
                stride: [2, 2],
                pad: [3, 3],
                dilation: [1, 1],
                groups: 1,
            },
        ),
    ];
    let only_fwd = std::env::args().nth(2).is_some();
    for (name, d) in cases {
        let x = vec![0.5f32; d.in_len()];
        let w = vec![0.01f32; d.weight_len()];
        let mut y = vec![0.0f32; d.out_len()];
        let mut f = Default::default();
        cpu.prepare_filter(&d, &w, FilterUse::Forward, &mut f);
        let mut fb = Default::default();
        cpu.prepare_filter(&d, &w, FilterUse::BackwardData, &mut fb);
        let macs = (d.out_len() * d.k_len()) as f64;
        let time = |f: &mut dyn FnMut()| {
            f();
            let it = ((3e9 / (2.0 * macs)) as usize).clamp(2, 200);
            let t = Instant::now();
            for _ in 0..it {
                f();
            }
            2.0 * macs * it as f64 / t.elapsed().as_secs_f64() / 1e9
        };
        let g_fwd = time(&mut || cpu.conv_forward(&d, &x, &f, &mut y, &ConvEpilogue::default()));
        if only_fwd {
            println!("{name:24} fwd {g_fwd:6.1} GFLOP/s");
            continue;
        }
        let mut dx = vec![0.0f32; d.in_len()];
        let g_bd = time(&mut || cpu.conv_backward_data(&d, &y, &fb, &mut dx, false));
        let mut dw = vec![0.0f32; d.weight_len()];
        let g_bf = time(&mut || cpu.conv_backward_filter(&d, &x, &y, &mut dw));
        println!("{name:24} fwd {g_fwd:6.1}  bwd-data {g_bd:6.1}  bwd-filter {g_bf:6.1} GFLOP/s");
    }
}
