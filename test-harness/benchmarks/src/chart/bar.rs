//! Grouped bar charts, one group per category and one bar per series: the overhead benchmark compares
//! configurations (categories, not points on a curve), so its figures are bars rather than lines.

use super::{
    colour, label, linear_ticks, text_width, text_width_scaled, Canvas, Rgb, AXIS, GRID, INK, SCALE,
};

/// One bar in every group, in the same colour throughout.
#[derive(Clone, Debug, PartialEq)]
pub struct BarSeries {
    pub name: String,
    /// One value per group, in group order; a missing or non-finite value draws no bar.
    pub values: Vec<f64>,
    /// Drawn on top of the previous series' bar instead of beside it (a second share of one cost).
    pub stacked: bool,
    /// `None`: the palette's colour for the series' position. Set it to keep one thing's colour across
    /// charts that do not all show the same series.
    pub colour: Option<Rgb>,
}

const HEIGHT: usize = 600;
const LEFT: usize = 90;
const PLOT_WIDTH: usize = 840;
const TOP: usize = 64;
const BOTTOM: usize = 70;
/// Share of a group's width its bars take; the rest separates the groups.
const GROUP_FILL: f64 = 0.8;

/// One drawn rectangle: a series' value in one group, from `bottom` to `top` in data units.
struct Segment {
    group: usize,
    slot: usize,
    series: usize,
    bottom: f64,
    top: f64,
}

