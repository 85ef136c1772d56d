//! CIFAR-10 and CIFAR-100 binary batches (A. Krizhevsky's "binary version").
//!
//! CIFAR-10: `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`,
//! records of 1 label byte + 3072 pixel bytes (RGB planes, 32x32).
//! CIFAR-100: `train.bin` and `test.bin`, records of a coarse and a fine label
//! byte + 3072 pixel bytes; the fine labels (100 classes) are used.

use std::path::Path;

use super::{DataKind, DataSpec, Dataset, Images, Split};
use resnet::error::{Error, Result};

const PIXELS: usize = 32 * 32 * 3;

fn read_batches(dir: &Path, files: &[String], label_bytes: usize) -> Result<Split> {
    let mut data = Vec::new();
    let mut labels = Vec::new();
    for f in files {
        let p = dir.join(f);
        let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        parse_batch(&bytes, label_bytes, &mut data, &mut labels).map_err(|m| Error::format(&p, m))?;
    }
    Ok(Split { images: Images::Memory { h: 32, w: 32, c: 3, data }, labels })
}

/// Appends the records of one binary batch file (each `label_bytes` label
/// bytes, the last being the class, then the R, G and B planes of a 32x32
/// image) to `data` (interleaved HWC) and `labels`.
pub fn parse_batch(
    bytes: &[u8],
    label_bytes: usize,
    data: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> std::result::Result<(), String> {
    let rec = label_bytes + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(rec) {
        return Err(format!(
            "{} bytes is not a whole number of {rec}-byte records (truncated at record {}, byte {})",
            bytes.len(),
            bytes.len() / rec,
            bytes.len() / rec * rec
        ));
    }
    for r in bytes.chunks_exact(rec) {
        labels.push(r[label_bytes - 1] as u32);
        // Planes (R, G, B) to interleaved HWC.
        let px = &r[label_bytes..];
        for i in 0..32 * 32 {
            data.extend_from_slice(&[px[i], px[1024 + i], px[2048 + i]]);
        }
    }
    Ok(())
}

fn names(dir: &Path, file: &str, n: usize, default: &[&str]) -> Vec<String> {
    let from_file = std::fs::read_to_string(dir.join(file))
        .ok()
        .map(|t| t.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect::<Vec<_>>())
        .filter(|v| v.len() == n);
    from_file.unwrap_or_else(|| {
        if default.len() == n {
            default.iter().map(|s| s.to_string()).collect()
        } else {
            (0..n).map(|i| format!("class {i}")).collect()
        }
    })
}

/// Loads CIFAR-10 or CIFAR-100 from the folder of binary batches.
pub fn load(spec: &DataSpec) -> Result<Dataset> {
    let dir = &spec.path;
    let ds = if spec.kind == DataKind::Cifar10 {
        let train: Vec<String> = (1..=5).map(|i| format!("data_batch_{i}.bin")).collect();
        Dataset {
            spec: spec.clone(),
            classes: names(dir, "batches.meta.txt", 10, &resnet::labels::CIFAR10),
            train: std::sync::Arc::new(read_batches(dir, &train, 1)?),
            test: std::sync::Arc::new(read_batches(dir, &["test_batch.bin".to_string()], 1)?),
            channels: 3,
            mean: vec![0.4914, 0.4822, 0.4465],
            std: vec![0.2470, 0.2435, 0.2616],
        }
    } else {
        Dataset {
            spec: spec.clone(),
            classes: names(dir, "fine_label_names.txt", 100, &[]),
            train: std::sync::Arc::new(read_batches(dir, &["train.bin".to_string()], 2)?),
            test: std::sync::Arc::new(read_batches(dir, &["test.bin".to_string()], 2)?),
            channels: 3,
            mean: vec![0.5071, 0.4865, 0.4409],
            std: vec![0.2673, 0.2564, 0.2762],
        }
    };
    ds.check_labels()?;
    Ok(ds)
}
