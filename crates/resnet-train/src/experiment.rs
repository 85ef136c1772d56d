//! The residual-learning lab: experiments that reproduce the papers' findings
//! with our own training runs.
//!
//! * degradation ([`degradation_variants`]): plain and residual nets of several
//!   depths, one recipe (He et al. 2015, Figure 6);
//! * [`gradients`]: per-layer gradient norms and activation scales through deep
//!   plain and residual stacks;
//! * comparisons ([`shortcut_variants`], [`preact_variants`]): variants of one
//!   recipe (shortcut options A/B/C, Table 3; original vs pre-activation units,
//!   He et al. 2016), run by [`run_variants`].
//!
//! An experiment is many training runs. Each lives in `OUT/runs/<name>/` as an
//! ordinary training run, so an interrupted experiment resumes where it
//! stopped: finished runs are read back, an interrupted one continues
//! bit-identically, the rest start. Results go to `OUT/results.json`,
//! `OUT/report.md` and plots in PNG and SVG.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::loader::Loader;
use crate::eval::evaluate;
use crate::optim::Sgd;
use crate::plot::{self, Panel, Series};
use crate::train::{
    Observer, Sidecar, StepReport, TestPoint, TrainConfig, TrainPoint, Trainer, input_size, load_data, transforms,
};
use resnet::backend::{Backend, DType};
use resnet::error::{Error, Result};
use resnet::model::{BlockKind, Mode, Network, ResNetSpec, ShortcutKind, StateEntry, Stem};
use resnet::rng::Rng;
use resnet::tensor::{ParamLayout, Tensor};

/// One training run of an experiment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Variant {
    /// Folder name under `runs/` (and key in results).
    pub name: String,
    /// Legend label.
    pub label: String,
    /// Group (a panel or a table column: `plain`, `residual`, ...).
    pub group: String,
    /// The network.
    pub spec: ResNetSpec,
}

/// What a finished run reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// The variant.
    pub variant: Variant,
    /// Trainable parameters.
    pub params: usize,
    /// Training error over the last epoch, as logged during training (augmented batches).
    pub final_train_error: f64,
    /// Error on the whole training set in evaluation mode after training.
    pub train_set_error: f64,
    /// Final test error.
    pub test_error: f64,
    /// Lowest test error over the run.
    pub best_test_error: f64,
    /// Iterations run.
    pub iterations: u64,
    /// Training seconds.
    pub train_seconds: f64,
    /// Logged training points.
    pub train_curve: Vec<TrainPoint>,
    /// Test evaluations.
    pub test_curve: Vec<TestPoint>,
    /// Why the run stopped early, when its loss became NaN or infinite (its
    /// error figures are then NaN): a finding of the experiment, not a failure.
    #[serde(default)]
    pub diverged: Option<String>,
}

/// Progress across the runs of an experiment.
pub trait LabObserver {
    /// A run starts (`index` of `total`; `resumed` if it continues a saved run).
    fn run_start(&mut self, _index: usize, _total: usize, _name: &str, _resumed: bool) {}
    /// Overall progress: fraction of the work done and estimated seconds left.
    fn overall(&mut self, _done: f64, _eta_seconds: Option<f64>) {}
    /// The observer for the run's training steps.
    fn run_observer(&mut self) -> &mut dyn Observer;
    /// A run finished.
    fn run_end(&mut self, _r: &RunResult) {}
}

/// Wraps a run's observer to report overall progress (work weighted by MACs).
struct Overall<'a> {
    lab: &'a mut dyn LabObserver,
    done_before: f64,
    run_work: f64,
    total: f64,
    start: Instant,
    done_at_start: f64,
}

