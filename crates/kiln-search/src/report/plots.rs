//! SVG plots of a session: search progress and the search tree.
//!
//! Drawn with plotters' SVG backend without its `ttf` feature: text becomes
//! SVG `<text>` elements laid out by the viewer, so no font file, fontconfig
//! or rasteriser is needed (CI has none). Label sizes are estimated from the
//! character count, which is all the layout needs.

use std::collections::HashSet;

use plotters::prelude::*;

use super::error::ReportError;
use crate::search::{Node, NodeId, Tree};
use crate::session::Session;

/// One recorded evaluation on the progress plot.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressPoint {
    /// 1-based position in evaluation order (node id order, recorded nodes only).
    pub evaluated: usize,
    /// The node.
    pub node: NodeId,
    /// Its reward (0 for a failure).
    pub reward: f64,
    /// True if the evaluation failed.
    pub failed: bool,
    /// The best reward among evaluated nodes up to and including this one.
    pub best_so_far: f64,
}

/// Recorded (evaluated or failed) nodes in id order, which is creation order, with the running best.
pub fn progress_points(tree: &Tree) -> Vec<ProgressPoint> {
    let mut best = 0.0_f64;
    tree.nodes()
        .iter()
        .filter(|n| n.is_evaluated() || n.is_failed())
        .enumerate()
        .map(|(i, n)| {
            let reward = n.reward.filter(|r| r.is_finite()).unwrap_or(0.0);
            if n.is_evaluated() {
                best = best.max(reward);
            }
            ProgressPoint {
                evaluated: i + 1,
                node: n.id,
                reward,
                failed: n.is_failed(),
                best_so_far: best,
            }
        })
        .collect()
}

fn plot_err<E: std::fmt::Display>(name: &'static str) -> impl Fn(E) -> ReportError {
    move |e| ReportError::Plot {
        name,
        detail: e.to_string(),
    }
}

const FONT: &str = "sans-serif";
const BEST_LINE: RGBColor = RGBColor(33, 102, 172);
const FAILED_FILL: RGBColor = RGBColor(170, 170, 170);
const FAILED_STROKE: RGBColor = RGBColor(178, 24, 43);
const PARITY: RGBColor = RGBColor(150, 150, 150);

/// The progress plot: best reward so far (a step line) against candidates evaluated.
///
/// Each candidate's own reward is a dot (failures are red crosses at 0); a
/// grey line marks 1.0, parity with the catalog kernel.
pub fn progress_svg(session: &Session) -> Result<String, ReportError> {
    let points = progress_points(&session.tree);
    let err = plot_err("progress");
    let n = points.len();
    let top = points
        .iter()
        .map(|p| p.best_so_far.max(p.reward))
        .fold(1.0_f64, f64::max);
    let y_max = (top * 1.15).max(1.2);
    let x_max = n.max(1) as f64 + 0.5;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let title = format!(
            "{} ({}): best reward so far",
            session.meta.target, session.meta.backend
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d(0.5_f64..x_max, 0.0_f64..y_max)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_desc("candidates evaluated (creation order)")
            .y_desc("reward (× catalog kernel)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(&err)?;
        chart
            .draw_series(LineSeries::new(
                [(0.5, 1.0), (x_max, 1.0)],
                PARITY.stroke_width(1),
            ))
            .map_err(&err)?
            .label("catalog kernel (1.0)")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], PARITY));
        if n == 0 {
            root.draw(&Text::new(
                "no candidates evaluated yet",
                (300, 240),
                (FONT, 18).into_font(),
            ))
            .map_err(&err)?;
        } else {
            // Step line: the best so far holds until the next evaluation beats it.
            let mut step = Vec::with_capacity(2 * n + 1);
            for (i, p) in points.iter().enumerate() {
                if i > 0 {
                    step.push((p.evaluated as f64, points[i - 1].best_so_far));
                }
                step.push((p.evaluated as f64, p.best_so_far));
            }
            if let Some(last) = points.last() {
                step.push((x_max, last.best_so_far));
            }
            chart
                .draw_series(LineSeries::new(step, BEST_LINE.stroke_width(2)))
                .map_err(&err)?
                .label("best so far")
                .legend(|(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], BEST_LINE.stroke_width(2))
                });
            chart
                .draw_series(points.iter().filter(|p| !p.failed).map(|p| {
                    Circle::new((p.evaluated as f64, p.reward), 3, BLACK.mix(0.6).filled())
                }))
                .map_err(&err)?
                .label("candidate")
                .legend(|(x, y)| Circle::new((x + 8, y), 3, BLACK.mix(0.6).filled()));
            if points.iter().any(|p| p.failed) {
                chart
                    .draw_series(
                        points
                            .iter()
                            .filter(|p| p.failed)
                            .map(|p| Cross::new((p.evaluated as f64, 0.0), 3, FAILED_STROKE)),
                    )
                    .map_err(&err)?
                    .label("failed")
                    .legend(|(x, y)| Cross::new((x + 8, y), 3, FAILED_STROKE));
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .label_font((FONT, 13))
            .draw()
            .map_err(&err)?;
        root.present().map_err(&err)?;
    }
    Ok(svg)
}

