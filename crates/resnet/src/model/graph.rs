//! The network described once: a small graph built from a [`ResNetSpec`]
//! alone, with no backend and no weights.
//!
//! Nodes are the operations of the network (convolution, batch norm, ReLU,
//! residual add, option-A shortcut, pools, classifier) in torchvision's module
//! order, each with its inputs and its torchvision name. Everything that
//! needs the structure reads it from here: the summary and `resnet archs`
//! (shapes, parameters, multiply-accumulates), the key/shape table that
//! recognises an architecture from a weights file, the inference plan
//! ([`crate::infer`]), and later the ONNX exporter and the server's model
//! description. torchvision's parameter names are made here ([`block_name`],
//! [`key`]); the training [`Network`](super::Network) builds its layers by
//! hand, as the readable reference, and a test checks that its state has the
//! graph's names and shapes for every architecture.

use super::spec::{BlockKind, ResNetSpec, ShortcutKind, Stem};
use super::summary::{LayerInfo, Summary};
use crate::backend::{ConvDesc, out_size};
use crate::error::{Error, Result};

/// A value of the graph: the network input ([`Value::INPUT`]) or the output of
/// node `i` (`Value(i + 1)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value(pub usize);

impl Value {
    /// The network input (NHWC images).
    pub const INPUT: Value = Value(0);

    /// The node that produces this value (`None` for the input).
    pub fn producer(self) -> Option<usize> {
        self.0.checked_sub(1)
    }
}

/// A convolution's geometry, independent of the input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel (height, width).
    pub kernel: [usize; 2],
    /// Stride (vertical, horizontal).
    pub stride: [usize; 2],
    /// Zero padding per side.
    pub pad: [usize; 2],
    /// Dilation.
    pub dilation: [usize; 2],
    /// Channel groups.
    pub groups: usize,
}

impl Conv {
    /// A square `k x k` convolution (dilation 1).
    pub fn square(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, groups: usize) -> Self {
        Self { c_in, c_out, kernel: [k, k], stride: [stride, stride], pad: [pad, pad], dilation: [1, 1], groups }
    }

    /// The descriptor for an NHWC input of `n` images of `h x w`.
    pub fn desc(&self, n: usize, h: usize, w: usize) -> ConvDesc {
        ConvDesc {
            n,
            h,
            w,
            c_in: self.c_in,
            c_out: self.c_out,
            kernel: self.kernel,
            stride: self.stride,
            pad: self.pad,
            dilation: self.dilation,
            groups: self.groups,
        }
    }

    /// PyTorch's weight shape `[c_out, c_in / groups, kh, kw]`.
    pub fn weight_shape(&self) -> Vec<usize> {
        vec![self.c_out, self.c_in / self.groups, self.kernel[0], self.kernel[1]]
    }
}

/// What a node computes. Shapes are NHWC; see each variant for its inputs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    /// 2-D convolution without bias; parameter `weight`.
    Conv(Conv),
    /// Batch normalisation; parameters `weight`, `bias`, buffers
    /// `running_mean`, `running_var`, `num_batches_tracked`.
    BatchNorm {
        /// Channels.
        channels: usize,
        /// Added to the variance.
        eps: f32,
        /// Weight of a new batch statistic in the running estimate.
        momentum: f32,
    },
    /// `max(x, 0)`.
    Relu,
    /// The residual sum: `inputs[0]` (the residual branch) + `inputs[1]` (the shortcut).
    Add,
    /// The option-A shortcut: identity subsampled by `stride`, zero channels
    /// added (`(c_out - c_in) / 2` in front).
    PadShortcut {
        /// Input channels.
        c_in: usize,
        /// Output channels.
        c_out: usize,
        /// Spatial subsampling.
        stride: usize,
    },
    /// Max pooling, square window, implicit `-inf` padding.
    MaxPool {
        /// Window side.
        kernel: usize,
        /// Stride.
        stride: usize,
        /// Padding per side.
        pad: usize,
    },
    /// Mean over all positions: `[n, h, w, c] -> [n, 1, 1, c]`.
    GlobalAvgPool,
    /// The classifier `y = x W^T + b`; parameters `weight [c_out, c_in]`, `bias [c_out]`.
    Linear {
        /// Input features.
        c_in: usize,
        /// Outputs.
        c_out: usize,
    },
}

