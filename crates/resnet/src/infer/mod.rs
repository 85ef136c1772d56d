//! Inference: a network compiled once ([`CompiledModel`]), run by many, each
//! with a [`Workspace`] of its own.
//!
//! Compiling reads the network's [`Graph`] and weights: every batch norm that
//! follows a convolution is folded into the convolution's weights and bias
//! (`W' = W * gamma / sqrt(var + eps)`, `b' = beta - mean * gamma / sqrt(var +
//! eps)`), the residual add and the ReLU go into the epilogue of the unit's
//! last convolution, and the network becomes a flat list of operations over a
//! few reused buffers: a buffer is recycled as soon as the last operation
//! reading it has run, so memory is the largest set of simultaneously live
//! activations, not the sum of all of them. In bf16, the backend says which
//! values may be stored in bf16 and where a residual may share its output's
//! buffer (`compile.rs`).
//!
//! A compiled model is immutable and shareable across threads (`Send +
//! Sync`); the buffers of a run live in its [`Workspace`]. Algorithms are
//! chosen per input shape, as cuDNN chooses them. Where the backend's choice
//! depends on the shape, the model keeps the folded weights, and the first
//! run at a shape prepares the filters its algorithms need (kept, and shared
//! by every shape that picks the same algorithm): a batch-1 request does not
//! fix the algorithms of later batch-16 ones. Elsewhere the filter is
//! prepared once, when the model is compiled, and no copy of the weights is
//! kept. [`InferencePlan`] bundles a model with one workspace for the common
//! single-threaded case.
//!
//! `Network::forward(x, Mode::Eval)` stays the reference; tests check that
//! both agree.

mod compile;
pub mod quant;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::backend::{
    Backend, BnParams, BnTail, ConvDesc, ConvEpilogue, DType, PadShortcutDesc, PoolDesc, Precision, QuantEpilogue,
    QuantResidual,
};
use crate::error::{Error, Result};
use crate::io::{self, LoadMode, StateDict};
use crate::model::{Graph, Network, ResNetSpec};
use crate::tensor::Tensor;
use compile::{Compiled, Op, Source, Weights};
use quant::QuantModel;

/// Called with each operation's output value and tensor (calibration).
type Observer<'a, B> = &'a mut (dyn FnMut(usize, &Tensor<B>) + Send);

/// A network compiled for inference: fused operations, their weights, and
/// the buffer plan. Immutable; run it with a [`Workspace`].
pub struct CompiledModel<B: Backend> {
    backend: B,
    graph: Graph,
    precision: Precision,
    c: Compiled<B>,
    /// The names of the values a run returns (`c.outputs`).
    output_names: Vec<String>,
    /// Distinguishes models, so a workspace is only used with its own.
    id: u64,
    /// Prepared filters by (convolution, algorithm).
    filters: Mutex<FilterCache<B>>,
    /// What runs at each input shape.
    shapes: Mutex<HashMap<[usize; 4], Arc<ShapePlan<B>>>>,
}

/// Filters prepared for a shape's algorithms, by (convolution, algorithm).
type FilterCache<B> = HashMap<(usize, <B as Backend>::Algo), Arc<<B as Backend>::Filter>>;

/// A compiled model at one input shape: every value's shape, and each
/// convolution's descriptor and prepared filter.
struct ShapePlan<B: Backend> {
    input: [usize; 4],
    shapes: Vec<[usize; 4]>,
    convs: Vec<(ConvDesc, Arc<B::Filter>)>,
}

/// The buffers of one run at a time of a [`CompiledModel`].
pub struct Workspace<B: Backend> {
    model: u64,
    bufs: Vec<Tensor<B>>,
    plan: Option<Arc<ShapePlan<B>>>,
    /// Seconds per operation of the last run, when profiling.
    timings: Option<Vec<f64>>,
}

