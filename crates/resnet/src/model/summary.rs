//! Per-layer shapes, parameter counts and multiply-accumulates.

use serde::Serialize;

/// One row of a summary.
#[derive(Clone, Debug, Serialize)]
pub struct LayerInfo {
    /// torchvision's module name (e.g. `layer1.0.conv1`).
    pub name: String,
    /// Layer type, e.g. `Conv2d 3x3/2`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Output shape `[n, h, w, c]` (NHWC).
    #[serde(skip)]
    pub output: [usize; 4],
    /// Trainable parameters.
    pub params: usize,
    /// Multiply-accumulates for the whole batch.
    pub macs: u64,
}

/// A whole network's summary.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Architecture name.
    pub arch: String,
    /// Total trainable parameters (equals PyTorch's `sum(p.numel())`).
    pub params: usize,
    /// Total multiply-accumulates per image (convolutions and the classifier).
    pub macs: u64,
    /// Input `[channels, height, width]`.
    pub input: [usize; 3],
    /// Rows, in execution order.
    pub layers: Vec<LayerInfo>,
}

impl LayerInfo {
    /// Output shape in PyTorch's NCHW order, without the batch.
    pub fn output_chw(&self) -> [usize; 3] {
        [self.output[3], self.output[1], self.output[2]]
    }
}
