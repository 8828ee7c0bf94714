//! Fairness statistics over the members with demand: what the dashboard,
//! `coop top` and `coop share` show, computed once here.
//!
//! Jain's index (Jain, Chiu & Hawe 1984) is taken over each member's
//! `min(1, share / entitlement)`, with 1 for a member whose jobs all run (it
//! has all it asked for). So the index falls only when members that wait
//! are held below their entitlement, not when idle capacity is lent out.

use std::collections::BTreeMap;

use crate::fairshare::Shares;
use crate::ids::MemberId;

#[derive(Clone, Debug, PartialEq)]
pub struct Fairness {
    /// Jain's index over the members with demand; 1 when there are none.
    pub jain_index: f64,
    /// Per member with demand: dominant share / entitlement.
    pub share_to_entitlement: BTreeMap<MemberId, f64>,
    /// Per member with demand and a floor: min(1, dominant share / floor part).
    pub floor_attainment: BTreeMap<MemberId, f64>,
}

/// A member's term in Jain's index (see the module docs).
pub fn fairness_term(share_to_entitlement: f64, pending: usize) -> f64 {
    if pending == 0 {
        1.0
    } else {
        share_to_entitlement.min(1.0)
    }
}

/// Jain's index: (sum x)^2 / (n sum x^2); 1 when empty.
pub fn jain(terms: &[f64]) -> f64 {
    let sum: f64 = terms.iter().sum();
    let sq: f64 = terms.iter().map(|x| x * x).sum();
    if terms.is_empty() || sq == 0.0 {
        1.0
    } else {
        sum * sum / (terms.len() as f64 * sq)
    }
}

pub fn compute(shares: &Shares) -> Fairness {
    let mut terms = Vec::new();
    let mut share_to_entitlement = BTreeMap::new();
    let mut floor_attainment = BTreeMap::new();
    for s in shares.members.values() {
        if !(s.has_demand() && s.entitlement > 0.0) {
            continue;
        }
        let ratio = s.dominant_share / s.entitlement;
        share_to_entitlement.insert(s.member.clone(), ratio);
        terms.push(fairness_term(ratio, s.pending));
        if s.floor_part > 0.0 {
            floor_attainment.insert(s.member.clone(), (s.dominant_share / s.floor_part).min(1.0));
        }
    }
    Fairness {
        jain_index: jain(&terms),
        share_to_entitlement,
        floor_attainment,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_counts_only_members_held_below_their_entitlement() {
        // Everyone at or above entitlement, or with nothing waiting: fair.
        let terms = [
            fairness_term(3.0, 4),
            fairness_term(0.5, 0),
            fairness_term(1.0, 2),
        ];
        assert_eq!(jain(&terms), 1.0);
        // One waiting member at half its entitlement, one at all of it:
        // (0.5 + 1)^2 / (2 * (0.25 + 1)) = 0.9.
        let terms = [fairness_term(0.5, 3), fairness_term(1.0, 1)];
        assert!((jain(&terms) - 0.9).abs() < 1e-12);
        assert_eq!(jain(&[]), 1.0);
    }
}
