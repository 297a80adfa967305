//! Latency-vs-QPS line charts, one line per routing policy (the quality benchmark's figures).

use super::{colour, label, linear_ticks, log_ticks, text_width, Canvas, AXIS, GRID, INK};

/// One line of the chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    /// (x, y); non-finite or (on a log axis) non-positive values are skipped.
    pub points: Vec<(f64, f64)>,
}

const WIDTH: usize = 1050;
const HEIGHT: usize = 600;
const LEFT: usize = 90;
const RIGHT: usize = 260;
const TOP: usize = 64;
const BOTTOM: usize = 60;

/// Renders the series as a PNG (`log_y`: logarithmic latency axis, so overload does not flatten the rest).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<Vec<u8>, String> {
    let usable = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0);
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).filter(usable).collect();
    if all.is_empty() {
        return Err(format!("chart {title:?}: no data points"));
    }
    let (mut x0, mut x1) =
        all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (mut y0, mut y1) =
        all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((x1 - x0) * 0.05).max(0.5);
    x0 -= pad;
    x1 += pad;
    if log_y {
        y0 = 10f64.powf(y0.log10().floor());
        y1 = 10f64.powf(y1.log10().ceil());
        if y1 <= y0 {
            y1 = y0 * 10.0;
        }
    } else {
        y0 = y0.min(0.0);
        y1 = if y1 > y0 { y1 * 1.05 } else { y0 + 1.0 };
    }
    let (pw, ph) = ((WIDTH - LEFT - RIGHT) as f64, (HEIGHT - TOP - BOTTOM) as f64);
    let fy = |y: f64| {
        if log_y {
            (y.log10() - y0.log10()) / (y1.log10() - y0.log10())
        } else {
            (y - y0) / (y1 - y0)
        }
    };
    let to_px = |(x, y): (f64, f64)| {
        let px = LEFT as f64 + (x - x0) / (x1 - x0) * pw;
        let py = (TOP as f64 + ph) - fy(y) * ph;
        (px.round() as i64, py.round() as i64)
    };
    let mut c = Canvas::new(WIDTH, HEIGHT);
    let (grid, axis, ink) = (GRID, AXIS, INK);
    let (left, right, top, bottom) =
        (LEFT as i64, (WIDTH - RIGHT) as i64, TOP as i64, (HEIGHT - BOTTOM) as i64);
    let y_ticks = if log_y { log_ticks(y0, y1) } else { linear_ticks(y0, y1) };
    for v in y_ticks {
        let (_, py) = to_px((x0, v));
        c.line((left, py), (right, py), grid, 1);
        let l = label(v);
        c.text(left - 8 - text_width(&l), py - 7, &l, ink);
    }
    for v in linear_ticks(x0, x1) {
        let (px, _) = to_px((v, y0));
        c.line((px, top), (px, bottom), grid, 1);
        let l = label(v);
        c.text(px - text_width(&l) / 2, bottom + 8, &l, ink);
    }
    c.line((left, top), (left, bottom), axis, 2);
    c.line((left, bottom), (right, bottom), axis, 2);
    c.text(left, 8, title, ink);
    c.text((left + right) / 2 - text_width(x_label) / 2, bottom + 34, x_label, ink);
    c.text(8, top - 26, y_label, ink);
    for (k, s) in series.iter().enumerate() {
        let color = colour(k);
        let mut pts: Vec<(f64, f64)> = s.points.iter().copied().filter(usable).collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let px: Vec<(i64, i64)> = pts.into_iter().map(to_px).collect();
        for w in px.windows(2) {
            if let [a, b] = w {
                c.line(*a, *b, color, 2);
            }
        }
        for &(x, y) in &px {
            c.rect(x - 3, y - 3, 7, 7, color);
        }
        let ly = top + 10 + k as i64 * 24;
        c.rect(right + 16, ly + 2, 18, 10, color);
        c.text(right + 40, ly, &s.name, ink);
    }
    c.png(title)
}

#[cfg(test)]
mod tests {
    use super::super::{decode, PALETTE};
    use super::*;

    #[test]
    fn renders_a_decodable_png_with_the_series_colours() {
        let series = vec![
            Series { name: "round-robin".into(), points: vec![(10.0, 20.0), (20.0, 40.0), (30.0, 400.0)] },
            Series { name: "ours".into(), points: vec![(10.0, 18.0), (20.0, 25.0), (30.0, f64::NAN)] },
        ];
        let png_bytes = line_chart("test", "QPS", "p90 NTPOT (ms)", &series, true).unwrap();
        let (width, height, buf) = decode(&png_bytes);
        assert_eq!((width, height), (WIDTH as u32, HEIGHT as u32));
        let has = |c: [u8; 3]| buf.chunks(3).any(|p| p == c);
        assert!(has(PALETTE[0]) && has(PALETTE[1]));
        assert!(line_chart("empty", "x", "y", &[], true).is_err());
    }
}
