//! Ensembles of predictions (the metrics are coop-core's `Tally`).

use std::collections::BTreeMap;

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
