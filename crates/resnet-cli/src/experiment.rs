//! `resnet experiment`: the residual-learning lab.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Result, bail};
use resnet::backend::{Backend, Cpu};
use resnet::model::ShortcutKind;
use resnet_train::data::DataSpec;
use resnet_train::experiment::{self as lab, LabObserver, LayerProfile, RunResult, Variant, pct};
use resnet_train::plot::{Panel, Series};
use resnet_train::train::{Observer, TrainConfig, load_data};

use crate::train::{Progress, Recipe, config};

/// Arguments of `resnet experiment`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    kind: Kind,
}

#[derive(clap::Subcommand)]
enum Kind {
    /// Plain vs residual nets of several depths, one recipe (He et al. 2015, Figure 6).
    Degradation {
        /// Depths (6n+2).
        #[arg(long, value_delimiter = ',', default_value = "20,32,44,56")]
        depths: Vec<usize>,
        #[command(flatten)]
        common: Common,
    },
    /// Per-layer gradient norms and activation scales at initialisation and after K steps.
    Gradients {
        /// Architectures.
        #[arg(long, value_delimiter = ',', default_value = "plain56,resnet56")]
        archs: Vec<String>,
        /// Training steps before the second measurement.
        #[arg(long, default_value_t = 500)]
        steps: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Shortcut options A, B, C on one net (He et al. 2015, Table 3).
    Shortcuts {
        /// The net.
        #[arg(long, default_value = "resnet20")]
        arch: String,
        /// Options to compare.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "a,b,c")]
        options: Vec<ShortcutOption>,
        #[command(flatten)]
        common: Common,
    },
    /// Original vs pre-activation units (He et al. 2016).
    Preact {
        /// Depths: 6n+2 below 164 (basic units), 9n+2 from 164 (bottlenecks).
        #[arg(long, value_delimiter = ',', default_value = "110,164")]
        depths: Vec<usize>,
        #[command(flatten)]
        common: Common,
    },
}

/// A shortcut option of He et al. 2015, Table 3.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ShortcutOption {
    /// Identity; zero-padded channels and subsampling where shapes change.
    A,
    /// Identity; a projection where shapes change.
    B,
    /// A projection in every block.
    C,
}

impl From<ShortcutOption> for ShortcutKind {
    fn from(o: ShortcutOption) -> Self {
        match o {
            ShortcutOption::A => ShortcutKind::A,
            ShortcutOption::B => ShortcutKind::B,
            ShortcutOption::C => ShortcutKind::C,
        }
    }
}

#[derive(clap::Args)]
struct Common {
    /// Data: KIND:PATH.
    #[arg(long)]
    data: String,
    /// Output folder (resumes what it holds).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    recipe: Recipe,
    #[command(flatten)]
    memory: crate::memory::MemoryFlags,
}

/// Overall progress line plus the per-run bars.
struct Lab {
    progress: Progress,
    quiet: bool,
}

impl LabObserver for Lab {
    fn run_start(&mut self, i: usize, total: usize, name: &str, resumed: bool) {
        println!("run {}/{total}: {name}{}", i + 1, if resumed { " (resuming)" } else { "" });
    }
    fn overall(&mut self, done: f64, eta: Option<f64>) {
        if !self.quiet {
            let eta = eta.map_or("?".into(), |s| format!("{:.0} min", s / 60.0));
            self.progress.message_bar(&format!("experiment {:.1}% done, ETA {eta}", 100.0 * done));
        }
    }
    fn run_observer(&mut self) -> &mut dyn Observer {
        &mut self.progress
    }
    fn run_end(&mut self, r: &RunResult) {
        if let Some(why) = &r.diverged {
            println!("  {}: diverged ({:.0} s): {why}", r.variant.label, r.train_seconds);
            return;
        }
        println!(
            "  {}: training error {} (whole set {}), test error {} ({:.0} s)",
            r.variant.label,
            pct(r.final_train_error),
            pct(r.train_set_error),
            pct(r.test_error),
            r.train_seconds
        );
    }
}

