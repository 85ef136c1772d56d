//! Inference plans: a network compiled for evaluation.
//!
//! Building a plan folds every batch norm that follows a convolution into the
//! convolution's weights and bias (`W' = W * gamma / sqrt(var + eps)`,
//! `b' = beta - mean * gamma / sqrt(var + eps)`), fuses the residual add and the
//! ReLU into the epilogue of the unit's last convolution, and turns the network
//! into a flat list of operations over a few reused buffers: a buffer is
//! recycled as soon as the last operation reading it has run, so memory is
//! the largest set of simultaneously live activations, not the sum of all of
//! them. The plan does not depend on the input size; only buffer sizes do.
//!
//! `Network::forward(x, Mode::Eval)` stays the reference; tests check that
//! both agree.

use crate::backend::{
    Backend, BnParams, BnTail, ConvDesc, ConvEpilogue, FilterUse, PadShortcutDesc, PoolDesc, Precision, Storage,
};
use crate::error::{Error, Result};
use crate::model::Network;
use crate::model::blocks::{Block, PreShortcut, Shortcut};
use crate::model::layers::{BatchNorm2d, Conv2d};
use crate::tensor::Tensor;

/// A batch norm's evaluation-mode parameters.
struct FrozenNorm<B: Backend> {
    c: usize,
    gamma: B::Buf,
    beta: B::Buf,
    mean: B::Buf,
    var: B::Buf,
    eps: f32,
    relu: bool,
}

/// `(scale, shift)` of a frozen batch norm: `y = x * scale + shift`.
fn fold_norm(gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma.iter().zip(var).map(|(&g, &v)| g / (v + eps).sqrt()).collect();
    let shift = beta.iter().zip(mean).zip(&scale).map(|((&be, &m), &s)| be - m * s).collect();
    (scale, shift)
}

/// Anything that maps a batch to logits in evaluation mode: the reference
/// [`Network`] or a compiled [`InferencePlan`].
pub trait Infer<B: Backend> {
    /// Logits `[n, 1, 1, classes]` for an NHWC batch.
    fn infer(&mut self, x: &Tensor<B>) -> Result<&Tensor<B>>;
    /// Pooled features of the last call (`[n, 1, 1, features]`).
    fn pooled(&self) -> &Tensor<B>;
    /// The backend.
    fn backend(&self) -> &B;
    /// Classifier outputs.
    fn num_classes(&self) -> usize;
}

impl<B: Backend> Infer<B> for Network<B> {
    fn infer(&mut self, x: &Tensor<B>) -> Result<&Tensor<B>> {
        self.forward(x, crate::model::Mode::Eval)
    }
    fn pooled(&self) -> &Tensor<B> {
        &self.avgpool.y
    }
    fn backend(&self) -> &B {
        Network::backend(self)
    }
    fn num_classes(&self) -> usize {
        self.spec.num_classes
    }
}

