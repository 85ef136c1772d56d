//! `resnet train`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use resnet::backend::{Backend, Cpu};
use resnet::model::{Freeze, ResNetSpec};
use resnet_train::data::DataSpec;
use resnet_train::optim::{LrPolicy, Schedule, SgdConfig};
use resnet_train::train::{Observer, OnNan, StepReport, TestPoint, TrainConfig, TrainSummary, Trainer, load_data};

use crate::util::{Compute, check_batch};

/// Arguments of `resnet train`.
#[derive(clap::Args, Clone)]
pub struct Args {
    /// Architecture (see `resnet archs`).
    #[arg(long, required_unless_present = "resume")]
    pub arch: Option<String>,
    /// Data: KIND:PATH with KIND one of mnist, fashion-mnist, cifar10, cifar100, folder.
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<String>,
    /// Output folder for checkpoints, metrics and plots.
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Start from these weights (a file, or torchvision:ARCH[.v1|.v2]); with another class count the
    /// classifier is re-initialised.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Classifier outputs (default: the data set's classes).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// Model input channels (default: the data set's; gray is replicated to 3, RGB turned to gray for 1).
    #[arg(long)]
    pub in_channels: Option<usize>,
    /// Continue the run saved in this folder (settings come from its checkpoint; --epochs may extend it).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Start a new run even where one is saved (its files are overwritten).
    #[arg(long)]
    pub force: bool,
    /// Fine-tuning: freeze the network from the input up to this part (no gradient, no update, batch
    /// norms in evaluation mode, no backward pass through it).
    #[arg(long, value_enum)]
    pub freeze: Option<FreezeArg>,
    /// Fine-tuning: learning-rate multiplier for everything but the classifier.
    #[arg(long)]
    pub lr_backbone: Option<f32>,
    #[command(flatten)]
    pub memory: crate::memory::MemoryFlags,
    #[command(flatten)]
    pub recipe: Recipe,
}

/// How to train: shared by `train` and the experiments.
#[derive(clap::Args, Clone)]
pub struct Recipe {
    /// Epochs to train.
    #[arg(long, conflicts_with = "iterations")]
    pub epochs: Option<usize>,
    /// Iterations (mini-batch steps) to train, instead of epochs.
    #[arg(long)]
    pub iterations: Option<u64>,
    /// Mini-batch size [default: 128].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Base learning rate [default: 0.1].
    #[arg(long)]
    pub lr: Option<f32>,
    /// Momentum [default: 0.9].
    #[arg(long)]
    pub momentum: Option<f32>,
    /// Nesterov momentum.
    #[arg(long)]
    pub nesterov: bool,
    /// Weight decay (L2, PyTorch semantics) [default: 1e-4].
    #[arg(long)]
    pub wd: Option<f32>,
    /// No weight decay on batch-norm parameters and biases.
    #[arg(long)]
    pub no_decay_bn: bool,
    /// Learning-rate schedule [default: cosine; the recipe's: step].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    /// Step schedule milestones in epochs, comma-separated [default: 50% and 75% of the run].
    #[arg(long, value_delimiter = ',')]
    pub milestones: Option<Vec<f64>>,
    /// Step schedule factor.
    #[arg(long, default_value_t = 0.1)]
    pub gamma: f32,
    /// Linear warm-up length in epochs.
    #[arg(long, default_value_t = 0.0)]
    pub warmup_epochs: f64,
    /// A published recipe.
    #[arg(long, value_enum)]
    pub recipe: Option<RecipeArg>,
    /// Label smoothing.
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f32,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub compute: Compute,
    /// Data-loading threads [default: 1, or 2 per compute thread for image folders].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Augmentation of the training images.
    #[arg(long, value_enum, default_value_t = Augment::Standard)]
    pub augment: Augment,
    /// Keep the data order fixed.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Zero-pad images to this size (e.g. 32 for 28x28 data on the CIFAR nets).
    #[arg(long)]
    pub pad_to: Option<usize>,
    /// Network input size for image folders.
    #[arg(long, default_value_t = 224)]
    pub image_size: usize,
    /// Use only the first N training images of each class.
    #[arg(long)]
    pub train_per_class: Option<usize>,
    /// Use only the first N test images of each class.
    #[arg(long)]
    pub test_per_class: Option<usize>,
    /// Zero-initialise the last batch norm of each residual branch.
    #[arg(long)]
    pub zero_init_residual: bool,
    /// Log a training point every N iterations [default: about 20 per epoch].
    #[arg(long)]
    pub log_every: Option<u64>,
    /// What a non-finite training loss does: stop (keeping the last checkpoint) or skip the step.
    #[arg(long, value_enum, default_value_t = OnNanArg::Stop)]
    pub on_nan: OnNanArg,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// `--freeze`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreezeArg {
    /// The first convolution and its batch norm.
    Stem,
    /// The stem and layer1.
    Layer1,
    /// The stem, layer1 and layer2.
    Layer2,
    /// The stem and layer1-3.
    Layer3,
    /// Everything but the classifier.
    Backbone,
}

