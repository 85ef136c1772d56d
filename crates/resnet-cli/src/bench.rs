//! `resnet bench`: our side of the speed comparisons in bench/.

use std::time::Instant;

use anyhow::{Result, bail};
use resnet::backend::{Backend, Precision};
use resnet::infer::quant::QuantModel;
use resnet::infer::{CompiledModel, InferencePlan};
use resnet::model::{Mode, Network, ResNetSpec, Stem};
use resnet::rng::Rng;
use resnet::tensor::Tensor;
use resnet_train::optim::{Sgd, SgdConfig};

use crate::util::{Compute, PrecisionArg, PrecisionFlag, check_batch, precision};

/// Arguments of `resnet bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Architecture.
    #[arg(long, required_unless_present = "peak")]
    arch: Option<String>,
    /// Measure the machine's peak f32 multiply-add rate instead (a register-only loop).
    #[arg(long)]
    peak: bool,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[command(flatten)]
    compute: Compute,
    /// What to time.
    #[arg(long, value_enum, default_value_t = BenchMode::Infer)]
    mode: BenchMode,
    /// Arithmetic (infer mode).
    #[command(flatten)]
    precision: PrecisionFlag,
    /// Input side (default 224 for ImageNet nets, 32 for CIFAR nets).
    #[arg(long)]
    input: Option<usize>,
    /// Timed iterations (after warm-up).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Warm-up iterations.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Load these weights instead of random ones.
    #[arg(long)]
    weights: Option<std::path::PathBuf>,
    /// Write the last logits here (JSON rows), to compare engines.
    #[arg(long)]
    logits_out: Option<std::path::PathBuf>,
    /// Print the time of each operation of the inference plan (infer mode).
    #[arg(long)]
    profile: bool,
    /// Train mode: freeze the network up to this part, as `train --freeze` does.
    #[arg(long, value_enum)]
    freeze: Option<crate::train::FreezeArg>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Train mode: the training memory flags, as `train` takes them.
    #[command(flatten)]
    memory: crate::memory::MemoryFlags,
}

/// Peak resident memory of this process in MB (Linux; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

