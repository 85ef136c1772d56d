//! ONNX export: the network's graph and weights as an ONNX model, the file
//! `torch.onnx.export` writes for torchvision's ResNets (opset 17 by default):
//! input `input` (NCHW, float32), output `logits`, `Conv`, `BatchNormalization`
//! (or folded into the convolutions), `Relu`, `Add`, `MaxPool`,
//! `GlobalAveragePool`, `Flatten`, `Gemm`; the option-A shortcut of the CIFAR
//! nets is a strided `Slice` and a channel `Pad`. The model card's
//! preprocessing and class names go into the metadata.
//!
//! The protobuf messages are the subset of `onnx.proto` a model of this
//! family needs, declared with `prost`'s derive (field numbers as in
//! `onnx.proto`), so no code generation step or `protoc` is needed.

use prost::Message;

use crate::error::{Error, Result};
use crate::io::{StateDict, TensorData};
use crate::model::graph::{Graph, Op, Value};

/// What to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// The operator set (`ai.onnx`): 13 to 21.
    pub opset: i64,
    /// A fixed batch size, or `None` for a dynamic one (`batch`).
    pub batch: Option<usize>,
    /// The input's height and width.
    pub size: (usize, usize),
    /// Fold every batch norm that follows a convolution into it (as
    /// `torch.onnx.export` does in evaluation mode); otherwise each is a
    /// `BatchNormalization` node.
    pub fold_bn: bool,
    /// `metadata_props` of the model: key and value.
    pub metadata: Vec<(String, String)>,
}

/// Operator sets this exporter writes valid models for (every operator it
/// uses has the same signature from 13 to 21).
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// The ONNX IR version each operator set came with (onnx/helper.py's table).
fn ir_version(opset: i64) -> i64 {
    match opset {
        ..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    }
}

