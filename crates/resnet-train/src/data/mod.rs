//! Data sets and the pipeline that feeds training.
//!
//! * [`idx`]: MNIST and Fashion-MNIST (IDX files, raw or gzipped);
//! * [`cifar`]: CIFAR-10 and CIFAR-100 binary batches;
//! * [`folder`]: an ImageFolder tree (`train/` and `val/`, one folder per class);
//! * [`augment`]: per-sample transforms (pad-and-crop, flips, random resized
//!   crops, torchvision's eval transform) and normalisation;
//! * [`loader`]: worker threads that assemble NHWC batches ahead of the
//!   training loop, deterministically for a seed whatever the thread count.

pub mod augment;
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use resnet::error::{Error, Result};

/// Which data set format a `--data KIND:PATH` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataKind {
    /// MNIST: IDX files.
    Mnist,
    /// Fashion-MNIST: IDX files.
    FashionMnist,
    /// CIFAR-10 binary batches.
    Cifar10,
    /// CIFAR-100 binary batches.
    Cifar100,
    /// `train/` and `val/` trees of class folders.
    Folder,
}

/// A data set reference: kind and location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSpec {
    /// Format.
    pub kind: DataKind,
    /// Folder.
    pub path: PathBuf,
}

impl std::str::FromStr for DataSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let Some((kind, path)) = s.split_once(':') else {
            return Err(Error::Invalid(format!(
                "--data must be KIND:PATH with KIND one of mnist, fashion-mnist, cifar10, cifar100, folder; got `{s}`"
            )));
        };
        let kind = match kind {
            "mnist" => DataKind::Mnist,
            "fashion-mnist" => DataKind::FashionMnist,
            "cifar10" => DataKind::Cifar10,
            "cifar100" => DataKind::Cifar100,
            "folder" => DataKind::Folder,
            other => {
                return Err(Error::Invalid(format!(
                    "unknown data kind `{other}` (use mnist, fashion-mnist, cifar10, cifar100 or folder)"
                )));
            }
        };
        if path.is_empty() {
            return Err(Error::Invalid("--data needs a path after the kind".into()));
        }
        Ok(Self { kind, path: PathBuf::from(path) })
    }
}

impl std::fmt::Display for DataSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            DataKind::Mnist => "mnist",
            DataKind::FashionMnist => "fashion-mnist",
            DataKind::Cifar10 => "cifar10",
            DataKind::Cifar100 => "cifar100",
            DataKind::Folder => "folder",
        };
        write!(f, "{kind}:{}", self.path.display())
    }
}

/// Images of one split.
pub enum Images {
    /// Decoded 8-bit images of one size, `n x h x w x c`.
    Memory {
        /// Height.
        h: usize,
        /// Width.
        w: usize,
        /// Channels (1 or 3).
        c: usize,
        /// Pixels, image after image, HWC.
        data: Vec<u8>,
    },
    /// Image files decoded when needed.
    Files(Vec<PathBuf>),
}

/// One split: images and their labels.
pub struct Split {
    /// The images.
    pub images: Images,
    /// Class index of each image.
    pub labels: Vec<u32>,
}

impl Split {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The first `n` samples of each class, in order (a class-balanced subset).
    pub fn balanced_subset(&self, per_class: usize, classes: usize) -> Split {
        let mut taken = vec![0usize; classes];
        let keep: Vec<usize> = (0..self.len())
            .filter(|&i| {
                let c = self.labels[i] as usize;
                let ok = taken[c] < per_class;
                taken[c] += ok as usize;
                ok
            })
            .collect();
        self.select(&keep)
    }

    /// The samples at `indices`.
    pub fn select(&self, indices: &[usize]) -> Split {
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        let images = match &self.images {
            Images::Memory { h, w, c, data } => {
                let sz = h * w * c;
                let mut out = Vec::with_capacity(indices.len() * sz);
                for &i in indices {
                    out.extend_from_slice(&data[i * sz..(i + 1) * sz]);
                }
                Images::Memory { h: *h, w: *w, c: *c, data: out }
            }
            Images::Files(p) => Images::Files(indices.iter().map(|&i| p[i].clone()).collect()),
        };
        Split { images, labels }
    }
}

