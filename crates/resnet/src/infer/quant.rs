//! Post-training static quantization: calibration, the quantized model and
//! its file form.
//!
//! Weights: every convolution with its batch norm folded in, quantized per
//! output channel, symmetric: `scale = max |w| / 127`, `q = round(w / scale)`.
//! Activations: every value a ReLU ends is quantized per tensor to u8 with
//! zero point 0 and `scale = threshold / 255`; the threshold comes from the
//! values seen over the calibration images ([`Method`]). Signed values (the
//! input image after normalisation, projection shortcuts) get a zero point:
//! `scale = (max - min) / 255` over the values seen. The classifier stays f32.
//!
//! In a file (`resnet quantize`): for each convolution `{name}.weight` (int8,
//! PyTorch's OIHW, batch norm folded), `{name}.weight_scale`, `{name}.bias`
//! (f32 per output channel), `{name}.output_scale` and `{name}.output_zero_point`
//! (f32 scalars); `input.scale` and `input.zero_point`; `fc.weight`, `fc.bias`
//! as they were.

use std::collections::{BTreeMap, HashMap};

use super::compile::{fold_weights, folded_convs};
use super::{CompiledModel, Op, Workspace};
use crate::backend::{Backend, Precision, Quant};
use crate::error::{Error, Result};
use crate::io::{HostTensor, StateDict, TensorData};
use crate::model::Graph;
use crate::model::graph::Op as GraphOp;
use crate::tensor::{ParamLayout, Tensor, to_internal, to_torch};

/// How an activation's clipping threshold is chosen from calibration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    /// The largest value seen.
    MinMax,
    /// The given percentile of the values seen (e.g. 99.99): a few outliers
    /// do not stretch the scale of all the others.
    Percentile(f64),
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::MinMax => f.write_str("minmax"),
            Method::Percentile(p) => write!(f, "percentile:{p}"),
        }
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Invalid(format!("unknown calibration method {s:?} (expected minmax or percentile:P)"));
        match s.split_once(':') {
            None if s == "minmax" => Ok(Method::MinMax),
            None if s == "percentile" => Ok(Method::Percentile(99.99)),
            Some(("percentile", p)) => match p.parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Ok(Method::Percentile(p)),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

/// A convolution of a quantized model.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantConv {
    /// OHWI integers in `-127..=127` (held as f32), batch norm folded.
    pub weight: Vec<f32>,
    /// Per output channel.
    pub weight_scale: Vec<f32>,
    /// Per output channel: the folded batch norm's shift (zeros without one).
    pub bias: Vec<f32>,
    /// Quantization of the u8 output.
    pub output: Quant,
}

/// A network quantized for int8 inference: what [`CompiledModel`] compiles
/// with [`Precision::Int8`].
#[derive(Clone, Debug, PartialEq)]
pub struct QuantModel {
    /// How the (f32) input image is quantized.
    pub input: Quant,
    /// Convolutions by name.
    pub convs: HashMap<String, QuantConv>,
    /// The classifier's f32 weights (`fc.weight`, `fc.bias`).
    pub classifier: StateDict,
}

/// Reads a checked tensor of a file form by key and shape.
type Getter<'a> = dyn FnMut(String, &[usize]) -> Result<Vec<f32>> + 'a;

/// Bins of a calibration histogram.
const BINS: usize = 2048;

/// The values seen at one activation: a histogram over `[0, range)` whose
/// range doubles (merging bins pairwise) when a larger value comes.
#[derive(Clone, Debug, Default)]
struct Histogram {
    range: f32,
    bins: Vec<u64>,
    max: f32,
    min: f32,
}

impl Histogram {
    fn add(&mut self, values: &[f32]) {
        let (lo, hi) = values.iter().fold((f32::INFINITY, 0.0f32), |(a, b), &v| (a.min(v), b.max(v)));
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        if self.bins.is_empty() {
            self.bins = vec![0; BINS];
            self.range = if hi > 0.0 { hi } else { 1.0 };
        }
        while hi >= self.range && hi.is_finite() {
            for i in 0..BINS / 2 {
                self.bins[i] = self.bins[2 * i] + self.bins[2 * i + 1];
            }
            self.bins[BINS / 2..].fill(0);
            self.range *= 2.0;
        }
        let k = BINS as f32 / self.range;
        for &v in values.iter().filter(|v| **v > 0.0) {
            self.bins[((v * k) as usize).min(BINS - 1)] += 1;
        }
    }

