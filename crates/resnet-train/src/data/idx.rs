//! MNIST and Fashion-MNIST in IDX format (Y. LeCun's layout): a big-endian
//! header of magic number and dimensions, then unsigned bytes.
//!
//! The folder holds the four standard files, raw or gzipped:
//! `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (with `.gz` or not,
//! and the `train-images.idx3-ubyte` spelling also accepted).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataKind, DataSpec, Dataset, Images, Split, open_maybe_gz};
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

/// Parses an IDX stream: returns the dimensions and the payload. The header
/// is read first and its dimensions checked (their product, without
/// overflow, against [`resnet::io::memory_budget`]); then exactly the declared payload is
/// read, so a compressed file that inflates to more than its header says is
/// refused after reading one byte too many, not after inflating all of it.
pub fn parse(path: &Path, mut r: impl Read, expect_dims: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |m: String| Error::format(path, m);
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad("truncated IDX file".into()),
        _ => bad(format!("cannot read: {e}")),
    };
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic).map_err(io)?;
    if magic[..3] != [0, 0, 0x08] {
        return Err(bad("not an unsigned-byte IDX file (bad magic number)".into()));
    }
    let ndim = magic[3] as usize;
    if ndim != expect_dims {
        return Err(bad(format!("IDX file has {ndim} dimensions, expected {expect_dims}")));
    }
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        let mut d = [0u8; 4];
        r.read_exact(&mut d).map_err(io)?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    let budget = resnet::io::memory_budget()?;
    let want = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64)).filter(|&n| n <= budget);
    let Some(want) = want else {
        return Err(bad(format!(
            "IDX dimensions {dims:?} declare more than the memory budget of {budget} bytes \
             (set RESNET_MEMORY_BUDGET to raise it)"
        )));
    };
    let mut payload = Vec::new();
    r.by_ref().take(want + 1).read_to_end(&mut payload).map_err(io)?;
    let have = payload.len() as u64;
    if have > want {
        return Err(bad(format!("more data than the IDX header declares ({dims:?}: {want} bytes)")));
    }
    if have < want {
        return Err(bad(format!("truncated payload: dimensions {dims:?} need {want} bytes, the file has {have}")));
    }
    Ok((dims, payload))
}

fn load_split(dir: &Path, prefix: &str) -> Result<Split> {
    let ip = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let lp = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (idims, images) = parse(&ip, open_maybe_gz(&ip)?, 3)?;
    let (ldims, labels) = parse(&lp, open_maybe_gz(&lp)?, 1)?;
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
