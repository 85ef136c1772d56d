//! `resnet demo`: residual learning on real data in two minutes, offline.
//!
//! Trains a ResNet-20 on a class-balanced subset of Fashion-MNIST (6,000
//! training and 1,000 test images, shipped inside the binary), prints the
//! test accuracy, shows a handful of test images with their predicted and
//! true classes, and leaves curves, checkpoints and the samples under
//! `runs/demo/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use resnet::backend::Backend;
use resnet::model::{Mode, ResNetSpec};
use resnet::tensor::Tensor;
use resnet_train::data::{DataKind, DataSpec, Images};
use resnet_train::optim::{LrPolicy, Schedule, SgdConfig};
use resnet_train::plot::Thumb;
use resnet_train::train::{TrainConfig, Trainer, load_data};

use crate::util::Compute;

/// The data set, embedded: (file name, gzipped IDX bytes).
const DATA: [(&str, &[u8]); 4] = [
    ("train-images-idx3-ubyte.gz", include_bytes!("../../../assets/fashion-mnist-demo/train-images-idx3-ubyte.gz")),
    ("train-labels-idx1-ubyte.gz", include_bytes!("../../../assets/fashion-mnist-demo/train-labels-idx1-ubyte.gz")),
    ("t10k-images-idx3-ubyte.gz", include_bytes!("../../../assets/fashion-mnist-demo/t10k-images-idx3-ubyte.gz")),
    ("t10k-labels-idx1-ubyte.gz", include_bytes!("../../../assets/fashion-mnist-demo/t10k-labels-idx1-ubyte.gz")),
];

/// Arguments of `resnet demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Epochs (10 take about a minute on 2 cores).
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[command(flatten)]
    compute: Compute,
    /// Output folder.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// Writes the embedded data set under `dir` (skipping files already there).
fn unpack(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, bytes) in DATA {
        let p = dir.join(name);
        if std::fs::metadata(&p).map(|m| m.len() as usize).ok() != Some(bytes.len()) {
            resnet::io::atomic::write(&p, bytes)?;
        }
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(a.epochs >= 1, "--epochs must be at least 1");
    let cpu = a.compute.backend()?;
    let data_dir = a.out.join("data");
    unpack(&data_dir)?;
    let data = DataSpec { kind: DataKind::FashionMnist, path: data_dir };
    let ds = load_data(&data, None, None)?;
    let mut spec = ResNetSpec::named("resnet20")?;
    spec.in_channels = ds.channels;
    spec.num_classes = ds.classes.len();
    let per_epoch = ds.train.len().div_ceil(64) as u64;
    let cfg = TrainConfig {
        spec,
        data,
        epochs: a.epochs,
        iterations: None,
        batch: 64,
        policy: LrPolicy {
            lr: 0.1,
            schedule: Schedule::Cosine { min_lr: 0.0 },
            total_iters: 0,
            warmup_iters: 0,
            warmup_start: 0.0,
            warmup_until_error: None,
        },
        sgd: SgdConfig { weight_decay: 5e-4, ..SgdConfig::default() },
        label_smoothing: 0.0,
        seed: a.seed,
        threads: cpu.threads(),
        // Ten epochs are too few for augmentation to pay off on 6,000 images.
        augment: false,
        shuffle: true,
        pad_to: None,
        image_size: 28,
        train_per_class: None,
        test_per_class: None,
        workers: 1,
        init: None,
        log_every: (per_epoch / 10).max(1),
        zero_init_residual: false,
        on_nan: Default::default(),
        data_fingerprint: None,
        freeze: Default::default(),
        resize_per_224: 256,
    };
    println!(
        "resnet demo: training ResNet-20 (He et al. 2015) on {} Fashion-MNIST images for {}, testing on {}; {}",
        ds.train.len(),
        crate::util::count(a.epochs as u64, "epoch"),
        ds.test.len(),
        cpu.describe()
    );
    let test = ds.test.clone();
    let classes = ds.classes.clone();
    // The demo may be run again and again: it starts over each time.
    let mut trainer = Trainer::new(cfg, &cpu, ds, &a.out)?;
    let summary = crate::train::drive(&mut trainer, a.quiet)?;
    let result = summary.test.context("no test result")?;
    println!("\ntest accuracy: {:.2}%", 100.0 * (1.0 - result.error));
    show_samples(&mut trainer, &test, &classes, &a.out)?;
    println!(
        "\nin {}: curves.png (training curves), samples.png, best.safetensors + best.json (checkpoint)",
        a.out.display()
    );
    println!("try: resnet classify YOUR_IMAGE.png --weights {}", a.out.join("best.safetensors").display());
    println!(
        "     resnet eval --weights {} --data fashion-mnist:{}",
        a.out.join("best.safetensors").display(),
        a.out.join("data").display()
    );
    Ok(())
}

