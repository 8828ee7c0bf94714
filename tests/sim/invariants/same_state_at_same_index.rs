//! Replicas at the same applied index have the same state digest, at every
//! moment sampled and at the end.

use std::collections::BTreeMap;

use crate::history::History;

pub fn check(h: &History) -> Result<(), String> {
    let mut seen: BTreeMap<u64, (&str, &str)> = BTreeMap::new();
    for s in &h.samples {
        match seen.get(&s.applied) {
            Some((replica, digest)) if *digest != s.digest => {
                return Err(format!(
                    "at applied index {}: {} has {}, {} has {}",
                    s.applied, replica, digest, s.replica, s.digest
                ))
            }
            Some(_) => {}
            None => {
                seen.insert(s.applied, (&s.replica, &s.digest));
            }
        }
    }
    if let Some(first) = h.finals.first() {
        for f in &h.finals[1..] {
            if f.applied == first.applied && f.state.digest() != first.state.digest() {
                return Err(format!(
                    "at the end, {} and {} are both at {} with different states",
                    first.replica, f.replica, f.applied
                ));
            }
        }
    }
    Ok(())
}
