//! Ready files: a long-running subcommand (`serve`, `logger`, `mock`) started with
//! `--ready-file PATH` writes the addresses it bound, as one JSON object, to `PATH.tmp` and
//! renames that to `PATH` once it serves. Whoever started it can give it port 0 and read the
//! port the system picked, instead of guessing a free port that another process may take first;
//! the rename means a reader never sees a half-written file.

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::sync::oneshot;

/// Writes `addresses` (e.g. `{"grpc": "127.0.0.1:4000", "admin": "127.0.0.1:4001"}`) to
/// `path`: first to `path.tmp`, then renamed into place.
pub fn write(path: &Path, addresses: &serde_json::Value) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{addresses}\n"))
        .with_context(|| format!("cannot write the ready file {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        format!(
            "cannot rename {} to the ready file {}",
            tmp.display(),
            path.display()
        )
    })
}

/// Runs `server`; once it sends its bound addresses on `bound`, writes them to `ready_file`
/// (when given) in the form `describe` makes. A server that fails before it is ready returns
/// its error; a ready file that cannot be written ends the process with that error.
pub async fn report<T>(
    server: impl Future<Output = anyhow::Result<()>>,
    bound: oneshot::Receiver<T>,
    ready_file: Option<PathBuf>,
    describe: impl FnOnce(T) -> serde_json::Value,
) -> anyhow::Result<()> {
    tokio::pin!(server);
    tokio::select! {
        done = &mut server => return done,
        addresses = bound => {
            if let (Ok(addresses), Some(path)) = (addresses, &ready_file) {
                write(path, &describe(addresses))?;
            }
        }
    }
    server.await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_appears_whole_and_no_temporary_file_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.ready");
        let addresses = serde_json::json!({"admin": "127.0.0.1:4001"});
        write(&path, &addresses).unwrap();
        let read: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(read, addresses);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["serve.ready"]);
    }

    #[test]
    fn an_unwritable_place_is_an_error_naming_the_file() {
        let err = write(
            Path::new("/nonexistent-dir/x.ready"),
            &serde_json::json!({}),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent-dir/x.ready.tmp"));
    }

    #[tokio::test]
    async fn the_file_is_written_once_the_server_says_it_is_ready_and_the_server_runs_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mock.ready");
        let (ready, bound) = oneshot::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let seen = path.clone();
        let server = async move {
            assert!(!seen.exists(), "written before the server was ready");
            let _ = ready.send(4001_u16);
            // Still running once the file is there.
            let _ = stopped.await;
            anyhow::Ok(())
        };
        let watcher = {
            let path = path.clone();
            async move {
                while !path.exists() {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                let _ = stop.send(());
            }
        };
        let describe = |port| serde_json::json!({ "listen": format!("127.0.0.1:{port}") });
        let (served, ()) =
            tokio::join!(report(server, bound, Some(path.clone()), describe), watcher);
        served.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"listen\":\"127.0.0.1:4001\"}\n"
        );
    }

    #[tokio::test]
    async fn a_server_failing_before_it_is_ready_returns_its_error_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.ready");
        let (ready, bound) = oneshot::channel::<u16>();
        let server = async move {
            drop(ready);
            anyhow::bail!("cannot listen")
        };
        let err = report(server, bound, Some(path.clone()), |_| serde_json::json!({}))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "cannot listen");
        assert!(!path.exists());
    }
}
