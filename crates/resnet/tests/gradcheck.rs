//! Finite-difference gradient checks: every layer's backward pass (our f32
//! kernels) against central differences of an independent f64 forward pass,
//! on small random shapes. The loss is `sum(layer(x) * r)` for a random `r`,
//! so `dy = r`. On every backend.

mod common;

use common::*;
use resnet::backend::{Backend, DType};
use resnet::model::Mode;
use resnet::model::layers::{BatchNorm2d, Conv2d, GlobalAvgPool, Linear, MaxPool2d, PadShortcut};
use resnet::rng::Rng;
use resnet::tensor::Tensor;

fn rand(r: &mut Rng, n: usize) -> Vec<f64> {
    (0..n).map(|_| r.normal()).collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Central differences of `loss` with respect to every element of `x`.
fn numeric(x: &[f64], loss: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let h = 1e-6;
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            xp[i] = x[i] + h;
            let a = loss(&xp);
            xp[i] = x[i] - h;
            let b = loss(&xp);
            xp[i] = x[i];
            (a - b) / (2.0 * h)
        })
        .collect()
}

fn check(what: &str, analytic: &[f32], numeric: &[f64]) {
    assert_eq!(analytic.len(), numeric.len(), "{what}");
    let scale = numeric.iter().fold(1e-6f64, |m, v| m.max(v.abs()));
    for (i, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
        assert!((a as f64 - n).abs() <= 2e-4 * scale, "{what}[{i}]: analytic {a}, numeric {n} (scale {scale})");
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// f64 convolution over NHWC with OHWI weights.
#[allow(clippy::too_many_arguments)]
fn conv_ref(
    x: &[f64],
    w: &[f64],
    s: [usize; 4],
    c_out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    g: usize,
) -> Vec<f64> {
    let [n, h, wd, c] = s;
    let oh = (h + 2 * pad - dil * (k - 1) - 1) / stride + 1;
    let ow = (wd + 2 * pad - dil * (k - 1) - 1) / stride + 1;
    let (cig, cog) = (c / g, c_out / g);
    let mut y = vec![0.0; n * oh * ow * c_out];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for co in 0..c_out {
                    let gi = co / cog;
                    let mut acc = 0.0;
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * stride + ky * dil) as isize - pad as isize;
                            let ix = (ox * stride + kx * dil) as isize - pad as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                continue;
                            }
                            for ci in 0..cig {
                                let xv = x[((b * h + iy as usize) * wd + ix as usize) * c + gi * cig + ci];
                                acc += xv * w[((co * k + ky) * k + kx) * cig + ci];
                            }
                        }
                    }
                    y[((b * oh + oy) * ow + ox) * c_out + co] = acc;
                }
            }
        }
    }
    y
}

fn conv2d_backward_matches_finite_differences<B: Backend>(cpu: &B, _: Scale) {
    let mut r = Rng::new(3);
    for &(c_in, c_out, k, stride, pad, dil, g) in &[
        (3, 4, 3, 1, 1, 1, 1),
        (4, 6, 3, 2, 1, 1, 2),
        (2, 3, 3, 1, 2, 2, 1),
        (4, 4, 1, 2, 0, 1, 1),
        (3, 2, 5, 2, 2, 1, 1),
    ] {
        let s = [2, 6, 5, c_in];
        let x = rand(&mut r, s.iter().product());
        let w = rand(&mut r, c_out * k * k * c_in / g);
        let mut conv = Conv2d::<B>::new(cpu, c_in, c_out, k, stride, pad, g).unwrap();
        conv.geometry.dilation = [dil, dil];
        conv.weight.value = cpu.upload(&f32s(&w)).unwrap();
        conv.weight.version += 1;
        let xt = Tensor::from_host(cpu, s, &f32s(&x)).unwrap();
        let yshape = conv.forward(cpu, &xt).unwrap().shape;
        let rr = rand(&mut r, yshape.iter().product());
        conv.weight.zero_grad(cpu).unwrap();
        conv.backward(cpu, &xt, &Tensor::from_host(cpu, yshape, &f32s(&rr)).unwrap(), true).unwrap();
        let what = format!("conv c{c_in}->{c_out} k{k} s{stride} p{pad} d{dil} g{g}");
        let nx = numeric(&x, |xv| dot(&conv_ref(xv, &w, s, c_out, k, stride, pad, dil, g), &rr));
        check(&format!("{what} dx"), &host(cpu, &conv.dx), &nx);
        let nw = numeric(&w, |wv| dot(&conv_ref(&x, wv, s, c_out, k, stride, pad, dil, g), &rr));
        check(&format!("{what} dw"), &down(cpu, &conv.weight.grad), &nw);
    }
}

