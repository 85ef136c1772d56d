//! From the graph to a flat list of fused operations: batch norms folded into
//! the convolutions before them, residual adds and ReLUs into their epilogues;
//! then which values are stored in bf16 (asking the backend) and which
//! buffer each value lives in.

use std::collections::HashMap;

use super::quant::QuantModel;
use crate::backend::{Backend, ConvStorage, DType, FilterUse, InputRead, Precision, Quant};
use crate::error::{Error, Result};
use crate::io::{HostTensor, StateDict, TensorData};
use crate::model::graph::{Conv, Graph, Node, Op as GraphOp, Value};
use crate::tensor::{ParamLayout, to_internal};

/// A convolution with its batch norm folded in.
pub(super) struct FusedConv<B: Backend> {
    /// The graph's name for it (its convolution's).
    pub name: String,
    /// Geometry.
    pub conv: Conv,
    /// f32, or bf16 in a bf16 plan (all but the classifier).
    pub usage: FilterUse,
    /// The filter, or what prepares it.
    pub weights: Weights<B>,
    /// Folded shift (the batch norm's), if any.
    pub bias: Option<B::Buf>,
    /// An int8 convolution's quantization.
    pub quant: Option<QuantConv<B>>,
}

/// How an int8 convolution reads its input and scales its sums.
pub(super) struct QuantConv<B: Backend> {
    /// The input's quantization (the image's, for a stem; else its scale and zero point 0).
    pub input: Quant,
    /// Input scale times each output channel's weight scale.
    pub multiplier: B::Buf,
}

/// The weights a model is compiled from.
#[derive(Clone, Copy)]
pub(super) enum Source<'a> {
    /// A (checked) f32 state dict.
    Float(&'a StateDict),
    /// A quantized model.
    Int8(&'a QuantModel),
}

/// A fused convolution's weights as a compiled model keeps them.
pub(super) enum Weights<B: Backend> {
    /// Prepared at compile time: the backend's algorithm does not depend on the shape.
    Prepared(std::sync::Arc<B::Filter>),
    /// The folded OHWI weights, to prepare the filter each shape's algorithm needs.
    Folded(B::Buf),
}

impl<B: Backend> FusedConv<B> {
    fn new(b: &B, name: &str, conv: Conv, usage: FilterUse, weights: &[f32], bias: Option<B::Buf>) -> Result<Self> {
        // Any shape of the layer stands for all when the algorithm is fixed.
        let d = layer_desc(&conv);
        let buf = b.upload(weights)?;
        let weights = if b.conv_algorithm_is_fixed(&d, usage) {
            let mut f = B::Filter::default();
            b.prepare_filter(&d, &buf, usage, &mut f)?;
            Weights::Prepared(std::sync::Arc::new(f))
        } else {
            Weights::Folded(buf)
        };
        Ok(Self { name: name.to_string(), conv, usage, weights, bias, quant: None })
    }
}

/// A batch norm that cannot be folded (it precedes its convolution, in
/// pre-activation units: the convolution's zero padding must stay zero),
/// with its ReLU.
pub(super) struct FrozenNorm<B: Backend> {
    pub channels: usize,
    pub gamma: B::Buf,
    pub beta: B::Buf,
    pub mean: B::Buf,
    pub var: B::Buf,
    pub eps: f32,
    pub relu: bool,
}

/// One operation of a compiled model, over plan values (0 is the input).
pub(super) enum Op {
    /// `dst = relu?(conv(src) + bias + residual?)`; `conv` indexes the model's convolutions.
    Conv { conv: usize, src: usize, dst: usize, residual: Option<usize>, relu: bool },
    /// A frozen batch norm (with its ReLU); `norm` indexes the model's norms.
    Norm { norm: usize, src: usize, dst: usize },
    /// Max pooling.
    MaxPool { kernel: usize, stride: usize, pad: usize, src: usize, dst: usize },
    /// Option-A shortcut.
    Pad { c_in: usize, c_out: usize, stride: usize, src: usize, dst: usize },
    /// Global average pool.
    Gap { src: usize, dst: usize },
}

impl Op {
    /// `(source, destination)` values.
    pub fn io(&self) -> (usize, usize) {
        match *self {
            Op::Conv { src, dst, .. }
            | Op::Norm { src, dst, .. }
            | Op::MaxPool { src, dst, .. }
            | Op::Pad { src, dst, .. }
            | Op::Gap { src, dst } => (src, dst),
        }
    }

    /// The residual a convolution adds, if any.
    pub fn residual(&self) -> Option<usize> {
        match *self {
            Op::Conv { residual, .. } => residual,
            _ => None,
        }
    }
}

/// The compiled form: operations, their parameters, and where values live.
pub(super) struct Compiled<B: Backend> {
    pub ops: Vec<Op>,
    pub convs: Vec<FusedConv<B>>,
    pub norms: Vec<FrozenNorm<B>>,
    /// The graph value each plan value is (for its shape); one entry per
    /// plan value, the input included.
    pub graph_value: Vec<usize>,
    /// The values a run returns, in the order they were asked for.
    pub outputs: Vec<usize>,
    /// Element type of each value.
    pub storage: Vec<DType>,
    /// Buffer slot of each value (`None` for the input) and the number of slots.
    pub slot: Vec<Option<usize>>,
    pub slots: usize,
    /// Quantization of each value stored in u8 (int8 plans).
    pub quant: Vec<Quant>,
}

impl<B: Backend> Compiled<B> {
    /// Number of plan values (the input included).
    pub fn values(&self) -> usize {
        self.graph_value.len()
    }
}

/// A descriptor of `conv`'s layer for the questions that do not depend on
/// the input's size (one image of the kernel's size).
fn layer_desc(conv: &Conv) -> crate::backend::ConvDesc {
    conv.desc(1, conv.kernel[0], conv.kernel[1])
}

/// The f32 values of a checked state-dict entry.
fn floats<'a>(sd: &'a StateDict, key: &str) -> Result<&'a [f32]> {
    match sd.get(key) {
        Some(HostTensor { data: TensorData::F32(v), .. }) => Ok(v),
        _ => Err(Error::MissingKey { key: key.to_string(), hint: String::new() }),
    }
}