impl From<FreezeArg> for Freeze {
    fn from(a: FreezeArg) -> Self {
        match a {
            FreezeArg::Stem => Freeze::Stem,
            FreezeArg::Layer1 => Freeze::Layer1,
            FreezeArg::Layer2 => Freeze::Layer2,
            FreezeArg::Layer3 => Freeze::Layer3,
            FreezeArg::Backbone => Freeze::Backbone,
        }
    }
}

/// `--on-nan`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnNanArg {
    /// Stop at once with a message naming the iteration; the last checkpoint stays.
    Stop,
    /// Skip a step whose loss or gradient is not finite (no update, batch-norm statistics restored);
    /// stop after 20 in a row.
    Skip,
}

impl From<OnNanArg> for OnNan {
    fn from(a: OnNanArg) -> Self {
        match a {
            OnNanArg::Stop => OnNan::Stop,
            OnNanArg::Skip => OnNan::Skip,
        }
    }
}

/// Flags `--resume` accepts: the rest are the run's, saved in its checkpoint.
const RESUME_FLAGS: &[&str] =
    &["resume", "epochs", "threads", "device", "workers", "quiet", "on_nan", "checkpoint_segments", "memory_budget"];

/// Refuses flags given with `--resume` that would change the run.
fn check_resume_flags(a: &Args, m: &clap::ArgMatches) -> Result<()> {
    use clap::Args as _;
    let cmd = Args::augment_args(clap::Command::new("train"));
    let given = cmd
        .get_arguments()
        .map(|arg| arg.get_id().as_str())
        .filter(|id| !RESUME_FLAGS.contains(id) && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine));
    let given: Vec<String> = given.map(|id| format!("--{}", id.replace('_', "-"))).collect();
    let same_out = |dir: &std::path::Path| {
        m.value_source("out") == Some(clap::parser::ValueSource::CommandLine)
            && std::fs::canonicalize(&a.out).ok() == std::fs::canonicalize(dir).ok()
    };
    match (&a.resume, given.as_slice()) {
        (Some(dir), [one]) if one == "--out" && same_out(dir) => Ok(()),
        (Some(_), []) | (None, _) => Ok(()),
        (Some(dir), flags) => bail!(
            "--resume {} continues the run with the settings saved in its checkpoint: {} cannot be given with it \
             (only --epochs, --threads, --workers, --on-nan, --quiet and the memory flags can); start a new run to change them",
            dir.display(),
            flags.join(", ")
        ),
    }
}

