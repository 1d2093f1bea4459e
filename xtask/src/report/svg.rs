//! SVG charts, written by hand (no plotting dependency): grouped bars relative to the best
//! of each group, horizontal latency bars, and line charts over time.

use std::fmt::Write as _;

/// Series colours, in order.
const COLORS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#6baed6"];

fn color(i: usize) -> &'static str {
    COLORS[i % COLORS.len()]
}

/// The opening tag, a white background and the title.
fn open(w: f64, h: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n",
        w / 2.0
    )
}

/// A legend along the bottom: one coloured square and name per series.
fn legend(svg: &mut String, names: &[&str], left: f64, spacing: f64, h: f64) {
    for (i, name) in names.iter().enumerate() {
        let x = left + i as f64 * spacing;
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{name}</text>",
            h - 22.0,
            color(i),
            x + 14.0,
            h - 13.0
        );
    }
}

/// Grouped bars, one group per `(label, values)` with one value per series of `series`,
/// each bar relative to the best of its group (100 %), since the groups' units differ.
pub(crate) fn relative_bars(
    title: &str,
    series: &[&str],
    groups: &[(&str, Vec<Option<f64>>)],
    lower_is_better: bool,
) -> String {
    let (w, h, left, top, bottom) = (900.0, 360.0, 50.0, 40.0, 60.0);
    let plot_h = h - top - bottom;
    let mut svg = open(w, h, title);
    for pct in [0, 50, 100] {
        let y = top + plot_h * (1.0 - pct as f64 / 100.0);
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{pct}%</text>",
            w - 10.0,
            left - 4.0,
            y + 4.0
        );
    }
    let group_w = (w - left - 10.0) / groups.len().max(1) as f64;
    for (gi, (name, values)) in groups.iter().enumerate() {
        let present = values.iter().flatten().copied();
        let best = if lower_is_better {
            present.fold(f64::INFINITY, f64::min)
        } else {
            present.fold(0.0, f64::max)
        };
        let bar_w = group_w * 0.8 / values.len().max(1) as f64;
        for (bi, v) in values.iter().enumerate() {
            let rel = match v {
                Some(v) if *v > 0.0 && best.is_finite() && best > 0.0 => {
                    if lower_is_better {
                        best / v
                    } else {
                        v / best
                    }
                }
                _ => 0.0,
            };
            let x = left + gi as f64 * group_w + group_w * 0.1 + bi as f64 * bar_w;
            let bh = plot_h * rel;
            let _ = writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\">\
                 <title>{}: {:.0}%</title></rect>",
                top + plot_h - bh,
                bar_w * 0.9,
                color(bi),
                series.get(bi).unwrap_or(&"?"),
                rel * 100.0
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{name}</text>",
            left + gi as f64 * group_w + group_w / 2.0,
            h - bottom + 16.0
        );
    }
    legend(&mut svg, series, left, 120.0, h);
    svg.push_str("</svg>\n");
    svg
}

