//! Unit tests of the offline generator (no GPU, no NVRTC).

use std::collections::BTreeMap;

use super::generate::{parent_knobs, single_moves};
use super::history::{rewrite_name, History};
use super::space::{Dims, Family, Knobs};
use super::{propose_offline, OfflineProposer};
use kiln_kernels::seeds;
use kiln_search::search::tree::{NewNode, NodeId, Tree};

fn dims_of(family: Family) -> BTreeMap<String, i64> {
    let pairs: &[(&str, i64)] = match family {
        Family::Swiglu => &[("I", 1536)],
        Family::RmsNorm | Family::AddRmsNorm => &[("D", 2048)],
        Family::MoeCombine => &[("D", 2048), ("K", 4)],
        Family::SoftmaxTopk => &[("E", 128), ("K", 8)],
        Family::SigmoidTopk => &[("E", 64), ("K", 4), ("N_GROUP", 1), ("TOPK_GROUP", 1)],
        Family::TttLinearDecode => &[("F", 64), ("H", 16)],
        Family::MoeExpertSwiglu | Family::MoeExpertDown => {
            &[("H", 2048), ("I", 768), ("E", 128), ("K", 8)]
        }
        Family::ShortConv => &[("D", 2048), ("L", 3)],
        Family::DecodeAttention => &[
            ("QH", 32),
            ("KVH", 4),
            ("DQK", 128),
            ("DV", 128),
            ("S_MAX", 1024),
        ],
        Family::QkNormRopeCache => &[("QH", 32), ("KVH", 4), ("D", 128)],
    };
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn seed(family: Family) -> &'static str {
    seeds::seed_source(family.name()).expect("every family has a seed")
}

#[test]
fn every_family_has_a_seed_with_one_entry_and_launch_line() {
    for f in Family::ALL {
        let s = seed(f);
        assert_eq!(
            s.matches("extern \"C\" __global__").count(),
            1,
            "{}",
            f.name()
        );
        assert!(s.contains(&format!(" {}(", f.name())), "{}", f.name());
        kiln_kernels::launch::LaunchLine::parse_source(s)
            .unwrap_or_else(|e| panic!("{}: {e}", f.name()));
    }
    assert!(seeds::seed_source("nope").is_none());
}

#[test]
fn knob_header_round_trips() {
    for f in Family::ALL {
        let dims = Dims::from_static(f, &dims_of(f)).expect("dims");
        let base = f.naive(&dims);
        assert!(
            f.check(&base, &dims).is_ok(),
            "{}: base must be valid",
            f.name()
        );
        for m in single_moves(f, &dims, &base, &History::new()) {
            let src = f.render(&m.knobs, &dims);
            assert_eq!(
                Knobs::parse(&src, f),
                Some(m.knobs.clone()),
                "{}: {}",
                f.name(),
                m.name
            );
            assert_eq!(parent_knobs(f, &dims, &src), m.knobs);
        }
        // A seed (no header) and another family's header map to the naive knobs.
        assert_eq!(parent_knobs(f, &dims, seed(f)), base);
        let other = if f == Family::Swiglu {
            Family::RmsNorm
        } else {
            Family::Swiglu
        };
        let od = Dims::from_static(other, &dims_of(other)).expect("dims");
        assert_eq!(Knobs::parse(&other.render(&other.naive(&od), &od), f), None);
    }
}

#[test]
fn malformed_headers_fall_back_to_base() {
    let f = Family::RmsNorm;
    let dims = Dims::from_static(f, &dims_of(f)).expect("dims");
    for bad in [
        "// kiln-offline: family=rmsnorm tpr=33\n",
        "// kiln-offline: family=rmsnorm vec=banana\n",
        "// kiln-offline: family=rmsnorm nonsense\n",
        "// kiln-offline: family=rmsnorm unknown=1\n",
    ] {
        assert_eq!(Knobs::parse(bad, f), None, "{bad}");
        assert_eq!(parent_knobs(f, &dims, bad), f.naive(&dims));
    }
    // Valid syntax but invalid for the dims (tpr*vec does not divide D... here block > 1024).
    let invalid = "// kiln-offline: family=rmsnorm tpr=1024 rpb=128\n";
    assert!(Knobs::parse(invalid, f).is_some());
    assert_eq!(parent_knobs(f, &dims, invalid), f.naive(&dims));
}

#[test]
fn every_rewrite_changes_the_source_and_stays_valid() {
    for f in Family::ALL {
        let dims = Dims::from_static(f, &dims_of(f)).expect("dims");
        let parent = f.naive(&dims);
        let parent_src = f.render(&parent, &dims);
        let moves = single_moves(f, &dims, &parent, &History::new());
        assert!(
            moves.len() >= 10,
            "{}: only {} rewrites",
            f.name(),
            moves.len()
        );
        for m in &moves {
            assert!(f.check(&m.knobs, &dims).is_ok(), "{}: {}", f.name(), m.name);
            let src = f.render(&m.knobs, &dims);
            assert_eq!(
                src.matches("extern \"C\" __global__").count(),
                1,
                "{}: {}",
                f.name(),
                m.name
            );
            assert!(
                src.contains(&format!(" {}(", f.name())),
                "{}: {}",
                f.name(),
                m.name
            );
            assert_ne!(
                kiln_search::search::dedup::source_hash(&src),
                kiln_search::search::dedup::source_hash(&parent_src),
                "{}: {} leaves the kernel unchanged",
                f.name(),
                m.name
            );
        }
    }
}

