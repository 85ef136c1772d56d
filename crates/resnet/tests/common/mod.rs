//! Shared helpers for the integration tests: the backends every model test
//! runs on, fixture loading and comparison.
#![allow(dead_code)]

use resnet::backend::Backend;
use resnet::tensor::Tensor;

#[allow(unused_imports)]
pub use resnet::backend::testing::Scale;

/// A fresh, empty folder of this process's own (one per call).
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("resnet-{tag}-{}-{k}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tensor's values on the host (NHWC).
pub fn host<B: Backend>(b: &B, t: &Tensor<B>) -> Vec<f32> {
    t.to_host(b).unwrap()
}

/// A buffer's values on the host.
pub fn down<B: Backend>(b: &B, buf: &B::Buf) -> Vec<f32> {
    b.download(buf).unwrap()
}

use std::collections::HashMap;
use std::path::PathBuf;

use resnet::io::{StateDict, TensorData};

/// `tests/fixtures/` at the repository root.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// A fixture safetensors file: tensors and metadata.
pub fn load(name: &str) -> (StateDict, HashMap<String, String>) {
    let path = fixtures().join(name);
    let sd = resnet::io::read_state_dict(&path).unwrap_or_else(|e| panic!("{e}"));
    let meta = resnet::io::safetensors::read_metadata(&path).unwrap();
    (sd, meta)
}

/// The f32 values and shape of a tensor in a fixture.
pub fn get(sd: &StateDict, key: &str) -> (Vec<f32>, Vec<usize>) {
    let t = sd.get(key).unwrap_or_else(|| panic!("fixture has no `{key}`"));
    match &t.data {
        TensorData::F32(v) => (v.clone(), t.shape.clone()),
        TensorData::I64(v) => (v.iter().map(|&x| x as f32).collect(), t.shape.clone()),
    }
}

/// The test input formula (mirrors `formula_input` in tools/make_fixtures.py):
/// uniform with unit variance.
pub fn formula_input(n: usize) -> Vec<f32> {
    (0..n).map(|i| (resnet::model::init::formula_u("input", i) * 3.4641016151377544) as f32).collect()
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Asserts `|a - b| <= tol * max(1, max|b|)` element-wise.
pub fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let d = max_abs_diff(a, b);
    assert!(d <= tol * scale, "{what}: max abs diff {d:e} > {tol:e} x {scale}");
}

/// A small xorshift generator for test data.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
