//! Adapter between the Converge engine ([`converge_core`] 3.9) and the
//! Converge ledger, over the ledger's client SDK.
//!
//! - [`Recorder`] implements converge-core's [`StreamingCallback`](converge_core::StreamingCallback)
//!   and [`ExperienceEventObserver`](converge_core::ExperienceEventObserver).
//!   Every fact the engine adds and every experience event it emits becomes
//!   a ledger entry of the run's context, in the engine's order, through a
//!   bounded buffer and a background writer; [`Recorder::flush`] waits for
//!   them and reports errors. [`restore_run`] rebuilds the run's context
//!   from the ledger so that a new process can finish an interrupted run.
//! - [`LedgerContextStore`] implements converge-core's
//!   [`ContextStore`](converge_core::traits::ContextStore), saving and
//!   loading a `ContextState` per scope.
//! - [`WorldlineTap`] turns the facts an engine promoted into a WorldLine:
//!   a commitment (proposal, proposer, the engine's decision and policy)
//!   and its outcome (the fact as state) per promotion, which the ledger
//!   replays and projects.
//! - [`LedgerExperienceStore`] implements converge-core's
//!   [`ExperienceStore`](converge_core::experience_store::ExperienceStore),
//!   with index contexts so that a query reads only what can match.
//!
//! ```no_run
//! # async fn demo() -> Result<(), converge_ledger_converge::Error> {
//! use converge_core::{ContextState, Engine};
//! use converge_ledger_converge::{Recorder, RecorderOptions};
//!
//! let recorder = Recorder::connect("http://127.0.0.1:50051", "run-42", RecorderOptions::default()).await?;
//! let mut engine = Engine::new();
//! // engine.register_suggestor(...);
//! recorder.attach(&mut engine);
//! let result = engine.run(ContextState::new()).await;
//! let stats = recorder.flush().await?; // every fact is in the ledger now
//! # let _ = (result, stats);
//! # Ok(()) }
//! ```

mod codec;
mod context_store;
mod error;
mod experience;
mod naming;
mod recorder;
mod worldline;

pub use codec::{context_key_name, encode_fact, parse_context_key};
pub use context_store::{LedgerContextStore, SAVE_KEY, SaveReport};
pub use error::Error;
pub use experience::{ExperienceStoreOptions, LedgerExperienceStore};
pub use recorder::{
    EXPERIENCE_KEY, OnFull, RecordStats, Recorder, RecorderOptions, RestoredRun, restore_run,
};
pub use worldline::{ENGINE_DECIDER, ENGINE_POLICY_VERSION, RecordedPromotion, WorldlineTap};
