//! MNIST and Fashion-MNIST in IDX format (Y. LeCun's layout): a big-endian
//! header of magic number and dimensions, then unsigned bytes.
//!
//! The folder holds the four standard files, raw or gzipped:
//! `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (with `.gz` or not,
//! and the `train-images.idx3-ubyte` spelling also accepted).

use std::path::{Path, PathBuf};

use super::{DataKind, DataSpec, Dataset, Images, Split, read_maybe_gz};
use resnet::error::{Error, Result};

/// Finds `stem` (e.g. `train-images-idx3-ubyte`) in `dir`, in any accepted spelling.
fn find(dir: &Path, stem: &str) -> Result<PathBuf> {
    let dotted = stem.replacen("-idx", ".idx", 1);
    for name in [stem.to_string(), format!("{stem}.gz"), dotted.clone(), format!("{dotted}.gz")] {
        let p = dir.join(&name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::Invalid(format!("{} has no {stem} (or {stem}.gz)", dir.display())))
}

/// Parses an IDX file: returns the dimensions and the payload.
pub fn parse(path: &Path, bytes: &[u8], expect_dims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |m: String| Error::format(path, m);
    if bytes.len() < 4 {
        return Err(bad(format!("truncated: {} bytes, no IDX header", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad("not an unsigned-byte IDX file (bad magic number)".into()));
    }
    let ndim = bytes[3] as usize;
    if ndim != expect_dims {
        return Err(bad(format!("IDX file has {ndim} dimensions, expected {expect_dims}")));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad("truncated IDX header".into()));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let want: usize = dims.iter().product();
    let have = bytes.len() - header;
    if have != want {
        return Err(bad(format!(
            "{} payload: dimensions {dims:?} need {want} bytes after the {header}-byte header, the file has {have}",
            if have < want { "truncated" } else { "oversized" }
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}

fn load_split(dir: &Path, prefix: &str) -> Result<Split> {
    let ip = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lp = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (idims, images) = parse(&ip, &read_maybe_gz(&ip)?, 3)?;
    let (ldims, labels) = parse(&lp, &read_maybe_gz(&lp)?, 1)?;
    if idims[0] != ldims[0] {
        return Err(Error::Invalid(format!(
            "{} holds {} images but {} holds {} labels",
            ip.display(),
            idims[0],
            lp.display(),
            ldims[0]
        )));
    }
    if idims[0] == 0 || idims[1] == 0 || idims[2] == 0 {
        return Err(Error::format(&ip, "no images"));
    }
    Ok(Split {
        images: Images::Memory { h: idims[1], w: idims[2], c: 1, data: images },
        labels: labels.into_iter().map(u32::from).collect(),
    })
}

/// Loads MNIST or Fashion-MNIST from a folder of IDX files.
pub fn load(spec: &DataSpec) -> Result<Dataset> {
    let (classes, mean, std): (Vec<String>, f32, f32) = match spec.kind {
        DataKind::FashionMnist => {
            (resnet::labels::FASHION_MNIST.iter().map(|s| s.to_string()).collect(), 0.2860, 0.3530)
        }
        _ => ((0..10).map(|d| d.to_string()).collect(), 0.1307, 0.3081),
    };
    let ds = Dataset {
        spec: spec.clone(),
        classes,
        train: std::sync::Arc::new(load_split(&spec.path, "train")?),
        test: std::sync::Arc::new(load_split(&spec.path, "t10k")?),
        channels: 1,
        mean: vec![mean],
        std: vec![std],
    };
    ds.check_labels()?;
    Ok(ds)
}

/// Writes an IDX file (for subsets and tests), gzipped when `gz`.
pub fn write(path: &Path, dims: &[usize], payload: &[u8], gz: bool) -> Result<()> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        bytes.extend_from_slice(&(d as u32).to_be_bytes());
    }
    bytes.extend_from_slice(payload);
    if gz {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&bytes).map_err(|e| Error::io(path, e))?;
        bytes = enc.finish().map_err(|e| Error::io(path, e))?;
    }
    resnet::io::atomic::write(path, &bytes)
}
