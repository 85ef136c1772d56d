//! `resnet embed`: the outputs of one layer for many images, written as
//! safetensors (or .npy).
//!
//! Images are decoded and preprocessed in parallel, either on threads of their
//! own a batch ahead of the network (a bounded queue of two batches keeps
//! memory flat) where there are cores for them, or on the network's threads
//! between its batches where it has every core: its operations are split
//! evenly across its threads, so a decoder preempting one of them would hold
//! all of them back. Each batch's features are streamed into the output file
//! as they come, behind a header written first, so a folder larger than
//! memory embeds in constant memory; the file is written under a temporary
//! name and renamed when complete.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::sync_channel;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use resnet::backend::{Backend, Cpu};
use resnet::classify::FeatureExtractor;
use resnet::preprocess::{RgbImage, load_rgb};
use resnet_train::data::{DataKind, DataSpec, Dataset, Images, Split};

use crate::util::{Compute, PrecisionFlag, TransformFlags, check_batch, precision};

/// Arguments of `resnet embed`.
#[derive(clap::Args)]
pub struct Args {
    /// Images (JPEG or PNG); or use --data.
    images: Vec<PathBuf>,
    /// A data set to embed instead of IMAGES: folder:DIR (class folders, or
    /// train/ and val/ of class folders: both are embedded, with their labels),
    /// mnist:DIR, fashion-mnist:DIR, cifar10:DIR, cifar100:DIR (training then test images).
    #[arg(long, value_name = "KIND:PATH")]
    data: Option<String>,
    /// Architecture (see `resnet archs`); optional for our checkpoints and recognised weights.
    #[arg(long)]
    arch: Option<String>,
    /// Weights: .safetensors, a PyTorch .pth, or a name (torchvision:ARCH[.v1|.v2]).
    #[arg(long)]
    weights: PathBuf,
    /// The layer to return: stem, layer1..layer4 (layer3 for CIFAR nets),
    /// avgpool (the pooled features, N x D), fc (the logits), a unit such as
    /// layer3.1, or a module such as maxpool. Spatial layers are N x C x H x W.
    #[arg(long, default_value = "avgpool")]
    layer: String,
    /// Output file: .safetensors (tensor `features`, f32; `labels`, i64, for
    /// labelled data; metadata `paths`, a JSON list) or .npy (the features; the
    /// paths and labels go to a .json beside it).
    #[arg(long)]
    out: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Threads decoding images alongside the network, a batch ahead. Default:
    /// the cores the network leaves free (see --threads); when it has them
    /// all, images are decoded on its own threads between batches, which is
    /// faster there (a decoder preempting one of them holds back the rest).
    #[arg(long)]
    workers: Option<usize>,
    #[command(flatten)]
    transform: TransformFlags,
    #[command(flatten)]
    compute: Compute,
    #[command(flatten)]
    precision: PrecisionFlag,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Where one image comes from.
enum Source {
    File(PathBuf),
    /// Image `index` of a split held in memory.
    Memory(Arc<Split>, usize),
}

/// One image to embed.
struct Item {
    /// What the output's `paths` lists for it.
    name: String,
    source: Source,
    label: Option<u32>,
}

impl Item {
    fn decode(&self) -> Result<RgbImage> {
        match &self.source {
            Source::File(p) => Ok(load_rgb(p)?),
            Source::Memory(split, i) => {
                let Images::Memory { h, w, c, data } = &split.images else { unreachable!("a file split") };
                let px = &data[i * h * w * c..(i + 1) * h * w * c];
                let data = if *c == 3 { px.to_vec() } else { px.iter().flat_map(|&v| [v; 3]).collect() };
                Ok(RgbImage { width: *w, height: *h, data })
            }
        }
    }
}

/// The images of a data set: its training split, then its test split.
fn dataset_items(spec: &str) -> Result<(Vec<Item>, Vec<String>)> {
    let spec: DataSpec = spec.parse()?;
    let both = spec.kind != DataKind::Folder || (spec.path.join("train").is_dir() && spec.path.join("val").is_dir());
    let ds = if both { Dataset::load(&spec)? } else { Dataset::load_for_eval(&spec)? };
    let mut items = Vec::new();
    for (name, split) in [("train", &ds.train), ("test", &ds.test)] {
        for i in 0..split.len() {
            let (name, source) = match &split.images {
                Images::Files(paths) => (paths[i].display().to_string(), Source::File(paths[i].clone())),
                Images::Memory { .. } => (format!("{name}/{i}"), Source::Memory(split.clone(), i)),
            };
            items.push(Item { name, source, label: Some(split.labels[i]) });
        }
    }
    Ok((items, ds.classes))
}

pub fn run(a: Args) -> Result<()> {
    let batch = check_batch(a.batch)?;
    let (items, classes) = match (&a.data, a.images.is_empty()) {
        (Some(_), false) => bail!("give images or --data, not both"),
        (None, true) => bail!("nothing to embed: give images, or --data KIND:PATH"),
        (Some(d), true) => dataset_items(d)?,
        (None, false) => {
            let items = a.images.iter().map(|p| Item {
                name: p.display().to_string(),
                source: Source::File(p.clone()),
                label: None,
            });
            (items.collect(), Vec::new())
        }
    };
    let format = match a.out.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Format::Safetensors,
        Some("npy") => Format::Npy,
        _ => bail!("--out {} must end in .safetensors or .npy", a.out.display()),
    };
    let cpu = a.compute.backend()?;
    // Decoding alongside the network pays only where it has cores of its
    // own: the network's threads split each operation evenly, so one of them
    // preempted by a decoder holds every other back.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let decoding = match a.workers {
        Some(0) => bail!("--workers must be at least 1"),
        Some(w) => Decoding::Alongside(w),
        None if cores > cpu.threads() => Decoding::Alongside(cores - cpu.threads()),
        None => Decoding::Between,
    };
    let precision = precision(a.precision.precision, &cpu);
    let (weights, entry) = crate::weights::resolve(&a.weights)?;
    let mut fx = FeatureExtractor::load(&cpu, a.arch.as_deref(), &weights, &[a.layer.as_str()], precision)
        .with_context(|| format!("cannot load {}", weights.display()))?;
    a.transform.apply(&mut fx.transform, entry.as_ref().map(|e| e.preset.as_str()))?;
    let dims = fx.shapes()?.remove(0);
    let mut shape = vec![items.len()];
    shape.extend(&dims);
    let labelled = items.iter().all(|i| i.label.is_some()) && !items.is_empty();
    let meta = serde_json::json!({
        "paths": items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        "layer": a.layer,
        "arch": fx.spec.name,
        "weights": a.weights.display().to_string(),
        "classes": classes,
        "transform": fx.transform,
    });
    let labels: Vec<i64> = if labelled { items.iter().map(|i| i.label.unwrap_or(0) as i64).collect() } else { vec![] };

    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(items.len() as u64), ProgressDrawTarget::stderr_with_hz(4))
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} images  {per_sec}  ETA {eta}")
            .expect("a valid progress template"),
    );
    let start = std::time::Instant::now();
    let mut failure = None;
    let written = resnet::io::atomic::write_with(&a.out, |w| {
        format.header(w, &shape, &labels, &meta)?;
        let result = embed(&mut fx, &items, batch, decoding, &bar, |values| {
            let mut bytes = Vec::with_capacity(values.len() * 4);
            values.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
            Ok(w.write_all(&bytes)?)
        });
        if let Err(e) = result {
            failure = Some(e);
            return Err(std::io::Error::other("embedding stopped"));
        }
        if format == Format::Safetensors {
            labels.iter().try_for_each(|l| w.write_all(&l.to_le_bytes()))?;
        }
        Ok(())
    });
    bar.finish_and_clear();
    if let Some(e) = failure {
        return Err(e);
    }
    written?;
    if format == Format::Npy {
        let mut side = meta.clone();
        side["labels"] = serde_json::json!(labels);
        side["shape"] = serde_json::json!(shape);
        resnet::io::atomic::write(&a.out.with_extension("json"), &serde_json::to_vec_pretty(&side)?)?;
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "embedded {} with {} ({}: {} values each) in {secs:.1} s, {:.1} images/s -> {}",
        crate::util::count(items.len() as u64, "image"),
        fx.spec.name,
        a.layer,
        dims.iter().product::<usize>(),
        items.len() as f64 / secs,
        a.out.display()
    );
    Ok(())
}