impl Observer for Overall<'_> {
    fn epoch_start(&mut self, e: usize, es: usize, s: usize, st: usize) {
        self.lab.run_observer().epoch_start(e, es, s, st);
    }
    fn step(&mut self, r: &StepReport) {
        self.lab.run_observer().step(r);
        let done = self.done_before + self.run_work * r.iteration as f64 / r.total_iterations.max(1) as f64;
        let rate = (done - self.done_at_start) / self.start.elapsed().as_secs_f64().max(1e-9);
        let eta = (rate > 0.0).then(|| (self.total - done) / rate);
        if r.step.is_multiple_of(10) || r.step == r.steps {
            self.lab.overall(done / self.total, eta);
        }
    }
    fn eval_progress(&mut self, d: usize, t: usize) {
        self.lab.run_observer().eval_progress(d, t);
    }
    fn epoch_end(&mut self, e: usize, r: &TestPoint) {
        self.lab.run_observer().epoch_end(e, r);
    }
    fn message(&mut self, m: &str) {
        self.lab.run_observer().message(m);
    }
}

fn macs_per_image(spec: &ResNetSpec, side: usize) -> f64 {
    resnet::model::Graph::new(spec).and_then(|g| g.summary(side, side)).map(|s| s.macs as f64).unwrap_or(1.0)
}

fn read_sidecar(dir: &Path) -> Option<Sidecar> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("last.json")).ok()?).ok()
}

/// How many segments a run recomputes, chosen from its network, batch size
/// and input size (refusing what cannot fit): see [`resnet::model::MemoryPlan`].
pub type SegmentChooser<'a, B> = dyn FnMut(&Network<B>, usize, (usize, usize)) -> Result<usize> + 'a;

/// Trains every variant with the `base` recipe (resuming what was saved) and
/// returns their results in order. `segments` chooses each run's recomputed
/// segments before it starts.
pub fn run_variants<B: Backend>(
    backend: &B,
    base: &TrainConfig,
    variants: &[Variant],
    out: &Path,
    lab: &mut dyn LabObserver,
    interrupt: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    segments: &mut SegmentChooser<'_, B>,
) -> Result<Vec<RunResult>> {
    std::fs::create_dir_all(out.join("runs"))
        .map_err(|e| Error::Invalid(format!("cannot create output folder {}: {e}", out.display())))?;
    let data = load_data(&base.data, base.train_per_class, base.test_per_class)?;
    let side = input_size(base, &data).0;
    let work: Vec<f64> = variants.iter().map(|v| macs_per_image(&v.spec, side)).collect();
    let total: f64 = work.iter().sum();
    let mut results = Vec::new();
    let start = Instant::now();
    let mut done = 0.0;
    let mut done_at_start = None;
    for (i, v) in variants.iter().enumerate() {
        let dir = out.join("runs").join(&v.name);
        let mut cfg = base.clone();
        cfg.spec = v.spec.clone();
        let saved = read_sidecar(&dir);
        if let Some(s) = &saved {
            // Trainer::new derives these two from the run length.
            let mut want = cfg.clone();
            want.policy.total_iters = s.config.policy.total_iters;
            if want.iterations.is_some() {
                want.epochs = s.config.epochs;
            }
            if !s.config.same_recipe(&want) || s.config.policy.total_iters != expected_iters(&cfg, data.train.len()) {
                return Err(Error::Invalid(format!(
                    "{} holds a run with other settings: run the experiment with the same options, \
                     or remove it / choose another --out",
                    dir.display()
                )));
            }
        }
        let finished = saved
            .as_ref()
            .is_some_and(|s| s.state.epoch >= s.config.epochs || s.state.iteration >= s.config.policy.total_iters);
        lab.run_start(i, variants.len(), &v.name, saved.is_some() && !finished);
        let mut trainer = match &saved {
            Some(_) => Trainer::resume(&dir, backend, None)?,
            None => {
                // The memory plan is checked before the run's folder is made.
                let probe = Network::new(&cfg.spec, backend)?;
                let k = segments(&probe, cfg.batch, input_size(&cfg, &data))?;
                drop(probe);
                let mut t = Trainer::new(cfg, backend, data.clone(), &dir)?;
                t.net.set_checkpoint_segments(k);
                t
            }
        };
        // A resumed run plans again (finished and diverged runs do not train).
        let marker = dir.join("diverged.txt");
        if saved.is_some() && !finished && !marker.exists() {
            let k = segments(&trainer.net, trainer.config.batch, input_size(&trainer.config, &data))?;
            trainer.net.set_checkpoint_segments(k);
        }
        let progress_before = trainer.state.iteration as f64 / trainer.total_iterations().max(1) as f64;
        let ds = done_at_start.get_or_insert(done + work[i] * progress_before);
        trainer.set_interrupt_flag(interrupt.clone());
        // A run that diverged before is not run again (it would diverge again, deterministically).
        let mut diverged = std::fs::read_to_string(&marker).ok();
        if !finished && diverged.is_none() {
            let mut overall =
                Overall { lab: &mut *lab, done_before: done, run_work: work[i], total, start, done_at_start: *ds };
            match trainer.run(&mut overall) {
                Err(Error::Diverged(why)) => {
                    resnet::io::atomic::write(&marker, why.as_bytes())?;
                    diverged = Some(why);
                }
                other => {
                    other?;
                }
            }
        }
        done += work[i];
        let result = match diverged {
            Some(why) => diverged_result(&mut trainer, v, why),
            None => collect(&mut trainer, v)?,
        };
        lab.run_end(&result);
        results.push(result);
    }
    Ok(results)
}

