//! The HTTP listener (`serve --http-listen`): `/metrics`, `/healthz`, the
//! web view (`/`) and the read-only JSON API it uses (`/api/...`).
//!
//! HTTP/1.1, GET only, no request bodies. Bounded: at most
//! [`HTTP_CONNECTIONS_MAX`] connections, 10 s to send a request's headers,
//! 16 KiB of them, pages of at most [`PAGE_ENTRIES_MAX`] entries within
//! the server's response limit, and every live tail is a watch under
//! `--max-watchers`. The API honours authorization exactly as gRPC does:
//! `Authorization: Bearer <token>`, `read` on the context.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use converge_ledger_core::Entry;
use futures_util::StreamExt as _;
use http::{Method, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{Health, OpsState};
use crate::{LedgerError, Right};

/// Most open HTTP connections.
pub const HTTP_CONNECTIONS_MAX: usize = 64;
/// Most entries in one page of `/api/entries`.
pub const PAGE_ENTRIES_MAX: usize = 500;
/// Most contexts in one page of `/api/contexts`.
const CONTEXTS_PAGE_MAX: usize = 500;

const PAGE: &str = include_str!("web.html");

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serves the HTTP listener until `stop` turns true.
pub async fn serve_http(
    listener: TcpListener,
    state: Arc<OpsState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(HTTP_CONNECTIONS_MAX));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => Some(a),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(accepted) = accepted else { break };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let state = state.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let stopped = tokio::select! {
                _ = conn.as_mut() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopped {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
            }
        });
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-content-type-options", "nosniff")
        .body(Full::new(body.into()).boxed_unsync())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync()))
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    full(status, "application/json", value.to_string())
}

/// An API error: the HTTP status for the gRPC one, and the message.
fn error(status: tonic::Status) -> Response<Body> {
    let http = match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::info!(status = %http, error = status.message(), "web API request refused");
    json_response(
        http,
        &json!({"error": status.message(), "code": format!("{:?}", status.code())}),
    )
}

async fn route(state: &OpsState, req: hyper::Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return full(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET is served here; the ledger is written over gRPC\n",
        );
    }
    let query = Query::parse(req.uri().query().unwrap_or(""));
    match req.uri().path() {
        "/metrics" => full(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            super::metrics::render(state),
        ),
        "/healthz" => match state.health.borrow().clone() {
            Health::Serving => full(StatusCode::OK, "text/plain", "SERVING\n"),
            Health::NotServing(why) => full(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("NOT_SERVING: {why}\n"),
            ),
        },
        "/" | "/index.html" => full(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        path if path.starts_with("/api/") => {
            let caller = match state.auth.authenticate_http(req.headers()) {
                Ok(c) => c,
                Err(e) => return error(e),
            };
            let answer = match path {
                "/api/info" => Ok(info(state)),
                "/api/contexts" => contexts(state, &caller, &query).await,
                "/api/head" => head(state, &caller, &query).await,
                "/api/entries" => entries(state, &caller, &query).await,
                "/api/tail" => return tail(state, &caller, &query).unwrap_or_else(error),
                "/api/provenance" => provenance(state, &caller, &query).await,
                _ => Err(tonic::Status::not_found(format!(
                    "no API {path}; there are /api/info, /api/contexts, /api/head, /api/entries, /api/tail"
                ))),
            };
            match answer {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => error(e),
            }
        }
        _ => full(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; the web view is at /, metrics at /metrics, health at /healthz\n",
        ),
    }
}

/// Query parameters, percent-decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Query {
        Query(
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn context(&self) -> Result<&str, tonic::Status> {
        self.get("context")
            .ok_or_else(|| tonic::Status::invalid_argument("the query needs context=ID"))
    }

    fn number(&self, name: &str, default: u64) -> Result<u64, tonic::Status> {
        match self.get(name) {
            None | Some("") => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                tonic::Status::invalid_argument(format!(
                    "{name}={v:?} is not a number; a non-negative integer is allowed"
                ))
            }),
        }
    }
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space).
fn decode(s: &str) -> String {
    super::rpc::percent_decode(&s.replace('+', " "))
}

fn info(state: &OpsState) -> Value {
    let l = state.ledger.limits();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "storage": state.storage,
        "public_key": state.ledger.public_key().to_string(),
        "authentication": state.auth.is_configured(),
        "payload_bytes_max": l.payload_bytes_max,
        "batch_entries_max": l.batch_entries_max,
        "watchers": state.ledger.open_watches(),
        "watchers_max": state.ledger.config().watchers_max,
        "healthy": matches!(&*state.health.borrow(), Health::Serving),
    })
}