#[test]
fn proposals_are_deterministic_and_seed_dependent() {
    for f in Family::ALL {
        let dims = dims_of(f);
        let a = propose_offline(f.name(), &dims, seed(f), 8, 42, &History::new()).expect("a");
        let b = propose_offline(f.name(), &dims, seed(f), 8, 42, &History::new()).expect("b");
        assert_eq!(a, b, "{}", f.name());
        assert_eq!(a.len(), 8);
        let c = propose_offline(f.name(), &dims, seed(f), 8, 43, &History::new()).expect("c");
        let names =
            |v: &[super::OfflineProposal]| v.iter().map(|p| p.rewrite.clone()).collect::<Vec<_>>();
        assert_ne!(
            names(&a),
            names(&c),
            "{}: seeds 42 and 43 give the same order",
            f.name()
        );
        let total: f64 = a.iter().map(|p| p.prior).sum();
        assert!((total - 1.0).abs() < 1e-9);
        for p in &a {
            assert!(
                p.reasoning.starts_with(&format!("{}:", p.rewrite)),
                "{}",
                p.reasoning
            );
            assert_eq!(rewrite_name(&p.reasoning), p.rewrite);
            assert!((0.0..=1.0).contains(&p.prior));
        }
    }
}

#[test]
fn never_proposes_a_source_already_in_the_tree() {
    let f = Family::RmsNorm;
    let dims = dims_of(f);
    let root = NewNode {
        source: seed(f).to_string(),
        launch_line: String::new(),
        reasoning: "seed".into(),
        proposer: "seed".into(),
    };
    let mut tree = Tree::new(root, 1);
    let proposer = OfflineProposer::new(5);
    let first = proposer
        .propose_source(f.name(), &dims, seed(f), 6, 0)
        .expect("first");
    for p in &first {
        let node = NewNode {
            source: p.source.clone(),
            launch_line: String::new(),
            reasoning: p.reasoning.clone(),
            proposer: "offline".into(),
        };
        tree.add_child(NodeId::ROOT, node, 0.1, 1)
            .expect("new source");
    }
    let informed = proposer.with_history(&tree);
    // Ask for far more than fit in one batch: everything returned must be new, and the
    // same request always gives the same answer.
    let again = informed
        .propose_source(f.name(), &dims, seed(f), 60, 0)
        .expect("again");
    assert_eq!(again.len(), 60);
    for p in &again {
        assert!(
            !tree.contains_source(&p.source),
            "{} was already in the tree",
            p.rewrite
        );
    }
    let hashes: std::collections::BTreeSet<String> = again
        .iter()
        .map(|p| kiln_search::search::dedup::source_hash(&p.source))
        .collect();
    assert_eq!(hashes.len(), again.len(), "no duplicates inside a batch");
    // The in-place variant sees the same tree.
    proposer.observe(&tree);
    assert_eq!(
        proposer
            .propose_source(f.name(), &dims, seed(f), 60, 0)
            .expect("observed"),
        again
    );
}

#[test]
fn history_priors_favour_a_rewrite_that_improved() {
    let f = Family::Swiglu;
    let dims = dims_of(f);
    let root = NewNode {
        source: seed(f).to_string(),
        launch_line: String::new(),
        reasoning: "seed".into(),
        proposer: "seed".into(),
    };
    let mut tree = Tree::new(root, 1);
    tree.record_result(NodeId::ROOT, 0.5, serde_json::Value::Null)
        .expect("root");
    let props = propose_offline(f.name(), &dims, seed(f), 40, 9, &History::new()).expect("props");
    let good = props
        .iter()
        .find(|p| p.rewrite == "vec=8")
        .expect("vec=8 is offered");
    let bad = props
        .iter()
        .find(|p| p.rewrite == "block=64")
        .expect("block=64 is offered");
    let add = |tree: &mut Tree, p: &super::OfflineProposal| {
        let node = NewNode {
            source: p.source.clone(),
            launch_line: String::new(),
            reasoning: p.reasoning.clone(),
            proposer: "offline".into(),
        };
        tree.add_child(NodeId::ROOT, node, 0.1, 1).expect("add")
    };
    let g = add(&mut tree, good);
    tree.record_result(g, 1.5, serde_json::Value::Null)
        .expect("good");
    let b = add(&mut tree, bad);
    tree.record_failure(b, "verify", "mismatch", serde_json::Value::Null)
        .expect("bad");

    let h = History::from_tree(&tree);
    assert_eq!(h.count("vec=8"), 1);
    assert!(h.multiplier("vec=8") > 1.5, "{}", h.multiplier("vec=8"));
    assert!(
        h.multiplier("block=64") < 0.5,
        "{}",
        h.multiplier("block=64")
    );
    assert!(h.multiplier("block=64") >= super::history::FLOOR);
    assert_eq!(h.multiplier("never-tried"), 1.0);

    // From a fresh parent the improved rewrite's weight grows relative to an untried one.
    let d = Dims::from_static(f, &dims).expect("dims");
    let parent = f.naive(&d);
    let before = single_moves(f, &d, &parent, &History::new());
    let after = single_moves(f, &d, &parent, &h);
    let w = |v: &[super::generate::Move], n: &str| {
        v.iter().find(|m| m.name == n).map(|m| m.weight).expect(n)
    };
    assert!(w(&after, "vec=4") == w(&before, "vec=4"));
    assert!(
        w(&after, "vec=8") / w(&after, "vec=4") > 1.5 * w(&before, "vec=8") / w(&before, "vec=4")
    );
    // Pairs credit both parts.
    let mut h2 = History::new();
    h2.record("vec=8+upt=2", 1.0);
    assert_eq!(h2.count("vec=8"), 1);
    assert_eq!(h2.count("upt=2"), 1);
}

