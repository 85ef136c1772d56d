//! Whole-network golden test: every architecture of the family, with weights
//! from the shared formula, gives PyTorch's logits (fixture from
//! tools/make_fixtures.py), in training mode (batch statistics) and, where
//! activations stay moderate, in evaluation mode.

mod common;

use common::*;
use resnet::backend::Cpu;
use resnet::infer::InferencePlan;
use resnet::model::{Mode, Network, ResNetSpec};
use resnet::tensor::Tensor;

#[derive(serde::Deserialize)]
struct Case {
    arch: String,
    input: [usize; 4],
    mode: String,
}

#[test]
fn every_architecture_matches_pytorch() {
    let cpu = Cpu::new(None).unwrap();
    let (sd, meta) = load("logits.safetensors");
    let mut keys: Vec<&String> = meta.keys().collect();
    keys.sort();
    assert!(keys.len() >= 37, "fixture lists {} cases", keys.len());
    let mut worst = 0.0f32;
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
        // Evaluation mode also through the compiled plan (folded norms, fused epilogues).
        let plan_err = if mode == Mode::Eval {
            let mut plan = InferencePlan::new(&net);
            max_abs_diff(&plan.run(&x).unwrap().to_host(&cpu), &want) / scale
        } else {
            0.0
        };
        eprintln!("{key:40} max |logit| {scale:9.3}  max error / scale {err:.2e}, plan {plan_err:.2e}");
        worst = worst.max(err).max(plan_err);
        assert!(err <= 1e-4, "{key}: logits differ by {err:e} (relative to {scale})");
        assert!(plan_err <= 1e-4, "{key}: the inference plan's logits differ by {plan_err:e}");
    }
    eprintln!("worst relative error {worst:.2e}");
}
