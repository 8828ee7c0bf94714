//! Small ONNX models and a dataset, built on the spot: linear layers
//! `y = x W + b` written as real ONNX protobuf, so tests and `coop demo`
//! need no download and every expected answer can be worked out by hand.

use std::path::{Path, PathBuf};

use prost::Message;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as Dim;
use tract_onnx::pb::tensor_shape_proto::Dimension;
use tract_onnx::pb::type_proto::{Tensor, Value};
use tract_onnx::pb::*;

const FLOAT: i32 = 1;

fn value_info(name: &str, dims: Vec<Dim>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(Value::TensorType(Tensor {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|d| Dimension {
                            value: Some(d),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tensor(name: &str, dims: Vec<i64>, data: Vec<f32>) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims,
        data_type: FLOAT,
        float_data: data,
        ..Default::default()
    }
}

/// A linear model with `inputs` features and `outputs` outputs: `w` is
/// row-major [inputs, outputs].
pub fn linear_model(
    dir: &Path,
    name: &str,
    inputs: usize,
    outputs: usize,
    w: &[f32],
    b: &[f32],
) -> std::io::Result<PathBuf> {
    if w.len() != inputs * outputs || b.len() != outputs {
        return Err(std::io::Error::other(
            "weights do not match the layer's shape",
        ));
    }
    let graph = GraphProto {
        name: name.into(),
        node: vec![
            NodeProto {
                op_type: "MatMul".into(),
                input: vec!["x".into(), "W".into()],
                output: vec!["xw".into()],
                name: "matmul".into(),
                ..Default::default()
            },
            NodeProto {
                op_type: "Add".into(),
                input: vec!["xw".into(), "b".into()],
                output: vec!["y".into()],
                name: "add".into(),
                ..Default::default()
            },
        ],
        initializer: vec![
            tensor("W", vec![inputs as i64, outputs as i64], w.to_vec()),
            tensor("b", vec![outputs as i64], b.to_vec()),
        ],
        input: vec![value_info(
            "x",
            vec![Dim::DimParam("N".into()), Dim::DimValue(inputs as i64)],
        )],
        output: vec![value_info(
            "y",
            vec![Dim::DimParam("N".into()), Dim::DimValue(outputs as i64)],
        )],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "coop-tests".into(),
        graph: Some(graph),
        ..Default::default()
    };
    let path = dir.join(format!("{name}.onnx"));
    std::fs::write(&path, model.encode_to_vec())?;
    Ok(path)
}

/// Three 3-class classifiers on 2 features; each scores class k by one
/// weight row, so the argmax of each is easy to work out by hand:
/// - `by_x`: class 0 if x is large, class 1 if y is large, class 2 otherwise
///   (scores 2x, 2y, 1);
/// - `always_two`: class 2 always (scores 0, 0, 1);
/// - `by_y`: like `by_x` with the roles of x and y swapped.
pub fn classifiers(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(vec![
        linear_model(
            dir,
            "by_x",
            2,
            3,
            &[2.0, 0.0, 0.0, 0.0, 2.0, 0.0],
            &[0.0, 0.0, 1.0],
        )?,
        linear_model(dir, "always_two", 2, 3, &[0.0; 6], &[0.0, 0.0, 1.0])?,
        linear_model(
            dir,
            "by_y",
            2,
            3,
            &[0.0, 2.0, 0.0, 2.0, 0.0, 0.0],
            &[0.0, 0.0, 1.0],
        )?,
    ])
}

/// Six labelled rows. Predictions (class):
///
/// | x | y | label | by_x | always_two | by_y | vote |
/// |---|---|---|---|---|---|---|
/// | 1 | 0 | 0 | 0 | 2 | 1 | 0 (tie: smallest) |
/// | 0 | 1 | 1 | 1 | 2 | 0 | 0 (tie: smallest) |
/// | 0 | 0 | 2 | 2 | 2 | 2 | 2 |
/// | 2 | 1 | 0 | 0 | 2 | 1 | 0 |
/// | 1 | 2 | 1 | 1 | 2 | 0 | 0 |
/// | 0.1 | 0.2 | 2 | 2 | 2 | 2 | 2 |
pub fn dataset(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("points.csv");
    std::fs::write(
        &path,
        "x,y,label\n1,0,0\n0,1,1\n0,0,2\n2,1,0\n1,2,1\n0.1,0.2,2\n",
    )?;
    Ok(path)
}
