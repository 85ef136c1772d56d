//! Whole networks in int8: calibrated, quantized, compiled on every backend.
//! The backends agree bit for bit (exact integer sums, the same epilogue
//! operations); the logits stay near f32's; the file form reads back to the
//! same model and is refused where it does not fit.

mod common;

use resnet::backend::{Backend, Cpu, Precision, Reference};
use resnet::infer::quant::{Calibration, Method, QuantModel};
use resnet::infer::{CompiledModel, InferencePlan};
use resnet::io;
use resnet::model::{Graph, Network, ResNetSpec};
use resnet::rng::Rng;
use resnet::tensor::Tensor;

/// Calibrates `spec` (random weights, `side` x `side` inputs) on a few
/// random batches; returns the f32 state dict, the quantized model and a
/// test batch.
fn quantized(spec: &ResNetSpec, side: usize) -> (io::StateDict, QuantModel, Vec<f32>) {
    let cpu = Cpu::new(Some(2)).unwrap();
    let mut net = Network::new(spec, &cpu).unwrap();
    net.init_kaiming(&mut Rng::new(3), false).unwrap();
    let sd = io::state_dict(&mut net).unwrap();
    let graph = Graph::new(spec).unwrap();
    let mut cal = Calibration::new(&cpu, &graph, &sd).unwrap();
    let c = spec.in_channels;
    let mut r = Rng::new(9);
    for _ in 0..3 {
        let x: Vec<f32> = (0..4 * side * side * c).map(|_| r.normal() as f32).collect();
        cal.observe(&Tensor::from_host(&cpu, [4, side, side, c], &x).unwrap()).unwrap();
    }
    let q = cal.finish(&sd, Method::Percentile(99.99)).unwrap();
    let x = (0..3 * side * side * c).map(|_| r.normal() as f32).collect();
    (sd, q, x)
}

/// `(pooled features, logits)` of a compiled model.
fn run<B: Backend>(
    b: &B,
    graph: &Graph,
    sd: &io::StateDict,
    p: Precision,
    x: &[f32],
    side: usize,
) -> (Vec<f32>, Vec<f32>) {
    let model = CompiledModel::new(b, graph, sd, p).unwrap();
    let mut plan = InferencePlan::from_model(std::sync::Arc::new(model));
    let c = graph.spec.in_channels;
    let t = Tensor::from_host(b, [x.len() / (side * side * c), side, side, c], x).unwrap();
    let logits = plan.run(&t).unwrap().to_host(b).unwrap();
    (plan.features().to_host(b).unwrap(), logits)
}

#[test]
fn int8_networks_match_across_backends_and_stay_near_f32() {
    for (name, side) in [("resnet20", 16), ("resnet18", 32), ("resnet50", 32)] {
        let spec = ResNetSpec::named(name).unwrap();
        let graph = Graph::new(&spec).unwrap();
        let (sd, q, x) = quantized(&spec, side);
        let sd8 = q.to_state_dict(&graph).unwrap();
        let cpu = Cpu::new(Some(2)).unwrap();
        // Everything up to the pooled features is int8, and exact; the f32
        // classifier sums in its backend's order.
        let (feat, got) = run(&cpu, &graph, &sd8, Precision::Int8, &x, side);
        let (feat_ref, want) = run(&Reference::new(), &graph, &sd8, Precision::Int8, &x, side);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&feat), bits(&feat_ref), "{name}: cpu and reference features disagree");
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{name}: logits {a} and {b}");
        }
        let (_, f) = run(&cpu, &graph, &sd, Precision::F32, &x, side);
        let err = (got.iter().zip(&f).map(|(a, b)| (a - b).powi(2)).sum::<f32>()
            / f.iter().map(|v| v * v).sum::<f32>())
        .sqrt();
        assert!(err < 0.15, "{name}: relative L2 error of int8 logits {err}");
        assert!(err > 0.0, "{name}: int8 identical to f32?");
    }
}

#[test]
fn the_file_form_reads_back_and_is_strict() {
    let spec = ResNetSpec::named("resnet20").unwrap();
    let graph = Graph::new(&spec).unwrap();
    let (sd, q, _) = quantized(&spec, 16);
    let sd8 = q.to_state_dict(&graph).unwrap();
    let bytes = io::safetensors::to_bytes_int8(&sd8, &QuantModel::int8_keys(&graph), None).unwrap();
    let back = io::safetensors::read(std::path::Path::new("w8.safetensors"), &bytes).unwrap();
    assert_eq!(QuantModel::from_state_dict(&graph, &back).unwrap(), q);
    // Weights are int8 in the file: about a quarter of the f32 bytes.
    let f32_bytes = io::safetensors::to_bytes(&sd, None).unwrap().len();
    assert!(bytes.len() * 3 < f32_bytes, "{} against {f32_bytes}", bytes.len());
    let cpu = Cpu::new(Some(1)).unwrap();
    let err = |sd: &io::StateDict, p| CompiledModel::new(&cpu, &graph, sd, p).err().expect("refused").to_string();
    assert!(err(&sd, Precision::Int8).contains("resnet quantize"));
    assert!(err(&back, Precision::F32).contains("--precision int8"));
    let mut broken = back.clone();
    broken.remove("layer2.0.conv1.output_scale");
    assert!(err(&broken, Precision::Int8).contains("layer2.0.conv1.output_scale"));
    let mut broken = back.clone();
    broken.insert("extra.weight".into(), back["input.scale"].clone());
    assert!(err(&broken, Precision::Int8).contains("extra.weight"));
    let mut broken = back;
    if let io::TensorData::F32(v) = &mut broken.get_mut("conv1.weight").unwrap().data {
        v[0] = 0.5;
    }
    assert!(err(&broken, Precision::Int8).contains("integers"));
    // Pre-activation networks keep norms of their own: int8 refuses them by name.
    let g = Graph::new(&ResNetSpec::named("preact_resnet20").unwrap()).unwrap();
    let e = CompiledModel::from_quantized(&cpu, &g, &q).err().expect("refused").to_string();
    assert!(e.contains("post-activation"), "{e}");
}

#[test]
fn int8_feature_extractors_return_f32_values_of_every_kind() {
    let spec = ResNetSpec::named("resnet18").unwrap();
    let graph = Graph::new(&spec).unwrap();
    let (_, q, x) = quantized(&spec, 32);
    let sd8 = q.to_state_dict(&graph).unwrap();
    let outputs = ["stem", "maxpool", "layer1.0", "layer2", "avgpool"];
    let on = |be: &str| -> Vec<Vec<f32>> {
        fn go<B: Backend>(b: &B, graph: &Graph, sd: &io::StateDict, outputs: &[&str], x: &[f32]) -> Vec<Vec<f32>> {
            let m = CompiledModel::with_outputs(b, graph, sd, Precision::Int8, outputs).unwrap();
            let mut ws = m.workspace();
            let t = Tensor::from_host(b, [3, 32, 32, 3], x).unwrap();
            m.run(&mut ws, &t).unwrap();
            (0..outputs.len()).map(|i| m.output(&ws, i).to_host(b).unwrap()).collect()
        }
        match be {
            "cpu" => go(&Cpu::new(Some(2)).unwrap(), &graph, &sd8, &outputs, &x),
            _ => go(&Reference::new(), &graph, &sd8, &outputs, &x),
        }
    };
    let (got, want) = (on("cpu"), on("reference"));
    for ((g, w), name) in got.iter().zip(&want).zip(outputs) {
        assert_eq!(
            g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            w.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{name}"
        );
        assert!(g.iter().any(|&v| v != 0.0), "{name}");
    }
}
