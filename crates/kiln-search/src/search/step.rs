//! The pure selection step the search driver runs once per step.
//!
//! 1. Score every expandable node (evaluated, not failed, allowed by
//!    progressive widening) with PUCT.
//! 2. Take them best first (ties: lower id first, so the result is a pure
//!    function of the tree).
//! 3. After taking a node, block its ancestors and descendants for the rest
//!    of the batch, so no two expansions of one batch share a lineage and
//!    the batch explores distinct lines of descent.
//!
//! The driver then asks the proposer for candidates under each selected
//! node, adds them as pending children, evaluates and records them. A batch
//! may hold fewer than `batch_size` nodes when fewer lineages are eligible
//! (the first step, with only the root, selects just the root).

use std::collections::HashSet;

use super::puct::{is_expandable, node_score, Widening};
use super::tree::{NodeId, Tree};

/// Selects up to `batch_size` nodes to expand, using [`Widening::DEFAULT`].
pub fn select_batch(tree: &Tree, batch_size: usize, c_puct: f64) -> Vec<NodeId> {
    select_batch_with(tree, batch_size, c_puct, &Widening::DEFAULT)
}

/// Selects up to `batch_size` nodes to expand under the given widening rule.
///
/// A non-finite or negative `c_puct` is treated as 0 (pure exploitation);
/// sessions validate their configuration before it gets here.
pub fn select_batch_with(
    tree: &Tree,
    batch_size: usize,
    c_puct: f64,
    widening: &Widening,
) -> Vec<NodeId> {
    let c = if c_puct.is_finite() && c_puct >= 0.0 {
        c_puct
    } else {
        0.0
    };
    let mut scored: Vec<(f64, NodeId)> = tree
        .nodes()
        .iter()
        .filter(|n| is_expandable(n, widening))
        .filter_map(|n| node_score(tree, n.id, c).map(|s| (s, n.id)))
        .collect();
    // Highest score first, then lowest id: deterministic for equal scores.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));

    let mut blocked: HashSet<NodeId> = HashSet::new();
    let mut batch = Vec::new();
    for (_, id) in scored {
        if batch.len() >= batch_size {
            break;
        }
        if blocked.contains(&id) {
            continue;
        }
        batch.push(id);
        blocked.insert(id);
        // Both lookups succeed: `id` came from the tree.
        blocked.extend(tree.lineage(id).unwrap_or_default());
        blocked.extend(tree.descendants(id).unwrap_or_default());
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::tree::NewNode;
    use serde_json::json;

    fn cand(tag: u32) -> NewNode {
        NewNode {
            source: format!("// kiln: block=64 grid=1\nvoid f() {{ int v = {tag}; }}"),
            launch_line: "// kiln: block=64 grid=1".into(),
            reasoning: String::new(),
            proposer: "test".into(),
        }
    }

    /// root(1.0) ─ a(2.0) ─ a1(3.0)
    ///           │        └ a2(failed)
    ///           ├ b(1.5) ─ b1(1.6)
    ///           └ c(pending)
    fn sample() -> (Tree, [NodeId; 6]) {
        let mut t = Tree::new(cand(0), 9);
        t.record_result(NodeId::ROOT, 1.0, json!({})).expect("root");
        let a = t.add_child(NodeId::ROOT, cand(1), 0.5, 1).expect("a");
        let b = t.add_child(NodeId::ROOT, cand(2), 0.3, 1).expect("b");
        let c = t.add_child(NodeId::ROOT, cand(3), 0.2, 1).expect("c");
        t.record_result(a, 2.0, json!({})).expect("a");
        t.record_result(b, 1.5, json!({})).expect("b");
        let a1 = t.add_child(a, cand(4), 0.6, 2).expect("a1");
        let a2 = t.add_child(a, cand(5), 0.4, 2).expect("a2");
        let b1 = t.add_child(b, cand(6), 1.0, 2).expect("b1");
        t.record_result(a1, 3.0, json!({})).expect("a1");
        t.record_failure(a2, "verify", "mismatch at T=37", json!(null))
            .expect("a2");
        t.record_result(b1, 1.6, json!({})).expect("b1");
        (t, [a, b, c, a1, a2, b1])
    }

    #[test]
    fn lineage_is_blocked_within_a_batch() {
        let (t, [_a, b, c, a1, a2, b1]) = sample();
        let batch = select_batch(&t, 10, 1.0);
        // Never failed or pending nodes.
        assert!(!batch.contains(&a2) && !batch.contains(&c));
        assert_eq!(batch[0], a1, "the best leaf leads");
        for (i, x) in batch.iter().enumerate() {
            for y in &batch[i + 1..] {
                let lx = t.lineage(*x).expect("x");
                let ly = t.lineage(*y).expect("y");
                assert!(
                    !lx.contains(y) && !ly.contains(x),
                    "{x} and {y} share a lineage"
                );
            }
        }
        // a1 blocks a and the root; b and b1 are one lineage, so one of them.
        assert_eq!(batch.len(), 2, "{batch:?}");
        assert!(batch.contains(&b) ^ batch.contains(&b1));
        assert_eq!(select_batch(&t, 1, 1.0), vec![a1]);
        assert!(select_batch(&t, 0, 1.0).is_empty());
    }

    #[test]
    fn first_step_selects_only_the_root() {
        let mut t = Tree::new(cand(0), 1);
        assert!(
            select_batch(&t, 4, 1.0).is_empty(),
            "pending root is not expandable"
        );
        t.record_result(NodeId::ROOT, 1.0, json!({})).expect("root");
        assert_eq!(select_batch(&t, 4, 1.0), vec![NodeId::ROOT]);
    }

    #[test]
    fn widening_gates_inner_nodes_and_reopens_them() {
        let mut t = Tree::new(cand(0), 1);
        t.record_result(NodeId::ROOT, 1.0, json!({})).expect("root");
        let mut kids = Vec::new();
        for k in 1..=5 {
            let id = t.add_child(NodeId::ROOT, cand(k), 0.2, 1).expect("kid");
            t.record_result(id, 0.5, json!({})).expect("kid");
            kids.push(id);
        }
        // 5 leaf children, 6 visits: ceil(2·√6) = 5, saturated.
        let w = Widening::DEFAULT;
        assert!(!w.allows(&t.nodes()[0]));
        assert!(!select_batch(&t, 10, 1.0).contains(&NodeId::ROOT));
        // Grow a child's subtree: the root's visits rise and it reopens.
        let mut parent = kids[0];
        for k in 10..13 {
            let id = t.add_child(parent, cand(k), 1.0, 2).expect("deep");
            t.record_result(id, 0.5, json!({})).expect("deep");
            parent = id;
        }
        // 9 visits: ceil(2·3) = 6 > 5 children.
        assert!(w.allows(&t.nodes()[0]));
        // With c = 0 and the root holding the best Q (its own 1.0), the root is chosen first.
        assert_eq!(select_batch(&t, 3, 0.0), vec![NodeId::ROOT]);
    }

    #[test]
    fn ties_break_by_lower_id() {
        let mut t = Tree::new(cand(0), 1);
        t.record_result(NodeId::ROOT, 0.0, json!({})).expect("root");
        let a = t.add_child(NodeId::ROOT, cand(1), 1.0, 1).expect("a");
        let b = t.add_child(NodeId::ROOT, cand(2), 1.0, 1).expect("b");
        t.record_result(b, 1.0, json!({})).expect("b");
        t.record_result(a, 1.0, json!({})).expect("a");
        assert_eq!(select_batch(&t, 2, 1.0), vec![a, b]);
    }

    #[test]
    fn bad_c_puct_is_pure_exploitation() {
        let (t, _) = sample();
        assert_eq!(select_batch(&t, 3, f64::NAN), select_batch(&t, 3, 0.0));
        assert_eq!(select_batch(&t, 3, -1.0), select_batch(&t, 3, 0.0));
    }
}
