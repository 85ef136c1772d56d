//! `resnet inspect`: what a weights file holds, without building the network.

use std::path::PathBuf;

use anyhow::Result;
use resnet::classify::{SpecSource, read_card, resolve_spec};
use resnet::io::TensorData;
use resnet::model::Graph;

use crate::util::grouped;

/// Arguments of `resnet inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// Weights: .safetensors, a PyTorch .pth state dict or checkpoint, or a name (torchvision:ARCH[.v1|.v2]).
    weights: PathBuf,
    /// Print one JSON object: weights, tensors, values, arch, source, num_classes, in_channels, params.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let (weights, _) = crate::weights::resolve(&a.weights)?;
    let sd = resnet::io::read_state_dict(&weights)?;
    let card = read_card(&weights)?;
    let values: usize = sd.values().filter(|t| matches!(t.data, TensorData::F32(_))).map(|t| t.numel()).sum();
    let found = resolve_spec(None, &weights, &sd, card.as_ref()).ok();
    let graph = found.as_ref().map(|(spec, _)| Graph::new(spec)).transpose()?;
    if a.json {
        let v = serde_json::json!({
            "weights": a.weights,
            "tensors": sd.len(),
            "values": values,
            "arch": found.as_ref().map(|(s, _)| &s.name),
            "source": found.as_ref().map(|(_, src)| src),
            "num_classes": found.as_ref().map(|(s, _)| s.num_classes),
            "in_channels": found.as_ref().map(|(s, _)| s.in_channels),
            "params": graph.as_ref().map(Graph::num_params),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("{}: {} tensors, {} floating-point values", a.weights.display(), sd.len(), grouped(values as u64));
    match (&found, &graph) {
        (Some((spec, source)), Some(g)) => {
            let how = match source {
                SpecSource::Sidecar => "from the checkpoint's sidecar",
                SpecSource::Recognised => "recognised from the keys and shapes",
                SpecSource::Given => "as given",
            };
            println!(
                "architecture: {} ({how}): {}, {} classes, {} input channels, {} parameters",
                spec.name,
                spec.describe(),
                spec.num_classes,
                spec.in_channels,
                grouped(g.num_params() as u64)
            );
        }
        _ => println!("architecture: not recognised (pass --arch to the commands that load it)"),
    }
    Ok(())
}