impl<B: Backend> Infer<B> for InferencePlan<B> {
    fn infer(&mut self, x: &Tensor<B>) -> Result<&Tensor<B>> {
        self.run(x)
    }
    fn pooled(&self) -> &Tensor<B> {
        self.features()
    }
    fn backend(&self) -> &B {
        &self.backend
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
}

/// A convolution with its batch norm folded in.
struct FusedConv<B: Backend> {
    /// The geometry (batch and spatial size filled in at run time).
    template: ConvDesc,
    /// Folded weights, until the filter is prepared for the first input shape
    /// (the backend chooses its algorithm from the whole geometry).
    weights: Option<B::Buf>,
    filter: B::Filter,
    bias: Option<B::Buf>,
    /// How the filter is prepared: f32, or bf16 in a bf16 plan.
    usage: FilterUse,
}

enum Op<B: Backend> {
    /// `dst = relu?(conv(src) + bias + residual?)`.
    Conv { conv: FusedConv<B>, src: usize, dst: usize, residual: Option<usize>, relu: bool },
    /// A frozen batch norm that precedes a convolution (pre-activation units),
    /// with its ReLU: it cannot be folded into the convolution, whose zero
    /// padding must stay zero.
    Norm { bn: FrozenNorm<B>, src: usize, dst: usize },
    /// Max pooling.
    MaxPool { kernel: usize, stride: usize, pad: usize, src: usize, dst: usize },
    /// Option-A shortcut.
    Pad { c_in: usize, c_out: usize, stride: usize, src: usize, dst: usize },
    /// Global average pool.
    Gap { src: usize, dst: usize },
}

/// A compiled network for evaluation.
pub struct InferencePlan<B: Backend> {
    backend: B,
    ops: Vec<Op<B>>,
    /// Buffer slot of each value (value 0 is the input, which has no slot).
    slot: Vec<Option<usize>>,
    /// Shapes of the values, filled in per run.
    shapes: Vec<[usize; 4]>,
    bufs: Vec<Tensor<B>>,
    in_channels: usize,
    classes: usize,
    /// The value holding the pooled features.
    features: usize,
    /// Seconds per operation of the last run, when profiling.
    timings: Option<Vec<f64>>,
    precision: Precision,
    /// How each value is stored (all f32 but in bf16 plans).
    storage: Vec<Storage>,
}

/// Folds `bn` into `conv`: scaled filter rows and a bias.
fn fold<B: Backend>(b: &B, conv: &Conv2d<B>, bn: Option<&BatchNorm2d<B>>) -> FusedConv<B> {
    let template = conv.desc([1, 1, 1, conv.c_in]);
    let mut w = b.download(&conv.weight.value);
    let bias = bn.map(|bn| {
        let (scale, shift) = fold_norm(
            &b.download(&bn.weight.value),
            &b.download(&bn.bias.value),
            &b.download(&bn.running_mean),
            &b.download(&bn.running_var),
            bn.eps,
        );
        let row = w.len() / conv.c_out;
        for (co, s) in scale.iter().enumerate() {
            w[co * row..(co + 1) * row].iter_mut().for_each(|v| *v *= s);
        }
        b.upload(&shift)
    });
    FusedConv { template, weights: Some(b.upload(&w)), filter: B::Filter::default(), bias, usage: FilterUse::Forward }
}

/// Builds the op list; values are numbered as they are produced.
struct Builder<B: Backend> {
    ops: Vec<Op<B>>,
    values: usize,
}

impl<B: Backend> Builder<B> {
    fn value(&mut self) -> usize {
        self.values += 1;
        self.values - 1
    }

    fn conv(
        &mut self,
        b: &B,
        conv: &Conv2d<B>,
        bn: Option<&BatchNorm2d<B>>,
        src: usize,
        residual: Option<usize>,
        relu: bool,
    ) -> usize {
        let dst = self.value();
        self.ops.push(Op::Conv { conv: fold(b, conv, bn), src, dst, residual, relu });
        dst
    }

    fn norm(&mut self, b: &B, bn: &BatchNorm2d<B>, src: usize) -> usize {
        let copy = |v: &B::Buf| b.upload(&b.download(v));
        let bn = FrozenNorm {
            c: bn.c,
            gamma: copy(&bn.weight.value),
            beta: copy(&bn.bias.value),
            mean: copy(&bn.running_mean),
            var: copy(&bn.running_var),
            eps: bn.eps,
            relu: bn.relu,
        };
        let dst = self.value();
        self.ops.push(Op::Norm { bn, src, dst });
        dst
    }

    fn post_shortcut(&mut self, b: &B, s: &Shortcut<B>, x: usize) -> Option<usize> {
        match s {
            Shortcut::None => None,
            Shortcut::Identity => Some(x),
            Shortcut::Pad(p) => {
                let dst = self.value();
                self.ops.push(Op::Pad { c_in: p.c_in, c_out: p.c_out, stride: p.stride, src: x, dst });
                Some(dst)
            }
            Shortcut::Projection(conv, bn) => Some(self.conv(b, conv, Some(bn), x, None, false)),
        }
    }
}

impl<B: Backend> InferencePlan<B> {
    /// Compiles `net` for inference in `precision`. In bf16 every
    /// convolution but the classifier runs on bf16 weights and inputs (the
    /// classifier is a tiny share of the work and keeps the logits in f32),
    /// and activations that pass only between 1x1 convolutions are stored in
    /// bf16: in bottleneck networks that is the residual stream, whose
    /// traffic is what limits those layers.
    pub fn with_precision(net: &Network<B>, precision: Precision) -> Self {
        let mut plan = Self::new(net);
        if precision == Precision::Bf16 {
            let last = plan.ops.len() - 1;
            for op in &mut plan.ops[..last] {
                if let Op::Conv { conv, .. } = op {
                    conv.usage = FilterUse::ForwardBf16;
                }
            }
            plan.storage = bf16_storage(&plan.ops, plan.storage.len());
            let (slot, nslots) = assign_slots(&plan.ops, &plan.storage, plan.features);
            plan.slot = slot;
            plan.bufs = (0..nslots).map(|_| Tensor::empty(&plan.backend)).collect();
        }
        plan.precision = precision;
        plan
    }

