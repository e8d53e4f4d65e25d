//! Suggestors and an in-process ledger server shared by the examples.
#![allow(dead_code)]

use std::sync::Arc;

mod suggestors;
#[allow(unused_imports)] // each example uses some of them
pub use suggestors::{Generator, OnExecute, Stage};

/// Starts a ledger server (memory storage) on a loopback port, on a thread
/// of its own, and returns its URL. It lives until the process exits.
pub fn start_memory_server() -> String {
    use converge_ledger_server::{Ledger, LedgerConfig, ServerConfig};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("address"))
                .expect("send");
            let ledger = Ledger::new(
                Arc::new(converge_ledger_store::MemoryStore::new()),
                LedgerConfig::default(),
            );
            converge_ledger_server::run(
                listener,
                ledger,
                ServerConfig::default(),
                std::future::pending(),
            )
            .await
            .expect("server");
        });
    });
    format!("http://{}", rx.recv().expect("server address"))
}

/// Client options from `--token TOKEN` or `$CONVERGE_LEDGER_TOKEN`, for a
/// ledger with an auth file.
pub fn client_options() -> converge_ledger_client::ClientOptions {
    converge_ledger_client::ClientOptions {
        token: arg("--token").or_else(|| std::env::var("CONVERGE_LEDGER_TOKEN").ok()),
        ..Default::default()
    }
}

/// Recorder options with [`client_options`].
pub fn recorder_options() -> converge_ledger_converge::RecorderOptions {
    converge_ledger_converge::RecorderOptions {
        client: client_options(),
        ..Default::default()
    }
}

/// The value following `--name` on the command line.
pub fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Whether `--name` is on the command line.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}