    /// The clipping threshold of `method` (0 when nothing positive was seen).
    fn threshold(&self, method: Method) -> f32 {
        match method {
            Method::MinMax => self.max,
            Method::Percentile(p) => {
                let total: u64 = self.bins.iter().sum();
                let want = (total as f64 * p / 100.0).ceil() as u64;
                let mut seen = 0;
                for (i, &c) in self.bins.iter().enumerate() {
                    seen += c;
                    if seen >= want && seen > 0 {
                        return ((i + 1) as f32 * self.range / BINS as f32).min(self.max);
                    }
                }
                self.max
            }
        }
    }
}

/// A u8 quantization of values in `lo..=hi` (widened to hold 0).
fn quant_for(lo: f32, hi: f32) -> Quant {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    if !(hi > lo && (hi - lo).is_finite()) {
        return Quant { scale: 1.0, zero: 0 };
    }
    let scale = (hi - lo) / 255.0;
    Quant { scale, zero: (-lo / scale).round().clamp(0.0, 255.0) as u8 }
}

/// Calibration: an f32 model of the network, run over images while every
/// operation's output is recorded.
pub struct Calibration<B: Backend> {
    model: CompiledModel<B>,
    ws: Workspace<B>,
    input: Histogram,
    values: Vec<Histogram>,
    images: usize,
}

impl<B: Backend> Calibration<B> {
    /// Compiles `graph` with the f32 weights of `sd` for calibration.
    pub fn new(backend: &B, graph: &Graph, sd: &StateDict) -> Result<Self> {
        let model = CompiledModel::new(backend, graph, sd, Precision::F32)?;
        let ws = model.workspace();
        let values = vec![Histogram::default(); model.c.values()];
        Ok(Self { model, ws, input: Histogram::default(), values, images: 0 })
    }

    /// Runs a batch (NHWC, preprocessed as for inference) and records what it sees.
    pub fn observe(&mut self, x: &Tensor<B>) -> Result<()> {
        let b = self.model.backend.clone();
        let image = x.to_host(&b)?;
        self.input.add(&image);
        let values = &mut self.values;
        let mut failed = None;
        self.model.run_observed(&mut self.ws, x, &mut |v, t: &Tensor<B>| match b.download(&t.buf) {
            Ok(host) => values[v].add(&host),
            Err(e) => failed = Some(e),
        })?;
        self.images += x.shape[0];
        failed.map_or(Ok(()), Err)
    }

    /// Images seen so far.
    pub fn images(&self) -> usize {
        self.images
    }

    /// The quantized model: `sd`'s weights folded and quantized, activation
    /// scales from what was seen, chosen by `method`.
    pub fn finish(&self, sd: &StateDict, method: Method) -> Result<QuantModel> {
        if self.images == 0 {
            return Err(Error::Invalid("calibration saw no images".into()));
        }
        let graph = &self.model.graph;
        let c = &self.model.c;
        let mut output = HashMap::new();
        for op in &c.ops {
            if let Op::Conv { conv, dst, relu, .. } = *op {
                let h = &self.values[dst];
                let q = if relu { quant_for(0.0, h.threshold(method)) } else { quant_for(h.min, h.max) };
                output.insert(c.convs[conv].name.clone(), q);
            }
        }
        let input = quant_for(self.input.min, self.input.max);
        let mut convs = HashMap::new();
        for (i, norm) in folded_convs(graph) {
            let n = &graph.nodes[i];
            let GraphOp::Conv(conv) = n.op else { continue };
            let (w, bias) = fold_weights(sd, n, conv, norm.map(|j| &graph.nodes[j]))?;
            let (weight, weight_scale) = quantize_weights(&w, conv.c_out);
            let output =
                *output.get(&n.name).ok_or_else(|| Error::Invalid(format!("`{}` was not calibrated", n.name)))?;
            let bias = bias.unwrap_or_else(|| vec![0.0; conv.c_out]);
            convs.insert(n.name.clone(), QuantConv { weight, weight_scale, bias, output });
        }
        let classifier = classifier_keys(graph)
            .into_iter()
            .map(|(k, _)| {
                sd.get(&k).cloned().map(|t| (k.clone(), t)).ok_or(Error::MissingKey { key: k, hint: String::new() })
            })
            .collect::<Result<_>>()?;
        Ok(QuantModel { input, convs, classifier })
    }
}