impl<B: Backend> Workspace<B> {
    /// Records the time of every operation from now on (see [`CompiledModel::profile`]).
    pub fn enable_profiling(&mut self) {
        self.timings = Some(Vec::new());
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Input shapes whose plans a compiled model keeps at once.
const MAX_SHAPE_PLANS: usize = 64;

impl<B: Backend> CompiledModel<B> {
    /// Compiles the architecture of `graph` with the weights of `sd` (checked
    /// strictly against the graph's key/shape table) for `precision`. A run
    /// returns the logits; [`CompiledModel::features`] reads the pooled
    /// features it also keeps. For [`Precision::Int8`], `sd` is the file
    /// form of a [`QuantModel`] (`resnet quantize`), and nothing else is.
    pub fn new(backend: &B, graph: &Graph, sd: &StateDict, precision: Precision) -> Result<Self> {
        Self::with_outputs(backend, graph, sd, precision, &["avgpool", "fc"])
    }

    /// Compiles a feature extractor: a run computes the values named by
    /// `outputs` ([`Graph::feature_value`] names: `stem`, `layer1`..,
    /// `avgpool`, `fc`, a unit such as `layer2.0`, a module such as
    /// `maxpool`) in one pass, and nothing after the last of them, as
    /// torchvision's `create_feature_extractor` builds a truncated module.
    /// [`CompiledModel::run`] returns the last; [`CompiledModel::output`]
    /// reads any.
    pub fn with_outputs(
        backend: &B,
        graph: &Graph,
        sd: &StateDict,
        precision: Precision,
        outputs: &[&str],
    ) -> Result<Self> {
        if outputs.is_empty() {
            return Err(Error::Invalid("a compiled model needs at least one output".into()));
        }
        let quantized = QuantModel::is_quantized(sd);
        match precision {
            Precision::Int8 if !quantized => Err(Error::Invalid(
                "int8 inference needs quantized weights: make them with `resnet quantize --weights W \
                 --calibrate DATA --out W8`"
                    .into(),
            )),
            Precision::Int8 => {
                let q = QuantModel::from_state_dict(graph, sd)?;
                Self::compiled(backend, graph, Source::Int8(&q), precision, outputs)
            }
            _ if quantized => Err(Error::Invalid(format!(
                "these weights are quantized to int8: run them with --precision int8 (not {precision})"
            ))),
            _ => {
                io::check_state_dict(graph, sd, LoadMode::Strict)?;
                Self::compiled(backend, graph, Source::Float(sd), precision, outputs)
            }
        }
    }

    /// Compiles the quantized model `q` of `graph`'s architecture for int8.
    pub fn from_quantized(backend: &B, graph: &Graph, q: &QuantModel) -> Result<Self> {
        Self::compiled(backend, graph, Source::Int8(q), Precision::Int8, &["avgpool", "fc"])
    }

    /// Compiles checked weights to return the values named by `outputs`.
    fn compiled(
        backend: &B,
        graph: &Graph,
        source: Source<'_>,
        precision: Precision,
        outputs: &[&str],
    ) -> Result<Self> {
        let values = outputs.iter().map(|n| graph.feature_value(n)).collect::<Result<Vec<_>>>()?;
        let c = compile::compile(backend, graph, source, precision, &values)?;
        Ok(Self {
            backend: backend.clone(),
            graph: graph.clone(),
            precision,
            c,
            output_names: outputs.iter().map(|n| n.to_string()).collect(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            filters: Mutex::new(HashMap::new()),
            shapes: Mutex::new(HashMap::new()),
        })
    }

    /// Compiles `net` (its current weights and running statistics).
    pub fn from_network(net: &mut Network<B>, precision: Precision) -> Result<Self> {
        let sd = io::state_dict(net)?;
        Self::new(net.backend(), net.graph(), &sd, precision)
    }

    /// The architecture.
    pub fn spec(&self) -> &ResNetSpec {
        &self.graph.spec
    }

    /// The arithmetic of this model.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The graph it was compiled from.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The names of the values a run returns, in order.
    pub fn outputs(&self) -> &[String] {
        &self.output_names
    }

    /// The NHWC shape of output `i` for an input batch of `n` images of
    /// `height x width`.
    pub fn output_shape(&self, i: usize, n: usize, height: usize, width: usize) -> Result<[usize; 4]> {
        let v = self.c.graph_value[self.c.outputs[i]];
        let [h, w, c] = self.graph.shapes(height, width)?[v];
        Ok([n, h, w, c])
    }

    /// The backend it runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Number of reusable activation buffers a workspace holds.
    pub fn buffers(&self) -> usize {
        self.c.slots
    }

    /// A workspace for running this model.
    pub fn workspace(&self) -> Workspace<B> {
        Workspace {
            model: self.id,
            bufs: (0..self.c.slots).map(|_| Tensor::empty()).collect(),
            plan: None,
            timings: None,
        }
    }

    /// The plan for an NHWC input shape: the first call at a shape chooses
    /// the algorithms and prepares what they need.
    fn shape_plan(&self, input: [usize; 4]) -> Result<Arc<ShapePlan<B>>> {
        if let Some(p) = self.shapes.lock().unwrap_or_else(|e| e.into_inner()).get(&input) {
            return Ok(p.clone());
        }
        // The graph's shapes, and its error naming a layer left without pixels.
        let graph_shapes = self.graph.shapes(input[1], input[2])?;
        let shapes: Vec<[usize; 4]> = self
            .c
            .graph_value
            .iter()
            .map(|&v| [input[0], graph_shapes[v][0], graph_shapes[v][1], graph_shapes[v][2]])
            .collect();
        let mut convs = Vec::new();
        for op in &self.c.ops {
            let Op::Conv { conv, src, .. } = *op else { continue };
            let (fc, s) = (&self.c.convs[conv], shapes[src]);
            let d = fc.conv.desc(s[0], s[1], s[2]);
            let filter = match &fc.weights {
                Weights::Prepared(f) => f.clone(),
                Weights::Folded(w) => {
                    let key = (conv, self.backend.conv_algorithm(&d, fc.usage));
                    let mut filters = self.filters.lock().unwrap_or_else(|e| e.into_inner());
                    match filters.get(&key) {
                        Some(f) => f.clone(),
                        None => {
                            let mut f = B::Filter::default();
                            self.backend.prepare_filter(&d, w, fc.usage, &mut f)?;
                            filters.entry(key).or_insert(Arc::new(f)).clone()
                        }
                    }
                }
            };
            convs.push((d, filter));
        }
        let plan = Arc::new(ShapePlan { input, shapes, convs });
        let mut cache = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
        // Plans are cheap to make again (the filters stay cached): a server fed
        // images of many sizes keeps a bounded number of them.
        if cache.len() >= MAX_SHAPE_PLANS {
            cache.clear();
        }
        cache.insert(input, plan.clone());
        Ok(plan)
    }

    /// Runs the model on an NHWC batch in `ws`; returns its last output (the
    /// logits `[n, 1, 1, classes]` of a model from [`CompiledModel::new`]).
    pub fn run<'w>(&self, ws: &'w mut Workspace<B>, x: &Tensor<B>) -> Result<&'w Tensor<B>> {
        self.run_with(ws, x, None)
    }

    /// [`CompiledModel::run`], calling `observe` with each operation's
    /// output (its plan value and tensor) as it is made.
    pub(crate) fn run_observed<'w>(
        &self,
        ws: &'w mut Workspace<B>,
        x: &Tensor<B>,
        observe: Observer<'_, B>,
    ) -> Result<&'w Tensor<B>> {
        self.run_with(ws, x, Some(observe))
    }

    fn run_with<'w>(
        &self,
        ws: &'w mut Workspace<B>,
        x: &Tensor<B>,
        observe: Option<Observer<'_, B>>,
    ) -> Result<&'w Tensor<B>> {
        if ws.model != self.id {
            return Err(Error::Invalid("a workspace runs only the model that made it".into()));
        }
        if x.shape[0] == 0 {
            return Err(Error::Invalid("an empty batch".into()));
        }
        if x.shape[3] != self.graph.spec.in_channels {
            return Err(Error::Invalid(format!(
                "the network expects {}-channel input, got shape {:?}",
                self.graph.spec.in_channels, x.shape
            )));
        }
        if ws.plan.as_ref().is_none_or(|p| p.input != x.shape) {
            ws.plan = Some(self.shape_plan(x.shape)?);
        }
        let b = self.backend.clone();
        b.scope(|| self.run_ops(ws, x, observe))?;
        Ok(self.output(ws, self.c.outputs.len() - 1))
    }

    /// [`CompiledModel::run`]'s operations, in the backend's scope.
    fn run_ops(&self, ws: &mut Workspace<B>, x: &Tensor<B>, mut observe: Option<Observer<'_, B>>) -> Result<()> {
        let b = &self.backend;
        let plan = ws.plan.clone().expect("a shape plan was made");
        if let Some(t) = ws.timings.as_mut() {
            t.resize(self.c.ops.len(), 0.0);
        }
        let mut convs = plan.convs.iter();
        for (i, op) in self.c.ops.iter().enumerate() {
            let t0 = ws.timings.is_some().then(std::time::Instant::now);
            let (src, dst) = op.io();
            let (s, out) = (plan.shapes[src], plan.shapes[dst]);
            let dslot = self.c.slot[dst].expect("every produced value has a slot");
            // Take the destination out so sources can be borrowed alongside it.
            let mut y = std::mem::take(&mut ws.bufs[dslot]);
            // Sharing the output's slot, the residual is what `y` holds (see `assign_slots`).
            let in_output = op.residual().is_some_and(|r| self.c.slot[r] == Some(dslot));
            let result = if in_output && y.shape != out {
                Err(Error::Backend(format!("a residual of shape {:?} for an output of {out:?}", y.shape)))
            } else if in_output {
                Ok(())
            } else {
                y.reshape_as(b, out, self.c.storage[dst])
            };
            let get = |v: usize| -> &Tensor<B> { if v == 0 { x } else { &ws.bufs[self.c.slot[v].expect("slot")] } };
            let result = result.and_then(|_| match *op {
                Op::Conv { conv, residual, relu, .. } if self.c.convs[conv].quant.is_some() => {
                    let (d, filter) = convs.next().expect("one prepared filter per convolution");
                    let (fc, stored) = (&self.c.convs[conv], |v: usize| self.c.storage[v]);
                    let q = fc.quant.as_ref().expect("an int8 convolution");
                    let epi = QuantEpilogue {
                        input: q.input,
                        multiplier: &q.multiplier,
                        bias: fc.bias.as_ref(),
                        residual: residual.map(|r| match in_output {
                            true => QuantResidual::InOutput(self.c.quant[r]),
                            false => QuantResidual::Apart(&get(r).buf, self.c.quant[r]),
                        }),
                        relu,
                        output: (stored(dst) == DType::U8).then_some(self.c.quant[dst]),
                    };
                    b.conv_forward_int8(d, &get(src).buf, filter, &mut y.buf, &epi)
                }
                Op::Conv { conv, residual, relu, .. } => {
                    let (d, filter) = convs.next().expect("one prepared filter per convolution");
                    let epi = ConvEpilogue {
                        bias: self.c.convs[conv].bias.as_ref(),
                        residual: residual.filter(|_| !in_output).map(|r| &get(r).buf),
                        relu,
                        residual_in_output: in_output,
                    };
                    b.conv_forward(d, &get(src).buf, filter, &mut y.buf, &epi)
                }
                Op::Norm { norm, .. } => {
                    let n = &self.c.norms[norm];
                    let p = BnParams { weight: &n.gamma, bias: &n.beta, eps: n.eps };
                    let tail = BnTail { residual: None, relu: n.relu };
                    let rows = s[0] * s[1] * s[2];
                    b.bn_forward_inference(rows, n.channels, &get(src).buf, &p, &n.mean, &n.var, &tail, &mut y.buf)
                }
                Op::MaxPool { kernel, stride, pad, .. } => {
                    let d = PoolDesc { n: s[0], h: s[1], w: s[2], c: s[3], kernel, stride, pad };
                    b.max_pool_forward(&d, &get(src).buf, &mut y.buf)
                }
                Op::Pad { c_in, c_out, stride, .. } => {
                    let d = PadShortcutDesc::new(s[0], s[1], s[2], c_in, c_out, stride);
                    b.pad_shortcut_forward(&d, &get(src).buf, &mut y.buf)
                }
                Op::Gap { .. } if self.c.storage[src] == DType::U8 => {
                    let q = self.c.quant[src];
                    if q.zero != 0 {
                        return Err(Error::Backend("int8 pooling of values with a zero point".into()));
                    }
                    b.global_avg_pool_int8(s[0], s[1] * s[2], s[3], &get(src).buf, q.scale, &mut y.buf)
                }
                Op::Gap { .. } => b.global_avg_pool_forward(s[0], s[1] * s[2], s[3], &get(src).buf, &mut y.buf),
            });
            if let (Ok(()), Some(f)) = (&result, observe.as_mut()) {
                f(dst, &y);
            }
            ws.bufs[dslot] = y;
            result?;
            if let (Some(t0), Some(t)) = (t0, ws.timings.as_mut()) {
                t[i] = t0.elapsed().as_secs_f64();
            }
        }
        Ok(())
    }

    /// Output `i` (NHWC) of the last run in `ws` (`i` below `outputs().len()`).
    pub fn output<'w>(&self, ws: &'w Workspace<B>, i: usize) -> &'w Tensor<B> {
        &ws.bufs[self.c.slot[self.c.outputs[i]].expect("every output has a slot")]
    }

    /// The first output of the last run in `ws`: the pooled features
    /// (`[n, 1, 1, feature_dim]`) of a model from [`CompiledModel::new`].
    pub fn features<'w>(&self, ws: &'w Workspace<B>) -> &'w Tensor<B> {
        self.output(ws, 0)
    }

    /// Each operation of the last profiled run in `ws`: a description and its seconds.
    pub fn profile(&self, ws: &Workspace<B>) -> Vec<(String, f64)> {
        let t = ws.timings.clone().unwrap_or_default();
        let shapes = ws.plan.as_ref().map(|p| p.shapes.clone()).unwrap_or_default();
        self.c
            .ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let s = shapes.get(op.io().0).copied().unwrap_or_default();
                let name = match *op {
                    Op::Conv { conv, residual, relu, .. } => {
                        let (name, c) = (&self.c.convs[conv].name, self.c.convs[conv].conv);
                        format!(
                            "{name}: conv {}x{}/{} {}->{} g{} at {}x{}{}{}",
                            c.kernel[0],
                            c.kernel[1],
                            c.stride[0],
                            c.c_in,
                            c.c_out,
                            c.groups,
                            s[1],
                            s[2],
                            if residual.is_some() { " +res" } else { "" },
                            if relu { " relu" } else { "" }
                        )
                    }
                    Op::Norm { norm, .. } => format!("batch norm {} at {}x{}", self.c.norms[norm].channels, s[1], s[2]),
                    Op::MaxPool { .. } => format!("max pool at {}x{}", s[1], s[2]),
                    Op::Pad { .. } => "option-A shortcut".into(),
                    Op::Gap { .. } => "global average pool".into(),
                };
                (name, t.get(i).copied().unwrap_or(0.0))
            })
            .collect()
    }

    /// The element type each operation writes, in order (bf16 plans store
    /// some activations in bf16).
    pub fn output_types(&self) -> Vec<DType> {
        self.c.ops.iter().map(|op| self.c.storage[op.io().1]).collect()
    }
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