/// Where images are decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decoding {
    /// On a pool of this many threads of its own, a batch ahead of the network.
    Alongside(usize),
    /// On the network's own threads, between its batches.
    Between,
}

/// Runs `fx` over `items` in batches, decoding as `decoding` says; hands
/// each batch's features to `write`, in order.
fn embed(
    fx: &mut FeatureExtractor<Cpu>,
    items: &[Item],
    batch: usize,
    decoding: Decoding,
    bar: &ProgressBar,
    mut write: impl FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    let (transform, cpu) = (fx.transform.clone(), fx.backend().clone());
    let decode = |chunk: &[Item]| -> Result<Vec<f32>> {
        let images = chunk.par_iter().map(|it| Ok(transform.apply_hwc(&it.decode()?))).collect::<Result<Vec<_>>>()?;
        Ok(images.concat())
    };
    let mut step = |n: usize, chw: &[f32]| -> Result<()> {
        write(&fx.run(n, chw)?[0].data)?;
        bar.inc(n as u64);
        Ok(())
    };
    let workers = match decoding {
        Decoding::Alongside(n) => n,
        Decoding::Between => {
            for chunk in items.chunks(batch) {
                step(chunk.len(), &cpu.scope(|| decode(chunk))?)?;
            }
            return Ok(());
        }
    };
    let pool =
        rayon::ThreadPoolBuilder::new().num_threads(workers).thread_name(|i| format!("resnet-decode-{i}")).build()?;
    // Two batches in the queue: one ready, one being made.
    let (tx, rx) = sync_channel::<Result<(usize, Vec<f32>)>>(2);
    let (pool, decode) = (&pool, &decode);
    std::thread::scope(|s| {
        // Moves `tx` in: the queue ends when this thread does.
        s.spawn(move || {
            for chunk in items.chunks(batch) {
                let decoded = pool.install(|| decode(chunk));
                let stop = decoded.is_err();
                // The receiver hangs up when the network side fails: stop then.
                if tx.send(decoded.map(|v| (chunk.len(), v))).is_err() || stop {
                    break;
                }
            }
        });
        for msg in rx {
            let (n, chw) = msg?;
            step(n, &chw)?;
        }
        Ok(())
    })
}

