//! Training: the loop, evaluation each epoch, metrics, plots, checkpoints and
//! exact resumption.
//!
//! Everything random is a pure function of the seed and the position in the
//! run (epoch, sample): the weight initialisation, the shuffle of each epoch
//! (`Rng::new(seed).fork(epoch)`) and each sample's augmentation (forked by
//! its position in the epoch). With the kernels' fixed reduction orders, a
//! run is deterministic for a seed and a thread count, and a run resumed from
//! a checkpoint, even one written mid-epoch by Ctrl-C, ends with the same
//! weights, bit for bit, as an uninterrupted one.
//!
//! Files in the output folder:
//! * `last.safetensors`, `last.json` (sidecar: model card, configuration,
//!   progress, optimiser hyper-parameters), `last.optim.safetensors`
//!   (momentum buffers): written atomically at the end of every epoch and on
//!   interruption;
//! * `best.safetensors`, `best.json`: the weights with the lowest test error;
//! * `metrics.jsonl` (training points and test results), `metrics.csv` (one
//!   row per epoch), `curves.png` and `curves.svg` (refreshed each epoch).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, DType};
use crate::classify::ModelCard;
use crate::data::augment::{Geometry, SampleTransform};
use crate::data::loader::Loader;
use crate::data::{DataKind, DataSpec, Dataset, Images};
use crate::error::{Error, Result};
use crate::eval::{EvalResult, evaluate};
use crate::io::{self, HostTensor, LoadMode, StateDict, TensorData};
use crate::model::{Mode, Network, ResNetSpec, StateEntry};
use crate::optim::{LrPolicy, Sgd, SgdConfig};
use crate::plot::{self, Panel, Series};
use crate::preprocess::Transform;
use crate::rng::Rng;
use crate::tensor::Tensor;

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
}

impl TrainConfig {
    /// True when `other` trains the same way: everything but the thread,
    /// worker and logging settings is equal.
    pub fn same_recipe(&self, other: &TrainConfig) -> bool {
        let norm = |c: &TrainConfig| TrainConfig { threads: 0, workers: 0, log_every: 0, ..c.clone() };
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
}

/// A test evaluation, as logged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestPoint {
    /// Epochs completed.
    pub epoch: usize,
    /// Iterations at the time.
    pub iteration: u64,
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 error (fraction).
    pub error: f64,
    /// Top-5 error (fraction).
    pub top5_error: f64,
    /// Mean training loss over the epoch (over the part run by this process
    /// when it resumed mid-epoch).
    #[serde(default)]
    pub train_loss: f64,
    /// Training error over the epoch (fraction), likewise.
    #[serde(default)]
    pub train_error: f64,
    /// Training images per second over the epoch.
    #[serde(default)]
    pub images_per_second: f64,
}

/// A logged training point (means over the iterations since the last one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainPoint {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Iteration at the end of the interval.
    pub iteration: u64,
    /// Learning rate.
    pub lr: f32,
    /// Mean loss.
    pub loss: f64,
    /// Mean error (fraction).
    pub error: f64,
    /// Training images per second.
    pub images_per_second: f64,
}

/// What one training step reports to an [`Observer`].
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Batch within the epoch (1-based: batches done).
    pub step: usize,
    /// Batches in the epoch.
    pub steps: usize,
    /// Iterations so far.
    pub iteration: u64,
    /// Iterations the run will take.
    pub total_iterations: u64,
    /// Mean loss over the epoch so far, as of the last read-back of the
    /// training metrics (once per log interval); `None` before the first.
    pub mean_loss: Option<f64>,
    /// Accuracy over the epoch so far, likewise.
    pub accuracy: Option<f64>,
    /// Learning rate used.
    pub lr: f32,
    /// Training throughput over the epoch so far.
    pub images_per_second: f64,
}

