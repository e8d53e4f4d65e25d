use base64::Engine as _;
use converge_ledger_client::Entry;
use serde_json::{Value, json};

/// Human or JSON-lines output.
#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    pub fn entry(&self, context: &str, e: &Entry) {
        if self.json {
            println!("{}", entry_json(context, e));
        } else {
            let meta = if e.metadata.is_empty() {
                String::new()
            } else {
                let pairs: Vec<String> =
                    e.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("  [{}]", pairs.join(" "))
            };
            println!(
                "#{:<6} {:<16} {}{}",
                e.sequence,
                e.key,
                payload_text(&e.payload),
                meta
            );
        }
    }

    pub fn value(&self, human: String, json: Value) {
        if self.json {
            println!("{json}");
        } else {
            println!("{human}");
        }
    }
}

fn entry_json(context: &str, e: &Entry) -> Value {
    let mut v = json!({
        "context_id": context,
        "sequence": e.sequence,
        "id": e.id(),
        "key": e.key,
        "metadata": e.metadata,
        "appended_at_ns": e.appended_at_ns,
        "lamport": e.lamport,
        "hash": e.hash.to_hex(),
        "prev_hash": e.prev_hash.to_hex(),
    });
    match std::str::from_utf8(&e.payload) {
        Ok(s) => v["payload"] = json!(s),
        Err(_) => {
            v["payload_base64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(&e.payload))
        }
    }
    v
}

/// The payload as text when it is printable UTF-8, else a short hex preview.
fn payload_text(p: &[u8]) -> String {
    const MAX: usize = 120;
    match std::str::from_utf8(p) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            let one_line = s.replace('\n', "\\n");
            if one_line.chars().count() > MAX {
                format!(
                    "{}… ({} bytes)",
                    one_line.chars().take(MAX).collect::<String>(),
                    p.len()
                )
            } else {
                one_line
            }
        }
        _ => {
            let hex: String = p.iter().take(32).map(|b| format!("{b:02x}")).collect();
            format!(
                "0x{hex}{} ({} bytes)",
                if p.len() > 32 { "…" } else { "" },
                p.len()
            )
        }
    }
}