/// Exports `graph` with the weights of `sd` (checked against it first).
pub fn export(graph: &Graph, sd: &StateDict, opts: &ExportOptions) -> Result<Vec<u8>> {
    if !OPSETS.contains(&opts.opset) {
        return Err(Error::Invalid(format!(
            "opset {} is not supported: use {} to {}",
            opts.opset,
            OPSETS.start(),
            OPSETS.end()
        )));
    }
    crate::io::check_state_dict(graph, sd, crate::io::LoadMode::Strict)?;
    let mut b = Builder { sd, nodes: Vec::new(), initializers: Vec::new() };
    let consumers = graph.consumers();
    // The ONNX name of each graph value; a folded batch norm's value is its convolution's output.
    let mut names: Vec<String> = vec![String::new(); graph.values()];
    names[0] = "input".into();
    let mut folded = vec![false; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        if folded[i] {
            continue;
        }
        let out = Value(i + 1);
        let name = if out == graph.output { "logits".to_string() } else { node.name.clone() };
        let ins: Vec<String> = node.inputs.iter().map(|v| names[v.0].clone()).collect();
        let x = |k: usize| ins[k].clone();
        match node.op {
            Op::Conv(c) => {
                // Fold a batch norm that is the convolution's only reader.
                let fold = match consumers[out.0][..] {
                    [j] if opts.fold_bn => match graph.nodes[j].op {
                        Op::BatchNorm { eps, .. } => Some((j, eps)),
                        _ => None,
                    },
                    _ => None,
                };
                let (inputs, name) = match fold {
                    Some((j, eps)) => {
                        let bn = graph.nodes[j].name.clone();
                        let (w, bias) = b.folded(&node.name, &bn, eps)?;
                        let w = b.tensor(format!("{}.weight", node.name), &c.weight_shape(), w);
                        let bias = b.tensor(format!("{}.bias", node.name), &[c.c_out], bias);
                        folded[j] = true;
                        names[j + 1] = bn.clone();
                        (vec![x(0), w, bias], bn)
                    }
                    None => (vec![x(0), b.param(&format!("{}.weight", node.name))?], name),
                };
                let attrs = vec![
                    ints("dilations", &[c.dilation[0] as i64, c.dilation[1] as i64]),
                    int("group", c.groups as i64),
                    ints("kernel_shape", &[c.kernel[0] as i64, c.kernel[1] as i64]),
                    ints("pads", &[c.pad[0] as i64, c.pad[1] as i64, c.pad[0] as i64, c.pad[1] as i64]),
                    ints("strides", &[c.stride[0] as i64, c.stride[1] as i64]),
                ];
                b.node("Conv", &node.name, inputs, &name, attrs);
                names[out.0] = name;
            }
            Op::BatchNorm { eps, .. } => {
                let mut p = |s: &str| b.param(&format!("{}.{s}", node.name));
                let inputs = vec![x(0), p("weight")?, p("bias")?, p("running_mean")?, p("running_var")?];
                b.node("BatchNormalization", &node.name, inputs, &name, vec![float("epsilon", eps)]);
                names[out.0] = name;
            }
            Op::Relu => {
                b.node("Relu", &node.name, vec![x(0)], &name, vec![]);
                names[out.0] = name;
            }
            Op::Add => {
                b.node("Add", &node.name, vec![x(0), x(1)], &name, vec![]);
                names[out.0] = name;
            }
            Op::MaxPool { kernel, stride, pad } => {
                let (k, s, p) = (kernel as i64, stride as i64, pad as i64);
                let attrs = vec![ints("kernel_shape", &[k, k]), ints("pads", &[p, p, p, p]), ints("strides", &[s, s])];
                b.node("MaxPool", &node.name, vec![x(0)], &name, attrs);
                names[out.0] = name;
            }
            Op::PadShortcut { c_in, c_out, stride } => {
                // x[:, :, ::stride, ::stride], then (c_out - c_in) / 2 zero
                // channels in front and the rest after (PadShortcutDesc).
                let sliced = format!("{}.subsample", node.name);
                let consts = |b: &mut Builder, what: &str, v: &[i64]| {
                    b.tensor_i64(format!("{}.{what}", node.name), &[v.len()], v.to_vec())
                };
                let inputs = vec![
                    x(0),
                    consts(&mut b, "starts", &[0, 0]),
                    consts(&mut b, "ends", &[i64::MAX, i64::MAX]),
                    consts(&mut b, "axes", &[2, 3]),
                    consts(&mut b, "steps", &[stride as i64, stride as i64]),
                ];
                b.node("Slice", &sliced, inputs, &sliced, vec![]);
                let before = ((c_out - c_in) / 2) as i64;
                let after = (c_out - c_in) as i64 - before;
                let pads = consts(&mut b, "pads", &[0, before, 0, 0, 0, after, 0, 0]);
                b.node("Pad", &node.name, vec![sliced, pads], &name, vec![]);
                names[out.0] = name;
            }
            Op::GlobalAvgPool => {
                let pooled = format!("{}.pooled", node.name);
                b.node("GlobalAveragePool", &pooled, vec![x(0)], &pooled, vec![]);
                b.node("Flatten", &node.name, vec![pooled], &name, vec![int("axis", 1)]);
                names[out.0] = name;
            }
            Op::Linear { .. } => {
                let inputs =
                    vec![x(0), b.param(&format!("{}.weight", node.name))?, b.param(&format!("{}.bias", node.name))?];
                b.node(
                    "Gemm",
                    &node.name,
                    inputs,
                    &name,
                    vec![float("alpha", 1.0), float("beta", 1.0), int("transB", 1)],
                );
                names[out.0] = name;
            }
        }
    }
    let spec = &graph.spec;
    let batch = match opts.batch {
        Some(n) => Dim { value: Some(DimValue::Fixed(n as i64)) },
        None => Dim { value: Some(DimValue::Param("batch".into())) },
    };
    let fixed = |v: usize| Dim { value: Some(DimValue::Fixed(v as i64)) };
    let input =
        value_info("input", vec![batch.clone(), fixed(spec.in_channels), fixed(opts.size.0), fixed(opts.size.1)]);
    let output = value_info("logits", vec![batch, fixed(spec.num_classes)]);
    let model = ModelProto {
        ir_version: ir_version(opts.opset),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opts.opset }],
        producer_name: "resnet".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("{} exported by resnet", spec.name),
        graph: Some(GraphProto {
            node: b.nodes,
            name: spec.name.clone(),
            initializer: b.initializers,
            input: vec![input],
            output: vec![output],
        }),
        metadata_props: opts
            .metadata
            .iter()
            .map(|(k, v)| StringStringEntryProto { key: k.clone(), value: v.clone() })
            .collect(),
    };
    Ok(model.encode_to_vec())
}

/// Accumulates nodes and initializers.
struct Builder<'a> {
    sd: &'a StateDict,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
}