pub fn run(a: Args) -> Result<()> {
    if a.peak {
        let cpu = a.compute.backend()?;
        let g = resnet::backend::cpu::peak_gflops(&cpu);
        if a.json {
            println!("{}", serde_json::json!({"peak_gflops": g, "threads": cpu.threads(), "backend": cpu.describe()}));
        } else {
            println!("peak f32 rate, {}: {g:.0} GFLOP/s", cpu.describe());
        }
        return Ok(());
    }
    let arch = a.arch.clone().expect("clap requires --arch");
    let batch = check_batch(a.batch)?;
    let train = a.mode == BenchMode::Train;
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let cpu = a.compute.backend()?;
    if train && a.precision.precision != PrecisionArg::F32 {
        bail!("--precision bf16 and int8 are for inference; training runs in f32");
    }
    let precision = precision(a.precision.precision, &cpu);
    let mut spec = ResNetSpec::named(&arch)?;
    let sd = match &a.weights {
        Some(w) => Some(resnet::io::read_state_dict(&crate::weights::resolve(w)?.0)?),
        None => None,
    };
    // An int8 model (from `resnet quantize`) is compiled from its file as it is.
    let quantized = sd.as_ref().filter(|sd| QuantModel::is_quantized(sd));
    if precision == Precision::Int8 && quantized.is_none() {
        bail!("--precision int8 needs quantized weights: --weights W8 from `resnet quantize`");
    }
    if let Some(sd) = quantized {
        if let Some(t) = sd.get("fc.weight") {
            spec.num_classes = t.shape[0];
        }
        if let Some(t) = sd.get("conv1.weight") {
            spec.in_channels = t.shape[1];
        }
    }
    let side = a.input.unwrap_or(if spec.stem == Stem::Imagenet { 224 } else { 32 });
    if side == 0 || side > 4096 {
        bail!("--input must be between 1 and 4096");
    }
    let mut net = Network::new(&spec, &cpu)?;
    net.init_kaiming(&mut Rng::new(0), false)?;
    if let Some(f) = a.freeze {
        if !train {
            bail!("--freeze is for --mode train");
        }
        net.set_freeze(f.into())?;
    }
    if let Some(sd) = sd.as_ref().filter(|_| quantized.is_none()) {
        resnet::io::load_state_dict(&mut net, sd, resnet::io::LoadMode::Strict)?;
    }
    // The formula input of tools/make_fixtures.py (unit variance), so peers can use the same values.
    let c = spec.in_channels;
    let data: Vec<f32> = (0..batch * c * side * side)
        .map(|i| (resnet::model::init::formula_u("input", i) * 3.4641016151377544) as f32)
        .collect();
    let x = Tensor::from_nchw(&cpu, batch, c, side, side, &data)?;
    let labels: Vec<u32> = (0..batch).map(|i| (i % spec.num_classes) as u32).collect();
    let labels = cpu.upload(&labels)?;
    let mut metrics = cpu.alloc(resnet::backend::DType::F32, 2)?;
    let macs = net.summary(side, side)?.macs as f64;
    let sgd_config = SgdConfig::default();
    if !train && (a.memory.checkpoint_segments.is_some() || a.memory.memory_budget.is_some()) {
        bail!("--checkpoint-segments and --memory-budget are for --mode train");
    }
    let memory = if train {
        let c = crate::memory::choose(&net, batch, (side, side), sgd_config.momentum > 0.0, &a.memory)?;
        net.set_checkpoint_segments(c.segments);
        Some(c.plan)
    } else {
        None
    };
    let mut sgd: Sgd<resnet::backend::Cpu> = Sgd::new(sgd_config)?;
    let mut dl = Tensor::empty();
    // Inference runs the compiled plan; the network itself is then dropped (as a deployment would).
    let mut plan = match (train, quantized) {
        (true, _) => None,
        (false, Some(sd)) => {
            let model = CompiledModel::new(&cpu, net.graph(), sd, precision)?;
            Some(InferencePlan::from_model(std::sync::Arc::new(model)))
        }
        (false, None) => Some(InferencePlan::with_precision(&mut net, precision)?),
    };
    if let (true, Some(p)) = (a.profile, plan.as_mut()) {
        p.enable_profiling();
    }
    let mut net = if train { Some(net) } else { None };
    let mut logits = Vec::new();
    let mut step = |keep: bool| -> Result<()> {
        if let Some(net) = net.as_mut() {
            net.zero_grad()?;
            let out = net.forward(&x, Mode::Train)?;
            dl.reshape(&cpu, out.shape)?;
            let classes = spec.num_classes;
            cpu.softmax_cross_entropy(batch, classes, &out.buf, &labels, 0.0, &mut dl.buf, &mut metrics, 0)?;
            if keep {
                logits = out.to_host(&cpu)?;
            }
            net.backward(&x, &dl)?;
            sgd.step(net, 0.01)?;
        } else if let Some(plan) = plan.as_mut() {
            let out = plan.run(&x)?;
            if keep {
                logits = out.to_host(&cpu)?;
            }
        }
        Ok(())
    };
    for _ in 0..a.warmup {
        step(false)?;
    }
    let mut times = Vec::with_capacity(a.iters);
    let t0 = Instant::now();
    for i in 0..a.iters {
        let t = Instant::now();
        step(i + 1 == a.iters)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total = t0.elapsed().as_secs_f64();
    if let (true, Some(p)) = (a.profile, plan.as_ref()) {
        let prof = p.profile();
        let total: f64 = prof.iter().map(|(_, t)| t).sum();
        println!("{:<64} {:>9} {:>6}", "operation (last run)", "ms", "share");
        for (name, t) in &prof {
            println!("{name:<64} {:>9.3} {:>5.1}%", 1e3 * t, 100.0 * t / total);
        }
        println!("{:<64} {:>9.3}", "total", 1e3 * total);
    }
    if let Some(p) = &a.logits_out {
        let rows: Vec<&[f32]> = logits.chunks(spec.num_classes).collect();
        resnet::io::atomic::write(p, serde_json::to_string(&rows)?.as_bytes())?;
    }
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)];
    let ips = (batch * a.iters) as f64 / total;
    let gflops = ips * macs * 2.0 * if train { 3.0 } else { 1.0 } / 1e9;
    let mut v = serde_json::json!({
        "arch": spec.name, "mode": a.mode.name(), "precision": precision.to_string(), "batch": batch, "threads": cpu.threads(),
        "input": side, "iters": a.iters, "images_per_second": ips, "latency_ms_p50": pct(0.5), "latency_ms_p99": pct(0.99),
        "latency_ms_mean": times.iter().sum::<f64>() / times.len() as f64, "gflops": gflops, "peak_rss_mb": peak_rss_mb(),
        "backend": cpu.describe(), "freeze": a.freeze.map(|f| format!("{f:?}").to_lowercase()),
    });
    if let Some(plan) = &memory {
        // The backend's own peak (every buffer, filter and scratch array) beside the plan's estimate.
        let mb = |b: u64| b as f64 / (1u64 << 20) as f64;
        v["checkpoint_segments"] = plan.segments.into();
        v["planned_peak_mb"] = mb(plan.total()).into();
        v["measured_peak_mb"] = mb(resnet::backend::cpu::allocated().1 as u64).into();
    }
    if a.json {
        println!("{v}");
    } else {
        println!(
            "{} {} {precision} batch {} at {side}x{side}, {}: {:.1} images/s, latency p50 {:.2} ms, p99 {:.2} ms, {:.0} {}, peak RSS {:.0} MB",
            spec.name,
            a.mode.name(),
            batch,
            cpu.describe(),
            ips,
            pct(0.5),
            pct(0.99),
            gflops,
            // Multiply-adds count two operations whatever their type.
            if precision == Precision::Int8 { "G op/s" } else { "GFLOP/s" },
            peak_rss_mb()
        );
        if let Some(plan) = &memory {
            println!(
                "memory: planned peak {}, measured {} (the backend's buffers), {}",
                crate::memory::bytes(plan.total()),
                crate::memory::bytes(resnet::backend::cpu::allocated().1 as u64),
                match plan.segments {
                    0 => "no recomputation".to_string(),
                    k => format!("{k} recomputed segments"),
                }
            );
        }
    }
    Ok(())
}

