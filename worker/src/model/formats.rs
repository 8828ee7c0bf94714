//! The file formats users have: `.npy` tensors, JSONL rows, and CSV or
//! JSONL datasets with a label column.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use tract_onnx::prelude::Tensor;

use super::error::ModelError;

/// A 2-D matrix of f32, row-major, held as the `[rows, cols]` tensor an
/// engine takes: readers allocate it once at its size and parse into it,
/// and a model job moves it into the engine, so the values exist once.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    tensor: Tensor,
}

impl Matrix {
    /// A matrix of these values (copied: for small inputs and tests).
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, ModelError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(ModelError::Data(format!(
                "{} values do not make {rows} rows of {cols}",
                data.len()
            )));
        }
        let tensor = tract_onnx::prelude::tract_ndarray::Array2::from_shape_vec((rows, cols), data)
            .map(|a| Tensor::from(a.into_dyn()))
            .map_err(|e| ModelError::Data(e.to_string()))?;
        Ok(Self { rows, cols, tensor })
    }

    /// A matrix of zeros, to be filled (`fill`).
    pub fn zeros(rows: usize, cols: usize) -> Result<Self, ModelError> {
        let tensor = Tensor::zero::<f32>(&[rows, cols])
            .map_err(|e| ModelError::Data(format!("{rows} rows of {cols}: {e}")))?;
        Ok(Self { rows, cols, tensor })
    }

    /// Every value, row after row.
    pub fn values(&self) -> &[f32] {
        super::engine::values::<f32>(&self.tensor).expect("a Matrix is a plain f32 tensor")
    }

    /// Runs `f` on the values to write them.
    pub fn fill<R>(&mut self, f: impl FnOnce(&mut [f32]) -> R) -> R {
        let mut view = self
            .tensor
            .try_as_plain_ram_mut()
            .expect("a Matrix is a plain f32 tensor");
        f(view
            .as_slice_mut::<f32>()
            .expect("a Matrix is a plain f32 tensor"))
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.values()[i * self.cols..(i + 1) * self.cols]
    }

    /// The `[rows, cols]` tensor, moved out.
    pub fn into_tensor(self) -> Tensor {
        self.tensor
    }
}

/// Refuses a file that grew or shrank between the pass that counted its
/// rows and the pass that read them.
fn changed(path: &Path) -> ModelError {
    ModelError::Data(format!(
        "{}: the file changed while it was read",
        path.display()
    ))
}

/// Reads a `.npy` file of f32, f64, i32 or i64 (little-endian, C order)
/// with 1 or 2 dimensions; a 1-D array is one column. The values are
/// decoded as they stream from the file, so only the f32 matrix is held
/// (never the file's bytes beside it), and a header whose shape claims more
/// than the file holds is refused before anything is allocated.
pub fn read_npy(path: &Path) -> Result<Matrix, ModelError> {
    use std::io::Read;
    let at = |e: String| ModelError::Data(format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path)
        .map_err(|e| ModelError::Data(format!("read {}: {e}", path.display())))?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
    let mut head = vec![0u8; 10];
    reader
        .read_exact(&mut head)
        .map_err(|_| at("not a .npy file (too short)".into()))?;
    if head[6] >= 2 {
        let mut more = [0u8; 2];
        reader
            .read_exact(&mut more)
            .map_err(|_| at("truncated .npy header".into()))?;
        head.extend_from_slice(&more);
    }
    let (_, header_len) = header_len(&head).map_err(|e| at(e.to_string()))?;
    if header_len > MAX_NPY_HEADER {
        return Err(at(format!("a .npy header of {header_len} bytes")));
    }
    let start = head.len();
    head.resize(start + header_len, 0);
    reader
        .read_exact(&mut head[start..])
        .map_err(|_| at("truncated .npy header".into()))?;
    let h = parse_header(&head).map_err(|e| at(e.to_string()))?;
    let body_len = file_len.saturating_sub(head.len() as u64);
    if (h.count as u64).saturating_mul(h.width as u64) > body_len {
        return Err(at(format!(
            "truncated .npy data: {body_len} bytes for {} values",
            h.count
        )));
    }
    let mut m = Matrix::zeros(h.rows, h.cols)?;
    m.fill(|values| {
        let mut chunk = vec![0u8; (1 << 16) / h.width * h.width];
        let mut at_value = 0;
        while at_value < values.len() {
            let n = (values.len() - at_value).min(chunk.len() / h.width);
            reader
                .read_exact(&mut chunk[..n * h.width])
                .map_err(|e| at(format!("read .npy data: {e}")))?;
            for (v, b) in values[at_value..at_value + n]
                .iter_mut()
                .zip(chunk.chunks_exact(h.width))
            {
                *v = (h.decode)(b);
            }
            at_value += n;
        }
        Ok(())
    })?;
    Ok(m)
}