/// f64 training-mode batch norm with the fused tail.
fn bn_ref(x: &[f64], c: usize, gamma: &[f64], beta: &[f64], res: Option<&[f64]>, relu: bool) -> Vec<f64> {
    let rows = x.len() / c;
    let mut y = vec![0.0; x.len()];
    for ch in 0..c {
        let mean = (0..rows).map(|r| x[r * c + ch]).sum::<f64>() / rows as f64;
        let var = (0..rows).map(|r| (x[r * c + ch] - mean).powi(2)).sum::<f64>() / rows as f64;
        for r in 0..rows {
            let i = r * c + ch;
            let mut v = (x[i] - mean) / (var + 1e-5).sqrt() * gamma[ch] + beta[ch];
            if let Some(res) = res {
                v += res[i];
            }
            y[i] = if relu { v.max(0.0) } else { v };
        }
    }
    y
}

fn batch_norm_backward_matches_finite_differences<B: Backend>(cpu: &B, _: Scale) {
    let mut r = Rng::new(5);
    let s = [3, 4, 3, 5];
    let c = s[3];
    for (relu, residual) in [(false, false), (true, false), (true, true)] {
        let x = rand(&mut r, s.iter().product());
        let gamma = rand(&mut r, c);
        let beta = rand(&mut r, c);
        let res = rand(&mut r, x.len());
        let rr = rand(&mut r, x.len());
        let mut bn = BatchNorm2d::<B>::new(cpu, c, relu).unwrap();
        bn.weight.value = cpu.upload(&f32s(&gamma)).unwrap();
        bn.bias.value = cpu.upload(&f32s(&beta)).unwrap();
        let xt = Tensor::from_host(cpu, s, &f32s(&x)).unwrap();
        let rt = Tensor::from_host(cpu, s, &f32s(&res)).unwrap();
        bn.forward(cpu, &xt, residual.then_some(&rt), Mode::Train).unwrap();
        bn.weight.zero_grad(cpu).unwrap();
        bn.bias.zero_grad(cpu).unwrap();
        bn.backward(cpu, &xt, &Tensor::from_host(cpu, s, &f32s(&rr)).unwrap()).unwrap();
        let rs = residual.then_some(res.as_slice());
        let what = format!("bn relu={relu} residual={residual}");
        check(
            &format!("{what} dx"),
            &host(cpu, &bn.dx),
            &numeric(&x, |v| dot(&bn_ref(v, c, &gamma, &beta, rs, relu), &rr)),
        );
        check(
            &format!("{what} dgamma"),
            &down(cpu, &bn.weight.grad),
            &numeric(&gamma, |v| dot(&bn_ref(&x, c, v, &beta, rs, relu), &rr)),
        );
        check(
            &format!("{what} dbeta"),
            &down(cpu, &bn.bias.grad),
            &numeric(&beta, |v| dot(&bn_ref(&x, c, &gamma, v, rs, relu), &rr)),
        );
        if residual {
            check(
                &format!("{what} dresidual"),
                &host(cpu, &bn.dsum),
                &numeric(&res, |v| dot(&bn_ref(&x, c, &gamma, &beta, Some(v), relu), &rr)),
            );
        }
    }
}