/// What `resnet bench` times.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BenchMode {
    /// An evaluation-mode forward pass through the compiled model.
    Infer,
    /// A training step: forward, backward and SGD update.
    Train,
}

impl BenchMode {
    fn name(self) -> &'static str {
        match self {
            BenchMode::Infer => "infer",
            BenchMode::Train => "train",
        }
    }
}

/// Arguments of `resnet init`.
#[derive(clap::Args)]
pub struct InitArgs {
    /// Architecture.
    #[arg(long)]
    arch: String,
    /// Output .safetensors file.
    #[arg(long)]
    out: std::path::PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Classifier outputs.
    #[arg(long)]
    num_classes: Option<usize>,
    /// Input channels.
    #[arg(long)]
    in_channels: Option<usize>,
}

/// `resnet init`: writes freshly initialised weights (torchvision's scheme) for
/// benchmarks and fine-tuning experiments.
pub fn init(a: InitArgs) -> Result<()> {
    let mut spec = ResNetSpec::named(&a.arch)?;
    if let Some(n) = a.num_classes {
        spec.num_classes = n;
    }
    if let Some(c) = a.in_channels {
        spec.in_channels = c;
    }
    let cpu = resnet::backend::Cpu::new(Some(1))?;
    let mut net = Network::new(&spec, &cpu)?;
    net.init_kaiming(&mut Rng::new(a.seed), false)?;
    let meta = [("arch".to_string(), spec.name.clone())].into();
    resnet::io::safetensors::write(&a.out, &resnet::io::state_dict(&mut net)?, Some(meta))?;
    println!("wrote {} ({} parameters) to {}", spec.name, net.num_params(), a.out.display());
    Ok(())
}