/// The result of a run whose loss stopped being finite: its curves so far, no error figures.
fn diverged_result<B: Backend>(t: &mut Trainer<B>, v: &Variant, why: String) -> RunResult {
    let (train_curve, test_curve) = t.curves();
    RunResult {
        variant: v.clone(),
        params: t.net.num_params(),
        final_train_error: f64::NAN,
        train_set_error: f64::NAN,
        test_error: f64::NAN,
        best_test_error: f64::NAN,
        iterations: t.state.iteration,
        train_seconds: t.state.train_seconds,
        train_curve,
        test_curve,
        diverged: Some(why),
    }
}

/// Iterations a configuration will run on `train_len` images.
fn expected_iters(cfg: &TrainConfig, train_len: usize) -> u64 {
    cfg.iterations.unwrap_or((cfg.epochs * train_len.div_ceil(cfg.batch)) as u64)
}

/// Reads a finished run's figures, evaluating the whole training set once
/// (cached in the run folder).
fn collect<B: Backend>(t: &mut Trainer<B>, v: &Variant) -> Result<RunResult> {
    let dir = t.out_dir().to_path_buf();
    let cache = dir.join("train_set_eval.json");
    let train_set_error =
        match std::fs::read_to_string(&cache).ok().and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok()) {
            Some(v) if v["iteration"] == t.state.iteration => v["error"].as_f64().unwrap_or(f64::NAN),
            _ => {
                let (_, test_tf) = transforms(&t.config, t.data())?;
                let split = t.data().train.clone();
                let r = evaluate(
                    &mut t.net,
                    split,
                    std::sync::Arc::new(test_tf),
                    256,
                    t.config.workers,
                    |_, _| {},
                    |_, _, _| {},
                )?;
                let e = 1.0 - r.top1;
                let json = serde_json::json!({"iteration": t.state.iteration, "error": e});
                resnet::io::atomic::write(&cache, json.to_string().as_bytes())?;
                e
            }
        };
    let (train_curve, test_curve) = t.curves();
    let last = test_curve.last().cloned();
    Ok(RunResult {
        variant: v.clone(),
        params: t.net.num_params(),
        final_train_error: last.as_ref().map_or(f64::NAN, |p| p.train_error),
        train_set_error,
        test_error: last.as_ref().map_or(f64::NAN, |p| p.error),
        best_test_error: t.state.best_test_error.unwrap_or(f64::NAN),
        iterations: t.state.iteration,
        train_seconds: t.state.train_seconds,
        train_curve,
        test_curve,
        diverged: None,
    })
}

