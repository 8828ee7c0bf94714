//! A model as both engines get it: the ONNX file read once, its declared
//! inputs and outputs, and skl2onnx's `ZipMap` turned into a plain tensor.
//!
//! skl2onnx ends a classifier with `ZipMap`, which turns the probability
//! tensor into a sequence of maps (one `{class: probability}` per row). tract
//! does not implement it and no file format we write holds it, so the node
//! becomes an `Identity`: the output keeps its name and carries the
//! probabilities as a `[rows, classes]` tensor, in the order of the classes
//! ZipMap would have named (kept in `class_labels`).

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;
use tract_onnx::pb;

use super::error::ModelError;

/// ONNX's element type numbers (onnx.proto `TensorProto.DataType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    F32,
    F64,
    I32,
    I64,
    Str,
    Other(i32),
}

impl Elem {
    fn from_onnx(t: i32) -> Self {
        match t {
            1 => Self::F32,
            11 => Self::F64,
            6 => Self::I32,
            7 => Self::I64,
            8 => Self::Str,
            other => Self::Other(other),
        }
    }

    pub fn name(self) -> String {
        match self {
            Self::F32 => "float32".into(),
            Self::F64 => "float64".into(),
            Self::I32 => "int32".into(),
            Self::I64 => "int64".into(),
            Self::Str => "string".into(),
            Self::Other(t) => format!("ONNX type {t}"),
        }
    }
}

/// A declared input or output: its name, element type and dimensions
/// (`None` where the model leaves one open, such as the batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Io {
    pub name: String,
    pub elem: Option<Elem>,
    pub dims: Option<Vec<Option<usize>>>,
}

impl Io {
    /// Values per row: the product of the dimensions after the first, when
    /// the model fixes them.
    pub fn row_width(&self) -> Option<usize> {
        let dims = self.dims.as_ref()?;
        dims.iter()
            .skip(1)
            .try_fold(1usize, |acc, d| acc.checked_mul((*d)?))
    }
}

/// The model, ready for an engine.
pub struct Prepared {
    /// Shared with the engines that keep it (tract plans from it per batch
    /// shape), so a large model is held once.
    pub proto: std::sync::Arc<pb::ModelProto>,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
    /// For an output that was a ZipMap's: the class of each column.
    pub class_labels: BTreeMap<String, Vec<i64>>,
}

/// Largest model file read.
pub const MAX_MODEL_BYTES: u64 = 4 << 30;

pub fn prepare(path: &Path) -> Result<Prepared, ModelError> {
    let size = std::fs::metadata(path)
        .map_err(|e| ModelError::Model(format!("read {}: {e}", path.display())))?
        .len();
    if size > MAX_MODEL_BYTES {
        return Err(ModelError::Model(format!(
            "{}: {size} bytes is more than the {MAX_MODEL_BYTES}-byte limit on a model",
            path.display()
        )));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| ModelError::Model(format!("read {}: {e}", path.display())))?;
    let mut proto = pb::ModelProto::decode(bytes.as_slice()).map_err(|e| {
        ModelError::Model(format!(
            "cannot load ONNX model {}: it is not an ONNX file (protobuf: {e})",
            path.display()
        ))
    })?;
    let graph = proto.graph.as_mut().ok_or_else(|| {
        ModelError::Model(format!(
            "{} is an ONNX file without a graph",
            path.display()
        ))
    })?;
    let mut class_labels = BTreeMap::new();
    for node in graph.node.iter_mut().filter(|n| n.op_type == "ZipMap") {
        let labels = node
            .attribute
            .iter()
            .find(|a| a.name == "classlabels_int64s")
            .map(|a| a.ints.clone())
            .unwrap_or_default();
        let Some(out) = node.output.first().cloned() else {
            continue;
        };
        node.op_type = "Identity".into();
        node.domain = String::new();
        node.attribute.clear();
        if let Some(o) = graph.output.iter_mut().find(|o| o.name == out) {
            o.r#type = Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: None,
                })),
                ..Default::default()
            });
        }
        if !labels.is_empty() {
            class_labels.insert(out, labels);
        }
    }
    let initializers: std::collections::BTreeSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .map(io)
        .collect();
    let outputs = graph.output.iter().map(io).collect();
    Ok(Prepared {
        proto: std::sync::Arc::new(proto),
        inputs,
        outputs,
        class_labels,
    })
}

fn io(v: &pb::ValueInfoProto) -> Io {
    use pb::tensor_shape_proto::dimension::Value as Dim;
    let tensor = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => Some(t),
        _ => None,
    };
    Io {
        name: v.name.clone(),
        elem: tensor.map(|t| Elem::from_onnx(t.elem_type)),
        dims: tensor.and_then(|t| t.shape.as_ref()).map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(Dim::DimValue(n)) if n > 0 => Some(n as usize),
                    _ => None,
                })
                .collect()
        }),
    }
}

impl Prepared {
    /// The model as ONNX bytes (what ONNX Runtime loads), with the changes
    /// `prepare` made.
    pub fn bytes(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }

    /// The operators (as `domain:op`, or `op` in the default domain) of the
    /// graph's nodes for which `known` is false, each once.
    pub fn ops_missing(&self, known: impl Fn(&str) -> bool) -> Vec<String> {
        let mut missing: Vec<String> = self
            .proto
            .graph
            .iter()
            .flat_map(|g| &g.node)
            .filter(|n| !known(&n.op_type))
            .map(|n| match n.domain.as_str() {
                "" | "ai.onnx" => n.op_type.clone(),
                d => format!("{d}:{}", n.op_type),
            })
            .collect();
        missing.sort();
        missing.dedup();
        missing
    }

    pub fn output(&self, name: &str) -> Result<&Io, ModelError> {
        self.outputs.iter().find(|o| o.name == name).ok_or_else(|| {
            ModelError::Model(format!(
                "the model has no output {name:?} (its outputs: {})",
                self.output_names().join(", ")
            ))
        })
    }

    pub fn output_names(&self) -> Vec<String> {
        self.outputs.iter().map(|o| o.name.clone()).collect()
    }
}