/// Refuses flag values that cannot work, naming the flag.
pub fn check_recipe(a: &Recipe) -> Result<()> {
    let positive = |name: &str, v: Option<usize>| match v {
        Some(0) => bail!("--{name} must be at least 1"),
        _ => Ok(()),
    };
    positive("epochs", a.epochs)?;
    positive("iterations", a.iterations.map(|i| i as usize))?;
    positive("log-every", a.log_every.map(|i| i as usize))?;
    positive("train-per-class", a.train_per_class)?;
    positive("test-per-class", a.test_per_class)?;
    let in_range = |name: &str, v: f64, lo: f64, hi: f64, what: &str| {
        if v.is_finite() && v >= lo && v <= hi { Ok(()) } else { bail!("--{name} must be {what}, got {v}") }
    };
    if let Some(lr) = a.lr
        && !(lr > 0.0 && lr.is_finite())
    {
        bail!("--lr must be a positive number, got {lr}");
    }
    if let Some(m) = a.momentum {
        in_range("momentum", m as f64, 0.0, 1.0, "between 0 and 1")?;
    }
    if let Some(wd) = a.wd {
        in_range("wd", wd as f64, 0.0, f64::MAX, "zero or positive")?;
    }
    if !(a.gamma > 0.0 && a.gamma.is_finite()) {
        bail!("--gamma must be a positive number, got {}", a.gamma);
    }
    in_range("warmup-epochs", a.warmup_epochs, 0.0, f64::MAX, "zero or positive")?;
    in_range("label-smoothing", a.label_smoothing as f64, 0.0, 0.999_999, "at least 0 and below 1")?;
    for &m in a.milestones.iter().flatten() {
        in_range("milestones", m, 0.0, f64::MAX, "epochs, zero or positive")?;
    }
    let max = resnet::preprocess::MAX_TRANSFORM_SIDE;
    in_range("image-size", a.image_size as f64, 32.0, max as f64, &format!("between 32 and {max}"))?;
    if let Some(p) = a.pad_to {
        in_range("pad-to", p as f64, 1.0, max as f64, &format!("between 1 and {max}"))?;
    }
    Ok(())
}

/// `--schedule`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleArg {
    /// The base rate throughout.
    Constant,
    /// Divided by 10 (`--gamma`) at each of `--milestones`.
    Step,
    /// Cosine annealing to zero over the run.
    Cosine,
}

/// `--recipe`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecipeArg {
    /// He et al. 2015, sec. 4.2: batch 128, lr 0.1 divided by 10 at 32k and 48k of 64k iterations,
    /// weight decay 1e-4, pad-4 crops and flips, and a warm-up at 0.01 for ResNet-110.
    #[value(name = "he2015-cifar")]
    He2015Cifar,
}

/// `--augment`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Augment {
    /// Pad-4 random crops and flips (random resized crops and flips for image folders).
    Standard,
    /// None.
    None,
}

