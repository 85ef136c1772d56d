#![warn(missing_docs)]
//! resnet: deep residual networks (He et al. 2015, 2016) in Rust.
//!
//! Layers, from the bottom:
//! * [`backend`]: kernels behind the [`Backend`](backend::Backend) trait
//!   (cuDNN vocabulary); [`backend::Cpu`] is the CPU implementation.
//! * [`tensor`]: NHWC activation tensors and parameters.
//! * [`model`]: [`ResNetSpec`](model::ResNetSpec) (architecture as data),
//!   layers, blocks, and [`Network`](model::Network) with torchvision's
//!   parameter names.
//! * [`io`]: state dicts in safetensors and PyTorch `.pth` files;
//!   [`pretrained`]: torchvision's weights by name and the caches.
//! * [`preprocess`]: decoding and torchvision-identical preprocessing.
pub mod backend;
pub mod classify;
pub mod error;
pub mod infer;
pub mod io;
pub mod labels;
pub mod model;
pub mod onnx;
pub mod preprocess;
pub mod pretrained;
pub mod rng;
pub mod tensor;

pub use error::{Error, Result};