/// Receives progress (the CLI draws bars from it).
pub trait Observer {
    /// An epoch starts (`start_step` > 0 when resuming mid-epoch).
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _steps: usize, _start_step: usize) {}
    /// A training step finished.
    fn step(&mut self, _r: &StepReport) {}
    /// Evaluation progress.
    fn eval_progress(&mut self, _done: usize, _total: usize) {}
    /// An epoch finished with this result.
    fn epoch_end(&mut self, _epoch: usize, _result: &TestPoint) {}
    /// A line of information.
    fn message(&mut self, _msg: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// The outcome of [`Trainer::run`].
#[derive(Clone, Debug, Serialize)]
pub struct TrainSummary {
    /// Epochs completed.
    pub epochs: usize,
    /// Iterations run.
    pub iterations: u64,
    /// Final test result.
    pub test: Option<TestPoint>,
    /// Best test error.
    pub best_test_error: Option<f64>,
    /// Training seconds (excluding evaluation).
    pub train_seconds: f64,
    /// Wall seconds of this invocation.
    pub wall_seconds: f64,
}

/// The checkpoint sidecar (`last.json`, `best.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sidecar {
    /// Format tag.
    pub format: String,
    /// What `classify` and `eval` need.
    pub model: ModelCard,
    /// The run's configuration.
    pub config: TrainConfig,
    /// Progress.
    pub state: TrainState,
    /// Optimiser: kind, hyper-parameters, steps and the momentum file.
    pub optimizer: OptimizerState,
    /// The random stream: a pure function of these (see the module docs).
    pub rng: RngState,
}

/// Optimiser state in the sidecar.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OptimizerState {
    /// `sgd`.
    pub kind: String,
    /// Hyper-parameters.
    pub config: SgdConfig,
    /// Updates taken.
    pub steps: u64,
    /// Momentum buffers (`momentum.<parameter>` tensors), if saved.
    pub buffers: Option<String>,
}

/// Random-stream position in the sidecar.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RngState {
    /// Seed.
    pub seed: u64,
    /// Epoch whose shuffle is in use.
    pub epoch: usize,
    /// Samples of that epoch consumed.
    pub position: usize,
}

const FORMAT: &str = "resnet-checkpoint/1";

/// A training run in progress.
pub struct Trainer<B: Backend> {
    /// Configuration.
    pub config: TrainConfig,
    /// Progress.
    pub state: TrainState,
    /// The network.
    pub net: Network<B>,
    /// The optimiser.
    pub sgd: Sgd<B>,
    data: Dataset,
    train_tf: Arc<SampleTransform>,
    test_tf: Arc<SampleTransform>,
    out: PathBuf,
    interrupt: Arc<AtomicBool>,
    train_points: Vec<TrainPoint>,
    test_points: Vec<TestPoint>,
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
            let train_geom = if cfg.augment {
                Geometry::RandomResizedCrop { size: s }
            } else {
                Geometry::ResizeCrop { resize: s * 256 / 224, crop: s }
            };
            let test =
                SampleTransform { geometry: Geometry::ResizeCrop { resize: s * 256 / 224, crop: s }, ..base.clone() };
            (SampleTransform { geometry: train_geom, flip: cfg.augment, ..base }, test)
        }
    };
    train.validate(ds.channels)?;
    Ok((train, test))
}

