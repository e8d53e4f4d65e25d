//! converge-core suggestors shared by the examples and the tests
//! (`tests/common` includes this file).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use converge_core::{AgentEffect, Context, ContextKey, ProposedFact, Suggestor, TextPayload};

/// Emits `total` facts under `key`, `per_cycle` at a time, each once.
pub struct Generator {
    pub name: String,
    pub key: ContextKey,
    pub total: usize,
    pub per_cycle: usize,
    pub delay: Duration,
    pub executions: Arc<AtomicUsize>,
}

impl Generator {
    pub fn new(key: ContextKey, total: usize, per_cycle: usize) -> Generator {
        Generator {
            name: format!("generator-{key:?}"),
            key,
            total,
            per_cycle,
            delay: Duration::ZERO,
            executions: Arc::default(),
        }
    }
}

#[async_trait::async_trait]
impl Suggestor for Generator {
    fn name(&self) -> &str {
        &self.name
    }

    fn dependencies(&self) -> &[ContextKey] {
        &[]
    }

    fn accepts(&self, ctx: &dyn Context) -> bool {
        ctx.get(self.key).len() < self.total
    }

    async fn execute(&self, ctx: &dyn Context) -> AgentEffect {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.executions.fetch_add(1, Ordering::SeqCst);
        let have = ctx.get(self.key).len();
        let n = self.per_cycle.min(self.total - have);
        AgentEffect::builder()
            .proposals((have..have + n).map(|i| {
                ProposedFact::new(
                    self.key,
                    format!("{:?}-{i}", self.key),
                    TextPayload::new(format!("{:?} observation {i}", self.key)),
                    self.provenance(),
                )
            }))
            .build()
    }
}

/// Called with a stage's id when it executes.
pub type OnExecute = Arc<dyn Fn(&str) + Send + Sync>;

/// One step of a pipeline: once the fact `after` exists (at once for the
/// first step), emits the fact `id` under `key`, once.
pub struct Stage {
    pub id: String,
    pub key: ContextKey,
    pub text: String,
    pub after: Option<(ContextKey, String)>,
    deps: Vec<ContextKey>,
    pub delay: Duration,
    pub executions: Arc<AtomicUsize>,
    /// Called when the stage executes (e.g. to print it).
    pub on_execute: Option<OnExecute>,
    /// Never finish executing (like a process that dies there).
    pub hang: bool,
}

impl Stage {
    pub fn new(id: &str, key: ContextKey, text: &str, after: Option<(ContextKey, &str)>) -> Stage {
        Stage {
            id: id.to_owned(),
            key,
            text: text.to_owned(),
            deps: after.iter().map(|(k, _)| *k).collect(),
            after: after.map(|(k, s)| (k, s.to_owned())),
            delay: Duration::ZERO,
            executions: Arc::default(),
            on_execute: None,
            hang: false,
        }
    }
}

fn has_fact(ctx: &dyn Context, key: ContextKey, id: &str) -> bool {
    ctx.get(key).iter().any(|f| f.id().as_str() == id)
}

#[async_trait::async_trait]
impl Suggestor for Stage {
    fn name(&self) -> &str {
        &self.id
    }

    fn dependencies(&self) -> &[ContextKey] {
        &self.deps
    }

    fn accepts(&self, ctx: &dyn Context) -> bool {
        let ready = self
            .after
            .as_ref()
            .is_none_or(|(k, id)| has_fact(ctx, *k, id));
        ready && !has_fact(ctx, self.key, &self.id)
    }

    async fn execute(&self, _ctx: &dyn Context) -> AgentEffect {
        if self.hang {
            std::future::pending::<()>().await;
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.executions.fetch_add(1, Ordering::SeqCst);
        if let Some(f) = &self.on_execute {
            f(&self.id);
        }
        AgentEffect::with_proposal(ProposedFact::new(
            self.key,
            self.id.clone(),
            TextPayload::new(self.text.clone()),
            self.provenance(),
        ))
    }
}
