//! The search tree: every candidate ever proposed, its result, and the
//! statistics PUCT needs (visits and the best reward in each subtree).
//!
//! Nodes live in one `Vec` indexed by [`NodeId`], so ids are dense, ordered
//! by creation, and stable across save and load. The root is the target's
//! naive seed kernel. A node is `Pending` from the moment it is added until
//! its evaluation is recorded, then `Evaluated` or `Failed`; failed nodes stay
//! in the tree (the proposer sees them as history) but are never expanded.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::dedup::source_hash;
use super::rng::SearchRng;

/// Dense index of a node in its [`Tree`]; the root is `NodeId(0)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The root's id.
    pub const ROOT: NodeId = NodeId(0);

    fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Where a node is in its life: awaiting evaluation, evaluated, or failed at a stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NodeStatus {
    /// Added to the tree; its evaluation has not been recorded yet.
    Pending,
    /// Compiled, verified and timed; `reward` holds the result.
    Evaluated,
    /// Rejected at `stage` (e.g. "parse", "compile", "verify", "timing") for `reason`.
    Failed {
        /// The evaluator stage that rejected the candidate.
        stage: String,
        /// Why, in words the proposer can act on.
        reason: String,
    },
}

/// One candidate kernel and its search statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// This node's id.
    pub id: NodeId,
    /// The node it was derived from; `None` only for the root.
    pub parent: Option<NodeId>,
    /// Nodes derived from this one, in creation order.
    pub children: Vec<NodeId>,
    /// Distance from the root (the root has depth 0).
    pub depth: u32,
    /// The full CUDA C++ source, including its `// kiln:` launch line.
    pub source: String,
    /// The `// kiln:` launch line as found in `source` (a copy for reports).
    pub launch_line: String,
    /// The proposer's explanation of the change.
    pub reasoning: String,
    /// The proposer that wrote it (`offline`, `anthropic`, `seed`, …).
    pub proposer: String,
    /// PUCT prior P of this node (1.0 for the root).
    pub prior: f64,
    /// Recorded results in this node's subtree, itself included (PUCT's n).
    pub visits: u32,
    /// Q: the best reward recorded in this subtree (max back-propagation); 0 until one is recorded.
    pub best_reward_in_subtree: f64,
    /// This node's own reward; `None` until its evaluation is recorded, 0 for failures.
    pub reward: Option<f64>,
    /// Pending, evaluated or failed.
    pub status: NodeStatus,
    /// The search step that created it (0 for the root).
    pub created_step: u32,
    /// The evaluator's record for this candidate, kept opaque here.
    pub eval: Option<serde_json::Value>,
}

impl Node {
    /// The judge's record of this candidate, if it has one that parses.
    pub fn record(&self) -> Option<kiln_eval::record::EvalRecord> {
        self.eval
            .as_ref()
            .and_then(kiln_eval::record::EvalRecord::from_value)
    }

    /// True once the evaluation succeeded.
    pub fn is_evaluated(&self) -> bool {
        self.status == NodeStatus::Evaluated
    }

    /// True if the evaluation failed.
    pub fn is_failed(&self) -> bool {
        matches!(self.status, NodeStatus::Failed { .. })
    }

    /// True while the evaluation is outstanding.
    pub fn is_pending(&self) -> bool {
        self.status == NodeStatus::Pending
    }
}

/// What a proposer supplies for a new node.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct NewNode {
    /// The full CUDA C++ source, including its `// kiln:` launch line.
    pub source: String,
    /// The `// kiln:` launch line found in `source`.
    pub launch_line: String,
    /// The proposer's explanation.
    pub reasoning: String,
    /// The proposer's name.
    pub proposer: String,
}

/// Errors from tree operations; each names the node involved.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TreeError {
    /// The id is not in this tree.
    #[error("node {0} is not in the search tree")]
    UnknownNode(NodeId),
    /// The normalised source already exists in the tree.
    #[error(
        "candidate duplicates node {existing} (same source after removing comments and whitespace)"
    )]
    Duplicate {
        /// The node that already has this source.
        existing: NodeId,
    },
    /// Failed nodes are history only and are never expanded.
    #[error("node {0} failed evaluation and cannot be expanded")]
    ParentFailed(NodeId),
    /// The node's result was already recorded.
    #[error("node {0} already has a recorded result")]
    AlreadyRecorded(NodeId),
    /// Rewards must be finite so JSON never holds NaN or Infinity.
    #[error("reward {reward} for node {node} is not a finite number")]
    NonFiniteReward {
        /// The node whose result was being recorded.
        node: NodeId,
        /// The offending value.
        reward: f64,
    },
    /// Priors must be finite and non-negative.
    #[error("prior {0} is not a finite non-negative number")]
    InvalidPrior(f64),
    /// Node ids are u32.
    #[error("the search tree is full ({} nodes)", u32::MAX)]
    Full,
}

