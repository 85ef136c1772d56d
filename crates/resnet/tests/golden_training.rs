//! Training golden test against PyTorch (float64 reference from
//! tools/make_fixtures.py): tiny networks covering every unit (basic,
//! bottleneck with groups, pre-activation basic and bottleneck) and every
//! shortcut (none, A, B, C) take one and then three SGD steps with momentum
//! and weight decay; the loss, every parameter gradient, the batch-norm
//! running statistics and every updated parameter match within relative 1e-4.

mod common;

use common::*;
use resnet::backend::{Backend, Cpu};
use resnet::io::{StateDict, TensorData, state_dict};
use resnet::model::{Mode, Network, ResNetSpec, StateEntry};
use resnet::optim::{Sgd, SgdConfig};
use resnet::tensor::Tensor;

#[derive(serde::Deserialize)]
struct Case {
    spec: ResNetSpec,
    input: [usize; 4],
    label_smoothing: f32,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
}

/// `|a - b| <= 1e-4 * max|b|` (with a floor for all-but-zero tensors).
fn close(what: &str, a: &[f32], b: &[f32]) {
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(a, b);
    assert!(d <= 1e-4 * scale, "{what}: max abs diff {d:e}, scale {scale:e}");
}

fn grads(net: &mut Network<Cpu>) -> StateDict {
    let b = net.backend().clone();
    let mut out = StateDict::new();
    net.visit(&mut |k, e| {
        if let StateEntry::Param(p) = e {
            let v = resnet::tensor::to_torch(p.layout, &p.shape, &b.download(&p.grad));
            out.insert(k.to_string(), resnet::io::HostTensor { shape: p.shape.clone(), data: TensorData::F32(v) });
        }
    });
    out
}

fn values(t: &resnet::io::HostTensor) -> Vec<f32> {
    match &t.data {
        TensorData::F32(v) => v.clone(),
        TensorData::I64(v) => v.iter().map(|&x| x as f32).collect(),
    }
}

#[test]
fn sgd_steps_match_pytorch_for_every_block_type() {
    let (fx, meta) = load("training.safetensors");
    assert_eq!(meta.len(), 6);
    for threads in [1, 2] {
        let cpu = Cpu::new(Some(threads)).unwrap();
        for (name, m) in &meta {
            let case: Case = serde_json::from_str(m).unwrap();
            let mut net = Network::new(&case.spec, &cpu).unwrap();
            net.init_formula();
            let cfg = SgdConfig {
                momentum: case.momentum,
                dampening: 0.0,
                weight_decay: case.weight_decay,
                nesterov: false,
                no_decay_bn_bias: false,
            };
            let mut sgd: Sgd<Cpu> = Sgd::new(cfg).unwrap();
            let [n, c, h, w] = case.input;
            let classes = case.spec.num_classes;
            for k in 0..3 {
                let (x, _) = get(&fx, &format!("{name}.x{k}"));
                let (y, _) = get(&fx, &format!("{name}.y{k}"));
                let labels: Vec<u32> = y.iter().map(|&v| v as u32).collect();
                let x = Tensor::from_nchw(&cpu, n, c, h, w, &x);
                net.zero_grad();
                let logits = net.forward(&x, Mode::Train).unwrap();
                let mut dl = Tensor::zeros(&cpu, logits.shape);
                let loss =
                    cpu.softmax_cross_entropy(n, classes, &logits.buf, &labels, case.label_smoothing, &mut dl.buf);
                net.backward(&x, &dl);
                if k == 0 || k == 2 {
                    let step = format!("{name}.step{}", k + 1);
                    close(&format!("{step} loss"), &[loss], &get(&fx, &format!("{step}.loss")).0);
                    for (pn, g) in grads(&mut net) {
                        close(
                            &format!("{step} grad {pn} ({threads} threads)"),
                            &values(&g),
                            &get(&fx, &format!("{step}.grad.{pn}")).0,
                        );
                    }
                }
                sgd.step(&mut net, case.lr);
                if k == 0 || k == 2 {
                    let step = format!("{name}.step{}", k + 1);
                    let sd = state_dict(&mut net);
                    let mut count = 0;
                    for (key, t) in &sd {
                        close(&format!("{step} state {key}"), &values(t), &get(&fx, &format!("{step}.state.{key}")).0);
                        count += 1;
                    }
                    assert!(count > 10, "{name}: only {count} state entries");
                }
            }
        }
    }
}