/// The evaluation transform as `classify` applies it to an arbitrary image.
pub fn card_transform(cfg: &TrainConfig, ds: &Dataset, test_tf: &SampleTransform) -> Transform {
    let (resize, crop) = match (&ds.train.images, &test_tf.geometry) {
        (_, Geometry::ResizeCrop { resize, crop }) => (*resize, *crop),
        (Images::Memory { h, w, .. }, _) => ((*h).min(*w), (*h).min(*w)),
        _ => (cfg.image_size * 256 / 224, cfg.image_size),
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

impl<B: Backend> Trainer<B> {
    /// Starts a new run in `out` (created if needed; must be writable).
    pub fn new(config: TrainConfig, backend: &B, data: Dataset, out: &Path) -> Result<Self> {
        let mut config = config;
        if config.batch == 0 {
            return Err(Error::Invalid("--batch must be at least 1".into()));
        }
        if data.classes.len() != config.spec.num_classes {
            return Err(Error::Invalid(format!(
                "{} has {} classes but the model has {} outputs",
                config.data,
                data.classes.len(),
                config.spec.num_classes
            )));
        }
        prepare_out_dir(out)?;
        let batches_per_epoch = data.train.len().div_ceil(config.batch);
        let total = match config.iterations {
            Some(it) => {
                config.epochs = (it as usize).div_ceil(batches_per_epoch);
                it
            }
            None => (config.epochs * batches_per_epoch) as u64,
        };
        if total == 0 {
            return Err(Error::Invalid("nothing to train: give --epochs or --iterations of at least 1".into()));
        }
        config.policy.total_iters = total;
        let mut net = Network::new(&config.spec, backend)?;
        net.init_kaiming(&mut Rng::new(config.seed).fork(u64::MAX), config.zero_init_residual)?;
        if let Some(init) = &config.init {
            let sd = io::read_state_dict(init)?;
            let classes_in_file = sd.get("fc.weight").map(|t| t.shape[0]);
            let mode = if classes_in_file == Some(config.spec.num_classes) {
                LoadMode::Strict
            } else {
                LoadMode::SkipClassifier
            };
            io::load_state_dict(&mut net, &sd, mode)
                .map_err(|e| Error::Invalid(format!("--init {}: {e}", init.display())))?;
        }
        let (train_tf, test_tf) = transforms(&config, &data)?;
        let sgd = Sgd::new(config.sgd.clone())?;
        let state = TrainState {
            warmup_done: config.policy.warmup_until_error.is_none(),
            train_error_ema: 1.0,
            ..Default::default()
        };
        let t = Self {
            config,
            state,
            net,
            sgd,
            data,
            train_tf: Arc::new(train_tf),
            test_tf: Arc::new(test_tf),
            out: out.to_path_buf(),
            interrupt: Arc::new(AtomicBool::new(false)),
            train_points: Vec::new(),
            test_points: Vec::new(),
        };
        // Start the logs afresh.
        io::atomic::write(&out.join("metrics.jsonl"), b"")?;
        Ok(t)
    }

    /// Continues the run saved in `dir` (from `last.*`). `epochs`, if given,
    /// extends or shortens it.
    pub fn resume(dir: &Path, backend: &B, epochs: Option<usize>) -> Result<Self> {
        let sidecar_path = dir.join("last.json");
        let text = std::fs::read_to_string(&sidecar_path).map_err(|e| Error::io(&sidecar_path, e))?;
        let side: Sidecar = serde_json::from_str(&text)
            .map_err(|e| Error::format(&sidecar_path, format!("not a checkpoint sidecar: {e}")))?;
        if side.format != FORMAT {
            return Err(Error::format(&sidecar_path, format!("unknown checkpoint format {}", side.format)));
        }
        let mut config = side.config;
        let data = load_data(&config.data, config.train_per_class, config.test_per_class)?;
        let batches_per_epoch = data.train.len().div_ceil(config.batch);
        if let Some(e) = epochs {
            config.epochs = e;
            config.iterations = None;
            config.policy.total_iters = (e * batches_per_epoch) as u64;
        }
        prepare_out_dir(dir)?;
        let mut net = Network::new(&config.spec, backend)?;
        let weights = dir.join("last.safetensors");
        let sd = io::read_state_dict(&weights)?;
        io::load_state_dict(&mut net, &sd, LoadMode::Strict)
            .map_err(|e| Error::Invalid(format!("{}: {e}", weights.display())))?;
        check_iteration(&weights, side.state.iteration)?;
        let mut sgd = Sgd::new(side.optimizer.config.clone())?;
        sgd.steps = side.optimizer.steps;
        if let Some(f) = &side.optimizer.buffers {
            let p = dir.join(f);
            check_iteration(&p, side.state.iteration)?;
            let bufs = io::read_state_dict(&p)?;
            let mut result = Ok(());
            net.visit(&mut |key, e| {
                let StateEntry::Param(param) = e else { return };
                if result.is_err() {
                    return;
                }
                result = match bufs.get(&format!("momentum.{key}")) {
                    Some(HostTensor { data: TensorData::F32(v), .. }) if v.len() == param.numel() => backend
                        .upload(&crate::tensor::to_internal(param.layout, &param.shape, v))
                        .map(|buf| sgd.buffers.push(buf)),
                    _ => Err(Error::format(&p, format!("no momentum buffer for `{key}`"))),
                };
            });
            result?;
        }
        let (train_tf, test_tf) = transforms(&config, &data)?;
        let (train_points, test_points) = read_metrics(&dir.join("metrics.jsonl"), side.state.iteration)?;
        let t = Self {
            config,
            state: side.state,
            net,
            sgd,
            data,
            train_tf: Arc::new(train_tf),
            test_tf: Arc::new(test_tf),
            out: dir.to_path_buf(),
            interrupt: Arc::new(AtomicBool::new(false)),
            train_points,
            test_points,
        };
        t.write_metrics_jsonl()?;
        Ok(t)
    }

    /// The flag that stops the run (set it from a Ctrl-C handler): the
    /// trainer saves a checkpoint and returns [`Error::Interrupted`].
    pub fn interrupt_flag(&self) -> Arc<AtomicBool> {
        self.interrupt.clone()
    }

    /// Makes the run stop (saving a checkpoint) when `flag` is set; shared
    /// by the runs of an experiment.
    pub fn set_interrupt_flag(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = flag;
    }

    /// Logged training points and test evaluations so far.
    pub fn curves(&self) -> (Vec<TrainPoint>, Vec<TestPoint>) {
        (self.train_points.clone(), self.test_points.clone())
    }

    /// The output folder.
    pub fn out_dir(&self) -> &Path {
        &self.out
    }

    /// The data set.
    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// Total iterations of the run.
    pub fn total_iterations(&self) -> u64 {
        self.config.policy.total_iters
    }

    /// The model card (what `classify` needs).
    pub fn card(&self) -> ModelCard {
        ModelCard {
            spec: self.config.spec.clone(),
            transform: Some(card_transform(&self.config, &self.data, &self.test_tf)),
            labels: Some(self.data.classes.clone()),
        }
    }

    /// Learning rate for the next step.
    fn lr(&self) -> f32 {
        match self.config.policy.warmup_until_error {
            Some((lr, _)) if !self.state.warmup_done => lr,
            _ => self.config.policy.at(self.state.iteration),
        }
    }

    /// Runs to the end (or until interrupted or diverged).
    ///
    /// Each step's loss and top-1 count stay on the backend
    /// ([`Backend::softmax_cross_entropy`]) and are read back once per log
    /// interval, at the end of an epoch and before any checkpoint: the
    /// training loop never waits for the device within an interval. The
    /// error-based warm-up is decided at log boundaries (iterations that are
    /// multiples of `log_every`), from the running training error then, so
    /// that an interrupted and resumed run decides exactly as an
    /// uninterrupted one.
    pub fn run(&mut self, obs: &mut dyn Observer) -> Result<TrainSummary> {
        let wall = Instant::now();
        let backend = self.net.backend().clone();
        let classes = self.config.spec.num_classes;
        let total = self.total_iterations();
        let mut x = Tensor::empty();
        let mut labels = backend.alloc(DType::U32, 0)?;
        let mut dlogits = Tensor::empty();
        let mut metrics = StepMetrics::new(&backend, self.config.log_every)?;
        // Logged training points cover `log_every` iterations each, across
        // epoch boundaries, so that an epoch's short last batch does not make
        // a point of its own.
        let mut log = Tally::default();
        let mut log_images = 0usize;
        let mut log_t = Instant::now();
        while self.state.epoch < self.config.epochs && self.state.iteration < total {
            let epoch = self.state.epoch;
            let order = self.epoch_order(epoch);
            let start = self.state.step_in_epoch;
            let loader = Loader::spawn(
                self.data.train.clone(),
                Arc::new(order),
                self.config.batch,
                self.train_tf.clone(),
                Rng::new(self.config.seed).fork(1_000_000 + epoch as u64),
                start,
                self.config.workers,
            );
            let steps = loader.len();
            obs.epoch_start(epoch, self.config.epochs, steps, start);
            let mut ep = Tally::default();
            let ep_t = Instant::now();
            let mut ep_images = 0usize;
            let mut epoch_train_seconds = 0.0f64;
            for batch in loader {
                let batch = batch?;
                let t0 = Instant::now();
                let lr = self.lr();
                let n = batch.labels.len();
                x.write(&backend, batch.shape, &batch.x)?;
                backend.write(&mut labels, &batch.labels)?;
                self.net.zero_grad()?;
                let logits = self.net.forward(&x, Mode::Train)?;
                dlogits.reshape(&backend, logits.shape)?;
                let slot = metrics.next_slot(n, self.state.iteration + 1);
                let smoothing = self.config.label_smoothing;
                backend.softmax_cross_entropy(
                    n,
                    classes,
                    &logits.buf,
                    &labels,
                    smoothing,
                    &mut dlogits.buf,
                    &mut metrics.buf,
                    slot,
                )?;
                self.net.backward(&x, &dlogits)?;
                self.sgd.step(&mut self.net, lr)?;
                let dt = t0.elapsed().as_secs_f64();
                self.state.train_seconds += dt;
                epoch_train_seconds += dt;
                self.state.iteration += 1;
                self.state.step_in_epoch += 1;
                ep_images += n;
                log_images += n;
                let done = self.state.iteration >= total;
                let boundary = self.state.iteration.is_multiple_of(self.config.log_every) || done;
                if boundary || metrics.full() {
                    self.absorb(&backend, &mut metrics, &mut [&mut ep, &mut log])?;
                }
                if boundary {
                    self.end_warmup_if_due(obs);
                }
                obs.step(&StepReport {
                    epoch,
                    step: self.state.step_in_epoch,
                    steps,
                    iteration: self.state.iteration,
                    total_iterations: total,
                    mean_loss: ep.mean_loss(),
                    accuracy: ep.accuracy(),
                    lr,
                    images_per_second: ep_images as f64 / ep_t.elapsed().as_secs_f64().max(1e-9),
                });
                if boundary {
                    let p = TrainPoint {
                        epoch,
                        iteration: self.state.iteration,
                        lr,
                        loss: log.loss / log.n.max(1) as f64,
                        error: log.error / log.n.max(1) as f64,
                        images_per_second: log_images as f64 / log_t.elapsed().as_secs_f64().max(1e-9),
                    };
                    self.log(&serde_json::json!({"kind": "train", "point": p}))?;
                    self.train_points.push(p);
                    (log, log_images) = (Tally::default(), 0);
                    log_t = Instant::now();
                }
                if self.interrupt.load(Ordering::SeqCst) {
                    self.absorb(&backend, &mut metrics, &mut [&mut ep, &mut log])?;
                    self.save("last", true)?;
                    return Err(Error::Interrupted);
                }
                if done {
                    break;
                }
            }
            // End of epoch (or of the iteration budget): evaluate, log, checkpoint.
            self.absorb(&backend, &mut metrics, &mut [&mut ep, &mut log])?;
            let eval_t = Instant::now();
            let test = self.evaluate_test(obs)?;
            log_t += eval_t.elapsed();
            self.state.epoch += 1;
            self.state.step_in_epoch = 0;
            let tp = TestPoint {
                epoch: self.state.epoch,
                iteration: self.state.iteration,
                loss: test.loss,
                error: 1.0 - test.top1,
                top5_error: 1.0 - test.top5,
                train_loss: ep.loss / ep.n.max(1) as f64,
                train_error: if ep.n == 0 { f64::NAN } else { 1.0 - ep.correct as f64 / ep.n as f64 },
                images_per_second: ep_images as f64 / epoch_train_seconds.max(1e-9),
            };
            self.log(&serde_json::json!({"kind": "test", "point": tp}))?;
            self.test_points.push(tp.clone());
            let improved = self.state.best_test_error.is_none_or(|b| tp.error < b);
            if improved {
                self.state.best_test_error = Some(tp.error);
            }
            self.state.last_test = Some(tp.clone());
            self.save("last", true)?;
            if improved {
                self.save("best", false)?;
            }
            self.write_csv()?;
            self.plot()?;
            obs.epoch_end(epoch, &tp);
            if self.interrupt.load(Ordering::SeqCst) {
                return Err(Error::Interrupted);
            }
        }
        Ok(TrainSummary {
            epochs: self.state.epoch,
            iterations: self.state.iteration,
            test: self.state.last_test.clone(),
            best_test_error: self.state.best_test_error,
            train_seconds: self.state.train_seconds,
            wall_seconds: wall.elapsed().as_secs_f64(),
        })
    }

    /// Reads back the steps' metrics and adds them, step by step, to the
    /// tallies and the running training error of the warm-up; a non-finite
    /// loss stops the run (before anything is saved).
    fn absorb(&mut self, b: &B, metrics: &mut StepMetrics<B>, tallies: &mut [&mut Tally]) -> Result<()> {
        for (loss, correct, n, iteration) in metrics.read(b)? {
            if !loss.is_finite() {
                return Err(Error::Diverged(format!(
                    "the loss became {loss} at iteration {iteration}: stopping; try a lower --lr. \
                     The last checkpoint in {} is intact",
                    self.out.display()
                )));
            }
            let batch_err = 1.0 - correct as f64 / n as f64;
            self.state.train_error_ema = 0.9 * self.state.train_error_ema + 0.1 * batch_err;
            for t in tallies.iter_mut() {
                t.add(loss, correct, n);
            }
        }
        Ok(())
    }

    /// Ends He et al.'s warm-up once the running training error is below its threshold.
    fn end_warmup_if_due(&mut self, obs: &mut dyn Observer) {
        if let Some((_, until)) = self.config.policy.warmup_until_error
            && !self.state.warmup_done
            && self.state.train_error_ema < until as f64
        {
            self.state.warmup_done = true;
            obs.message(&format!(
                "warm-up done at iteration {}: training error below {:.0}%",
                self.state.iteration,
                until * 100.0
            ));
        }
    }

    /// The visiting order of epoch `epoch`.
    fn epoch_order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.data.train.len()).collect();
        if self.config.shuffle {
            Rng::new(self.config.seed).fork(epoch as u64).shuffle(&mut order);
        }
        order
    }

    /// Evaluates on the test split.
    pub fn evaluate_test(&mut self, obs: &mut dyn Observer) -> Result<EvalResult> {
        let eval_batch = self.config.batch.max(64);
        evaluate(
            &mut self.net,
            self.data.test.clone(),
            self.test_tf.clone(),
            eval_batch,
            self.config.workers,
            |d, t| obs.eval_progress(d, t),
            |_, _, _| {},
        )
    }

    fn log(&self, v: &serde_json::Value) -> Result<()> {
        use std::io::Write;
        let p = self.out.join("metrics.jsonl");
        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(&p).map_err(|e| Error::io(&p, e))?;
        writeln!(f, "{v}").map_err(|e| Error::io(&p, e))
    }

    fn write_metrics_jsonl(&self) -> Result<()> {
        let mut text = String::new();
        for p in &self.train_points {
            text += &format!("{}\n", serde_json::json!({"kind": "train", "point": p}));
        }
        for p in &self.test_points {
            text += &format!("{}\n", serde_json::json!({"kind": "test", "point": p}));
        }
        io::atomic::write(&self.out.join("metrics.jsonl"), text.as_bytes())
    }

    fn write_csv(&self) -> Result<()> {
        let mut s = String::from(
            "epoch,iteration,lr,train_loss,train_error,test_loss,test_error,test_top5_error,images_per_second\n",
        );
        for t in &self.test_points {
            let lr = self.train_points.iter().rev().find(|p| p.iteration <= t.iteration).map_or(0.0, |p| p.lr);
            s += &format!(
                "{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.1}\n",
                t.epoch,
                t.iteration,
                lr,
                t.train_loss,
                t.train_error,
                t.loss,
                t.error,
                t.top5_error,
                t.images_per_second
            );
        }
        io::atomic::write(&self.out.join("metrics.csv"), s.as_bytes())
    }

    fn plot(&self) -> Result<()> {
        let train = |f: fn(&TrainPoint) -> f64| self.train_points.iter().map(|p| (p.iteration as f64, f(p))).collect();
        let test = |f: fn(&TestPoint) -> f64| self.test_points.iter().map(|p| (p.iteration as f64, f(p))).collect();
        let series = |name: &str, points, bold| Series { name: name.into(), points, color: 0, bold };
        let title = format!("{} on {}", self.config.spec.name, self.config.data.kind_name());
        let loss = Panel {
            title: format!("{title}: loss"),
            x_label: "iteration".into(),
            y_label: "cross-entropy".into(),
            log_y: false,
            series: vec![series("train", train(|p| p.loss), false), series("test", test(|p| p.loss), true)],
        };
        let mut err = Panel {
            title: format!("{title}: error"),
            x_label: "iteration".into(),
            y_label: "top-1 error (%)".into(),
            log_y: false,
            series: vec![
                series("train", train(|p| 100.0 * p.error), false),
                series("test", test(|p| 100.0 * p.error), true),
            ],
        };
        err.series[0].color = 1;
        err.series[1].color = 1;
        plot::line_charts(&self.out.join("curves"), &[loss, err])
    }

    /// Writes `name.safetensors` and `name.json` (and the momentum buffers when
    /// `with_optimizer`), each atomically.
    pub fn save(&mut self, name: &str, with_optimizer: bool) -> Result<()> {
        let sd = io::state_dict(&mut self.net)?;
        if let Some(key) = sd.iter().find_map(|(k, t)| match &t.data {
            TensorData::F32(v) if v.iter().any(|x| !x.is_finite()) => Some(k),
            _ => None,
        }) {
            // Batch norm can keep the loss finite while weights overflow: never save those.
            return Err(Error::Diverged(format!(
                "`{key}` became non-finite by iteration {} (epoch {}): stopping; try a lower --lr. \
                 The last checkpoint in {} is intact",
                self.state.iteration,
                self.state.epoch,
                self.out.display()
            )));
        }
        let meta: HashMap<String, String> = [
            ("iteration".to_string(), self.state.iteration.to_string()),
            ("arch".to_string(), self.config.spec.name.clone()),
        ]
        .into();
        let buffers = if with_optimizer && !self.sgd.buffers.is_empty() {
            let file = format!("{name}.optim.safetensors");
            let b = self.net.backend().clone();
            let mut sd = StateDict::new();
            let mut i = 0;
            let bufs = &self.sgd.buffers;
            let mut result = Ok(());
            self.net.visit(&mut |key, e| {
                let StateEntry::Param(p) = e else { return };
                match b.download(&bufs[i]) {
                    Ok(v) => {
                        let v = crate::tensor::to_torch(p.layout, &p.shape, &v);
                        let t = HostTensor { shape: p.shape.clone(), data: TensorData::F32(v) };
                        sd.insert(format!("momentum.{key}"), t);
                    }
                    Err(e) => result = Err(e),
                }
                i += 1;
            });
            result?;
            io::safetensors::write(&self.out.join(&file), &sd, Some(meta.clone()))?;
            Some(file)
        } else {
            None
        };
        io::safetensors::write(&self.out.join(format!("{name}.safetensors")), &sd, Some(meta))?;
        let side = Sidecar {
            format: FORMAT.into(),
            model: self.card(),
            config: self.config.clone(),
            state: self.state.clone(),
            optimizer: OptimizerState {
                kind: "sgd".into(),
                config: self.sgd.config.clone(),
                steps: self.sgd.steps,
                buffers,
            },
            rng: RngState {
                seed: self.config.seed,
                epoch: self.state.epoch,
                position: self.state.step_in_epoch * self.config.batch,
            },
        };
        let text = serde_json::to_string_pretty(&side).map_err(|e| Error::Invalid(e.to_string()))?;
        io::atomic::write(&self.out.join(format!("{name}.json")), text.as_bytes())
    }
}

