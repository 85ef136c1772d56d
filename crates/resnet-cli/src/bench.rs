//! `resnet bench`: our side of the speed comparisons in bench/.

use std::time::Instant;

use anyhow::{Result, bail};
use resnet::backend::Backend;
use resnet::model::{Mode, Network, ResNetSpec, Stem};
use resnet::optim::{Sgd, SgdConfig};
use resnet::rng::Rng;
use resnet::tensor::Tensor;

use crate::util::{check_batch, cpu};

/// Arguments of `resnet bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Architecture.
    #[arg(long)]
    arch: String,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// infer (evaluation-mode forward) or train (forward, backward and SGD step).
    #[arg(long, default_value = "infer")]
    mode: String,
    /// Arithmetic: f32 (bf16 needs AVX-512 BF16 and comes with the speed work).
    #[arg(long, default_value = "f32")]
    precision: String,
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
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
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
    let batch = check_batch(a.batch)?;
    let train = match a.mode.as_str() {
        "infer" => false,
        "train" => true,
        other => bail!("--mode must be infer or train, got `{other}`"),
    };
    if a.precision != "f32" {
        bail!("--precision {} is not available yet (f32 only)", a.precision);
    }
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    let cpu = cpu(a.threads)?;
    let spec = ResNetSpec::named(&a.arch)?;
    let side = a.input.unwrap_or(if spec.stem == Stem::Imagenet { 224 } else { 32 });
    if side == 0 || side > 4096 {
        bail!("--input must be between 1 and 4096");
    }
    let mut net = Network::new(&spec, &cpu)?;
    net.init_kaiming(&mut Rng::new(0), false);
    if let Some(w) = &a.weights {
        resnet::io::load_state_dict(&mut net, &resnet::io::read_state_dict(w)?, resnet::io::LoadMode::Strict)?;
    }
    let mut rng = Rng::new(1);
    let data: Vec<f32> = (0..batch * side * side * spec.in_channels).map(|_| rng.normal() as f32).collect();
    let x = Tensor::from_host(&cpu, [batch, side, side, spec.in_channels], &data);
    let labels: Vec<u32> = (0..batch).map(|i| (i % spec.num_classes) as u32).collect();
    let mut sgd: Sgd<resnet::backend::Cpu> = Sgd::new(SgdConfig::default())?;
    let mut dl = Tensor::empty(&cpu);
    let mut step = |net: &mut Network<resnet::backend::Cpu>| -> Result<()> {
        if train {
            net.zero_grad();
            let logits = net.forward(&x, Mode::Train)?;
            dl.reshape(&cpu, logits.shape);
            let loss = cpu.softmax_cross_entropy(batch, spec.num_classes, &logits.buf, &labels, 0.0, &mut dl.buf);
            std::hint::black_box(loss);
            net.backward(&x, &dl);
            sgd.step(net, 0.01);
        } else {
            std::hint::black_box(net.forward(&x, Mode::Eval)?);
        }
        Ok(())
    };
    for _ in 0..a.warmup {
        step(&mut net)?;
    }
    let mut times = Vec::with_capacity(a.iters);
    let t0 = Instant::now();
    for _ in 0..a.iters {
        let t = Instant::now();
        step(&mut net)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total = t0.elapsed().as_secs_f64();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let pct = |p: f64| sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)];
    let ips = (batch * a.iters) as f64 / total;
    let macs = net.summary(side, side)?.macs as f64;
    let gflops = ips * macs * 2.0 * if train { 3.0 } else { 1.0 } / 1e9;
    let v = serde_json::json!({
        "arch": spec.name, "mode": a.mode, "precision": a.precision, "batch": batch, "threads": cpu.threads(),
        "input": side, "iters": a.iters, "images_per_second": ips, "latency_ms_p50": pct(0.5), "latency_ms_p99": pct(0.99),
        "latency_ms_mean": times.iter().sum::<f64>() / times.len() as f64, "gflops": gflops, "peak_rss_mb": peak_rss_mb(),
        "backend": cpu.describe(),
    });
    if a.json {
        println!("{v}");
    } else {
        println!(
            "{} {} batch {} at {side}x{side}, {}: {:.1} images/s, latency p50 {:.2} ms, p99 {:.2} ms, {:.0} GFLOP/s, peak RSS {:.0} MB",
            spec.name,
            a.mode,
            batch,
            cpu.describe(),
            ips,
            pct(0.5),
            pct(0.99),
            gflops,
            peak_rss_mb()
        );
    }
    Ok(())
}