/// The plain and residual CIFAR nets of each depth (He 2015, Figure 6).
pub fn degradation_variants(depths: &[usize], classes: usize, channels: usize) -> Result<Vec<Variant>> {
    let mut v = Vec::new();
    for (group, prefix) in [("plain", "plain"), ("residual", "resnet")] {
        for &d in depths {
            let mut spec = ResNetSpec::named(&format!("{prefix}{d}"))?;
            spec.num_classes = classes;
            spec.in_channels = channels;
            v.push(Variant {
                name: spec.name.clone(),
                label: format!("{}-{d}", if group == "plain" { "plain" } else { "ResNet" }),
                group: group.into(),
                spec,
            });
        }
    }
    Ok(v)
}

/// One net with shortcut options A, B, C (He 2015, Table 3).
pub fn shortcut_variants(
    arch: &str,
    options: &[ShortcutKind],
    classes: usize,
    channels: usize,
) -> Result<Vec<Variant>> {
    options
        .iter()
        .map(|&o| {
            let mut spec = ResNetSpec::named(arch)?;
            spec.shortcut = o;
            spec.num_classes = classes;
            spec.in_channels = channels;
            let tag = format!("{o:?}");
            Ok(Variant {
                name: format!("{arch}-{}", tag.to_lowercase()),
                label: format!("option {tag}"),
                group: tag,
                spec,
            })
        })
        .collect()
}

/// Original (post-activation) and pre-activation units at each depth (He 2016):
/// basic units for depth 6n+2 below 164, bottlenecks for 9n+2 from 164, both
/// with projection shortcuts where shapes change.
pub fn preact_variants(depths: &[usize], classes: usize, channels: usize) -> Result<Vec<Variant>> {
    let mut v = Vec::new();
    for &d in depths {
        let pre = ResNetSpec::named(&format!("preact_resnet{d}"))?;
        let original = ResNetSpec {
            name: format!("resnet{d}_original"),
            stem: Stem::Cifar,
            block: if pre.block == BlockKind::PreactBottleneck { BlockKind::Bottleneck } else { BlockKind::Basic },
            shortcut: ShortcutKind::B,
            ..pre.clone()
        };
        for (group, mut spec) in [("original", original), ("pre-activation", pre)] {
            spec.num_classes = classes;
            spec.in_channels = channels;
            v.push(Variant { name: spec.name.clone(), label: format!("{group} {d}"), group: group.into(), spec });
        }
    }
    Ok(v)
}

/// Error curves of runs: a thin training line and a bold test line per run,
/// one colour per run.
pub fn error_series(results: &[&RunResult]) -> Vec<Series> {
    let mut series = Vec::new();
    for (k, r) in results.iter().enumerate() {
        let curve = |points: Vec<(f64, f64)>, which: &str, bold| Series {
            name: format!("{} {which}", r.variant.label),
            points,
            color: k,
            bold,
        };
        series.push(curve(
            r.train_curve.iter().map(|p| (p.iteration as f64, 100.0 * p.error)).collect(),
            "train",
            false,
        ));
        series.push(curve(r.test_curve.iter().map(|p| (p.iteration as f64, 100.0 * p.error)).collect(), "test", true));
    }
    series
}

/// A panel of error curves.
pub fn error_panel(results: &[&RunResult], title: &str) -> Panel {
    Panel {
        title: title.to_string(),
        x_label: "iteration".into(),
        y_label: "error (%)".into(),
        log_y: false,
        series: error_series(results),
    }
}

/// One panel per group (e.g. plain nets left, ResNets right, as in Figure 6).
pub fn error_panels(results: &[RunResult], groups: &[(&str, &str)]) -> Vec<Panel> {
    groups
        .iter()
        .map(|(g, title)| error_panel(&results.iter().filter(|r| r.variant.group == *g).collect::<Vec<_>>(), title))
        .collect()
}

