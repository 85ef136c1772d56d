//! Weights written by PyTorch load and give PyTorch's logits: a `.pth` from
//! `torch.save(model.state_dict())`, the same weights as safetensors, and a
//! training checkpoint dict in half precision with `module.` keys. Bad files
//! give clear errors.

mod common;

use common::*;
use resnet::Error;
use resnet::backend::Backend;
use resnet::io::{LoadMode, load_state_dict, read_state_dict, state_dict};
use resnet::model::{Mode, Network, ResNetSpec};
use resnet::tensor::Tensor;

fn logits_with<B: Backend>(b: &B, file: &str) -> Vec<f32> {
    let mut net = Network::new(&ResNetSpec::named("resnet8").unwrap(), b).unwrap();
    let sd = read_state_dict(&fixtures().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    load_state_dict(&mut net, &sd, LoadMode::Strict).unwrap_or_else(|e| panic!("{file}: {e}"));
    let x = Tensor::from_nchw(b, 2, 3, 32, 32, &formula_input(2 * 3 * 32 * 32)).unwrap();
    host(b, net.forward(&x, Mode::Eval).unwrap())
}

fn pth_and_safetensors_from_pytorch_give_pytorchs_logits<B: Backend>(b: &B, _: Scale) {
    let (want, _) = load("resnet8_logits.safetensors");
    let (y32, _) = get(&want, "logits");
    let pth = logits_with(b, "resnet8.pth");
    let st = logits_with(b, "resnet8.safetensors");
    assert!(max_abs_diff(&pth, &y32) <= 1e-4, "pth: {}", max_abs_diff(&pth, &y32));
    assert!(max_abs_diff(&st, &y32) <= 1e-4, "safetensors: {}", max_abs_diff(&st, &y32));
    assert_eq!(pth, st, "both files hold the same weights");
    let (y16, _) = get(&want, "logits_f16");
    let half = logits_with(b, "resnet8_checkpoint_f16.pth");
    assert!(max_abs_diff(&half, &y16) <= 1e-4, "f16 checkpoint: {}", max_abs_diff(&half, &y16));
}

fn pth_round_trips_through_our_safetensors_writer<B: Backend>(b: &B, _: Scale) {
    let sd = read_state_dict(&fixtures().join("resnet8.pth")).unwrap();
    let mut net = Network::new(&ResNetSpec::named("resnet8").unwrap(), b).unwrap();
    load_state_dict(&mut net, &sd, LoadMode::Strict).unwrap();
    let ours = state_dict(&mut net).unwrap();
    assert_eq!(ours, sd, "state dict survives load + save unchanged (layouts converted back)");
    let dir = temp_dir("ckpt");
    let path = dir.join("w.safetensors");
    resnet::io::safetensors::write(&path, &ours, None).unwrap();
    assert_eq!(read_state_dict(&path).unwrap(), sd);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A safetensors file starts with its header length, whose first byte may be
/// 0x80 like a pickle's: every first byte must read back.
#[test]
fn safetensors_with_any_header_length_read_back() {
    let dir = temp_dir("hdr");
    let path = dir.join("w.safetensors");
    let mut first_bytes = std::collections::BTreeSet::new();
    for k in 0..300 {
        let mut sd = resnet::io::StateDict::new();
        let t = resnet::io::HostTensor { shape: vec![2], data: resnet::io::TensorData::F32(vec![1.0, -2.0]) };
        sd.insert(format!("w{}", "x".repeat(k)), t);
        resnet::io::safetensors::write(&path, &sd, None).unwrap();
        first_bytes.insert(std::fs::read(&path).unwrap()[0]);
        assert_eq!(read_state_dict(&path).unwrap(), sd, "key length {k}");
    }
    assert!(first_bytes.contains(&0x80), "the sweep covers a header length of 0x80 mod 256");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn bad_weights_are_clear_errors<B: Backend>(cpu: &B, _: Scale) {
    let legacy = read_state_dict(&fixtures().join("legacy.pth")).unwrap_err().to_string();
    assert!(legacy.contains("legacy") && legacy.contains("re-save"), "{legacy}");

    // Truncated files.
    let dir = temp_dir("bad");
    for name in ["resnet8.pth", "resnet8.safetensors"] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let cut = dir.join(name);
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let e = read_state_dict(&cut).unwrap_err();
        assert!(matches!(e, Error::Format { .. }), "{name}: {e}");
    }
    let garbage = dir.join("garbage.bin");
    std::fs::write(&garbage, b"this is not a weights file at all").unwrap();
    assert!(read_state_dict(&garbage).is_err());
    assert!(matches!(read_state_dict(&dir.join("missing.pth")), Err(Error::Io { .. })));
    std::fs::remove_dir_all(&dir).unwrap();

    // Weights for another architecture: a missing key, named, with a hint.
    let sd = read_state_dict(&fixtures().join("resnet8.pth")).unwrap();
    let mut net = Network::new(&ResNetSpec::named("resnet20").unwrap(), cpu).unwrap();
    let e = load_state_dict(&mut net, &sd, LoadMode::Strict).unwrap_err();
    assert!(matches!(e, Error::MissingKey { .. }), "{e}");
    assert!(e.to_string().contains("layer1.1.conv1.weight"), "{e}");
    let mut net = Network::new(&ResNetSpec::named("resnet18").unwrap(), cpu).unwrap();
    let e = load_state_dict(&mut net, &sd, LoadMode::Strict).unwrap_err().to_string();
    assert!(e.contains("conv1.weight") && e.contains("[64, 3, 7, 7]") && e.contains("[16, 3, 3, 3]"), "{e}");
    assert!(e.contains("resnet8"), "hint names the file's architecture: {e}");

    // Another class count: the error says how to fix it.
    let mut spec = ResNetSpec::named("resnet8").unwrap();
    spec.num_classes = 100;
    let mut net = Network::new(&spec, cpu).unwrap();
    let e = load_state_dict(&mut net, &sd, LoadMode::Strict).unwrap_err().to_string();
    assert!(e.contains("fc.weight") && e.contains("--num-classes 10"), "{e}");
    load_state_dict(&mut net, &sd, LoadMode::SkipClassifier).unwrap();

    // An unexpected key.
    let mut extra = sd.clone();
    extra.insert("fc2.weight".into(), sd["fc.weight"].clone());
    let mut net = Network::new(&ResNetSpec::named("resnet8").unwrap(), cpu).unwrap();
    let e = load_state_dict(&mut net, &extra, LoadMode::Strict).unwrap_err();
    assert!(matches!(e, Error::UnexpectedKey { ref key, .. } if key == "fc2.weight"), "{e}");

    // Old checkpoints without num_batches_tracked load, as in PyTorch.
    let old: resnet::io::StateDict = sd.into_iter().filter(|(k, _)| !k.ends_with("num_batches_tracked")).collect();
    load_state_dict(&mut net, &old, LoadMode::Strict).unwrap();
}

/// A NaN reaching a ReLU stays NaN, as in PyTorch (it once became a
/// confident, finite answer), in training mode and in the compiled model.
fn nan_propagates_through_the_network<B: Backend>(b: &B, _: Scale) {
    let mut net = Network::new(&ResNetSpec::named("resnet8").unwrap(), b).unwrap();
    let sd = read_state_dict(&fixtures().join("resnet8.safetensors")).unwrap();
    load_state_dict(&mut net, &sd, LoadMode::Strict).unwrap();
    let mut input = formula_input(2 * 3 * 32 * 32);
    input[5] = f32::NAN;
    let x = Tensor::from_nchw(b, 2, 3, 32, 32, &input).unwrap();
    let train = host(b, net.forward(&x, Mode::Train).unwrap());
    assert!(train.iter().all(|v| v.is_nan()), "{train:?}");
    let graph = resnet::model::Graph::new(&ResNetSpec::named("resnet8").unwrap()).unwrap();
    let model = resnet::infer::CompiledModel::new(b, &graph, &sd, resnet::backend::Precision::F32).unwrap();
    let mut ws = model.workspace();
    let eval = host(b, model.run(&mut ws, &x).unwrap());
    assert!(eval[..10].iter().all(|v| v.is_nan()), "{eval:?}");
    assert!(eval[10..].iter().all(|v| v.is_finite()), "the other image is unaffected: {eval:?}");
}

resnet::for_each_backend!(
    nan_propagates_through_the_network,
    pth_and_safetensors_from_pytorch_give_pytorchs_logits,
    pth_round_trips_through_our_safetensors_writer,
    bad_weights_are_clear_errors,
);
