//! `resnet classify`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use resnet::classify::{Classifier, Prediction};
use resnet::preprocess::{Transform, load_rgb};

use crate::util::{check_batch, cpu, precision};

/// Arguments of `resnet classify`.
#[derive(clap::Args)]
pub struct Args {
    /// Images (JPEG or PNG).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Architecture (see `resnet archs`); optional for our checkpoints, whose sidecar names it.
    #[arg(long)]
    arch: Option<String>,
    /// Weights: .safetensors, or a PyTorch .pth state dict or checkpoint.
    #[arg(long)]
    weights: PathBuf,
    /// Classifier outputs (default: from the weights).
    #[arg(long)]
    num_classes: Option<usize>,
    /// Preprocessing preset: v1 (resize 256, crop 224) or v2 (resize 232, crop 224).
    #[arg(long)]
    preset: Option<String>,
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
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Arithmetic: f32, or bf16 (convolutions in bf16 with f32 sums; needs AVX-512 BF16, else runs f32).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// Print JSON: a list of {"image", "top": [{"index", "label", "probability", "logit"}]}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let batch = check_batch(a.batch)?;
    if a.topk == 0 {
        bail!("--topk must be at least 1");
    }
    let cpu = cpu(a.threads)?;
    let precision = precision(&a.precision, &cpu)?;
    let mut clf = Classifier::load_with_precision(&cpu, a.arch.as_deref(), &a.weights, a.num_classes, precision)
        .with_context(|| format!("cannot load {}", a.weights.display()))?;
    if let Some(p) = &a.preset {
        let t = Transform::preset(p)?;
        clf.transform.resize = t.resize;
        clf.transform.crop = t.crop;
    }
    if let Some(r) = a.resize {
        clf.transform.resize = r;
    }
    if let Some(c) = a.crop {
        clf.transform.crop = c;
    }
    for (name, v) in [("--resize", clf.transform.resize), ("--crop", clf.transform.crop)] {
        if v == 0 || v > 8192 {
            bail!("{name} must be between 1 and 8192, got {v}");
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