fn base_config(common: &Common, cpu: &Cpu) -> Result<(TrainConfig, resnet_train::data::Dataset)> {
    let spec: DataSpec = common.data.parse()?;
    let r = &common.recipe;
    let ds = load_data(&spec, r.train_per_class, r.test_per_class)?;
    let cfg = config(r, "resnet20", cpu.threads(), spec, &ds, None, None, None)?;
    Ok((cfg, ds))
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("resnet {}", args.join(" "))
}

fn budget(cfg: &TrainConfig, ds: &resnet_train::data::Dataset) -> String {
    let per_epoch = ds.train.len().div_ceil(cfg.batch);
    let iters = cfg.iterations.unwrap_or((cfg.epochs * per_epoch) as u64);
    format!(
        "{} iterations of batch {} ({:.1} epochs of {} training images), {} schedule from lr {}{}, weight decay {}, {}augmentation, seed {}",
        iters,
        cfg.batch,
        iters as f64 / per_epoch as f64,
        ds.train.len(),
        match cfg.policy.schedule {
            resnet_train::optim::Schedule::Constant => "constant",
            resnet_train::optim::Schedule::MultiStep { .. } => "step",
            resnet_train::optim::Schedule::Cosine { .. } => "cosine",
        },
        cfg.policy.lr,
        match (cfg.policy.warmup_iters, cfg.policy.warmup_until_error) {
            (_, Some((lr, until))) => format!(" (lr {lr} until the training error is below {:.0}%)", until * 100.0),
            (0, None) => String::new(),
            (n, None) => format!(" after a linear warm-up over {n} iterations"),
        },
        cfg.sgd.weight_decay,
        if cfg.augment { "" } else { "no " },
        cfg.seed
    )
}

fn install_interrupt() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    crate::train::install_ctrlc(flag.clone());
    flag
}

fn run_lab(cpu: &Cpu, cfg: &TrainConfig, variants: &[Variant], c: &Common) -> Result<Vec<RunResult>> {
    let flag = install_interrupt();
    let quiet = c.recipe.quiet;
    let mut obs = Lab { progress: Progress::new(quiet), quiet };
    // Each run's memory plan, checked (and segments chosen) before it starts.
    let momentum = cfg.sgd.momentum > 0.0;
    let mut segments = |net: &resnet::model::Network<Cpu>, batch: usize, input: (usize, usize)| {
        let choice = crate::memory::choose(net, batch, input, momentum, &c.memory)
            .map_err(|e| resnet::Error::Invalid(e.to_string()))?;
        if choice.segments > 0 {
            println!(
                "  {}: planned peak {}, {} recomputed",
                net.spec.name,
                crate::memory::bytes(choice.plan.total()),
                crate::util::count(choice.segments as u64, "segment")
            );
        }
        Ok(choice.segments)
    };
    match lab::run_variants(cpu, cfg, variants, &c.out, &mut obs, &flag, &mut segments) {
        Err(resnet::Error::Interrupted) => {
            eprintln!(
                "error: interrupted: the run in progress saved a checkpoint; run the same command again to resume"
            );
            std::process::exit(130);
        }
        other => Ok(other?),
    }
}

fn total_seconds(rs: &[RunResult]) -> f64 {
    rs.iter().map(|r| r.train_seconds).sum()
}

pub fn run(a: Args) -> Result<()> {
    match a.kind {
        Kind::Degradation { depths, common } => degradation(&depths, &common),
        Kind::Gradients { archs, steps, common } => gradients(&archs, steps, &common),
        Kind::Shortcuts { arch, options, common } => shortcuts(&arch, &options, &common),
        Kind::Preact { depths, common } => preact(&depths, &common),
    }
}