/// Longest `.npy` header read (numpy writes well under 1 KiB).
const MAX_NPY_HEADER: usize = 1 << 20;

/// A `.npy` file's layout, from its header.
struct NpyHeader {
    rows: usize,
    cols: usize,
    count: usize,
    /// Bytes per value.
    width: usize,
    decode: fn(&[u8]) -> f32,
}

/// Where the header starts and how long it is, from the file's first 10
/// (version 1) or 12 bytes.
fn header_len(bytes: &[u8]) -> Result<(usize, usize), ModelError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(ModelError::Data("not a .npy file (bad magic)".into()));
    }
    match bytes[6] {
        1 => Ok((10, u16::from_le_bytes([bytes[8], bytes[9]]) as usize)),
        2 | 3 if bytes.len() >= 12 => Ok((
            12,
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
        )),
        v => Err(ModelError::Data(format!("unsupported .npy version {v}"))),
    }
}

pub fn parse_npy(bytes: &[u8]) -> Result<Matrix, ModelError> {
    let h = parse_header(bytes)?;
    let (start, len) = header_len(bytes)?;
    let body = &bytes[(start + len).min(bytes.len())..];
    if body.len() < h.count * h.width {
        return Err(ModelError::Data(format!(
            "truncated .npy data: {} bytes for {} values",
            body.len(),
            h.count
        )));
    }
    Matrix::new(
        h.rows,
        h.cols,
        body[..h.count * h.width]
            .chunks_exact(h.width)
            .map(h.decode)
            .collect(),
    )
}

