//! PUCT scoring, progressive widening and priors.
//!
//! Score of a node (as a parent to expand):
//!
//! ```text
//! score = Q + c · P · √N_parent / (1 + n)
//! ```
//!
//! with Q the best reward in the node's subtree, P its prior, N_parent its
//! parent's visits (the root uses its own), and n its visits. Every evaluated
//! node in the tree competes, not only leaves; progressive widening decides
//! which of them may take another child.
//!
//! **Progressive widening.** A node may get a new child while
//! `children < ceil(k · max(n, 1)^α)`, with [`Widening::DEFAULT`] = k 2, α ½.
//! A fresh leaf (n = 1) may take 2 children; a node whose children are all
//! leaves saturates at about 5 children (`ceil(2·√6) = 5`), and opens again
//! only as its subtree grows (n = 13 allows 8). So the tree deepens under its
//! good lines instead of fanning out at the root, while a strong inner node
//! is still re-expanded as evidence about it accumulates. α = ½ is the usual
//! choice in the widening literature (Couëtoux et al. 2011); k = 2 lets one
//! proposer batch of 4 land on a leaf and its parent be widened once more.
//!
//! **Priors.** When the proposer gives a weight for every candidate of a
//! batch (finite, non-negative, not all zero), the priors are those weights
//! normalised to sum 1 over the batch. Otherwise they are by rank in the
//! proposer's order: `P_r = (1/(r+1)) / H_m` for rank r of m candidates
//! (H_m the m-th harmonic number), so the first candidate gets the most
//! exploration and the batch sums to 1. Mixed batches (some weights missing)
//! use ranks, since half-given weights have no common scale.

use serde::{Deserialize, Serialize};

use super::tree::{Node, NodeId, Tree};

/// Progressive-widening constants: a node may take a child while `children < ceil(k·max(n,1)^α)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Widening {
    /// Scale k (> 0).
    pub k: f64,
    /// Exponent α in (0, 1].
    pub alpha: f64,
}

impl Default for Widening {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl Widening {
    /// k = 2, α = 0.5 (see the module docs for why).
    pub const DEFAULT: Widening = Widening { k: 2.0, alpha: 0.5 };

    /// How many children a node with `visits` visits may have.
    pub fn max_children(&self, visits: u32) -> usize {
        let n = f64::from(visits.max(1));
        let limit = (self.k * n.powf(self.alpha)).ceil();
        // At least one child, so a bad configuration can never freeze the search.
        if limit.is_finite() && limit >= 1.0 {
            limit.min(usize::MAX as f64) as usize
        } else {
            1
        }
    }

    /// True if `node` may take another child under this rule.
    pub fn allows(&self, node: &Node) -> bool {
        node.children.len() < self.max_children(node.visits)
    }

    /// True if k and α are finite and in range.
    pub fn is_valid(&self) -> bool {
        self.k.is_finite()
            && self.k > 0.0
            && self.alpha.is_finite()
            && self.alpha > 0.0
            && self.alpha <= 1.0
    }
}

/// The PUCT score `q + c·p·√parent_visits / (1 + visits)`.
pub fn puct_score(q: f64, prior: f64, parent_visits: u32, visits: u32, c_puct: f64) -> f64 {
    q + c_puct * prior * f64::from(parent_visits).sqrt() / (1.0 + f64::from(visits))
}

/// The PUCT score of node `id` in `tree` (the root uses its own visits as N_parent).
pub fn node_score(tree: &Tree, id: NodeId, c_puct: f64) -> Option<f64> {
    let node = tree.get(id)?;
    let parent_visits = match node.parent {
        Some(p) => tree.get(p)?.visits,
        None => node.visits,
    };
    Some(puct_score(
        node.best_reward_in_subtree,
        node.prior,
        parent_visits,
        node.visits,
        c_puct,
    ))
}

/// True if `node` may be selected for expansion: evaluated (not pending, not failed) and allowed by widening.
pub fn is_expandable(node: &Node, widening: &Widening) -> bool {
    node.is_evaluated() && widening.allows(node)
}

/// Rank priors for `m` candidates: `(1/(r+1)) / H_m`, summing to 1.
pub fn rank_priors(m: usize) -> Vec<f64> {
    let raw: Vec<f64> = (0..m).map(|r| 1.0 / (r as f64 + 1.0)).collect();
    let total: f64 = raw.iter().sum();
    raw.into_iter().map(|x| x / total).collect()
}

/// Priors for one proposer batch: the proposer's weights normalised when all are usable, else [`rank_priors`].
pub fn priors(proposed: &[Option<f64>]) -> Vec<f64> {
    let weights: Option<Vec<f64>> = proposed
        .iter()
        .map(|p| p.filter(|w| w.is_finite() && *w >= 0.0))
        .collect();
    if let Some(w) = weights {
        let total: f64 = w.iter().sum();
        if total.is_finite() && total > 0.0 {
            return w.into_iter().map(|x| x / total).collect();
        }
    }
    rank_priors(proposed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn puct_formula_values() {
        // 1.2 + 1.5 · 0.4 · √9 / (1 + 2) = 1.2 + 0.6
        assert!(close(puct_score(1.2, 0.4, 9, 2, 1.5), 1.8));
        // Unvisited node: the full exploration term.
        assert!(close(puct_score(0.0, 0.5, 16, 0, 2.0), 4.0));
        // c = 0 is pure exploitation.
        assert!(close(puct_score(0.9, 1.0, 100, 0, 0.0), 0.9));
        // More visits, less exploration.
        assert!(puct_score(1.0, 0.5, 10, 1, 1.0) > puct_score(1.0, 0.5, 10, 5, 1.0));
    }

    #[test]
    fn widening_thresholds() {
        let w = Widening::DEFAULT;
        let expect = [
            (0, 2),
            (1, 2),
            (2, 3),
            (3, 4),
            (4, 4),
            (5, 5),
            (6, 5),
            (9, 6),
            (13, 8),
            (100, 20),
        ];
        for (visits, max) in expect {
            assert_eq!(w.max_children(visits), max, "visits {visits}");
        }
        let linear = Widening { k: 1.0, alpha: 1.0 };
        assert_eq!(linear.max_children(7), 7);
        let broken = Widening {
            k: f64::NAN,
            alpha: 0.5,
        };
        assert!(!broken.is_valid());
        assert_eq!(broken.max_children(50), 1);
    }

    #[test]
    fn priors_by_rank() {
        let p = rank_priors(4);
        let h4 = 1.0 + 0.5 + 1.0 / 3.0 + 0.25;
        assert!(close(p[0], 1.0 / h4));
        assert!(close(p[3], 0.25 / h4));
        assert!(close(p.iter().sum::<f64>(), 1.0));
        assert!(p.windows(2).all(|w| w[0] > w[1]));
        assert!(rank_priors(0).is_empty());
        assert_eq!(rank_priors(1), vec![1.0]);
    }

    #[test]
    fn priors_from_proposer_or_rank() {
        assert_eq!(priors(&[Some(3.0), Some(1.0)]), vec![0.75, 0.25]);
        assert_eq!(priors(&[Some(3.0), None]), rank_priors(2));
        assert_eq!(priors(&[Some(0.0), Some(0.0)]), rank_priors(2));
        assert_eq!(priors(&[Some(f64::NAN), Some(1.0)]), rank_priors(2));
        assert_eq!(priors(&[Some(-1.0), Some(1.0)]), rank_priors(2));
    }
}