/// Sums of training metrics over some steps.
#[derive(Default)]
struct Tally {
    /// Sum of batch mean losses times batch sizes.
    loss: f64,
    /// Sum of batch errors times batch sizes.
    error: f64,
    /// Images whose label had the largest logit.
    correct: usize,
    /// Images.
    n: usize,
}

impl Tally {
    fn add(&mut self, loss: f32, correct: usize, n: usize) {
        self.loss += loss as f64 * n as f64;
        self.error += (1.0 - correct as f64 / n as f64) * n as f64;
        self.correct += correct;
        self.n += n;
    }

    fn mean_loss(&self) -> Option<f64> {
        (self.n > 0).then(|| self.loss / self.n as f64)
    }

    fn accuracy(&self) -> Option<f64> {
        (self.n > 0).then(|| self.correct as f64 / self.n as f64)
    }
}

/// The steps' losses and top-1 counts, written by the backend into one small
/// buffer and read back in one transfer.
struct StepMetrics<B: Backend> {
    buf: B::Buf,
    /// `(batch size, iteration)` of each step written since the last read.
    pending: Vec<(usize, u64)>,
    capacity: usize,
}

impl<B: Backend> StepMetrics<B> {
    /// Room for `steps` steps (at most 1024; a fuller buffer is read early).
    fn new(b: &B, steps: u64) -> Result<Self> {
        let capacity = steps.clamp(1, 1024) as usize;
        Ok(Self { buf: b.alloc(DType::F32, 2 * capacity)?, pending: Vec::new(), capacity })
    }

