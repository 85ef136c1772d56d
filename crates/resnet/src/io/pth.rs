//! PyTorch `.pth` files as `torch.save` writes them since 1.6: a zip archive
//! holding `<name>/data.pkl` (the pickled object) and one record
//! `<name>/data/<key>` of raw little-endian bytes per storage.
//!
//! The object may be a state dict, or a checkpoint dict holding one under
//! `state_dict` or `model`; keys prefixed `module.` (from `DataParallel`) are
//! accepted.

use std::io::{Cursor, Read};
use std::path::Path;

use super::pickle::{self, Value};
use super::safetensors::{bf16_to_f32, f16_to_f32};
use super::{HostTensor, StateDict, TensorData};
use crate::error::{Error, Result};

type Archive<'a> = zip::ZipArchive<Cursor<&'a [u8]>>;

/// Reads the state dict from a zip-format `.pth` file held in memory.
pub fn read(path: &Path, bytes: &[u8]) -> Result<StateDict> {
    let bad = |m: String| Error::format(path, m);
    let mut zip =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| bad(format!("not a readable zip archive: {e}")))?;
    let pkl_name = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .map(|n| n.to_string())
        .ok_or_else(|| bad("no data.pkl inside: not a PyTorch checkpoint".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let pkl = read_entry(&mut zip, &pkl_name, bytes.len()).map_err(bad)?;
    let big_endian = read_entry(&mut zip, &format!("{prefix}byteorder"), 16).is_ok_and(|b| b == b"big");
    let value = pickle::loads(&pkl).map_err(|e| bad(format!("{pkl_name}: {e}")))?;
    let dict = find_state_dict(value).ok_or_else(|| {
        bad("no state dict found (expected a dict of tensors, or one under `state_dict` or `model`)".into())
    })?;
    let strip = !dict.is_empty() && dict.iter().all(|(k, _)| k.starts_with("module."));
    let mut sd = StateDict::new();
    for (k, v) in dict {
        let Value::Tensor(t) = v else { continue };
        let raw = read_entry(&mut zip, &format!("{prefix}data/{}", t.key), bytes.len()).map_err(bad)?;
        let data = decode_storage(&t.kind, &raw, big_endian).map_err(|m| bad(format!("tensor `{k}`: {m}")))?;
        let t = gather(&k, data, t.offset, &t.size, &t.stride).map_err(bad)?;
        let name = if strip { k["module.".len()..].to_string() } else { k };
        sd.insert(name, t);
    }
    if sd.is_empty() {
        return Err(bad("the checkpoint holds no tensors".into()));
    }
    Ok(sd)
}

/// Reads an entry of at most `limit` bytes. torch.save stores entries
/// uncompressed, so no entry can be larger than the archive: the size the
/// directory claims is checked before anything is allocated, and the read is
/// capped whatever the directory says.
fn read_entry(zip: &mut Archive<'_>, name: &str, limit: usize) -> std::result::Result<Vec<u8>, String> {
    let f = zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
    let size = f.size();
    if size > limit as u64 {
        return Err(format!("{name}: the archive claims {size} bytes, more than the {limit} it can hold"));
    }
    let mut out = Vec::with_capacity(size as usize);
    f.take(size + 1).read_to_end(&mut out).map_err(|e| format!("{name}: {e}"))?;
    if out.len() as u64 != size {
        return Err(format!("{name}: {} bytes where the archive claims {size}", out.len()));
    }
    Ok(out)
}

/// The `str -> tensor` dict inside a checkpoint.
fn find_state_dict(v: Value) -> Option<Vec<(String, Value)>> {
    let Value::Dict(d) = v else { return None };
    let as_tensors = |d: &Vec<(Value, Value)>| !d.is_empty() && d.iter().all(|(_, v)| matches!(v, Value::Tensor(_)));
    if as_tensors(&d) {
        return Some(
            d.into_iter().filter_map(|(k, v)| if let Value::Str(k) = k { Some((k, v)) } else { None }).collect(),
        );
    }
    for want in ["state_dict", "model", "model_state_dict", "net"] {
        if let Some((_, inner)) = d.iter().find(|(k, _)| *k == Value::Str(want.into()))
            && let Some(found) = find_state_dict(inner.clone())
        {
            return Some(found);
        }
    }
    None
}

enum Decoded {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

fn decode_storage(kind: &str, raw: &[u8], big: bool) -> std::result::Result<Decoded, String> {
    fn words<const N: usize>(raw: &[u8], big: bool) -> impl Iterator<Item = [u8; N]> + '_ {
        raw.chunks_exact(N).map(move |c| {
            let mut a: [u8; N] = c.try_into().expect("chunk of N");
            if big {
                a.reverse();
            }
            a
        })
    }
    Ok(match kind {
        "FloatStorage" => Decoded::F32(words::<4>(raw, big).map(f32::from_le_bytes).collect()),
        "HalfStorage" => Decoded::F32(words::<2>(raw, big).map(|b| f16_to_f32(u16::from_le_bytes(b))).collect()),
        "BFloat16Storage" => Decoded::F32(words::<2>(raw, big).map(|b| bf16_to_f32(u16::from_le_bytes(b))).collect()),
        "DoubleStorage" => Decoded::F32(words::<8>(raw, big).map(|b| f64::from_le_bytes(b) as f32).collect()),
        "LongStorage" => Decoded::I64(words::<8>(raw, big).map(i64::from_le_bytes).collect()),
        "IntStorage" => Decoded::I64(words::<4>(raw, big).map(|b| i32::from_le_bytes(b) as i64).collect()),
        other => return Err(format!("unsupported storage type {other}")),
    })
}

/// Materialises a strided view of a storage as a contiguous tensor. The view
/// must lie inside its storage and hold no more elements than it (weights are
/// never expanded views; a 1-element storage viewed as a huge tensor would
/// otherwise allocate without bound), computed without overflow.
fn gather(
    name: &str,
    data: Decoded,
    offset: usize,
    size: &[usize],
    stride: &[usize],
) -> std::result::Result<HostTensor, String> {
    if size.len() != stride.len() {
        return Err(format!("tensor `{name}`: size and stride ranks differ"));
    }
    let len = match &data {
        Decoded::F32(v) => v.len(),
        Decoded::I64(v) => v.len(),
    };
    let numel = size.iter().try_fold(1usize, |a, &s| a.checked_mul(s));
    let numel = match numel {
        Some(n) if n <= len => n,
        _ => return Err(format!("tensor `{name}` of shape {size:?} does not fit its storage of {len} elements")),
    };
    if numel > 0 {
        let last = size
            .iter()
            .zip(stride)
            .try_fold(offset, |acc, (&s, &st)| (s - 1).checked_mul(st).and_then(|x| acc.checked_add(x)));
        match last {
            Some(last) if last < len => {}
            _ => {
                return Err(format!(
                    "tensor `{name}` (shape {size:?}, strides {stride:?}, offset {offset}) reaches past its \
                     storage of {len} elements (truncated or malformed file)"
                ));
            }
        }
    }
    let index = |mut i: usize| {
        let mut off = offset;
        for d in (0..size.len()).rev() {
            off += (i % size[d]) * stride[d];
            i /= size[d];
        }
        off
    };
    let data = match data {
        Decoded::F32(v) => TensorData::F32((0..numel).map(|i| v[index(i)]).collect()),
        Decoded::I64(v) => TensorData::I64((0..numel).map(|i| v[index(i)]).collect()),
    };
    Ok(HostTensor { shape: size.to_vec(), data })
}