/// The search tree plus the seeded RNG that any randomness in the search must use.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "TreeRepr")]
pub struct Tree {
    nodes: Vec<Node>,
    rng: SearchRng,
    /// Normalised-source hash → node, rebuilt on load so a change to the
    /// normaliser never leaves a stale index in a session file.
    #[serde(skip)]
    index: HashMap<String, NodeId>,
}

impl PartialEq for Tree {
    fn eq(&self, other: &Self) -> bool {
        // The index is derived from the nodes.
        self.nodes == other.nodes && self.rng == other.rng
    }
}

impl Tree {
    /// A tree holding only the root (the target's naive seed kernel), pending evaluation.
    pub fn new(root: NewNode, seed: u64) -> Self {
        let mut index = HashMap::new();
        index.insert(source_hash(&root.source), NodeId::ROOT);
        let node = Node {
            id: NodeId::ROOT,
            parent: None,
            children: Vec::new(),
            depth: 0,
            source: root.source,
            launch_line: root.launch_line,
            reasoning: root.reasoning,
            proposer: root.proposer,
            prior: 1.0,
            visits: 0,
            best_reward_in_subtree: 0.0,
            reward: None,
            status: NodeStatus::Pending,
            created_step: 0,
            eval: None,
        };
        Self {
            nodes: vec![node],
            rng: SearchRng::new(seed),
            index,
        }
    }

    /// The root's id.
    pub fn root(&self) -> NodeId {
        NodeId::ROOT
    }

