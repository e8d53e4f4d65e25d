//! A real converge-core run recorded as a WorldLine with `WorldlineTap`:
//! one commitment and one outcome per promoted fact, in engine order; the
//! replayed state holds every fact; the projections answer who proposed
//! what under which policy and where each state key came from; writing
//! again appends nothing.

mod common;

use common::{Generator, Stage, TestServer};
use converge_core::{Budget, ContextKey, ContextState, Engine};
use converge_ledger_client::projection_query;
use converge_ledger_client::proto::ledger::v1 as pb;
use converge_ledger_client::worldline::{ReceiptBody, WorldlineId};
use converge_ledger_converge::{ENGINE_DECIDER, ENGINE_POLICY_VERSION, WorldlineTap, encode_fact};

#[tokio::test]
async fn a_converge_run_becomes_a_worldline_the_projections_explain() {
    let server = TestServer::start();
    let client = server.client().await;
    let mut engine = Engine::with_budget(Budget {
        max_cycles: 100,
        max_facts: 1000,
    });
    engine.register_suggestor(Stage::new("seed", ContextKey::Seeds, "a seed", None));
    engine.register_suggestor(Stage::new(
        "idea",
        ContextKey::Hypotheses,
        "an idea",
        Some((ContextKey::Seeds, "seed")),
    ));
    engine.register_suggestor(Generator::new(ContextKey::Signals, 30, 7));
    let tap = WorldlineTap::new();
    tap.attach(&mut engine);
    let result = engine.run(ContextState::new()).await.unwrap();
    let w = WorldlineId::derive(b"converge-run");
    let recorded = tap.write(&client, &w).await.unwrap();
    let facts = result.context.get(ContextKey::Signals).len()
        + result.context.get(ContextKey::Seeds).len()
        + result.context.get(ContextKey::Hypotheses).len();
    assert_eq!(recorded.len(), facts, "one commitment per promoted fact");
    assert_eq!(facts, 32);
    let head = recorded.last().unwrap().outcome.seq;
    assert_eq!(head, 2 * facts as u64);
    for (i, r) in recorded.iter().enumerate() {
        assert_eq!(r.commitment.seq, 2 * i as u64 + 1, "engine order");
        let ReceiptBody::Commitment(c) = &r.commitment.body else {
            panic!("a commitment first")
        };
        assert_eq!(c.decider, ENGINE_DECIDER);
        assert_eq!(c.policy.version, ENGINE_POLICY_VERSION);
        assert!(
            c.proposer.starts_with("agent-") || c.proposer == "context-input",
            "{}",
            c.proposer
        );
    }

    // Replay holds every fact, under <key>/<id>, as the engine encoded it.
    let state = client.worldline_state(&w, 0).await.unwrap();
    assert_eq!(state.pairs.len(), facts);
    let seed = &result.context.get(ContextKey::Seeds)[0];
    let seed_key = format!("Seeds/{}", seed.id().as_str());
    let stored = state
        .pairs
        .iter()
        .find(|(k, _)| *k == seed_key)
        .expect("the seed fact");
    assert_eq!(stored.1, encode_fact(seed).unwrap());

    // The projections: the state hash equals the replay's; the seed's key
    // goes back to its proposal and the engine's decision.
    let projected = client
        .projected_state(pb::ProjectedStateRequest {
            query: Some(projection_query(&w, head)),
            select: None,
            with_state_hash: true,
        })
        .await
        .unwrap();
    assert_eq!(projected.state_hash, state.state_hash.0.to_vec());
    let lineage = client
        .query_provenance(pb::QueryProvenanceRequest {
            query: Some(projection_query(&w, head)),
            target: Some(pb::query_provenance_request::Target::Key(seed_key.clone())),
            ..Default::default()
        })
        .await
        .unwrap()
        .lineage
        .expect("the seed's lineage");
    let commitment = lineage.commitment.unwrap();
    assert_eq!(commitment.class, "Seeds");
    assert!(commitment.accepted);
    assert!(lineage.evidence[0].uri.starts_with("converge:proposal/"));
    let by_class = client
        .query_audit(pb::QueryAuditRequest {
            query: Some(projection_query(&w, head)),
            filter: Some(pb::query_audit_request::Filter::CommitmentClass(
                "Signals".into(),
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_class.records.len(), 30);
    assert!(by_class.records.iter().all(|r| r.outcome.is_some()));

    // Writing the same run again appends nothing: the same receipts.
    let again = tap.write(&client, &w).await.unwrap();
    assert_eq!(
        again.last().unwrap().outcome.receipt_hash,
        recorded.last().unwrap().outcome.receipt_hash
    );
    assert_eq!(client.worldline_head(&w).await.unwrap().unwrap().seq, head);
    assert!(client.verify_worldline(&w).await.unwrap().ok);
    server.stop();
}