/// x (in leaf slots) and depth of every node: leaves take successive slots
/// in depth-first order, a parent sits midway between its first and last child.
fn layout(tree: &Tree) -> (Vec<f64>, usize) {
    let nodes = tree.nodes();
    let mut x = vec![0.0; nodes.len()];
    let mut preorder = Vec::with_capacity(nodes.len());
    let mut stack = vec![NodeId::ROOT];
    while let Some(id) = stack.pop() {
        preorder.push(id);
        if let Some(n) = tree.get(id) {
            stack.extend(n.children.iter().rev().copied());
        }
    }
    let mut leaves = 0usize;
    for id in &preorder {
        if tree.get(*id).is_some_and(|n| n.children.is_empty()) {
            x[id.0 as usize] = leaves as f64;
            leaves += 1;
        }
    }
    // Children have larger ids than parents, but reverse pre-order is what
    // guarantees every child is placed before its parent.
    for id in preorder.iter().rev() {
        if let Some(n) = tree.get(*id) {
            if let (Some(first), Some(last)) = (n.children.first(), n.children.last()) {
                x[id.0 as usize] = (x[first.0 as usize] + x[last.0 as usize]) / 2.0;
            }
        }
    }
    (x, leaves.max(1))
}

/// Colour for an evaluated reward: red below the catalog (1.0), pale at parity, green above.
fn reward_colour(r: f64, r_min: f64, r_max: f64) -> RGBColor {
    const LOW: (f64, f64, f64) = (215.0, 48.0, 39.0);
    const MID: (f64, f64, f64) = (255.0, 255.0, 191.0);
    const HIGH: (f64, f64, f64) = (26.0, 152.0, 80.0);
    let mix = |a: (f64, f64, f64), b: (f64, f64, f64), t: f64| {
        let t = t.clamp(0.0, 1.0);
        RGBColor(
            (a.0 + (b.0 - a.0) * t).round() as u8,
            (a.1 + (b.1 - a.1) * t).round() as u8,
            (a.2 + (b.2 - a.2) * t).round() as u8,
        )
    };
    if r >= 1.0 {
        let span = (r_max - 1.0).max(1e-9);
        mix(MID, HIGH, (r - 1.0) / span)
    } else {
        let span = (1.0 - r_min).max(1e-9);
        mix(MID, LOW, (1.0 - r) / span)
    }
}