/// A data set: training and test splits and what describes them (cheap to
/// clone: the splits are shared).
#[derive(Clone)]
pub struct Dataset {
    /// Where it came from.
    pub spec: DataSpec,
    /// Class names.
    pub classes: Vec<String>,
    /// Training split.
    pub train: Arc<Split>,
    /// Test (validation) split.
    pub test: Arc<Split>,
    /// Channels of the images (1 or 3).
    pub channels: usize,
    /// Per-channel mean, for normalisation.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation.
    pub std: Vec<f32>,
}

impl Dataset {
    /// A fingerprint of what the run trains and tests on: the splits' sizes,
    /// labels and pixels (the file names, for image folders). A resumed run
    /// compares it to notice a swapped or changed data set.
    pub fn fingerprint(&self) -> String {
        // FNV-1a: simple, stable across builds and platforms, fast enough for tens of MB.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for split in [&self.train, &self.test] {
            eat(&(split.len() as u64).to_le_bytes());
            split.labels.iter().for_each(|l| eat(&l.to_le_bytes()));
            match &split.images {
                Images::Memory { data, .. } => eat(data),
                Images::Files(paths) => paths.iter().for_each(|p| eat(p.as_os_str().as_encoded_bytes())),
            }
        }
        format!("{}+{}:{h:016x}", self.train.len(), self.test.len())
    }

    /// Loads both splits.
    pub fn load(spec: &DataSpec) -> Result<Self> {
        if !spec.path.is_dir() {
            return Err(Error::Invalid(format!("data folder {} does not exist", spec.path.display())));
        }
        match spec.kind {
            DataKind::Mnist | DataKind::FashionMnist => idx::load(spec),
            DataKind::Cifar10 | DataKind::Cifar100 => cifar::load(spec),
            DataKind::Folder => folder::load(spec),
        }
    }

    /// Loads what `eval` needs: the test split (for image folders, `val/`
    /// alone is enough; see [`folder::load_eval`]).
    pub fn load_for_eval(spec: &DataSpec) -> Result<Self> {
        match spec.kind {
            DataKind::Folder if spec.path.is_dir() => folder::load_eval(spec),
            _ => Self::load(spec),
        }
    }

    /// Checks every label against the class count.
    pub(crate) fn check_labels(&self) -> Result<()> {
        for (name, split) in [("train", &*self.train), ("test", &*self.test)] {
            if let Some((i, &l)) = split.labels.iter().enumerate().find(|(_, l)| **l as usize >= self.classes.len()) {
                return Err(Error::Invalid(format!(
                    "{}: {name} label {l} of sample {i} is out of range 0..{}",
                    self.spec,
                    self.classes.len()
                )));
            }
        }
        Ok(())
    }
}

/// Opens a file that may be gzip-compressed (by magic number, not name) as a stream.
pub(crate) fn open_maybe_gz(path: &Path) -> Result<Box<dyn std::io::Read>> {
    use std::io::{BufRead, BufReader};
    let mut f = BufReader::new(std::fs::File::open(path).map_err(|e| Error::io(path, e))?);
    let gz = f.fill_buf().map_err(|e| Error::io(path, e))?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz { Box::new(flate2::bufread::GzDecoder::new(f)) } else { Box::new(f) })
}

impl DataSpec {
    /// Short name of the kind (`fashion-mnist`).
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            DataKind::Mnist => "MNIST",
            DataKind::FashionMnist => "Fashion-MNIST",
            DataKind::Cifar10 => "CIFAR-10",
            DataKind::Cifar100 => "CIFAR-100",
            DataKind::Folder => "images",
        }
    }
}