/// Classifies a few test images (two per class for the first six classes)
/// and shows them in the terminal and in `samples.png`.
fn show_samples(
    trainer: &mut Trainer<resnet::backend::Cpu>,
    test: &resnet_train::data::Split,
    classes: &[String],
    out: &Path,
) -> Result<()> {
    let Images::Memory { h, w, c, data } = &test.images else { return Ok(()) };
    let mut picks = Vec::new();
    for class in 0..6u32 {
        picks.extend(test.labels.iter().enumerate().filter(|(_, l)| **l == class).map(|(i, _)| i).take(2));
    }
    let (mean, std) = (0.2860f32, 0.3530f32);
    let sz = h * w * c;
    let x: Vec<f32> = picks
        .iter()
        .flat_map(|&i| data[i * sz..(i + 1) * sz].iter().map(|&v| (v as f32 / 255.0 - mean) / std))
        .collect();
    let cpu = trainer.net.backend().clone();
    let xt = Tensor::from_host(&cpu, [picks.len(), *h, *w, *c], &x)?;
    let logits = trainer.net.forward(&xt, Mode::Eval)?.to_host(&cpu)?;
    let k = classes.len();
    let mut thumbs = Vec::new();
    println!("\na few test images, two of each of the first six classes, with the predicted class (x: wrong):");
    // A character per 2x4 pixels (characters are about twice as tall as wide).
    let (cw, ch) = (w / 2, h / 4);
    let mut lines = vec![String::new(); ch + 1];
    for (j, &i) in picks.iter().enumerate() {
        let top = &resnet::classify::top_k(&logits[j * k..(j + 1) * k], 1, classes)[0];
        let truth = &classes[test.labels[i] as usize];
        let ok = top.index == test.labels[i] as usize;
        let img = &data[i * sz..(i + 1) * sz];
        for (r, line) in lines.iter_mut().enumerate().take(ch) {
            for col in 0..cw {
                let mut v = 0u32;
                for dy in 0..4 {
                    for dx in 0..2 {
                        v += img[(4 * r + dy) * w + 2 * col + dx] as u32;
                    }
                }
                line.push([' ', '.', ':', '-', '=', '+', '*', '#', '%', '@'][(v / 8 * 10 / 256) as usize]);
            }
            line.push_str("    ");
        }
        let mark = if ok { "ok" } else { "x " };
        lines[ch].push_str(&format!("{:<width$}", format!("{mark} {}", short(&top.label)), width = cw + 4));
        thumbs.push(Thumb {
            w: *w,
            h: *h,
            c: *c,
            data: img,
            caption: vec![format!("pred: {}", top.label), format!("true: {truth}")],
            ok,
        });
        if (j + 1) % 6 == 0 || j + 1 == picks.len() {
            for line in lines.iter_mut() {
                println!("{}", line.trim_end());
                line.clear();
            }
        }
    }
    resnet_train::plot::image_grid(&out.join("samples"), &thumbs, 6)?;
    Ok(())
}

fn short(s: &str) -> String {
    s.split('/').next().unwrap_or(s).chars().take(12).collect()
}