/// The search tree: depth downwards, leaves left to right; nodes coloured by reward, best path highlighted.
pub fn tree_svg(session: &Session) -> Result<String, ReportError> {
    let tree = &session.tree;
    let err = plot_err("tree");
    let nodes = tree.nodes();
    let (slots, leaves) = layout(tree);
    let max_depth = nodes.iter().map(|n| n.depth).max().unwrap_or(0) as i32;
    let many = nodes.len() > 60;
    // Spacing shrinks as the tree grows so ~200 nodes still fit a page width.
    let slot_w: i32 = match leaves {
        0..=20 => 40,
        21..=60 => 22,
        61..=120 => 14,
        _ => 9,
    };
    let radius: i32 = match nodes.len() {
        0..=60 => 9,
        61..=120 => 6,
        _ => 4,
    };
    let (margin, top, row_h, legend_h) = (40, 60, 64, 70);
    let width = (leaves as i32 * slot_w + 2 * margin).max(640);
    let height = top + max_depth * row_h + legend_h + 2 * radius + 20;
    let x0 = (width - (leaves as i32 - 1) * slot_w) / 2;
    let pos = |n: &Node| -> (i32, i32) {
        (
            x0 + (slots[n.id.0 as usize] * f64::from(slot_w)).round() as i32,
            top + n.depth as i32 * row_h,
        )
    };
    let best = tree.best();
    let on_path: HashSet<NodeId> = best
        .and_then(|b| tree.path_to_root(b).ok())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let rewards: Vec<f64> = nodes
        .iter()
        .filter(|n| n.is_evaluated())
        .filter_map(|n| n.reward.filter(|r| r.is_finite()))
        .collect();
    let r_min = rewards.iter().copied().fold(1.0_f64, f64::min);
    let r_max = rewards.iter().copied().fold(1.0_f64, f64::max);

    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (width as u32, height as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let title = match best.and_then(|b| tree.get(b)) {
            Some(b) => format!(
                "{} ({}): search tree, {} nodes; best {} reward {:.3}",
                session.meta.target,
                session.meta.backend,
                nodes.len(),
                b.id,
                b.reward.unwrap_or(0.0)
            ),
            None => format!(
                "{} ({}): search tree, {} nodes; none passed yet",
                session.meta.target,
                session.meta.backend,
                nodes.len()
            ),
        };
        root.draw(&Text::new(title, (margin, 16), (FONT, 18).into_font()))
            .map_err(&err)?;

        // Edges first, so nodes are drawn over them; the best path last and thick.
        for pass_best in [false, true] {
            for n in nodes {
                let Some(parent) = n.parent.and_then(|p| tree.get(p)) else {
                    continue;
                };
                let best_edge = on_path.contains(&n.id) && on_path.contains(&parent.id);
                if best_edge != pass_best {
                    continue;
                }
                let style = if best_edge {
                    BEST_LINE.stroke_width(3)
                } else {
                    RGBColor(190, 190, 190).stroke_width(1)
                };
                root.draw(&PathElement::new([pos(parent), pos(n)], style))
                    .map_err(&err)?;
            }
        }
        for n in nodes {
            let p = pos(n);
            let (fill, stroke) = if n.is_failed() {
                (FAILED_FILL, FAILED_STROKE)
            } else if n.is_evaluated() {
                let r = n.reward.unwrap_or(0.0);
                (reward_colour(r, r_min, r_max), RGBColor(90, 90, 90))
            } else {
                (WHITE, RGBColor(150, 150, 150))
            };
            root.draw(&Circle::new(p, radius, fill.filled()))
                .map_err(&err)?;
            let outline = if on_path.contains(&n.id) {
                BEST_LINE.stroke_width(3)
            } else {
                stroke.stroke_width(1)
            };
            root.draw(&Circle::new(p, radius, outline)).map_err(&err)?;
            // Ids on every node of a small tree; on a big one only along the best path.
            if !many || on_path.contains(&n.id) {
                let label = if Some(n.id) == best {
                    format!("{} {:.2}", n.id.0, n.reward.unwrap_or(0.0))
                } else {
                    n.id.0.to_string()
                };
                root.draw(&Text::new(
                    label,
                    (p.0 + radius + 2, p.1 - radius - 10),
                    (FONT, 11).into_font(),
                ))
                .map_err(&err)?;
            }
        }

        // Legend: the colour scale's ends and the symbols.
        let ly = height - legend_h + 18;
        let swatches = [
            (
                reward_colour(r_min, r_min, r_max),
                format!("reward {r_min:.2}"),
            ),
            (
                reward_colour(1.0, r_min, r_max),
                "1.00 (catalog)".to_string(),
            ),
            (reward_colour(r_max, r_min, r_max), format!("{r_max:.2}")),
            (FAILED_FILL, "failed".to_string()),
            (WHITE, "pending".to_string()),
        ];
        let mut lx = margin;
        for (colour, text) in swatches {
            root.draw(&Circle::new((lx, ly), 7, colour.filled()))
                .map_err(&err)?;
            let edge = if colour == FAILED_FILL {
                FAILED_STROKE
            } else {
                RGBColor(90, 90, 90)
            };
            root.draw(&Circle::new((lx, ly), 7, edge.stroke_width(1)))
                .map_err(&err)?;
            root.draw(&Text::new(
                text.clone(),
                (lx + 12, ly - 7),
                (FONT, 12).into_font(),
            ))
            .map_err(&err)?;
            lx += 30 + 7 * text.chars().count() as i32;
        }
        root.draw(&PathElement::new(
            [(lx, ly), (lx + 24, ly)],
            BEST_LINE.stroke_width(3),
        ))
        .map_err(&err)?;
        root.draw(&Text::new(
            "best path",
            (lx + 30, ly - 7),
            (FONT, 12).into_font(),
        ))
        .map_err(&err)?;
        root.draw(&Text::new(
            "depth grows downwards; children in creation order, left to right",
            (margin, ly + 20),
            (FONT, 12).into_font(),
        ))
        .map_err(&err)?;
        root.present().map_err(&err)?;
    }
    Ok(svg)
}
