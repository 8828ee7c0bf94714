//! The file formats users have: `.npy` tensors, JSONL rows, and CSV or
//! JSONL datasets with a label column.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use super::error::ModelError;

/// A 2-D matrix of f32, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Reads a `.npy` file of f32, f64, i32 or i64 (little-endian, C order)
/// with 1 or 2 dimensions; a 1-D array is one column.
pub fn read_npy(path: &Path) -> Result<Matrix, ModelError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ModelError::Data(format!("read {}: {e}", path.display())))?;
    parse_npy(&bytes).map_err(|e| ModelError::Data(format!("{}: {e}", path.display())))
}

pub fn parse_npy(bytes: &[u8]) -> Result<Matrix, ModelError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(ModelError::Data("not a .npy file (bad magic)".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(ModelError::Data(format!("unsupported .npy version {v}"))),
    };
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
    let shape_text = &shape_text[1..shape_text
        .find(')')
        .ok_or(ModelError::Data("bad shape".into()))?];
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
    let body = &bytes[start + header_len..];
    let count = rows
        .checked_mul(cols)
        .ok_or(ModelError::Data("shape overflows".into()))?;
    let data: Vec<f32> = match descr {
        "<f4" => decode(body, count, 4, |b| {
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        })?,
        "<f8" => decode(body, count, 8, |b| {
            f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32
        })?,
        "<i4" => decode(body, count, 4, |b| {
            i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32
        })?,
        "<i8" => decode(body, count, 8, |b| {
            i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32
        })?,
        other => {
            return Err(ModelError::Data(format!(
                "unsupported dtype {other}: use float32, float64, int32 or int64"
            )))
        }
    };
    Ok(Matrix { rows, cols, data })
}

fn decode(
    body: &[u8],
    count: usize,
    width: usize,
    f: impl Fn(&[u8]) -> f32,
) -> Result<Vec<f32>, ModelError> {
    if body.len() < count * width {
        return Err(ModelError::Data(format!(
            "truncated .npy data: {} bytes for {count} values",
            body.len()
        )));
    }
    Ok(body[..count * width].chunks_exact(width).map(f).collect())
}

/// Writes a 2-D f32 `.npy` (version 1.0).
pub fn write_npy(path: &Path, m: &Matrix) -> Result<(), ModelError> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        m.rows, m.cols
    );
    // Pad so the data starts on a 64-byte boundary, ending in a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + m.data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in &m.data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, out)
        .map_err(|e| ModelError::Data(format!("write {}: {e}", path.display())))
}

/// Reads JSONL rows: each line an array of numbers (or an object whose
/// `input` field is one).
pub fn read_jsonl_rows(path: &Path) -> Result<Matrix, ModelError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ModelError::Data(format!("open {}: {e}", path.display())))?;
    let mut data = Vec::new();
    let mut cols = None;
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
        match cols {
            None => cols = Some(row.len()),
            Some(c) if c != row.len() => {
                return Err(ModelError::Data(format!(
                    "{} line {}: {} values, earlier rows have {c}",
                    path.display(),
                    n + 1,
                    row.len()
                )))
            }
            _ => {}
        }
        data.extend(row);
        rows += 1;
    }
    Ok(Matrix {
        rows,
        cols: cols.unwrap_or(0),
        data,
    })
}

pub fn write_jsonl(path: &Path, m: &Matrix) -> Result<(), ModelError> {
    let file = std::fs::File::create(path)
        .map_err(|e| ModelError::Data(format!("create {}: {e}", path.display())))?;
    let mut w = std::io::BufWriter::new(file);
    for i in 0..m.rows {
        serde_json::to_writer(&mut w, m.row(i)).map_err(|e| ModelError::Data(e.to_string()))?;
        w.write_all(b"\n")
            .map_err(|e| ModelError::Data(e.to_string()))?;
    }
    w.flush().map_err(|e| ModelError::Data(e.to_string()))
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
}

/// Reads CSV (with a header) or JSONL objects; every column but the label
/// is a numeric feature. A missing or non-numeric label fails with the row.
pub fn read_dataset(path: &Path, label: &str) -> Result<Dataset, ModelError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => read_csv_dataset(path, label),
        Some("jsonl") | Some("json") => read_jsonl_dataset(path, label),
        _ => Err(ModelError::Data(format!(
            "{}: dataset must be .csv or .jsonl",
            path.display()
        ))),
    }
}

