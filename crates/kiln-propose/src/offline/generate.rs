//! Proposal generation: the parent's knobs, every valid single rewrite (and,
//! when those run out, pairs), weighted by base priors times the history's
//! multipliers, ordered by a seeded weighted shuffle, rendered, and filtered
//! against every source the tree already holds. From the naive configuration
//! (a search's seed) the family's recipes come first, in their declared order
//! (the catalog's design first): a search evaluates only about 40 candidates,
//! and the root takes only its first batch of children.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::history::History;
use super::space::{Dims, Family, Knobs, OfflineError};
use kiln_search::search::dedup::source_hash;

/// Base prior of a recipe (a multi-knob jump to a known-strong design).
const RECIPE_WEIGHT: f64 = 3.0;
/// Pairs of rewrites are tried after the singles and weigh this much of the product.
const PAIR_FACTOR: f64 = 0.3;

/// One generated candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct OfflineProposal {
    /// The complete CUDA source (knob header and launch line included).
    pub source: String,
    /// One line that starts with the rewrite name: `vec=8: …`.
    pub reasoning: String,
    /// The rewrite's weight normalised over the batch, in [0, 1].
    pub prior: f64,
    /// The rewrite name (`vec=8`, `recipe-warp-per-row`, `vec=8+upt=2`).
    pub rewrite: String,
    /// The configuration rendered.
    pub knobs: Knobs,
}

/// A rewrite of the parent's knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    /// The rewrite name.
    pub name: String,
    /// Why, in a phrase.
    pub why: String,
    /// The resulting configuration.
    pub knobs: Knobs,
    /// Weight before normalisation (base prior × history multiplier).
    pub weight: f64,
}

/// Base prior of changing one knob: wider vectors and the row mapping matter most.
fn knob_weight(name: &str) -> f64 {
    match name {
        "vec" | "tpr" | "cpt" | "ks" | "lpk" => 2.0,
        "keep" | "wpre" | "upt" | "rpb" | "sel" | "algo" | "pre" | "lay" | "map" | "pf" | "kif"
        | "vsplit" | "qs" => 1.3,
        "minb" => 0.5,
        _ => 1.0,
    }
}

/// The parent's configuration: its knob header, or the family's naive knobs for a seed or foreign source.
pub fn parent_knobs(family: Family, dims: &Dims, source: &str) -> Knobs {
    Knobs::parse(source, family)
        .filter(|k| family.check(k, dims).is_ok())
        .unwrap_or_else(|| family.naive(dims))
}

/// Every valid single rewrite of `parent`, each configuration once, the parent's own excluded.
pub fn single_moves(family: Family, dims: &Dims, parent: &Knobs, history: &History) -> Vec<Move> {
    let mut out: Vec<Move> = Vec::new();
    let mut seen: BTreeSet<Knobs> = BTreeSet::new();
    seen.insert(parent.clone());
    let mut push = |name: String, why: String, knobs: Knobs, base: f64| {
        if seen.insert(knobs.clone()) {
            let weight = base * history.multiplier(&name);
            out.push(Move {
                name,
                why,
                knobs,
                weight,
            });
        }
    };
    for r in family.recipes(dims) {
        if let Some(k) = family.apply(parent, &r.set, dims) {
            push(r.name.to_string(), r.why.to_string(), k, RECIPE_WEIGHT);
        }
    }
    for spec in family.specs() {
        for &v in spec.values {
            if v == parent.get(spec.name) {
                continue;
            }
            if let Some(k) = family.apply(parent, &[(spec.name, v)], dims) {
                let name = format!("{}={}", spec.name, spec.label(v));
                let why = format!("{} → {}", spec.doc, spec.label(v));
                push(name, why, k, knob_weight(spec.name));
            }
        }
    }
    out
}

