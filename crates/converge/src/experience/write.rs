//! Appending an event: its record in the space's stream and a reference in
//! each index it belongs to.

use std::sync::Arc;

use converge_core::experience_store::{
    ExperienceEvent, ExperienceEventEnvelope, UserExperienceEventEnvelope,
};
use converge_ledger_client::{AppendOptions, Entry, Metadata};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::*;
use crate::{Error, naming};

/// What every entry of an event carries in its metadata.
#[derive(Debug, Clone)]
struct Meta {
    event_id: String,
    occurred_at: String,
    /// `engine` or `user`.
    record: &'static str,
    kind: String,
    correlation_id: Option<String>,
    chain_id: Option<String>,
}

impl Meta {
    fn to_metadata(&self) -> Metadata {
        let mut m = Metadata::new();
        m.insert("event_id".into(), self.event_id.clone());
        m.insert("occurred_at".into(), self.occurred_at.clone());
        m.insert("record".into(), self.record.into());
        m.insert("kind".into(), self.kind.clone());
        if let Some(c) = &self.correlation_id {
            m.insert("correlation_id".into(), c.clone());
        }
        if let Some(c) = &self.chain_id {
            m.insert("chain_id".into(), c.clone());
        }
        m
    }
}

#[derive(Serialize, Deserialize)]
struct SpaceRecord {
    tenant: Option<String>,
}

fn chain_of(event: &ExperienceEvent) -> Option<&str> {
    match event {
        ExperienceEvent::ProposalCreated { chain_id, .. }
        | ExperienceEvent::ProposalValidated { chain_id, .. }
        | ExperienceEvent::OutcomeRecorded { chain_id, .. }
        | ExperienceEvent::BudgetExceeded { chain_id, .. }
        | ExperienceEvent::HypothesisResolved { chain_id, .. } => Some(chain_id.as_str()),
        _ => None,
    }
}

pub(super) fn bucket_of(occurred_at: &str) -> String {
    occurred_at.chars().take(BUCKET_CHARS).collect()
}

/// The idempotency key of an event's entries (hashed when the id is long).
fn idempotency_key(event_id: &str) -> String {
    if event_id.len() <= 200 {
        format!("event/{event_id}")
    } else {
        format!("event#{}", naming::digest_hex([event_id.as_bytes()]))
    }
}

/// One event, engine or user side, ready to append.
pub(super) struct Record {
    tenant: Option<String>,
    meta: Meta,
    payload: Vec<u8>,
    trace_link_id: Option<String>,
}

impl Record {
    pub(super) fn engine(env: &ExperienceEventEnvelope) -> Result<Record, Error> {
        let payload = serde_json::to_vec(env).map_err(|e| Error::Encode(e.to_string()))?;
        let trace_link_id = match &env.event {
            ExperienceEvent::ReplayTraceRecorded { trace_link_id, .. } => {
                Some(trace_link_id.as_str().to_owned())
            }
            _ => None,
        };
        Ok(Record {
            tenant: env.tenant_id.as_ref().map(|t| t.as_str().to_owned()),
            meta: Meta {
                event_id: env.event_id.as_str().to_owned(),
                occurred_at: env.occurred_at.as_str().to_owned(),
                record: "engine",
                kind: format!("{:?}", env.event.kind()),
                correlation_id: env.correlation_id.as_ref().map(|c| c.as_str().to_owned()),
                chain_id: chain_of(&env.event).map(str::to_owned),
            },
            payload,
            trace_link_id,
        })
    }