/// Per-output-channel symmetric int8 weights: `(integers, scales)`.
pub fn quantize_weights(w: &[f32], c_out: usize) -> (Vec<f32>, Vec<f32>) {
    let row = w.len() / c_out;
    let mut q = vec![0.0; w.len()];
    let mut scales = vec![0.0; c_out];
    for o in 0..c_out {
        let r = &w[o * row..(o + 1) * row];
        let amax = r.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
        for (d, &v) in q[o * row..(o + 1) * row].iter_mut().zip(r) {
            *d = (v / s).round_ties_even().clamp(-127.0, 127.0);
        }
        scales[o] = s;
    }
    (q, scales)
}

/// The classifier's keys and PyTorch shapes.
fn classifier_keys(graph: &Graph) -> Vec<(String, Vec<usize>)> {
    let mut v = Vec::new();
    for n in &graph.nodes {
        if let GraphOp::Linear { c_in, c_out } = n.op {
            v.push((format!("{}.weight", n.name), vec![c_out, c_in]));
            v.push((format!("{}.bias", n.name), vec![c_out]));
        }
    }
    v
}

fn tensor(shape: Vec<usize>, data: Vec<f32>) -> HostTensor {
    HostTensor { shape, data: TensorData::F32(data) }
}

impl QuantModel {
    /// Whether `sd` holds a quantized model (from [`QuantModel::to_state_dict`]).
    pub fn is_quantized(sd: &StateDict) -> bool {
        sd.contains_key("input.scale")
    }

    /// Convolution `name`.
    pub fn conv(&self, name: &str) -> Result<&QuantConv> {
        self.convs.get(name).ok_or_else(|| Error::MissingKey {
            key: format!("{name}.weight"),
            hint: " (not in the quantized model)".into(),
        })
    }

    /// The file form: see the module's documentation. Keys whose values are
    /// integers to store as int8 are listed by [`QuantModel::int8_keys`].
    pub fn to_state_dict(&self, graph: &Graph) -> Result<StateDict> {
        let mut sd = StateDict::new();
        for (i, _) in folded_convs(graph) {
            let n = &graph.nodes[i];
            let GraphOp::Conv(conv) = n.op else { continue };
            let q = self.conv(&n.name)?;
            let shape = conv.weight_shape();
            let name = &n.name;
            sd.insert(
                format!("{name}.weight"),
                tensor(shape.clone(), to_torch(ParamLayout::ConvOhwi, &shape, &q.weight)),
            );
            sd.insert(format!("{name}.weight_scale"), tensor(vec![conv.c_out], q.weight_scale.clone()));
            sd.insert(format!("{name}.bias"), tensor(vec![conv.c_out], q.bias.clone()));
            sd.insert(format!("{name}.output_scale"), tensor(vec![], vec![q.output.scale]));
            sd.insert(format!("{name}.output_zero_point"), tensor(vec![], vec![q.output.zero as f32]));
        }
        sd.insert("input.scale".into(), tensor(vec![], vec![self.input.scale]));
        sd.insert("input.zero_point".into(), tensor(vec![], vec![self.input.zero as f32]));
        sd.extend(self.classifier.clone());
        Ok(sd)
    }

    /// The keys of [`QuantModel::to_state_dict`] that hold int8 weights.
    pub fn int8_keys(graph: &Graph) -> Vec<String> {
        folded_convs(graph).into_iter().map(|(i, _)| format!("{}.weight", graph.nodes[i].name)).collect()
    }

