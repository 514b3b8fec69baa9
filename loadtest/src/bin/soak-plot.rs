//! `soak-plot CSV PNG FONT`: draws the samples `loadtest/soak.sh` wrote
//! (one row every 10 s) as five stacked panels against minutes: the
//! server's RSS; its open fds and connections; the longest loop turn of
//! each 10 s; delivery latency p50, and p99, on each door's flood channel
//! (line, HTTP, WebSocket, line over TLS, HTTPS), of the proxy's requests
//! and of the webhooks.
//! FONT is a TrueType file for the labels (DejaVu Sans in soak.sh).

use std::error::Error;

use plotters::prelude::*;
use plotters::style::register_font;

/// The CSV: its column names and its rows, an empty field as `None`.
struct Samples {
    names: Vec<String>,
    rows: Vec<Vec<Option<f64>>>,
}

impl Samples {
    fn parse(text: &str) -> Result<Samples, String> {
        let mut lines = text.lines();
        let names: Vec<String> = lines
            .next()
            .ok_or("an empty CSV")?
            .split(',')
            .map(str::to_string)
            .collect();
        let rows = lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split(',').map(|f| f.trim().parse().ok()).collect())
            .collect();
        Ok(Samples { names, rows })
    }

    /// (minutes, value / scale) for each row that has a value in `name`.
    fn series(&self, name: &str, scale: f64) -> Result<Vec<(f64, f64)>, String> {
        let col = |n: &str| {
            self.names
                .iter()
                .position(|c| c == n)
                .ok_or_else(|| format!("no column {n}"))
        };
        let (t, v) = (col("t_s")?, col(name)?);
        Ok(self
            .rows
            .iter()
            .filter_map(|r| Some((r.get(t).copied()?? / 60.0, r.get(v).copied()?? / scale)))
            .collect())
    }
}

/// The latency columns (`NAME_p50_us`, `NAME_p99_us`) and their labels.
const LATENCIES: [(&str, &str); 7] = [
    ("line", "line"),
    ("http", "HTTP"),
    ("ws", "WebSocket"),
    ("tls_line", "line TLS"),
    ("tls_http", "HTTPS"),
    ("proxy", "proxy"),
    ("hook", "webhook"),
];

const COLORS: [RGBColor; 7] = [
    BLUE,
    RED,
    RGBColor(0, 150, 0),
    MAGENTA,
    RGBColor(0, 170, 190),
    BLACK,
    RGBColor(230, 130, 0),
];

type Series<'a> = (&'a str, Vec<(f64, f64)>, RGBColor);

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    x_max: f64,
    series: &[Series<'_>],
) -> Result<(), Box<dyn Error>>
where
    DB::ErrorType: 'static,
{
    let y_max = series
        .iter()
        .flat_map(|(_, pts, _)| pts.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-3)
        * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 17))
        .margin(6)
        .margin_right(24)
        .x_label_area_size(26)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .label_style(("sans-serif", 12))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (name, pts, color) in series {
        let color = *color;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.6))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, csv, png, font] = args.as_slice() else {
        return Err("usage: soak-plot CSV PNG FONT".into());
    };
    let font: &'static [u8] = Box::leak(std::fs::read(font)?.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| "the font file is not a TrueType font")?;
    let samples = Samples::parse(&std::fs::read_to_string(csv)?)?;
    let x_max = samples
        .series("t_s", 1.0)?
        .last()
        .map_or(1.0, |p| p.0)
        .max(1.0 / 6.0);

    let root = BitMapBackend::new(png, (1000, 1450)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, rest) = root.split_vertically(34);
    title.draw_text(
        &format!("switchboard soak: {x_max:.0} min, one sample every 10 s"),
        &("sans-serif", 20).into_text_style(&title),
        (12, 8),
    )?;
    let panels = rest.split_evenly((5, 1));
    let [rss, fds, turn, p50, p99] = panels.as_slice() else {
        unreachable!("split_evenly((5, 1)) gives five areas")
    };
    panel(
        rss,
        "server RSS (MiB)",
        x_max,
        &[("RSS", samples.series("rss_kib", 1024.0)?, BLUE)],
    )?;
    panel(
        fds,
        "server open fds and connections",
        x_max,
        &[
            ("fds", samples.series("fds", 1.0)?, BLUE),
            ("connections", samples.series("connections", 1.0)?, RED),
        ],
    )?;
    panel(
        turn,
        "longest loop turn in the last 10 s (ms)",
        x_max,
        &[(
            "loop turn",
            samples.series("loop_turn_max_10s_us", 1000.0)?,
            BLUE,
        )],
    )?;
    for (area, pct) in [(p50, "p50"), (p99, "p99")] {
        let mut series = Vec::new();
        for ((col, label), color) in LATENCIES.iter().zip(COLORS) {
            series.push((
                *label,
                samples.series(&format!("{col}_{pct}_us"), 1000.0)?,
                color,
            ));
        }
        panel(
            area,
            &format!("delivery latency {pct} in the last 10 s (ms)"),
            x_max,
            &series,
        )?;
    }
    root.present()?;
    Ok(())
}
