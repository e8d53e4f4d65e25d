//! `converge-ledger token create`: a new bearer token, and the lines of the
//! auth file that grant it rights. The token is printed once; the server
//! only ever stores its SHA-256.

use clap::Subcommand;
use converge_ledger_server::{Grant, new_token};
use serde_json::json;

use crate::output::Output;

#[derive(Subcommand, Debug)]
pub enum TokenArgs {
    /// Print a new token for principal NAME and the auth-file entry that
    /// grants it rights.
    Create {
        /// The principal's name (in logs and refusals).
        name: String,
        /// A right on contexts: read|append|load|admin:PATTERN, where
        /// PATTERN is an exact id, a prefix ending in * or * for all;
        /// repeatable.
        #[arg(long = "grant", value_name = "RIGHT:PATTERN", value_parser = Grant::parse)]
        grants: Vec<Grant>,
    },
}

pub fn run(out: Output, a: TokenArgs) -> anyhow::Result<()> {
    let TokenArgs::Create { name, grants } = a;
    if name.is_empty() || name.contains('"') || name.chars().any(char::is_control) {
        anyhow::bail!("the principal name must be non-empty, without quotes or control characters");
    }
    let (token, hash) = new_token();
    let grants: Vec<String> = grants.iter().map(ToString::to_string).collect();
    let entry = format!(
        "[[principals]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\ngrants = [{}]\n",
        hash.to_hex(),
        grants
            .iter()
            .map(|g| format!("\"{g}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out.value(
        format!(
            "token (give it to the client; it is not shown again):\n{token}\n\nadd to the auth file \
             (--auth-file), then reload the server (SIGHUP):\n{entry}"
        ),
        json!({"name": name, "token": token, "token_sha256": hash.to_hex(), "grants": grants, "auth_file_entry": entry}),
    );
    Ok(())
}
