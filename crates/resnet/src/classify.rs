//! Image classification and embeddings: a network, its preprocessing and its
//! class names, ready to run on images.
//!
//! ```no_run
//! use resnet::backend::Cpu;
//! use resnet::classify::Classifier;
//! # fn main() -> resnet::Result<()> {
//! let cpu = Cpu::new(None)?;
//! let mut clf = Classifier::load(&cpu, Some("resnet50"), "resnet50-11ad3fa6.pth".as_ref(), None)?;
//! let img = resnet::preprocess::load_rgb("cat.jpg".as_ref())?;
//! for p in &clf.classify(&[img], 5)?[0] {
//!     println!("{:5.1}%  {}", 100.0 * p.probability, p.label);
//! }
//! # Ok(()) }
//! ```

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::backend::Backend;
use crate::backend::Precision;
use crate::error::{Error, Result};
use crate::infer::{CompiledModel, Infer, InferencePlan};
use crate::io;
use crate::model::{Graph, ResNetSpec};
use crate::preprocess::{RgbImage, Transform};
use crate::tensor::Tensor;

/// One ranked class.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Prediction {
    /// Class index.
    pub index: usize,
    /// Class name.
    pub label: String,
    /// Softmax probability.
    pub probability: f64,
    /// Raw logit.
    pub logit: f32,
}

/// A network with everything needed to classify images.
pub struct Classifier<B: Backend> {
    /// The architecture.
    pub spec: ResNetSpec,
    /// The network, compiled for inference (batch norms folded, buffers reused).
    pub plan: InferencePlan<B>,
    /// Its preprocessing.
    pub transform: Transform,
    /// Class names, one per output.
    pub labels: Vec<String>,
}

/// What a trained checkpoint's sidecar says about its model (see `train`).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct ModelCard {
    /// The architecture, with its class and channel counts.
    pub spec: ResNetSpec,
    /// The preprocessing it was trained with.
    pub transform: Option<Transform>,
    /// Class names.
    pub labels: Option<Vec<String>>,
}

/// The sidecar JSON of a weights file: `best.safetensors` -> `best.json`.
pub fn sidecar_path(weights: &Path) -> std::path::PathBuf {
    weights.with_extension("json")
}

/// Reads the model card from a weights file's sidecar, if there is one.
pub fn read_card(weights: &Path) -> Result<Option<ModelCard>> {
    let p = sidecar_path(weights);
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
    parse_card(&text).map(Some).map_err(|e| Error::format(&p, format!("bad sidecar: {e}")))
}

/// Parses a sidecar's model card and checks that its architecture and its
/// preprocessing can be built.
pub fn parse_card(json: &[u8]) -> Result<ModelCard> {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        model: ModelCard,
    }
    let w: Wrapper = serde_json::from_slice(json).map_err(|e| Error::Invalid(e.to_string()))?;
    w.model.spec.validate()?;
    if let Some(t) = &w.model.transform {
        t.validate()?;
    }
    if let Some(labels) = &w.model.labels
        && labels.len() != w.model.spec.num_classes
    {
        return Err(Error::Invalid(format!("{} labels for {} classes", labels.len(), w.model.spec.num_classes)));
    }
    Ok(w.model)
}

/// Where the architecture of a weights file came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecSource {
    /// The model card in the file's sidecar (a checkpoint of ours).
    Sidecar,
    /// The `--arch` the caller gave, with the file's class and channel counts.
    Given,
    /// Recognised from the file's keys and shapes ([`io::guess_arch`]).
    Recognised,
}

/// The architecture of the weights in `sd` (read from `weights`): the
/// sidecar's when there is one (an `arch` that contradicts it is an error),
/// else `arch` with the weights' class and channel counts, else the named
/// architecture whose keys and shapes the weights match.
pub fn resolve_spec(
    arch: Option<&str>,
    weights: &Path,
    sd: &io::StateDict,
    card: Option<&ModelCard>,
) -> Result<(ResNetSpec, SpecSource)> {
    match (arch, card) {
        (Some(a), Some(c)) if a != c.spec.name => Err(Error::Invalid(format!(
            "--arch {a} does not match the checkpoint's architecture {} (from {})",
            c.spec.name,
            sidecar_path(weights).display()
        ))),
        (_, Some(c)) => Ok((c.spec.clone(), SpecSource::Sidecar)),
        (Some(a), None) => {
            let mut s = ResNetSpec::named(a)?;
            if let Some(&classes) = sd.get("fc.weight").and_then(|t| t.shape.first()) {
                s.num_classes = classes;
            }
            if let Some(t) = sd.get("conv1.weight").filter(|t| t.shape.len() == 4) {
                s.in_channels = t.shape[1];
            }
            Ok((s, SpecSource::Given))
        }
        (None, None) => io::guess_arch(sd).map(|s| (s, SpecSource::Recognised)).ok_or_else(|| {
            Error::Invalid(format!(
                "--arch is needed: the weights match no known architecture and {} has no sidecar ({})",
                weights.display(),
                sidecar_path(weights).display()
            ))
        }),
    }
}