/// The output file's format.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Safetensors,
    Npy,
}

impl Format {
    /// Writes what precedes the features: the safetensors header (tensors
    /// `features` and, when there are labels, `labels`; metadata) or the
    /// .npy header.
    fn header(
        self,
        w: &mut impl Write,
        shape: &[usize],
        labels: &[i64],
        meta: &serde_json::Value,
    ) -> std::io::Result<()> {
        let bytes = shape.iter().product::<usize>() * 4;
        match self {
            Format::Safetensors => {
                let mut metadata = serde_json::Map::new();
                for (k, v) in meta.as_object().expect("an object") {
                    let text = if let Some(s) = v.as_str() { s.to_string() } else { v.to_string() };
                    metadata.insert(k.clone(), text.into());
                }
                let mut header = serde_json::json!({
                    "__metadata__": metadata,
                    "features": {"dtype": "F32", "shape": shape, "data_offsets": [0, bytes]},
                });
                if !labels.is_empty() {
                    header["labels"] = serde_json::json!({"dtype": "I64", "shape": [labels.len()], "data_offsets": [bytes, bytes + labels.len() * 8]});
                }
                let mut text = serde_json::to_vec(&header)?;
                // The safetensors readers refuse headers over 100 MB (paths of millions of images).
                if text.len() > 100_000_000 {
                    return Err(std::io::Error::other(format!(
                        "{} images' paths do not fit a safetensors header (100 MB): write .npy, whose paths go to a .json beside it",
                        shape[0]
                    )));
                }
                // The data starts 8-byte aligned, as the format recommends.
                text.resize(text.len().next_multiple_of(8), b' ');
                w.write_all(&(text.len() as u64).to_le_bytes())?;
                w.write_all(&text)
            }
            Format::Npy => {
                let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
                let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
                let mut text = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}").into_bytes();
                // Magic (6) + version (2) + length (2) + header, padded with
                // spaces and ended by a newline to a multiple of 64 bytes.
                let total = (10 + text.len() + 1).next_multiple_of(64);
                text.resize(total - 10 - 1, b' ');
                text.push(b'\n');
                w.write_all(b"\x93NUMPY\x01\x00")?;
                w.write_all(&(text.len() as u16).to_le_bytes())?;
                w.write_all(&text)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_parsable() {
        let mut out = Vec::new();
        Format::Npy.header(&mut out, &[3, 2048], &[], &serde_json::json!({})).unwrap();
        assert_eq!(out.len() % 64, 0);
        assert_eq!(&out[..8], b"\x93NUMPY\x01\x00");
        let text = std::str::from_utf8(&out[10..]).unwrap();
        assert!(text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2048), }"), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn safetensors_header_reads_back() {
        let mut out = Vec::new();
        let meta = serde_json::json!({"paths": ["a.jpg", "b.jpg"], "layer": "avgpool"});
        Format::Safetensors.header(&mut out, &[2, 3], &[4, 5], &meta).unwrap();
        assert_eq!(out.len() % 8, 0);
        for v in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for l in [4i64, 5] {
            out.extend_from_slice(&l.to_le_bytes());
        }
        let st = safetensors::SafeTensors::deserialize(&out).unwrap();
        assert_eq!(st.tensor("features").unwrap().shape(), [2, 3]);
        assert_eq!(st.tensor("labels").unwrap().data(), [4i64.to_le_bytes(), 5i64.to_le_bytes()].concat());
        let (_, header) = safetensors::SafeTensors::read_metadata(&out).unwrap();
        let m = header.metadata().as_ref().unwrap();
        assert_eq!(m["paths"], r#"["a.jpg","b.jpg"]"#);
        assert_eq!(m["layer"], "avgpool");
    }
}