impl Builder<'_> {
    fn node(&mut self, op: &str, name: &str, inputs: Vec<String>, output: &str, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output.to_string()],
            name: name.to_string(),
            op_type: op.to_string(),
            attribute,
        });
    }

    /// An f32 initializer; returns its name.
    fn tensor(&mut self, name: String, dims: &[usize], values: Vec<f32>) -> String {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: FLOAT,
            name: name.clone(),
            raw_data,
        });
        name
    }

    /// An int64 initializer; returns its name.
    fn tensor_i64(&mut self, name: String, dims: &[usize], values: Vec<i64>) -> String {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: INT64,
            name: name.clone(),
            raw_data,
        });
        name
    }

    /// The f32 values of state-dict entry `key`.
    fn values(&self, key: &str) -> Result<(&[f32], &[usize])> {
        match self.sd.get(key) {
            Some(t) => match &t.data {
                TensorData::F32(v) => Ok((v, &t.shape)),
                TensorData::I64(_) => Err(Error::Invalid(format!("`{key}` is not a float tensor"))),
            },
            None => Err(Error::MissingKey { key: key.to_string(), hint: String::new() }),
        }
    }

    /// State-dict entry `key` as an initializer of the same name.
    fn param(&mut self, key: &str) -> Result<String> {
        let (v, shape) = self.values(key)?;
        let (v, shape) = (v.to_vec(), shape.to_vec());
        Ok(self.tensor(key.to_string(), &shape, v))
    }

    /// Convolution `conv`'s weights with batch norm `bn` folded in, in f64:
    /// `W * gamma / sqrt(var + eps)` and `beta - mean * gamma / sqrt(var + eps)`.
    fn folded(&self, conv: &str, bn: &str, eps: f32) -> Result<(Vec<f32>, Vec<f32>)> {
        let (w, _) = self.values(&format!("{conv}.weight"))?;
        let p = |s: &str| self.values(&format!("{bn}.{s}")).map(|(v, _)| v);
        let (gamma, beta, mean, var) = (p("weight")?, p("bias")?, p("running_mean")?, p("running_var")?);
        let scale: Vec<f64> = gamma.iter().zip(var).map(|(&g, &v)| g as f64 / (v as f64 + eps as f64).sqrt()).collect();
        let row = w.len() / scale.len();
        let w = w.iter().enumerate().map(|(i, &x)| (x as f64 * scale[i / row]) as f32).collect();
        let bias = beta.iter().zip(mean).zip(&scale).map(|((&b, &m), &s)| (b as f64 - m as f64 * s) as f32).collect();
        Ok((w, bias))
    }
}

fn value_info(name: &str, dims: Vec<Dim>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor { elem_type: FLOAT, shape: Some(TensorShapeProto { dim: dims }) }),
        }),
    }
}

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: ATTR_INT, i, ..Default::default() }
}

fn ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: ATTR_INTS, ints: ints.to_vec(), ..Default::default() }
}

fn float(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: ATTR_FLOAT, f, ..Default::default() }
}

// `TensorProto.DataType` and `AttributeProto.AttributeType` values.
const FLOAT: i32 = 1;
const INT64: i32 = 7;
const ATTR_FLOAT: i32 = 1;
const ATTR_INT: i32 = 2;
const ATTR_INTS: i32 = 7;

/// `onnx.ModelProto` (the fields written here).
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// IR version.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// Operator sets.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Producer.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// Producer version.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// Description.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// The graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Metadata.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// `onnx.OperatorSetIdProto`.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    /// Domain ("" is `ai.onnx`).
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Version.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `onnx.StringStringEntryProto`.
#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `onnx.GraphProto`.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// Nodes, in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `onnx.NodeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    /// Input value names.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output value names.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Node name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Operator.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

/// `onnx.AttributeProto` (scalar and list values of float and int).
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Which value field is set (`AttributeType`).
    #[prost(int32, tag = "20")]
    pub r#type: i32,
    /// Float value.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// Int value.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// Int list.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

/// `onnx.TensorProto` (raw little-endian data).
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// Shape.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// Element type (`DataType`).
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Name.
    #[prost(string, tag = "8")]
    pub name: String,
    /// The values, little-endian.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

/// `onnx.ValueInfoProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `onnx.TypeProto` (tensors only).
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    /// A tensor type.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TypeTensor>,
}

/// `onnx.TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub struct TypeTensor {
    /// Element type (`DataType`).
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// Shape.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `onnx.TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    /// Dimensions.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dim>,
}

/// `onnx.TensorShapeProto.Dimension`.
#[derive(Clone, PartialEq, Message)]
pub struct Dim {
    /// A size or a symbol.
    #[prost(oneof = "DimValue", tags = "1, 2")]
    pub value: Option<DimValue>,
}

/// A dimension's size or symbol.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum DimValue {
    /// A fixed size.
    #[prost(int64, tag = "1")]
    Fixed(i64),
    /// A named, dynamic size.
    #[prost(string, tag = "2")]
    Param(String),
}
