//! `resnet summary`.

use anyhow::{Result, bail};
use resnet::model::{Graph, MemoryPlan, Network, ResNetSpec, Stem};

use crate::util::{grouped, human};

/// Arguments of `resnet summary`.
#[derive(clap::Args)]
pub struct Args {
    /// Architecture (see `resnet archs`).
    arch: String,
    /// Input height and width (default 224 for ImageNet nets, 32 for CIFAR nets).
    #[arg(long)]
    input: Option<usize>,
    /// Classifier outputs.
    #[arg(long)]
    num_classes: Option<usize>,
    /// Image channels (1 for grayscale).
    #[arg(long)]
    in_channels: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Print the training memory plan (per stage and in total) instead of the layers.
    #[arg(long)]
    train: bool,
    /// Batch size of the training plan.
    #[arg(long, default_value_t = 128, requires = "train")]
    batch: usize,
    /// Training plan: the memory flags, as `train` takes them (the machine's memory is not checked).
    #[command(flatten)]
    memory: crate::memory::MemoryFlags,
}

pub fn run(a: Args) -> Result<()> {
    let mut spec = ResNetSpec::named(&a.arch)?;
    if let Some(n) = a.num_classes {
        spec.num_classes = n;
    }
    if let Some(c) = a.in_channels {
        spec.in_channels = c;
    }
    let input = a.input.unwrap_or(if spec.stem == Stem::Imagenet { 224 } else { 32 });
    if input == 0 || input > 16384 {
        bail!("--input must be between 1 and 16384, got {input}");
    }
    if a.train {
        return train_plan(&a, &spec, input);
    }
    if a.memory.checkpoint_segments.is_some() || a.memory.memory_budget.is_some() {
        bail!("--checkpoint-segments and --memory-budget are for --train");
    }
    let s = Graph::new(&spec)?.summary(input, input)?;
    if a.json {
        let layers: Vec<_> = s
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({
                    "name": l.name, "type": l.kind, "output": l.output_chw(), "params": l.params, "macs": l.macs,
                })
            })
            .collect();
        let v = serde_json::json!({
            "arch": s.arch, "input": s.input, "num_classes": spec.num_classes,
            "params": s.params, "macs": s.macs, "layers": layers,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{} ({}), input {}x{}x{}", spec.name, spec.describe(), s.input[0], s.input[1], s.input[2]);
    println!("{:<28} {:<22} {:>16} {:>12} {:>14}", "layer", "type", "output", "params", "MACs");
    for l in &s.layers {
        let [c, h, w] = l.output_chw();
        println!(
            "{:<28} {:<22} {:>16} {:>12} {:>14}",
            l.name,
            l.kind,
            format!("{c}x{h}x{w}"),
            grouped(l.params as u64),
            grouped(l.macs)
        );
    }
    println!(
        "total: {} parameters ({}), {} MACs ({}MACs)",
        grouped(s.params as u64),
        human(s.params as f64),
        grouped(s.macs),
        human(s.macs as f64)
    );
    Ok(())
}

/// `summary --train`: the training memory plan, as a table or JSON.
fn train_plan(a: &Args, spec: &ResNetSpec, input: usize) -> Result<()> {
    let batch = crate::util::check_batch(a.batch)?;
    // A one-thread backend: the plan only asks it how it prepares filters.
    let cpu = resnet::backend::Cpu::new(Some(1))?;
    let net = Network::new(spec, &cpu)?;
    let momentum = true;
    let segments = match (a.memory.checkpoint_segments, a.memory.memory_budget) {
        (Some(k), _) => k,
        (None, Some(budget)) => {
            MemoryPlan::segments_for(&net, batch, (input, input), momentum, budget)?.ok_or_else(|| {
                anyhow::anyhow!("{} at batch {batch} cannot train in {}", spec.name, crate::memory::bytes(budget))
            })?
        }
        (None, None) => 0,
    };
    let plan = MemoryPlan::new(&net, batch, (input, input), segments, momentum)?;
    if a.json {
        let mb = |b: u64| b as f64 / (1u64 << 20) as f64;
        let kept: serde_json::Map<_, _> = plan.kept.iter().map(|(k, b)| (k.clone(), mb(*b).into())).collect();
        let v = serde_json::json!({
            "arch": spec.name, "batch": batch, "input": input, "checkpoint_segments": segments,
            "kept_mb": kept, "params_mb": mb(plan.params), "filters_mb": mb(plan.filters),
            "working_mb": mb(plan.working), "total_mb": mb(plan.total()),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{} ({})", spec.name, spec.describe());
        crate::memory::print_plan(&plan);
        if let Some(avail) = crate::memory::available() {
            println!("  {:<34} {:>12}", "available on this machine", crate::memory::bytes(avail));
        }
    }
    Ok(())
}