/// `(scale, shift)` of a frozen batch norm: `bn(x) = x * scale + shift`.
fn fold_norm(gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma.iter().zip(var).map(|(&g, &v)| g / (v + eps).sqrt()).collect();
    let shift = beta.iter().zip(mean).zip(&scale).map(|((&be, &m), &s)| be - m * s).collect();
    (scale, shift)
}

/// The four tensors of batch norm `name`.
fn norm_tensors<'a>(sd: &'a StateDict, name: &str) -> Result<[&'a [f32]; 4]> {
    let get = |p: &str| floats(sd, &format!("{name}.{p}"));
    Ok([get("weight")?, get("bias")?, get("running_mean")?, get("running_var")?])
}

/// What one fused operation absorbs, found by following single consumers
/// from its node: for a convolution a batch norm, then a residual add (as
/// its branch), then a ReLU; for a batch norm of its own only a ReLU.
struct Fusion {
    norm: Option<usize>,
    /// The add node and the shortcut value it adds.
    add: Option<(usize, Value)>,
    relu: Option<usize>,
}

impl Fusion {
    /// `fold_norms`: whether a convolution absorbs the batch norm after it.
    fn new(nodes: &[Node], consumers: &[Vec<usize>], i: usize, fold_norms: bool) -> Self {
        let only = |n: usize| match consumers[n + 1].as_slice() {
            [j] => Some(*j),
            _ => None,
        };
        let mut f = Fusion { norm: None, add: None, relu: None };
        let mut last = i;
        if let GraphOp::Conv(_) = nodes[i].op {
            if let Some(j) = only(last).filter(|&j| fold_norms && matches!(nodes[j].op, GraphOp::BatchNorm { .. })) {
                (f.norm, last) = (Some(j), j);
            }
            if let Some(k) = only(last).filter(|&k| nodes[k].op == GraphOp::Add && nodes[k].inputs[0].0 == last + 1) {
                (f.add, last) = (Some((k, nodes[k].inputs[1])), k);
            }
        }
        if matches!(nodes[i].op, GraphOp::Conv(_) | GraphOp::BatchNorm { .. })
            && let Some(r) = only(last).filter(|&r| nodes[r].op == GraphOp::Relu)
        {
            f.relu = Some(r);
        }
        f
    }