/// One operation of the network.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// torchvision's module name (`layer2.0.downsample.0`); ReLU and add nodes,
    /// which have no module of their own there, get names of their own.
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Its operands.
    pub inputs: Vec<Value>,
}

/// What a state-dict entry is to its layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRole {
    /// A convolution or classifier weight, or a batch norm's gamma (trainable).
    Weight,
    /// The classifier's bias or a batch norm's beta (trainable).
    Bias,
    /// A batch norm's running mean.
    RunningMean,
    /// A batch norm's running (unbiased) variance.
    RunningVar,
    /// A batch norm's `num_batches_tracked` (an int64 scalar).
    NumBatchesTracked,
}

impl ParamRole {
    /// True for the parameters an optimiser trains.
    pub fn trainable(self) -> bool {
        matches!(self, ParamRole::Weight | ParamRole::Bias)
    }
}

/// One entry of the state dict: torchvision's key and PyTorch's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamInfo {
    /// Full key, e.g. `layer1.0.bn1.running_var`.
    pub key: String,
    /// PyTorch's shape (`[]` for the counter).
    pub shape: Vec<usize>,
    /// What it is.
    pub role: ParamRole,
}

impl ParamInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl Node {
    /// The node's state-dict entries, in torchvision's order.
    pub fn params(&self) -> Vec<ParamInfo> {
        let p = |name: &str, shape: Vec<usize>, role| ParamInfo { key: key(&self.name, name), shape, role };
        match self.op {
            Op::Conv(c) => vec![p("weight", c.weight_shape(), ParamRole::Weight)],
            Op::BatchNorm { channels: c, .. } => vec![
                p("weight", vec![c], ParamRole::Weight),
                p("bias", vec![c], ParamRole::Bias),
                p("running_mean", vec![c], ParamRole::RunningMean),
                p("running_var", vec![c], ParamRole::RunningVar),
                p("num_batches_tracked", vec![], ParamRole::NumBatchesTracked),
            ],
            Op::Linear { c_in, c_out } => {
                vec![p("weight", vec![c_out, c_in], ParamRole::Weight), p("bias", vec![c_out], ParamRole::Bias)]
            }
            _ => Vec::new(),
        }
    }

    /// Output shape `[h, w, c]` for input shapes `[h, w, c]` (one per input).
    pub fn output_shape(&self, inputs: &[[usize; 3]]) -> [usize; 3] {
        let [h, w, c] = inputs[0];
        match self.op {
            Op::Conv(cv) => {
                let d = cv.desc(1, h, w);
                [d.out_h(), d.out_w(), cv.c_out]
            }
            Op::BatchNorm { .. } | Op::Relu | Op::Add => [h, w, c],
            Op::PadShortcut { c_out, stride, .. } => [h.div_ceil(stride), w.div_ceil(stride), c_out],
            Op::MaxPool { kernel, stride, pad } => {
                [out_size(h, kernel, stride, pad, 1), out_size(w, kernel, stride, pad, 1), c]
            }
            Op::GlobalAvgPool => [1, 1, c],
            Op::Linear { c_out, .. } => [1, 1, c_out],
        }
    }

    /// Multiply-accumulates per image for input shapes `inputs`.
    pub fn macs(&self, inputs: &[[usize; 3]]) -> u64 {
        match self.op {
            Op::Conv(c) => {
                let [oh, ow, _] = self.output_shape(inputs);
                (oh * ow * c.c_out * c.kernel[0] * c.kernel[1] * (c.c_in / c.groups)) as u64
            }
            Op::Linear { c_in, c_out } => (c_in * c_out) as u64,
            _ => 0,
        }
    }
}

