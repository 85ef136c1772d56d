//! Weights in and out: state dicts in safetensors and PyTorch `.pth` files.
//!
//! A [`StateDict`] is PyTorch's: named tensors in PyTorch's layout (filters
//! OIHW). Loading into a [`Network`] is strict by default: a missing or
//! unexpected key, or a shape mismatch, is an error naming the key (and both
//! shapes). The one exception is PyTorch's own: checkpoints written before
//! batch norms tracked `num_batches_tracked` (e.g. torchvision's 2017
//! ResNet-18 weights) load with the counter at zero, as in PyTorch.

pub mod atomic;
pub mod pickle;
pub mod pth;
pub mod safetensors;

use std::collections::BTreeMap;
use std::path::Path;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::graph::ParamRole;
use crate::model::{ARCHS, Graph, Network, ResNetSpec, StateEntry};

/// Values of a stored tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Floating point (f16, bf16 and f64 are converted on reading).
    F32(Vec<f32>),
    /// Integers (`num_batches_tracked`).
    I64(Vec<i64>),
}

/// A tensor as a checkpoint stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// PyTorch's shape.
    pub shape: Vec<usize>,
    /// Values in row-major order.
    pub data: TensorData,
}

impl HostTensor {
    /// Number of elements the shape implies.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Named tensors, as PyTorch's `state_dict()`.
pub type StateDict = BTreeMap<String, HostTensor>;

/// Reads a state dict from a `.safetensors` or `.pth`/`.pt`/`.bin` file
/// (decided by content, not by name).
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    let size = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    let budget = memory_budget()?;
    if size > budget {
        return Err(Error::format(
            path,
            format!("{size} bytes is over the memory budget of {budget} bytes (set RESNET_MEMORY_BUDGET to raise it)"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_state_dict(path, &bytes)
}

/// The default of [`memory_budget`]: several times the largest ResNet's
/// weights (Wide ResNet-101-2 in f64 is about 1 GB) and far beyond the data
/// sets read into memory.
pub const DEFAULT_MEMORY_BUDGET: u64 = 4 << 30;

/// The most memory the sizes a file declares may ask for (weights files,
/// IDX payloads): `$RESNET_MEMORY_BUDGET` in bytes, with an optional `K`,
/// `M` or `G` suffix (powers of 1024), else [`DEFAULT_MEMORY_BUDGET`]. Sizes
/// are checked against it before anything is allocated.
pub fn memory_budget() -> Result<u64> {
    let Ok(text) = std::env::var("RESNET_MEMORY_BUDGET") else { return Ok(DEFAULT_MEMORY_BUDGET) };
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    match digits.parse::<u64>().ok().and_then(|n| n.checked_mul(1 << shift)) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(Error::Invalid(format!("RESNET_MEMORY_BUDGET={text:?} is not a size (e.g. 8G, 512M)"))),
    }
}

/// Parses a state dict held in memory (`path` names it in errors); see
/// [`read_state_dict`].
pub fn parse_state_dict(path: &Path, bytes: &[u8]) -> Result<StateDict> {
    // safetensors: a little-endian u64 header length, then the JSON header.
    // The length's first byte can be anything (0x80 included, which is also
    // pickle's first byte), so the header's `{` decides.
    let header_len = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    let looks_safetensors =
        header_len.is_some_and(|n| n >= 2 && n <= bytes.len() as u64 - 8) && bytes.get(8) == Some(&b'{');
    if bytes.starts_with(b"PK\x03\x04") {
        pth::read(path, bytes)
    } else if looks_safetensors {
        safetensors::read(path, bytes)
    } else if bytes.first() == Some(&0x80) {
        Err(Error::format(
            path,
            "this is a legacy (pre-1.6, non-zip) PyTorch file; re-save it with a current PyTorch: \
             `torch.save(torch.load(old, weights_only=False), new)`",
        ))
    } else if bytes.len() >= 8 {
        safetensors::read(path, bytes)
    } else {
        Err(Error::format(path, format!("file too short ({} bytes) to be weights", bytes.len())))
    }
}

/// Strictness of [`load_state_dict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadMode {
    /// Every key of the model in the file and nothing else (PyTorch's `strict=True`).
    Strict,
    /// Load everything except the classifier (`fc.*`), which keeps its
    /// initialisation: fine-tuning to a new number of classes.
    SkipClassifier,
}

/// Checks `sd` against the key/shape table of `graph`: every key of the
/// model in the file with its shape (PyTorch's `strict=True`, but for
/// `num_batches_tracked`, which old checkpoints lack), floats where floats
/// belong, finite, with non-negative running variances, and no other key.
/// The first problem, in torchvision's key order, is the error.
pub fn check_state_dict(graph: &Graph, sd: &StateDict, mode: LoadMode) -> Result<()> {
    let skip = |k: &str| mode == LoadMode::SkipClassifier && k.starts_with("fc.");
    let hint = || guess_hint(sd, &graph.spec.name);
    for p in graph.params().filter(|p| !skip(&p.key)) {
        let counter = p.role == ParamRole::NumBatchesTracked;
        let Some(t) = sd.get(&p.key) else {
            if counter {
                continue;
            }
            return Err(Error::MissingKey { key: p.key, hint: hint() });
        };
        let stored = match &t.data {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        };
        if stored != t.numel() {
            return Err(Error::Invalid(format!("`{}` holds {stored} values for the shape {:?}", p.key, t.shape)));
        }
        let shape_ok = match (&t.data, counter) {
            (TensorData::I64(_), false) => {
                return Err(Error::Invalid(format!("`{}` holds integers, expected floats", p.key)));
            }
            (_, true) => t.numel() == 1,
            (TensorData::F32(_), false) => t.shape == p.shape,
        };
        if let TensorData::F32(v) = &t.data {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::Invalid(format!(
                    "`{}` holds a non-finite value ({} at index {i}): the weights are corrupt or diverged",
                    p.key, v[i]
                )));
            }
            if p.role == ParamRole::RunningVar
                && let Some(i) = v.iter().position(|&x| x < 0.0)
            {
                return Err(Error::Invalid(format!(
                    "`{}` holds a negative variance ({} at index {i}): the weights are corrupt",
                    p.key, v[i]
                )));
            }
        }
        if !shape_ok {
            let hint = if p.key.starts_with("fc.") && mode == LoadMode::Strict {
                let classes = t.shape.first().copied().unwrap_or(0);
                format!(
                    " (the weights have {classes} classes: pass --num-classes {classes}, or fine-tune with a new head)"
                )
            } else {
                hint()
            };
            return Err(Error::ShapeMismatch { key: p.key, expected: p.shape, found: t.shape.clone(), hint });
        }
    }
    let known: std::collections::BTreeSet<String> = graph.params().map(|p| p.key).collect();
    match sd.keys().find(|k| !known.contains(*k) && !skip(k)) {
        Some(key) => Err(Error::UnexpectedKey { key: key.clone(), hint: hint() }),
        None => Ok(()),
    }
}

