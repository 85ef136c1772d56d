//! `resnet export` end to end: the ONNX files it writes, run by an
//! independent ONNX implementation (tract), give our logits within 1e-4
//! relative for a basic, a grouped bottleneck, a CIFAR option-A and a
//! pre-activation network, with batch norms kept and folded, at a fixed
//! and a dynamic batch size.

mod common;

use std::path::Path;

use common::*;

use resnet::backend::{Cpu, Precision};
use resnet::infer::CompiledModel;
use resnet::model::{Graph, Network, ResNetSpec};
use tract_onnx::prelude::*;

/// Inputs that vary per element and image (uniform in [-2, 2)).
fn input(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i as u64 * 2654435761 % 1000) as f32 / 250.0) - 2.0).collect()
}

/// Logits of `model` run by tract on an NCHW batch.
fn tract_logits(model: &Path, shape: [usize; 4], x: &[f32]) -> Vec<f32> {
    let plan = tract_onnx::onnx()
        .model_for_path(model)
        .unwrap()
        .with_input_fact(0, f32::fact(shape).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let x: Tensor = tract_ndarray::Array4::from_shape_vec(shape, x.to_vec()).unwrap().into();
    let out = plan.run(tvec!(x.into())).unwrap();
    out[0].to_array_view::<f32>().unwrap().iter().copied().collect()
}

#[test]
fn exported_models_give_our_logits_in_tract() {
    let dir = tmp("tract");
    let cpu = Cpu::new(None).unwrap();
    let cases = [("resnet18", 64), ("resnext50_32x4d", 64), ("resnet20", 32), ("preact_resnet110", 32)];
    for (arch, side) in cases {
        let spec = ResNetSpec::named(arch).unwrap();
        let mut net = Network::new(&spec, &cpu).unwrap();
        // Weights and batch statistics other than the initial ones, so that
        // folding and the batch norms are exercised.
        net.init_formula().unwrap();
        let sd = resnet::io::state_dict(&mut net).unwrap();
        let weights = dir.join(format!("{arch}.safetensors"));
        resnet::io::safetensors::write(&weights, &sd, None).unwrap();
        let n = 2;
        let x = input(n * 3 * side * side);
        let model = CompiledModel::new(&cpu, &Graph::new(&spec).unwrap(), &sd, Precision::F32).unwrap();
        let ours = model
            .run(&mut model.workspace(), &resnet::tensor::Tensor::from_nchw(&cpu, n, 3, side, side, &x).unwrap())
            .unwrap()
            .to_host(&cpu)
            .unwrap();
        let scale = ours.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (fold, batch) in [(false, "dynamic"), (true, "2")] {
            let onnx = dir.join(format!("{arch}-{fold}.onnx"));
            let size = side.to_string();
            let mut args =
                vec!["export", "--weights", s(&weights), "--out", s(&onnx), "--size", &size, "--batch", batch];
            if fold {
                args.push("--fold-bn");
            }
            let r = resnet(&args);
            assert!(r.status.success(), "{arch}: {}", text(&r.stderr));
            let theirs = tract_logits(&onnx, [n, 3, side, side], &x);
            let err = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale;
            eprintln!("{arch:18} fold {fold:5}: max |ours - tract| / max |logit| = {err:.2e}");
            assert!(err < 1e-4, "{arch} (fold {fold}): {err:.2e}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The model's interface and metadata as ONNX consumers read them.
#[test]
fn the_model_declares_its_interface_and_metadata() {
    use prost::Message;
    use resnet::onnx::{DimValue, ModelProto};
    let dir = tmp("meta");
    let weights = dir.join("w.safetensors");
    let r = resnet(&["init", "--arch", "resnet20", "--num-classes", "7", "--out", s(&weights)]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let onnx = dir.join("m.onnx");
    let r = resnet(&["export", "--weights", s(&weights), "--out", s(&onnx), "--size", "32"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(text(&r.stdout).contains("wrote resnet20"), "{}", text(&r.stdout));
    let m = ModelProto::decode(std::fs::read(&onnx).unwrap().as_slice()).unwrap();
    assert_eq!((m.ir_version, m.opset_import[0].version), (8, 17));
    let g = m.graph.unwrap();
    let dims = |v: &resnet::onnx::ValueInfoProto| {
        v.r#type
            .clone()
            .unwrap()
            .tensor_type
            .unwrap()
            .shape
            .unwrap()
            .dim
            .into_iter()
            .map(|d| d.value.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(g.input[0].name, "input");
    assert_eq!(
        dims(&g.input[0]),
        [DimValue::Param("batch".into()), DimValue::Fixed(3), DimValue::Fixed(32), DimValue::Fixed(32)]
    );
    assert_eq!(g.output[0].name, "logits");
    assert_eq!(dims(&g.output[0]), [DimValue::Param("batch".into()), DimValue::Fixed(7)]);
    let meta: std::collections::HashMap<_, _> = m.metadata_props.into_iter().map(|e| (e.key, e.value)).collect();
    assert_eq!(meta["arch"], "resnet20");
    let labels: Vec<String> = serde_json::from_str(&meta["class_names"]).unwrap();
    assert_eq!(labels.len(), 7);
    assert!(meta["preprocess"].contains("\"mean\""));
    // Every node input is the graph input, an initializer or an earlier node's output.
    let mut known: std::collections::HashSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
    known.insert("input".into());
    for node in &g.node {
        for i in &node.input {
            assert!(known.contains(i), "{} reads {i} before it is defined", node.name);
        }
        known.extend(node.output.iter().cloned());
    }
    assert!(known.contains("logits"));
    // Bad flags: one line, non-zero exit, nothing written.
    for (args, want) in [
        (vec!["--opset", "9"], "--opset 9 is not supported"),
        (vec!["--batch", "0"], "--batch must be `dynamic` or a number"),
        (vec!["--size", "0"], "--size must be between 1 and"),
    ] {
        let out = dir.join("bad.onnx");
        let mut all = vec!["export", "--weights", s(&weights), "--out", s(&out)];
        all.extend(args);
        let r = resnet(&all);
        let err = text(&r.stderr);
        assert!(!r.status.success() && err.contains(want) && err.trim_end().lines().count() == 1, "{all:?}: {err}");
        assert!(!out.exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