    pub(super) fn user(env: &UserExperienceEventEnvelope) -> Result<Record, Error> {
        let value = serde_json::to_value(env).map_err(|e| Error::Encode(e.to_string()))?;
        let kind = value
            .pointer("/event/type")
            .and_then(|t| t.as_str())
            .unwrap_or("User")
            .to_owned();
        let payload = serde_json::to_vec(&value).map_err(|e| Error::Encode(e.to_string()))?;
        Ok(Record {
            tenant: env.tenant_id.as_ref().map(|t| t.as_str().to_owned()),
            meta: Meta {
                event_id: env.event_id.as_str().to_owned(),
                occurred_at: env.occurred_at.as_str().to_owned(),
                record: "user",
                kind,
                correlation_id: env.correlation_id.as_ref().map(|c| c.as_str().to_owned()),
                chain_id: None,
            },
            payload,
            trace_link_id: None,
        })
    }
}

impl Inner {
    async fn append(
        &self,
        ctx: &str,
        key: &str,
        payload: Vec<u8>,
        metadata: Metadata,
        idempotency_key: String,
    ) -> Result<Entry, Error> {
        self.client
            .append(
                ctx,
                key,
                payload,
                AppendOptions {
                    metadata,
                    idempotency_key: Some(idempotency_key),
                    lamport: 0,
                },
            )
            .await
            .map_err(|e| Error::ledger(format!("appending to {ctx:?}"), e))
    }

    /// Appends a registry entry once (per process; the idempotency key
    /// makes it once forever).
    async fn register(
        &self,
        ctx: String,
        key: &str,
        payload: Vec<u8>,
        metadata: Metadata,
        idem: String,
    ) -> Result<(), Error> {
        let slot = (ctx, idem);
        if self
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&slot)
        {
            return Ok(());
        }
        self.append(&slot.0, key, payload, metadata, slot.1.clone())
            .await?;
        self.registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(slot);
        Ok(())
    }

    pub(super) async fn append_record(self: &Arc<Self>, record: Record) -> Result<(), Error> {
        let space = Self::space_of(record.tenant.as_deref());
        let space_record = serde_json::to_vec(&SpaceRecord {
            tenant: record.tenant.clone(),
        })
        .map_err(|e| Error::Encode(e.to_string()))?;
        self.register(
            self.spaces_ctx(),
            "space",
            space_record,
            Metadata::from([("space".to_owned(), space.clone())]),
            format!("space/{space}"),
        )
        .await?;
        let bucket = bucket_of(&record.meta.occurred_at);
        self.register(
            self.ctx(&space, "buckets"),
            "bucket",
            bucket.clone().into_bytes(),
            Metadata::new(),
            format!("bucket/{bucket}"),
        )
        .await?;

        let idem = idempotency_key(&record.meta.event_id);
        let metadata = record.meta.to_metadata();
        let primary = self
            .append(
                &self.ctx(&space, "events"),
                record.meta.record,
                record.payload,
                metadata.clone(),
                idem.clone(),
            )
            .await?;

        let mut refs = metadata;
        refs.insert("seq".into(), primary.sequence.to_string());
        let mut targets = vec![self.ctx(&space, &format!("time/{}", naming::component(&bucket)))];
        if record.meta.record == "engine" {
            targets.push(self.ctx(&space, &format!("kind/{}", record.meta.kind)));
        }
        if let Some(c) = &record.meta.correlation_id {
            targets.push(self.ctx(&space, &format!("corr/{}", naming::component(c))));
        }
        if let Some(c) = &record.meta.chain_id {
            targets.push(self.ctx(&space, &format!("chain/{}", naming::component(c))));
        }
        let mut tasks = JoinSet::new();
        for ctx in targets {
            let this = self.clone();
            let (refs, idem) = (refs.clone(), idem.clone());
            tasks.spawn(async move { this.append(&ctx, "ref", Vec::new(), refs, idem).await });
        }
        if let Some(trace) = &record.trace_link_id {
            let mut m = refs.clone();
            m.insert("space".into(), space.clone());
            m.insert("trace_link_id".into(), trace.clone());
            let this = self.clone();
            let ctx = self.trace_ctx(trace);
            let idem = format!("{space}/{idem}");
            tasks.spawn(async move { this.append(&ctx, "ref", Vec::new(), m, idem).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| Error::Runtime(e.to_string()))??;
        }
        Ok(())
    }
}