async fn contexts(
    state: &OpsState,
    caller: &crate::Caller,
    q: &Query,
) -> Result<Value, tonic::Status> {
    let after = q.get("after").unwrap_or("").to_owned();
    let limit = (q.number("limit", 100)? as usize).clamp(1, CONTEXTS_PAGE_MAX);
    let visible = caller.clone();
    let list = state
        .ledger
        .list_contexts(&after, limit, move |c| visible.allows(Right::Read, c))
        .await
        .map_err(tonic::Status::from)?;
    let contexts: Vec<Value> = list
        .iter()
        .map(|(id, h)| {
            json!({
                "context": id,
                "sequence": h.sequence.to_string(),
                "hash": h.hash.to_hex(),
                "merkle_root": h.merkle_root().to_hex(),
                "appended_at_ns": h.appended_at_ns.to_string(),
                "lamport": h.lamport.to_string(),
            })
        })
        .collect();
    Ok(json!({"contexts": contexts, "more": list.len() == limit}))
}

/// The query's context, if it is a valid id the caller may read.
fn readable<'q>(
    state: &OpsState,
    caller: &crate::Caller,
    q: &'q Query,
) -> Result<&'q str, tonic::Status> {
    let context = q.context()?;
    caller.require(Right::Read, context)?;
    state
        .ledger
        .limits()
        .check_context_id(context)
        .map_err(|e| tonic::Status::from(LedgerError::from(e)))?;
    Ok(context)
}

/// `/api/provenance?context=wll/<hex>&key=K`: where a state key's value
/// came from, by the `provenance_dag` projection: the outcome that last
/// wrote it and the commitment it answered, each as the full receipt.
async fn provenance(
    state: &OpsState,
    caller: &crate::Caller,
    q: &Query,
) -> Result<Value, tonic::Status> {
    use converge_ledger_proto::ledger::v1 as pb;
    let context = readable(state, caller, q)?;
    let w = converge_ledger_worldline::WorldlineId::from_context_id(context).map_err(|e| {
        tonic::Status::invalid_argument(format!("context {context:?}: {}", e.message()))
    })?;
    let key = q
        .get("key")
        .filter(|k| !k.is_empty())
        .ok_or_else(|| tonic::Status::invalid_argument("the query needs key=STATE_KEY"))?;
    let worldlines = state.worldlines.as_ref().ok_or_else(|| {
        tonic::Status::failed_precondition("this server serves no WorldLine profile")
    })?;
    let query = crate::worldline::ProjectionQuery::parse(Some(pb::ProjectionQuery {
        worldline_id: w.0.to_vec(),
        ..Default::default()
    }))?;
    let r = worldlines
        .query_provenance(
            query,
            pb::QueryProvenanceRequest {
                target: Some(pb::query_provenance_request::Target::Key(key.to_owned())),
                at_seq: q.number("seq", 0)?,
                ..Default::default()
            },
        )
        .await?;
    let position = r.position.unwrap_or_default();
    let mut v = json!({
        "context": context,
        "key": key,
        "projected_through": position.through_seq.to_string(),
        "head": position.head_seq.to_string(),
        "found": r.lineage.is_some(),
    });
    if let (Some(write), Some(lineage)) = (r.write, r.lineage) {
        v["deleted"] = json!(write.deleted);
        v["evidence"] = json!(
            lineage
                .evidence
                .iter()
                .map(|e| json!({"uri": e.uri, "digest": hex(&e.digest)}))
                .collect::<Vec<_>>()
        );
        v["proofs"] = json!(
            lineage
                .proofs
                .iter()
                .map(|e| json!({"uri": e.uri, "digest": hex(&e.digest)}))
                .collect::<Vec<_>>()
        );
        for (name, hash) in [
            (
                "outcome",
                lineage
                    .outcome
                    .as_ref()
                    .and_then(|o| o.receipt.as_ref())
                    .map(|r| r.receipt_hash.clone()),
            ),
            (
                "commitment",
                lineage
                    .commitment
                    .as_ref()
                    .and_then(|c| c.receipt.as_ref())
                    .map(|r| r.receipt_hash.clone()),
            ),
        ] {
            let Some(hash) = hash.and_then(|h| converge_ledger_core::Digest::from_slice(&h)) else {
                continue;
            };
            match worldlines.get_by_hash(&hash).await {
                Ok(Some(receipt)) => v[name] = crate::receipt_json(&receipt),
                Ok(None) => v[name] = json!({"missing": hash.to_hex()}),
                Err(e) => v[name] = json!({"error": tonic::Status::from(e).message()}),
            }
        }
    }
    Ok(v)
}

