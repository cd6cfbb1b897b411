//! Percentiles and the results table.

/// Percentile (nearest rank) of sorted values.
pub(super) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[derive(Debug, Clone)]
pub(super) struct Dist {
    pub(super) n: usize,
    pub(super) p50: f64,
    pub(super) p99: f64,
    pub(super) max: f64,
    pub(super) min: f64,
}

impl Dist {
    pub(super) fn of(mut values: Vec<f64>) -> Dist {
        values.sort_by(|a, b| a.total_cmp(b));
        Dist {
            n: values.len(),
            p50: pct(&values, 50.0),
            p99: pct(&values, 99.0),
            max: values.last().copied().unwrap_or(f64::NAN),
            min: values.first().copied().unwrap_or(f64::NAN),
        }
    }

    /// `p50 … / p99 … / max … ms (n=…)`, for the tables.
    pub(super) fn brief(&self) -> String {
        format!("p50 {:.2} / p99 {:.2} / max {:.2} ms (n={})", self.p50, self.p99, self.max, self.n)
    }

    pub(super) fn show(&self) -> String {
        format!(
            "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  min {:.2} ms  (n={})",
            self.p50, self.p99, self.max, self.min, self.n
        )
    }
}

pub(super) struct Table {
    pub(super) rows: Vec<[String; 4]>,
}

impl Table {
    pub(super) fn row(&mut self, what: &str, result: String, target: &str, ok: Option<bool>) {
        let verdict = match ok {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "-",
        };
        self.rows.push([what.into(), result, target.into(), verdict.into()]);
    }

    pub(super) fn print(&self) {
        let header = ["measurement", "result", "target", ""];
        let mut widths = header.map(str::len);
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let line = |cells: [&str; 4]| {
            let mut s = String::from("|");
            for (c, w) in cells.iter().zip(widths) {
                s.push_str(&format!(" {c:<w$} |"));
            }
            println!("{s}");
        };
        line(header);
        println!("|{}|", widths.map(|w| "-".repeat(w + 2)).join("|"));
        for r in &self.rows {
            line([&r[0], &r[1], &r[2], &r[3]]);
        }
    }
}
