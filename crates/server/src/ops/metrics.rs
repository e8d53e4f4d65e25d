//! `/metrics` in the Prometheus text exposition format (version 0.0.4).
//! Every metric is documented in `docs/deploy.md`, "Metrics".

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use converge_ledger_store::stats::Histogram;

use super::OpsState;
use super::rpc::code_name;

/// Writes one metric family at a time, with its `HELP` and `TYPE`.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: f64) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {}", number(value));
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {}", number(value));
        }
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, "", value);
    }

    fn histogram(&mut self, name: &str, labels: &str, h: &Histogram) {
        let (counts, sum) = h.read();
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, count) in h.bounds().iter().zip(&counts) {
            self.sample(
                &format!("{name}_bucket"),
                &format!("{labels}{sep}le=\"{}\"", number(*bound)),
                *count as f64,
            );
        }
        let total = counts.last().copied().unwrap_or(0) as f64;
        self.sample(
            &format!("{name}_bucket"),
            &format!("{labels}{sep}le=\"+Inf\""),
            total,
        );
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, total);
    }
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// A label value, escaped as the format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition of every metric, now.
pub(crate) fn render(state: &OpsState) -> String {
    let mut e = Exposition {
        out: String::with_capacity(16 * 1024),
    };
    let ledger = &state.ledger;

    e.family(
        "converge_ledger_rpc_duration_seconds",
        "histogram",
        "gRPC calls by service, method and status code: latency until the response (a stream: until it ended); _count is the number of calls.",
    );
    for (op, code, h) in state.rpc.series() {
        let (service, method) = op
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((&op, ""));
        let labels = format!(
            "service=\"{}\",method=\"{}\",code=\"{}\"",
            label(service),
            label(method),
            code_name(code)
        );
        e.histogram("converge_ledger_rpc_duration_seconds", &labels, &h);
    }

    let w = ledger.writer_stats();
    e.family(
        "converge_ledger_group_commit_commands",
        "histogram",
        "Write commands (appends, batches, loads) committed together in one storage write.",
    );
    e.histogram(
        "converge_ledger_group_commit_commands",
        "",
        &w.batch_commands,
    );
    e.family(
        "converge_ledger_commit_duration_seconds",
        "histogram",
        "Time of one group commit's storage write, including its fsync under --fsync always.",
    );
    e.histogram(
        "converge_ledger_commit_duration_seconds",
        "",
        &w.commit_seconds,
    );
    e.single(
        "converge_ledger_commit_failures_total",
        "counter",
        "Group commits whose storage write failed.",
        w.failed_commits.load(Ordering::Relaxed) as f64,
    );
    e.single(
        "converge_ledger_appended_entries_total",
        "counter",
        "Entries that became durable (appended or loaded) through this node.",
        w.entries.load(Ordering::Relaxed) as f64,
    );
    e.single(
        "converge_ledger_appended_payload_bytes_total",
        "counter",
        "Payload bytes of those entries.",
        w.payload_bytes.load(Ordering::Relaxed) as f64,
    );
    let (queued, queued_bytes) = ledger.writer_queued();
    e.single(
        "converge_ledger_writer_queue_commands",
        "gauge",
        "Write commands queued for the group-commit writer or being committed.",
        queued as f64,
    );
    e.single(
        "converge_ledger_writer_queue_bytes",
        "gauge",
        "Bytes of those commands.",
        queued_bytes as f64,
    );

    e.single(
        "converge_ledger_watchers",
        "gauge",
        "Open watches (gRPC and web view).",
        ledger.open_watches() as f64,
    );
    e.single(
        "converge_ledger_watchers_max",
        "gauge",
        "The watch limit (--max-watchers).",
        ledger.config().watchers_max as f64,
    );
    e.single(
        "converge_ledger_streams",
        "gauge",
        "Open server streams (Read, SnapshotStream, LoadStream).",
        ledger.open_streams() as f64,
    );
    e.single(
        "converge_ledger_append_streams",
        "gauge",
        "Open AppendStreams (pipelined appends).",
        ledger.open_append_streams() as f64,
    );
    e.single(
        "converge_ledger_watch_buffered_bytes",
        "gauge",
        "Bytes of entries the watch hub holds for live delivery.",
        ledger.buffered_bytes() as f64,
    );

    let c = &state.conns;
    e.single(
        "converge_ledger_connections",
        "gauge",
        "Open gRPC connections (in their handshake or serving).",
        c.open.load(Ordering::Relaxed) as f64,
    );
    e.single(
        "converge_ledger_connections_accepted_total",
        "counter",
        "gRPC connections accepted.",
        c.accepted.load(Ordering::Relaxed) as f64,
    );
    e.single(
        "converge_ledger_connections_refused_total",
        "counter",
        "Connections closed at once at the connection or handshake limit.",
        c.refused.load(Ordering::Relaxed) as f64,
    );
    e.single(
        "converge_ledger_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed or timed out.",
        c.failed_handshakes.load(Ordering::Relaxed) as f64,
    );
    e.single(
        "converge_ledger_inflight_request_bytes",
        "gauge",
        "Bytes of requests being received and handled, over all connections.",
        state.budget.in_use() as f64,
    );
    e.single(
        "converge_ledger_inflight_request_bytes_max",
        "gauge",
        "The request-bytes budget (--max-inflight-request-bytes).",
        state.budget.bytes_max as f64,
    );

    let s = ledger.store().stats();
    if let Some(bytes) = s.disk_bytes {
        e.single(
            "converge_ledger_storage_disk_bytes",
            "gauge",
            "Bytes embedded storage takes on disk.",
            bytes as f64,
        );
    }
    if let Some(pool) = s.pool {
        e.family(
            "converge_ledger_postgres_pool_connections",
            "gauge",
            "PostgreSQL connections of this node's pool, by state (in_use, idle), and its size (max).",
        );
        e.sample(
            "converge_ledger_postgres_pool_connections",
            "state=\"in_use\"",
            pool.in_use as f64,
        );
        e.sample(
            "converge_ledger_postgres_pool_connections",
            "state=\"idle\"",
            pool.idle as f64,
        );
        e.sample(
            "converge_ledger_postgres_pool_connections",
            "state=\"max\"",
            pool.size as f64,
        );
    }
    e.single(
        "converge_ledger_storage_healthy",
        "gauge",
        "1 while storage accepts writes; 0 after a failure that needs a restart (a failed fsync, a full disk).",
        if ledger.storage_failure().is_none() {
            1.0
        } else {
            0.0
        },
    );
    if let Some(w) = state.worldlines.as_ref() {
        e.single(
            "converge_ledger_worldline_caught_up_receipts_total",
            "counter",
            "WorldLine receipts read back from storage to bring a cached replay up to its head before an outcome's check: receipts this node's own appends had not already applied (another node's, or this node's while the replay was busy or they finished out of order).",
            w.caught_up_receipts() as f64,
        );
    }
    if let Some(p) = state.worldlines.as_ref().and_then(|w| w.projector()) {
        let stats = p.stats();
        e.single(
            "converge_ledger_projection_receipts_folded_total",
            "counter",
            "WorldLine receipts this node folded into the projections.",
            stats.receipts.load(Ordering::Relaxed) as f64,
        );
        e.single(
            "converge_ledger_projection_batches_total",
            "counter",
            "Projection batches this node stored (each a guarded write of up to 1024 receipts).",
            stats.writes.load(Ordering::Relaxed) as f64,
        );
        e.single(
            "converge_ledger_projection_conflicts_total",
            "counter",
            "Projection batches not stored because another node had folded the worldline since this node read or wrote its checkpoints.",
            stats.conflicts.load(Ordering::Relaxed) as f64,
        );
        e.single(
            "converge_ledger_projection_rebuilding",
            "gauge",
            "Projections answered from an older version while their current version rebuilds beside it.",
            stats.rebuilding.load(Ordering::Relaxed) as f64,
        );
        e.single(
            "converge_ledger_projection_version_switches_total",
            "counter",
            "Projection versions this node switched the queries to once they had caught up with the version they replace.",
            stats.switches.load(Ordering::Relaxed) as f64,
        );
        e.single(
            "converge_ledger_projection_retired_keys_total",
            "counter",
            "Keys of retired projection versions this node deleted.",
            stats.retired_keys.load(Ordering::Relaxed) as f64,
        );
        e.family(
            "converge_ledger_projection_lag_seconds",
            "histogram",
            "Per fold: seconds from a worldline's receipts being committed (or announced by another node) to its projections stored up to them.",
        );
        e.histogram(
            "converge_ledger_projection_lag_seconds",
            "",
            &stats.lag_seconds,
        );
        let q = p.queue();
        e.family(
            "converge_ledger_projection_worldlines",
            "gauge",
            "Worldlines the projector holds, by state: queued to be folded, retrying (storage unavailable), failed (a stored receipt breaks a rule; see worldline verify), rebuilding (queued for a step of a projection version being rebuilt), rebuild_failed (that version refused a receipt; the version queries read goes on).",
        );
        for (state, n) in [
            ("queued", q.queued),
            ("retrying", q.retrying),
            ("failed", q.failed),
            ("rebuilding", q.rebuilding),
            ("rebuild_failed", q.rebuild_failed),
        ] {
            e.sample(
                "converge_ledger_projection_worldlines",
                &format!("state=\"{state}\""),
                n as f64,
            );
        }
    }
    e.family(
        "converge_ledger_build_info",
        "gauge",
        "The server's version and storage backend; always 1.",
    );
    e.sample(
        "converge_ledger_build_info",
        &format!(
            "version=\"{}\",storage=\"{}\"",
            env!("CARGO_PKG_VERSION"),
            label(&state.storage)
        ),
        1.0,
    );
    e.out
}
