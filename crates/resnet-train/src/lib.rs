#![warn(missing_docs)]
//! resnet-train: training, evaluation and the residual-learning lab for the
//! [`resnet`] crate, apart so that an inference-only user of `resnet`
//! compiles none of their dependencies (plots, compressed data sets).
//!
//! * [`data`]: IDX (MNIST, Fashion-MNIST), CIFAR-10/100 and image-folder
//!   data sets, augmentation, the threaded batch loader;
//! * [`optim`]: SGD with PyTorch's semantics and learning-rate schedules;
//! * [`train`]: the training loop with checkpoints, metrics, plots and exact
//!   resumption;
//! * [`eval`]: top-1/top-5, per-class accuracy and confusion matrices;
//! * [`experiment`]: the lab's experiments (degradation, gradient flow,
//!   shortcut options, pre-activation);
//! * [`plot`]: line charts and heat maps in SVG and PNG.
pub mod data;
pub mod eval;
pub mod experiment;
pub mod optim;
pub mod plot;
pub mod train;
