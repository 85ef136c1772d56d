//! `resnet archs`.

use anyhow::Result;
use resnet::model::{ARCHS, Graph, ResNetSpec, Stem};

use crate::util::{grouped, human};

/// Arguments of `resnet archs`.
#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let mut rows = Vec::new();
    for name in ARCHS {
        let spec = ResNetSpec::named(name)?;
        let input = if spec.stem == Stem::Imagenet { 224 } else { 32 };
        let s = Graph::new(&spec)?.summary(input, input)?;
        rows.push((spec, input, s.params, s.macs));
    }
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(spec, input, params, macs)| {
                serde_json::json!({
                    "arch": spec.name, "depth": spec.depth(), "block": spec.block, "depths": spec.depths,
                    "groups": spec.groups, "width_per_group": spec.width_per_group, "shortcut": spec.shortcut,
                    "num_classes": spec.num_classes, "input": input, "params": params, "macs": macs,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{:<20} {:>6} {:>14} {:>10}  {:<7}  structure", "arch", "depth", "params", "MACs", "input");
    for (spec, input, params, macs) in &rows {
        println!(
            "{:<20} {:>6} {:>14} {:>10}  {:<7}  {}",
            spec.name,
            spec.depth(),
            grouped(*params as u64),
            human(*macs as f64),
            format!("{input}x{input}"),
            spec.describe()
        );
    }
    println!(
        "\nAlso: resnetD and plainD for any CIFAR depth D = 6n+2, preact_resnetD (basic for 6n+2 < 164, bottleneck for 9n+2 >= 164)."
    );
    Ok(())
}