/// Parses the header of a `.npy` file that `bytes` begins with (at least
/// up to the header's end).
fn parse_header(bytes: &[u8]) -> Result<NpyHeader, ModelError> {
    let (start, header_len) = header_len(bytes)?;
    let header = bytes
        .get(start..start + header_len)
        .ok_or(ModelError::Data("truncated .npy header".into()))?;
    let header =
        std::str::from_utf8(header).map_err(|_| ModelError::Data("bad .npy header".into()))?;
    let field = |name: &str| -> Result<&str, ModelError> {
        let key = format!("'{name}':");
        let at = header
            .find(&key)
            .ok_or(ModelError::Data(format!(".npy header lacks {name}")))?
            + key.len();
        Ok(header[at..].trim_start())
    };
    let descr = field("descr")?;
    let descr = descr.trim_start_matches('\'');
    let descr = &descr[..descr
        .find('\'')
        .ok_or(ModelError::Data("bad descr".into()))?];
    if field("fortran_order")?.starts_with("True") {
        return Err(ModelError::Data(
            "Fortran-order arrays are not supported; save with C order".into(),
        ));
    }
    let shape_text = field("shape")?;
    let shape_text = shape_text
        .get(
            1..shape_text
                .find(')')
                .ok_or(ModelError::Data("bad shape".into()))?,
        )
        .ok_or(ModelError::Data("bad shape".into()))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| ModelError::Data(format!("bad shape entry {s:?}")))
        })
        .collect::<Result<_, _>>()?;
    let (rows, cols) = match shape.as_slice() {
        [n] => (*n, 1),
        [n, m] => (*n, *m),
        other => {
            return Err(ModelError::Data(format!(
                "expected 1 or 2 dimensions, found {}",
                other.len()
            )))
        }
    };
    let count = rows
        .checked_mul(cols)
        .ok_or(ModelError::Data("shape overflows".into()))?;
    let (width, decode): (usize, fn(&[u8]) -> f32) = match descr {
        "<f4" => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        "<f8" => (8, |b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        "<i4" => (4, |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32),
        "<i8" => (8, |b| {
            i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        other => {
            return Err(ModelError::Data(format!(
                "unsupported dtype {other}: use float32, float64, int32 or int64"
            )))
        }
    };
    count
        .checked_mul(width)
        .ok_or(ModelError::Data("shape overflows".into()))?;
    Ok(NpyHeader {
        rows,
        cols,
        count,
        width,
        decode,
    })
}

/// Writes a 2-D f32 `.npy` (version 1.0).
pub fn write_npy(path: &Path, m: &Matrix) -> Result<(), ModelError> {
    write_npy_tensor(path, "matrix", &m.tensor)
}

/// Reads JSONL rows: each line an array of numbers (or an object whose
/// `input` field is one).
pub fn read_jsonl_rows(path: &Path) -> Result<Matrix, ModelError> {
    // Counted first, so the matrix is allocated once at its size.
    let total = count_jsonl_rows(path)? as usize;
    let file = std::fs::File::open(path)
        .map_err(|e| ModelError::Data(format!("open {}: {e}", path.display())))?;
    let mut m: Option<Matrix> = None;
    let mut rows = 0;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| ModelError::Data(format!("read {}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| ModelError::Data(format!("{} line {}: {e}", path.display(), n + 1)))?;
        let arr = match &value {
            serde_json::Value::Array(a) => a,
            serde_json::Value::Object(o) => {
                o.get("input")
                    .and_then(|v| v.as_array())
                    .ok_or(ModelError::Data(format!(
                        "{} line {}: expected an array or {{\"input\": [...]}}",
                        path.display(),
                        n + 1
                    )))?
            }
            _ => {
                return Err(ModelError::Data(format!(
                    "{} line {}: expected an array of numbers",
                    path.display(),
                    n + 1
                )))
            }
        };
        let row: Vec<f32> = arr
            .iter()
            .map(|v| {
                v.as_f64().map(|x| x as f32).ok_or(ModelError::Data(format!(
                    "{} line {}: not a number: {v}",
                    path.display(),
                    n + 1
                )))
            })
            .collect::<Result<_, _>>()?;
        let m = match &mut m {
            Some(m) => m,
            None => m.insert(Matrix::zeros(total, row.len())?),
        };
        if m.cols != row.len() {
            return Err(ModelError::Data(format!(
                "{} line {}: {} values, earlier rows have {}",
                path.display(),
                n + 1,
                row.len(),
                m.cols
            )));
        }
        if rows >= total {
            return Err(changed(path));
        }
        let cols = m.cols;
        m.fill(|values| values[rows * cols..(rows + 1) * cols].copy_from_slice(&row));
        rows += 1;
    }
    if rows != total {
        return Err(changed(path));
    }
    match m {
        Some(m) => Ok(m),
        None => Matrix::zeros(0, 0),
    }
}

/// The inputs of a model that takes several, from JSONL objects with one
/// field per input (`{"a": [1, 2], "b": 3}` per row), in the model's order.
pub fn read_named_inputs(
    path: &Path,
    inputs: &[super::onnx::Io],
) -> Result<Vec<tract_onnx::prelude::Tensor>, ModelError> {
    if !matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl" | "json")
    ) {
        return Err(ModelError::Data(format!(
            "the model takes {} inputs ({}): give them as JSONL objects with one field per input",
            inputs.len(),
            inputs
                .iter()
                .map(|i| i.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let file = std::fs::File::open(path)
        .map_err(|e| ModelError::Data(format!("open {}: {e}", path.display())))?;
    let mut columns: Vec<(Vec<f32>, Option<usize>)> =
        inputs.iter().map(|_| (Vec::new(), None)).collect();
    let mut rows = 0;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| ModelError::Data(format!("read {}: {e}", path.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let at =
            |what: String| ModelError::Data(format!("{} line {}: {what}", path.display(), n + 1));
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
        let obj = value
            .as_object()
            .ok_or_else(|| at("expected an object with one field per model input".into()))?;
        for (io, (data, width)) in inputs.iter().zip(columns.iter_mut()) {
            let v = obj.get(&io.name).ok_or_else(|| {
                at(format!(
                    "no field {:?} (the model's inputs are {})",
                    io.name,
                    inputs
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            let before = data.len();
            match v {
                serde_json::Value::Array(a) => {
                    for x in a {
                        data.push(
                            x.as_f64()
                                .ok_or_else(|| at(format!("{}: not a number: {x}", io.name)))?
                                as f32,
                        );
                    }
                }
                x => data.push(
                    x.as_f64()
                        .ok_or_else(|| at(format!("{}: not a number: {x}", io.name)))?
                        as f32,
                ),
            }
            let got = data.len() - before;
            match width {
                None => *width = Some(got),
                Some(w) if *w != got => {
                    return Err(at(format!(
                        "{}: {got} values, earlier rows have {w}",
                        io.name
                    )))
                }
                _ => {}
            }
        }
        rows += 1;
    }
    inputs
        .iter()
        .zip(columns)
        .map(|(io, (data, width))| {
            super::engine::input_tensor(Matrix::new(rows, width.unwrap_or(0), data)?, io)
        })
        .collect()
}

/// Writes each output of an inference: to `output` itself when there is
/// one, else to `<stem>.<output name>.<ext>` beside it, one file each.
pub fn write_outputs(
    dir: &Path,
    output: &str,
    names: &[String],
    ys: &[tract_onnx::prelude::Tensor],
) -> Result<Vec<coop_core::OutputFile>, ModelError> {
    let (stem, ext) = output.rsplit_once('.').unwrap_or((output, "npy"));
    names
        .iter()
        .zip(ys)
        .map(|(name, y)| {
            let rel = if names.len() == 1 {
                output.to_string()
            } else {
                let safe: String = name
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                format!("{stem}.{safe}.{ext}")
            };
            let path = dir.join(&rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| ModelError::Data(format!("create {}: {e}", parent.display())))?;
            }
            if ext == "npy" {
                write_npy_tensor(&path, name, y)?;
            } else {
                write_jsonl_tensor(&path, name, y)?;
            }
            Ok(coop_core::OutputFile {
                name: name.clone(),
                path: rel,
                sha256: super::artifact::sha256_file(&path)?,
            })
        })
        .collect()
}

/// Writes a tensor as `.npy` in its own element type and shape.
pub fn write_npy_tensor(
    path: &Path,
    name: &str,
    y: &tract_onnx::prelude::Tensor,
) -> Result<(), ModelError> {
    use tract_onnx::prelude::DatumType;
    let descr = match y.datum_type() {
        DatumType::F32 => "<f4",
        DatumType::F64 => "<f8",
        DatumType::I32 => "<i4",
        DatumType::I64 => "<i8",
        other => {
            return Err(ModelError::Data(format!(
            "output {name:?} holds {other:?} values, which .npy cannot: write it to a .jsonl file"
        )))
        }
    };
    let shape = match y.shape() {
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let file = std::fs::File::create(path)
        .map_err(|e| ModelError::Data(format!("create {}: {e}", path.display())))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e: std::io::Error| ModelError::Data(format!("write {}: {e}", path.display()));
    w.write_all(b"\x93NUMPY\x01\x00").map_err(io)?;
    w.write_all(&(header.len() as u16).to_le_bytes())
        .map_err(io)?;
    w.write_all(header.as_bytes()).map_err(io)?;
    // The tensor's bytes are its values in native order; every target Coop
    // builds for is little-endian, as '<' says.
    w.write_all(y.as_bytes()).map_err(io)?;
    w.flush().map_err(io)
}

/// Writes a tensor as JSONL: one line per row, a value (1-D) or an array,
/// straight from the tensor's values.
pub fn write_jsonl_tensor(
    path: &Path,
    name: &str,
    y: &tract_onnx::prelude::Tensor,
) -> Result<(), ModelError> {
    use tract_onnx::prelude::{Datum, DatumType, TractError};
    fn rows<T: Datum + serde::Serialize>(
        w: &mut impl Write,
        y: &tract_onnx::prelude::Tensor,
    ) -> Result<(), String> {
        let values = super::engine::values::<T>(y).map_err(|e: TractError| e.to_string())?;
        let width: usize = y.shape().iter().skip(1).product();
        for row in values.chunks(width.max(1)) {
            if y.rank() == 1 {
                serde_json::to_writer(&mut *w, &row[0])
            } else {
                serde_json::to_writer(&mut *w, row)
            }
            .map_err(|e| e.to_string())?;
            w.write_all(b"\n").map_err(|e| e.to_string())?;
        }
        Ok(())
    }
    let file = std::fs::File::create(path)
        .map_err(|e| ModelError::Data(format!("create {}: {e}", path.display())))?;
    let mut w = std::io::BufWriter::new(file);
    match y.datum_type() {
        DatumType::F32 => rows::<f32>(&mut w, y),
        DatumType::F64 => rows::<f64>(&mut w, y),
        DatumType::I32 => rows::<i32>(&mut w, y),
        DatumType::I64 => rows::<i64>(&mut w, y),
        DatumType::String => rows::<String>(&mut w, y),
        other => Err(format!("{other:?} values cannot be written")),
    }
    .and_then(|()| w.flush().map_err(|e| e.to_string()))
    .map_err(|e| ModelError::Data(format!("output {name:?} to {}: {e}", path.display())))
}

/// Reads the input of an inference job by its extension.
pub fn read_input(path: &Path) -> Result<Matrix, ModelError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => read_npy(path),
        Some("jsonl") | Some("json") => read_jsonl_rows(path),
        _ => Err(ModelError::Data(format!(
            "{}: input must be .npy or .jsonl",
            path.display()
        ))),
    }
}

/// A labelled dataset: features in column order, labels as numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    pub features: Matrix,
    pub labels: Vec<f64>,
    pub feature_names: Vec<String>,
    /// The file's row the first of these rows is (0 unless a shard).
    pub first_row: u64,
    /// Every row in the file (those read, unless a shard).
    pub file_rows: u64,
}

/// Shard `index` of `of`: the rows `ShardPart::range` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub of: u32,
}

/// Which columns are features: those named, in that order; or every
/// column but the label and those dropped, in the file's order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Columns<'a> {
    pub features: &'a [String],
    pub drop: &'a [String],
}

impl Columns<'_> {
    /// The positions in `names` (every column of the file) of the features.
    fn choose(&self, names: &[String], label: &str, path: &Path) -> Result<Vec<usize>, ModelError> {
        let find = |wanted: &String| {
            names.iter().position(|n| n == wanted).ok_or_else(|| {
                ModelError::Data(format!(
                    "{}: no column {wanted:?} (columns: {})",
                    path.display(),
                    names.join(", ")
                ))
            })
        };
        if !self.features.is_empty() {
            return self.features.iter().map(find).collect();
        }
        for d in self.drop {
            find(d)?;
        }
        Ok((0..names.len())
            .filter(|i| names[*i] != label && !self.drop.contains(&names[*i]))
            .collect())
    }
}

/// Reads CSV (with a header) or JSONL objects; the features are the columns
/// `columns` chooses (every column but the label by default), numeric. A
/// missing or non-numeric label fails with the row.
pub fn read_dataset(path: &Path, label: &str, columns: &Columns) -> Result<Dataset, ModelError> {
    read_dataset_rows(path, label, columns, None)
}

/// The same, keeping only a shard's rows: the rows are counted first and
/// only the shard's are parsed and held, so a shard needs memory for its
/// own rows only.
pub fn read_dataset_rows(
    path: &Path,
    label: &str,
    columns: &Columns,
    shard: Option<Shard>,
) -> Result<Dataset, ModelError> {
    let csv = match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => true,
        Some("jsonl") | Some("json") => false,
        _ => {
            return Err(ModelError::Data(format!(
                "{}: dataset must be .csv or .jsonl",
                path.display()
            )))
        }
    };
    // Counted first, so the matrix is allocated once at its size: growing
    // it row by row would hold up to twice the features while it grows.
    let total = if csv {
        count_csv_rows(path)?
    } else {
        count_jsonl_rows(path)?
    };
    let (start, end) = match shard {
        Some(s) => coop_core::result::ShardPart::range(s.index, s.of, total),
        None => (0, total),
    };
    let rows = (start as usize, end as usize);
    let mut dataset = if csv {
        read_csv_dataset(path, label, columns, rows)?
    } else {
        read_jsonl_dataset(path, label, columns, rows)?
    };
    dataset.first_row = start;
    dataset.file_rows = total;
    Ok(dataset)
}

fn count_csv_rows(path: &Path) -> Result<u64, ModelError> {
    let mut reader = csv::Reader::from_path(path)
        .map_err(|e| ModelError::Data(format!("open {}: {e}", path.display())))?;
    let mut record = csv::ByteRecord::new();
    let mut n = 0;
    while reader
        .read_byte_record(&mut record)
        .map_err(|e| ModelError::Data(format!("{} row {}: {e}", path.display(), n + 1)))?
    {
        n += 1;
    }
    Ok(n)
}

fn count_jsonl_rows(path: &Path) -> Result<u64, ModelError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ModelError::Data(format!("open {}: {e}", path.display())))?;
    let mut n = 0;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.map_err(|e| ModelError::Data(e.to_string()))?;
        if !line.trim().is_empty() {
            n += 1;
        }
    }
    Ok(n)
}

/// Only the rows `[start, end)` are kept.
type RowRange = (usize, usize);

fn read_csv_dataset(
    path: &Path,
    label: &str,
    columns: &Columns,
    range: RowRange,
) -> Result<Dataset, ModelError> {
    let mut reader = csv::Reader::from_path(path)
        .map_err(|e| ModelError::Data(format!("open {}: {e}", path.display())))?;
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| ModelError::Data(format!("{}: {e}", path.display())))?
        .iter()
        .map(str::to_string)
        .collect();
    let label_at = headers
        .iter()
        .position(|h| h == label)
        .ok_or(ModelError::Data(format!(
            "{}: no label column {label:?} (columns: {})",
            path.display(),
            headers.join(", ")
        )))?;
    let chosen = columns.choose(&headers, label, path)?;
    let feature_names: Vec<String> = chosen.iter().map(|i| headers[*i].clone()).collect();
    let (start, end) = range;
    let mut features = Matrix::zeros(end - start, chosen.len())?;
    let mut labels = Vec::with_capacity(end - start);
    for (n, record) in reader.records().enumerate() {
        if n >= end {
            break;
        }
        if n < start {
            continue;
        }
        let record = record
            .map_err(|e| ModelError::Data(format!("{} row {}: {e}", path.display(), n + 1)))?;
        let cell = |i: usize| record.get(i).map(str::trim).unwrap_or("");
        let l = cell(label_at);
        if l.is_empty() {
            return Err(ModelError::Data(format!(
                "{} row {}: missing label {label:?}",
                path.display(),
                n + 1
            )));
        }
        labels.push(l.parse::<f64>().map_err(|_| {
            ModelError::Data(format!(
                "{} row {}: label {l:?} is not a number",
                path.display(),
                n + 1
            ))
        })?);
        let r = n - start;
        let cols = chosen.len();
        features.fill(|values| {
            for (slot, &i) in values[r * cols..(r + 1) * cols].iter_mut().zip(&chosen) {
                let v = cell(i);
                *slot = v.parse::<f32>().map_err(|_| {
                    ModelError::Data(format!(
                        "{} row {}: column {} is {v:?}, not a number",
                        path.display(),
                        n + 1,
                        headers[i]
                    ))
                })?;
            }
            Ok::<_, ModelError>(())
        })?;
    }
    if labels.len() != end - start {
        return Err(changed(path));
    }
    Ok(Dataset {
        features,
        file_rows: labels.len() as u64,
        labels,
        feature_names,
        first_row: 0,
    })
}

/// A JSON object with its keys in file order: a dataset's features are the
/// columns as the file gives them, never sorted (a sorted `px10` before
/// `px2` silently feeds a model the wrong features).
struct OrderedObject(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedObject, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(OrderedObject(entries))
            }
        }
        d.deserialize_map(Visit)
    }
}