    /// Reads the file form for `graph`, strictly: every key present with its
    /// shape, nothing else, weights integers in `-127..=127`, scales positive.
    pub fn from_state_dict(graph: &Graph, sd: &StateDict) -> Result<Self> {
        let mut used = 0;
        let mut get = |key: String, shape: &[usize]| -> Result<Vec<f32>> {
            let t = sd.get(&key).ok_or_else(|| Error::MissingKey {
                key: key.clone(),
                hint: " (an int8 model from `resnet quantize` has one for each convolution)".into(),
            })?;
            let TensorData::F32(v) = &t.data else {
                return Err(Error::Invalid(format!("`{key}` is not a float tensor")));
            };
            if t.shape != shape {
                return Err(Error::ShapeMismatch {
                    key,
                    expected: shape.to_vec(),
                    found: t.shape.clone(),
                    hint: String::new(),
                });
            }
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(Error::Invalid(format!("`{key}` holds {x}")));
            }
            used += 1;
            Ok(v.clone())
        };
        // A scale and a zero point (scalars).
        let quant = |get: &mut Getter<'_>, scale: &str, zero: &str| {
            let s = get(scale.to_string(), &[])?[0];
            if s <= 0.0 {
                return Err(Error::Invalid(format!("`{scale}` is {s}: scales are positive")));
            }
            let z = get(zero.to_string(), &[])?[0];
            if z.fract() != 0.0 || !(0.0..=255.0).contains(&z) {
                return Err(Error::Invalid(format!("`{zero}` is {z}: a u8 zero point is an integer in 0..=255")));
            }
            Ok(Quant { scale: s, zero: z as u8 })
        };
        let mut convs = HashMap::new();
        for (i, _) in folded_convs(graph) {
            let n = &graph.nodes[i];
            let GraphOp::Conv(conv) = n.op else { continue };
            let name = &n.name;
            let shape = conv.weight_shape();
            let w = get(format!("{name}.weight"), &shape)?;
            if let Some(x) = w.iter().find(|x| x.fract() != 0.0 || x.abs() > 127.0) {
                return Err(Error::Invalid(format!("`{name}.weight` holds {x}: int8 weights are integers within 127")));
            }
            let weight = to_internal(ParamLayout::ConvOhwi, &shape, &w);
            let weight_scale = get(format!("{name}.weight_scale"), &[conv.c_out])?;
            if let Some(x) = weight_scale.iter().find(|&&x| x <= 0.0) {
                return Err(Error::Invalid(format!("`{name}.weight_scale` holds {x}: scales are positive")));
            }
            let bias = get(format!("{name}.bias"), &[conv.c_out])?;
            let output = quant(&mut get, &format!("{name}.output_scale"), &format!("{name}.output_zero_point"))?;
            convs.insert(name.clone(), QuantConv { weight, weight_scale, bias, output });
        }
        let input = quant(&mut get, "input.scale", "input.zero_point")?;
        let mut classifier = BTreeMap::new();
        for (key, shape) in classifier_keys(graph) {
            let v = get(key.clone(), &shape)?;
            classifier.insert(key, tensor(shape, v));
        }
        if used != sd.len() {
            let known: Vec<String> = Self::keys(graph);
            let extra = sd.keys().find(|k| !known.contains(k)).cloned().unwrap_or_default();
            return Err(Error::Invalid(format!("unexpected key `{extra}` in an int8 model of {}", graph.spec.name)));
        }
        Ok(Self { input, convs, classifier })
    }

    /// Every key of the file form.
    fn keys(graph: &Graph) -> Vec<String> {
        let mut v = vec!["input.scale".to_string(), "input.zero_point".to_string()];
        for (i, _) in folded_convs(graph) {
            for p in ["weight", "weight_scale", "bias", "output_scale", "output_zero_point"] {
                v.push(format!("{}.{p}", graph.nodes[i].name));
            }
        }
        v.extend(classifier_keys(graph).into_iter().map(|(k, _)| k));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_grow_without_losing_counts() {
        let mut h = Histogram::default();
        h.add(&[0.5, 1.0, 0.0]);
        h.add(&[3.9, 0.25]);
        assert_eq!(h.bins.iter().sum::<u64>(), 4);
        assert!(h.range > 3.9);
        assert_eq!(h.threshold(Method::MinMax), 3.9);
        // 3 of 4 positive values are at most 1.0: the 75th percentile is near it.
        let t = h.threshold(Method::Percentile(75.0));
        assert!((1.0..1.01).contains(&t), "{t}");
    }

    #[test]
    fn weights_quantize_per_channel() {
        let (q, s) = quantize_weights(&[0.5, -1.0, 0.25, 0.0, 0.0, 0.0], 2);
        assert_eq!(q, vec![64.0, -127.0, 32.0, 0.0, 0.0, 0.0]);
        assert_eq!(s, vec![1.0 / 127.0, 1.0]);
    }

    #[test]
    fn methods_parse() {
        assert_eq!("minmax".parse::<Method>().unwrap(), Method::MinMax);
        assert_eq!("percentile:99.9".parse::<Method>().unwrap(), Method::Percentile(99.9));
        assert!("percentile:0".parse::<Method>().is_err());
        assert!("entropy".parse::<Method>().is_err());
    }
}