/// A weights file read with its architecture, preprocessing and class names.
pub struct Loaded {
    /// The architecture.
    pub spec: ResNetSpec,
    /// Its graph.
    pub graph: Graph,
    /// The weights (checked against the graph when compiled or exported).
    pub sd: io::StateDict,
    /// The preprocessing: the model card's, else torchvision's `v1`.
    pub transform: Transform,
    /// Class names: the model card's, else ImageNet's for 1000 classes, else `class N`.
    pub labels: Vec<String>,
}

impl Loaded {
    /// Reads `weights`; see [`Classifier::load`] for where each part comes from.
    pub fn read(arch: Option<&str>, weights: &Path, num_classes: Option<usize>) -> Result<Self> {
        let sd = io::read_state_dict(weights)?;
        let card = read_card(weights)?;
        let (mut spec, _) = resolve_spec(arch, weights, &sd, card.as_ref())?;
        if let Some(n) = num_classes {
            spec.num_classes = n;
        }
        let graph = Graph::new(&spec)?;
        let mut transform = card.as_ref().and_then(|c| c.transform.clone()).unwrap_or(Transform::preset("v1")?);
        if spec.in_channels == 1 {
            transform.grayscale = true;
        }
        let labels = match card.and_then(|c| c.labels) {
            Some(l) => l,
            None if spec.num_classes == 1000 => crate::labels::imagenet(),
            None => (0..spec.num_classes).map(|i| format!("class {i}")).collect(),
        };
        Ok(Self { spec, graph, sd, transform, labels })
    }
}

/// Preprocesses images into one NHWC batch tensor.
fn batch_tensor<B: Backend>(backend: &B, transform: &Transform, images: &[RgbImage]) -> Result<Tensor<B>> {
    input_tensor(backend, transform, images.len(), &preprocess_batch(transform, images))
}

/// Images preprocessed one after another into the network's NHWC layout.
fn preprocess_batch(transform: &Transform, images: &[RgbImage]) -> Vec<f32> {
    let mut hwc = Vec::with_capacity(images.len() * transform.channels() * transform.size().pow(2));
    for img in images {
        hwc.extend(transform.apply_hwc(img));
    }
    hwc
}

/// `n` preprocessed images (HWC each, as [`Transform::apply_hwc`] makes
/// them) as one NHWC batch tensor.
fn input_tensor<B: Backend>(backend: &B, transform: &Transform, n: usize, hwc: &[f32]) -> Result<Tensor<B>> {
    let (c, s) = (transform.channels(), transform.size());
    if hwc.len() != n * c * s * s {
        return Err(Error::Invalid(format!("{} input values for {n} images of {s}x{s}x{c}", hwc.len())));
    }
    Tensor::from_host(backend, [n, s, s, c], hwc)
}

impl<B: Backend> Classifier<B> {
    /// Loads weights for `arch` (or for the architecture the weights' sidecar
    /// names, or failing that the one whose keys and shapes they match). The
    /// class count comes from `num_classes`, else the sidecar, else the
    /// weights' classifier; the input channels from the sidecar or the
    /// weights' first convolution. Preprocessing defaults to the sidecar's or
    /// torchvision's `v1` preset; labels to the sidecar's or ImageNet's for
    /// 1000 classes. Inference runs in f32.
    pub fn load(backend: &B, arch: Option<&str>, weights: &Path, num_classes: Option<usize>) -> Result<Self> {
        Self::load_with_precision(backend, arch, weights, num_classes, Precision::F32)
    }