    /// The nodes it absorbs.
    fn absorbed(&self) -> impl Iterator<Item = usize> + '_ {
        self.norm.into_iter().chain(self.add.map(|a| a.0)).chain(self.relu)
    }

    /// The last node it covers, from node `i`: where the operation is placed.
    fn last(&self, i: usize) -> usize {
        self.absorbed().max().unwrap_or(i)
    }
}

/// Compiles `graph` with the (checked) weights of `sd` for `precision`, to
/// return `outputs`: nothing after the last of them is compiled (or run).
pub(super) fn compile<B: Backend>(
    b: &B,
    graph: &Graph,
    source: Source<'_>,
    precision: Precision,
    outputs: &[Value],
) -> Result<Compiled<B>> {
    let nodes = &graph.nodes;
    let int8 = precision == Precision::Int8;
    let mut placed = plan_fusions(graph);
    // Emit in the order of the nodes where the operations are placed.
    let mut value_of: Vec<Option<usize>> = vec![None; graph.values()];
    value_of[0] = Some(0);
    let mut out = Compiled {
        ops: Vec::new(),
        convs: Vec::new(),
        norms: Vec::new(),
        graph_value: vec![0],
        outputs: Vec::new(),
        storage: Vec::new(),
        slot: Vec::new(),
        slots: 0,
        quant: vec![match source {
            Source::Int8(q) => q.input,
            Source::Float(_) => NO_QUANT,
        }],
    };
    let plan_value = |value_of: &[Option<usize>], v: Value, name: &str| {
        value_of[v.0]
            .ok_or_else(|| Error::Invalid(format!("cannot compile `{name}`: it reads a value no operation produces")))
    };
    for at in 0..nodes.len() {
        let Some((i, f)) = placed.remove(&at) else { continue };
        let n = &nodes[i];
        let src = plan_value(&value_of, n.inputs[0], &n.name)?;
        let dst = out.graph_value.len();
        let op = match n.op {
            GraphOp::Conv(c) => {
                let residual = f.add.map(|(_, r)| plan_value(&value_of, r, &n.name)).transpose()?;
                let fc = match source {
                    Source::Float(sd) => fold(b, sd, n, c, f.norm.map(|j| &nodes[j]), precision)?,
                    Source::Int8(q) => quantized(b, q, n, c, src, &out.quant)?,
                };
                out.convs.push(fc);
                Op::Conv { conv: out.convs.len() - 1, src, dst, residual, relu: f.relu.is_some() }
            }
            GraphOp::BatchNorm { .. } if int8 => {
                return Err(Error::Invalid(format!(
                    "int8 compiles post-activation networks only: `{}` is a batch norm of its own",
                    n.name
                )));
            }
            GraphOp::BatchNorm { channels, eps, .. } => {
                let Source::Float(sd) = source else { unreachable!("int8 refused above") };
                let [gamma, beta, mean, var] = norm_tensors(sd, &n.name)?;
                out.norms.push(FrozenNorm {
                    channels,
                    gamma: b.upload(gamma)?,
                    beta: b.upload(beta)?,
                    mean: b.upload(mean)?,
                    var: b.upload(var)?,
                    eps,
                    relu: f.relu.is_some(),
                });
                Op::Norm { norm: out.norms.len() - 1, src, dst }
            }
            GraphOp::MaxPool { kernel, stride, pad } => Op::MaxPool { kernel, stride, pad, src, dst },
            GraphOp::PadShortcut { c_in, c_out, stride } => Op::Pad { c_in, c_out, stride, src, dst },
            GraphOp::GlobalAvgPool => Op::Gap { src, dst },
            GraphOp::Linear { c_in, c_out } => {
                // The classifier is a 1x1 convolution of the pooled features, in
                // f32 in every plan (a tiny share of the work; the logits stay f32).
                let conv = Conv::square(c_in, c_out, 1, 1, 0, 1);
                let sd = match source {
                    Source::Float(sd) => sd,
                    Source::Int8(q) => &q.classifier,
                };
                let weights = floats(sd, &format!("{}.weight", n.name))?;
                let bias = Some(b.upload(floats(sd, &format!("{}.bias", n.name))?)?);
                out.convs.push(FusedConv::new(b, &n.name, conv, FilterUse::Forward, weights, bias)?);
                Op::Conv { conv: out.convs.len() - 1, src, dst, residual: None, relu: false }
            }
            GraphOp::Relu | GraphOp::Add => {
                return Err(Error::Invalid(format!("cannot compile `{}`: no operation to fuse it into", n.name)));
            }
        };
        // Pooling and shortcuts keep their input's scale (they move
        // values, never change them).
        out.quant.push(match (n.op, source) {
            (GraphOp::Conv(_), Source::Int8(q)) => q.conv(&n.name)?.output,
            (GraphOp::MaxPool { .. } | GraphOp::PadShortcut { .. }, _) => out.quant[src],
            _ => NO_QUANT,
        });
        value_of[at + 1] = Some(dst);
        out.graph_value.push(at + 1);
        out.ops.push(op);
        if outputs.iter().all(|v| value_of[v.0].is_some()) {
            break;
        }
    }
    for &v in outputs {
        let name = graph.producer(v).map_or("the input", |n| n.name.as_str());
        let p = value_of[v.0].filter(|&p| p > 0).ok_or_else(|| {
            Error::Invalid(format!(
                "`{name}` is not a value of its own in the compiled network (it is fused into the \
                 operation before it): ask for a unit's or a stage's output instead"
            ))
        })?;
        out.outputs.push(p);
    }
    out.storage = if int8 { storage_int8(&out) } else { storage(b, &out) };
    (out.slot, out.slots) = assign_slots(b, &out);
    Ok(out)
}

