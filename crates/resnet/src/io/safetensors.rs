//! safetensors files (Hugging Face's format), read and written with the
//! `safetensors` crate.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, View};

use super::{HostTensor, StateDict, TensorData, atomic};
use crate::error::{Error, Result};

/// Parses a safetensors file held in memory.
pub fn read(path: &Path, bytes: &[u8]) -> Result<StateDict> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut sd = StateDict::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => {
                TensorData::F32(raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
            }
            Dtype::F16 => {
                TensorData::F32(raw.chunks_exact(2).map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect())
            }
            Dtype::BF16 => {
                TensorData::F32(raw.chunks_exact(2).map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]]))).collect())
            }
            Dtype::F64 => TensorData::F32(
                raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
            ),
            Dtype::U8 => TensorData::F32(raw.iter().map(|&b| b as f32).collect()),
            Dtype::I8 => TensorData::F32(raw.iter().map(|&b| b as i8 as f32).collect()),
            Dtype::I64 => TensorData::I64(
                raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect(),
            ),
            other => return Err(Error::format(path, format!("tensor `{name}` has unsupported dtype {other:?}"))),
        };
        sd.insert(name, HostTensor { shape, data });
    }
    Ok(sd)
}

/// Reads the `__metadata__` strings of a safetensors file.
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

struct Raw<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    bytes: Vec<u8>,
}

impl View for &Raw<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Serialises a state dict (f32 and i64 tensors) with optional metadata.
pub fn to_bytes(sd: &StateDict, metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    to_bytes_int8(sd, &[], metadata)
}

/// [`to_bytes`], storing the f32 tensors named in `int8` (integers within
/// `-128..=127`, as a quantized model's weights are) as int8.
pub fn to_bytes_int8(sd: &StateDict, int8: &[String], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let raws: Vec<(String, Raw<'_>)> = sd
        .iter()
        .map(|(k, t)| {
            let (dtype, bytes) = match &t.data {
                TensorData::F32(v) if int8.contains(k) => {
                    if let Some(x) = v.iter().find(|x| x.fract() != 0.0 || !(-128.0..=127.0).contains(*x)) {
                        return Err(Error::Invalid(format!("`{k}` holds {x}, not an int8 value")));
                    }
                    (Dtype::I8, v.iter().map(|&x| x as i8 as u8).collect())
                }
                TensorData::F32(v) => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                TensorData::I64(v) => (Dtype::I64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            Ok((k.clone(), Raw { dtype, shape: &t.shape, bytes }))
        })
        .collect::<Result<_>>()?;
    safetensors::tensor::serialize(raws.iter().map(|(k, r)| (k.as_str(), r)), metadata)
        .map_err(|e| Error::Invalid(format!("cannot serialise weights: {e}")))
}

/// Writes a state dict atomically.
pub fn write(path: &Path, sd: &StateDict, metadata: Option<HashMap<String, String>>) -> Result<()> {
    atomic::write(path, &to_bytes(sd, metadata)?)
}

/// IEEE half to single precision.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // Subnormal: renormalise.
            let shift = f.leading_zeros() - 21;
            sign | ((127 - 15 + 1 - shift) << 23) | ((f << shift) & 0x3ff) << 13
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16 to single precision.
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0200), 2f32.powi(-15));
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
    }

    #[test]
    fn round_trip() {
        let mut sd = StateDict::new();
        sd.insert(
            "a.weight".into(),
            HostTensor { shape: vec![2, 3], data: TensorData::F32(vec![1., 2., 3., 4., 5., 6.]) },
        );
        sd.insert("a.num_batches_tracked".into(), HostTensor { shape: vec![], data: TensorData::I64(vec![7]) });
        let bytes = to_bytes(&sd, None).unwrap();
        assert_eq!(read(Path::new("mem"), &bytes).unwrap(), sd);
        assert!(read(Path::new("mem"), &bytes[..bytes.len() - 3]).is_err());
    }
}