    /// Number of nodes, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a tree has at least its root.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node with this id, if any.
    pub fn get(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.index())
    }

    /// The node with this id, or [`TreeError::UnknownNode`].
    pub fn node(&self, id: NodeId) -> Result<&Node, TreeError> {
        self.get(id).ok_or(TreeError::UnknownNode(id))
    }

    /// All nodes in id (creation) order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The search's RNG; all randomness in a search must come from here so a seed reproduces it.
    pub fn rng(&mut self) -> &mut SearchRng {
        &mut self.rng
    }

    /// True if a node with the same normalised source exists.
    pub fn contains_source(&self, source: &str) -> bool {
        self.find_source(source).is_some()
    }

    /// The node with the same normalised source, if any.
    pub fn find_source(&self, source: &str) -> Option<NodeId> {
        self.index.get(&source_hash(source)).copied()
    }

    /// Adds a pending child of `parent` created at `step` with PUCT prior `prior`.
    ///
    /// Refuses duplicates anywhere in the tree, failed parents and invalid priors.
    pub fn add_child(
        &mut self,
        parent: NodeId,
        child: NewNode,
        prior: f64,
        step: u32,
    ) -> Result<NodeId, TreeError> {
        let parent_node = self.node(parent)?;
        if parent_node.is_failed() {
            return Err(TreeError::ParentFailed(parent));
        }
        if !prior.is_finite() || prior < 0.0 {
            return Err(TreeError::InvalidPrior(prior));
        }
        let hash = source_hash(&child.source);
        if let Some(&existing) = self.index.get(&hash) {
            return Err(TreeError::Duplicate { existing });
        }
        let id = NodeId(u32::try_from(self.nodes.len()).map_err(|_| TreeError::Full)?);
        let depth = parent_node.depth + 1;
        self.nodes.push(Node {
            id,
            parent: Some(parent),
            children: Vec::new(),
            depth,
            source: child.source,
            launch_line: child.launch_line,
            reasoning: child.reasoning,
            proposer: child.proposer,
            prior,
            visits: 0,
            best_reward_in_subtree: 0.0,
            reward: None,
            status: NodeStatus::Pending,
            created_step: step,
            eval: None,
        });
        self.nodes[parent.index()].children.push(id);
        self.index.insert(hash, id);
        Ok(id)
    }

    /// Adds one proposer batch under `parent`, priors from the proposer when all are given, else by rank.
    ///
    /// Candidates are in the proposer's order (best first); see
    /// [`super::puct::priors`] for the rule. Priors are computed over the
    /// whole batch before duplicates are refused (a refused duplicate's share
    /// is not redistributed). Each candidate gets its own result, so a
    /// duplicate does not stop the others.
    pub fn add_children(
        &mut self,
        parent: NodeId,
        children: Vec<(NewNode, Option<f64>)>,
        step: u32,
    ) -> Vec<Result<NodeId, TreeError>> {
        let proposed: Vec<Option<f64>> = children.iter().map(|(_, p)| *p).collect();
        let priors = super::puct::priors(&proposed);
        children
            .into_iter()
            .zip(priors)
            .map(|((child, _), prior)| self.add_child(parent, child, prior, step))
            .collect()
    }

    /// Records a successful evaluation: the reward, the evaluator's record (`Value::Null` for none),
    /// and back-propagation (visits + 1 and Q = max(Q, reward)) up to the root.
    pub fn record_result(
        &mut self,
        id: NodeId,
        reward: f64,
        eval: serde_json::Value,
    ) -> Result<(), TreeError> {
        if !reward.is_finite() {
            return Err(TreeError::NonFiniteReward { node: id, reward });
        }
        self.record(id, reward, NodeStatus::Evaluated, eval)
    }

    /// Records a failed evaluation (reward 0) with its stage and reason; it still counts as a visit.
    pub fn record_failure(
        &mut self,
        id: NodeId,
        stage: impl Into<String>,
        reason: impl Into<String>,
        eval: serde_json::Value,
    ) -> Result<(), TreeError> {
        let status = NodeStatus::Failed {
            stage: stage.into(),
            reason: reason.into(),
        };
        self.record(id, 0.0, status, eval)
    }

    fn record(
        &mut self,
        id: NodeId,
        reward: f64,
        status: NodeStatus,
        eval: serde_json::Value,
    ) -> Result<(), TreeError> {
        let node = self
            .nodes
            .get_mut(id.index())
            .ok_or(TreeError::UnknownNode(id))?;
        if !node.is_pending() {
            return Err(TreeError::AlreadyRecorded(id));
        }
        node.reward = Some(reward);
        node.status = status;
        // `null` and "no record" are the same thing in JSON; keep them the
        // same in memory so a saved tree reloads equal.
        node.eval = (!eval.is_null()).then_some(eval);
        let mut cursor = Some(id);
        while let Some(c) = cursor {
            let n = &mut self.nodes[c.index()];
            n.visits = n.visits.saturating_add(1);
            n.best_reward_in_subtree = n.best_reward_in_subtree.max(reward);
            cursor = n.parent;
        }
        Ok(())
    }

    /// The evaluated node with the highest reward (ties: lowest id), if any.
    pub fn best(&self) -> Option<NodeId> {
        let mut best: Option<(&Node, f64)> = None;
        for n in self.nodes.iter().filter(|n| n.is_evaluated()) {
            let r = n.reward.unwrap_or(0.0);
            if best.is_none_or(|(_, b)| r > b) {
                best = Some((n, r));
            }
        }
        best.map(|(n, _)| n.id)
    }

    /// The ancestors of `id`, nearest first, ending at the root (empty for the root).
    pub fn lineage(&self, id: NodeId) -> Result<Vec<NodeId>, TreeError> {
        let mut path = self.path_to_root(id)?;
        path.remove(0);
        Ok(path)
    }

    /// `id` followed by its ancestors, ending at the root.
    pub fn path_to_root(&self, id: NodeId) -> Result<Vec<NodeId>, TreeError> {
        let mut path = vec![id];
        let mut cursor = self.node(id)?.parent;
        while let Some(p) = cursor {
            path.push(p);
            cursor = self.nodes[p.index()].parent;
        }
        Ok(path)
    }

    /// All nodes below `id` (not `id` itself), in depth-first pre-order.
    pub fn descendants(&self, id: NodeId) -> Result<Vec<NodeId>, TreeError> {
        let mut out = Vec::new();
        let mut stack: Vec<NodeId> = self.node(id)?.children.iter().rev().copied().collect();
        while let Some(n) = stack.pop() {
            out.push(n);
            stack.extend(self.nodes[n.index()].children.iter().rev().copied());
        }
        Ok(out)
    }

    /// Nodes whose evaluation is outstanding, in id order (a resumed search evaluates these first).
    pub fn pending(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.is_pending())
            .map(|n| n.id)
            .collect()
    }

    /// The most recent failed nodes, newest first, at most `limit` (history for the proposer's prompt).
    pub fn recent_failures(&self, limit: usize) -> Vec<&Node> {
        self.nodes
            .iter()
            .rev()
            .filter(|n| n.is_failed())
            .take(limit)
            .collect()
    }
}

