//! `resnet quantize`: post-training static quantization to int8.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use resnet::backend::Cpu;
use resnet::classify::{Loaded, read_card, sidecar_path};
use resnet::infer::quant::{Calibration, Method, QuantModel};
use resnet::rng::Rng;
use resnet::tensor::Tensor;
use resnet_train::data::loader::Loader;
use resnet_train::data::{DataSpec, Dataset};
use resnet_train::eval::eval_transform;

use crate::util::{Compute, check_batch};

/// Arguments of `resnet quantize`.
#[derive(clap::Args)]
pub struct Args {
    /// f32 weights to quantize (.safetensors, .pth, or torchvision:ARCH[.v1|.v2]).
    #[arg(long)]
    weights: PathBuf,
    /// Architecture (optional for our checkpoints and recognisable weights).
    #[arg(long)]
    arch: Option<String>,
    /// Calibration images: a data set (KIND:PATH, its training split) or a folder of images.
    #[arg(long)]
    calibrate: String,
    /// Calibration images to use (spread evenly over the data).
    #[arg(long, default_value_t = 512)]
    images: usize,
    /// Activation thresholds: `percentile:P` (the P-th percentile of the values seen) or `minmax`.
    #[arg(long, default_value = "percentile:99.99")]
    method: String,
    /// The int8 model to write (.safetensors; its model card goes beside it as .json).
    #[arg(long)]
    out: PathBuf,
    /// Images per calibration pass.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[command(flatten)]
    compute: Compute,
}

pub fn run(a: Args) -> Result<()> {
    let batch = check_batch(a.batch)?;
    if a.images == 0 {
        bail!("--images must be at least 1");
    }
    let method: Method = a.method.parse()?;
    let cpu = a.compute.backend()?;
    let (weights, _) = crate::weights::resolve(&a.weights)?;
    let loaded = Loaded::read(a.arch.as_deref(), &weights, None)
        .with_context(|| format!("cannot load {}", weights.display()))?;
    if QuantModel::is_quantized(&loaded.sd) {
        bail!("{} is already quantized", weights.display());
    }
    let mut cal = Calibration::new(&cpu, &loaded.graph, &loaded.sd)?;
    let t0 = std::time::Instant::now();
    let source = calibrate(&cpu, &mut cal, &loaded, &weights, &a.calibrate, a.images, batch)?;
    let q = cal.finish(&loaded.sd, method)?;
    let sd = q.to_state_dict(&loaded.graph)?;
    let info = serde_json::json!({
        "format": "resnet-int8/1",
        "method": method.to_string(),
        "images": cal.images(),
        "data": source,
        "weights": weights.display().to_string(),
        "input_scale": q.input.scale,
        "input_zero_point": q.input.zero,
    });
    let mut meta = HashMap::new();
    meta.insert("resnet.quantization".to_string(), info.to_string());
    let int8: Vec<String> = QuantModel::int8_keys(&loaded.graph);
    let bytes = resnet::io::safetensors::to_bytes_int8(&sd, &int8, Some(meta))?;
    // The model card first (the weights are what names a finished file).
    let card = serde_json::json!({
        "format": "resnet-int8/1",
        "model": {
            "spec": loaded.spec,
            "transform": loaded.transform,
            "labels": loaded.labels,
        },
        "quantization": info,
    });
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    resnet::io::atomic::write(&sidecar_path(&a.out), serde_json::to_string_pretty(&card)?.as_bytes())?;
    resnet::io::atomic::write(&a.out, &bytes)?;
    eprintln!(
        "quantized {} with {} calibration images from {source} ({method}, {:.1} s): {} ({:.1} MB, int8 weights)",
        loaded.spec.name,
        cal.images(),
        t0.elapsed().as_secs_f64(),
        a.out.display(),
        bytes.len() as f64 / 1e6
    );
    Ok(())
}

/// Runs calibration over `images` images of `data`; returns how it names them.
fn calibrate(
    cpu: &Cpu,
    cal: &mut Calibration<Cpu>,
    loaded: &Loaded,
    weights: &Path,
    data: &str,
    images: usize,
    batch: usize,
) -> Result<String> {
    let mut x = Tensor::empty();
    let path = Path::new(data);
    if path.is_dir() && !data.contains(':') {
        let files = resnet_train::data::folder::image_files(path)?;
        if files.is_empty() {
            bail!("{} holds no images to calibrate with", path.display());
        }
        let files: Vec<PathBuf> = spread(files.len(), images).into_iter().map(|i| files[i].clone()).collect();
        let (c, s) = (loaded.transform.channels(), loaded.transform.size());
        for chunk in files.chunks(batch) {
            let mut hwc = Vec::with_capacity(chunk.len() * c * s * s);
            for f in chunk {
                let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
                let img =
                    resnet::preprocess::decode_rgb(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
                hwc.extend(loaded.transform.apply_hwc(&img));
            }
            x.write(cpu, [chunk.len(), s, s, c], &hwc)?;
            cal.observe(&x)?;
        }
        return Ok(format!("{} ({} images)", path.display(), files.len()));
    }
    let spec: DataSpec = data.parse()?;
    let ds = Dataset::load(&spec)?;
    let card = read_card(weights)?;
    let tf = eval_transform(loaded.spec.in_channels, &ds, card.as_ref());
    tf.validate(ds.channels)?;
    let order = Arc::new(spread(ds.train.len(), images));
    let n = order.len();
    let loader = Loader::spawn(ds.train.clone(), order, batch, Arc::new(tf), Rng::new(0), 0, 2);
    for bt in loader {
        let bt = bt?;
        x.write(cpu, bt.shape, &bt.x)?;
        cal.observe(&x)?;
    }
    Ok(format!("{spec} (training split, {n} images)"))
}

/// `want` indices spread evenly over `0..len` (all of them if fewer).
fn spread(len: usize, want: usize) -> Vec<usize> {
    let k = want.min(len);
    (0..k).map(|i| i * len / k).collect()
}
