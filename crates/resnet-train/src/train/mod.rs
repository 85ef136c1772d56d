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
//!
//! The parts: `config` (what defines a run and its data), `progress`
//! (what a run reports, and the training metrics read back from the
//! backend), `files` (checkpoints, logs, curves); the loop is here.

mod config;
mod files;
mod progress;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::data::Dataset;
use crate::data::augment::SampleTransform;
use crate::data::loader::Loader;
use crate::eval::{EvalResult, evaluate};
use crate::optim::Sgd;
use resnet::backend::{Backend, DType};
use resnet::classify::ModelCard;
use resnet::error::{Error, Result};
use resnet::io::{self, HostTensor, LoadMode, TensorData};
use resnet::model::{Mode, Network, StateEntry};
use resnet::rng::Rng;
use resnet::tensor::Tensor;

use config::prepare_out_dir;
pub use config::{
    MAX_SKIPPED_IN_A_ROW, OnNan, TrainConfig, TrainState, card_transform, check_fresh_out_dir, input_size, load_data,
    transforms,
};
use files::{FORMAT, check_iteration, read_metrics, tidy};
pub use files::{OptimizerState, RngState, Sidecar};
use progress::StepMetrics;
pub use progress::{Observer, Quiet, StepReport, Tally, TestPoint, TrainPoint, TrainSummary};

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

