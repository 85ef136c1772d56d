//! The fuzz targets' bodies: one function per parser that reads outside
//! input. `fuzz_targets/` wraps each for libFuzzer; the main test suite
//! (`crates/resnet-cli/tests/fuzz_corpora.rs`) runs them over the committed
//! corpora on stable Rust. Each must return (never panic, hang or allocate
//! without bound) whatever the bytes.

use std::path::Path;
use std::sync::OnceLock;

use resnet::backend::{Cpu, Precision};
use resnet::model::{Graph, ResNetSpec};
use resnet::preprocess::{RgbImage, Transform, decode_rgb};

/// The `.pth` reader: zip container, unpickler, storages and strided views.
pub fn pth(data: &[u8]) {
    let _ = resnet::io::pth::read(Path::new("fuzz.pth"), data);
}

/// The unpickler alone (the pth target reaches it only through a valid zip).
pub fn pickle(data: &[u8]) {
    let _ = resnet::io::pickle::loads(data);
}

/// safetensors parsing.
pub fn safetensors(data: &[u8]) {
    let _ = resnet::io::safetensors::read(Path::new("fuzz.safetensors"), data);
}

/// Any weights file (format sniffed from its bytes) recognised and loaded
/// into a network: names, shapes, dtypes and values checked, then compiled
/// and run once when they pass.
pub fn load_weights(data: &[u8]) {
    static GRAPH: OnceLock<Graph> = OnceLock::new();
    let graph = GRAPH.get_or_init(|| Graph::new(&ResNetSpec::named("resnet8").unwrap()).unwrap());
    let Ok(sd) = resnet::io::parse_state_dict(Path::new("fuzz.weights"), data) else { return };
    let _ = resnet::io::guess_arch(&sd);
    let cpu = Cpu::new(Some(1)).unwrap();
    if let Ok(model) = resnet::infer::CompiledModel::new(&cpu, graph, &sd, Precision::F32) {
        let x = resnet::tensor::Tensor::from_nchw(&cpu, 1, 3, 8, 8, &[0.5; 3 * 64]).unwrap();
        let mut ws = model.workspace();
        model.run(&mut ws, &x).unwrap();
    }
}

/// IDX files (MNIST, Fashion-MNIST), raw and gzipped.
pub fn idx(data: &[u8]) {
    let p = Path::new("fuzz.idx");
    for dims in [1, 3] {
        if data.starts_with(&[0x1f, 0x8b]) {
            let _ = resnet_train::data::idx::parse(p, flate2::read::GzDecoder::new(data), dims);
        } else {
            let _ = resnet_train::data::idx::parse(p, data, dims);
        }
    }
}

/// CIFAR-10/100 binary batches.
pub fn cifar(data: &[u8]) {
    for label_bytes in [1, 2] {
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        let _ = resnet_train::data::cifar::parse_batch(data, label_bytes, &mut pixels, &mut labels);
    }
}

/// Image decoding (PNG, JPEG) and torchvision's evaluation transform.
pub fn image(data: &[u8]) {
    if let Ok(img) = decode_rgb(data) {
        let t = Transform::preset("v1").unwrap();
        assert_eq!(t.apply(&img).len(), 3 * 224 * 224);
    }
}

/// The model card of a checkpoint's sidecar: parsed, validated, and what it
/// describes built (the graph, and its preprocessing run on a small image).
pub fn card(data: &[u8]) {
    let Ok(card) = resnet::classify::parse_card(data) else { return };
    let _ = Graph::new(&card.spec);
    if let Some(t) = card.transform {
        let img = RgbImage { width: 5, height: 3, data: vec![7; 45] };
        let _ = t.apply(&img);
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name.
pub const TARGETS: &[(&str, Target)] = &[
    ("pth", pth),
    ("pickle", pickle),
    ("safetensors", safetensors),
    ("load_weights", load_weights),
    ("idx", idx),
    ("cifar", cifar),
    ("image", image),
    ("card", card),
];