/// Per-layer measurements of one network (the gradient experiment).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerProfile {
    /// Network name.
    pub arch: String,
    /// Convolution and classifier weights, input to output.
    pub layers: Vec<String>,
    /// Frobenius norm of each layer's weight gradient on the probe batch.
    pub grad_norm: Vec<f64>,
    /// Standard deviation of each unit's output (stem first) on the probe batch.
    pub activation_std: Vec<f64>,
    /// `log10(norm at the last convolution / norm at the first)`: how many
    /// orders of magnitude the gradient falls from the output end of the
    /// convolution stack to its input end (the classifier is left out: it is
    /// a different kind of layer and sees the loss gradient directly).
    pub orders_of_magnitude: f64,
    /// Training steps taken before the measurement.
    pub steps: u64,
}

/// Gradient norms and activation scales of `net` on one probe batch, in
/// training mode (batch statistics), without changing the weights.
pub fn profile<B: Backend>(net: &mut Network<B>, x: &Tensor<B>, labels: &[u32], steps: u64) -> Result<LayerProfile> {
    let b = net.backend().clone();
    let classes = net.spec.num_classes;
    // Every unit's output is read below: none may be left to recomputation.
    let segments = net.checkpoint_segments();
    net.set_checkpoint_segments(0);
    // Training-mode BN updates running statistics: save and restore them.
    let saved = resnet::io::state_dict(net)?;
    net.zero_grad()?;
    let logits = net.forward(x, Mode::Train)?;
    let mut dl = Tensor::zeros(&b, logits.shape)?;
    let (labels, mut metrics) = (b.upload(labels)?, b.alloc(DType::F32, 2)?);
    b.softmax_cross_entropy(x.shape[0], classes, &logits.buf, &labels, 0.0, &mut dl.buf, &mut metrics, 0)?;
    let mut activation_std = Vec::new();
    let stem = match (&net.maxpool, &net.bn1) {
        (Some(m), _) => &m.y,
        (None, Some(bn)) => &bn.y,
        (None, None) => &net.conv1.y,
    };
    activation_std.push(std_of(&stem.to_host(&b)?));
    for blk in &net.blocks {
        activation_std.push(std_of(&blk.output().to_host(&b)?));
    }
    net.backward(x, &dl)?;
    let mut layers = Vec::new();
    let mut grad_norm = Vec::new();
    net.try_visit(&mut |k, e| {
        if let StateEntry::Param(p) = e
            && (p.layout == ParamLayout::ConvOhwi || k == "fc.weight")
        {
            layers.push(k.to_string());
            grad_norm.push(b.sum_squares(&p.grad)?.sqrt());
        }
        Ok(())
    })?;
    resnet::io::load_state_dict(net, &saved, resnet::io::LoadMode::Strict)?;
    net.set_checkpoint_segments(segments);
    let convs = grad_norm.len().saturating_sub(1).max(1);
    let (first, last) = (grad_norm[0], grad_norm[convs - 1]);
    Ok(LayerProfile {
        arch: net.spec.name.clone(),
        layers,
        grad_norm,
        activation_std,
        orders_of_magnitude: (last / first).log10(),
        steps,
    })
}