/// `prefix.name`, or `name` at the top level: how torchvision's keys are built.
pub fn key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// torchvision's name of unit `index` of stage `stage` (both 0-based): `layer{stage+1}.{index}`.
pub fn block_name(stage: usize, index: usize) -> String {
    format!("layer{}.{index}", stage + 1)
}

/// A whole network: nodes in torchvision's module order (a topological order).
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    /// The architecture it describes.
    pub spec: ResNetSpec,
    /// The operations; node `i` produces `Value(i + 1)`.
    pub nodes: Vec<Node>,
    /// The pooled features (the classifier's input).
    pub features: Value,
    /// The logits.
    pub output: Value,
}

/// Builds the node list.
struct Builder {
    nodes: Vec<Node>,
}

impl Builder {
    fn node(&mut self, name: String, op: Op, inputs: &[Value]) -> Value {
        self.nodes.push(Node { name, op, inputs: inputs.to_vec() });
        Value(self.nodes.len())
    }

    fn conv(&mut self, name: String, c: Conv, x: Value) -> Value {
        self.node(name, Op::Conv(c), &[x])
    }

    fn bn(&mut self, name: String, channels: usize, x: Value) -> Value {
        self.node(name, Op::BatchNorm { channels, eps: 1e-5, momentum: 0.1 }, &[x])
    }

    fn relu(&mut self, name: String, x: Value) -> Value {
        self.node(name, Op::Relu, &[x])
    }

    /// A post-activation unit (He 2015): the branch, then the shortcut, the
    /// sum and the ReLU (or the ReLU alone in plain networks).
    fn post_unit(&mut self, p: &str, kind: BlockKind, sc: ShortcutKind, u: Unit, x: Value) -> Value {
        let c_out = u.planes * kind.expansion();
        let n = |s: &str| key(p, s);
        let h = if kind == BlockKind::Basic {
            let h = self.conv(n("conv1"), Conv::square(u.c_in, u.planes, 3, u.stride, 1, 1), x);
            let h = self.bn(n("bn1"), u.planes, h);
            let h = self.relu(n("relu1"), h);
            let h = self.conv(n("conv2"), Conv::square(u.planes, u.planes, 3, 1, 1, 1), h);
            self.bn(n("bn2"), u.planes, h)
        } else {
            let h = self.conv(n("conv1"), Conv::square(u.c_in, u.inner, 1, 1, 0, 1), x);
            let h = self.bn(n("bn1"), u.inner, h);
            let h = self.relu(n("relu1"), h);
            let h = self.conv(n("conv2"), Conv::square(u.inner, u.inner, 3, u.stride, 1, u.groups), h);
            let h = self.bn(n("bn2"), u.inner, h);
            let h = self.relu(n("relu2"), h);
            let h = self.conv(n("conv3"), Conv::square(u.inner, c_out, 1, 1, 0, 1), h);
            self.bn(n("bn3"), c_out, h)
        };
        let reshape = u.stride != 1 || u.c_in != c_out;
        let shortcut = match (sc, reshape) {
            (ShortcutKind::None, _) => None,
            (ShortcutKind::A, true) => {
                let op = Op::PadShortcut { c_in: u.c_in, c_out, stride: u.stride };
                Some(self.node(n("shortcut"), op, &[x]))
            }
            (ShortcutKind::B, true) | (ShortcutKind::C, _) => {
                let s = self.conv(n("downsample.0"), Conv::square(u.c_in, c_out, 1, u.stride, 0, 1), x);
                Some(self.bn(n("downsample.1"), c_out, s))
            }
            _ => Some(x),
        };
        let h = match shortcut {
            Some(s) => self.node(n("add"), Op::Add, &[h, s]),
            None => h,
        };
        self.relu(n("relu"), h)
    }