fn read_csv_dataset(path: &Path, label: &str) -> Result<Dataset, ModelError> {
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
    let feature_names: Vec<String> = headers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != label_at)
        .map(|(_, h)| h.clone())
        .collect();
    let mut data = Vec::new();
    let mut labels = Vec::new();
    for (n, record) in reader.records().enumerate() {
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
        for i in (0..headers.len()).filter(|i| *i != label_at) {
            let v = cell(i);
            data.push(v.parse::<f32>().map_err(|_| {
                ModelError::Data(format!(
                    "{} row {}: column {} is {v:?}, not a number",
                    path.display(),
                    n + 1,
                    headers[i]
                ))
            })?);
        }
    }
    Ok(Dataset {
        features: Matrix {
            rows: labels.len(),
            cols: feature_names.len(),
            data,
        },
        labels,
        feature_names,
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

fn read_jsonl_dataset(path: &Path, label: &str) -> Result<Dataset, ModelError> {
    let file = std::fs::File::open(path)
        .map_err(|e| ModelError::Data(format!("open {}: {e}", path.display())))?;
    let mut names: Option<Vec<String>> = None;
    let mut data = Vec::new();
    let mut labels = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| ModelError::Data(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let OrderedObject(entries) = serde_json::from_str(&line)
            .map_err(|e| ModelError::Data(format!("{} line {}: {e}", path.display(), n + 1)))?;
        let obj: BTreeMap<&str, &serde_json::Value> =
            entries.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let l = obj
            .get(label)
            .and_then(|v| v.as_f64())
            .ok_or(ModelError::Data(format!(
                "{} line {}: missing or non-numeric label {label:?}",
                path.display(),
                n + 1
            )))?;
        labels.push(l);
        // The first row fixes the columns and their order; later rows are
        // read by name, so their own key order does not matter.
        let names = names.get_or_insert_with(|| {
            entries
                .iter()
                .map(|(k, _)| k.clone())
                .filter(|k| k != label)
                .collect()
        });
        if obj.len() != names.len() + 1 || names.iter().any(|k| !obj.contains_key(k.as_str())) {
            return Err(ModelError::Data(format!(
                "{} line {}: columns differ from the first row",
                path.display(),
                n + 1
            )));
        }
        for k in names.iter() {
            data.push(obj[k.as_str()].as_f64().ok_or(ModelError::Data(format!(
                "{} line {}: {k} is not a number",
                path.display(),
                n + 1
            )))? as f32);
        }
    }
    let feature_names = names.unwrap_or_default();
    Ok(Dataset {
        features: Matrix {
            rows: labels.len(),
            cols: feature_names.len(),
            data,
        },
        labels,
        feature_names,
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
        let d = read_dataset(&p, "label").unwrap();
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
        let m = Matrix {
            rows: 2,
            cols: 3,
            data: vec![1.0, 2.0, 3.0, 4.0, 5.5, -6.0],
        };
        write_npy(&p, &m).unwrap();
        assert_eq!(read_npy(&p).unwrap(), m);
        assert!(parse_npy(b"not numpy at all")
            .unwrap_err()
            .to_string()
            .contains("magic"));
    }

    #[test]
    fn csv_dataset_with_label_and_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        std::fs::write(&p, "a,label,b\n1,0,2\n3,1,4\n").unwrap();
        let d = read_dataset(&p, "label").unwrap();
        assert_eq!(d.features.data, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(d.labels, vec![0.0, 1.0]);
        assert_eq!(d.feature_names, vec!["a", "b"]);
        std::fs::write(&p, "a,label\n1,\n").unwrap();
        assert!(read_dataset(&p, "label")
            .unwrap_err()
            .to_string()
            .contains("missing label"));
        assert!(read_dataset(&p, "y")
            .unwrap_err()
            .to_string()
            .contains("no label column"));
    }

    #[test]
    fn jsonl_rows_and_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        std::fs::write(&p, "[1, 2]\n{\"input\": [3, 4]}\n").unwrap();
        assert_eq!(read_jsonl_rows(&p).unwrap().data, vec![1.0, 2.0, 3.0, 4.0]);
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
        let ds = read_dataset(&d, "label").unwrap();
        assert_eq!(
            (ds.features.data, ds.labels),
            (vec![1.0, 2.0, 3.0, 4.0], vec![1.0, 0.0])
        );
    }
}