    /// The arithmetic of this plan.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Compiles `net` (its current weights and running statistics) for f32.
    pub fn new(net: &Network<B>) -> Self {
        let b = net.backend().clone();
        let mut bl = Builder { ops: Vec::new(), values: 1 };
        let mut x = bl.conv(&b, &net.conv1, net.bn1.as_ref(), 0, None, net.bn1.as_ref().is_some_and(|bn| bn.relu));
        if let Some(m) = &net.maxpool {
            let dst = bl.value();
            bl.ops.push(Op::MaxPool { kernel: m.kernel, stride: m.stride, pad: m.pad, src: x, dst });
            x = dst;
        }
        for blk in &net.blocks {
            x = match blk {
                Block::Basic(k) => {
                    // The shortcut first, so the last convolution can add it in its epilogue.
                    let s = bl.post_shortcut(&b, &k.shortcut, x);
                    let h = bl.conv(&b, &k.conv1, Some(&k.bn1), x, None, true);
                    bl.conv(&b, &k.conv2, Some(&k.bn2), h, s, k.bn2.relu)
                }
                Block::Bottleneck(k) => {
                    let s = bl.post_shortcut(&b, &k.shortcut, x);
                    let h = bl.conv(&b, &k.conv1, Some(&k.bn1), x, None, true);
                    let h = bl.conv(&b, &k.conv2, Some(&k.bn2), h, None, true);
                    bl.conv(&b, &k.conv3, Some(&k.bn3), h, s, k.bn3.relu)
                }
                Block::PreAct(k) => {
                    let mut h = x;
                    let mut shortcut = match &k.shortcut {
                        PreShortcut::Identity => Some(x),
                        PreShortcut::Pad(p) => {
                            let dst = bl.value();
                            bl.ops.push(Op::Pad { c_in: p.c_in, c_out: p.c_out, stride: p.stride, src: x, dst });
                            Some(dst)
                        }
                        _ => None,
                    };
                    let n = k.units.len();
                    for (i, (bn, conv)) in k.units.iter().enumerate() {
                        let p = bl.norm(&b, bn, h);
                        if i == 0
                            && let PreShortcut::Projection(c) = &k.shortcut
                        {
                            shortcut = Some(bl.conv(&b, c, None, p, None, false));
                        }
                        let residual = if i + 1 == n { shortcut } else { None };
                        h = bl.conv(&b, conv, None, p, residual, false);
                    }
                    h
                }
            };
        }
        if let Some(bn) = &net.bn_final {
            x = bl.norm(&b, bn, x);
        }
        let pooled = bl.value();
        bl.ops.push(Op::Gap { src: x, dst: pooled });
        // The classifier is a 1x1 convolution of the pooled features: it runs
        // through the same prepared-filter kernels.
        let logits = bl.value();
        let template = ConvDesc {
            n: 1,
            h: 1,
            w: 1,
            c_in: net.fc.c_in,
            c_out: net.fc.c_out,
            kernel: [1, 1],
            stride: [1, 1],
            pad: [0, 0],
            dilation: [1, 1],
            groups: 1,
        };
        bl.ops.push(Op::Conv {
            conv: FusedConv {
                template,
                weights: Some(b.upload(&b.download(&net.fc.weight.value))),
                filter: B::Filter::default(),
                bias: Some(b.upload(&b.download(&net.fc.bias.value))),
                usage: FilterUse::Forward,
            },
            src: pooled,
            dst: logits,
            residual: None,
            relu: false,
        });
        let (slot, nslots) = assign_slots(&bl.ops, &vec![Storage::F32; bl.values], pooled);
        let bufs = (0..nslots).map(|_| Tensor::empty(&b)).collect();
        Self {
            backend: b,
            ops: bl.ops,
            slot,
            shapes: vec![[0; 4]; bl.values],
            bufs,
            in_channels: net.spec.in_channels,
            classes: net.spec.num_classes,
            features: pooled,
            timings: None,
            precision: Precision::F32,
            storage: vec![Storage::F32; bl.values],
        }
    }

