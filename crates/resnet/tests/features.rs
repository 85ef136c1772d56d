//! Feature extraction against torchvision's `create_feature_extractor`
//! (fixture from tools/make_fixtures.py): the outputs of named layers of a
//! basic, a grouped bottleneck, a CIFAR option-A and a pre-activation
//! network, in one pass, in PyTorch's layout; and a truncated model computes
//! nothing after its last output.

mod common;

use common::*;
use resnet::backend::{Cpu, Precision};
use resnet::classify::FeatureExtractor;
use resnet::infer::CompiledModel;
use resnet::model::{Graph, Network, ResNetSpec};
use resnet::preprocess::Transform;

#[derive(serde::Deserialize)]
struct Case {
    arch: String,
    input: [usize; 4],
    layers: Vec<String>,
}

/// A compiled model of `arch` with formula weights returning `layers`.
fn formula_model(cpu: &Cpu, arch: &str, layers: &[&str], precision: Precision) -> CompiledModel<Cpu> {
    let spec = ResNetSpec::named(arch).unwrap();
    let mut net = Network::new(&spec, cpu).unwrap();
    net.init_formula().unwrap();
    let sd = resnet::io::state_dict(&mut net).unwrap();
    CompiledModel::with_outputs(cpu, &Graph::new(&spec).unwrap(), &sd, precision, layers).unwrap()
}

/// A transform whose output is `side x side`, for feeding formula inputs.
fn identity_transform(side: usize) -> Transform {
    Transform { resize: side, crop: side, mean: vec![0.0; 3], std: vec![1.0; 3], grayscale: false, pad_to: None }
}

#[test]
fn named_layers_match_torchvision_feature_extractor() {
    let cpu = Cpu::new(None).unwrap();
    let (sd, meta) = load("features.safetensors");
    let mut keys: Vec<&String> = meta.keys().collect();
    keys.sort();
    assert_eq!(keys.len(), 4);
    let mut checked = 0;
    for key in keys {
        let case: Case = serde_json::from_str(&meta[key]).unwrap();
        let layers: Vec<&str> = case.layers.iter().map(String::as_str).collect();
        let [n, c, h, w] = case.input;
        assert_eq!((c, h), (3, w));
        for precision in [Precision::F32, Precision::Bf16] {
            let model = formula_model(&cpu, &case.arch, &layers, precision);
            let mut fx = FeatureExtractor::from_model(std::sync::Arc::new(model), identity_transform(h)).unwrap();
            assert_eq!(fx.layers(), case.layers);
            let shapes = fx.shapes().unwrap();
            let nchw = formula_input(n * c * h * w);
            let nhwc: Vec<f32> = (0..n * h * w * c)
                .map(|i| {
                    let (img, p, ch) = (i / (h * w * c), i / c % (h * w), i % c);
                    nchw[img * c * h * w + ch * h * w + p]
                })
                .collect();
            let maps = fx.run(n, &nhwc).unwrap();
            for (i, map) in maps.iter().enumerate() {
                let (want, shape) = get(&sd, &format!("{key}:{}", map.layer));
                assert_eq!(map.shape, shape, "{key}:{}", map.layer);
                assert_eq!(map.shape[1..], shapes[i][..], "{key}:{}", map.layer);
                let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let err = max_abs_diff(&map.data, &want) / scale;
                // bf16 rounds weights and activations to 8 bits of mantissa.
                let tol = if precision == Precision::F32 { 1e-4 } else { 2e-2 };
                eprintln!("{key}:{:10} {precision:?} max |diff| / max |value| = {err:.2e}", map.layer);
                assert!(err < tol, "{key}:{} {precision:?}: relative difference {err:.2e}", map.layer);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 21);
}

#[test]
fn a_truncated_model_stops_at_its_last_output() {
    let cpu = Cpu::new(None).unwrap();
    let ops = |layers: &[&str]| formula_model(&cpu, "resnet18", layers, Precision::F32).output_types().len();
    let full = ops(&["avgpool", "fc"]);
    // resnet18: the stem (conv, max pool), 8 units of 2 convolutions, 3
    // projections, the pool and the classifier.
    assert_eq!(full, 2 + 16 + 3 + 2);
    assert_eq!(ops(&["stem"]), 1);
    assert_eq!(ops(&["layer1"]), 2 + 4);
    assert_eq!(ops(&["layer2", "stem"]), 2 + 4 + 5);
    assert_eq!(ops(&["layer4"]), full - 2);
}

#[test]
fn unknown_and_fused_layers_are_clear_errors() {
    let cpu = Cpu::new(None).unwrap();
    let spec = ResNetSpec::named("resnet20").unwrap();
    let mut net = Network::new(&spec, &cpu).unwrap();
    net.init_formula().unwrap();
    let sd = resnet::io::state_dict(&mut net).unwrap();
    let graph = Graph::new(&spec).unwrap();
    let err = |layers: &[&str]| match CompiledModel::with_outputs(&cpu, &graph, &sd, Precision::F32, layers) {
        Ok(_) => panic!("{layers:?} compiled"),
        Err(e) => e.to_string(),
    };
    let e = err(&["layer4"]);
    assert!(e.contains("no layer `layer4`") && e.contains("stem, layer1, layer2, layer3, avgpool, fc"), "{e}");
    let e = err(&["layer1.0.bn1"]);
    assert!(e.contains("fused"), "{e}");
    assert!(err(&[]).contains("at least one output"));
    assert_eq!(graph.feature_nodes(), ["stem", "layer1", "layer2", "layer3", "avgpool", "fc"]);
}