async fn head(state: &OpsState, caller: &crate::Caller, q: &Query) -> Result<Value, tonic::Status> {
    let context = readable(state, caller, q)?;
    let (head, signed) = state
        .ledger
        .signed_head(context)
        .await
        .map_err(tonic::Status::from)?;
    Ok(json!({
        "context": context,
        "sequence": head.sequence.to_string(),
        "hash": head.hash.to_hex(),
        "merkle_root": signed.root.to_hex(),
        "timestamp_ns": signed.timestamp_ns.to_string(),
        "lamport": head.lamport.to_string(),
        "loaded_through": signed.loaded.map_or(0, |l| l.through).to_string(),
        "loaded_signer": signed.loaded.map_or(String::new(), |l| l.signer.to_string()),
        "public_key": signed.public_key.to_string(),
        "signature": hex(&signed.signature),
        "statement_domain": "converge-ledger/signed-head/v2",
    }))
}

async fn entries(
    state: &OpsState,
    caller: &crate::Caller,
    q: &Query,
) -> Result<Value, tonic::Status> {
    let context = readable(state, caller, q)?;
    let after = q.number("after", 0)?;
    let limit = (q.number("limit", 100)? as usize).clamp(1, PAGE_ENTRIES_MAX);
    // Base64 makes payloads a third larger: stay within the response limit.
    let bytes_max = state.ledger.config().effective_response_bytes_max() * 3 / 4;
    let (list, more) = state
        .ledger
        .read_chunk(context, after, u64::MAX, None, limit, bytes_max)
        .await
        .map_err(tonic::Status::from)?;
    let head = state
        .ledger
        .head(context)
        .await
        .map_err(tonic::Status::from)?
        .map_or(0, |h| h.sequence);
    Ok(json!({
        "context": context,
        "head": head.to_string(),
        "entries": list.iter().map(|e| with_receipt(context, e)).collect::<Vec<_>>(),
        "more": more || list.last().is_some_and(|e| e.sequence < head),
    }))
}

fn entry_json(e: &Entry) -> Value {
    json!({
        "sequence": e.sequence.to_string(),
        "key": e.key,
        "payload": base64::engine::general_purpose::STANDARD.encode(&e.payload),
        "metadata": e.metadata,
        "appended_at_ns": e.appended_at_ns.to_string(),
        "lamport": e.lamport.to_string(),
        "hash": e.hash.to_hex(),
        "prev_hash": e.prev_hash.to_hex(),
    })
}

/// An entry, and for an entry of a worldline its receipt decoded (or why
/// it does not decode).
fn with_receipt(context: &str, e: &Entry) -> Value {
    let mut v = entry_json(e);
    if let Ok(w) = converge_ledger_worldline::WorldlineId::from_context_id(context) {
        let limits = converge_ledger_worldline::WorldlineLimits::default();
        match converge_ledger_worldline::Receipt::from_entry(&w, e, &limits) {
            Ok(r) => v["receipt"] = crate::receipt_json(&r),
            Err(err) => v["receipt_error"] = json!(err.to_string()),
        }
    }
    v
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// New entries as they are appended, one JSON object per line
/// (`application/x-ndjson`), from `after`; ends when the server stops or
/// the client goes away.
fn tail(
    state: &OpsState,
    caller: &crate::Caller,
    q: &Query,
) -> Result<Response<Body>, tonic::Status> {
    let context = q.context()?;
    caller.require(Right::Read, context)?;
    let after = q.number("after", 0)?;
    let watch = state
        .ledger
        .watch(context.to_owned(), None, after)
        .map_err(tonic::Status::from)?;
    let context = context.to_owned();
    let lines = watch.map(move |item| {
        let line = match item {
            Ok(e) => with_receipt(&context, &e),
            Err(e) => json!({"error": tonic::Status::from(e).message()}),
        };
        Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{line}\n"))))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        .body(StreamBody::new(lines).boxed_unsync())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed_unsync())))
}
