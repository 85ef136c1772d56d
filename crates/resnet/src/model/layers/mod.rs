//! Layers: each owns its parameters, its output and its input gradient, and
//! calls a [`Backend`] for the arithmetic.
//!
//! Conventions, shared by every layer:
//! * `forward(&mut self, b, x, ...)` computes `self.y` and returns it; in
//!   training mode it also saves what the backward pass needs (beyond `x`
//!   and `y`, which the caller keeps alive).
//! * `backward(&mut self, b, x, dy, ...)` receives the same `x` the forward
//!   pass saw, *accumulates* parameter gradients and writes `self.dx`.
//! * Buffers are reused between calls; nothing is allocated in steady state.

mod batchnorm;
mod conv;
mod linear;
mod pool;
mod shortcut;

pub use batchnorm::BatchNorm2d;
pub use conv::Conv2d;
pub use linear::Linear;
pub use pool::{GlobalAvgPool, MaxPool2d};
pub use shortcut::PadShortcut;

use super::state::StateEntry;
use crate::backend::Backend;
use crate::tensor::Tensor;

/// Replaces `t` with an empty tensor and returns the old one, so that a layer
/// can write into its own buffer while borrowing itself.
pub(crate) fn take<B: Backend>(t: &mut Tensor<B>) -> Tensor<B> {
    std::mem::take(t)
}

/// The parts of a layer that walk its state (for checkpoints and optimisers).
pub trait Visit<B: Backend> {
    /// Calls `f` for every parameter, buffer and counter, with its full key.
    fn visit(&mut self, prefix: &str, f: &mut dyn FnMut(&str, StateEntry<'_, B>));
}