    /// A pre-activation unit (He 2016): `(BN-ReLU-conv)` two or three times,
    /// plus the shortcut (a projection reads the pre-activated input).
    fn preact_unit(&mut self, p: &str, kind: BlockKind, sc: ShortcutKind, u: Unit, x: Value) -> Value {
        let c_out = u.planes * kind.expansion();
        let n = |s: &str| key(p, s);
        let convs = if kind == BlockKind::PreactBasic {
            vec![Conv::square(u.c_in, u.planes, 3, u.stride, 1, 1), Conv::square(u.planes, u.planes, 3, 1, 1, 1)]
        } else {
            vec![
                Conv::square(u.c_in, u.inner, 1, 1, 0, 1),
                Conv::square(u.inner, u.inner, 3, u.stride, 1, u.groups),
                Conv::square(u.inner, c_out, 1, 1, 0, 1),
            ]
        };
        let (mut h, mut preactivated) = (x, x);
        for (i, c) in convs.iter().enumerate() {
            let a = self.bn(n(&format!("bn{}", i + 1)), c.c_in, h);
            let a = self.relu(n(&format!("relu{}", i + 1)), a);
            if i == 0 {
                preactivated = a;
            }
            h = self.conv(n(&format!("conv{}", i + 1)), *c, a);
        }
        let reshape = u.stride != 1 || u.c_in != c_out;
        let shortcut = match sc {
            ShortcutKind::None => return h,
            ShortcutKind::A if reshape => {
                let op = Op::PadShortcut { c_in: u.c_in, c_out, stride: u.stride };
                self.node(n("shortcut"), op, &[x])
            }
            ShortcutKind::A | ShortcutKind::B if !reshape => x,
            _ => self.conv(n("downsample.0"), Conv::square(u.c_in, c_out, 1, u.stride, 0, 1), preactivated),
        };
        self.node(n("add"), Op::Add, &[h, shortcut])
    }
}

/// What the builder needs to know about one unit.
#[derive(Clone, Copy)]
struct Unit {
    c_in: usize,
    planes: usize,
    inner: usize,
    groups: usize,
    stride: usize,
}

impl Graph {
    /// The graph of `spec` (validated first).
    pub fn new(spec: &ResNetSpec) -> Result<Self> {
        spec.validate()?;
        let mut b = Builder { nodes: Vec::new() };
        let (c, w) = (spec.in_channels, spec.stem_width);
        let mut h = match spec.stem {
            Stem::Imagenet => {
                let h = b.conv("conv1".into(), Conv::square(c, w, 7, 2, 3, 1), Value::INPUT);
                let h = b.bn("bn1".into(), w, h);
                let h = b.relu("relu".into(), h);
                b.node("maxpool".into(), Op::MaxPool { kernel: 3, stride: 2, pad: 1 }, &[h])
            }
            Stem::Cifar => {
                let h = b.conv("conv1".into(), Conv::square(c, w, 3, 1, 1, 1), Value::INPUT);
                let h = b.bn("bn1".into(), w, h);
                b.relu("relu".into(), h)
            }
            Stem::CifarPreact => b.conv("conv1".into(), Conv::square(c, w, 3, 1, 1, 1), Value::INPUT),
        };
        let mut c = spec.stem_width;
        for (s, (&depth, &planes)) in spec.depths.iter().zip(&spec.widths).enumerate() {
            for i in 0..depth {
                let stride = if i == 0 && s > 0 { 2 } else { 1 };
                let u = Unit { c_in: c, planes, inner: spec.bottleneck_width(planes), groups: spec.groups, stride };
                let name = block_name(s, i);
                h = if spec.block.is_preact() {
                    b.preact_unit(&name, spec.block, spec.shortcut, u, h)
                } else {
                    b.post_unit(&name, spec.block, spec.shortcut, u, h)
                };
                c = planes * spec.block.expansion();
            }
        }
        if spec.block.is_preact() {
            let a = b.bn("bn_final".into(), c, h);
            h = b.relu("relu_final".into(), a);
        }
        let features = b.node("avgpool".into(), Op::GlobalAvgPool, &[h]);
        let output = b.node("fc".into(), Op::Linear { c_in: c, c_out: spec.num_classes }, &[features]);
        Ok(Self { spec: spec.clone(), nodes: b.nodes, features, output })
    }