/// The fusions of `graph`, by the node where each operation is placed (the
/// last it covers, where its inputs, a shortcut included, have all been
/// computed): `(first node, what it absorbs)`.
fn plan_fusions(graph: &Graph) -> HashMap<usize, (usize, Fusion)> {
    let nodes = &graph.nodes;
    let consumers = graph.consumers();
    // In pre-activation units the batch norm after a convolution is the next
    // unit's pre-activation; it stays a norm of its own, as the layer path
    // computes it (folding it too would save a pass, and change the logits'
    // rounding).
    let fold_norms = !graph.spec.block.is_preact();
    let mut placed = HashMap::new();
    let mut absorbed = vec![false; nodes.len()];
    for i in 0..nodes.len() {
        if absorbed[i] {
            continue;
        }
        let f = Fusion::new(nodes, &consumers, i, fold_norms);
        f.absorbed().for_each(|j| absorbed[j] = true);
        placed.insert(f.last(i), (i, f));
    }
    placed
}

/// Every convolution of `graph` (the classifier aside) with the batch norm
/// folded into it, if any: `(convolution node, norm node)`, in node order.
pub(super) fn folded_convs(graph: &Graph) -> Vec<(usize, Option<usize>)> {
    let mut v: Vec<_> = plan_fusions(graph)
        .into_values()
        .filter(|(i, _)| matches!(graph.nodes[*i].op, GraphOp::Conv(_)))
        .map(|(i, f)| (i, f.norm))
        .collect();
    v.sort_unstable();
    v
}

/// Convolution `n`'s weights (OHWI) and bias with batch norm `norm` (if
/// any) folded in: `W' = W * scale` per output channel, bias = the norm's shift.
pub(super) fn fold_weights(
    sd: &StateDict,
    n: &Node,
    c: Conv,
    norm: Option<&Node>,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let shape = c.weight_shape();
    let mut w = to_internal(ParamLayout::ConvOhwi, &shape, floats(sd, &format!("{}.weight", n.name))?);
    let bias = match norm.map(|m| (m, m.op)) {
        Some((m, GraphOp::BatchNorm { eps, .. })) => {
            let [gamma, beta, mean, var] = norm_tensors(sd, &m.name)?;
            let (scale, shift) = fold_norm(gamma, beta, mean, var, eps);
            let row = w.len() / c.c_out;
            for (co, s) in scale.iter().enumerate() {
                w[co * row..(co + 1) * row].iter_mut().for_each(|v| *v *= s);
            }
            Some(shift)
        }
        _ => None,
    };
    Ok((w, bias))
}

