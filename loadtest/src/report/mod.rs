//! Writing results: Locust-compatible CSVs ([`csv`]), the JSON summary,
//! the HTML report ([`html`]) and the closing text on stdout ([`text`]).
//!
//! [`series`] turns a summary into table rows and per-second points; the
//! CSVs and the HTML page are both drawn from it, and none of the writers
//! depends on another.

mod csv;
mod html;
mod series;
mod text;

use std::path::Path;

use anyhow::Context;

pub use text::text_report;

use crate::Outcome;
use crate::cli::OutputArgs;
use crate::criteria::{self, Evaluation};
use crate::summary::Summary;

/// Creates the folder `path` goes in, if it names one.
fn create_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    create_parent(path)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes every output the command line asked for.
fn write_outputs(s: &Summary, eval: &Evaluation, out: &OutputArgs) -> anyhow::Result<()> {
    let needs_series = out.csv.is_some() || out.html.is_some();
    let series = needs_series.then(|| series::series(s));
    if let Some(prefix) = &out.csv {
        let series = series.as_ref().expect("computed");
        let files = [
            ("stats", csv::stats(s)),
            ("stats_history", csv::history(series)),
            ("failures", csv::failures(s)),
            ("exceptions", csv::exceptions(s)),
        ];
        for (suffix, text) in files {
            write(Path::new(&format!("{prefix}_{suffix}.csv")), &text)?;
        }
    }
    if let Some(path) = &out.html {
        let series = series.as_ref().expect("computed");
        write(path, &html::render(s, eval, series))?;
    }
    if let Some(path) = &out.json {
        create_parent(path)?;
        s.write(path)?;
    }
    Ok(())
}

/// Judges, writes and prints a finished summary.
pub(crate) fn finish(summary: Summary, out: &OutputArgs, quiet: bool) -> anyhow::Result<Outcome> {
    let eval = criteria::evaluate(&summary);
    write_outputs(&summary, &eval, out)?;
    if !quiet || !eval.passed() {
        // Not `print!`: a closed pipe (`| head`) must not panic the run
        // after its reports are written.
        use std::io::Write as _;
        let _ = std::io::stdout()
            .lock()
            .write_all(text_report(&summary, &eval).as_bytes());
    }
    Ok(Outcome {
        passed: eval.passed(),
        failed: eval.failed().iter().map(|v| v.criterion.clone()).collect(),
        evaluation: eval,
        summary,
    })
}
