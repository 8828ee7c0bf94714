//! The engines that run a model, behind one trait: tract (pure Rust, always
//! built) and ONNX Runtime (loaded at run time from a library the worker
//! finds, on the job's GPUs through CUDA when it has any).
//!
//! A model runs in batches of rows: each engine sees one batch of every
//! input at a time, and the outputs are appended to buffers sized once, so
//! a job holds about its input and its output, not copies of them.

pub mod onnxruntime;
pub mod tract;

use std::ops::Range;

use coop_core::Engine as Choice;
use tract_onnx::prelude::*;

use super::error::ModelError;
use super::formats::Matrix;
use super::onnx::{Elem, Prepared};

/// The values of a tensor in memory, as a slice of `D`.
pub fn values<D: Datum>(t: &Tensor) -> TractResult<&[D]> {
    t.try_as_plain_ram().and_then(|v| v.as_slice::<D>())
}

/// Rows per batch.
pub const BATCH_ROWS: usize = 8192;

/// One engine: loads a prepared model for the outputs asked for (names of
/// the model's outputs, which the caller checked with `Prepared::output`).
pub trait Engine {
    fn name(&self) -> &'static str;
    fn load(&self, model: &Prepared, outputs: &[String]) -> Result<Box<dyn Session>, ModelError>;
}

/// A loaded model.
pub trait Session {
    /// Runs rows `rows` of `inputs` (in the model's input order, each with
    /// rows on its first axis); returns the selected outputs in order.
    fn run(&mut self, inputs: &[Tensor], rows: Range<usize>) -> Result<Vec<Tensor>, ModelError>;
}

/// What the child learned of this worker from the worker: where ONNX
/// Runtime is, how many threads and which GPUs the job has.
#[derive(Clone, Debug, Default)]
pub struct Runtime {
    pub onnxruntime: Option<std::path::PathBuf>,
    pub threads: usize,
    /// The job's GPUs, as CUDA sees them in the job (0..n).
    pub gpus: usize,
}

/// Environment variables the worker sets for a model child.
pub const ONNXRUNTIME_ENV: &str = "COOP_ONNXRUNTIME_LIB";
pub const THREADS_ENV: &str = "COOP_MODEL_THREADS";

impl Runtime {
    pub fn from_env() -> Self {
        let gpus = std::env::var("CUDA_VISIBLE_DEVICES")
            .map(|v| v.split(',').filter(|s| !s.trim().is_empty()).count())
            .unwrap_or(0);
        Self {
            onnxruntime: std::env::var_os(ONNXRUNTIME_ENV)
                .filter(|v| !v.is_empty())
                .map(Into::into),
            threads: std::env::var(THREADS_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1)
                .max(1),
            gpus,
        }
    }

    /// The engine a job gets: what it asked for, or for `auto` ONNX Runtime
    /// where the worker has it and tract otherwise.
    pub fn engine(&self, choice: Choice) -> Result<Box<dyn Engine>, ModelError> {
        match (choice, &self.onnxruntime) {
            (Choice::Tract, _) | (Choice::Auto, None) => Ok(Box::new(tract::Tract)),
            (Choice::Onnxruntime | Choice::Auto, Some(lib)) => Ok(Box::new(
                onnxruntime::OnnxRuntime::new(lib, self.threads, self.gpus)?,
            )),
            (Choice::Onnxruntime, None) => Err(ModelError::Engine(
                "this worker has no ONNX Runtime: its owner can install the onnxruntime \
                 Python wheel or set onnxruntime_lib in the worker's config; or run the job \
                 with --engine tract"
                    .into(),
            )),
        }
    }
}

/// Runs `session` over every row of `inputs` in batches; returns the
/// outputs, each with every row.
pub fn run_batched(
    session: &mut dyn Session,
    inputs: &[Tensor],
    outputs: &[String],
) -> Result<Vec<Tensor>, ModelError> {
    let rows = inputs.first().map(|t| t.shape()[0]).unwrap_or(0);
    // An empty input still runs once, so its outputs have their shapes.
    let batches: Vec<Range<usize>> = if rows == 0 {
        std::iter::once(0..0).collect()
    } else {
        (0..rows)
            .step_by(BATCH_ROWS)
            .map(|start| start..(start + BATCH_ROWS).min(rows))
            .collect()
    };
    let mut buffers: Vec<Option<Buffer>> = outputs.iter().map(|_| None).collect();
    for batch in batches {
        let got = session.run(inputs, batch.clone())?;
        for ((buffer, t), name) in buffers.iter_mut().zip(got).zip(outputs) {
            if t.rank() == 0 || t.shape()[0] != batch.len() {
                return Err(ModelError::Model(format!(
                    "output {name:?} has shape {:?} for {} input rows: it is not one row per input row",
                    t.shape(),
                    batch.len()
                )));
            }
            match buffer {
                None => *buffer = Some(Buffer::new(&t, rows, name)?),
                Some(b) => b.push(&t, name)?,
            }
        }
    }
    buffers
        .into_iter()
        .zip(outputs)
        .map(|(b, name)| {
            b.ok_or_else(|| ModelError::Model(format!("the model gave no output {name:?}")))?
                .finish()
        })
        .collect()
}

/// One output's rows, appended batch by batch into storage sized once.
struct Buffer {
    dt: DatumType,
    row_shape: Vec<usize>,
    rows: usize,
    data: Column,
}

enum Column {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Str(Vec<String>),
}