    /// [`Classifier::load`] with the inference arithmetic chosen.
    pub fn load_with_precision(
        backend: &B,
        arch: Option<&str>,
        weights: &Path,
        num_classes: Option<usize>,
        precision: Precision,
    ) -> Result<Self> {
        let l = Loaded::read(arch, weights, num_classes)?;
        let model = CompiledModel::new(backend, &l.graph, &l.sd, precision)?;
        Ok(Self {
            spec: l.spec,
            plan: InferencePlan::from_model(Arc::new(model)),
            transform: l.transform,
            labels: l.labels,
        })
    }

    /// Replaces the class names (their number must match the outputs).
    pub fn set_labels(&mut self, labels: Vec<String>) -> Result<()> {
        if labels.len() != self.spec.num_classes {
            return Err(Error::Invalid(format!(
                "{} labels given for a model with {} classes",
                labels.len(),
                self.spec.num_classes
            )));
        }
        self.labels = labels;
        Ok(())
    }

    /// Preprocesses images into one NHWC batch tensor.
    fn batch(&self, images: &[RgbImage]) -> Result<Tensor<B>> {
        batch_tensor(self.plan.backend(), &self.transform, images)
    }

    /// Logits, one row per image.
    pub fn logits(&mut self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let x = self.batch(images)?;
        let b = self.plan.backend().clone();
        let y = self.plan.run(&x)?.to_host(&b)?;
        Ok(y.chunks(self.spec.num_classes).map(<[f32]>::to_vec).collect())
    }

    /// The `k` most likely classes of each image.
    pub fn classify(&mut self, images: &[RgbImage], k: usize) -> Result<Vec<Vec<Prediction>>> {
        Ok(self.logits(images)?.iter().map(|z| top_k(z, k, &self.labels)).collect())
    }

    /// Image embeddings: the pooled features before the classifier
    /// (`feature_dim` values per image).
    pub fn embed(&mut self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let x = self.batch(images)?;
        let b = self.plan.backend().clone();
        self.plan.run(&x)?;
        let d = self.spec.feature_dim();
        Ok(self.plan.features().to_host(&b)?.chunks(d).map(<[f32]>::to_vec).collect())
    }
}

/// Softmax and the `k` largest entries, most likely first (ties: lower index first).
pub fn top_k(logits: &[f32], k: usize, labels: &[String]) -> Vec<Prediction> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&z| (z as f64 - max).exp()).sum();
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx.into_iter()
        .map(|i| Prediction {
            index: i,
            label: labels.get(i).cloned().unwrap_or_else(|| format!("class {i}")),
            probability: (logits[i] as f64 - max).exp() / sum,
            logit: logits[i],
        })
        .collect()
}

/// One layer's outputs for a batch, in PyTorch's layout.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureMap {
    /// The layer's name, as asked for.
    pub layer: String,
    /// `[n, d]` for the pooled features and the logits (`avgpool`, `fc`),
    /// `[n, c, h, w]` for every other layer.
    pub shape: Vec<usize>,
    /// The values, row-major in `shape`.
    pub data: Vec<f32>,
}

/// A network compiled to return the outputs of named layers in one pass
/// (and to compute nothing after the last of them), with its preprocessing:
/// torchvision's `create_feature_extractor`, timm's `features_only`.
///
/// ```no_run
/// use resnet::backend::Cpu;
/// use resnet::classify::FeatureExtractor;
/// # fn main() -> resnet::Result<()> {
/// let cpu = Cpu::new(None)?;
/// let weights = "resnet50-11ad3fa6.pth".as_ref();
/// let mut fx = FeatureExtractor::load(&cpu, Some("resnet50"), weights, &["layer3", "avgpool"], Default::default())?;
/// let img = resnet::preprocess::load_rgb("cat.jpg".as_ref())?;
/// let maps = fx.extract(&[img])?;
/// assert_eq!(maps[0].shape, [1, 1024, 14, 14]);
/// assert_eq!(maps[1].shape, [1, 2048]);
/// # Ok(()) }
/// ```
pub struct FeatureExtractor<B: Backend> {
    /// The architecture.
    pub spec: ResNetSpec,
    /// Its preprocessing.
    pub transform: Transform,
    /// The weights' class names (from their model card, or ImageNet's).
    pub labels: Vec<String>,
    model: Arc<CompiledModel<B>>,
    ws: crate::infer::Workspace<B>,
    /// Per output: whether it is a pooled vector (`[n, d]`).
    pooled: Vec<bool>,
}