/// Renders `series` as bars grouped by `groups` (x-axis categories), with each bar's value (the stack's
/// total for stacked bars) printed above it when every value fits its bar, and a legend on the right.
pub fn bar_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    groups: &[String],
    series: &[BarSeries],
) -> Result<Vec<u8>, String> {
    let mut slots = Vec::with_capacity(series.len());
    let mut n_slots = 0usize;
    for s in series {
        if s.stacked && n_slots > 0 {
            slots.push(n_slots - 1);
        } else {
            slots.push(n_slots);
            n_slots += 1;
        }
    }
    let mut segments = Vec::new();
    for g in 0..groups.len() {
        let mut stack = vec![0.0f64; n_slots];
        for (k, (s, &slot)) in series.iter().zip(&slots).enumerate() {
            let Some(v) = s.values.get(g).copied().filter(|v| v.is_finite()) else { continue };
            let Some(height) = stack.get_mut(slot) else { continue };
            let bottom = if s.stacked { *height } else { 0.0 };
            *height = bottom + v;
            segments.push(Segment { group: g, slot, series: k, bottom, top: bottom + v });
        }
    }
    if segments.is_empty() {
        return Err(format!("chart {title:?}: no finite bar values"));
    }
    let (mut y0, mut y1) = segments
        .iter()
        .fold((0.0f64, 0.0f64), |(lo, hi), s| (lo.min(s.bottom).min(s.top), hi.max(s.bottom).max(s.top)));
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    // Headroom for the value printed above the tallest bar (and below the lowest negative one).
    let span = y1 - y0;
    y1 += span * 0.08;
    if y0 < 0.0 {
        y0 -= span * 0.08;
    }

    let legend_text = series.iter().map(|s| text_width(&s.name)).max().unwrap_or(0);
    let width = LEFT + PLOT_WIDTH + (16 + 18 + 6 + 16) + legend_text.max(0) as usize;
    let (left, right, top, bottom) =
        (LEFT as i64, (LEFT + PLOT_WIDTH) as i64, TOP as i64, (HEIGHT - BOTTOM) as i64);
    let ph = (HEIGHT - TOP - BOTTOM) as f64;
    let to_py = |v: f64| (bottom as f64 - (v - y0) / (y1 - y0) * ph).round() as i64;
    let group_w = PLOT_WIDTH as f64 / groups.len().max(1) as f64;
    let bar_w = group_w * GROUP_FILL / n_slots.max(1) as f64;
    let bar_x = |group: usize, slot: usize| {
        left as f64 + group as f64 * group_w + group_w * (1.0 - GROUP_FILL) / 2.0 + slot as f64 * bar_w
    };

    let series_colour = |k: usize| series.get(k).and_then(|s| s.colour).unwrap_or_else(|| colour(k));
    // A 2-pixel gap keeps neighbouring bars of similar colour apart.
    let w = (bar_w.round() as i64 - 2).max(1);
    // Value labels: one font size for the whole chart, the largest at which every label fits its bar.
    let stack_tops: Vec<(&Segment, String)> = segments
        .iter()
        .enumerate()
        .filter(|(i, s)| segments.get(i + 1).is_none_or(|n| n.group != s.group || n.slot != s.slot))
        .map(|(_, s)| (s, value_label(s.top)))
        .collect();
    let value_scale =
        [SCALE, 1].into_iter().find(|&k| stack_tops.iter().all(|(_, text)| text_width_scaled(text, k) <= w));

    let mut c = Canvas::new(width, HEIGHT);
    for v in linear_ticks(y0, y1) {
        let py = to_py(v);
        c.line((left, py), (right, py), GRID, 1);
        let l = label(v);
        c.text(left - 8 - text_width(&l), py - 7, &l, INK);
    }
    for s in &segments {
        let x = bar_x(s.group, s.slot).round() as i64;
        let (py_a, py_b) = (to_py(s.bottom), to_py(s.top));
        c.rect(x, py_a.min(py_b), w, (py_a - py_b).abs(), series_colour(s.series));
    }
    for (s, text) in stack_tops.iter().filter(|_| value_scale.is_some()) {
        let scale = value_scale.unwrap_or(1);
        let x = bar_x(s.group, s.slot).round() as i64;
        let tx = x + w / 2 - text_width_scaled(text, scale) / 2;
        let py = to_py(s.top);
        let ty = if s.top >= 0.0 { py - 4 - 7 * scale as i64 } else { py + 4 };
        c.text_scaled(tx, ty, text, INK, scale);
    }
    if y0 < 0.0 {
        c.line((left, to_py(0.0)), (right, to_py(0.0)), AXIS, 1);
    }
    c.line((left, top), (left, bottom), AXIS, 2);
    c.line((left, bottom), (right, bottom), AXIS, 2);
    for (g, name) in groups.iter().enumerate() {
        let center = (left as f64 + (g as f64 + 0.5) * group_w).round() as i64;
        c.text(center - text_width(name) / 2, bottom + 10, name, INK);
    }
    c.text(left, 8, title, INK);
    c.text((left + right) / 2 - text_width(x_label) / 2, bottom + 40, x_label, INK);
    c.text(8, top - 26, y_label, INK);
    for (k, s) in series.iter().enumerate() {
        let ly = top + 10 + k as i64 * 24;
        c.rect(right + 16, ly + 2, 18, 10, series_colour(k));
        c.text(right + 40, ly, &s.name, INK);
    }
    c.png(title)
}

