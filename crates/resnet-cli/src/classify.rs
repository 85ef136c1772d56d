//! `resnet classify`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use resnet::classify::{Classifier, Prediction};
use resnet::preprocess::{Transform, load_rgb};

use crate::util::{Compute, PrecisionFlag, check_batch, precision};

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
    /// Preprocessing preset (torchvision's evaluation transforms).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Resize the shorter side to this (overrides the preset).
    #[arg(long)]
    resize: Option<usize>,
    /// Centre crop size (overrides the preset).
    #[arg(long)]
    crop: Option<usize>,
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
    // Named weights come with their preprocessing preset.
    if let (None, Some(e)) = (a.preset, &entry) {
        let t = Transform::preset(&e.preset)?;
        clf.transform.resize = t.resize;
        clf.transform.crop = t.crop;
    }
    if let Some(p) = a.preset {
        let t = Transform::preset(p.name())?;
        clf.transform.resize = t.resize;
        clf.transform.crop = t.crop;
    }
    if let Some(r) = a.resize {
        clf.transform.resize = r;
    }
    if let Some(c) = a.crop {
        clf.transform.crop = c;
    }
    let max = resnet::preprocess::MAX_TRANSFORM_SIDE;
    for (name, v) in [("--resize", clf.transform.resize), ("--crop", clf.transform.crop)] {
        if v == 0 || v > max {
            bail!("{name} must be between 1 and {max}, got {v}");
        }
    }
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

/// torchvision's evaluation transforms.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Preset {
    /// Resize 256, centre crop 224 (IMAGENET1K_V1 weights).
    V1,
    /// Resize 232, centre crop 224 (IMAGENET1K_V2 weights).
    V2,
}

impl Preset {
    fn name(self) -> &'static str {
        match self {
            Preset::V1 => "v1",
            Preset::V2 => "v2",
        }
    }
}
