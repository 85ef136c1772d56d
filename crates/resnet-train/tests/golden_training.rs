//! Training golden test against PyTorch (float64 reference from
//! tools/make_fixtures.py): tiny networks covering every unit (basic,
//! bottleneck with groups, pre-activation basic and bottleneck) and every
//! shortcut (none, A, B, C) take one and then three SGD steps with momentum
//! and weight decay; the loss, every parameter gradient, the batch-norm
//! running statistics and every updated parameter match within relative 1e-4.

#[path = "../../resnet/tests/common/mod.rs"]
mod common;

use common::*;
use resnet::backend::{Backend, DType};
use resnet::io::{StateDict, TensorData, state_dict};
use resnet::model::{Mode, Network, ResNetSpec, StateEntry};
use resnet::tensor::Tensor;
use resnet_train::optim::{Sgd, SgdConfig};

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

fn grads<B: Backend>(net: &mut Network<B>) -> StateDict {
    let b = net.backend().clone();
    let mut out = StateDict::new();
    net.visit(&mut |k, e| {
        if let StateEntry::Param(p) = e {
            let v = resnet::tensor::to_torch(p.layout, &p.shape, &down(&b, &p.grad));
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

fn sgd_steps_match_pytorch_for_every_block_type<B: Backend>(b: &B, _: Scale) {
    let (fx, meta) = load("training.safetensors");
    assert_eq!(meta.len(), 6);
    for (name, m) in &meta {
        let case: Case = serde_json::from_str(m).unwrap();
        let mut net = Network::new(&case.spec, b).unwrap();
        net.init_formula().unwrap();
        let cfg = SgdConfig {
            momentum: case.momentum,
            dampening: 0.0,
            weight_decay: case.weight_decay,
            nesterov: false,
            no_decay_bn_bias: false,
            backbone_lr: 1.0,
        };
        let mut sgd: Sgd<B> = Sgd::new(cfg).unwrap();
        let [n, c, h, w] = case.input;
        let classes = case.spec.num_classes;
        let mut metrics = b.alloc(DType::F32, 2).unwrap();
        for k in 0..3 {
            let (x, _) = get(&fx, &format!("{name}.x{k}"));
            let (y, _) = get(&fx, &format!("{name}.y{k}"));
            let labels: Vec<u32> = y.iter().map(|&v| v as u32).collect();
            let labels = b.upload(&labels).unwrap();
            let x = Tensor::from_nchw(b, n, c, h, w, &x).unwrap();
            net.zero_grad().unwrap();
            let logits = net.forward(&x, Mode::Train).unwrap();
            let mut dl = Tensor::zeros(b, logits.shape).unwrap();
            let smoothing = case.label_smoothing;
            b.softmax_cross_entropy(n, classes, &logits.buf, &labels, smoothing, &mut dl.buf, &mut metrics, 0).unwrap();
            let loss = down(b, &metrics)[0];
            net.backward(&x, &dl).unwrap();
            if k == 0 || k == 2 {
                let step = format!("{name}.step{}", k + 1);
                close(&format!("{step} loss"), &[loss], &get(&fx, &format!("{step}.loss")).0);
                for (pn, g) in grads(&mut net) {
                    close(&format!("{step} grad {pn}"), &values(&g), &get(&fx, &format!("{step}.grad.{pn}")).0);
                }
            }
            sgd.step(&mut net, case.lr).unwrap();
            if k == 0 || k == 2 {
                let step = format!("{name}.step{}", k + 1);
                let sd = state_dict(&mut net).unwrap();
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

resnet::for_each_backend!(sgd_steps_match_pytorch_for_every_block_type);