fn std_of(v: &[f32]) -> f64 {
    let n = v.len().max(1) as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// The gradient experiment for one architecture: profile at initialisation,
/// train `steps` SGD steps with the recipe, profile again (same probe batch).
pub fn gradients<B: Backend>(
    backend: &B,
    base: &TrainConfig,
    spec: &ResNetSpec,
    steps: u64,
    obs: &mut dyn Observer,
) -> Result<(LayerProfile, LayerProfile)> {
    let data = load_data(&base.data, base.train_per_class, base.test_per_class)?;
    let (train_tf, test_tf) = transforms(&TrainConfig { spec: spec.clone(), ..base.clone() }, &data)?;
    let mut net = Network::new(spec, backend)?;
    net.init_kaiming(&mut Rng::new(base.seed).fork(u64::MAX), false)?;
    // The probe batch: the first `batch` images of a fixed shuffle, untransformed.
    let mut order: Vec<usize> = (0..data.train.len()).collect();
    Rng::new(base.seed).fork(0xbeef).shuffle(&mut order);
    let probe = crate::data::loader::build_batch(&data.train, &order, base.batch, 0, &test_tf, &Rng::new(0))?;
    let x = Tensor::from_host(backend, probe.shape, &probe.x)?;
    let at_init = profile(&mut net, &x, &probe.labels, 0)?;
    let mut sgd: Sgd<B> = Sgd::new(base.sgd.clone())?;
    let mut policy = base.policy.clone();
    policy.total_iters = steps;
    let mut it = 0u64;
    let per_epoch = data.train.len().div_ceil(base.batch);
    let mut epoch = 0;
    let mut xt = Tensor::empty();
    let mut dl = Tensor::empty();
    let mut labels = backend.alloc(DType::U32, 0)?;
    // One slot per step of an epoch: the losses are read once per epoch.
    let mut metrics = backend.alloc(DType::F32, 2 * per_epoch)?;
    let train_tf = std::sync::Arc::new(train_tf);
    while it < steps {
        let mut order: Vec<usize> = (0..data.train.len()).collect();
        Rng::new(base.seed).fork(epoch as u64).shuffle(&mut order);
        let loader = Loader::spawn(
            data.train.clone(),
            std::sync::Arc::new(order),
            base.batch,
            train_tf.clone(),
            Rng::new(base.seed).fork(1_000_000 + epoch as u64),
            0,
            base.workers,
        );
        obs.epoch_start(epoch, steps.div_ceil(per_epoch as u64) as usize, per_epoch.min((steps - it) as usize), 0);
        let mut sizes = Vec::new();
        for (s, bt) in loader.enumerate() {
            if it >= steps {
                break;
            }
            let bt = bt?;
            xt.write(backend, bt.shape, &bt.x)?;
            backend.write(&mut labels, &bt.labels)?;
            net.zero_grad()?;
            let logits = net.forward(&xt, Mode::Train)?;
            dl.reshape(backend, logits.shape)?;
            let n = bt.labels.len();
            backend.softmax_cross_entropy(
                n,
                spec.num_classes,
                &logits.buf,
                &labels,
                0.0,
                &mut dl.buf,
                &mut metrics,
                s,
            )?;
            sizes.push(n);
            net.backward(&xt, &dl)?;
            let lr = policy.at(it);
            sgd.step(&mut net, lr)?;
            it += 1;
            obs.step(&StepReport {
                epoch,
                step: s + 1,
                steps: per_epoch,
                iteration: it,
                total_iterations: steps,
                mean_loss: None,
                accuracy: None,
                lr,
                images_per_second: f64::NAN,
            });
        }
        let losses = backend.download(&metrics)?;
        if let Some(i) = (0..sizes.len()).find(|&i| !losses[2 * i].is_finite()) {
            return Err(Error::Diverged(format!(
                "{}: the loss became {} at step {} of epoch {}: try a lower --lr",
                spec.name,
                losses[2 * i],
                i + 1,
                epoch + 1
            )));
        }
        epoch += 1;
    }
    let after = profile(&mut net, &x, &probe.labels, steps)?;
    Ok((at_init, after))
}

/// Writes `results.json` atomically.
pub fn write_results(out: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Invalid(e.to_string()))?;
    resnet::io::atomic::write(&out.join("results.json"), text.as_bytes())
}

/// Writes `report.md` atomically.
pub fn write_report(out: &Path, text: &str) -> Result<()> {
    resnet::io::atomic::write(&out.join("report.md"), text.as_bytes())
}

/// `runs/<name>` under an experiment folder.
pub fn run_dir(out: &Path, name: &str) -> PathBuf {
    out.join("runs").join(name)
}

/// A percentage with two decimals.
pub fn pct(x: f64) -> String {
    if x.is_nan() { "diverged".into() } else { format!("{:.2}%", 100.0 * x) }
}

/// Plots line panels (re-exported for the CLI).
pub fn plot_panels(stem: &Path, panels: &[Panel]) -> Result<()> {
    plot::line_charts(stem, panels)
}
