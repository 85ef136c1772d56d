//! `resnet classify`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use resnet::classify::{Classifier, Prediction};
use resnet::preprocess::load_rgb;

use crate::util::{Compute, PrecisionFlag, TransformFlags, check_batch, precision};

/// Arguments of `resnet classify`.
#[derive(clap::Args)]
pub struct Args {
    /// Images (JPEG or PNG).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Architecture (see `resnet archs`); optional for our checkpoints, whose sidecar names it.
    #[arg(long)]
    arch: Option<String>,
    /// Weights: .safetensors, a PyTorch .pth state dict or checkpoint, or a name
    /// (torchvision:ARCH[.v1|.v2], downloaded once into the cache; see `resnet weights list`).
    #[arg(long)]
    weights: PathBuf,
    /// Classifier outputs (default: from the weights).
    #[arg(long)]
    num_classes: Option<usize>,
    #[command(flatten)]
    transform: TransformFlags,
    /// How many classes to show per image.
    #[arg(long, default_value_t = 5)]
    topk: usize,
    /// Class names: `imagenet` or a file with one name per line.
    #[arg(long)]
    labels: Option<String>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[command(flatten)]
    compute: Compute,
    #[command(flatten)]
    precision: PrecisionFlag,
    /// Print JSON: a list of {"image", "top": [{"index", "label", "probability", "logit"}]}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let batch = check_batch(a.batch)?;
    if a.topk == 0 {
        bail!("--topk must be at least 1");
    }
    let cpu = a.compute.backend()?;
    let precision = precision(a.precision.precision, &cpu);
    let (weights, entry) = crate::weights::resolve(&a.weights)?;
    let mut clf = Classifier::load_with_precision(&cpu, a.arch.as_deref(), &weights, a.num_classes, precision)
        .with_context(|| format!("cannot load {}", weights.display()))?;
    a.transform.apply(&mut clf.transform, entry.as_ref().map(|e| e.preset.as_str()))?;
    match a.labels.as_deref() {
        None => {}
        Some("imagenet") => clf.set_labels(resnet::labels::imagenet())?,
        Some(file) => clf.set_labels(resnet::labels::read_file(file.as_ref())?)?,
    }
    let mut all = Vec::new();
    for chunk in a.images.chunks(batch) {
        let imgs = chunk.iter().map(|p| load_rgb(p)).collect::<resnet::Result<Vec<_>>>()?;
        let preds = clf.classify(&imgs, a.topk)?;
        for (path, top) in chunk.iter().zip(preds) {
            if a.json {
                all.push(serde_json::json!({ "image": path, "top": top }));
            } else {
                print_human(path, &top);
            }
        }
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}

fn print_human(path: &std::path::Path, top: &[Prediction]) {
    println!("{}", path.display());
    for (rank, p) in top.iter().enumerate() {
        println!(
            "  {:>2}. {:<32} {:>7.2}%   (class {:>4}, logit {:>8.3})",
            rank + 1,
            p.label,
            100.0 * p.probability,
            p.index,
            p.logit
        );
    }
}