/// The saved form of [`Tree`], checked before it becomes one.
#[derive(Deserialize)]
struct TreeRepr {
    nodes: Vec<Node>,
    rng: SearchRng,
}

impl TryFrom<TreeRepr> for Tree {
    type Error = String;

    /// Checks the invariants the search relies on, so a hand-edited or
    /// damaged session file fails on load rather than mid-search.
    fn try_from(repr: TreeRepr) -> Result<Self, Self::Error> {
        let nodes = repr.nodes;
        if nodes.is_empty() {
            return Err("the tree has no root node".into());
        }
        let mut index = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            if n.id.index() != i {
                return Err(format!("node at position {i} has id {}", n.id));
            }
            match (i, n.parent) {
                (0, None) => {
                    if n.depth != 0 {
                        return Err("the root has a non-zero depth".into());
                    }
                }
                (0, Some(_)) => return Err("the root has a parent".into()),
                (_, None) => return Err(format!("node {} has no parent", n.id)),
                (_, Some(p)) => {
                    // Parents are created before their children.
                    let parent = nodes
                        .get(p.index())
                        .filter(|_| p.index() < i)
                        .ok_or_else(|| format!("node {} has invalid parent {p}", n.id))?;
                    if !parent.children.contains(&n.id) {
                        return Err(format!("node {p} does not list its child {}", n.id));
                    }
                    if n.depth != parent.depth + 1 {
                        return Err(format!(
                            "node {} has depth {} under depth {}",
                            n.id, n.depth, parent.depth
                        ));
                    }
                }
            }
            for c in &n.children {
                if nodes.get(c.index()).and_then(|cn| cn.parent) != Some(n.id) {
                    return Err(format!("node {} lists {c} as a child, but it is not", n.id));
                }
            }
            if !n.prior.is_finite() || n.prior < 0.0 {
                return Err(format!("node {} has invalid prior {}", n.id, n.prior));
            }
            let consistent = match (&n.status, n.reward) {
                (NodeStatus::Pending, None) => true,
                (NodeStatus::Pending, Some(_)) => false,
                (_, Some(r)) => r.is_finite(),
                (_, None) => false,
            };
            if !consistent {
                return Err(format!(
                    "node {} has status {:?} with reward {:?}",
                    n.id, n.status, n.reward
                ));
            }
            // Keep the first holder of a source; older files may predate a normaliser change.
            index.entry(source_hash(&n.source)).or_insert(n.id);
        }
        Ok(Tree {
            nodes,
            rng: repr.rng,
            index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn cand(tag: &str) -> NewNode {
        NewNode {
            source: format!(
                "// kiln: block=256 grid=1\nextern \"C\" __global__ void f() {{ int v = {tag}; }}"
            ),
            launch_line: "// kiln: block=256 grid=1".into(),
            reasoning: format!("variant {tag}"),
            proposer: "test".into(),
        }
    }

    #[test]
    fn max_back_propagation_and_visits() {
        let mut t = Tree::new(cand("0"), 1);
        t.record_result(NodeId::ROOT, 1.0, json!({})).expect("root");
        let a = t.add_child(NodeId::ROOT, cand("1"), 0.5, 1).expect("a");
        let b = t.add_child(a, cand("2"), 0.5, 2).expect("b");
        let c = t.add_child(NodeId::ROOT, cand("3"), 0.5, 2).expect("c");
        t.record_result(a, 1.5, json!({})).expect("a");
        t.record_result(b, 2.5, json!({})).expect("b");
        t.record_result(c, 0.7, json!({})).expect("c");
        let qv = |t: &Tree, id: NodeId| {
            let n = &t.nodes()[id.0 as usize];
            (n.best_reward_in_subtree, n.visits)
        };
        assert_eq!(qv(&t, NodeId::ROOT), (2.5, 4));
        assert_eq!(qv(&t, a), (2.5, 2));
        assert_eq!(qv(&t, b), (2.5, 1));
        assert_eq!(qv(&t, c), (0.7, 1));
        // A worse result deeper down never lowers Q.
        let d = t.add_child(b, cand("4"), 1.0, 3).expect("d");
        t.record_result(d, 0.1, json!({})).expect("d");
        assert_eq!(qv(&t, a), (2.5, 3));
        assert_eq!(qv(&t, d), (0.1, 1));
        assert_eq!(t.best(), Some(b));
    }

    #[test]
    fn failures_count_as_visits_and_are_not_expandable() {
        let mut t = Tree::new(cand("0"), 1);
        t.record_result(NodeId::ROOT, 1.0, json!({})).expect("root");
        let a = t.add_child(NodeId::ROOT, cand("1"), 1.0, 1).expect("a");
        t.record_failure(a, "compile", "error: expected ';'", json!(null))
            .expect("fail");
        assert_eq!(t.nodes()[0].visits, 2);
        assert_eq!(t.nodes()[0].best_reward_in_subtree, 1.0);
        assert_eq!(
            t.add_child(a, cand("2"), 1.0, 2),
            Err(TreeError::ParentFailed(a))
        );
        assert_eq!(t.recent_failures(5).len(), 1);
        assert_eq!(t.best(), Some(NodeId::ROOT));
    }

    #[test]
    fn record_rejects_bad_input() {
        let mut t = Tree::new(cand("0"), 1);
        assert!(matches!(
            t.record_result(NodeId::ROOT, f64::NAN, json!({})),
            Err(TreeError::NonFiniteReward { .. })
        ));
        assert!(t.nodes()[0].is_pending());
        t.record_result(NodeId::ROOT, 1.0, json!({})).expect("root");
        assert_eq!(
            t.record_result(NodeId::ROOT, 1.0, json!({})),
            Err(TreeError::AlreadyRecorded(NodeId::ROOT))
        );
        assert_eq!(
            t.record_result(NodeId(9), 1.0, json!({})),
            Err(TreeError::UnknownNode(NodeId(9)))
        );
        assert_eq!(
            t.add_child(NodeId::ROOT, cand("1"), f64::INFINITY, 1),
            Err(TreeError::InvalidPrior(f64::INFINITY))
        );
        assert_eq!(
            t.add_child(NodeId::ROOT, cand("1"), -0.5, 1),
            Err(TreeError::InvalidPrior(-0.5))
        );
    }

    #[test]
    fn duplicates_are_refused_across_the_tree() {
        let mut t = Tree::new(cand("0"), 1);
        let a = t.add_child(NodeId::ROOT, cand("1"), 1.0, 1).expect("a");
        let mut same = cand("1");
        same.source = same
            .source
            .replace("{ int", "{\n    // same kernel\n    int");
        assert!(t.contains_source(&same.source));
        assert_eq!(
            t.add_child(a, same, 1.0, 2),
            Err(TreeError::Duplicate { existing: a })
        );
        let mut other_launch = cand("1");
        other_launch.source = other_launch.source.replace("block=256", "block=128");
        assert!(!t.contains_source(&other_launch.source));
        t.add_child(a, other_launch, 1.0, 2)
            .expect("distinct launch");
        assert_eq!(
            t.add_child(a, cand("0"), 1.0, 2),
            Err(TreeError::Duplicate {
                existing: NodeId::ROOT
            })
        );
    }

    #[test]
    fn lineage_paths_and_descendants() {
        let mut t = Tree::new(cand("0"), 1);
        let a = t.add_child(NodeId::ROOT, cand("1"), 1.0, 1).expect("a");
        let b = t.add_child(a, cand("2"), 1.0, 2).expect("b");
        let c = t.add_child(NodeId::ROOT, cand("3"), 1.0, 2).expect("c");
        let d = t.add_child(a, cand("4"), 1.0, 3).expect("d");
        assert_eq!(t.lineage(b), Ok(vec![a, NodeId::ROOT]));
        assert_eq!(t.path_to_root(b), Ok(vec![b, a, NodeId::ROOT]));
        assert_eq!(t.lineage(NodeId::ROOT), Ok(vec![]));
        assert_eq!(t.descendants(NodeId::ROOT), Ok(vec![a, b, d, c]));
        assert_eq!(t.descendants(a), Ok(vec![b, d]));
        assert_eq!(t.nodes()[d.0 as usize].depth, 2);
        assert_eq!(t.pending(), vec![NodeId::ROOT, a, b, c, d]);
    }

    #[test]
    fn load_rebuilds_index_and_checks_links() {
        let mut t = Tree::new(cand("0"), 3);
        let a = t.add_child(NodeId::ROOT, cand("1"), 1.0, 1).expect("a");
        let text = serde_json::to_string(&t).expect("serialise");
        let back: Tree = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, t);
        assert_eq!(back.find_source(&cand("1").source), Some(a));

        let mut v: serde_json::Value = serde_json::from_str(&text).expect("value");
        v["nodes"][1]["parent"] = json!(5);
        let err = serde_json::from_value::<Tree>(v).expect_err("bad parent");
        assert!(
            err.to_string().contains("#1 as a child, but it is not"),
            "{err}"
        );
    }
}
