//! ONNX Runtime through the `ort` crate, loaded at run time (`load-dynamic`)
//! from the library the worker found, so nothing is downloaded at build time
//! and a worker without it still runs every model tract can.
//!
//! A job with GPUs runs on the CUDA execution provider of the first GPU it
//! was given (CUDA_VISIBLE_DEVICES holds exactly its GPUs), and fails rather
//! than fall back to the CPU when CUDA cannot start: a member who was
//! allotted a GPU must not silently get a CPU run.

use std::ops::Range;
use std::path::{Path, PathBuf};

use ort::ep::ExecutionProvider;
use ort::session::{RunOptions, Session as OrtSession};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use tract_onnx::prelude::*;

use super::super::error::ModelError;
use super::super::onnx::Prepared;
use super::{Engine, Session};

pub struct OnnxRuntime {
    env: ort::environment::Environment,
    threads: usize,
    gpus: usize,
}

/// What `probe` learned of a library: its build info and whether CUDA is
/// among its execution providers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub build_info: String,
    pub cuda: bool,
}

fn load_error(lib: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Engine(format!(
        "cannot load ONNX Runtime from {}: {e}",
        lib.display()
    ))
}

/// ONNX Runtime allows one environment per process (and one library):
/// the first load is kept, with the library it came from.
static LOADED: std::sync::OnceLock<Result<(PathBuf, ort::environment::Environment), String>> =
    std::sync::OnceLock::new();

impl OnnxRuntime {
    pub fn new(lib: &Path, threads: usize, gpus: usize) -> Result<Self, ModelError> {
        let loaded = LOADED.get_or_init(|| {
            ort::init_from(lib)
                .map_err(|e| e.to_string())?
                .with_name("coop")
                .build()
                .map(|env| (lib.to_path_buf(), env))
                .map_err(|e| e.to_string())
        });
        match loaded {
            Ok((first, env)) if first == lib => Ok(Self {
                env: env.clone(),
                threads,
                gpus,
            }),
            Ok((first, _)) => Err(load_error(
                lib,
                format!("this process already loaded {}", first.display()),
            )),
            Err(e) => Err(load_error(lib, e)),
        }
    }

    /// Loads the library and reports what it offers (run by the worker in
    /// a child at start, so a broken library cannot take the worker down).
    pub fn probe(lib: &Path) -> Result<Probe, ModelError> {
        let _runtime = Self::new(lib, 1, 0)?;
        Ok(Probe {
            build_info: ort::info().to_string(),
            cuda: ort::ep::CUDA::is_available().map_err(|e| load_error(lib, e))?,
        })
    }
}

struct OrtRun {
    session: OrtSession,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

fn model_error(what: &str) -> impl Fn(ort::Error) -> ModelError + '_ {
    move |e| {
        let text = e.to_string();
        if text.contains("NOT_IMPLEMENTED") || text.contains("Could not find an implementation") {
            ModelError::Unsupported(format!("ONNX Runtime {what}: {text}"))
        } else {
            ModelError::Model(format!("ONNX Runtime {what}: {text}"))
        }
    }
}

impl Engine for OnnxRuntime {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn load(&self, model: &Prepared, outputs: &[String]) -> Result<Box<dyn Session>, ModelError> {
        let mut builder = OrtSession::builder(&self.env)
            .map_err(model_error("session"))?
            .with_intra_threads(self.threads)
            .map_err(|e| ModelError::Engine(format!("ONNX Runtime threads: {e}")))?;
        if self.gpus > 0 {
            let cuda = ort::ep::CUDA::default()
                .with_device_id(0)
                .build()
                .error_on_failure();
            builder = builder.with_execution_providers([cuda]).map_err(|e| {
                ModelError::Engine(format!(
                    "the job has {} GPU(s) but ONNX Runtime's CUDA provider did not start \
                         (is this the onnxruntime-gpu build, with CUDA and cuDNN installed?): {e}",
                    self.gpus
                ))
            })?;
        }
        let session = builder
            .commit_from_memory(&model.bytes())
            .map_err(model_error("cannot load the model"))?;
        Ok(Box::new(OrtRun {
            session,
            inputs: model.inputs.iter().map(|i| i.name.clone()).collect(),
            outputs: outputs.to_vec(),
        }))
    }
}