/// Whole numbers from 100 up (a bar's width has room for about five digits), one decimal below.
fn value_label(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode, PALETTE};
    use super::*;

    fn bars(name: &str, values: &[f64], stacked: bool) -> BarSeries {
        BarSeries { name: name.into(), values: values.to_vec(), stacked, colour: None }
    }

    /// Per image column, the rows (top to bottom) painted in `colour`.
    fn rows_by_column(width: u32, buf: &[u8], colour: [u8; 3]) -> Vec<Vec<usize>> {
        let mut cols = vec![Vec::new(); width as usize];
        for (i, px) in buf.chunks(3).enumerate() {
            if px == colour {
                cols[i % width as usize].push(i / width as usize);
            }
        }
        cols
    }

    /// Heights of the distinct bars (runs of adjacent columns) drawn in `colour`, left to right.
    fn bar_heights(width: u32, buf: &[u8], colour: [u8; 3]) -> Vec<usize> {
        let cols = rows_by_column(width, buf, colour);
        let mut out = Vec::new();
        let mut previous = 0;
        for col in &cols {
            if !col.is_empty() && previous == 0 {
                out.push(col.len());
            }
            previous = col.len();
        }
        out
    }

    #[test]
    fn renders_a_legible_png_sized_for_its_legend() {
        let groups = vec!["4 KiB".to_string(), "220 KiB".to_string()];
        let series =
            vec![bars("plain Envoy", &[11445.0, 7413.0], false), bars("picker", &[4623.0, 2898.0], false)];
        let png_bytes = bar_chart("throughput", "request body", "req/s", &groups, &series).unwrap();
        let (width, height, buf) = decode(&png_bytes);
        let legend = (16 + 18 + 6 + 16) + text_width("plain Envoy") as usize;
        assert_eq!((width, height), ((LEFT + PLOT_WIDTH + legend) as u32, HEIGHT as u32));
        let count = |c: [u8; 3]| buf.chunks(3).filter(|p| *p == c).count();
        assert!(count(PALETTE[0]) > 1000 && count(PALETTE[1]) > 1000, "both series' bars are drawn");
        assert!(count(INK) > 500, "title, labels and values are written");
    }

    #[test]
    fn bar_heights_are_proportional_to_the_values() {
        let groups = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let series = vec![bars("x", &[100.0, 50.0, 25.0], false)];
        let (width, _, buf) = decode(&bar_chart("t", "x", "y", &groups, &series).unwrap());
        // Three bars, then the 10-pixel legend swatch.
        let h = bar_heights(width, &buf, PALETTE[0]);
        assert_eq!(h.len(), 4, "{h:?}");
        assert!(h[0].abs_diff(2 * h[1]) <= 1 && h[1].abs_diff(2 * h[2]) <= 1, "{h:?}");
        assert!(h[0] > 300, "the tallest bar fills most of the plot: {h:?}");
    }

    #[test]
    fn a_stacked_series_sits_on_the_previous_bar() {
        let groups = vec!["g".to_string()];
        let series = vec![bars("envoy", &[100.0], false), bars("+ shim (stacked)", &[50.0], true)];
        let (width, _, buf) = decode(&bar_chart("t", "x", "y", &groups, &series).unwrap());
        let envoy = rows_by_column(width, &buf, PALETTE[0]);
        let shim = rows_by_column(width, &buf, PALETTE[1]);
        let first_col = |cols: &[Vec<usize>]| cols.iter().position(|c| !c.is_empty()).unwrap();
        // Same column (one slot, not two bars side by side), shim on top, half as tall.
        assert_eq!(first_col(&envoy), first_col(&shim));
        let (e, s) = (&envoy[first_col(&envoy)], &shim[first_col(&shim)]);
        assert!(s.iter().max() < e.iter().min(), "shim segment is above the Envoy segment");
        assert!(e.len().abs_diff(2 * s.len()) <= 1, "envoy {} px, shim {} px", e.len(), s.len());
    }

    #[test]
    fn negative_values_hang_below_the_zero_line() {
        let groups = vec!["a".to_string(), "b".to_string()];
        let series = vec![bars("x", &[40.0, -20.0], false)];
        let (width, _, buf) = decode(&bar_chart("t", "x", "y", &groups, &series).unwrap());
        let cols = rows_by_column(width, &buf, PALETTE[0]);
        let bars: Vec<&Vec<usize>> = cols.iter().filter(|c| c.len() > 12).collect();
        let (up, down) = (bars.first().unwrap(), bars.last().unwrap());
        assert!(up.iter().max() < down.iter().min(), "the positive bar ends where the negative one starts");
        assert!(up.len().abs_diff(2 * down.len()) <= 2, "{} vs {}", up.len(), down.len());
    }

    #[test]
    fn no_finite_value_is_an_error_not_an_empty_chart() {
        let groups = vec!["a".to_string()];
        assert!(bar_chart("t", "x", "y", &groups, &[]).is_err());
        assert!(bar_chart("t", "x", "y", &groups, &[bars("x", &[f64::NAN], false)]).is_err());
        assert_eq!(value_label(11444.6), "11445");
        assert_eq!(value_label(23.04), "23.0");
    }
}