    /// Records the time of every operation from now on (see [`profile`](Self::profile)).
    pub fn enable_profiling(&mut self) {
        self.timings = Some(vec![0.0; self.ops.len()]);
    }

    /// Each operation of the last run: a description and its seconds.
    pub fn profile(&self) -> Vec<(String, f64)> {
        let t = self.timings.clone().unwrap_or_default();
        self.ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let s = self.shapes[op_io(op).0];
                let name = match op {
                    Op::Conv { conv, residual, relu, .. } => {
                        let d = conv.template;
                        format!(
                            "conv {}x{}/{} {}->{} g{} at {}x{}{}{}",
                            d.kernel[0],
                            d.kernel[1],
                            d.stride[0],
                            d.c_in,
                            d.c_out,
                            d.groups,
                            s[1],
                            s[2],
                            if residual.is_some() { " +res" } else { "" },
                            if *relu { " relu" } else { "" }
                        )
                    }
                    Op::Norm { bn, .. } => format!("batch norm {} at {}x{}", bn.c, s[1], s[2]),
                    Op::MaxPool { .. } => format!("max pool at {}x{}", s[1], s[2]),
                    Op::Pad { .. } => "option-A shortcut".into(),
                    Op::Gap { .. } => "global average pool".into(),
                };
                (name, t.get(i).copied().unwrap_or(0.0))
            })
            .collect()
    }

    /// Number of reusable activation buffers.
    pub fn buffers(&self) -> usize {
        self.bufs.len()
    }

    /// Runs the plan on an NHWC batch; returns the logits `[n, 1, 1, classes]`.
    pub fn run(&mut self, x: &Tensor<B>) -> Result<&Tensor<B>> {
        let b = self.backend.clone();
        b.scope(|| self.run_ops(x))
    }

    /// [`InferencePlan::run`]'s operations, in the backend's scope.
    fn run_ops(&mut self, x: &Tensor<B>) -> Result<&Tensor<B>> {
        if x.shape[3] != self.in_channels || x.shape[0] == 0 {
            return Err(Error::Invalid(format!(
                "the network expects {}-channel input, got shape {:?}",
                self.in_channels, x.shape
            )));
        }
        self.shapes[0] = x.shape;
        let b = self.backend.clone();
        for i in 0..self.ops.len() {
            let t0 = self.timings.is_some().then(std::time::Instant::now);
            let (src, dst) = op_io(&self.ops[i]);
            let s = self.shapes[src];
            let out = match &self.ops[i] {
                Op::Conv { conv, .. } => {
                    let d = ConvDesc { n: s[0], h: s[1], w: s[2], ..conv.template };
                    if d.out_h() == 0 || d.out_w() == 0 {
                        return Err(Error::Invalid(format!(
                            "input {}x{} is too small for this network",
                            x.shape[1], x.shape[2]
                        )));
                    }
                    [s[0], d.out_h(), d.out_w(), d.c_out]
                }
                Op::Norm { .. } => s,
                Op::MaxPool { kernel, stride, pad, .. } => {
                    let d =
                        PoolDesc { n: s[0], h: s[1], w: s[2], c: s[3], kernel: *kernel, stride: *stride, pad: *pad };
                    [s[0], d.out_h(), d.out_w(), s[3]]
                }
                Op::Pad { c_out, stride, .. } => [s[0], s[1].div_ceil(*stride), s[2].div_ceil(*stride), *c_out],
                Op::Gap { .. } => [s[0], 1, 1, s[3]],
            };
            self.shapes[dst] = out;
            let dslot = self.slot[dst].expect("every produced value has a slot");
            // Take the destination out so sources can be borrowed alongside it.
            let mut y = std::mem::replace(&mut self.bufs[dslot], Tensor::empty(&b));
            // Sharing the output's slot, the residual is what `y` holds (see `assign_slots`).
            let in_output = matches!(self.ops[i], Op::Conv { residual: Some(r), .. } if self.slot[r] == Some(dslot));
            if in_output {
                assert_eq!(y.shape, out, "a residual has its convolution's output shape");
            } else {
                y.reshape(&b, out);
                if self.storage[dst] == Storage::Bf16 {
                    let half = y.len().div_ceil(2);
                    b.ensure_len(&mut y.buf, half);
                }
            }
            if let Op::Conv { conv, .. } = &mut self.ops[i]
                && let Some(w) = conv.weights.take()
            {
                let d = ConvDesc { n: s[0], h: s[1], w: s[2], ..conv.template };
                b.prepare_filter(&d, &w, conv.usage, &mut conv.filter);
            }
            {
                let get = |v: usize| -> &Tensor<B> { if v == 0 { x } else { &self.bufs[self.slot[v].expect("slot")] } };
                let src_t = get(src);
                match &self.ops[i] {
                    Op::Conv { conv, residual, relu, .. } => {
                        let d = ConvDesc { n: s[0], h: s[1], w: s[2], ..conv.template };
                        let epi = ConvEpilogue {
                            scale: None,
                            bias: conv.bias.as_ref(),
                            residual: residual.filter(|_| !in_output).map(|r| &get(r).buf),
                            relu: *relu,
                            residual_in_output: in_output,
                        };
                        let st = &self.storage;
                        let rs = residual.map_or(Storage::F32, |r| st[r]);
                        b.conv_forward_stored(&d, &src_t.buf, st[src], &conv.filter, &mut y.buf, st[dst], &epi, rs);
                    }
                    Op::Norm { bn, .. } => {
                        let p = BnParams { weight: &bn.gamma, bias: &bn.beta, eps: bn.eps };
                        let tail = BnTail { residual: None, relu: bn.relu };
                        b.bn_forward_inference(
                            s[0] * s[1] * s[2],
                            bn.c,
                            &src_t.buf,
                            &p,
                            &bn.mean,
                            &bn.var,
                            &tail,
                            &mut y.buf,
                        );
                    }
                    Op::MaxPool { kernel, stride, pad, .. } => {
                        let d = PoolDesc {
                            n: s[0],
                            h: s[1],
                            w: s[2],
                            c: s[3],
                            kernel: *kernel,
                            stride: *stride,
                            pad: *pad,
                        };
                        b.max_pool_forward_stored(&d, &src_t.buf, self.storage[src], &mut y.buf, self.storage[dst]);
                    }
                    Op::Pad { c_in, c_out, stride, .. } => {
                        let d = PadShortcutDesc {
                            n: s[0],
                            h: s[1],
                            w: s[2],
                            c_in: *c_in,
                            c_out: *c_out,
                            stride: *stride,
                            pad_before: (c_out - c_in) / 2,
                        };
                        b.pad_shortcut_forward(&d, &src_t.buf, &mut y.buf);
                    }
                    Op::Gap { .. } => b.global_avg_pool_forward(s[0], s[1] * s[2], s[3], &src_t.buf, &mut y.buf),
                }
            }
            self.bufs[dslot] = y;
            if let (Some(t0), Some(t)) = (t0, self.timings.as_mut()) {
                t[i] = t0.elapsed().as_secs_f64();
            }
        }
        let last = self.slot[self.shapes.len() - 1].expect("logits slot");
        Ok(&self.bufs[last])
    }

    /// Pooled features of the last run (`[n, 1, 1, feature_dim]`).
    pub fn features(&self) -> &Tensor<B> {
        &self.bufs[self.slot[self.features].expect("features slot")]
    }

    /// Classifier outputs.
    pub fn classes(&self) -> usize {
        self.classes
    }
}