/// A view of rows `rows` of `t` as an ONNX Runtime tensor, sharing its
/// memory.
fn view<'t>(
    t: &'t Tensor,
    rows: &Range<usize>,
) -> Result<ort::session::SessionInputValue<'t>, ModelError> {
    let width: usize = t.shape()[1..].iter().product();
    let mut shape: Vec<i64> = t.shape().iter().map(|d| *d as i64).collect();
    shape[0] = rows.len() as i64;
    let span = rows.start * width..rows.end * width;
    fn make<'a, T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        shape: Vec<i64>,
        data: &'a [T],
    ) -> Result<ort::session::SessionInputValue<'a>, ModelError> {
        TensorRef::from_array_view((shape, data))
            .map(Into::into)
            .map_err(|e| ModelError::Data(format!("input tensor: {e}")))
    }
    let bad = |e: TractError| ModelError::Data(e.to_string());
    match t.datum_type() {
        DatumType::F32 => make(shape, &super::values::<f32>(t).map_err(bad)?[span]),
        DatumType::F64 => make(shape, &super::values::<f64>(t).map_err(bad)?[span]),
        DatumType::I32 => make(shape, &super::values::<i32>(t).map_err(bad)?[span]),
        DatumType::I64 => make(shape, &super::values::<i64>(t).map_err(bad)?[span]),
        other => Err(ModelError::Data(format!(
            "an input of type {other:?} cannot be fed to ONNX Runtime"
        ))),
    }
}

fn to_tract(name: &str, v: &DynValue) -> Result<Tensor, ModelError> {
    let bad = |e: ort::Error| ModelError::Model(format!("output {name:?}: {e}"));
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Err(ModelError::Model(format!(
            "output {name:?} is not a tensor ({}); choose another with --output-name",
            v.dtype()
        )));
    };
    fn build<T: Clone + Datum>(shape: &[i64], data: Vec<T>) -> Result<Tensor, ModelError> {
        let shape: Vec<usize> = shape.iter().map(|d| *d as usize).collect();
        tract_ndarray::ArrayD::from_shape_vec(tract_ndarray::IxDyn(&shape), data)
            .map(Tensor::from)
            .map_err(|e| ModelError::Model(e.to_string()))
    }
    fn numeric<T: ort::value::PrimitiveTensorElementType + Clone + Datum>(
        v: &DynValue,
    ) -> ort::Result<Result<Tensor, ModelError>> {
        let (shape, data) = v.try_extract_tensor::<T>()?;
        Ok(build(shape, data.to_vec()))
    }
    match ty {
        TensorElementType::Float32 => numeric::<f32>(v).map_err(bad)?,
        TensorElementType::Float64 => numeric::<f64>(v).map_err(bad)?,
        TensorElementType::Int32 => numeric::<i32>(v).map_err(bad)?,
        TensorElementType::Int64 => numeric::<i64>(v).map_err(bad)?,
        TensorElementType::String => {
            let (shape, data) = v.try_extract_strings().map_err(bad)?;
            build(shape, data)
        }
        other => Err(ModelError::Model(format!(
            "output {name:?} has element type {other:?}: outputs must be float, int or string tensors"
        ))),
    }
}

impl Session for OrtRun {
    fn run(&mut self, inputs: &[Tensor], rows: Range<usize>) -> Result<Vec<Tensor>, ModelError> {
        let feed: Vec<(String, ort::session::SessionInputValue<'_>)> = self
            .inputs
            .iter()
            .zip(inputs)
            .map(|(name, t)| Ok((name.clone(), view(t, &rows)?)))
            .collect::<Result<_, ModelError>>()?;
        let selector = self
            .outputs
            .iter()
            .fold(ort::session::OutputSelector::no_default(), |s, o| {
                s.with(o.clone())
            });
        let options = RunOptions::new()
            .map_err(model_error("run options"))?
            .with_outputs(selector);
        let out = self
            .session
            .run_with_options(feed, &options)
            .map_err(model_error("running the model failed"))?;
        self.outputs
            .iter()
            .map(|name| {
                let v = out.get(name.as_str()).ok_or_else(|| {
                    ModelError::Model(format!("ONNX Runtime gave no output {name:?}"))
                })?;
                to_tract(name, v)
            })
            .collect()
    }
}

/// Where ONNX Runtime is, in this order: the worker's config, then
/// `COOP_ONNXRUNTIME_LIB`, then `ORT_DYLIB_PATH`, then the library inside
/// the `onnxruntime` (or `onnxruntime-gpu`) Python wheel, if `python3` has one.
pub fn find_library(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_path_buf());
    }
    for var in [super::ONNXRUNTIME_ENV, "ORT_DYLIB_PATH"] {
        if let Some(p) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(p));
        }
    }
    python_wheel_library()
}

/// The `libonnxruntime.so.*` of the Python wheel `python3` imports.
pub fn python_wheel_library() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim()).join("capi");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libonnxruntime.so")
                    || n.starts_with("libonnxruntime.") && n.ends_with(".dylib")
            })
        })
        .collect();
    libs.sort();
    libs.into_iter().next()
}
