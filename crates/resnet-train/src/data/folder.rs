//! An ImageFolder tree, as torchvision reads it: `PATH/train/<class>/*.jpg`
//! and `PATH/val/<class>/*.png`; classes are the sorted folder names of
//! `train/`. Images are decoded when a batch needs them. An empty class
//! folder is an error, as in torchvision's `ImageFolder`. For evaluation
//! alone, `val/` (or `PATH` itself) is enough.

use std::path::{Path, PathBuf};

use super::{DataSpec, Dataset, Images, Split};
use resnet::error::{Error, Result};
use resnet::preprocess::{IMAGENET_MEAN, IMAGENET_STD};

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

/// The image files (`.jpg`, `.jpeg`, `.png`) directly in `dir`, sorted by name.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(sorted_entries(dir)?.into_iter().filter(|f| f.is_file() && is_image(f)).collect())
}

fn load_split(root: &Path, classes: &[String]) -> Result<Split> {
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for entry in sorted_entries(root)? {
        if !entry.is_dir() {
            continue;
        }
        let name = entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let Some(label) = classes.iter().position(|c| *c == name) else {
            return Err(Error::Invalid(format!("{} is a class folder that train/ does not have", entry.display())));
        };
        let before = paths.len();
        for f in sorted_entries(&entry)? {
            if f.is_file() && is_image(&f) {
                paths.push(f);
                labels.push(label as u32);
            }
        }
        if paths.len() == before {
            return Err(Error::Invalid(format!(
                "the class folder {} holds no JPEG or PNG images (remove it, or add images)",
                entry.display()
            )));
        }
    }
    if paths.is_empty() {
        return Err(Error::Invalid(format!("{} holds no JPEG or PNG images in class folders", root.display())));
    }
    Ok(Split { images: Images::Files(paths), labels })
}

fn class_names(dir: &Path) -> Result<Vec<String>> {
    let classes: Vec<String> = sorted_entries(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
        .collect();
    if classes.is_empty() {
        return Err(Error::Invalid(format!("{} has no class folders", dir.display())));
    }
    Ok(classes)
}

/// Loads the split to evaluate: `PATH/val/` with the classes of `PATH/train/`
/// when both exist; else `PATH/val/`, or `PATH` itself, alone with its own
/// class folders (an ImageNet-style validation folder). The training split
/// is empty.
pub fn load_eval(spec: &DataSpec) -> Result<Dataset> {
    let (train_dir, val_dir) = (spec.path.join("train"), spec.path.join("val"));
    let eval_dir = if val_dir.is_dir() { val_dir } else { spec.path.clone() };
    let classes = class_names(if train_dir.is_dir() { &train_dir } else { &eval_dir })?;
    Ok(Dataset {
        spec: spec.clone(),
        train: std::sync::Arc::new(Split { images: Images::Files(Vec::new()), labels: Vec::new() }),
        test: std::sync::Arc::new(load_split(&eval_dir, &classes)?),
        classes,
        channels: 3,
        mean: IMAGENET_MEAN.to_vec(),
        std: IMAGENET_STD.to_vec(),
    })
}

/// Loads the tree.
pub fn load(spec: &DataSpec) -> Result<Dataset> {
    let train_dir = spec.path.join("train");
    let val_dir = spec.path.join("val");
    for d in [&train_dir, &val_dir] {
        if !d.is_dir() {
            return Err(Error::Invalid(format!("{} is missing (a folder data set has train/ and val/)", d.display())));
        }
    }
    let classes = class_names(&train_dir)?;
    Ok(Dataset {
        spec: spec.clone(),
        train: std::sync::Arc::new(load_split(&train_dir, &classes)?),
        test: std::sync::Arc::new(load_split(&val_dir, &classes)?),
        classes,
        channels: 3,
        mean: IMAGENET_MEAN.to_vec(),
        std: IMAGENET_STD.to_vec(),
    })
}