/// Pairs of single rewrites (applied in order), configurations not already reachable by one.
///
/// A pair's weight is `PAIR_FACTOR` times its parts' weights, which already hold the history multipliers.
pub fn pair_moves(family: Family, dims: &Dims, parent: &Knobs, singles: &[Move]) -> Vec<Move> {
    let mut seen: BTreeSet<Knobs> = singles.iter().map(|m| m.knobs.clone()).collect();
    seen.insert(parent.clone());
    let mut out = Vec::new();
    for (i, a) in singles.iter().enumerate() {
        for b in &singles[i + 1..] {
            if b.name.starts_with("recipe-") {
                continue;
            }
            // b's own change, applied on top of a's result.
            let set: Vec<(&'static str, i64)> = family
                .specs()
                .iter()
                .filter(|s| b.knobs.get(s.name) != parent.get(s.name))
                .map(|s| (s.name, b.knobs.get(s.name)))
                .collect();
            let Some(k) = family.apply(&a.knobs, &set, dims) else {
                continue;
            };
            if seen.insert(k.clone()) {
                let name = format!("{}+{}", a.name, b.name);
                let weight = PAIR_FACTOR * a.weight * b.weight;
                out.push(Move {
                    name,
                    why: format!("{}; {}", a.why, b.why),
                    knobs: k,
                    weight,
                });
            }
        }
    }
    out
}

/// A seeded weighted order (Efraimidis–Spirakis: key = ln(u)/w, largest first); ties keep list order.
fn weighted_order(moves: &[Move], rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut keyed: Vec<(f64, usize)> = moves
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            (u.ln() / m.weight.max(1e-9), i)
        })
        .collect();
    keyed.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// `order` with the recipes moved to the front in list order (the order [`Family::recipes`]
/// declares them), the other moves after them in their shuffled order.
fn recipes_first(moves: &[Move], order: Vec<usize>) -> Vec<usize> {
    let is_recipe = |i: &usize| moves[*i].name.starts_with("recipe-");
    let mut out: Vec<usize> = (0..moves.len()).filter(is_recipe).collect();
    out.extend(order.into_iter().filter(|i| !is_recipe(i)));
    out
}

/// The knobs that differ from the parent, as `name a→b` (for the reasoning line).
fn diff(family: Family, parent: &Knobs, child: &Knobs) -> String {
    family
        .specs()
        .iter()
        .filter(|s| parent.get(s.name) != child.get(s.name))
        .map(|s| {
            format!(
                "{} {}→{}",
                s.name,
                s.label(parent.get(s.name)),
                s.label(child.get(s.name))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Folds a seed and the parent's identity into one RNG seed.
fn mix_seed(seed: u64, parent_source: &str) -> u64 {
    let h = source_hash(parent_source);
    let p = u64::from_str_radix(&h[..16.min(h.len())], 16).unwrap_or(0);
    // SplitMix64 finaliser: nearby seeds give unrelated streams.
    let mut z = seed ^ p.rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Up to `count` new candidates derived from `parent_source`, none already in `history`.
///
/// Deterministic: the same family, dims, parent, seed and history give the
/// same proposals in the same order.
pub fn propose_offline(
    family: &str,
    static_dims: &BTreeMap<String, i64>,
    parent_source: &str,
    count: usize,
    seed: u64,
    history: &History,
) -> Result<Vec<OfflineProposal>, OfflineError> {
    let family = Family::from_name(family)?;
    let dims = Dims::from_static(family, static_dims)?;
    let parent = parent_knobs(family, &dims, parent_source);
    let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(seed, parent_source));
    let singles = single_moves(family, &dims, &parent, history);

    let mut chosen: Vec<(Move, String)> = Vec::new();
    let mut hashes: BTreeSet<String> = BTreeSet::new();
    hashes.insert(source_hash(parent_source));
    let mut take = |moves: &[Move], order: Vec<usize>, chosen: &mut Vec<(Move, String)>| {
        for i in order {
            if chosen.len() >= count {
                return;
            }
            let m = &moves[i];
            let source = family.render(&m.knobs, &dims);
            let h = source_hash(&source);
            if history.has_seen_hash(&h) || !hashes.insert(h) {
                continue;
            }
            chosen.push((m.clone(), source));
        }
    };
    let mut order = weighted_order(&singles, &mut rng);
    if parent == family.naive(&dims) {
        order = recipes_first(&singles, order);
    }
    take(&singles, order, &mut chosen);
    if chosen.len() < count {
        let pairs = pair_moves(family, &dims, &parent, &singles);
        let order = weighted_order(&pairs, &mut rng);
        take(&pairs, order, &mut chosen);
    }

    let total: f64 = chosen.iter().map(|(m, _)| m.weight).sum();
    Ok(chosen
        .into_iter()
        .map(|(m, source)| {
            let changes = diff(family, &parent, &m.knobs);
            OfflineProposal {
                reasoning: format!("{}: {} ({changes})", m.name, m.why),
                prior: if total > 0.0 { m.weight / total } else { 0.0 },
                rewrite: m.name,
                knobs: m.knobs,
                source,
            }
        })
        .collect())
}
