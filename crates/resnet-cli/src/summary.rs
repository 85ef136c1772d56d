//! `resnet summary`.

use anyhow::{Result, bail};
use resnet::model::{Graph, ResNetSpec, Stem};

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