/// Convolution `n` of quantized model `q`, reading plan value `src` (whose
/// scale `scales` holds; the input's quantization for value 0).
fn quantized<B: Backend>(
    b: &B,
    q: &QuantModel,
    n: &Node,
    c: Conv,
    src: usize,
    quant: &[Quant],
) -> Result<FusedConv<B>> {
    if c.groups != 1 {
        return Err(Error::Invalid(format!("int8 has no grouped convolutions (`{}` has {} groups)", n.name, c.groups)));
    }
    let qc = q.conv(&n.name)?;
    let input = if src == 0 { q.input } else { quant[src] };
    let multiplier: Vec<f32> = qc.weight_scale.iter().map(|&s| input.scale * s).collect();
    let bias = Some(b.upload(&qc.bias)?);
    let mut fc = FusedConv::new(b, &n.name, c, FilterUse::ForwardInt8, &qc.weight, bias)?;
    fc.quant = Some(QuantConv { input, multiplier: b.upload(&multiplier)? });
    Ok(fc)
}

/// The quantization of values an int8 plan stores in f32.
const NO_QUANT: Quant = Quant { scale: 1.0, zero: 0 };

/// Which values an int8 plan stores in u8: the outputs of its int8
/// convolutions (after a ReLU with zero point 0, projection shortcuts with
/// their own), and what max pooling and option-A shortcuts make of u8
/// values. The values a run returns, the input and everything else stay
/// f32; an int8 convolution reads an f32 input by quantizing it as it goes
/// (the stem).
fn storage_int8<B: Backend>(c: &Compiled<B>) -> Vec<DType> {
    let mut storage = vec![DType::F32; c.values()];
    let returned = |v: usize| c.outputs.contains(&v);
    for op in &c.ops {
        let (src, dst) = op.io();
        let u8 = match *op {
            Op::Conv { conv, .. } => c.convs[conv].quant.is_some(),
            Op::MaxPool { .. } | Op::Pad { .. } => storage[src] == DType::U8,
            _ => false,
        };
        if u8 && !returned(dst) {
            storage[dst] = DType::U8;
        }
    }
    // Pooling and shortcuts write what they read: a returned (f32) one reads
    // f32, last first so that the answer passes back along a chain.
    for op in c.ops.iter().rev() {
        if let Op::MaxPool { src, dst, .. } | Op::Pad { src, dst, .. } = *op
            && storage[dst] == DType::F32
        {
            storage[src] = DType::F32;
        }
    }
    storage
}

/// Folds batch norm `norm` (if any) into convolution `n`: `W' = W * scale`
/// per output channel, bias = the norm's shift.
fn fold<B: Backend>(
    b: &B,
    sd: &StateDict,
    n: &Node,
    c: Conv,
    norm: Option<&Node>,
    precision: Precision,
) -> Result<FusedConv<B>> {
    let (w, bias) = fold_weights(sd, n, c, norm)?;
    let bias = bias.map(|v| b.upload(&v)).transpose()?;
    let usage = if precision == Precision::Bf16 { FilterUse::ForwardBf16 } else { FilterUse::Forward };
    FusedConv::new(b, &n.name, c, usage, &w, bias)
}

/// The backend's storage answer for a convolution op.
fn conv_storage<B: Backend>(b: &B, c: &Compiled<B>, conv: usize) -> ConvStorage {
    let fc = &c.convs[conv];
    b.conv_storage(&layer_desc(&fc.conv), fc.usage)
}