impl<B: Backend> FeatureExtractor<B> {
    /// Loads weights as [`Classifier::load`] does and compiles them to return
    /// `layers` ([`Graph::feature_value`] names: `stem`, `layer1`..,
    /// `avgpool`, `fc`, a unit such as `layer2.0`, a module such as `maxpool`).
    pub fn load(
        backend: &B,
        arch: Option<&str>,
        weights: &Path,
        layers: &[&str],
        precision: Precision,
    ) -> Result<Self> {
        let l = Loaded::read(arch, weights, None)?;
        let model = CompiledModel::with_outputs(backend, &l.graph, &l.sd, precision, layers)?;
        drop(l.sd);
        let mut fx = Self::from_model(Arc::new(model), l.transform)?;
        fx.labels = l.labels;
        Ok(fx)
    }

    /// An extractor running a compiled model (see
    /// [`CompiledModel::with_outputs`]) on images preprocessed by `transform`.
    pub fn from_model(model: Arc<CompiledModel<B>>, transform: Transform) -> Result<Self> {
        let graph = model.graph();
        let pooled = model
            .outputs()
            .iter()
            .map(|name| {
                let v = graph.feature_value(name)?;
                let op = graph.producer(v).map(|n| &n.op);
                Ok(matches!(op, Some(crate::model::graph::Op::GlobalAvgPool | crate::model::graph::Op::Linear { .. })))
            })
            .collect::<Result<Vec<_>>>()?;
        transform.validate()?;
        Ok(Self { spec: model.spec().clone(), transform, labels: Vec::new(), ws: model.workspace(), model, pooled })
    }

    /// The backend it runs on.
    pub fn backend(&self) -> &B {
        self.model.backend()
    }

    /// The layers each run returns, in order.
    pub fn layers(&self) -> &[String] {
        self.model.outputs()
    }

    /// The shape of each layer's output for one preprocessed image, in
    /// PyTorch's layout: `[d]` or `[c, h, w]`.
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>> {
        let s = self.transform.size();
        (0..self.pooled.len())
            .map(|i| {
                let [_, h, w, c] = self.model.output_shape(i, 1, s, s)?;
                Ok(if self.pooled[i] { vec![c] } else { vec![c, h, w] })
            })
            .collect()
    }

    /// Every layer's outputs for `images`.
    pub fn extract(&mut self, images: &[RgbImage]) -> Result<Vec<FeatureMap>> {
        let hwc = preprocess_batch(&self.transform, images);
        self.run(images.len(), &hwc)
    }

    /// Every layer's outputs for `n` images already preprocessed by
    /// [`Transform::apply_hwc`] (concatenated): decoding and preprocessing
    /// can then happen elsewhere, alongside the previous batch.
    pub fn run(&mut self, n: usize, hwc: &[f32]) -> Result<Vec<FeatureMap>> {
        if n == 0 {
            let shapes = self.shapes()?;
            let maps = self.layers().iter().zip(shapes);
            return Ok(maps
                .map(|(l, s)| FeatureMap { layer: l.clone(), shape: [vec![0], s].concat(), data: vec![] })
                .collect());
        }
        let b = self.model.backend().clone();
        let x = input_tensor(&b, &self.transform, n, hwc)?;
        self.model.run(&mut self.ws, &x)?;
        let mut maps = Vec::with_capacity(self.pooled.len());
        for (i, &pooled) in self.pooled.iter().enumerate() {
            let y = self.model.output(&self.ws, i);
            let [n, h, w, c] = y.shape;
            let nhwc = y.to_host(&b)?;
            let (shape, data) = if pooled {
                (vec![n, c], nhwc)
            } else {
                let mut nchw = vec![0.0; nhwc.len()];
                for (img, out) in nhwc.chunks_exact(h * w * c).zip(nchw.chunks_exact_mut(h * w * c)) {
                    for (p, px) in img.chunks_exact(c).enumerate() {
                        for (ch, &v) in px.iter().enumerate() {
                            out[ch * h * w + p] = v;
                        }
                    }
                }
                (vec![n, c, h, w], nchw)
            };
            maps.push(FeatureMap { layer: self.model.outputs()[i].clone(), shape, data });
        }
        Ok(maps)
    }
}