    /// Number of values (the input and one per node).
    pub fn values(&self) -> usize {
        self.nodes.len() + 1
    }

    /// The node producing `v`, if any.
    pub fn producer(&self, v: Value) -> Option<&Node> {
        v.producer().map(|i| &self.nodes[i])
    }

    /// The feature nodes every network has, shallow to deep: `stem` (the
    /// stem's activation, before any max pool, as timm's `features_only`
    /// takes it), `layer1`..`layerN` (each stage's output), `avgpool` (the
    /// pooled features) and `fc` (the logits).
    pub fn feature_nodes(&self) -> Vec<String> {
        let stages = (1..=self.spec.depths.len()).map(|s| format!("layer{s}"));
        std::iter::once("stem".to_string()).chain(stages).chain(["avgpool".into(), "fc".into()]).collect()
    }

    /// The value a feature node names: one of [`Graph::feature_nodes`], a
    /// unit (`layer2.1`, its output), or any node by its torchvision module
    /// name (`maxpool`, `layer3.0.relu`).
    pub fn feature_value(&self, name: &str) -> Result<Value> {
        let by_name = |n: &str| self.nodes.iter().position(|node| node.name == n).map(|i| Value(i + 1));
        // A unit's output is its last node; a stage's, its last unit's.
        let last_under = |prefix: &str| {
            let prefix = format!("{prefix}.");
            self.nodes.iter().rposition(|node| node.name.starts_with(&prefix)).map(|i| Value(i + 1))
        };
        let found = match name {
            "avgpool" => Some(self.features),
            "fc" => Some(self.output),
            "stem" => match self.spec.stem {
                Stem::Imagenet | Stem::Cifar => by_name("relu"),
                Stem::CifarPreact => by_name("conv1"),
            },
            _ => by_name(name).or_else(|| last_under(name).filter(|_| name.starts_with("layer"))),
        };
        found.ok_or_else(|| {
            Error::Invalid(format!(
                "{} has no layer `{name}`: use one of {} (or a unit such as layer2.0, or a module such as maxpool)",
                self.spec.name,
                self.feature_nodes().join(", ")
            ))
        })
    }

