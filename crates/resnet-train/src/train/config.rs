//! What defines a training run: its configuration, its progress, its data
//! and transforms, and its output folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::data::augment::{Geometry, SampleTransform};
use crate::data::{DataSpec, Dataset, Images};
use crate::optim::{LrPolicy, SgdConfig};
use resnet::error::{Error, Result};
use resnet::model::{Freeze, ResNetSpec};
use resnet::preprocess::Transform;

use super::TestPoint;
use super::progress::Tally;

/// Everything that defines a training run (saved in the checkpoint sidecar).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The network.
    pub spec: ResNetSpec,
    /// The data.
    pub data: DataSpec,
    /// Epochs to run (with `iterations`, the epochs that cover them).
    pub epochs: usize,
    /// Stop after this many iterations, if set (He et al. count iterations).
    pub iterations: Option<u64>,
    /// Mini-batch size.
    pub batch: usize,
    /// Learning-rate policy (`total_iters` filled in from the run length).
    pub policy: LrPolicy,
    /// Optimiser.
    pub sgd: SgdConfig,
    /// Label smoothing of the cross-entropy.
    pub label_smoothing: f32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Compute threads the run was started with.
    pub threads: usize,
    /// Standard augmentation (pad-4 random crop and flip; random resized crop
    /// and flip for image folders).
    pub augment: bool,
    /// Shuffle the training set each epoch.
    pub shuffle: bool,
    /// Zero-pad images to this size (e.g. 28 -> 32).
    pub pad_to: Option<usize>,
    /// Network input side for image folders.
    pub image_size: usize,
    /// Keep the first N training images of each class (a balanced subset).
    pub train_per_class: Option<usize>,
    /// Keep the first N test images of each class.
    pub test_per_class: Option<usize>,
    /// Data-loading threads.
    pub workers: usize,
    /// Weights to start from (fine-tuning), if any.
    pub init: Option<PathBuf>,
    /// Log a training point every this many iterations.
    pub log_every: u64,
    /// Zero-initialise the last BN of each residual branch.
    pub zero_init_residual: bool,
    /// What a non-finite loss does.
    #[serde(default)]
    pub on_nan: OnNan,
    /// [`Dataset::fingerprint`] of the data the run started on.
    #[serde(default)]
    pub data_fingerprint: Option<String>,
    /// What is frozen (fine-tuning).
    #[serde(default)]
    pub freeze: Freeze,
    /// For image folders: the evaluation resize per 224 of crop (256 as
    /// torchvision's V1 weights were evaluated, 232 for V2; the `--init`
    /// weights' preset).
    #[serde(default = "default_resize_per_224")]
    pub resize_per_224: usize,
}

fn default_resize_per_224() -> usize {
    256
}

/// What a non-finite training loss does (`--on-nan`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNan {
    /// Stop at once, keeping the last checkpoint (the default).
    #[default]
    Stop,
    /// Skip a step whose loss or gradient is not finite (no update;
    /// batch-norm statistics restored), as mixed-precision loss scaling does;
    /// stop after [`MAX_SKIPPED_IN_A_ROW`] skipped steps in a row.
    Skip,
}

/// Consecutive non-finite steps `--on-nan skip` tolerates before stopping.
pub const MAX_SKIPPED_IN_A_ROW: u64 = 20;

impl TrainConfig {
    /// True when `other` trains the same way: everything but the thread,
    /// worker, logging and fault settings is equal (paths compared resolved;
    /// the data's fingerprint is checked on resuming). The log interval counts
    /// where an error-based warm-up is on: its end is decided at log boundaries.
    pub fn same_recipe(&self, other: &TrainConfig) -> bool {
        let resolve = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let norm = |c: &TrainConfig| {
            let log_every = if c.policy.warmup_until_error.is_some() { c.log_every } else { 0 };
            let mut data = c.data.clone();
            data.path = resolve(&data.path);
            TrainConfig {
                threads: 0,
                workers: 0,
                log_every,
                data,
                init: c.init.as_deref().map(resolve),
                on_nan: OnNan::Stop,
                data_fingerprint: None,
                ..c.clone()
            }
        };
        norm(self) == norm(other)
    }
}

/// Where a run stands (saved in the checkpoint sidecar).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epoch in progress (0-based); equals `epochs` when done.
    pub epoch: usize,
    /// Batches of the current epoch already trained on.
    pub step_in_epoch: usize,
    /// Iterations (optimiser steps) so far.
    pub iteration: u64,
    /// Lowest test error seen.
    pub best_test_error: Option<f64>,
    /// The error-based warm-up has ended (He et al.'s ResNet-110 recipe).
    pub warmup_done: bool,
    /// Exponential moving average of the training error (for that warm-up).
    pub train_error_ema: f64,
    /// Training seconds so far (excluding evaluation).
    pub train_seconds: f64,
    /// Last test result.
    pub last_test: Option<TestPoint>,
    /// Steps skipped for a non-finite loss (`--on-nan skip`).
    #[serde(default)]
    pub skipped_steps: u64,
    /// Of which in a row, up to now.
    #[serde(default)]
    pub skipped_in_a_row: u64,
    /// Training metrics of the epoch in progress (saved mid-epoch).
    #[serde(default)]
    pub epoch_tally: Tally,
    /// Training metrics of the log interval in progress, and its images.
    #[serde(default)]
    pub log_tally: Tally,
}