    /// The slot of the next step (of `n` images, iteration `iteration`).
    fn next_slot(&mut self, n: usize, iteration: u64) -> usize {
        self.pending.push((n, iteration));
        self.pending.len() - 1
    }

    fn full(&self) -> bool {
        self.pending.len() == self.capacity
    }

    /// `(loss, correct, n, iteration)` of each pending step, in order.
    fn read(&mut self, b: &B) -> Result<Vec<(f32, usize, usize, u64)>> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let v = b.download(&self.buf)?;
        let out =
            self.pending.iter().enumerate().map(|(i, &(n, it))| (v[2 * i], v[2 * i + 1] as usize, n, it)).collect();
        self.pending.clear();
        Ok(out)
    }
}

impl DataSpec {
    /// Short name of the kind (`fashion-mnist`).
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            DataKind::Mnist => "MNIST",
            DataKind::FashionMnist => "Fashion-MNIST",
            DataKind::Cifar10 => "CIFAR-10",
            DataKind::Cifar100 => "CIFAR-100",
            DataKind::Folder => "images",
        }
    }
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
fn prepare_out_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)
        .map_err(|e| Error::Invalid(format!("cannot create output folder {}: {e}", out.display())))?;
    let probe = out.join(".write-test");
    std::fs::write(&probe, b"ok")
        .map_err(|e| Error::Invalid(format!("output folder {} is not writable: {e}", out.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Checks that a checkpoint file belongs to iteration `it` (guards against a
/// crash between the writes of one checkpoint).
fn check_iteration(path: &Path, it: u64) -> Result<()> {
    let meta = io::safetensors::read_metadata(path)?;
    match meta.get("iteration").and_then(|v| v.parse::<u64>().ok()) {
        Some(v) if v == it => Ok(()),
        Some(v) => Err(Error::format(
            path,
            format!("holds iteration {v}, its sidecar iteration {it}: inconsistent checkpoint"),
        )),
        None => Err(Error::format(path, "not written by `resnet train` (no iteration in its metadata)")),
    }
}

/// Reads logged points up to iteration `upto`.
fn read_metrics(path: &Path, upto: u64) -> Result<(Vec<TrainPoint>, Vec<TestPoint>)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::format(path, e.to_string()))?;
        match v["kind"].as_str() {
            Some("train") => {
                let p: TrainPoint =
                    serde_json::from_value(v["point"].clone()).map_err(|e| Error::format(path, e.to_string()))?;
                if p.iteration <= upto {
                    train.push(p);
                }
            }
            Some("test") => {
                let p: TestPoint =
                    serde_json::from_value(v["point"].clone()).map_err(|e| Error::format(path, e.to_string()))?;
                if p.iteration <= upto {
                    test.push(p);
                }
            }
            _ => {}
        }
    }
    Ok((train, test))
}
