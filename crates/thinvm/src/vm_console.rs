//! `thinvm vm console NAME`: this terminal attached to a VM's console through thinvmd (an
//! HTTP upgrade on the daemon's socket); Ctrl-A x detaches.

use std::io::Write;

use api::client::{Client, ClientError};

/// Attaches this terminal to the VM's console through the daemon (an HTTP upgrade).
pub async fn console(c: &Client, name: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = c
        .upgrade(&format!("/v1/vms/{name}/console"), "thinvm-console")
        .await
        .map_err(|e| match e {
            ClientError::Api(a) => anyhow::anyhow!("{} ({})", a.message, a.code),
            other => anyhow::anyhow!("{other}"),
        })?;
    let raw = vmm::console::RawTerminal::enable(0)?;
    eprint!("thinvm: attached to {name}'s console; Ctrl-A x detaches\r\n");
    // Standard input is read on its own thread (a blocking read cannot be cancelled).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::Builder::new()
        .name("console-stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 1024];
            loop {
                match std::io::Read::read(&mut std::io::stdin(), &mut buf) {
                    Ok(n) if n > 0 => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        })?;
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut out = std::io::stdout();
    let mut pending = false;
    let mut buf = [0u8; 4096];
    loop {
        tokio::select! {
            input = rx.recv() => {
                let Some(input) = input else { break };
                let (bytes, quit) = if raw.is_some() {
                    vmm::console::filter_escape(&input, &mut pending)
                } else {
                    (input, false)
                };
                wr.write_all(&bytes).await?;
                if quit {
                    break;
                }
            }
            n = rd.read(&mut buf) => {
                let n = n?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
                out.flush()?;
            }
        }
    }
    drop(raw);
    eprintln!("\nthinvm: detached from {name}");
    Ok(())
}
