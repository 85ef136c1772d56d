//! Pretrained weights by name: torchvision's ImageNet files for the ResNet,
//! ResNeXt and Wide ResNet family, where to find them (a URL, the local
//! caches) and what they are (architecture, preprocessing preset, published
//! accuracy). Downloading is the CLI's (`resnet weights fetch`); this module
//! has no network code.
//!
//! Names: `torchvision:ARCH` (torchvision's `DEFAULT`: the V2 weights where
//! they exist, else V1), `torchvision:ARCH.v1`, `torchvision:ARCH.v2`. Every
//! file name carries the first 8 hex digits of the file's SHA-256, which a
//! download is checked against, as `torch.hub` does.
//!
//! Caches: ours is `$RESNET_CACHE`, else `$XDG_CACHE_HOME/resnet`, else
//! `~/.cache/resnet`; a file already in PyTorch's
//! (`$TORCH_HOME/hub/checkpoints`, default `~/.cache/torch/hub/checkpoints`)
//! is used as it is. `$RESNET_WEIGHTS_URL` replaces the base URL (the file
//! name is appended); `$RESNET_WEIGHTS_INDEX` names a JSON file of more
//! entries (a list of objects with this module's [`Pretrained`] fields).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// torchvision's download location.
pub const TORCHVISION_URL: &str = "https://download.pytorch.org/models/";

/// One pretrained weights file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pretrained {
    /// `resnet50.v2`.
    pub name: String,
    /// The architecture (`resnet50`).
    pub arch: String,
    /// File name, ending in `-<first 8 hex digits of its SHA-256>.pth`.
    pub file: String,
    /// Preprocessing preset (`v1`: resize 256; `v2`: resize 232; crop 224).
    pub preset: String,
    /// Published ImageNet-1k top-1 accuracy (%).
    pub acc1: f64,
    /// Published top-5 accuracy (%).
    pub acc5: f64,
    /// File size in MB (torchvision's figure).
    pub size_mb: f64,
    /// Whether a bare `torchvision:ARCH` means this file.
    #[serde(default)]
    pub default: bool,
}

/// torchvision's table: (arch, version, file, top-1, top-5, MB); the default
/// of each architecture is its last version.
const TABLE: &[(&str, &str, &str, f64, f64, f64)] = &[
    ("resnet18", "v1", "resnet18-f37072fd.pth", 69.758, 89.078, 44.661),
    ("resnet34", "v1", "resnet34-b627a593.pth", 73.314, 91.420, 83.275),
    ("resnet50", "v1", "resnet50-0676ba61.pth", 76.130, 92.862, 97.781),
    ("resnet50", "v2", "resnet50-11ad3fa6.pth", 80.858, 95.434, 97.790),
    ("resnet101", "v1", "resnet101-63fe2227.pth", 77.374, 93.546, 170.511),
    ("resnet101", "v2", "resnet101-cd907fc2.pth", 81.886, 95.780, 170.530),
    ("resnet152", "v1", "resnet152-394f9c45.pth", 78.312, 94.046, 230.434),
    ("resnet152", "v2", "resnet152-f82ba261.pth", 82.284, 96.002, 230.474),
    ("resnext50_32x4d", "v1", "resnext50_32x4d-7cdf4587.pth", 77.618, 93.698, 95.789),
    ("resnext50_32x4d", "v2", "resnext50_32x4d-1a0047aa.pth", 81.198, 95.340, 95.833),
    ("resnext101_32x8d", "v1", "resnext101_32x8d-8ba56ff5.pth", 79.312, 94.526, 339.586),
    ("resnext101_32x8d", "v2", "resnext101_32x8d-110c445d.pth", 82.834, 96.228, 339.673),
    ("resnext101_64x4d", "v1", "resnext101_64x4d-173b62eb.pth", 83.246, 96.454, 319.318),
    ("wide_resnet50_2", "v1", "wide_resnet50_2-95faca4d.pth", 78.468, 94.086, 131.820),
    ("wide_resnet50_2", "v2", "wide_resnet50_2-9ba9bcbe.pth", 81.602, 95.758, 263.124),
    ("wide_resnet101_2", "v1", "wide_resnet101_2-32ee1156.pth", 78.848, 94.284, 242.896),
    ("wide_resnet101_2", "v2", "wide_resnet101_2-d733dc28.pth", 82.510, 96.020, 484.747),
];