fn pooling_linear_shortcut_and_loss_backward_match_finite_differences<B: Backend>(cpu: &B, _: Scale) {
    let mut r = Rng::new(8);
    // Max pool 3x3/2 pad 1 (distinct random values: no ties).
    let s = [2, 7, 6, 3];
    let x = rand(&mut r, s.iter().product());
    let mut mp = MaxPool2d::<B>::new(3, 2, 1);
    let xt = Tensor::from_host(cpu, s, &f32s(&x)).unwrap();
    let ys = mp.forward(cpu, &xt).unwrap().shape;
    let rr = rand(&mut r, ys.iter().product());
    mp.backward(cpu, &xt, &Tensor::from_host(cpu, ys, &f32s(&rr)).unwrap()).unwrap();
    let pool_ref = |v: &[f64]| {
        let mut y = vec![f64::NEG_INFINITY; ys.iter().product()];
        for b in 0..s[0] {
            for oy in 0..ys[1] {
                for ox in 0..ys[2] {
                    for ch in 0..s[3] {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let (iy, ix) = ((oy * 2 + ky) as isize - 1, (ox * 2 + kx) as isize - 1);
                                if iy >= 0 && ix >= 0 && (iy as usize) < s[1] && (ix as usize) < s[2] {
                                    let o = &mut y[((b * ys[1] + oy) * ys[2] + ox) * s[3] + ch];
                                    *o = o.max(v[((b * s[1] + iy as usize) * s[2] + ix as usize) * s[3] + ch]);
                                }
                            }
                        }
                    }
                }
            }
        }
        y
    };
    check("maxpool dx", &host(cpu, &mp.dx), &numeric(&x, |v| dot(&pool_ref(v), &rr)));

    // Global average pool.
    let mut gap = GlobalAvgPool::<B>::new();
    gap.forward(cpu, &xt).unwrap();
    let rr = rand(&mut r, s[0] * s[3]);
    gap.backward(cpu, &xt, &Tensor::from_host(cpu, [s[0], 1, 1, s[3]], &f32s(&rr)).unwrap()).unwrap();
    let gap_ref = |v: &[f64]| {
        let hw = s[1] * s[2];
        let mut y = vec![0.0; s[0] * s[3]];
        for b in 0..s[0] {
            for p in 0..hw {
                for ch in 0..s[3] {
                    y[b * s[3] + ch] += v[(b * hw + p) * s[3] + ch] / hw as f64;
                }
            }
        }
        y
    };
    check("gap dx", &host(cpu, &gap.dx), &numeric(&x, |v| dot(&gap_ref(v), &rr)));

    // Linear.
    let (n, ci, co) = (3, 5, 4);
    let x = rand(&mut r, n * ci);
    let w = rand(&mut r, co * ci);
    let bias = rand(&mut r, co);
    let rr = rand(&mut r, n * co);
    let mut fc = Linear::<B>::new(cpu, ci, co).unwrap();
    fc.weight.value = cpu.upload(&f32s(&w)).unwrap();
    fc.bias.value = cpu.upload(&f32s(&bias)).unwrap();
    let xt = Tensor::from_host(cpu, [n, 1, 1, ci], &f32s(&x)).unwrap();
    fc.forward(cpu, &xt).unwrap();
    fc.weight.zero_grad(cpu).unwrap();
    fc.bias.zero_grad(cpu).unwrap();
    fc.backward(cpu, &xt, &Tensor::from_host(cpu, [n, 1, 1, co], &f32s(&rr)).unwrap()).unwrap();
    let lin = |x: &[f64], w: &[f64], b: &[f64]| -> Vec<f64> {
        (0..n * co)
            .map(|i| b[i % co] + (0..ci).map(|k| x[(i / co) * ci + k] * w[(i % co) * ci + k]).sum::<f64>())
            .collect()
    };
    check("linear dx", &host(cpu, &fc.dx), &numeric(&x, |v| dot(&lin(v, &w, &bias), &rr)));
    check("linear dw", &down(cpu, &fc.weight.grad), &numeric(&w, |v| dot(&lin(&x, v, &bias), &rr)));
    check("linear db", &down(cpu, &fc.bias.grad), &numeric(&bias, |v| dot(&lin(&x, &w, v), &rr)));

    // Option-A shortcut.
    let s = [2, 5, 4, 3];
    let x = rand(&mut r, s.iter().product());
    let mut sc = PadShortcut::<B>::new(3, 8, 2);
    let xt = Tensor::from_host(cpu, s, &f32s(&x)).unwrap();
    let ys = sc.forward(cpu, &xt).unwrap().shape;
    let rr = rand(&mut r, ys.iter().product());
    let mut dx = Tensor::zeros(cpu, s).unwrap();
    sc.backward_accumulate(cpu, s, &Tensor::from_host(cpu, ys, &f32s(&rr)).unwrap(), &mut dx).unwrap();
    let pad_ref = |v: &[f64]| {
        let mut y = vec![0.0; ys.iter().product()];
        for b in 0..s[0] {
            for oy in 0..ys[1] {
                for ox in 0..ys[2] {
                    for ch in 0..3 {
                        y[((b * ys[1] + oy) * ys[2] + ox) * 8 + 2 + ch] =
                            v[((b * s[1] + 2 * oy) * s[2] + 2 * ox) * 3 + ch];
                    }
                }
            }
        }
        y
    };
    check("pad shortcut dx", &host(cpu, &dx), &numeric(&x, |v| dot(&pad_ref(v), &rr)));

    // Softmax cross-entropy with label smoothing.
    let (n, k) = (4, 6);
    let z = rand(&mut r, n * k);
    let labels = [1u32, 0, 5, 3];
    for eps in [0.0f32, 0.1] {
        let (zb, lb) = (cpu.upload(&f32s(&z)).unwrap(), cpu.upload(&labels).unwrap());
        let (mut gb, mut m) = (cpu.alloc(DType::F32, n * k).unwrap(), cpu.alloc(DType::F32, 2).unwrap());
        cpu.softmax_cross_entropy(n, k, &zb, &lb, eps, &mut gb, &mut m, 0).unwrap();
        let (loss, g) = (down(cpu, &m)[0], down(cpu, &gb));
        let ce = |z: &[f64]| -> f64 {
            let mut total = 0.0;
            for (i, &y) in labels.iter().enumerate() {
                let row = &z[i * k..(i + 1) * k];
                let m = row.iter().cloned().fold(f64::MIN, f64::max);
                let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                for (j, v) in row.iter().enumerate() {
                    let q = eps as f64 / k as f64 + if j == y as usize { 1.0 - eps as f64 } else { 0.0 };
                    total -= q * (v - lse);
                }
            }
            total / n as f64
        };
        assert!((loss as f64 - ce(&z)).abs() < 1e-5, "loss {loss} vs {}", ce(&z));
        check(&format!("cross-entropy eps={eps}"), &g, &numeric(&z, ce));
    }
}

resnet::for_each_backend!(
    conv2d_backward_matches_finite_differences,
    batch_norm_backward_matches_finite_differences,
    pooling_linear_shortcut_and_loss_backward_match_finite_differences,
);