/// Builds a run's configuration for `arch` from a recipe and the loaded data set.
#[allow(clippy::too_many_arguments)]
pub fn config(
    a: &Recipe,
    arch: &str,
    threads: usize,
    data: DataSpec,
    ds: &resnet_train::data::Dataset,
    num_classes: Option<usize>,
    in_channels: Option<usize>,
    init: Option<PathBuf>,
) -> Result<TrainConfig> {
    check_recipe(a)?;
    let mut spec = ResNetSpec::named(arch)?;
    let recipe = a.recipe == Some(RecipeArg::He2015Cifar);
    let batch = check_batch(a.batch.unwrap_or(128))?;
    let lr = a.lr.unwrap_or(0.1);
    let augment = a.augment == Augment::Standard;
    // The data set decides classes and channels unless told otherwise.
    spec.num_classes = num_classes.unwrap_or(ds.classes.len());
    spec.in_channels = in_channels.unwrap_or(ds.channels);
    let (epochs, iterations) = match (a.epochs, a.iterations, recipe) {
        (Some(e), None, _) => (e, None),
        (None, Some(i), _) => (0, Some(i)),
        (None, None, true) => (0, Some(64_000)),
        (None, None, false) => bail!("give --epochs or --iterations (or --recipe he2015-cifar)"),
        (Some(_), Some(_), _) => unreachable!("clap makes them conflict"),
    };
    let schedule = match a.schedule.unwrap_or(if recipe { ScheduleArg::Step } else { ScheduleArg::Cosine }) {
        ScheduleArg::Constant => Schedule::Constant,
        ScheduleArg::Cosine => Schedule::Cosine { min_lr: 0.0 },
        // Milestones are resolved into iterations once the epoch length is known.
        ScheduleArg::Step => Schedule::MultiStep { milestones: Vec::new(), gamma: a.gamma },
    };
    // He et al. (2015, sec. 4.2): ResNet-110 warms up at 0.01 until the
    // training error is below 80%, then goes back to 0.1.
    let warmup_until_error = (recipe && spec.depth() >= 110).then_some((lr / 10.0, 0.8));
    let mut cfg = TrainConfig {
        spec,
        data,
        epochs,
        iterations,
        batch,
        policy: LrPolicy { lr, schedule, total_iters: 0, warmup_iters: 0, warmup_start: 0.0, warmup_until_error },
        sgd: SgdConfig {
            momentum: a.momentum.unwrap_or(0.9),
            dampening: 0.0,
            weight_decay: a.wd.unwrap_or(1e-4),
            nesterov: a.nesterov,
            no_decay_bn_bias: a.no_decay_bn,
            backbone_lr: 1.0,
        },
        label_smoothing: a.label_smoothing,
        seed: a.seed,
        threads,
        augment,
        shuffle: !a.no_shuffle,
        pad_to: a.pad_to,
        image_size: a.image_size,
        train_per_class: a.train_per_class,
        test_per_class: a.test_per_class,
        workers: a.workers.unwrap_or(1),
        init,
        log_every: a.log_every.unwrap_or(0),
        zero_init_residual: a.zero_init_residual,
        on_nan: a.on_nan.into(),
        data_fingerprint: None,
        freeze: Freeze::None,
        resize_per_224: 256,
    };
    finish_config(&mut cfg, a, ds.train.len(), matches!(ds.train.images, resnet_train::data::Images::Files(_)))?;
    Ok(cfg)
}

/// Fills in what depends on the data: milestones, warm-up, log interval, workers.
fn finish_config(cfg: &mut TrainConfig, a: &Recipe, train_len: usize, folder: bool) -> Result<()> {
    let per_epoch = train_len.div_ceil(cfg.batch) as u64;
    let total = cfg.iterations.unwrap_or(cfg.epochs as u64 * per_epoch);
    if let Schedule::MultiStep { milestones, .. } = &mut cfg.policy.schedule {
        *milestones = match &a.milestones {
            Some(m) => m.iter().map(|&e| (e * per_epoch as f64).round() as u64).collect(),
            None => vec![total / 2, total * 3 / 4],
        };
    }
    cfg.policy.warmup_iters = (a.warmup_epochs * per_epoch as f64).round() as u64;
    if cfg.log_every == 0 {
        cfg.log_every = (per_epoch / 20).max(1);
    }
    if a.workers.is_none() && folder {
        cfg.workers = (2 * cfg.threads).max(2);
    }
    if cfg.workers == 0 || cfg.workers > 256 {
        bail!("--workers must be between 1 and 256");
    }
    Ok(())
}

/// Progress bars and epoch lines.
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    epochs: usize,
    /// Shown after the step figures (an experiment's overall progress).
    extra: String,
}

impl Progress {
    /// Bars on stderr when it is a terminal and not `quiet`.
    pub fn new(quiet: bool) -> Self {
        Self { bar: None, quiet, epochs: 0, extra: String::new() }
    }

    /// Sets text shown after the step figures.
    pub fn message_bar(&mut self, s: &str) {
        self.extra = s.to_string();
    }

