//! `resnet export`: an ONNX model of a network and its weights.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use resnet::classify::Loaded;
use resnet::onnx::{ExportOptions, OPSETS};

use crate::util::TransformFlags;

/// Arguments of `resnet export`.
#[derive(clap::Args)]
pub struct Args {
    /// Weights: .safetensors, a PyTorch .pth, or a name (torchvision:ARCH[.v1|.v2]).
    #[arg(long)]
    weights: PathBuf,
    /// Architecture (see `resnet archs`); optional for our checkpoints and recognised weights.
    #[arg(long)]
    arch: Option<String>,
    /// Output .onnx file.
    #[arg(long)]
    out: PathBuf,
    /// ONNX operator set (13 to 21).
    #[arg(long, default_value_t = 17)]
    opset: i64,
    /// Batch size of the model's input: a number, or `dynamic` (a named dimension).
    #[arg(long, default_value = "dynamic")]
    batch: String,
    /// Fold batch norms into the convolutions before them (as `torch.onnx.export`
    /// does in evaluation mode); otherwise each is a BatchNormalization node.
    #[arg(long)]
    fold_bn: bool,
    /// Input height and width (default: the preprocessing's crop).
    #[arg(long)]
    size: Option<usize>,
    #[command(flatten)]
    transform: TransformFlags,
}

pub fn run(a: Args) -> Result<()> {
    let batch = match a.batch.as_str() {
        "dynamic" => None,
        n => match n.parse::<usize>() {
            Ok(n) if (1..=crate::util::MAX_BATCH).contains(&n) => Some(n),
            _ => bail!("--batch must be `dynamic` or a number from 1 to {}, got `{n}`", crate::util::MAX_BATCH),
        },
    };
    if !OPSETS.contains(&a.opset) {
        bail!("--opset {} is not supported: use {} to {}", a.opset, OPSETS.start(), OPSETS.end());
    }
    if a.out.extension().and_then(|e| e.to_str()) != Some("onnx") {
        bail!("--out {} must end in .onnx", a.out.display());
    }
    let (weights, entry) = crate::weights::resolve(&a.weights)?;
    let mut m = Loaded::read(a.arch.as_deref(), &weights, None)
        .with_context(|| format!("cannot load {}", weights.display()))?;
    if resnet::infer::quant::QuantModel::is_quantized(&m.sd) {
        bail!(
            "{} holds int8-quantized weights: export the f32 weights they came from (ONNX Runtime quantizes \
             an f32 model itself)",
            weights.display()
        );
    }
    a.transform.apply(&mut m.transform, entry.as_ref().map(|e| e.preset.as_str()))?;
    let size = a.size.unwrap_or(m.transform.size());
    if size == 0 || size > resnet::preprocess::MAX_TRANSFORM_SIDE {
        bail!("--size must be between 1 and {}, got {size}", resnet::preprocess::MAX_TRANSFORM_SIDE);
    }
    m.graph.shapes(size, size)?;
    let metadata = vec![
        ("arch".to_string(), m.spec.name.clone()),
        ("spec".to_string(), serde_json::to_string(&m.spec)?),
        ("preprocess".to_string(), serde_json::to_string(&m.transform)?),
        ("class_names".to_string(), serde_json::to_string(&m.labels)?),
    ];
    let opts = ExportOptions { opset: a.opset, batch, size: (size, size), fold_bn: a.fold_bn, metadata };
    let bytes = resnet::onnx::export(&m.graph, &m.sd, &opts)?;
    resnet::io::atomic::write(&a.out, &bytes)?;
    println!(
        "wrote {} to {} (opset {}, batch {}, input {}x{}x{size}x{size}{}, {:.1} MB)",
        m.spec.name,
        a.out.display(),
        a.opset,
        batch.map_or("dynamic".to_string(), |n| n.to_string()),
        batch.map_or("N".to_string(), |n| n.to_string()),
        m.spec.in_channels,
        if a.fold_bn { ", batch norms folded" } else { "" },
        bytes.len() as f64 / 1e6
    );
    Ok(())
}
