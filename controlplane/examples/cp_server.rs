//! A control plane without the rest of the `tollgate` binary, for load measurements in a
//! release build: `cargo run --release -p tollgate-controlplane --example cp_server --
//! CONFIG READY_FILE` (see `docs/CONTROL-PLANE.md`, "Throughput").

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(config), Some(ready)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: cp_server CONFIG READY_FILE");
    };
    let config = tollgate_controlplane::Config::load(
        &PathBuf::from(config),
        &tollgate_core::env::ProcessEnv,
    )
    .map_err(|errs| anyhow::anyhow!(errs.join("; ")))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let running = tollgate_controlplane::start(config, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
            std::fs::write(&ready, format!("{{\"listen\":\"{}\"}}\n", running.addr))?;
            running.task.await?
        })
}