/// Copies a state dict into `net` after [`check_state_dict`].
pub fn load_state_dict<B: Backend>(net: &mut Network<B>, sd: &StateDict, mode: LoadMode) -> Result<()> {
    check_state_dict(net.graph(), sd, mode)?;
    let backend = net.backend().clone();
    net.try_visit(&mut |key, entry| {
        let Some(t) = sd.get(key).filter(|_| !(mode == LoadMode::SkipClassifier && key.starts_with("fc."))) else {
            return Ok(());
        };
        match (entry, &t.data) {
            (StateEntry::Param(p), TensorData::F32(v)) => p.set_from_torch(&backend, v),
            (StateEntry::Buffer(buf, _), TensorData::F32(v)) => backend.upload(v).map(|v| *buf = v),
            (StateEntry::Counter(c), TensorData::I64(v)) => {
                *c = v[0];
                Ok(())
            }
            (StateEntry::Counter(c), TensorData::F32(v)) => {
                *c = v[0] as i64;
                Ok(())
            }
            (_, TensorData::I64(_)) => unreachable!("check_state_dict refuses integer parameters"),
        }
    })
}

/// Reads the state dict of `net` (PyTorch layout and names).
pub fn state_dict<B: Backend>(net: &mut Network<B>) -> Result<StateDict> {
    let backend = net.backend().clone();
    let mut sd = StateDict::new();
    net.try_visit(&mut |key, entry| {
        let t = match entry {
            StateEntry::Param(p) => {
                p.to_torch(&backend).map(|v| HostTensor { shape: p.shape.clone(), data: TensorData::F32(v) })
            }
            StateEntry::Buffer(buf, len) => {
                backend.download(buf).map(|v| HostTensor { shape: vec![len], data: TensorData::F32(v) })
            }
            StateEntry::Counter(c) => Ok(HostTensor { shape: vec![], data: TensorData::I64(vec![*c]) }),
        };
        sd.insert(key.to_string(), t?);
        Ok(())
    })?;
    Ok(sd)
}

/// Recognises which named architecture a state dict holds, from its keys and
/// shapes alone: the file's class and channel counts applied to each named
/// architecture (and to the CIFAR depths with as many units per stage as the
/// file has), compared with the graph's key/shape table. No weights are
/// built, so this is cheap for any file.
pub fn guess_arch(sd: &StateDict) -> Option<ResNetSpec> {
    let classes = sd.get("fc.weight").and_then(|t| t.shape.first().copied())?;
    let in_ch = sd.get("conv1.weight").and_then(|t| t.shape.get(1).copied())?;
    let n = (0..).take_while(|i| sd.keys().any(|k| k.starts_with(&format!("layer1.{i}.")))).count();
    let cifar = [format!("resnet{}", 6 * n + 2), format!("plain{}", 6 * n + 2), format!("preact_resnet{}", 6 * n + 2)];
    let cifar = cifar.into_iter().chain(std::iter::once(format!("preact_resnet{}", 9 * n + 2)));
    ARCHS.iter().map(|s| s.to_string()).chain(cifar).find_map(|name| {
        let mut spec = ResNetSpec::named(&name).ok()?;
        spec.num_classes = classes;
        spec.in_channels = in_ch;
        let graph = Graph::new(&spec).ok()?;
        let mut expected = 0;
        let all_match = graph.params().all(|p| {
            expected += 1;
            p.role == ParamRole::NumBatchesTracked || sd.get(&p.key).is_some_and(|t| t.shape == p.shape)
        });
        (all_match && expected >= sd.len()).then_some(spec)
    })
}

fn guess_hint(sd: &StateDict, model: &str) -> String {
    match guess_arch(sd) {
        Some(spec) if spec.name != model => {
            format!(" (the file holds {} weights; try --arch {})", spec.name, spec.name)
        }
        _ => String::new(),
    }
}
