//! Whole-network golden test: every architecture of the family, with weights
//! from the shared formula, gives PyTorch's logits (fixture from
//! tools/make_fixtures.py), in training mode (batch statistics) and, where
//! activations stay moderate, in evaluation mode.

mod common;

use common::*;
use resnet::backend::{Backend, Cpu, Precision};
use resnet::infer::InferencePlan;
use resnet::model::{Mode, Network, ResNetSpec};
use resnet::tensor::Tensor;

#[derive(serde::Deserialize)]
struct Case {
    arch: String,
    input: [usize; 4],
    mode: String,
}

/// `|a - b| / |b|` (Euclidean norms).
fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (d / n.max(f64::MIN_POSITIVE)).sqrt()
}

#[test]
fn every_architecture_matches_pytorch() {
    let cpu = Cpu::new(None).unwrap();
    let (sd, meta) = load("logits.safetensors");
    let mut keys: Vec<&String> = meta.keys().collect();
    keys.sort();
    assert!(keys.len() >= 37, "fixture lists {} cases", keys.len());
    let (mut worst, mut worst_bf16) = (0.0f32, 0.0f64);
    for key in keys {
        let case: Case = serde_json::from_str(&meta[key]).unwrap();
        let mut spec = ResNetSpec::named(&case.arch).unwrap();
        let [n, c, h, w] = case.input;
        spec.in_channels = c;
        let mut net = Network::new(&spec, &cpu).unwrap();
        net.init_formula();
        let x = Tensor::from_nchw(&cpu, n, c, h, w, &formula_input(n * c * h * w));
        let mode = if case.mode == "train" { Mode::Train } else { Mode::Eval };
        let y = net.forward(&x, mode).unwrap().to_host(&cpu);
        let (want, _) = get(&sd, key);
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(&y, &want) / scale;
        // Evaluation mode also through the compiled plan (folded norms, fused
        // epilogues), in f32 and in bf16 (relative L2 error of the logits).
        let (plan_err, bf16_err) = if mode == Mode::Eval {
            let mut plan = InferencePlan::new(&net);
            let plan_err = max_abs_diff(&plan.run(&x).unwrap().to_host(&cpu), &want) / scale;
            let mut plan = InferencePlan::with_precision(&net, Precision::Bf16);
            (plan_err, relative_l2(&plan.run(&x).unwrap().to_host(&cpu), &want))
        } else {
            (0.0, 0.0)
        };
        eprintln!(
            "{key:40} max |logit| {scale:9.3}  max error / scale {err:.2e}, plan {plan_err:.2e}, bf16 rel. L2 {bf16_err:.2e}"
        );
        worst = worst.max(err).max(plan_err);
        worst_bf16 = worst_bf16.max(bf16_err);
        assert!(err <= 1e-4, "{key}: logits differ by {err:e} (relative to {scale})");
        assert!(plan_err <= 1e-4, "{key}: the inference plan's logits differ by {plan_err:e}");
        assert!(bf16_err <= 1e-2, "{key}: the bf16 plan's logits differ by {bf16_err:e} (relative L2)");
    }
    eprintln!("worst relative error {worst:.2e}, bf16 {worst_bf16:.2e}");
}

/// The last batch of an epoch is usually smaller than the others: a network
/// that has run larger batches must give the same training-mode outputs and
/// gradients on it as a fresh one.
#[test]
fn a_smaller_batch_after_larger_ones_matches_a_fresh_network() {
    let cpu = Cpu::new(None).unwrap();
    for arch in ["resnet20", "plain20", "preact_resnet164"] {
        let mut spec = ResNetSpec::named(arch).unwrap();
        spec.in_channels = 1;
        let run = |net: &mut Network<Cpu>, n: usize| {
            let x = Tensor::from_nchw(&cpu, n, 1, 28, 28, &formula_input(n * 28 * 28));
            net.zero_grad();
            let y = net.forward(&x, Mode::Train).unwrap();
            let (shape, logits) = (y.shape, y.to_host(&cpu));
            let mut dy = Tensor::zeros(&cpu, shape);
            let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
            let y = Tensor::from_host(&cpu, shape, &logits);
            cpu.softmax_cross_entropy(n, 10, &y.buf, &labels, 0.0, &mut dy.buf);
            net.backward(&x, &dy);
            let mut grads = Vec::new();
            net.visit(&mut |_, e| {
                if let resnet::model::StateEntry::Param(p) = e {
                    grads.push(cpu.download(&p.grad));
                }
            });
            (logits, grads)
        };
        let mut fresh = Network::new(&spec, &cpu).unwrap();
        fresh.init_formula();
        let mut used = Network::new(&spec, &cpu).unwrap();
        used.init_formula();
        run(&mut used, 24);
        let (want_y, want_g) = run(&mut fresh, 12);
        let (got_y, got_g) = run(&mut used, 12);
        // Batch 12 keeps every layer on the convolution algorithm it chose at
        // 24 (Winograd tiles depend on the batch), so only the order of the
        // normalisation sums differs: equal up to rounding.
        let close = |a: &[f32], b: &[f32]| {
            let scale = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * scale)
        };
        assert!(close(&want_y, &got_y), "{arch}: logits differ after a larger batch");
        for (i, (a, b)) in want_g.iter().zip(&got_g).enumerate() {
            let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            let s = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(close(a, b), "{arch}: gradient {i} differs after a larger batch: {d} of {s}");
        }
    }
}

/// An inference plan reuses its buffers across batch sizes, and a
/// bottleneck's output shares its residual's buffer: a plan that has run a
/// larger batch must give a fresh plan's logits on a smaller one, in f32 and
/// in bf16 (where the residual stream and more are stored in bf16).
#[test]
fn a_plan_gives_the_same_logits_after_a_larger_batch() {
    let cpu = Cpu::new(None).unwrap();
    let spec = ResNetSpec::named("resnet50").unwrap();
    let mut net = Network::new(&spec, &cpu).unwrap();
    net.init_formula();
    let input = |n: usize| Tensor::from_nchw(&cpu, n, 3, 64, 64, &formula_input(n * 3 * 64 * 64));
    for precision in [Precision::F32, Precision::Bf16] {
        let mut used = InferencePlan::with_precision(&net, precision);
        used.run(&input(5)).unwrap();
        let got = used.run(&input(2)).unwrap().to_host(&cpu);
        let want = InferencePlan::with_precision(&net, precision).run(&input(2)).unwrap().to_host(&cpu);
        // The plan keeps the filters it prepared for its first batch, and the
        // Winograd tile depends on the batch: equal up to rounding (a residual
        // read from the wrong buffer would be off by the residual itself).
        let err = relative_l2(&got, &want);
        let bound = if precision == Precision::F32 { 1e-5 } else { 1e-2 };
        eprintln!("{precision:?}: relative L2 {err:.1e}");
        assert!(err <= bound, "{precision:?}: logits differ after a larger batch by {err:e}");
    }
}