    /// Removes the bar.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Progress {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, steps: usize, start: usize) {
        self.epochs = epochs;
        if self.quiet {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(steps as u64), ProgressDrawTarget::stderr_with_hz(8));
        bar.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:28.cyan/blue}] {pos}/{len} {msg} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
        bar.set_position(start as u64);
        bar.enable_steady_tick(Duration::from_millis(250));
        self.bar = Some(bar);
    }

    fn step(&mut self, r: &StepReport) {
        if let Some(bar) = &self.bar {
            bar.set_position(r.step as u64);
            let loss = r.mean_loss.map_or(String::new(), |l| format!("loss {l:.4}"));
            let acc = r.accuracy.map_or(String::new(), |a| format!(" acc {:5.1}%", 100.0 * a));
            let ips = if r.images_per_second.is_finite() {
                format!(" {:4.0} img/s", r.images_per_second)
            } else {
                String::new()
            };
            bar.set_message(format!("{loss}{acc}{ips} lr {:.4}  {}", r.lr, self.extra));
        }
    }

    fn eval_progress(&mut self, done: usize, total: usize) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("evaluating {done}/{total}"));
        }
    }

    fn epoch_end(&mut self, epoch: usize, test: &TestPoint) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        println!(
            "epoch {:>3}/{}  iter {:>6}  train loss {:.4} err {:5.2}%  test loss {:.4} err {:5.2}% (top-5 err {:.2}%)  {:.0} img/s",
            epoch + 1,
            self.epochs,
            test.iteration,
            test.train_loss,
            100.0 * test.train_error,
            test.loss,
            100.0 * test.error,
            100.0 * test.top5_error,
            test.images_per_second
        );
    }

    fn message(&mut self, msg: &str) {
        match &self.bar {
            // A hidden bar (output not a terminal) would drop the line.
            Some(bar) if !bar.is_hidden() => bar.println(msg),
            _ => println!("{msg}"),
        }
    }
}

/// Stops the run on Ctrl-C, SIGTERM or SIGHUP (what `docker stop`, Slurm and systemd send): the
/// trainer saves a checkpoint; a second signal exits at once.
pub fn install_ctrlc(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            eprintln!("error: interrupted twice: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: saving a checkpoint (Ctrl-C again to exit at once)");
    });
}

/// Runs a trainer to the end with progress output; maps interruption to a message.
pub fn drive(trainer: &mut Trainer<Cpu>, quiet: bool) -> Result<TrainSummary> {
    install_ctrlc(trainer.interrupt_flag());
    let mut progress = Progress::new(quiet);
    match trainer.run(&mut progress) {
        Err(resnet::Error::Interrupted) => {
            progress.finish();
            let dir = trainer.out_dir().to_path_buf();
            eprintln!(
                "error: interrupted at iteration {}: checkpoint saved; continue with `resnet train --resume {}`",
                trainer.state.iteration,
                dir.display()
            );
            std::process::exit(130);
        }
        other => Ok(other?),
    }
}