fn read_jsonl_dataset(
    path: &Path,
    label: &str,
    columns: &Columns,
    range: RowRange,
) -> Result<Dataset, ModelError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ModelError::Data(format!("open {}: {e}", path.display())))?;
    // Every column's count, and the features' names, from the first row.
    let mut names: Option<(usize, Vec<String>)> = None;
    let mut features: Option<Matrix> = None;
    let mut labels = Vec::with_capacity(range.1 - range.0);
    let mut row = 0;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| ModelError::Data(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let this = row;
        row += 1;
        // Outside a shard's rows, only the first row is read: it names the columns.
        let keep = (range.0..range.1).contains(&this);
        if this >= range.1 {
            break;
        }
        if !keep && names.is_some() {
            continue;
        }
        let OrderedObject(entries) = serde_json::from_str(&line)
            .map_err(|e| ModelError::Data(format!("{} line {}: {e}", path.display(), n + 1)))?;
        let obj: BTreeMap<&str, &serde_json::Value> =
            entries.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let l = obj.get(label).and_then(|v| v.as_f64());
        // The first row fixes the columns and their order; later rows are
        // read by name, so their own key order does not matter.
        if names.is_none() {
            let all: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
            let chosen = columns.choose(&all, label, path)?;
            features = Some(Matrix::zeros(range.1 - range.0, chosen.len())?);
            names = Some((
                all.len(),
                chosen.into_iter().map(|i| all[i].clone()).collect(),
            ));
        }
        if !keep {
            continue;
        }
        let l = l.ok_or(ModelError::Data(format!(
            "{} line {}: missing or non-numeric label {label:?}",
            path.display(),
            n + 1
        )))?;
        labels.push(l);
        let Some((width, names)) = names.as_ref() else {
            continue;
        };
        if obj.len() != *width || names.iter().any(|k| !obj.contains_key(k.as_str())) {
            return Err(ModelError::Data(format!(
                "{} line {}: columns differ from the first row",
                path.display(),
                n + 1
            )));
        }
        let Some(features) = features.as_mut() else {
            continue;
        };
        let r = this - range.0;
        let cols = names.len();
        features.fill(|values| {
            for (slot, k) in values[r * cols..(r + 1) * cols].iter_mut().zip(names) {
                *slot = obj[k.as_str()].as_f64().ok_or(ModelError::Data(format!(
                    "{} line {}: {k} is not a number",
                    path.display(),
                    n + 1
                )))? as f32;
            }
            Ok::<_, ModelError>(())
        })?;
    }
    if labels.len() != range.1 - range.0 {
        return Err(changed(path));
    }
    let feature_names = names.map(|n| n.1).unwrap_or_default();
    let features = match features {
        Some(f) => f,
        None => Matrix::zeros(0, 0)?,
    };
    Ok(Dataset {
        features,
        file_rows: labels.len() as u64,
        labels,
        feature_names,
        first_row: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns keep the file's order (px0, px1, ..., px10, px11), not a
    /// sorted one (px0, px1, px10, px11, px2, ...), and later rows are read
    /// by name whatever their own key order.
    #[test]
    fn jsonl_features_keep_the_files_column_order() {
        let dir = std::env::temp_dir().join(format!("coop-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("d.jsonl");
        let first: Vec<String> = (0..12).map(|i| format!("\"px{i}\": {i}")).collect();
        let second: Vec<String> = (0..12)
            .rev()
            .map(|i| format!("\"px{i}\": {}", i * 10))
            .collect();
        std::fs::write(
            &p,
            format!(
                "{{{}, \"label\": 1}}\n{{\"label\": 0, {}}}\n",
                first.join(", "),
                second.join(", ")
            ),
        )
        .unwrap();
        let d = read_dataset(&p, "label", &Columns::default()).unwrap();
        let expected: Vec<String> = (0..12).map(|i| format!("px{i}")).collect();
        assert_eq!(d.feature_names, expected);
        assert_eq!(
            d.features.row(0),
            (0..12).map(|i| i as f32).collect::<Vec<_>>().as_slice()
        );
        assert_eq!(
            d.features.row(1),
            (0..12)
                .map(|i| (i * 10) as f32)
                .collect::<Vec<_>>()
                .as_slice()
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn npy_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let m = Matrix::new(2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.5, -6.0]).unwrap();
        write_npy(&p, &m).unwrap();
        assert_eq!(read_npy(&p).unwrap(), m);
        assert!(parse_npy(b"not numpy at all")
            .unwrap_err()
            .to_string()
            .contains("magic"));
        // Read from the file as from memory, in every dtype and header version.
        let npy = |version: u8, descr: &str, shape: &str, body: &[u8]| {
            let header =
                format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
            let mut bytes = b"\x93NUMPY".to_vec();
            bytes.extend_from_slice(&[version, 0]);
            if version == 1 {
                bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
            } else {
                bytes.extend_from_slice(&(header.len() as u32).to_le_bytes());
            }
            bytes.extend_from_slice(header.as_bytes());
            bytes.extend_from_slice(body);
            std::fs::write(&p, &bytes).unwrap();
            let from_file = read_npy(&p);
            match (&from_file, parse_npy(&bytes)) {
                (Ok(a), Ok(b)) => assert_eq!(*a, b),
                (Err(a), Err(b)) => assert!(a.to_string().ends_with(&b.to_string()), "{a} / {b}"),
                (a, b) => panic!("{descr} {shape}: {a:?} from the file, {b:?} from memory"),
            }
            from_file
        };
        let f64s: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let i32s: Vec<u8> = [7i32, -3, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            npy(1, "<f8", "(2,)", &f64s).unwrap().values(),
            vec![1.5, -2.0]
        );
        let m = npy(2, "<i4", "(1, 3)", &i32s).unwrap();
        assert_eq!((m.rows, m.cols, m.values()), (1, 3, &[7.0, -3.0, 0.0][..]));
        // A shape the file does not hold is refused before anything is
        // allocated for it; one that overflows too.
        for shape in ["(1000000000000, 64)", "(3, 2)", "(18446744073709551615, 2)"] {
            let err = npy(1, "<i4", shape, &i32s).unwrap_err().to_string();
            assert!(
                err.contains("truncated") || err.contains("overflows"),
                "{shape}: {err}"
            );
        }
        assert!(npy(1, "<u2", "(1,)", &[0, 0]).is_err());
    }

    #[test]
    fn csv_dataset_with_label_and_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        std::fs::write(&p, "a,label,b\n1,0,2\n3,1,4\n").unwrap();
        let d = read_dataset(&p, "label", &Columns::default()).unwrap();
        assert_eq!(d.features.values(), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(d.labels, vec![0.0, 1.0]);
        assert_eq!(d.feature_names, vec!["a", "b"]);
        std::fs::write(&p, "a,label\n1,\n").unwrap();
        assert!(read_dataset(&p, "label", &Columns::default())
            .unwrap_err()
            .to_string()
            .contains("missing label"));
        assert!(read_dataset(&p, "y", &Columns::default())
            .unwrap_err()
            .to_string()
            .contains("no label column"));
    }

    #[test]
    fn jsonl_rows_and_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        std::fs::write(&p, "[1, 2]\n{\"input\": [3, 4]}\n").unwrap();
        assert_eq!(read_jsonl_rows(&p).unwrap().values(), [1.0, 2.0, 3.0, 4.0]);
        std::fs::write(&p, "[1, 2]\n[3]\n").unwrap();
        assert!(read_jsonl_rows(&p)
            .unwrap_err()
            .to_string()
            .contains("earlier rows have 2"));
        let d = dir.path().join("d.jsonl");
        std::fs::write(
            &d,
            "{\"x\": 1, \"y\": 2, \"label\": 1}\n{\"x\": 3, \"y\": 4, \"label\": 0}\n",
        )
        .unwrap();
        let ds = read_dataset(&d, "label", &Columns::default()).unwrap();
        assert_eq!(
            (ds.features.values().to_vec(), ds.labels),
            (vec![1.0, 2.0, 3.0, 4.0], vec![1.0, 0.0])
        );
    }
}