/// Which values a bf16 plan stores in bf16: those read only by layers that
/// round what they read to bf16 anyway or lose nothing on it (bf16 1x1 and
/// strided convolutions, 1x1 ones also as residual, and max pooling) or by a 3x3
/// stride-1 layer (Winograd) that reads a 1x1 layer's output, and written by
/// a layer whose kernels store bf16 rows: a bf16 1x1 convolution, a 3x3
/// stride-1 one (Winograd rounds its f32 results as it writes them), the stem
/// (a convolution over at most four channels) or a max pool. (A backend that
/// computes such a layer otherwise rounds an f32 result.) Winograd keeps its
/// arithmetic in f32 (see `prepare_forward_bf16`); rounding the input of a
/// bottleneck's 3x3 layer is the rounding every other bf16 layer applies to
/// its input. Every other reader wants f32.
fn bf16_storage<B: Backend>(ops: &[Op<B>], values: usize) -> Vec<Storage> {
    let bf16_conv = |op: &Op<B>| match op {
        Op::Conv { conv, .. } if conv.usage == FilterUse::ForwardBf16 => Some(conv.template),
        _ => None,
    };
    let is_1x1 = |op: &Op<B>| bf16_conv(op).is_some_and(|t| t.kernel == [1, 1] && t.cin_g().is_multiple_of(2));
    let is_3x3 = |op: &Op<B>| bf16_conv(op).is_some_and(|t| t.kernel == [3, 3] && t.stride == [1, 1]);
    let mut producer = vec![None; values];
    for (i, op) in ops.iter().enumerate() {
        producer[op_io(op).1] = Some(i);
    }
    // Strided layers never take the Winograd path: their bf16 kernels round
    // their input (and read stored bf16 in place).
    let strided = |op: &Op<B>| bf16_conv(op).is_some_and(|t| t.stride != [1, 1] && t.cin_g().is_multiple_of(2));
    let reads_bf16 = |op: &Op<B>| {
        matches!(op, Op::MaxPool { .. })
            || is_1x1(op)
            || strided(op)
            || (is_3x3(op) && producer[op_io(op).0].is_some_and(|p| is_1x1(&ops[p])))
    };
    let writes_bf16 = |op: &Op<B>| {
        matches!(op, Op::MaxPool { .. })
            || is_1x1(op)
            || is_3x3(op)
            || bf16_conv(op).is_some_and(|t| t.groups == 1 && t.c_in <= 4)
    };
    let mut storage = vec![Storage::F32; values];
    for op in ops.iter().filter(|op| writes_bf16(op)) {
        storage[op_io(op).1] = Storage::Bf16;
    }
    for op in ops.iter() {
        let (src, _) = op_io(op);
        if !reads_bf16(op) {
            storage[src] = Storage::F32;
        }
        // Only 1x1 layers read a bf16 residual.
        if let Op::Conv { residual: Some(r), .. } = op
            && !is_1x1(op)
        {
            storage[*r] = Storage::F32;
        }
    }
    // A max pool passes values on unchanged: rounding its input is free only
    // where its output is rounded too (ResNet-50's feeds 1x1 layers,
    // ResNet-18's a Winograd layer that reads f32).
    for op in ops {
        if let Op::MaxPool { src, dst, .. } = op
            && storage[*dst] == Storage::F32
        {
            storage[*src] = Storage::F32;
        }
    }
    storage[0] = Storage::F32;
    storage
}