/// Every known entry: torchvision's, then those of `$RESNET_WEIGHTS_INDEX`.
pub fn table() -> Result<Vec<Pretrained>> {
    let mut out: Vec<Pretrained> = TABLE
        .iter()
        .enumerate()
        .map(|(i, &(arch, version, file, acc1, acc5, size_mb))| {
            // ResNeXt-101 64x4d's only weights were trained with the new recipe: v2 preprocessing.
            let preset = if version == "v2" || arch == "resnext101_64x4d" { "v2" } else { "v1" };
            Pretrained {
                name: format!("{arch}.{version}"),
                arch: arch.into(),
                file: file.into(),
                preset: preset.into(),
                acc1,
                acc5,
                size_mb,
                default: TABLE.get(i + 1).is_none_or(|next| next.0 != arch),
            }
        })
        .collect();
    if let Some(index) = std::env::var_os("RESNET_WEIGHTS_INDEX") {
        let p = PathBuf::from(index);
        let text = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
        let extra: Vec<Pretrained> = serde_json::from_slice(&text)
            .map_err(|e| Error::format(&p, format!("not a weights index (RESNET_WEIGHTS_INDEX): {e}")))?;
        for e in &extra {
            e.sha256_prefix().map_err(|m| Error::format(&p, m))?;
        }
        out.extend(extra);
    }
    Ok(out)
}

impl Pretrained {
    /// The SHA-256 prefix in the file name (`resnet50-11ad3fa6.pth` -> `11ad3fa6`).
    pub fn sha256_prefix(&self) -> std::result::Result<&str, String> {
        let stem = self.file.rsplit_once('.').map_or(self.file.as_str(), |(s, _)| s);
        match stem.rsplit_once('-') {
            Some((_, h)) if h.len() >= 6 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h),
            _ => Err(format!("`{}`: the file name does not end in -<SHA-256 prefix>", self.file)),
        }
    }

    /// Where to download it from.
    pub fn url(&self) -> String {
        let base = std::env::var("RESNET_WEIGHTS_URL").unwrap_or_else(|_| TORCHVISION_URL.into());
        format!("{}/{}", base.trim_end_matches('/'), self.file)
    }

    /// The file in our cache or PyTorch's, if it is there.
    pub fn cached(&self) -> Option<PathBuf> {
        [cache_dir(), torch_cache_dir()].into_iter().flatten().map(|d| d.join(&self.file)).find(|p| p.is_file())
    }

    /// Where a download goes.
    pub fn cache_path(&self) -> Result<PathBuf> {
        cache_dir()
            .map(|d| d.join(&self.file))
            .ok_or_else(|| Error::Invalid("no cache folder: set RESNET_CACHE (or HOME)".into()))
    }
}

/// Whether a `--weights` value names pretrained weights (`torchvision:...`).
pub fn is_name(weights: &Path) -> bool {
    weights.to_str().is_some_and(|s| s.starts_with("torchvision:"))
}

/// The entry a name means: `torchvision:ARCH` (its default), `torchvision:ARCH.v1`/`.v2`.
pub fn lookup(name: &str) -> Result<Pretrained> {
    let Some(rest) = name.strip_prefix("torchvision:") else {
        return Err(Error::Invalid(format!("`{name}` is not a weights name (torchvision:ARCH[.v1|.v2])")));
    };
    let table = table()?;
    let found = table.iter().find(|p| p.name == rest).or_else(|| table.iter().find(|p| p.arch == rest && p.default));
    found.cloned().ok_or_else(|| {
        let mut names: Vec<&str> = table.iter().map(|p| p.arch.as_str()).collect();
        names.dedup();
        Error::Invalid(format!(
            "no pretrained weights `{name}`: torchvision:ARCH[.v1|.v2] with ARCH one of {} (`resnet weights list`)",
            names.join(", ")
        ))
    })
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// Our cache: `$RESNET_CACHE`, else `$XDG_CACHE_HOME/resnet`, else `~/.cache/resnet`.
pub fn cache_dir() -> Option<PathBuf> {
    env_dir("RESNET_CACHE")
        .or_else(|| env_dir("XDG_CACHE_HOME").map(|d| d.join("resnet")))
        .or_else(|| home().map(|h| h.join(".cache/resnet")))
}

/// PyTorch's: `$TORCH_HOME/hub/checkpoints`, else `~/.cache/torch/hub/checkpoints`.
pub fn torch_cache_dir() -> Option<PathBuf> {
    env_dir("TORCH_HOME")
        .map(|d| d.join("hub/checkpoints"))
        .or_else(|| home().map(|h| h.join(".cache/torch/hub/checkpoints")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_torchvisions_files() {
        assert_eq!(lookup("torchvision:resnet50").unwrap().file, "resnet50-11ad3fa6.pth");
        assert_eq!(lookup("torchvision:resnet50.v1").unwrap().file, "resnet50-0676ba61.pth");
        assert_eq!(lookup("torchvision:resnet18").unwrap().name, "resnet18.v1");
        assert_eq!(lookup("torchvision:resnext101_64x4d").unwrap().preset, "v2");
        assert!(lookup("torchvision:resnet18.v2").unwrap_err().to_string().contains("resnet18"));
        assert!(lookup("torchvision:vgg16").is_err());
        for p in table().unwrap() {
            assert_eq!(p.sha256_prefix().unwrap().len(), 8, "{}", p.file);
            assert!(crate::model::ResNetSpec::named(&p.arch).is_ok(), "{}", p.arch);
            assert_eq!(table().unwrap().iter().filter(|q| q.arch == p.arch && q.default).count(), 1);
        }
    }
}