/// One horizontal pair of bars per `(name, p50, p99)`: p99 light, p50 dark over it.
pub(crate) fn latency_bars(title: &str, rows: &[(String, f64, f64)]) -> String {
    let max = rows.iter().map(|r| r.2).fold(1.0, f64::max);
    let (w, row_h, left) = (700.0, 28.0, 90.0);
    let h = 50.0 + rows.len() as f64 * row_h + 20.0;
    let mut svg = open(w, h, title);
    let scale = (w - left - 80.0) / max;
    for (i, (name, p50, p99)) in rows.iter().enumerate() {
        let y = 40.0 + i as f64 * row_h;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{name}</text>\
             <rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"20\" fill=\"#9ecae1\"/>\
             <rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"20\" fill=\"#3182bd\"/>\
             <text x=\"{:.1}\" y=\"{}\">{p50:.0} / {p99:.0}</text>",
            left - 6.0,
            y + 14.0,
            p99 * scale,
            p50 * scale,
            left + p99 * scale + 6.0,
            y + 14.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// One line of a line chart: its name and `(t, value)` points.
pub(crate) struct Series<'a> {
    pub(crate) name: &'a str,
    pub(crate) points: Vec<(f64, f64)>,
}

/// A line chart over time (seconds), one line per series, with a dashed vertical line at
/// each `(t, label)` of `marks` (the first labelled to its right, the others to their
/// left).
pub(crate) fn lines(title: &str, series: &[Series<'_>], marks: &[(Option<f64>, &str)]) -> String {
    let (w, h, left, right, top, bottom) = (800.0, 360.0, 60.0, 20.0, 40.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let t_max = all().map(|p| p.0).fold(1.0, f64::max);
    let t_step = nice_step(t_max / 6.0);
    let v_peak = all().map(|p| p.1).fold(1.0, f64::max);
    let v_step = nice_step(v_peak / 4.0);
    let v_max = v_step * (v_peak / v_step).ceil().max(1.0);
    let x = |t: f64| left + pw * t / t_max;
    let y = |v: f64| top + ph * (1.0 - v / v_max);
    let mut svg = open(w, h, title);
    let mut v = 0.0;
    while v <= v_max + v_step / 2.0 {
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            w - right,
            left - 4.0,
            y(v) + 4.0,
            axis_label(v, v_step),
            y = y(v)
        );
        v += v_step;
    }
    let mut t = 0.0;
    while t <= t_max + 1e-9 {
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{} s</text>",
            x(t),
            h - bottom + 16.0,
            axis_label(t, t_step),
        );
        t += t_step;
    }
    for (i, (t, label)) in marks.iter().enumerate() {
        let (anchor, dx) = if i == 0 {
            ("start", 3.0)
        } else {
            ("end", -3.0)
        };
        if let Some(t) = t {
            let _ = writeln!(
                svg,
                "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{top}\" y2=\"{1}\" stroke=\"#888\" \
                 stroke-dasharray=\"4 3\"/><text x=\"{2:.1}\" y=\"{3}\" fill=\"#555\" \
                 text-anchor=\"{anchor}\">{label}</text>",
                x(*t),
                top + ph,
                x(*t) + dx,
                top + 12.0
            );
        }
    }
    for (i, s) in series.iter().enumerate() {
        let points: Vec<(f64, f64)> = s.points.iter().map(|&(t, v)| (x(t), y(v))).collect();
        let path: Vec<String> = points
            .iter()
            .map(|(px, py)| format!("{px:.1},{py:.1}"))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            color(i),
            path.join(" ")
        );
        for (px, py) in points {
            let _ = writeln!(
                svg,
                "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"2.5\" fill=\"{}\"/>",
                color(i)
            );
        }
    }
    let names: Vec<&str> = series.iter().map(|s| s.name).collect();
    legend(&mut svg, &names, left + 10.0, 100.0, h);
    svg.push_str("</svg>\n");
    svg
}

fn axis_label(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A round axis step near `raw`: 1, 2 or 5 times a power of ten.
fn nice_step(raw: f64) -> f64 {
    if !raw.is_finite() || raw <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_steps_are_round() {
        assert_eq!(nice_step(7.3), 10.0);
        assert_eq!(nice_step(4.1), 5.0);
        assert_eq!(nice_step(0.13), 0.2);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(0.0), 1.0);
    }

    #[test]
    fn charts_are_closed_svg() {
        let bars = relative_bars("t", &["a", "b"], &[("g", vec![Some(1.0), None])], true);
        let lat = latency_bars("t", &[("a".into(), 1.0, 2.0)]);
        let series = [Series {
            name: "a",
            points: vec![(0.0, 1.0), (1.0, 2.0)],
        }];
        let line = lines("t", &series, &[(Some(0.5), "half")]);
        for svg in [bars, lat, line] {
            assert!(
                svg.starts_with("<svg") && svg.ends_with("</svg>\n"),
                "{svg}"
            );
        }
    }
}
