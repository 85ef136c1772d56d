//! `resnet eval`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use resnet::classify::{Classifier, read_card};
use resnet_train::data::{DataSpec, Dataset};
use resnet_train::eval::{eval_transform, evaluate};

use crate::util::{Compute, PrecisionFlag, check_batch, precision};

/// Arguments of `resnet eval`.
#[derive(clap::Args)]
pub struct Args {
    /// Architecture (optional for our checkpoints and recognisable weights).
    #[arg(long)]
    arch: Option<String>,
    /// Weights (.safetensors, .pth, or a name: torchvision:ARCH[.v1|.v2]).
    #[arg(long)]
    weights: PathBuf,
    /// Data: KIND:PATH (the test split is evaluated; `val/` for folders).
    #[arg(long)]
    data: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    #[command(flatten)]
    compute: Compute,
    #[command(flatten)]
    precision: PrecisionFlag,
    /// Folder for confusion.png/.svg and eval.json (default: the weights' folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print one JSON object: top1, top5 (fractions), loss, per_class, confusion, classes.
    #[arg(long)]
    json: bool,
    /// Write each test image's predicted class to this file, one per line, in the data set's order.
    #[arg(long)]
    predictions: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let batch = check_batch(a.batch)?;
    let cpu = a.compute.backend()?;
    let precision = precision(a.precision.precision, &cpu);
    let spec: DataSpec = a.data.parse()?;
    let ds = Dataset::load_for_eval(&spec)?;
    let (weights, _) = crate::weights::resolve(&a.weights)?;
    let clf = Classifier::load_with_precision(&cpu, a.arch.as_deref(), &weights, Some(ds.classes.len()), precision)
        .with_context(|| format!("cannot load {}", weights.display()))?;
    let arch = clf.spec.clone();
    let mut plan = clf.plan;
    if arch.num_classes != ds.classes.len() {
        bail!("the model has {} classes, {} has {}", arch.num_classes, spec, ds.classes.len());
    }
    let card = read_card(&weights)?;
    let tf = eval_transform(arch.in_channels, &ds, card.as_ref());
    tf.validate(ds.channels)?;
    let workers = if matches!(ds.test.images, resnet_train::data::Images::Files(_)) { 2 * cpu.threads() } else { 1 };
    let mut preds = vec![0usize; ds.test.len()];
    let record = |idx: &[usize], _: &[u32], p: &[usize]| idx.iter().zip(p).for_each(|(&i, &c)| preds[i] = c);
    let r = evaluate(&mut plan, ds.test.clone(), Arc::new(tf), batch, workers, |_, _| {}, record)?;
    if let Some(path) = &a.predictions {
        let text: String = preds.iter().map(|p| format!("{p}\n")).collect();
        resnet::io::atomic::write(path, text.as_bytes())?;
    }
    let title = format!("{} on {} ({} images)", arch.name, spec.kind_name(), r.n);
    let json = serde_json::json!({
        "arch": arch.name, "weights": a.weights, "data": spec.to_string(), "n": r.n, "precision": precision.to_string(),
        "top1": r.top1, "top5": r.top5, "loss": r.loss,
        "per_class": ds.classes.iter().zip(&r.per_class).map(|(c, v)| serde_json::json!({"class": c, "accuracy": v})).collect::<Vec<_>>(),
        "confusion": r.confusion, "classes": ds.classes,
    });
    // The results first: a folder that cannot be written must not cost them.
    if a.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print_results(&title, &r, &ds.classes);
    }
    let out = a.out.clone().unwrap_or_else(|| weights.parent().map(PathBuf::from).unwrap_or_default());
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    resnet_train::plot::confusion_heatmap(&out.join("confusion"), &title, &r.confusion, &ds.classes)?;
    resnet::io::atomic::write(&out.join("eval.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    if !a.json {
        println!("\nheat map: {}  results: {}", out.join("confusion.png").display(), out.join("eval.json").display());
    }
    Ok(())
}

fn print_results(title: &str, r: &resnet_train::eval::EvalResult, classes: &[String]) {
    println!("{title}");
    println!("top-1 accuracy: {:.2}%   top-5 accuracy: {:.2}%   loss: {:.4}", 100.0 * r.top1, 100.0 * r.top5, r.loss);
    println!("\nper class:");
    for (c, v) in classes.iter().zip(&r.per_class) {
        println!("  {c:<24} {:6.2}%", 100.0 * v);
    }
    if classes.len() <= 20 {
        println!("\nconfusion (rows: true class, columns: predicted):");
        print!("{:>24}", "");
        for j in 0..classes.len() {
            print!("{j:>6}");
        }
        println!();
        for (i, row) in r.confusion.iter().enumerate() {
            print!("{:>20} {i:>3}", truncate(&classes[i], 20));
            for v in row {
                print!("{v:>6}");
            }
            println!();
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
