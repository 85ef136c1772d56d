//! Whole-network golden test: every architecture of the family, with weights
//! from the shared formula, gives PyTorch's logits (fixture from
//! tools/make_fixtures.py), in training mode (batch statistics) and, where
//! activations stay moderate, in evaluation mode, through the layers and
//! through the compiled plan, on every backend (the reference backend runs
//! the architectures of up to 0.5 G multiply-accumulates per case).

mod common;

use common::*;
use resnet::backend::{Backend, Precision};
use resnet::infer::InferencePlan;
use resnet::model::{Graph, Mode, Network, ResNetSpec, StateEntry};
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

fn every_architecture_matches_pytorch<B: Backend>(b: &B, scale: Scale) {
    let (sd, meta) = load("logits.safetensors");
    let mut keys: Vec<&String> = meta.keys().collect();
    keys.sort();
    assert!(keys.len() >= 37, "fixture lists {} cases", keys.len());
    let (mut worst, mut worst_bf16, mut ran) = (0.0f32, 0.0f64, 0);
    for key in keys {
        let case: Case = serde_json::from_str(&meta[key]).unwrap();
        let mut spec = ResNetSpec::named(&case.arch).unwrap();
        let [n, c, h, w] = case.input;
        spec.in_channels = c;
        let macs = Graph::new(&spec).unwrap().summary(h, w).unwrap().macs * n as u64;
        if scale == Scale::Light && macs > 500_000_000 {
            continue;
        }
        ran += 1;
        let mut net = Network::new(&spec, b).unwrap();
        net.init_formula().unwrap();
        let x = Tensor::from_nchw(b, n, c, h, w, &formula_input(n * c * h * w)).unwrap();
        let mode = if case.mode == "train" { Mode::Train } else { Mode::Eval };
        let y = host(b, net.forward(&x, mode).unwrap());
        let (want, _) = get(&sd, key);
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(&y, &want) / scale;
        // Evaluation mode also through the compiled plan (folded norms, fused
        // epilogues), in f32 and in bf16 (relative L2 error of the logits).
        let (plan_err, bf16_err) = if mode == Mode::Eval {
            let mut plan = InferencePlan::new(&mut net).unwrap();
            let plan_err = max_abs_diff(&host(b, plan.run(&x).unwrap()), &want) / scale;
            let mut plan = InferencePlan::with_precision(&mut net, Precision::Bf16).unwrap();
            (plan_err, relative_l2(&host(b, plan.run(&x).unwrap()), &want))
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
    assert!(ran >= 15, "only {ran} cases ran");
    eprintln!("{ran} cases, worst relative error {worst:.2e}, bf16 {worst_bf16:.2e}");
}

/// The last batch of an epoch is usually smaller than the others: a network
/// that has run larger batches must give the same training-mode outputs and
/// gradients on it as a fresh one.
fn a_smaller_batch_after_larger_ones_matches_a_fresh_network<B: Backend>(b: &B, _: Scale) {
    for arch in ["resnet20", "plain20", "preact_resnet164"] {
        let mut spec = ResNetSpec::named(arch).unwrap();
        spec.in_channels = 1;
        let run = |net: &mut Network<B>, n: usize| {
            let x = Tensor::from_nchw(b, n, 1, 28, 28, &formula_input(n * 28 * 28)).unwrap();
            net.zero_grad().unwrap();
            let y = net.forward(&x, Mode::Train).unwrap();
            let (shape, logits) = (y.shape, host(b, y));
            let mut dy = Tensor::zeros(b, shape).unwrap();
            let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
            let y = Tensor::from_host(b, shape, &logits).unwrap();
            let (labels, mut metrics) = (b.upload(&labels).unwrap(), b.alloc(resnet::backend::DType::F32, 2).unwrap());
            b.softmax_cross_entropy(n, 10, &y.buf, &labels, 0.0, &mut dy.buf, &mut metrics, 0).unwrap();
            net.backward(&x, &dy).unwrap();
            let mut grads = Vec::new();
            net.visit(&mut |_, e| {
                if let StateEntry::Param(p) = e {
                    grads.push(down(b, &p.grad));
                }
            });
            (logits, grads)
        };
        let mut fresh = Network::new(&spec, b).unwrap();
        fresh.init_formula().unwrap();
        let mut used = Network::new(&spec, b).unwrap();
        used.init_formula().unwrap();
        run(&mut used, 24);
        let (want_y, want_g) = run(&mut fresh, 12);
        let (got_y, got_g) = run(&mut used, 12);
        // A layer whose algorithm depends on the batch (the CPU's Winograd
        // tiles) prepares its filter again; the normalisation sums may add
        // in another order: equal up to rounding.
        let close = |a: &[f32], b: &[f32]| {
            let scale = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * scale)
        };
        assert!(close(&want_y, &got_y), "{arch}: logits differ after a larger batch");
        for (i, (a, g)) in want_g.iter().zip(&got_g).enumerate() {
            let d = a.iter().zip(g).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            let s = a.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(close(a, g), "{arch}: gradient {i} differs after a larger batch: {d} of {s}");
        }
    }
}

/// A compiled model chooses algorithms per input shape and reuses its
/// buffers across shapes, and a bottleneck's output shares its residual's
/// buffer: a plan that has run a larger batch must give a fresh plan's
/// logits on a smaller one, bit for bit, in f32 and in bf16 (where the
/// residual stream and more are stored in bf16), also when the workspaces of
/// several threads share one model.
fn a_plan_gives_the_same_logits_after_a_larger_batch<B: Backend>(b: &B, scale: Scale) {
    let (arch, side) = if scale == Scale::Full { ("resnet50", 64) } else { ("resnet20", 32) };
    let mut net = Network::new(&ResNetSpec::named(arch).unwrap(), b).unwrap();
    net.init_formula().unwrap();
    let input = |n: usize| Tensor::from_nchw(b, n, 3, side, side, &formula_input(n * 3 * side * side)).unwrap();
    for precision in [Precision::F32, Precision::Bf16] {
        let mut used = InferencePlan::with_precision(&mut net, precision).unwrap();
        used.run(&input(5)).unwrap();
        let got = host(b, used.run(&input(2)).unwrap());
        let want = host(b, InferencePlan::with_precision(&mut net, precision).unwrap().run(&input(2)).unwrap());
        assert_eq!(got, want, "{precision:?}: logits differ after a larger batch");
        // Threads sharing the model, each with its own workspace and batch size.
        let model = used.model().clone();
        let results: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = [2, 3, 2]
                .into_iter()
                .map(|n| {
                    let (model, x) = (&model, input(n));
                    s.spawn(move || {
                        let mut ws = model.workspace();
                        host(b, model.run(&mut ws, &x).unwrap())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results[0], want, "{precision:?}: a thread's logits differ");
        assert_eq!(results[2], want, "{precision:?}: a thread's logits differ");
    }
}

resnet::for_each_backend!(
    every_architecture_matches_pytorch,
    a_smaller_batch_after_larger_ones_matches_a_fresh_network,
    a_plan_gives_the_same_logits_after_a_larger_batch,
);