pub fn run(a: Args, m: &clap::ArgMatches) -> Result<()> {
    check_resume_flags(&a, m)?;
    check_recipe(&a.recipe)?;
    let cpu = a.recipe.compute.backend()?;
    let mut trainer = match &a.resume {
        Some(dir) => {
            let mut t = Trainer::resume(dir, &cpu, a.recipe.epochs)
                .with_context(|| format!("cannot resume from {}", dir.display()))?;
            if m.value_source("on_nan") == Some(clap::parser::ValueSource::CommandLine) {
                t.config.on_nan = a.recipe.on_nan.into();
            }
            if t.config.threads != cpu.threads() {
                eprintln!(
                    "note: the run started with {} and continues with {}: the result will not be bit-identical",
                    crate::util::count(t.config.threads as u64, "thread"),
                    cpu.threads()
                );
            }
            println!("resuming {} at epoch {}, iteration {}", dir.display(), t.state.epoch + 1, t.state.iteration);
            t
        }
        None => {
            let spec: DataSpec = a.data.as_deref().expect("clap requires --data").parse()?;
            let r = &a.recipe;
            let data = load_data(&spec, r.train_per_class, r.test_per_class)?;
            let arch = a.arch.as_deref().expect("clap requires --arch");
            let init = a.init.as_deref().map(crate::weights::resolve).transpose()?;
            let (init, entry) = init.map_or((None, None), |(p, e)| (Some(p), e));
            let mut cfg = config(r, arch, cpu.threads(), spec, &data, a.num_classes, a.in_channels, init)?;
            // Named weights bring their evaluation preprocessing (resize 232 for torchvision's V2 weights).
            if let Some(e) = entry {
                cfg.resize_per_224 = resnet::preprocess::Transform::preset(&e.preset)?.resize;
            }
            if let Some(f) = a.freeze {
                cfg.freeze = f.into();
            }
            if let Some(x) = a.lr_backbone {
                if !(x >= 0.0 && x.is_finite()) {
                    bail!("--lr-backbone must be zero or positive, got {x}");
                }
                cfg.sgd.backbone_lr = x;
            }
            if (a.freeze.is_some() || a.lr_backbone.is_some()) && cfg.init.is_none() {
                eprintln!(
                    "warning: --freeze and --lr-backbone are for fine-tuning; without --init the frozen part stays random"
                );
            }
            println!(
                "training {} ({} parameters) on {}: {} training and {} test images, {} classes, {}",
                cfg.spec.name,
                crate::util::human(resnet::model::Graph::new(&cfg.spec)?.num_params() as f64),
                cfg.data,
                data.train.len(),
                data.test.len(),
                cfg.spec.num_classes,
                cpu.describe()
            );
            resnet_train::train::check_fresh_out_dir(&a.out, a.force)?;
            // The memory plan, checked before the run's folder is touched.
            let mut probe = resnet::model::Network::new(&cfg.spec, &cpu)?;
            probe.set_freeze(cfg.freeze)?;
            let input = resnet_train::train::input_size(&cfg, &data);
            let momentum = cfg.sgd.momentum > 0.0;
            let choice = crate::memory::choose(&probe, cfg.batch, input, momentum, &a.memory)?;
            drop(probe);
            let mut t = Trainer::new(cfg, &cpu, data, &a.out)?;
            t.net.set_checkpoint_segments(choice.segments);
            t
        }
    };
    if a.resume.is_some() {
        // A resumed run chooses again: the flags are not part of its recipe (results do not depend on them).
        let momentum = trainer.config.sgd.momentum > 0.0;
        let input = resnet_train::train::input_size(&trainer.config, trainer.data());
        let choice = crate::memory::choose(&trainer.net, trainer.config.batch, input, momentum, &a.memory)?;
        trainer.net.set_checkpoint_segments(choice.segments);
    }
    let plan = trainer.memory_plan(trainer.net.checkpoint_segments())?;
    println!(
        "memory: planned peak {}{}",
        crate::memory::bytes(plan.total()),
        match plan.segments {
            0 => String::new(),
            k => format!(", {} recomputed in the backward pass", crate::util::count(k as u64, "segment")),
        }
    );
    let summary = drive(&mut trainer, a.recipe.quiet)?;
    if let Some(t) = &summary.test {
        println!(
            "done: {}, {} in {:.1} s of training; test accuracy: {:.2}% (best {:.2}%)",
            crate::util::count(summary.epochs as u64, "epoch"),
            crate::util::count(summary.iterations, "iteration"),
            summary.train_seconds,
            100.0 * (1.0 - t.error),
            100.0 * (1.0 - summary.best_test_error.unwrap_or(t.error))
        );
    }
    println!("checkpoints, metrics and curves in {}", trainer.out_dir().display());
    Ok(())
}
