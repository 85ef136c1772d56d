//! The training memory plan changes what is kept, never a result: recomputing
//! segments in the backward pass gives the same gradients, batch-norm
//! statistics, momentum buffers and updated weights, bit for bit, for every
//! kind of unit and shortcut (and with part of the network frozen).

use std::collections::BTreeMap;

use resnet::backend::testing::Scale;
use resnet::backend::{Backend, Buffer, DType};
use resnet::io::{TensorData, state_dict};
use resnet::model::{Freeze, Mode, Network, ResNetSpec, ShortcutKind, StateEntry};
use resnet::rng::Rng;
use resnet::tensor::Tensor;
use resnet_train::optim::{Sgd, SgdConfig};

/// Every number a short run produces, as bits: the gradients of each step,
/// and the state dict and momentum buffers at the end.
type Outcome = BTreeMap<String, Vec<u32>>;

/// Two SGD steps of `spec` from a fixed initialisation on a fixed batch,
/// with `segments` recomputed segments.
fn run<B: Backend>(b: &B, spec: &ResNetSpec, side: usize, batch: usize, freeze: Freeze, segments: usize) -> Outcome {
    let mut net = Network::new(spec, b).unwrap();
    net.init_kaiming(&mut Rng::new(11), false).unwrap();
    net.set_freeze(freeze).unwrap();
    net.set_checkpoint_segments(segments);
    let mut sgd = Sgd::new(SgdConfig { weight_decay: 5e-4, ..SgdConfig::default() }).unwrap();
    let mut r = Rng::new(3);
    let x: Vec<f32> = (0..batch * side * side * spec.in_channels).map(|_| r.normal() as f32).collect();
    let x = Tensor::from_host(b, [batch, side, side, spec.in_channels], &x).unwrap();
    let labels: Vec<u32> = (0..batch).map(|i| (i % spec.num_classes) as u32).collect();
    let labels = b.upload(&labels).unwrap();
    let mut metrics = b.alloc(DType::F32, 2).unwrap();
    let mut out = Outcome::new();
    for step in 0..2 {
        net.zero_grad().unwrap();
        let logits = net.forward(&x, Mode::Train).unwrap();
        let mut dl = Tensor::zeros(b, logits.shape).unwrap();
        b.softmax_cross_entropy(batch, spec.num_classes, &logits.buf, &labels, 0.0, &mut dl.buf, &mut metrics, 0)
            .unwrap();
        net.backward(&x, &dl).unwrap();
        net.visit(&mut |k, e| {
            if let StateEntry::Param(p) = e
                && !p.grad.is_empty()
            {
                let g = b.download(&p.grad).unwrap();
                out.insert(format!("step{step}.grad.{k}"), g.iter().map(|v| v.to_bits()).collect());
            }
        });
        sgd.step(&mut net, 0.05).unwrap();
    }
    for (k, t) in state_dict(&mut net).unwrap() {
        let bits = match t.data {
            TensorData::F32(v) => v.iter().map(|v| v.to_bits()).collect(),
            TensorData::I64(v) => v.iter().map(|&v| v as u32).collect(),
        };
        out.insert(format!("state.{k}"), bits);
    }
    for (i, m) in sgd.buffers.iter().enumerate() {
        out.insert(format!("momentum.{i}"), b.download(m).unwrap().iter().map(|v| v.to_bits()).collect());
    }
    out
}

fn spec(name: &str, shortcut: Option<ShortcutKind>) -> ResNetSpec {
    let mut s = ResNetSpec::named(name).unwrap();
    s.num_classes = 5;
    if let Some(sc) = shortcut {
        s.shortcut = sc;
    }
    s
}

fn recomputation_is_bit_identical<B: Backend>(b: &B, scale: Scale) {
    // (network, input side, batch, what is frozen)
    let mut cases = vec![
        (spec("resnet8", None), 16, 4, Freeze::None),
        (spec("preact_resnet8", Some(ShortcutKind::A)), 16, 4, Freeze::None),
    ];
    if scale == Scale::Full {
        cases.extend([
            // Basic units, option-A shortcuts.
            (spec("resnet20", None), 32, 8, Freeze::None),
            // Basic units with projections (B), the ImageNet stem and its max pool.
            (spec("resnet18", None), 64, 2, Freeze::None),
            // Bottlenecks.
            (spec("resnet50", None), 64, 2, Freeze::None),
            // Pre-activation basic units with projections, and bottlenecks.
            (spec("preact_resnet20", None), 32, 4, Freeze::None),
            (spec("preact_resnet164", None), 16, 2, Freeze::None),
            // No shortcuts at all.
            (spec("plain20", None), 32, 4, Freeze::None),
            // Fine-tuning: the units before layer2 run without backward.
            (spec("resnet20", None), 32, 4, Freeze::Layer1),
        ]);
    }
    for (s, side, batch, freeze) in cases {
        let want = run(b, &s, side, batch, freeze, 0);
        let units: usize = s.depths.iter().sum();
        for segments in [1, 2, 3, units] {
            let got = run(b, &s, side, batch, freeze, segments);
            assert_eq!(got.len(), want.len(), "{} with {segments} segments: different entries", s.name);
            for (k, w) in &want {
                assert!(got[k] == *w, "{} ({freeze:?}) with {segments} segments: {k} differs", s.name);
            }
        }
    }
}

resnet::for_each_backend!(recomputation_is_bit_identical);