/// Which values a bf16 plan stores in bf16: those whose writer produces bf16
/// (a convolution that writes bf16 in its kernel, or a max pool where the
/// backend pools bf16) and whose every reader takes bf16 at no cost: a
/// convolution that rounds its input anyway, a residual read in bf16, a max
/// pool (the maximum of bf16 values is a bf16 value) whose own output is
/// stored in bf16 (rounding its input is free only then), or a convolution
/// that pays one rounding for it where the writer is a convolution that
/// computes in bf16 itself (the input of a bottleneck's 3x3 layer, written
/// by its 1x1 reduce layer). The input, the values a run returns and every
/// other value stay f32.
fn storage<B: Backend>(b: &B, c: &Compiled<B>) -> Vec<DType> {
    let mut storage = vec![DType::F32; c.values()];
    let mut producer = vec![None; c.values()];
    for (i, op) in c.ops.iter().enumerate() {
        producer[op.io().1] = Some(i);
    }
    let pool_bf16 = b.max_pool_bf16();
    let answer = |op: &Op| match op {
        Op::Conv { conv, .. } => Some(conv_storage(b, c, *conv)),
        _ => None,
    };
    let writes_bf16 = |op: &Op| match op {
        Op::MaxPool { .. } => pool_bf16,
        _ => answer(op).is_some_and(|s| s.output_bf16),
    };
    let computes_bf16 = |op: &Op| answer(op).is_some_and(|s| s.input == InputRead::Bf16);
    let reads_bf16 = |op: &Op| match op {
        Op::MaxPool { .. } => pool_bf16,
        _ => answer(op).is_some_and(|s| match s.input {
            InputRead::Bf16 => true,
            InputRead::Bf16Rounding => {
                producer[op.io().0].is_some_and(|p| computes_bf16(&c.ops[p]) && writes_bf16(&c.ops[p]))
            }
            InputRead::F32 => false,
        }),
    };
    for op in c.ops.iter().filter(|op| writes_bf16(op)) {
        storage[op.io().1] = DType::Bf16;
    }
    for op in &c.ops {
        if !reads_bf16(op) {
            storage[op.io().0] = DType::F32;
        }
        if let Some(r) = op.residual()
            && !answer(op).is_some_and(|s| s.residual_bf16)
        {
            storage[r] = DType::F32;
        }
    }
    // What a run returns is read as f32.
    for &v in &c.outputs {
        storage[v] = DType::F32;
    }
    // Last first, so that a chain of pools passes f32 back along it.
    for op in c.ops.iter().rev() {
        if let Op::MaxPool { src, dst, .. } = *op
            && storage[dst] == DType::F32
        {
            storage[src] = DType::F32;
        }
    }
    storage[0] = DType::F32;
    storage
}

/// Gives every produced value a buffer slot, reusing a slot once its value
/// has been read for the last time; the values a run returns keep theirs.
/// A convolution's output takes its residual's slot where the backend adds
/// a residual in place ([`ConvStorage::residual_in_output`]), nothing reads
/// the residual afterwards and both are stored alike: the kernel then
/// touches one buffer where it would read one and fetch another for writing.
/// int8 convolutions never store partial sums, so any of them may take its
/// residual in place where both are u8.
fn assign_slots<B: Backend>(b: &B, c: &Compiled<B>) -> (Vec<Option<usize>>, usize) {
    let values = c.values();
    let mut last_use = vec![0usize; values];
    for (i, op) in c.ops.iter().enumerate() {
        last_use[op.io().0] = i;
        if let Some(r) = op.residual() {
            last_use[r] = i;
        }
    }
    for &v in &c.outputs {
        last_use[v] = usize::MAX;
    }
    let mut slot = vec![None; values];
    let mut free: Vec<usize> = Vec::new();
    let mut n = 0;
    for (i, op) in c.ops.iter().enumerate() {
        let (src, dst) = op.io();
        let in_place = match *op {
            Op::Conv { conv, residual: Some(r), .. }
                if (c.convs[conv].quant.is_some() || conv_storage(b, c, conv).residual_in_output)
                    && last_use[r] == i
                    && r != src
                    && c.storage[r] == c.storage[dst] =>
            {
                slot[r]
            }
            _ => None,
        };
        // Otherwise a value's slot is freed after its last reader, but not
        // before the reader's own output is placed (so the input of an
        // operation never shares its output's buffer).
        let s = in_place.unwrap_or_else(|| {
            free.pop().unwrap_or_else(|| {
                n += 1;
                n - 1
            })
        });
        slot[dst] = Some(s);
        for v in 1..values {
            if last_use[v] == i
                && let Some(sv) = slot[v]
                && sv != s
            {
                free.push(sv);
            }
        }
    }
    (slot, n)
}
