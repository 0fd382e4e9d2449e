//! Draws the bench's and the soak's charts with gnuplot: the data file and the script live beside the chart
//! only while gnuplot runs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Where a chart's data goes while it is drawn; the script names it.
pub fn data_path(chart: &Path) -> PathBuf {
    chart.with_extension("dat")
}

/// Writes `data` to [`data_path`], runs `script` (which sets its output to `chart`), then removes both files.
pub fn draw(chart: &Path, data: &str, script: &str) -> anyhow::Result<()> {
    let data_path = data_path(chart);
    fs::write(&data_path, data)
        .with_context(|| format!("could not write {}", data_path.display()))?;
    let script_path = chart.with_extension("gp");
    fs::write(&script_path, script)
        .with_context(|| format!("could not write {}", script_path.display()))?;
    let out = Command::new("gnuplot")
        .arg(&script_path)
        .stdin(Stdio::null())
        .output()
        .context("could not run gnuplot (`cargo xtask setup --for bench` or `--for soak` installs gnuplot-nox)");
    let _ = fs::remove_file(&script_path);
    let _ = fs::remove_file(&data_path);
    let out = out?;
    if !out.status.success() {
        bail!(
            "gnuplot could not draw {}: {}",
            chart.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
