//! Evaluation metrics and ensembles, computed on predictions.

use std::collections::BTreeMap;

/// Fraction of predictions equal to the label.
pub fn accuracy(pred: &[f64], labels: &[f64]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    pred.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len() as f64
}

/// Unweighted mean over classes (those in labels or predictions) of F1.
pub fn macro_f1(pred: &[f64], labels: &[f64]) -> f64 {
    let mut classes: Vec<i64> = labels.iter().chain(pred).map(|c| *c as i64).collect();
    classes.sort_unstable();
    classes.dedup();
    if classes.is_empty() {
        return 0.0;
    }
    let mut total = 0.0;
    for c in &classes {
        let c = *c as f64;
        let tp = pred
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p == c && **l == c)
            .count() as f64;
        let fp = pred
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p == c && **l != c)
            .count() as f64;
        let fn_ = pred
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p != c && **l == c)
            .count() as f64;
        let denom = 2.0 * tp + fp + fn_;
        total += if denom == 0.0 { 0.0 } else { 2.0 * tp / denom };
    }
    total / classes.len() as f64
}

pub fn mse(pred: &[f64], labels: &[f64]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    pred.iter()
        .zip(labels)
        .map(|(p, l)| (p - l).powi(2))
        .sum::<f64>()
        / labels.len() as f64
}

pub fn mae(pred: &[f64], labels: &[f64]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    pred.iter()
        .zip(labels)
        .map(|(p, l)| (p - l).abs())
        .sum::<f64>()
        / labels.len() as f64
}

pub fn compute(names: &[String], pred: &[f64], labels: &[f64]) -> BTreeMap<String, f64> {
    names
        .iter()
        .filter_map(|n| {
            let v = match n.as_str() {
                "accuracy" => accuracy(pred, labels),
                "macro_f1" => macro_f1(pred, labels),
                "mse" => mse(pred, labels),
                "mae" => mae(pred, labels),
                _ => return None,
            };
            Some((n.clone(), v))
        })
        .collect()
}

/// Majority vote per row; ties go to the smallest class.
pub fn majority_vote(predictions: &[Vec<f64>]) -> Vec<f64> {
    let rows = predictions.first().map(Vec::len).unwrap_or(0);
    (0..rows)
        .map(|i| {
            let mut votes: BTreeMap<i64, usize> = BTreeMap::new();
            for p in predictions {
                *votes.entry(p[i] as i64).or_default() += 1;
            }
            let best = votes.values().copied().max().unwrap_or(0);
            votes
                .into_iter()
                .find(|(_, n)| *n == best)
                .map(|(c, _)| c as f64)
                .unwrap_or(0.0)
        })
        .collect()
}

/// Mean per row.
pub fn mean(predictions: &[Vec<f64>]) -> Vec<f64> {
    let rows = predictions.first().map(Vec::len).unwrap_or(0);
    let n = predictions.len().max(1) as f64;
    (0..rows)
        .map(|i| predictions.iter().map(|p| p[i]).sum::<f64>() / n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_metrics() {
        let labels = [0.0, 1.0, 1.0, 2.0];
        let pred = [0.0, 1.0, 0.0, 2.0];
        assert_eq!(accuracy(&pred, &labels), 0.75);
        // class 0: tp1 fp1 fn0 -> 2/3; class 1: tp1 fp0 fn1 -> 2/3; class 2: 1.
        assert!((macro_f1(&pred, &labels) - (2.0 / 3.0 + 2.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
        assert_eq!(mse(&[1.0, 3.0], &[2.0, 1.0]), 2.5);
        assert_eq!(mae(&[1.0, 3.0], &[2.0, 1.0]), 1.5);
    }

    #[test]
    fn ensembles() {
        let votes = vec![
            vec![0.0, 1.0, 2.0],
            vec![0.0, 2.0, 1.0],
            vec![1.0, 2.0, 0.0],
        ];
        assert_eq!(majority_vote(&votes), vec![0.0, 2.0, 0.0]);
        assert_eq!(mean(&[vec![1.0, 2.0], vec![3.0, 6.0]]), vec![2.0, 4.0]);
    }
}