impl Buffer {
    fn new(first: &Tensor, total_rows: usize, name: &str) -> Result<Self, ModelError> {
        let row_shape = first.shape()[1..].to_vec();
        let capacity = total_rows * row_shape.iter().product::<usize>();
        let data = match first.datum_type() {
            DatumType::F32 => Column::F32(Vec::with_capacity(capacity)),
            DatumType::F64 => Column::F64(Vec::with_capacity(capacity)),
            DatumType::I32 => Column::I32(Vec::with_capacity(capacity)),
            DatumType::I64 => Column::I64(Vec::with_capacity(capacity)),
            DatumType::String => Column::Str(Vec::with_capacity(capacity)),
            other => {
                return Err(ModelError::Model(format!(
                    "output {name:?} is of type {other:?}: outputs must be float, int or string tensors"
                )))
            }
        };
        let mut b = Self {
            dt: first.datum_type(),
            row_shape,
            rows: 0,
            data,
        };
        b.push(first, name)?;
        Ok(b)
    }

    fn push(&mut self, t: &Tensor, name: &str) -> Result<(), ModelError> {
        if t.datum_type() != self.dt || t.shape()[1..] != self.row_shape[..] {
            return Err(ModelError::Model(format!(
                "output {name:?} changed type or shape between batches"
            )));
        }
        let bad = |e: TractError| ModelError::Model(format!("output {name:?}: {e}"));
        match &mut self.data {
            Column::F32(v) => v.extend_from_slice(values::<f32>(t).map_err(bad)?),
            Column::F64(v) => v.extend_from_slice(values::<f64>(t).map_err(bad)?),
            Column::I32(v) => v.extend_from_slice(values::<i32>(t).map_err(bad)?),
            Column::I64(v) => v.extend_from_slice(values::<i64>(t).map_err(bad)?),
            Column::Str(v) => v.extend_from_slice(values::<String>(t).map_err(bad)?),
        }
        self.rows += t.shape()[0];
        Ok(())
    }

    fn finish(self) -> Result<Tensor, ModelError> {
        let mut shape = vec![self.rows];
        shape.extend(&self.row_shape);
        let shape = tract_ndarray::IxDyn(&shape);
        let tensor = match self.data {
            Column::F32(v) => tract_ndarray::ArrayD::from_shape_vec(shape, v).map(Tensor::from),
            Column::F64(v) => tract_ndarray::ArrayD::from_shape_vec(shape, v).map(Tensor::from),
            Column::I32(v) => tract_ndarray::ArrayD::from_shape_vec(shape, v).map(Tensor::from),
            Column::I64(v) => tract_ndarray::ArrayD::from_shape_vec(shape, v).map(Tensor::from),
            Column::Str(v) => tract_ndarray::ArrayD::from_shape_vec(shape, v).map(Tensor::from),
        };
        tensor.map_err(|e| ModelError::Model(format!("assembling an output: {e}")))
    }
}

/// A `[rows, cols]` f32 matrix as the tensor a model input declares:
/// its element type (the values cast, as numpy's `astype` would), and the
/// row reshaped to the input's fixed dimensions where it has them. An f32
/// input takes the matrix's own tensor, moved and never copied.
pub fn input_tensor(x: Matrix, io: &super::onnx::Io) -> Result<Tensor, ModelError> {
    if input_type(io)? != DatumType::F32 {
        return input_tensor_from(&x.into_tensor(), io);
    }
    let shape = input_shape(x.rows, x.cols, io)?;
    x.into_tensor()
        .into_shape(&shape)
        .map_err(|e| ModelError::Data(e.to_string()))
}

/// The same from a `[rows, cols]` f32 tensor that stays where it is (an
/// evaluation's features, read by every model): cast or copied once.
pub fn input_tensor_from(x: &Tensor, io: &super::onnx::Io) -> Result<Tensor, ModelError> {
    let (rows, cols) = (x.shape()[0], x.shape().get(1).copied().unwrap_or(1));
    let shape = input_shape(rows, cols, io)?;
    let dt = input_type(io)?;
    x.cast_to_dt(dt)
        .map(|c| c.into_owned())
        .map_err(|e| ModelError::Data(format!("input {:?} as {dt:?}: {e}", io.name)))?
        .into_shape(&shape)
        .map_err(|e| ModelError::Data(e.to_string()))
}

/// The shape an input takes `rows` rows of `cols` values as.
fn input_shape(rows: usize, cols: usize, io: &super::onnx::Io) -> Result<Vec<usize>, ModelError> {
    let mut shape = vec![rows];
    match io.dims.as_ref() {
        Some(dims) if dims.len() > 2 && dims[1..].iter().all(Option::is_some) => {
            shape.extend(dims[1..].iter().map(|d| d.unwrap_or(1)));
        }
        Some(dims) if dims.len() == 1 => {}
        _ => shape.push(cols),
    }
    if shape.iter().product::<usize>() != rows * cols {
        return Err(ModelError::Model(format!(
            "input {:?} takes rows of shape {:?}; the data has {cols} values per row",
            io.name,
            &io.dims
                .as_ref()
                .map(|d| d.iter().skip(1).copied().collect::<Vec<_>>())
                .unwrap_or_default()
        )));
    }
    if let Some(width) = io.row_width() {
        if width != cols {
            return Err(ModelError::Model(format!(
                "input {:?} takes {width} values per row; the data has {cols}",
                io.name
            )));
        }
    }
    Ok(shape)
}

/// The element type an input declares (numeric ones only).
fn input_type(io: &super::onnx::Io) -> Result<DatumType, ModelError> {
    Ok(match io.elem {
        None | Some(Elem::F32) => DatumType::F32,
        Some(Elem::F64) => DatumType::F64,
        Some(Elem::I32) => DatumType::I32,
        Some(Elem::I64) => DatumType::I64,
        Some(other) => {
            return Err(ModelError::Model(format!(
                "input {:?} is {}: Coop feeds numeric inputs only (float32, float64, int32, int64)",
                io.name,
                other.name()
            )))
        }
    })
}