impl<B: Backend> Trainer<B> {
    /// Starts a new run in `out` (created if needed; must be writable).
    pub fn new(config: TrainConfig, backend: &B, data: Dataset, out: &Path) -> Result<Self> {
        let mut config = config;
        if config.batch == 0 {
            return Err(Error::Invalid("--batch must be at least 1".into()));
        }
        if config.log_every == 0 {
            return Err(Error::Invalid("--log-every must be at least 1".into()));
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
        tidy(out, false)?;
        // Paths stored resolved, so that the run resumes from any working folder.
        let resolve = |p: &Path| std::fs::canonicalize(p).map_err(|e| Error::io(p, e));
        config.data.path = resolve(&config.data.path)?;
        if let Some(init) = &config.init {
            config.init = Some(resolve(init)?);
        }
        config.data_fingerprint = Some(data.fingerprint());
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
        net.set_freeze(config.freeze)?;
        net.init_kaiming(&mut Rng::new(config.seed).fork(u64::MAX), config.zero_init_residual)?;
        if let Some(init) = &config.init {
            let sd = io::read_state_dict(init)?;
            let classes_in_file = sd.get("fc.weight").and_then(|t| t.shape.first().copied());
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
        prepare_out_dir(dir)?;
        tidy(dir, true)?;
        let sidecar_path = dir.join("last.json");
        let text = std::fs::read_to_string(&sidecar_path).map_err(|e| Error::io(&sidecar_path, e))?;
        let side: Sidecar = serde_json::from_str(&text)
            .map_err(|e| Error::format(&sidecar_path, format!("not a checkpoint sidecar: {e}")))?;
        if side.format != FORMAT {
            return Err(Error::format(&sidecar_path, format!("unknown checkpoint format {}", side.format)));
        }
        let mut config = side.config;
        let data = load_data(&config.data, config.train_per_class, config.test_per_class)?;
        if let Some(saved) = &config.data_fingerprint
            && *saved != data.fingerprint()
        {
            return Err(Error::Invalid(format!(
                "the data set {} is not the one the run started on (images and labels {} then, {} now): \
                 restore it, or start a new run",
                config.data,
                saved,
                data.fingerprint()
            )));
        }
        let batches_per_epoch = data.train.len().div_ceil(config.batch);
        if let Some(e) = epochs {
            config.epochs = e;
            config.iterations = None;
            config.policy.total_iters = (e * batches_per_epoch) as u64;
        }
        let mut net = Network::new(&config.spec, backend)?;
        net.set_freeze(config.freeze)?;
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
            net.try_visit(&mut |key, e| {
                let StateEntry::Param(param) = e else { return Ok(()) };
                match bufs.get(&format!("momentum.{key}")) {
                    Some(HostTensor { data: TensorData::F32(v), .. }) if v.len() == param.numel() => backend
                        .upload(&resnet::tensor::to_internal(param.layout, &param.shape, v))
                        .map(|buf| sgd.buffers.push(buf)),
                    _ => Err(Error::format(&p, format!("no momentum buffer for `{key}`"))),
                }
            })?;
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

    /// The training memory plan of this run's steps with `segments`
    /// recomputed segments (see [`resnet::model::memory`]).
    pub fn memory_plan(&self, segments: usize) -> Result<resnet::model::MemoryPlan> {
        let input = input_size(&self.config, &self.data);
        resnet::model::MemoryPlan::new(&self.net, self.config.batch, input, segments, self.config.sgd.momentum > 0.0)
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
        let mut log = std::mem::take(&mut self.state.log_tally);
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
            let mut ep = std::mem::take(&mut self.state.epoch_tally);
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
                let saved_bn = if self.config.on_nan == OnNan::Skip { Some(self.bn_state()?) } else { None };
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
                // With --on-nan skip: a non-finite loss skips the backward pass, a
                // non-finite gradient the update.
                let mut bad = None;
                if saved_bn.is_some() {
                    debug_assert_eq!(slot + 1, metrics.pending.len());
                    let loss = metrics.peek_loss(&backend)?;
                    bad = (!loss.is_finite()).then(|| format!("the loss is {loss}"));
                }
                if bad.is_none() {
                    self.net.backward(&x, &dlogits)?;
                    if saved_bn.is_some() && !self.gradients_finite()? {
                        bad = Some("a gradient is not finite".into());
                    }
                }
                match (bad, saved_bn) {
                    (Some(why), Some(saved)) => self.skip_step(&backend, &mut metrics, saved, &why, obs)?,
                    (_, saved) => {
                        if saved.is_some() {
                            self.state.skipped_in_a_row = 0;
                        }
                        self.sgd.step(&mut self.net, lr)?;
                    }
                }
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
                        loss: log.mean_loss().unwrap_or(0.0),
                        error: log.mean_error().unwrap_or(0.0),
                        images_per_second: log_images as f64 / log_t.elapsed().as_secs_f64().max(1e-9),
                    };
                    self.log(&serde_json::json!({"kind": "train", "point": p}))?;
                    self.train_points.push(p);
                    (log, log_images) = (Tally::default(), 0);
                    log_t = Instant::now();
                }
                if self.interrupt.load(Ordering::SeqCst) {
                    self.absorb(&backend, &mut metrics, &mut [&mut ep, &mut log])?;
                    (self.state.epoch_tally, self.state.log_tally) = (ep, log);
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
                train_loss: ep.mean_loss().unwrap_or(0.0),
                train_error: ep.accuracy().map_or(f64::NAN, |a| 1.0 - a),
                images_per_second: ep_images as f64 / epoch_train_seconds.max(1e-9),
            };
            self.log(&serde_json::json!({"kind": "test", "point": tp}))?;
            self.test_points.push(tp.clone());
            let improved = self.state.best_test_error.is_none_or(|b| tp.error < b);
            if improved {
                self.state.best_test_error = Some(tp.error);
            }
            self.state.last_test = Some(tp.clone());
            self.state.log_tally = log.clone();
            self.save("last", true)?;
            self.state.log_tally = Tally::default();
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
                // The steps read back are all of the epoch in progress.
                return Err(Error::Diverged(format!(
                    "the loss became {loss} at iteration {iteration} (epoch {}): stopping; try a lower --lr. \
                     The last checkpoint in {} is intact",
                    self.state.epoch + 1,
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

    /// Batch-norm running statistics and counters, to undo a skipped step's forward pass.
    fn bn_state(&mut self) -> Result<Vec<(Vec<f32>, i64)>> {
        let b = self.net.backend().clone();
        let mut saved = Vec::new();
        self.net.try_visit(&mut |_, e| {
            match e {
                StateEntry::Buffer(buf, _) => saved.push((b.download(buf)?, 0)),
                StateEntry::Counter(c) => saved.push((Vec::new(), *c)),
                StateEntry::Param(_) => {}
            }
            Ok(())
        })?;
        Ok(saved)
    }

    /// Whether every parameter gradient is finite (one pass over them).
    fn gradients_finite(&mut self) -> Result<bool> {
        let b = self.net.backend().clone();
        let mut total = 0.0f64;
        self.net.try_visit(&mut |_, e| {
            if let StateEntry::Param(p) = e {
                total += b.sum_squares(&p.grad)?;
            }
            Ok(())
        })?;
        Ok(total.is_finite())
    }

    /// With `--on-nan skip`, a step whose loss or gradient is not finite:
    /// drops its metrics, restores the batch-norm statistics its forward pass
    /// changed and says so; stops the run after too many in a row.
    fn skip_step(
        &mut self,
        b: &B,
        metrics: &mut StepMetrics<B>,
        saved: Vec<(Vec<f32>, i64)>,
        why: &str,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        metrics.forget_last();
        let mut saved = saved.into_iter();
        self.net.try_visit(&mut |_, e| {
            if matches!(e, StateEntry::Param(_)) {
                return Ok(());
            }
            match (e, saved.next()) {
                (StateEntry::Buffer(buf, _), Some((v, _))) => b.write(buf, &v),
                (StateEntry::Counter(c), Some((_, v))) => {
                    *c = v;
                    Ok(())
                }
                _ => Err(Error::Invalid("batch-norm state changed shape".into())),
            }
        })?;
        self.state.skipped_steps += 1;
        self.state.skipped_in_a_row += 1;
        let it = self.state.iteration + 1;
        if self.state.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW {
            return Err(Error::Diverged(format!(
                "the loss or a gradient was non-finite for {MAX_SKIPPED_IN_A_ROW} steps in a row, up to iteration \
                 {it}: stopping; try a lower --lr. The last checkpoint in {} is intact",
                self.out.display()
            )));
        }
        obs.message(&format!("iteration {it}: {why}; step skipped (--on-nan skip)"));
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
}