/// A compiled model with a workspace of its own: one caller, one run at a time.
pub struct InferencePlan<B: Backend> {
    model: Arc<CompiledModel<B>>,
    ws: Workspace<B>,
}

impl<B: Backend> InferencePlan<B> {
    /// Compiles `net` for f32.
    pub fn new(net: &mut Network<B>) -> Result<Self> {
        Self::with_precision(net, Precision::F32)
    }

    /// Compiles `net` for inference in `precision`. In bf16 every
    /// convolution but the classifier runs on bf16 weights and inputs, and
    /// activations are stored in bf16 where the backend reads them so anyway.
    pub fn with_precision(net: &mut Network<B>, precision: Precision) -> Result<Self> {
        Ok(Self::from_model(Arc::new(CompiledModel::from_network(net, precision)?)))
    }

    /// A plan running a shared compiled model.
    pub fn from_model(model: Arc<CompiledModel<B>>) -> Self {
        let ws = model.workspace();
        Self { model, ws }
    }

    /// The compiled model.
    pub fn model(&self) -> &Arc<CompiledModel<B>> {
        &self.model
    }

    /// The arithmetic of this plan.
    pub fn precision(&self) -> Precision {
        self.model.precision
    }

    /// Records the time of every operation from now on (see [`InferencePlan::profile`]).
    pub fn enable_profiling(&mut self) {
        self.ws.enable_profiling();
    }

    /// Each operation of the last run: a description and its seconds.
    pub fn profile(&self) -> Vec<(String, f64)> {
        self.model.profile(&self.ws)
    }

    /// Number of reusable activation buffers.
    pub fn buffers(&self) -> usize {
        self.model.buffers()
    }

    /// Runs the plan on an NHWC batch; returns the logits `[n, 1, 1, classes]`.
    pub fn run(&mut self, x: &Tensor<B>) -> Result<&Tensor<B>> {
        self.model.run(&mut self.ws, x)
    }

    /// Pooled features of the last run (`[n, 1, 1, feature_dim]`).
    pub fn features(&self) -> &Tensor<B> {
        self.model.features(&self.ws)
    }

    /// Classifier outputs.
    pub fn classes(&self) -> usize {
        self.model.spec().num_classes
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
        &self.model.backend
    }
    fn num_classes(&self) -> usize {
        self.classes()
    }
}
