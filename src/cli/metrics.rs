//! `--metrics-file`: Prometheus textfile-collector metrics for backup, verify, prune and drill,
//! written atomically (temporary file, fsync, rename) so the collector never reads half a file.
//! Metric names are documented in the README and are a stable interface.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// One metric value.
pub struct Sample {
    pub name: &'static str,
    pub help: &'static str,
    pub value: f64,
}

pub fn sample(name: &'static str, help: &'static str, value: impl Into<f64>) -> Sample {
    Sample {
        name,
        help,
        value: value.into(),
    }
}

pub struct MetricsFile {
    path: PathBuf,
    command: &'static str,
    repository: String,
}

const LAST_SUCCESS: &str = "tvault_last_success_timestamp_seconds";

impl MetricsFile {
    /// Checks now that the file can be written, so a bad path fails before any work is done.
    pub fn prepare(path: &Path, command: &'static str, repository: &Path) -> Result<MetricsFile> {
        let m = MetricsFile {
            path: path.to_path_buf(),
            command,
            repository: repository.display().to_string(),
        };
        if path.is_dir() {
            anyhow::bail!(
                "cannot write the metrics file {}: it is a directory",
                path.display()
            );
        }
        let probe = m.tmp_path();
        File::create(&probe)
            .and_then(|_| fs::remove_file(&probe))
            .with_context(|| format!("cannot write the metrics file {}", path.display()))?;
        Ok(m)
    }

    fn tmp_path(&self) -> PathBuf {
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        self.path
            .with_file_name(format!(".{name}.tmp-{}", std::process::id()))
    }

    /// The last success time recorded by an earlier run, kept when this run fails.
    fn previous_success(&self) -> Option<f64> {
        let text = fs::read_to_string(&self.path).ok()?;
        text.lines()
            .find(|l| l.starts_with(LAST_SUCCESS))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    pub fn write(&self, success: bool, duration: Duration, samples: &[Sample]) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let last_success = if success {
            Some(now)
        } else {
            self.previous_success()
        };
        let mut all = vec![
            sample(
                "tvault_last_run_success",
                "1 if the last run succeeded (exit code 0), else 0",
                u8::from(success),
            ),
            sample(
                "tvault_last_run_timestamp_seconds",
                "Unix time the last run ended",
                now,
            ),
            sample(
                "tvault_duration_seconds",
                "How long the last run took",
                duration.as_secs_f64(),
            ),
        ];
        if let Some(t) = last_success {
            all.push(sample(
                LAST_SUCCESS,
                "Unix time of the last successful run",
                t,
            ));
        }
        all.extend(samples.iter().map(|s| sample(s.name, s.help, s.value)));
        let labels = format!(
            "command=\"{}\",repository=\"{}\"",
            self.command,
            self.repository.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let mut text = String::new();
        for s in &all {
            text.push_str(&format!(
                "# HELP {} {}\n# TYPE {} gauge\n{}{{{labels}}} {}\n",
                s.name, s.help, s.name, s.name, s.value
            ));
        }
        let tmp = self.tmp_path();
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        };
        write()
            .inspect_err(|_| {
                let _ = fs::remove_file(&tmp);
            })
            .with_context(|| format!("cannot write the metrics file {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_written_whole_and_keep_the_last_success_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tvault.prom");
        let m = MetricsFile::prepare(&path, "backup", Path::new("/r")).unwrap();
        m.write(
            true,
            Duration::from_secs(2),
            &[sample("tvault_backup_bytes_added", "h", 42u32)],
        )
        .unwrap();
        let first = fs::read_to_string(&path).unwrap();
        assert!(
            first.contains("tvault_backup_bytes_added{command=\"backup\",repository=\"/r\"} 42\n")
        );
        assert!(first.contains("tvault_last_run_success{command=\"backup\",repository=\"/r\"} 1\n"));
        let success_line = first
            .lines()
            .find(|l| l.starts_with(LAST_SUCCESS))
            .unwrap()
            .to_string();

        m.write(false, Duration::from_secs(1), &[]).unwrap();
        let second = fs::read_to_string(&path).unwrap();
        assert!(
            second.contains("tvault_last_run_success{command=\"backup\",repository=\"/r\"} 0\n")
        );
        assert!(
            second.contains(&success_line),
            "the last success time is kept"
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn an_unwritable_metrics_path_fails_up_front() {
        let err = MetricsFile::prepare(
            Path::new("/nonexistent/dir/m.prom"),
            "verify",
            Path::new("/r"),
        )
        .err()
        .unwrap();
        assert!(
            format!("{err:#}").contains("cannot write the metrics file /nonexistent/dir/m.prom")
        );
    }
}