/// Mean and std for `channels` output channels from the data set's statistics.
fn norm_stats(ds: &Dataset, channels: usize) -> (Vec<f32>, Vec<f32>) {
    let avg = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    match (ds.channels, channels) {
        (a, b) if a == b => (ds.mean.clone(), ds.std.clone()),
        (1, 3) => (vec![ds.mean[0]; 3], vec![ds.std[0]; 3]),
        _ => (vec![avg(&ds.mean)], vec![avg(&ds.std)]),
    }
}

/// The training and evaluation transforms for a configuration and data set.
pub fn transforms(cfg: &TrainConfig, ds: &Dataset) -> Result<(SampleTransform, SampleTransform)> {
    let channels = cfg.spec.in_channels;
    let (mean, std) = norm_stats(ds, channels);
    let base = SampleTransform { geometry: Geometry::Identity, flip: false, pad_to: cfg.pad_to, channels, mean, std };
    let (train, test) = match ds.train.images {
        Images::Memory { .. } => {
            let train = if cfg.augment {
                SampleTransform { geometry: Geometry::PadCrop { pad: 4 }, flip: true, ..base.clone() }
            } else {
                base.clone()
            };
            (train, base)
        }
        Images::Files(_) => {
            let s = cfg.image_size;
            let resize = s * cfg.resize_per_224 / 224;
            let train_geom = if cfg.augment {
                Geometry::RandomResizedCrop { size: s }
            } else {
                Geometry::ResizeCrop { resize, crop: s }
            };
            let test = SampleTransform { geometry: Geometry::ResizeCrop { resize, crop: s }, ..base.clone() };
            (SampleTransform { geometry: train_geom, flip: cfg.augment, ..base }, test)
        }
    };
    train.validate(ds.channels)?;
    Ok((train, test))
}

/// The network's input `(height, width)` in a run of `cfg` on `ds`.
pub fn input_size(cfg: &TrainConfig, ds: &Dataset) -> (usize, usize) {
    match ds.train.images {
        Images::Memory { h, w, .. } => cfg.pad_to.map_or((h, w), |p| (h.max(p), w.max(p))),
        Images::Files(_) => (cfg.image_size, cfg.image_size),
    }
}

/// The evaluation transform as `classify` applies it to an arbitrary image.
pub fn card_transform(cfg: &TrainConfig, ds: &Dataset, test_tf: &SampleTransform) -> Transform {
    let (resize, crop) = match (&ds.train.images, &test_tf.geometry) {
        (_, Geometry::ResizeCrop { resize, crop }) => (*resize, *crop),
        (Images::Memory { h, w, .. }, _) => ((*h).min(*w), (*h).min(*w)),
        _ => (cfg.image_size * cfg.resize_per_224 / 224, cfg.image_size),
    };
    Transform {
        resize,
        crop,
        mean: test_tf.mean.clone(),
        std: test_tf.std.clone(),
        grayscale: test_tf.channels == 1,
        pad_to: cfg.pad_to,
    }
}

/// Loads a data set, keeping the first `train_per_class` / `test_per_class`
/// images of each class when given.
pub fn load_data(spec: &DataSpec, train_per_class: Option<usize>, test_per_class: Option<usize>) -> Result<Dataset> {
    let mut ds = Dataset::load(spec)?;
    let classes = ds.classes.len();
    if let Some(n) = train_per_class {
        ds.train = Arc::new(ds.train.balanced_subset(n, classes));
    }
    if let Some(n) = test_per_class {
        ds.test = Arc::new(ds.test.balanced_subset(n, classes));
    }
    if ds.train.is_empty() || ds.test.is_empty() {
        return Err(Error::Invalid(format!("{spec}: a split is empty")));
    }
    Ok(ds)
}

/// Refuses to start a new run where one already is (its checkpoints and logs
/// would be overwritten) unless `force`.
pub fn check_fresh_out_dir(out: &Path, force: bool) -> Result<()> {
    if !force && out.join("last.json").exists() {
        return Err(Error::Invalid(format!(
            "{} already holds a run: continue it with --resume {}, or pass --force to start over there",
            out.display(),
            out.display()
        )));
    }
    Ok(())
}

/// Creates the output folder and checks that it is writable.
pub(super) fn prepare_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)
        .map_err(|e| Error::Invalid(format!("cannot create output folder {}: {e}", out.display())))?;
    let probe = out.join(".write-test");
    std::fs::write(&probe, b"ok")
        .map_err(|e| Error::Invalid(format!("output folder {} is not writable: {e}", out.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
