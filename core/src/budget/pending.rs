//! Settlements that could not reach the shared ledger, kept on disk until a start applies
//! them: one JSON object per line (`{"keys": [...], "reserved": N, "actual": N}`, amounts in
//! picodollars), one file per write (`settlements-<unix nanos>-<pid>.jsonl`), written to a
//! temporary name, synced, then renamed, so a file that exists is whole.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Picodollars;

/// One settlement: release `reserved` on every line of `keys` and add `actual` to its spend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    /// The ledger lines (`tenant:m2026-11:acme`), without the store's key prefix.
    pub keys: Vec<String>,
    /// The reservation it ends (0: spend without a reservation).
    pub reserved: Picodollars,
    /// The spend it adds (0: a refund).
    pub actual: Picodollars,
}

const SUFFIX: &str = ".jsonl";

/// Writes `settlements` as one new file under `dir` (created when missing); its path.
pub fn write(dir: &Path, settlements: &[Settlement]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("settlements-{nanos:024}-{}", std::process::id());
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(format!("{name}{SUFFIX}"));
    let mut f = std::fs::File::create(&tmp)?;
    for s in settlements {
        let line = serde_json::to_string(s).map_err(std::io::Error::other)?;
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
    }
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

/// Every pending file under `dir`, oldest first, with its settlements (none when `dir` does
/// not exist). A line that does not parse is skipped and logged.
pub fn read(dir: &Path) -> std::io::Result<Vec<(PathBuf, Vec<Settlement>)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("settlements-") && n.ends_with(SUFFIX))
        })
        .collect();
    paths.sort();
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(&path)?;
        let mut settlements = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            match serde_json::from_str::<Settlement>(line) {
                Ok(s) => settlements.push(s),
                Err(e) => {
                    tracing::error!(path = %path.display(), line = i + 1, error = %e, "Skipped a pending settlement that does not parse");
                }
            }
        }
        out.push((path, settlements));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_settlements_read_back_oldest_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let a = vec![Settlement {
            keys: vec!["key:total:k".into(), "tenant:total:t".into()],
            reserved: 47_000_000,
            actual: u128::from(u64::MAX) + 5,
        }];
        let b = vec![Settlement {
            keys: vec!["key:total:k".into()],
            reserved: 1,
            actual: 0,
        }];
        let pa = write(dir.path(), &a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let pb = write(&dir.path().join("."), &b).unwrap();
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        let got = read(dir.path()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.file_name(), pa.file_name());
        assert_eq!(got[0].1, a);
        assert_eq!(got[1].0.file_name(), pb.file_name());
        assert_eq!(got[1].1, b);
        assert!(read(&dir.path().join("missing")).unwrap().is_empty());
    }
}
