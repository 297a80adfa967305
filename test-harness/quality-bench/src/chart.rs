//! A small PNG line-chart renderer (latency vs QPS per policy), so the charts need no font or
//! plotting stack on the machine: an RGB canvas, lines, a built-in 5×7 pixel font, and the `png` encoder.

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
const SCALE: usize = 2;

type Rgb = [u8; 3];

/// Colours that stay distinguishable for eight series (Okabe–Ito-like, plus two darks).
const PALETTE: [Rgb; 8] = [
    [0, 114, 178],
    [230, 159, 0],
    [0, 158, 115],
    [204, 121, 167],
    [86, 180, 233],
    [213, 94, 0],
    [120, 120, 120],
    [0, 0, 0],
];

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Canvas {
        Canvas { px: vec![255; WIDTH * HEIGHT * 3] }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x < 0 || y < 0 || x >= WIDTH as i64 || y >= HEIGHT as i64 {
            return;
        }
        let i = (y as usize * WIDTH + x as usize) * 3;
        if let Some(p) = self.px.get_mut(i..i + 3) {
            p.copy_from_slice(&c);
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, w: i64, h: i64, c: Rgb) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.set(x, y, c);
            }
        }
    }

    /// Bresenham, `thick` pixels wide.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: Rgb, thick: i64) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.rect(x - thick / 2, y - thick / 2, thick, thick, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        for (k, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        let gx = x + (k * 6 * SCALE + col * SCALE) as i64;
                        let gy = y + (r * SCALE) as i64;
                        self.rect(gx, gy, SCALE as i64, SCALE as i64, c);
                    }
                }
            }
        }
    }
}

fn text_width(s: &str) -> i64 {
    (s.chars().count() * 6 * SCALE) as i64
}

/// 5×7 glyphs, one byte per row (bit 4 = leftmost column). Lower case is drawn as upper case.
fn glyph(c: char) -> [u8; 7] {
    match c.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ' ' => [0; 7],
        '.' => [0, 0, 0, 0, 0, 0x0C, 0x0C],
        '-' => [0, 0, 0, 0x1F, 0, 0, 0],
        ',' => [0, 0, 0, 0, 0x0C, 0x04, 0x08],
        ':' => [0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '/' => [0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '+' => [0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0],
        '_' => [0, 0, 0, 0, 0, 0, 0x1F],
        '=' => [0, 0, 0x1F, 0, 0x1F, 0, 0],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
    }
}

/// Tick values for a log axis: 1, 2, 5 × 10^k inside `[lo, hi]`.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v >= lo * 0.999 && v <= hi * 1.001 {
                out.push(v);
            }
        }
        decade *= 10.0;
    }
    out
}

/// About six round tick values for a linear axis.
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(mag * 10.0);
    let mut v = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while v <= hi + step * 1e-6 {
        out.push(v);
        v += step;
    }
    out
}

fn label(v: f64) -> String {
    // A tick computed as -0.0 would print as "-0".
    let v = v + 0.0;
    if v >= 1000.0 && (v / 1000.0).fract() == 0.0 {
        format!("{}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

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
    let mut c = Canvas::new();
    let (grid, axis, ink) = ([225, 225, 225], [60, 60, 60], [20, 20, 20]);
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
        let color = PALETTE.get(k % PALETTE.len()).copied().unwrap_or(ink);
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
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, WIDTH as u32, HEIGHT as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(|e| format!("chart {title:?}: PNG header: {e}"))?;
        w.write_image_data(&c.px).map_err(|e| format!("chart {title:?}: PNG data: {e}"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        assert_eq!(log_ticks(10.0, 1000.0), vec![10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]);
        assert_eq!(linear_ticks(0.0, 60.0), vec![0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]);
        assert_eq!(label(2000.0), "2k");
        assert_eq!(label(0.5), "0.5");
    }

    #[test]
    fn renders_a_decodable_png_with_the_series_colours() {
        let series = vec![
            Series { name: "round-robin".into(), points: vec![(10.0, 20.0), (20.0, 40.0), (30.0, 400.0)] },
            Series { name: "ours".into(), points: vec![(10.0, 18.0), (20.0, 25.0), (30.0, f64::NAN)] },
        ];
        let png_bytes = line_chart("test", "QPS", "p90 NTPOT (ms)", &series, true).unwrap();
        let decoder = png::Decoder::new(png_bytes.as_slice());
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (WIDTH as u32, HEIGHT as u32));
        let has = |c: Rgb| buf.chunks(3).any(|p| p == c);
        assert!(has(PALETTE[0]) && has(PALETTE[1]));
        assert!(line_chart("empty", "x", "y", &[], true).is_err());
    }
}