fn op_io<B: Backend>(op: &Op<B>) -> (usize, usize) {
    match op {
        Op::Conv { src, dst, .. }
        | Op::Norm { src, dst, .. }
        | Op::MaxPool { src, dst, .. }
        | Op::Pad { src, dst, .. }
        | Op::Gap { src, dst, .. } => (*src, *dst),
    }
}

/// Gives every produced value a buffer slot, reusing a slot once its value
/// has been read for the last time. `keep` (the features) is never reused.
/// A 1x1 convolution's output takes its residual's slot when nothing reads
/// the residual afterwards (and both are stored alike): the backend then adds
/// the residual in place (`ConvEpilogue::residual_in_output`), touching one
/// buffer where it would read one and fetch another for writing.
fn assign_slots<B: Backend>(ops: &[Op<B>], storage: &[Storage], keep: usize) -> (Vec<Option<usize>>, usize) {
    let values = storage.len();
    let mut last_use = vec![0usize; values];
    for (i, op) in ops.iter().enumerate() {
        let (src, _) = op_io(op);
        last_use[src] = i;
        if let Op::Conv { residual: Some(r), .. } = op {
            last_use[*r] = i;
        }
    }
    last_use[keep] = usize::MAX;
    last_use[values - 1] = usize::MAX;
    let mut slot = vec![None; values];
    let mut free: Vec<usize> = Vec::new();
    let mut n = 0;
    for (i, op) in ops.iter().enumerate() {
        let (src, dst) = op_io(op);
        let in_place = match op {
            Op::Conv { conv, residual: Some(r), .. }
                if conv.template.kernel == [1, 1] && last_use[*r] == i && *r != src && storage[*r] == storage[dst] =>
            {
                slot[*r]
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