#[test]
fn bad_requests_are_typed_errors() {
    let none = BTreeMap::new();
    assert!(matches!(
        propose_offline("conv2d", &none, "", 4, 0, &History::new()),
        Err(super::OfflineError::UnknownFamily(_))
    ));
    assert!(matches!(
        propose_offline("rmsnorm", &none, "", 4, 0, &History::new()),
        Err(super::OfflineError::BadDim { dim: "D", .. })
    ));
    let grouped: BTreeMap<String, i64> = [("E", 256), ("K", 8), ("N_GROUP", 8), ("TOPK_GROUP", 4)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    assert!(matches!(
        propose_offline("sigmoid_topk", &grouped, "", 4, 0, &History::new()),
        Err(super::OfflineError::Unsupported { .. })
    ));
}

#[test]
fn recipes_reach_the_catalog_designs_from_the_seed() {
    // One rewrite from the seed reaches each family's catalog-like configuration.
    for f in Family::ALL {
        let dims = Dims::from_static(f, &dims_of(f)).expect("dims");
        let moves = single_moves(f, &dims, &f.naive(&dims), &History::new());
        let recipes: Vec<&str> = moves
            .iter()
            .filter(|m| m.name.starts_with("recipe-"))
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(recipes.len(), 3, "{}: {recipes:?}", f.name());
    }
}

#[test]
fn implements_the_proposer_interface() {
    use kiln_search::propose::request::{HardwareBrief, ParentBrief, ProposalRequest, TargetBrief};
    use kiln_search::propose::Proposer;
    let f = Family::MoeCombine;
    let req = ProposalRequest {
        target: TargetBrief {
            name: "glm_moe_combine".into(),
            family: f.name().into(),
            math: String::new(),
            signature: String::new(),
            entry: f.name().into(),
            static_dims: dims_of(f),
            shape_vars: vec!["T".into()],
            timed_shapes: vec![],
            constraints: String::new(),
            dtype: "bf16".into(),
            hardware: HardwareBrief {
                gpu_name: "H100".into(),
                sm_count: 132,
                peak_bandwidth_gbps: 3000.0,
                launch_floor_us: 2.0,
                l2_mib: 50,
            },
        },
        parent: ParentBrief {
            node_id: 0,
            source: seed(f).into(),
            reward: Some(0.3),
            per_shape: vec![],
            sol_fraction: None,
        },
        best: vec![],
        recent_failures: vec![],
        count: 4,
        step: 1,
        seed: 3,
    };
    let p = OfflineProposer::new(1);
    assert_eq!((p.name(), p.model()), ("offline", "offline"));
    let batch = p.propose(&req).expect("batch");
    assert_eq!(batch.proposals.len(), 4);
    assert_eq!(batch, p.propose(&req).expect("again"));
    assert!(batch
        .proposals
        .iter()
        .all(|c| c.prior.is_some_and(|x| (0.0..=1.0).contains(&x))));
    // A family with no knob space: nothing proposed, and the session says why.
    let mut bare = req.clone();
    bare.target.family = "conv2d".into();
    let none = p.propose(&bare).expect("an empty batch, not an error");
    assert!(none.proposals.is_empty());
    assert!(
        none.rejected
            .iter()
            .any(|r| r.contains("no knob space for `conv2d`")),
        "{:?}",
        none.rejected
    );
    // Dims that do not fit a known family are still an error.
    let mut bad = req.clone();
    bad.target.static_dims = BTreeMap::new();
    assert!(p.propose(&bad).is_err());
}

fn short_conv_dims(d: i64, l: i64) -> Dims {
    let dims: BTreeMap<String, i64> = [("D".to_string(), d), ("L".to_string(), l)].into();
    Dims::from_static(Family::ShortConv, &dims).expect("short_conv dims")
}

#[test]
fn short_conv_naive_knobs_are_the_seed() {
    // The seed: one channel per thread in 128-thread blocks, state re-read and shifted every row.
    assert_naive_is_the_seed(
        Family::ShortConv,
        &short_conv_dims(2048, 3),
        "family=short_conv vec=1 block=128 keep=0 pf=1 unr=auto res=plain ldh=plain sth=plain minb=0",
    );
}

/// The family's naive knobs at `dims` are its base, read as `header`, and
/// launch exactly as its seed's launch line says.
fn assert_naive_is_the_seed(f: Family, dims: &Dims, header: &str) {
    let naive = f.naive(dims);
    assert_eq!(naive, f.base());
    assert_eq!(naive.header(f), header);
    let seed_launch = seed(f)
        .lines()
        .find_map(|l| l.strip_prefix("// kiln: "))
        .expect("seed launch line");
    assert_eq!(f.launch(&naive, dims), seed_launch);
}

#[test]
fn short_conv_vector_width_must_divide_d() {
    let f = Family::ShortConv;
    let with = |dims: &Dims, set: &[(&'static str, i64)]| f.apply(&f.base(), set, dims);
    // 1030 = 2 · 515: pairs fit, 4- and 8-channel vectors would straddle rows and misalign.
    let odd = short_conv_dims(1030, 4);
    assert!(with(&odd, &[("vec", 2)]).is_some());
    for v in [4, 8] {
        assert!(with(&odd, &[("vec", v)]).is_none(), "vec={v}");
        let bad = Knobs::parse(&format!("// kiln-offline: family=short_conv vec={v}\n"), f)
            .expect("parses");
        assert!(f.check(&bad, &odd).is_err(), "vec={v}");
        // A parent rendered with such a header falls back to the naive knobs.
        assert_eq!(parent_knobs(f, &odd, &f.render(&bad, &odd)), f.naive(&odd));
    }
    // An odd D leaves only scalar channels.
    let prime = short_conv_dims(1031, 3);
    assert!(with(&prime, &[("vec", 2)]).is_none());
    // The grid covers the channels, KO_BLOCK*KO_VEC per block, and is independent of T.
    let full = short_conv_dims(2048, 3);
    let k = with(&full, &[("vec", 8), ("block", 32)]).expect("vec=8 block=32");
    assert_eq!(f.launch(&k, &full), "block=32 grid=ceil_div(D, 256) smem=0");
    assert!(
        with(&full, &[("vec", 8), ("pf", 8)]).is_none(),
        "pf*vec > 32"
    );
}

#[test]
fn short_conv_dims_are_checked_and_small_widths_are_covered() {
    let f = Family::ShortConv;
    for l in [1, 9] {
        let dims: BTreeMap<String, i64> = [("D".to_string(), 2048), ("L".to_string(), l)].into();
        assert!(matches!(
            Dims::from_static(f, &dims),
            Err(super::OfflineError::BadDim { dim: "L", .. })
        ));
    }
    let no_l: BTreeMap<String, i64> = [("D".to_string(), 2048)].into();
    assert!(Dims::from_static(f, &no_l).is_err());
    // Small and odd widths: the naive knobs are repaired to fit, and every rewrite stays valid.
    for (d, l) in [(40, 8), (1030, 4), (1031, 2), (2048, 2)] {
        let dims = short_conv_dims(d, l);
        let naive = f.naive(&dims);
        assert!(f.check(&naive, &dims).is_ok(), "D={d}");
        let moves = single_moves(f, &dims, &naive, &History::new());
        assert!(moves.len() >= 10, "D={d}: {} rewrites", moves.len());
        for m in moves {
            assert!(f.check(&m.knobs, &dims).is_ok(), "D={d}: {}", m.name);
            assert_eq!(d % m.knobs.get("vec"), 0, "D={d}: {}", m.name);
        }
    }
}

#[test]
fn short_conv_knobs_reach_the_template() {
    let f = Family::ShortConv;
    let dims = short_conv_dims(2048, 3);
    let base = f.render(&f.base(), &dims);
    // The base leaves unrolling to the compiler and the pointers unqualified, as the seed does.
    assert!(!base.contains("@"), "every placeholder is filled");
    assert!(!base.contains("__restrict__ bcx"));
    let unr = f.apply(&f.base(), &[("unr", 1)], &dims).expect("unr=full");
    let unrolled = f.render(&unr, &dims);
    assert!(unrolled.matches("#pragma unroll").count() > base.matches("#pragma unroll").count());
    let res = f.apply(&f.base(), &[("res", 1)], &dims).expect("res");
    assert!(f
        .render(&res, &dims)
        .contains("scalar_t* __restrict__ state"));
}

fn attention_dims(qh: i64, kvh: i64, dqk: i64, dv: i64, s_max: i64) -> Dims {
    let dims: BTreeMap<String, i64> = [
        ("QH", qh),
        ("KVH", kvh),
        ("DQK", dqk),
        ("DV", dv),
        ("S_MAX", s_max),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), *v))
    .collect();
    Dims::from_static(Family::DecodeAttention, &dims).expect("decode_attention dims")
}

/// The search targets' head shapes at the 1024-position cache step.
const ATTENTION_TARGETS: [(i64, i64, i64, i64); 4] = [
    (32, 4, 128, 128),
    (20, 20, 256, 256),
    (32, 2, 128, 128),
    (32, 8, 64, 64),
];

#[test]
fn decode_attention_naive_knobs_are_the_seed() {
    let f = Family::DecodeAttention;
    for (qh, kvh, dqk, dv) in ATTENTION_TARGETS {
        // The seed: 128 threads, a thread per key with scalar loads of q and k, a thread per
        // output dim over all the keys.
        assert_naive_is_the_seed(
            f,
            &attention_dims(qh, kvh, dqk, dv, 1024),
            "family=decode_attention block=128 lpk=1 vec=1 kif=1 vsplit=1 qs=global ldh=plain minb=0",
        );
    }
}

#[test]
fn decode_attention_dims_are_checked() {
    let f = Family::DecodeAttention;
    let with = |pairs: &[(&str, i64)]| -> BTreeMap<String, i64> {
        let mut m: BTreeMap<String, i64> = [
            ("QH", 32),
            ("KVH", 4),
            ("DQK", 128),
            ("DV", 128),
            ("S_MAX", 1024),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
        for (k, v) in pairs {
            m.insert(k.to_string(), *v);
        }
        m
    };
    for (bad, dim) in [
        (with(&[("KVH", 5)]), "KVH"),
        (with(&[("KVH", 64)]), "KVH"),
        (with(&[("DQK", 100)]), "DQK"),
        (with(&[("DQK", 2048)]), "DQK"),
        (with(&[("DV", 12)]), "DV"),
        (with(&[("S_MAX", 0)]), "S_MAX"),
        (with(&[("S_MAX", 49_153)]), "S_MAX"),
    ] {
        match Dims::from_static(f, &bad) {
            Err(super::OfflineError::BadDim { dim: d, .. }) => assert_eq!(d, dim, "{bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let mut no_dv = with(&[]);
    no_dv.remove("DV");
    assert!(Dims::from_static(f, &no_dv).is_err());
}

#[test]
fn decode_attention_rewrites_fit_the_dims() {
    let f = Family::DecodeAttention;
    // The targets, a small odd cache, DQK != DV, tiny heads, and the largest cache.
    let mut cases: Vec<Dims> = ATTENTION_TARGETS
        .iter()
        .map(|&(qh, kvh, dqk, dv)| attention_dims(qh, kvh, dqk, dv, 1024))
        .collect();
    cases.push(attention_dims(8, 2, 64, 64, 100));
    cases.push(attention_dims(4, 4, 192, 128, 37));
    cases.push(attention_dims(3, 1, 8, 16, 1));
    cases.push(attention_dims(2, 1, 1024, 2048, 49_152));
    for dims in cases {
        let naive = f.naive(&dims);
        assert!(f.check(&naive, &dims).is_ok(), "{dims:?}");
        let moves = single_moves(f, &dims, &naive, &History::new());
        assert!(moves.len() >= 10, "{dims:?}: {} rewrites", moves.len());
        for m in moves {
            let k = &m.knobs;
            assert!(f.check(k, &dims).is_ok(), "{dims:?}: {}", m.name);
            let (lpk, vec, vsplit) = (k.get("lpk"), k.get("vec"), k.get("vsplit"));
            assert!(lpk * vec <= dims.dqk, "{dims:?}: {}", m.name);
            assert!(
                vsplit == 1 || vsplit * (dims.dv / vec) <= k.get("block"),
                "{dims:?}: {}",
                m.name
            );
            // The launch's dynamic shared memory covers the scores and the partial sums.
            let line = f.launch(k, &dims);
            let parsed = kiln_kernels::launch::LaunchLine::parse(&line).expect("launch line");
            let vars: BTreeMap<String, i64> = [
                ("T", 5),
                ("SMS", 132),
                ("QH", dims.qh),
                ("KVH", dims.kvh),
                ("DQK", dims.dqk),
                ("DV", dims.dv),
                ("S_MAX", dims.s_max),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
            let ld = parsed.evaluate(&vars).expect("evaluates");
            let part = if vsplit > 1 { vsplit * dims.dv } else { 0 };
            assert_eq!(ld.smem as i64, 4 * (dims.s_max + part), "{line}");
            assert_eq!(ld.grid.0 as i64, 5 * dims.qh, "{line}");
            assert!(ld.smem <= 200 * 1024, "{line}");
        }
    }
    // At the largest cache the scores alone take 192 KiB: no room for a row split of DV = 2048.
    let big = attention_dims(2, 1, 1024, 2048, 49_152);
    assert!(f.apply(&f.base(), &[("vsplit", 2)], &big).is_none());
}

#[test]
fn decode_attention_rejects_layouts_that_do_not_fit() {
    let f = Family::DecodeAttention;
    let lfm = attention_dims(32, 8, 64, 64, 1024);
    let parse = |h: &str| {
        Knobs::parse(
            &format!("// kiln-offline: family=decode_attention {h}\n"),
            f,
        )
        .expect("parses")
    };
    // 32 lanes of 8-element chunks need DQK >= 256.
    assert!(f.check(&parse("lpk=32 vec=8"), &lfm).is_err());
    assert!(f.check(&parse("lpk=8 vec=8"), &lfm).is_ok());
    // q in registers: 64 elements per lane at most (a lane per key of DQK = 128 is 128).
    let qwen = attention_dims(32, 4, 128, 128, 1024);
    assert!(f.check(&parse("lpk=1 vec=8 qs=regs"), &qwen).is_err());
    assert!(f.check(&parse("lpk=4 vec=8 qs=regs"), &qwen).is_ok());
    // The row split: at most one (group, chunk) item per thread.
    assert!(f.check(&parse("block=128 vec=8 vsplit=8"), &qwen).is_ok());
    assert!(f.check(&parse("block=128 vec=8 vsplit=16"), &qwen).is_err());
    // A rewrite that breaks a layout is repaired by another knob, or refused.
    let k = f
        .apply(&parse("lpk=1 vec=8 qs=regs kif=1"), &[("vec", 8)], &qwen)
        .expect("repaired");
    assert!(f.check(&k, &qwen).is_ok());
    let to_regs = f.apply(&f.base(), &[("qs", 2)], &qwen).expect("qs=regs");
    assert_eq!(to_regs.get("qs"), 2);
    assert!(f.check(&to_regs, &qwen).is_ok());
    // A parent whose header does not fit the dims falls back to the naive knobs.
    let bad = parse("lpk=32 vec=8");
    assert_eq!(parent_knobs(f, &lfm, &f.render(&bad, &lfm)), f.naive(&lfm));
}

#[test]
fn decode_attention_knobs_reach_the_template() {
    let f = Family::DecodeAttention;
    let dims = attention_dims(32, 4, 128, 128, 1024);
    let base = f.render(&f.base(), &dims);
    assert!(!base.contains('@'), "every placeholder is filled");
    // The early-launch wait comes first in the entry, before any branch or memory access.
    let entry = base
        .find("decode_attention(const scalar_t* __restrict__ q")
        .expect("entry");
    let body = &base[entry..];
    let open = body.find('{').expect("body");
    let first: Vec<&str> = body[open + 1..]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .take(4)
        .collect();
    assert_eq!(
        first,
        [
            "#if __CUDA_ARCH__ >= 900",
            "asm volatile(\"griddepcontrol.wait;\" ::: \"memory\");",
            "asm volatile(\"griddepcontrol.launch_dependents;\" ::: \"memory\");",
            "#endif"
        ]
    );
    // A naive walk over DQK = 128 scalar chunks is partly unrolled; q in registers fully.
    assert!(base.contains("#pragma unroll 4\n            for (int r = 0; r < QPL; ++r)"));
    let regs = f
        .apply(&f.base(), &[("lpk", 8), ("vec", 8), ("qs", 2)], &dims)
        .expect("regs");
    let src = f.render(&regs, &dims);
    assert!(src.contains("#pragma unroll\n            for (int r = 0; r < QPL; ++r)"));
    for (knob, text) in [
        ("lpk", "#define KO_LPK 8"),
        ("vec", "#define KO_VEC 8"),
        ("qs", "#define KO_QS 2"),
    ] {
        assert!(src.contains(text), "{knob}");
    }
    let split = f.apply(&regs, &[("vsplit", 4)], &dims).expect("vsplit=4");
    assert!(f
        .render(&split, &dims)
        .contains("// kiln: block=128 grid=T*QH smem=(S_MAX+4*DV)*4\n"));
}

fn qk_dims(qh: i64, kvh: i64, d: i64) -> Dims {
    let dims: BTreeMap<String, i64> = [("QH", qh), ("KVH", kvh), ("D", d)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    Dims::from_static(Family::QkNormRopeCache, &dims).expect("qk_norm_rope_cache dims")
}

/// The attention-input targets' head shapes (Qwen3, LFM2) and the widest head the op takes.
const QK_SHAPES: [(i64, i64, i64); 3] = [(32, 4, 128), (32, 8, 64), (16, 2, 256)];

#[test]
fn qk_norm_rope_cache_token_block_recipe_is_the_catalog_launch() {
    let f = Family::QkNormRopeCache;
    // The catalog's launch: (QH + 2 KVH) * D / 8 lanes rounded up to a warp, one block per token.
    for ((qh, kvh, d), block) in QK_SHAPES.into_iter().zip([640, 384, 640]) {
        let dims = qk_dims(qh, kvh, d);
        let recipe = f
            .recipes(&dims)
            .into_iter()
            .find(|r| r.name == "recipe-token-block")
            .expect("the catalog recipe");
        let k = f.apply(&f.naive(&dims), &recipe.set, &dims).expect("valid");
        assert_eq!(f.launch(&k, &dims), format!("block={block} grid=T smem=0"));
    }
}

#[test]
fn qk_norm_rope_cache_heads_stay_inside_a_warp() {
    let f = Family::QkNormRopeCache;
    for (qh, kvh, d) in QK_SHAPES {
        let dims = qk_dims(qh, kvh, d);
        let heads = qh + 2 * kvh;
        let naive = f.naive(&dims);
        let mut seen = 0;
        for m in single_moves(f, &dims, &naive, &History::new()) {
            let k = &m.knobs;
            f.check(k, &dims)
                .unwrap_or_else(|e| panic!("{}: {e}", m.name));
            let lanes = d / k.get("vec");
            assert!(
                (2..=32).contains(&lanes) && lanes.count_ones() == 1,
                "{}",
                m.name
            );
            let hpb = if k.get("hpb") == 0 {
                heads
            } else {
                k.get("hpb").min(heads)
            };
            let block = f.block(k, &dims);
            assert!(
                block >= hpb * lanes && block - hpb * lanes < 32,
                "{}",
                m.name
            );
            let groups = (heads + hpb - 1) / hpb;
            let grid = if groups == 1 {
                "T".to_string()
            } else {
                format!("T*{groups}")
            };
            assert_eq!(
                f.launch(k, &dims),
                format!("block={block} grid={grid} smem=0"),
                "{}",
                m.name
            );
            seen += 1;
        }
        assert!(seen >= 8, "{seen} rewrites at D = {d}");
    }
    // 64 lanes per head would span two warps; 16-element vectors at D = 64 leave 4 lanes.
    let qwen = qk_dims(32, 4, 128);
    assert!(f.check(&parse_qk("vec=2 hpb=1"), &qwen).is_err());
    assert!(f
        .check(&parse_qk("vec=16 hpb=1"), &qk_dims(32, 8, 64))
        .is_ok());
    // Every head of a Qwen3 token at 4 elements a lane: 1280 threads, more than a block.
    assert!(f.check(&parse_qk("vec=4 hpb=0"), &qwen).is_err());
    // The head dim must be a power of two in 64..=256.
    let odd: BTreeMap<String, i64> = [("QH", 4), ("KVH", 2), ("D", 96)]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
    assert!(Dims::from_static(f, &odd).is_err());
}

/// The base knobs with `knobs` (`name=value …`) set, unchecked.
fn parse_qk(knobs: &str) -> Knobs {
    Knobs::parse(
        &format!("// kiln-offline: family=qk_norm_rope_cache {knobs}"),
        Family::QkNormRopeCache,
    )
    .expect("a header of known knobs")
}

#[test]
fn qk_norm_rope_cache_knobs_reach_the_template() {
    let f = Family::QkNormRopeCache;
    let dims = qk_dims(32, 4, 128);
    let k = f
        .apply(
            &f.base(),
            &[("vec", 8), ("hpb", 4), ("vld", 1), ("ldh", 4), ("sth", 1)],
            &dims,
        )
        .expect("valid");
    let src = f.render(&k, &dims);
    assert!(!src.contains('@'), "every placeholder is filled");
    for text in [
        "#define KO_VEC 8",
        "#define KO_HPB 4",
        "#define KO_VLD 1",
        "#define KO_LDH 4",
        "#define KO_STH 1",
        "#define KO_BLOCK 64",
        "// kiln: block=64 grid=T*10 smem=0",
    ] {
        assert!(src.contains(text), "{text}");
    }
    assert_eq!(src.matches("extern \"C\" __global__").count(), 1);
    assert!(src.contains(" qk_norm_rope_cache(const scalar_t* __restrict__ qkv"));
    // The knobs read back from the source.
    assert_eq!(parent_knobs(f, &dims, &src), k);
}

/// The knobs of `family` from a header text (`tpr=… …`), repaired by nothing: they must parse.
fn knobs_of(f: Family, text: &str) -> Knobs {
    Knobs::parse(&format!("// kiln-offline: family={} {text}\n", f.name()), f)
        .unwrap_or_else(|| panic!("{}: {text}", f.name()))
}

#[test]
fn from_the_seed_the_recipes_come_first_catalog_design_leading() {
    // A search expands its root once, with a handful of children, and evaluates ~40
    // candidates in all: the recipes (the catalog's design first) must be in that first batch.
    for f in Family::ALL {
        let dims = dims_of(f);
        let d = Dims::from_static(f, &dims).expect("dims");
        let recipes: Vec<&str> = f.recipes(&d).iter().map(|r| r.name).collect();
        for s in 0..6 {
            let props = propose_offline(f.name(), &dims, seed(f), 4, s, &History::new())
                .expect("proposals");
            let first: Vec<&str> = props.iter().take(3).map(|p| p.rewrite.as_str()).collect();
            assert_eq!(first, recipes, "{} seed {s}", f.name());
        }
        // Below the root the order is the weighted shuffle again: recipes do not always lead.
        let child = f.render(
            &f.apply(&f.naive(&d), &[("minb", 2)], &d).expect("minb=2"),
            &d,
        );
        let leads = (0..12)
            .filter(|s| {
                propose_offline(f.name(), &dims, &child, 1, *s, &History::new()).expect("p")[0]
                    .rewrite
                    .starts_with("recipe-")
            })
            .count();
        assert!(leads < 12, "{}: recipes lead below the root", f.name());
    }
}

#[test]
fn rmsnorm_catalog_recipe_is_the_catalog_design() {
    // kernels/rmsnorm.cu and add_rmsnorm.cu: whole warps per row with two 8-element vectors
    // each (D = 2048: 128 threads, D = 4096: 256), one row per block, x and w loaded before
    // the reduction, launch bounds for 2048 (rmsnorm) or 1536 (add_rmsnorm, 128-thread
    // blocks) resident threads, x read through ldg (rmsnorm) or evict-first (add_rmsnorm).
    for (f, d, want) in [
        (
            Family::RmsNorm,
            2048,
            "tpr=128 rpb=1 vec=8 keep=1 wpre=1 pers=0 ldh=ldg sth=plain rs=rsqrt minb=16",
        ),
        (
            Family::RmsNorm,
            4096,
            "tpr=256 rpb=1 vec=8 keep=1 wpre=1 pers=0 ldh=ldg sth=plain rs=rsqrt minb=8",
        ),
        (
            Family::AddRmsNorm,
            2048,
            "tpr=128 rpb=1 vec=8 keep=1 wpre=1 pers=0 ldh=cs sth=plain rs=rsqrt minb=12",
        ),
    ] {
        let dims = Dims::from_static(f, &[("D".to_string(), d)].into()).expect("dims");
        let r = f
            .recipes(&dims)
            .into_iter()
            .find(|r| r.name == "recipe-block-row-regs")
            .expect("the catalog recipe");
        let k = f.apply(&f.naive(&dims), &r.set, &dims).expect("valid");
        assert_eq!(k, knobs_of(f, want), "{} D={d}", f.name());
        let block = d / 16;
        assert_eq!(
            f.launch(&k, &dims),
            format!("block={block} grid=ceil_div(T, 1) smem=0")
        );
        let src = f.render(&k, &dims);
        assert!(src.contains("#define KO_WPRE 1") && src.contains("#define KO_KEEP 1"));
        assert!(src.contains("wv[i] = ld_pack<1>(w + off);"));
    }
}

#[test]
fn rmsnorm_w_prefetch_sits_beside_a_kept_row() {
    let f = Family::RmsNorm;
    let dims = Dims::from_static(f, &dims_of(f)).expect("dims");
    // Without the row in registers there is nothing to load w beside.
    assert!(f
        .check(&knobs_of(f, "tpr=128 rpb=1 vec=8 keep=0 wpre=1"), &dims)
        .is_err());
    // 2048 / 16 = 128 elements of x and as many of w per thread: over budget.
    assert!(f
        .check(&knobs_of(f, "tpr=16 rpb=8 vec=8 keep=1 wpre=1"), &dims)
        .is_err());
    assert!(f
        .check(&knobs_of(f, "tpr=32 rpb=4 vec=8 keep=1 wpre=1"), &dims)
        .is_ok());
    // Asking for wpre from a re-reading parent keeps the row too.
    let k = f
        .apply(
            &knobs_of(f, "tpr=128 rpb=1 vec=8 keep=0"),
            &[("wpre", 1)],
            &dims,
        )
        .expect("wpre=1");
    assert_eq!(k.get("keep"), 1);
    // Dropping the kept row drops the prefetch.
    let k = f
        .apply(
            &knobs_of(f, "tpr=128 rpb=1 vec=8 keep=1 wpre=1"),
            &[("keep", 0)],
            &dims,
        )
        .expect("keep=0");
    assert_eq!(k.get("wpre"), 0);
    // 16 blocks of 128 fill an SM; 16 of 256 would not fit.
    assert!(f
        .check(&knobs_of(f, "tpr=128 rpb=1 vec=8 keep=1 minb=16"), &dims)
        .is_ok());
    assert!(f
        .check(&knobs_of(f, "tpr=256 rpb=1 vec=8 keep=1 minb=16"), &dims)
        .is_err());
}

#[test]
fn router_catalog_recipe_is_the_catalog_design() {
    // kernels/softmax_topk.cu and sigmoid_topk.cu: one warp per row (lane l holds experts
    // l, l + 32, …), 4 rows per block, K rounds of two warp reductions on integer keys.
    for (f, dims, want) in [
        (
            Family::SoftmaxTopk,
            vec![("E", 128), ("K", 8)],
            "tpr=32 rpb=4 lay=strided sel=redux algo=softmax fast=0 pers=0 ldh=plain sth=plain minb=0",
        ),
        (
            Family::SigmoidTopk,
            vec![("E", 32), ("K", 4), ("N_GROUP", 1), ("TOPK_GROUP", 1)],
            "tpr=32 rpb=4 lay=strided sel=redux fast=0 pers=0 ldh=plain sth=plain minb=0",
        ),
    ] {
        let dims: BTreeMap<String, i64> = dims.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let d = Dims::from_static(f, &dims).expect("dims");
        let r = f
            .recipes(&d)
            .into_iter()
            .find(|r| r.name == "recipe-warp-per-row")
            .expect("the catalog recipe");
        let k = f.apply(&f.naive(&d), &r.set, &d).expect("valid");
        assert_eq!(k, knobs_of(f, want), "{}", f.name());
        assert_eq!(f.launch(&k, &d), "block=128 grid=ceil_div(T, 4) smem=0");
        let src = f.render(&k, &d);
        // Keys made once and cleared as experts are picked; no per-round float tie logic.
        assert!(src.contains("unsigned key[EPL];"));
        assert!(src.contains("grp_max_u32(bk)") && src.contains("grp_min_u32("));
        // Sub-warp rows never pass a per-row member mask to redux.sync (it serialises).
        assert!(!src.contains("gmask"));
    }
}

/// The knobs a named recipe gives from the naive configuration.
fn recipe_knobs(f: Family, dims: &Dims, name: &str) -> Knobs {
    let r = f
        .recipes(dims)
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("{}: no recipe {name}", f.name()));
    f.apply(&f.naive(dims), &r.set, dims)
        .expect("a valid recipe")
}

#[test]
fn expert_down_catalog_recipe_is_the_catalog_design() {
    // kernels/moe_expert_down.cu: a block per (token, 8 output rows), a warp per row, h[t]
    // staged in shared memory, every slot's row streamed with 16-byte no-allocate loads as one
    // run of (slot, vector) pairs, 16 in flight per lane, the first 16 issued before h is staged.
    let f = Family::MoeExpertDown;
    let dims = Dims::from_static(f, &dims_of(f)).expect("dims");
    let k = recipe_knobs(f, &dims, "recipe-warp-per-row-stream");
    assert_eq!(
        k,
        knobs_of(f, "rpw=1 wpb=8 vec=8 unr=16 ldh=na hs=1 flat=1 minb=0")
    );
    assert_eq!(
        f.launch(&k, &dims),
        "block=256 grid=T*ceil_div(H, 8) smem=0"
    );
    let src = f.render(&k, &dims);
    assert!(src.contains("#define KO_FLAT 1") && src.contains("#define KO_HS 1"));
    // The first batch of weight loads comes before h is staged and the barrier.
    let first_load = src
        .find("load_pairs(w, w_down, e, 0, r0, lane);")
        .expect("the first batch");
    let barrier = src.find("__syncthreads()").expect("the barrier");
    assert!(first_load < barrier);
    // Slot by slot stays in the space, and a flat stream keeps at most 32 partial sums per lane.
    assert!(f
        .check(
            &knobs_of(f, "rpw=1 wpb=8 vec=8 unr=16 ldh=na hs=1 flat=0"),
            &dims
        )
        .is_ok());
    let four_rows = knobs_of(f, "rpw=4 wpb=8 vec=8 unr=4 ldh=na hs=1 flat=1");
    assert!(f.check(&four_rows, &dims).is_ok(), "8 slots x 4 rows");
    let sixteen_slots: BTreeMap<String, i64> = [("H", 2048), ("I", 768), ("E", 128), ("K", 16)]
        .iter()
        .map(|(n, v)| (n.to_string(), *v))
        .collect();
    let wide = Dims::from_static(f, &sixteen_slots).expect("K=16");
    assert!(f.check(&four_rows, &wide).is_err(), "16 slots x 4 rows");
}

#[test]
fn expert_swiglu_catalog_recipe_is_the_catalog_design() {
    // kernels/moe_expert_swiglu.cu: a block per (slot, 8 rows), a warp per row, 8 16-byte
    // no-allocate loads each of the gate and up rows in flight per lane (H = 2048), x[t] read
    // through L1 (not staged: a barrier would add a memory latency before the weights),
    // silu as g * __frcp_rn(1 + __expf(-g)).
    let f = Family::MoeExpertSwiglu;
    let dims = Dims::from_static(f, &dims_of(f)).expect("dims");
    let k = recipe_knobs(f, &dims, "recipe-warp-per-row-stream");
    assert_eq!(
        k,
        knobs_of(f, "rpw=1 wpb=8 vec=8 unr=8 ldh=na xs=0 act=rcp minb=0")
    );
    assert_eq!(
        f.launch(&k, &dims),
        "block=256 grid=T*K*ceil_div(I, 8) smem=0"
    );
    let src = f.render(&k, &dims);
    assert!(src.contains("#define KO_XS 0") && src.contains("#define KO_ACT 1"));
}