    /// For each value, the nodes that read it, in order.
    pub fn consumers(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.values()];
        for (i, n) in self.nodes.iter().enumerate() {
            for v in &n.inputs {
                out[v.0].push(i);
            }
        }
        out
    }

    /// Every state-dict entry, in torchvision's order.
    pub fn params(&self) -> impl Iterator<Item = ParamInfo> + '_ {
        self.nodes.iter().flat_map(Node::params)
    }

    /// Number of trainable parameters (PyTorch's `sum(p.numel())`).
    pub fn num_params(&self) -> usize {
        self.params().filter(|p| p.role.trainable()).map(|p| p.numel()).sum()
    }

    /// The `[h, w, c]` shape of every value for one `height x width` image,
    /// or an error naming the first layer that would have no output pixels.
    pub fn shapes(&self, height: usize, width: usize) -> Result<Vec<[usize; 3]>> {
        let mut shapes = Vec::with_capacity(self.values());
        shapes.push([height, width, self.spec.in_channels]);
        for n in &self.nodes {
            let inputs: Vec<[usize; 3]> = n.inputs.iter().map(|v| shapes[v.0]).collect();
            let s = n.output_shape(&inputs);
            if s[0] == 0 || s[1] == 0 {
                return Err(Error::Invalid(format!(
                    "input {height}x{width} is too small for {}: `{}` would have no output pixels",
                    self.spec.name, n.name
                )));
            }
            shapes.push(s);
        }
        Ok(shapes)
    }

    /// Per-layer summary for one `[in_channels, height, width]` image: a row
    /// for every node with parameters, every pool and every option-A shortcut
    /// (ReLU and add nodes are shown with the batch norm they follow).
    pub fn summary(&self, height: usize, width: usize) -> Result<Summary> {
        let shapes = self.shapes(height, width)?;
        let consumers = self.consumers();
        // A batch norm whose output reaches a ReLU, directly or as the residual branch of a sum.
        let relu_follows = |v: usize| {
            consumers[v].iter().any(|&i| match self.nodes[i].op {
                Op::Relu => true,
                Op::Add => {
                    self.nodes[i].inputs[0].0 == v && consumers[i + 1].iter().any(|&j| self.nodes[j].op == Op::Relu)
                }
                _ => false,
            })
        };
        let mut rows = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let inputs: Vec<[usize; 3]> = n.inputs.iter().map(|v| shapes[v.0]).collect();
            let kind = match n.op {
                Op::Conv(c) => {
                    let mut k = format!("Conv2d {}x{}", c.kernel[0], c.kernel[1]);
                    if c.stride != [1, 1] {
                        k += &format!("/{}", c.stride[0]);
                    }
                    if c.groups > 1 {
                        k += &format!(" g{}", c.groups);
                    }
                    k
                }
                Op::BatchNorm { .. } if relu_follows(i + 1) => "BatchNorm2d+ReLU".into(),
                Op::BatchNorm { .. } => "BatchNorm2d".into(),
                Op::MaxPool { kernel, stride, .. } => format!("MaxPool2d {kernel}x{kernel}/{stride}"),
                Op::PadShortcut { stride, .. } => format!("ZeroPadShortcut /{stride}"),
                Op::GlobalAvgPool => "GlobalAvgPool".into(),
                Op::Linear { .. } => "Linear".into(),
                Op::Relu | Op::Add => continue,
            };
            let [h, w, c] = shapes[i + 1];
            let params = n.params().iter().filter(|p| p.role.trainable()).map(ParamInfo::numel).sum();
            rows.push(LayerInfo { name: n.name.clone(), kind, output: [1, h, w, c], params, macs: n.macs(&inputs) });
        }
        Ok(Summary {
            arch: self.spec.name.clone(),
            params: rows.iter().map(|r| r.params).sum(),
            macs: rows.iter().map(|r| r.macs).sum(),
            input: [self.spec.in_channels, height, width],
            layers: rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ARCHS;

    #[test]
    fn every_graph_is_topological_and_shapes_flow() {
        for arch in ARCHS {
            let spec = ResNetSpec::named(arch).unwrap();
            let g = Graph::new(&spec).unwrap();
            for (i, n) in g.nodes.iter().enumerate() {
                assert!(n.inputs.iter().all(|v| v.0 <= i), "{arch}: {} reads a later value", n.name);
            }
            let side = if spec.stem == Stem::Imagenet { 224 } else { 32 };
            let shapes = g.shapes(side, side).unwrap();
            assert_eq!(shapes[g.output.0], [1, 1, spec.num_classes], "{arch}");
            assert_eq!(shapes[g.features.0], [1, 1, spec.feature_dim()], "{arch}");
            for (i, n) in g.nodes.iter().enumerate() {
                if n.op == Op::Add {
                    assert_eq!(shapes[n.inputs[0].0], shapes[n.inputs[1].0], "{arch}: {}", n.name);
                    assert_eq!(shapes[i + 1], shapes[n.inputs[0].0]);
                }
            }
        }
        let g = Graph::new(&ResNetSpec::named("resnet50").unwrap()).unwrap();
        assert_eq!(g.shapes(1, 1).unwrap()[g.features.0], [1, 1, 2048], "padding keeps one pixel");
        let e = g.shapes(0, 5).unwrap_err().to_string();
        assert!(e.contains("too small") && e.contains("`conv1`"), "{e}");
    }
}