fn degradation(depths: &[usize], c: &Common) -> Result<()> {
    if depths.is_empty() || depths.iter().any(|d| *d < 8 || (d - 2) % 6 != 0) {
        bail!("--depths must be CIFAR depths 6n+2 (8, 14, 20, 32, 44, 56, 110, ...)");
    }
    let cpu = c.recipe.compute.backend()?;
    let (cfg, ds) = base_config(c, &cpu)?;
    let variants = lab::degradation_variants(depths, ds.classes.len(), cfg.spec.in_channels)?;
    let rs = run_lab(&cpu, &cfg, &variants, c)?;
    let panels = lab::error_panels(&rs, &[("plain", "plain networks"), ("residual", "ResNets")]);
    lab::plot_panels(&c.out.join("degradation"), &panels)?;
    let get = |g: &str| rs.iter().filter(|r| r.variant.group == g).collect::<Vec<_>>();
    let (plain, res) = (get("plain"), get("residual"));
    let mut md = format!("# Degradation: plain vs residual networks on {}\n\n", cfg.data.kind_name());
    md += &format!(
        "Command: `{}`\n\nBudget: {}. Training time: {:.0} s for {} runs on {}.\n\n",
        command_line(),
        budget(&cfg, &ds),
        total_seconds(&rs),
        rs.len(),
        cpu.describe()
    );
    md += "![curves](degradation.png)\n\nThin lines: training error (mean over logged intervals, augmented batches); bold: test error.\n\n";
    md += "| depth | plain: training error | plain: training set (eval) | plain: test error | ResNet: training error | ResNet: training set (eval) | ResNet: test error |\n|---|---|---|---|---|---|---|\n";
    for (i, d) in depths.iter().enumerate() {
        md += &format!(
            "| {d} | {} | {} | {} | {} | {} | {} |\n",
            pct(plain[i].final_train_error),
            pct(plain[i].train_set_error),
            pct(plain[i].test_error),
            pct(res[i].final_train_error),
            pct(res[i].train_set_error),
            pct(res[i].test_error)
        );
    }
    // A difference under one percentage point is within run-to-run noise here.
    let noise = 0.01;
    let trend = |rs: &[&RunResult]| -> (f64, bool) {
        let e: Vec<f64> = rs.iter().map(|r| r.train_set_error).collect();
        (e[e.len() - 1] - e[0], e.windows(2).all(|w| w[1] > w[0]))
    };
    let (plain_d, plain_mono) = trend(&plain);
    let (res_d, res_mono) = trend(&res);
    let (d0, d1) = (depths[0], depths[depths.len() - 1]);
    let (plain_up, res_up) = (plain_d > noise, res_d > noise);
    let words = |d: f64, other: String| {
        if d.is_nan() {
            format!("no figure to compare with {other} (a run diverged)")
        } else if d > noise {
            format!("a training error {:.2} points higher than {other}", 100.0 * d)
        } else if d < -noise {
            format!("a training error {:.2} points lower than {other}", -100.0 * d)
        } else {
            format!("about the same training error as {other} ({:+.2} points, within noise)", 100.0 * d)
        }
    };
    md += "\n## Findings\n\n";
    // The paper's finding has two halves: the deep plain net trains worse than
    // the shallow one, and the deep residual net trains better than both.
    let deep_gap = res[res.len() - 1].train_set_error - plain[plain.len() - 1].train_set_error;
    let diverged = |rs: &[&RunResult]| rs.last().is_some_and(|r| r.diverged.is_some());
    let verdict = if diverged(&plain) && diverged(&res) {
        "The deepest nets both diverged: nothing to compare at this learning rate."
    } else if diverged(&plain) && !diverged(&res) {
        "The deepest plain net diverged (its loss stopped being finite) where the ResNet of the same depth trains: the degradation problem in its most extreme form."
    } else if plain_up && res_d < -noise && deep_gap < -noise {
        "Both halves of the paper's finding show: depth hurts the plain net and helps the residual one."
    } else if plain_up && deep_gap < -noise {
        "The shortcuts help at depth (the deep ResNet trains better than the deep plain net), but at this budget the deep ResNet has not yet overtaken the shallow one."
    } else if plain_up && res_up {
        "Both deep nets are behind their shallow versions at this budget, the ResNet as much as the plain net: depth costs optimisation time here, and this is not yet the degradation problem, which would need the deep residual net to train better."
    } else if plain_up {
        "Depth hurts the plain net, but at this budget the deep ResNet does not yet train better than the deep plain net."
    } else {
        "The degradation problem does not show at this budget."
    };
    for r in rs.iter().filter(|r| r.diverged.is_some()) {
        md += &format!(
            "- **{} diverged** after {} iterations: {}\n",
            r.variant.label,
            r.iterations,
            r.diverged.as_deref().unwrap_or_default()
        );
    }
    md += &format!(
        "- **Plain nets**: plain-{d1} ended with {} ({} vs {} on the whole training set, evaluation mode){}.\n",
        words(plain_d, format!("plain-{d0}")),
        pct(plain[plain.len() - 1].train_set_error),
        pct(plain[0].train_set_error),
        if plain_mono && depths.len() > 2 { ", rising with every step in depth" } else { "" },
    );
    md += &format!(
        "- **ResNets**: ResNet-{d1} ended with {} ({} vs {}){}.\n",
        words(res_d, format!("ResNet-{d0}")),
        pct(res[res.len() - 1].train_set_error),
        pct(res[0].train_set_error),
        if res_mono && depths.len() > 2 { ", rising with every step in depth" } else { "" },
    );
    md += &format!("- **Verdict**: {verdict}\n");
    md += &format!(
        "- **At each depth**, the ResNet's training error minus the plain net's: {}.\n",
        depths
            .iter()
            .enumerate()
            .map(|(i, d)| format!("{d}: {:+.2} points", 100.0 * (res[i].train_set_error - plain[i].train_set_error)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    md += "- **The paper** (He et al. 2015, CIFAR-10, Figure 6 and Table 6; 64k iterations of batch 128, about 164 epochs): ResNet-20/32/44/56 reach 8.75/7.51/7.17/6.97% test error, while the plain nets' training and test errors rise with depth.\n";
    md += "- **One seed per net**: short runs of deep nets vary from run to run by several points (even runs that differ only in the rounding of their kernels); repeat with another `--seed` before reading much into a gap of a few points.\n";
    if !(plain_up && res_d < -noise) {
        md += "- **Budget**: the gap between plain and residual nets widens with training; the paper's curves separate clearly after a few thousand iterations and keep separating until the end of its 64k-iteration schedule. A longer run (`--epochs 30` or more on the full set) would be needed to see the paper's ordering here.\n";
    }
    finish(c, "degradation", &md, serde_json::json!({"depths": depths, "config": cfg, "runs": rs}))
}

/// Writes `report.md` and `results.json` (`fields` plus the experiment's name
/// and command line) and prints the report.
fn finish(c: &Common, experiment: &str, md: &str, mut fields: serde_json::Value) -> Result<()> {
    lab::write_report(&c.out, md)?;
    fields["experiment"] = experiment.into();
    fields["command"] = command_line().into();
    lab::write_results(&c.out, &fields)?;
    println!("\n{md}\nreport: {}", c.out.join("report.md").display());
    Ok(())
}

fn variants_report(
    title: &str,
    c: &Common,
    cfg: &TrainConfig,
    ds: &resnet_train::data::Dataset,
    rs: &[RunResult],
    cpu: &Cpu,
    extra: &str,
) -> String {
    let mut md = format!("# {title} on {}\n\n", cfg.data.kind_name());
    md += &format!(
        "Command: `{}`\n\nBudget: {}. Training time: {:.0} s for {} runs on {}.\n\n",
        command_line(),
        budget(cfg, ds),
        total_seconds(rs),
        rs.len(),
        cpu.describe()
    );
    md += "![curves](curves.png)\n\n| variant | parameters | training error | training set (eval) | test error | best test error |\n|---|---|---|---|---|---|\n";
    for r in rs {
        md += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.variant.label,
            r.params,
            pct(r.final_train_error),
            pct(r.train_set_error),
            pct(r.test_error),
            pct(r.best_test_error)
        );
    }
    md += extra;
    let _ = c;
    md
}

fn one_panel(rs: &[RunResult], title: &str) -> Vec<Panel> {
    vec![lab::error_panel(&rs.iter().collect::<Vec<_>>(), title)]
}

fn shortcuts(arch: &str, options: &[ShortcutOption], c: &Common) -> Result<()> {
    let opts: Vec<ShortcutKind> = options.iter().map(|&o| o.into()).collect();
    let cpu = c.recipe.compute.backend()?;
    let (cfg, ds) = base_config(c, &cpu)?;
    let variants = lab::shortcut_variants(arch, &opts, ds.classes.len(), cfg.spec.in_channels)?;
    let rs = run_lab(&cpu, &cfg, &variants, c)?;
    lab::plot_panels(&c.out.join("curves"), &one_panel(&rs, &format!("{arch}: shortcut options")))?;
    let best = rs
        .iter()
        .min_by(|a, b| a.test_error.total_cmp(&b.test_error))
        .map(|r| r.variant.label.clone())
        .unwrap_or_default();
    let extra = format!(
        "\n## Findings\n\n- Lowest test error: {best}.\n- The paper (He et al. 2015, Table 3, ResNet-34 on ImageNet, top-1 error 10-crop): A 25.03%, B 24.52%, C 24.19% — B slightly better than A (A's zero-padded channels learn no residual), C marginally better than B at many more parameters; the authors conclude projections are not essential for addressing degradation.\n"
    );
    let md = variants_report(&format!("Shortcut options for {arch}"), c, &cfg, &ds, &rs, &cpu, &extra);
    finish(c, "shortcuts", &md, serde_json::json!({"config": cfg, "runs": rs}))
}

fn preact(depths: &[usize], c: &Common) -> Result<()> {
    let cpu = c.recipe.compute.backend()?;
    let (cfg, ds) = base_config(c, &cpu)?;
    let variants = lab::preact_variants(depths, ds.classes.len(), cfg.spec.in_channels)?;
    let rs = run_lab(&cpu, &cfg, &variants, c)?;
    lab::plot_panels(&c.out.join("curves"), &one_panel(&rs, "original vs pre-activation units"))?;
    let mut extra = String::from("\n## Findings\n\n");
    for pair in rs.chunks(2) {
        if let [o, p] = pair {
            extra += &format!(
                "- {} vs {}: test error {} vs {}, training error {} vs {}.\n",
                o.variant.label,
                p.variant.label,
                pct(o.test_error),
                pct(p.test_error),
                pct(o.train_set_error),
                pct(p.train_set_error)
            );
        }
    }
    extra += "- The paper (He et al. 2016, Table 3, CIFAR-10): ResNet-110 6.61% vs 6.37% and ResNet-164 5.93% vs 5.46% test error, original vs pre-activation; the gain grows with depth (ResNet-1001: 7.61% vs 4.92%).\n";
    let md = variants_report("Original vs pre-activation units", c, &cfg, &ds, &rs, &cpu, &extra);
    finish(c, "preact", &md, serde_json::json!({"config": cfg, "runs": rs}))
}

fn gradients(archs: &[String], steps: u64, c: &Common) -> Result<()> {
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    let cpu = c.recipe.compute.backend()?;
    // The measurement's K steps are the training budget unless one is given.
    let mut c2 =
        Common { data: c.data.clone(), out: c.out.clone(), recipe: c.recipe.clone(), memory: c.memory.clone() };
    if c2.recipe.epochs.is_none() && c2.recipe.iterations.is_none() {
        c2.recipe.iterations = Some(steps);
    }
    let c = &c2;
    let (cfg, ds) = base_config(c, &cpu)?;
    std::fs::create_dir_all(&c.out)?;
    let cache = |a: &str| c.out.join(format!("profile-{a}-{steps}.json"));
    let mut profiles: Vec<(LayerProfile, LayerProfile)> = Vec::new();
    let mut progress = Progress::new(c.recipe.quiet);
    for (i, a) in archs.iter().enumerate() {
        // Finished architectures are read back: the experiment resumes.
        if let Some(p) = std::fs::read_to_string(cache(a)).ok().and_then(|s| serde_json::from_str(&s).ok()) {
            println!("arch {}/{}: {a} (done)", i + 1, archs.len());
            profiles.push(p);
            continue;
        }
        println!("arch {}/{}: {a}, {steps} steps", i + 1, archs.len());
        let mut spec = resnet::model::ResNetSpec::named(a)?;
        spec.num_classes = ds.classes.len();
        spec.in_channels = cfg.spec.in_channels;
        let p = lab::gradients(&cpu, &cfg, &spec, steps, &mut progress)?;
        progress.finish();
        resnet::io::atomic::write(&cache(a), serde_json::to_string(&p)?.as_bytes())?;
        profiles.push(p);
    }
    let line = |f: &dyn Fn(&LayerProfile) -> Vec<f64>, which: usize| -> Vec<Series> {
        profiles
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let prof = if which == 0 { &p.0 } else { &p.1 };
                Series {
                    name: prof.arch.clone(),
                    points: f(prof).iter().enumerate().map(|(i, &v)| (i as f64 + 1.0, v)).collect(),
                    color: k,
                    bold: prof.arch.starts_with("resnet"),
                }
            })
            .collect()
    };
    let panel = |title: &str, x: &str, y: &str, series| Panel {
        title: title.into(),
        x_label: x.into(),
        y_label: y.into(),
        log_y: true,
        series,
    };
    let gn = |p: &LayerProfile| p.grad_norm.clone();
    let st = |p: &LayerProfile| p.activation_std.clone();
    lab::plot_panels(
        &c.out.join("gradients"),
        &[
            panel("gradient norm at initialisation", "layer (input to output)", "||dL/dW||", line(&gn, 0)),
            panel(&format!("gradient norm after {steps} steps"), "layer (input to output)", "||dL/dW||", line(&gn, 1)),
        ],
    )?;
    lab::plot_panels(
        &c.out.join("activations"),
        &[
            panel("activation std at initialisation", "unit (input to output)", "std", line(&st, 0)),
            panel(&format!("activation std after {steps} steps"), "unit (input to output)", "std", line(&st, 1)),
        ],
    )?;
    let mut md = format!("# Gradients through deep plain and residual nets on {}\n\n", cfg.data.kind_name());
    md += &format!(
        "Command: `{}`\n\nOne probe batch of {} training images (training-mode batch norm); gradient of the mean cross-entropy with respect to every convolution and the classifier, at initialisation (He et al.'s initialisation) and after {steps} SGD steps of the recipe: {}.\n\n",
        command_line(),
        cfg.batch,
        budget(&cfg, &ds)
    );
    md += "![gradients](gradients.png)\n\n![activations](activations.png)\n\n";
    md += &format!(
        "| net | weight layers | first conv norm (init) | last conv norm (init) | fall, last to first conv, in orders of magnitude (init) | the same after {steps} steps |\n|---|---|---|---|---|---|\n"
    );
    for (a, b) in &profiles {
        let convs = a.grad_norm.len().saturating_sub(1).max(1);
        md += &format!(
            "| {} | {} | {:.3e} | {:.3e} | {:.2} | {:.2} |\n",
            a.arch,
            a.layers.len(),
            a.grad_norm[0],
            a.grad_norm[convs - 1],
            a.orders_of_magnitude,
            b.orders_of_magnitude
        );
    }
    md += "\n## Findings\n\n";
    for (a, b) in &profiles {
        let verb = |o: f64| {
            if o > 0.0 {
                format!("falls by {o:.2} orders of magnitude")
            } else {
                format!("grows by {:.2} orders of magnitude", -o)
            }
        };
        md += &format!(
            "- {}: from the last convolution to the first, the gradient norm {} at initialisation and {} after {steps} steps.\n",
            a.arch,
            verb(a.orders_of_magnitude),
            verb(b.orders_of_magnitude)
        );
    }
    md += "\nA negative fall is growth: the gradient gets larger towards the input.\n";
    // The widest swing (at initialisation or after training) per kind of net.
    let swing = |plain: bool| {
        profiles
            .iter()
            .filter(|(a, _)| a.arch.starts_with("plain") == plain)
            .map(|(a, b)| a.orders_of_magnitude.abs().max(b.orders_of_magnitude.abs()))
            .fold(None, |m: Option<f64>, o| Some(m.map_or(o, |m| m.max(o))))
    };
    if let (Some(p), Some(r)) = (swing(true), swing(false)) {
        md += &format!(
            "\nWidest change of the gradient norm between the last and the first convolution: {p:.2} orders of magnitude in a plain net, {r:.2} in a residual net.\n"
        );
    }
    finish(c, "gradients", &md, serde_json::json!({"config": cfg, "steps": steps, "profiles": profiles}))
}
