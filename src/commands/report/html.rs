//! Draws the run report as one HTML file: inline CSS and SVG, no script,
//! nothing fetched, so it opens anywhere, attached to a ticket or offline.

use std::fmt::Write;

use super::{Bar, Outcome, RunReport, Timeline, SLOWEST};

/// Width of the timeline in SVG units; the page scales it to the window.
const WIDTH: f64 = 1100.0;
/// Room on the left for the task names.
const GUTTER: f64 = 90.0;
/// Room on the right for the idle time of the last lane.
const MARGIN: f64 = 20.0;
/// The timeline grows with its rows up to about this height, then rows thin.
const PLOT_HEIGHT: f64 = 520.0;
const ROW_MAX: f64 = 18.0;
const ROW_MIN: f64 = 3.0;
const LANE_GAP: f64 = 4.0;
/// Room above the lanes for the lower bound's label, below for the axis.
const HEAD: f64 = 18.0;
const AXIS: f64 = 26.0;
/// Font size of labels, and the least vertical room between two of them.
const FONT: f64 = 11.0;
const LABEL_PITCH: f64 = 13.0;
/// A label's width per character, a little over the font's average.
const CHAR_WIDTH: f64 = 7.2;

const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#1d232a;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}
.muted{color:#5b6670}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:12px 0}
dl.facts dt{color:#5b6670}dl.facts dd{margin:0}
.counts{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.count{border:1px solid #d5dbe1;border-radius:6px;padding:6px 12px;min-width:90px}
.count b{display:block;font-size:20px}
.count.dead b{color:#c62828}.count.exported b{color:#2e7d32}
table{border-collapse:collapse;margin:8px 0}
th,td{border-bottom:1px solid #e3e7eb;padding:4px 10px;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f3f5f7;padding:2px 4px;border-radius:3px;word-break:break-all}
svg.timeline{width:100%;height:auto;max-width:1400px;display:block}
svg text{font:11px system-ui,sans-serif;fill:#1d232a}
svg text.bar-label{fill:#fff}
.bar.exported{fill:#2e7d32}.bar.dead-lettered{fill:#c62828}
.bar.redelivered{stroke:#111;stroke-width:1.5}
.bar:hover{opacity:.75}
.band{fill:#f6f8f9}.idle{fill:#e3e7eb}svg .bound-label{fill:#1565c0}.grid{stroke:#e3e7eb}.bound{stroke:#1565c0;stroke-dasharray:5 4;stroke-width:1.5}
.legend{display:flex;flex-wrap:wrap;gap:16px;margin:6px 0 0;font-size:13px}
.swatch{display:inline-block;width:12px;height:12px;vertical-align:-1px;margin-right:4px;border-radius:2px}
";

/// Makes `s` safe to put into HTML text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1000.0)
    } else if s < 10.0 {
        format!("{s:.2} s")
    } else if s < 600.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

fn optional(n: Option<u64>) -> String {
    n.map_or("?".into(), thousands)
}

pub fn render(report: &RunReport) -> String {
    let s = report.status;
    let t = &s.totals;
    let mut out = String::new();
    let title = format!("bqdrain run {}", s.run_id);
    let _ = writeln!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>",
        escape(&title)
    );
    let _ = writeln!(
        out,
        "<h1>{}</h1><dl class=\"facts\"><dt>source</dt><dd>{}</dd><dt>destination</dt><dd>{}</dd>\
         <dt>started</dt><dd>{}</dd><dt>finished</dt><dd>{}</dd></dl>",
        escape(&title),
        escape(&s.source),
        escape(&s.destination),
        s.created_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
        report.finished.map_or("not yet".into(), |f| f
            .format("%Y-%m-%d %H:%M:%S%.3f UTC")
            .to_string()),
    );
    out += "<div class=\"counts\">";
    for (class, label, value) in [
        ("units", "units", thousands(t.expected as u64)),
        ("exported", "exported", thousands(t.exported as u64)),
        (
            if t.dead_lettered > 0 { "dead" } else { "" },
            "dead-lettered",
            thousands(t.dead_lettered as u64),
        ),
        ("pending", "pending", thousands(t.pending as u64)),
        ("superseded", "superseded", thousands(t.superseded as u64)),
        ("files", "files", thousands(s.files as u64)),
        ("bytes", "bytes", bytes(s.bytes)),
        ("rows", "rows", thousands(s.rows)),
    ] {
        let _ = write!(
            out,
            "<div class=\"count {class}\"><b>{value}</b>{label}</div>"
        );
    }
    out += "</div>\n";
    timeline(&mut out, &report.timeline);
    dead_letters(&mut out, report);
    slowest(&mut out, &report.timeline);
    out += "</body></html>\n";
    out
}

/// A tick step of 1, 2 or 5 times a power of ten, for at most about 8 ticks.
fn tick_step(span: f64) -> f64 {
    let raw = (span / 8.0).max(1e-3);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * power)
}

fn timeline(out: &mut String, tl: &Timeline) {
    let idle: f64 = tl.lanes.iter().map(|l| l.idle_after).sum();
    let _ = writeln!(
        out,
        "<h2>Timeline</h2><p>Makespan <b>{}</b> against a lower bound of <b>{}</b> \
         (the longest unit, or all units' time spread over the tasks' {}, \
         whichever is longer); the tasks sat idle <b>{}</b> in all after their last unit. \
         Much idle time after the last unit means fewer tasks would have done; a makespan \
         well above the bound with little idle time means more tasks would have helped.</p>",
        seconds(tl.makespan),
        seconds(tl.lower_bound),
        match tl.lanes.iter().map(|l| l.rows).sum::<usize>() {
            1 => "one slot".to_string(),
            slots => format!("{slots} parallel slots"),
        },
        seconds(idle),
    );
    if tl.bars.is_empty() {
        *out += "<p class=\"muted\">No unit has a timed record yet.</p>\n";
    } else {
        svg(out, tl);
        *out += "<div class=\"legend\">\
            <span><span class=\"swatch\" style=\"background:#2e7d32\"></span>exported</span>\
            <span><span class=\"swatch\" style=\"background:#c62828\"></span>dead-lettered</span>\
            <span><span class=\"swatch\" style=\"background:#fff;border:1.5px solid #111\"></span>redelivered (attempt &gt; 1)</span>\
            <span><span class=\"swatch\" style=\"background:#e3e7eb\"></span>idle after the task's last unit</span>\
            <span><span class=\"swatch\" style=\"border-top:2px dashed #1565c0;border-radius:0;height:0\"></span>lower bound</span>\
            <span class=\"muted\">hover over a bar for its unit, bytes, rows, attempt and duration</span></div>\n";
    }
    if !tl.lanes.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"muted\">{} task(s) settled units. The lanes come from the units' records, \
             so a task that settled none has no lane.</p>",
            tl.lanes.len()
        );
    }
    if !tl.untimed.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"muted\">Not drawn, their records carry no start time \
             (written by an earlier version, by <code>status --reconcile</code>, or superseded): {}</p>",
            escape(&tl.untimed.join(", "))
        );
    }
}

fn tick_label(tick: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{tick:.0} s")
    } else if step >= 1e-3 {
        format!("{:.0} ms", tick * 1000.0)
    } else {
        format!("{:.1} ms", tick * 1000.0)
    }
}

fn svg(out: &mut String, tl: &Timeline) {
    let rows: usize = tl.lanes.iter().map(|l| l.rows).sum();
    let gaps = LANE_GAP * tl.lanes.len() as f64;
    let row = ((PLOT_HEIGHT - gaps) / rows as f64).clamp(ROW_MIN, ROW_MAX);
    let plot_bottom = HEAD + rows as f64 * row + gaps;
    let height = plot_bottom + AXIS;
    let plot_width = WIDTH - GUTTER - MARGIN;
    let span = tl.makespan.max(1e-3);
    let x = |t: f64| GUTTER + t / span * plot_width;
    let _ = writeln!(
        out,
        "<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {height:.1}\" role=\"img\" aria-label=\"timeline of the run's units per task\">"
    );

    // Lanes: a band each, idle time after the last unit, one label per lane
    // where it fits without touching the previous one.
    let mut lane_top = Vec::with_capacity(tl.lanes.len());
    let mut y = HEAD;
    let mut last_label: Option<f64> = None;
    for (i, lane) in tl.lanes.iter().enumerate() {
        lane_top.push(y);
        let lane_height = lane.rows as f64 * row;
        if i % 2 == 1 {
            let _ = writeln!(
                out,
                "<rect class=\"band\" x=\"{GUTTER}\" y=\"{:.1}\" width=\"{plot_width}\" height=\"{:.1}\"/>",
                y - LANE_GAP / 2.0,
                lane_height + LANE_GAP
            );
        }
        let last_end = tl.makespan - lane.idle_after;
        if lane.idle_after > 0.0 {
            let _ = writeln!(
                out,
                "<rect class=\"idle\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{lane_height:.1}\">\
                 <title>{}: idle {} after its last unit</title></rect>",
                x(last_end),
                x(tl.makespan) - x(last_end),
                escape(&lane.task),
                seconds(lane.idle_after)
            );
        }
        let middle = y + lane_height / 2.0;
        if last_label.is_none_or(|previous| middle - previous >= LABEL_PITCH) {
            last_label = Some(middle);
            let _ = writeln!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                GUTTER - 6.0,
                middle + FONT / 2.0 - 1.5,
                escape(&lane.task)
            );
        }
        y += lane_height + LANE_GAP;
    }

    // Time axis and grid, over the bands and under the bars.
    let step = tick_step(span);
    let mut tick = 0.0;
    while tick <= span + step * 1e-6 {
        let tx = x(tick);
        let _ = writeln!(
            out,
            "<line class=\"grid\" x1=\"{tx:.1}\" y1=\"{HEAD}\" x2=\"{tx:.1}\" y2=\"{plot_bottom:.1}\"/>\
             <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            plot_bottom + 16.0,
            tick_label(tick, step)
        );
        tick += step;
    }

    for bar in &tl.bars {
        bar_svg(
            out,
            bar,
            x(bar.start),
            x(bar.end),
            lane_top[bar.lane] + bar.row as f64 * row,
            row,
        );
    }

    // The lower bound's line; above the lanes, its label and the makespan's
    // (the axis' end), merged into one where they would touch.
    let bx = x(tl.lower_bound);
    let end = x(tl.makespan);
    let bound = seconds(tl.lower_bound);
    let makespan = format!("makespan {}", seconds(tl.makespan));
    let _ = writeln!(
        out,
        "<line class=\"bound\" x1=\"{bx:.1}\" y1=\"{:.1}\" x2=\"{bx:.1}\" y2=\"{plot_bottom:.1}\">\
         <title>lower bound {bound}</title></line>",
        HEAD - 4.0
    );
    let label_y = HEAD - 7.0;
    let makespan_left = end - label_width(&makespan);
    let bound_label = format!("lower bound {bound}");
    if bx - 4.0 < makespan_left - 12.0 {
        let _ = writeln!(
            out,
            "<text class=\"bound-label\" x=\"{:.1}\" y=\"{label_y}\" text-anchor=\"end\">{bound_label}</text>\
             <text x=\"{end:.1}\" y=\"{label_y}\" text-anchor=\"end\">{makespan}</text>",
            bx - 4.0
        );
    } else {
        let _ = writeln!(
            out,
            "<text x=\"{end:.1}\" y=\"{label_y}\" text-anchor=\"end\">\
             <tspan class=\"bound-label\">{bound_label}</tspan>, {makespan}</text>"
        );
    }
    *out += "</svg>\n";
}

/// A label's width in SVG units, generously: labels must not overlap.
fn label_width(label: &str) -> f64 {
    label.chars().count() as f64 * CHAR_WIDTH
}

fn bar_svg(out: &mut String, bar: &Bar, x0: f64, x1: f64, top: f64, row: f64) {
    let outcome = bar.outcome.name();
    let redelivered = if bar.attempt > 1 { " redelivered" } else { "" };
    // A bar of a very short unit stays visible; rows keep a hairline apart.
    let width = (x1 - x0).max(1.0);
    let height = (row - 1.0).max(1.0);
    let title = format!(
        "{}: {outcome}, {} bytes, {} rows, attempt {}, {}",
        bar.unit,
        optional(bar.bytes),
        optional(bar.rows),
        bar.attempt,
        seconds(bar.seconds())
    );
    let _ = writeln!(
        out,
        "<rect class=\"bar {outcome}{redelivered}\" data-unit=\"{}\" x=\"{x0:.1}\" y=\"{top:.1}\" \
         width=\"{width:.1}\" height=\"{height:.1}\" rx=\"1.5\"><title>{}</title></rect>",
        escape(&bar.unit),
        escape(&title)
    );
    if row >= LABEL_PITCH + 2.0 && width >= label_width(&bar.unit) + 6.0 {
        let _ = writeln!(
            out,
            "<text class=\"bar-label\" x=\"{:.1}\" y=\"{:.1}\" pointer-events=\"none\">{}</text>",
            x0 + 3.0,
            top + height / 2.0 + FONT / 2.0 - 1.5,
            escape(&bar.unit)
        );
    }
}

fn dead_letters(out: &mut String, report: &RunReport) {
    let _ = writeln!(out, "<h2>Dead-lettered units ({})</h2>", report.dead.len());
    if report.dead.is_empty() {
        *out += "<p class=\"muted\">None.</p>\n";
        return;
    }
    *out += "<p>Fix the cause, then put each back on the work queue with its command.</p>\
            <table><tr><th>unit</th><th>reason</th><th>last error</th><th class=\"num\">attempt</th><th>replay</th></tr>\n";
    for d in &report.dead {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td><code>{}</code></td></tr>",
            escape(&d.unit),
            escape(&d.reason),
            escape(&d.error),
            d.attempt.map_or("?".into(), |a| a.to_string()),
            escape(&d.replay)
        );
    }
    *out += "</table>\n";
}

fn slowest(out: &mut String, tl: &Timeline) {
    let bars = tl.slowest(SLOWEST);
    if bars.is_empty() {
        return;
    }
    match bars.len() {
        1 => *out += "<h2>Slowest unit</h2>\n",
        n => {
            let _ = writeln!(out, "<h2>Slowest {n} units</h2>");
        }
    }
    *out += "<table><tr><th>unit</th><th>task</th><th>outcome</th><th class=\"num\">time</th>\
            <th class=\"num\">bytes</th><th class=\"num\">rows</th><th class=\"num\">attempt</th></tr>\n";
    for b in bars {
        // A dead-lettered unit wrote nothing: no size to show.
        let (size, rows) = match b.outcome {
            Outcome::DeadLettered => ("—".to_string(), "—".to_string()),
            Outcome::Exported => (b.bytes.map_or("?".into(), bytes), optional(b.rows)),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            escape(&b.unit),
            escape(&tl.lanes[b.lane].task),
            b.outcome.name(),
            seconds(b.seconds()),
            size,
            rows,
            b.attempt
        );
    }
    *out += "</table>\n";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<b a="1">&'x'"#),
            "&lt;b a=&quot;1&quot;&gt;&amp;&#39;x&#39;"
        );
    }

    #[test]
    fn marks_redeliveries_and_escapes_what_records_say() {
        use crate::commands::status::StatusReport;
        use crate::engine::layout::DeadRecord;
        use crate::engine::runs::{Totals, UnitState, UnitStatus};

        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let status = StatusReport {
            run_id: "r1".into(),
            source: "sqlite://a<b>.db".into(),
            destination: "file://out".into(),
            created_at: at,
            totals: Totals::default(),
            files: 0,
            bytes: 0,
            rows: 0,
            rows_unknown: 0,
            unchanged: Vec::new(),
            gone: Vec::new(),
            retired: Vec::new(),
            published: true,
            partitions: Default::default(),
            units: vec![UnitStatus {
                unit: "t<1>".into(),
                state: UnitState::DeadLettered {
                    record: Some(DeadRecord {
                        v: 1,
                        run_id: "r1".into(),
                        unit: "t<1>".into(),
                        reason: "invalid".into(),
                        message: "<script>alert(1)</script>".into(),
                        delivery_attempt: 2,
                        at: at + chrono::Duration::seconds(3),
                        task: Some("task 0/1 attempt 0".into()),
                        task_index: Some(0),
                        started_at: Some(at),
                    }),
                },
            }],
        };
        let page = render(&RunReport::new(
            &status,
            &crate::commands::report::ReplayTarget::unknown(),
        ));
        assert!(page.contains("class=\"bar dead-lettered redelivered\" data-unit=\"t&lt;1&gt;\""));
        assert!(page.contains("sqlite://a&lt;b&gt;.db"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.contains("<script"));
    }

    #[test]
    fn ticks_are_round_and_few() {
        assert_eq!(tick_step(1.0), 0.2);
        assert_eq!(tick_step(7.3), 1.0);
        assert_eq!(tick_step(300.0), 50.0);
    }
}
