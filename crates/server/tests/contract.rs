//! A client generated from the unchanged contract file
//! (`proto/contract/context_v1.proto`) against the server: wire
//! compatibility with the Converge runtime's ledger client.

mod common;

use std::collections::HashMap;

use common::TestServer;
use converge_ledger_proto::contract as v1;
use tokio_stream::StreamExt;
use v1::context_service_client::ContextServiceClient;

#[tokio::test]
async fn the_unchanged_contract_client_can_use_all_five_operations() {
    let server = TestServer::memory().await;
    let mut c = ContextServiceClient::connect(server.url()).await.unwrap();

    let mut appended = Vec::new();
    for (i, key) in ["facts", "intents", "facts"].iter().enumerate() {
        let mut metadata = HashMap::new();
        metadata.insert("cycle".to_string(), i.to_string());
        let r = c
            .append(v1::AppendRequest {
                context_id: "growth-strategy-001".into(),
                key: key.to_string(),
                payload: format!("payload {i}").into_bytes(),
                metadata: metadata.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let e = r.entry.unwrap();
        assert_eq!(e.sequence, i as u64 + 1);
        assert_eq!(e.key, *key);
        assert_eq!(e.payload, format!("payload {i}").into_bytes());
        assert_eq!(e.metadata, metadata);
        assert!(!e.id.is_empty());
        appended.push(e);
    }
    let ids: std::collections::HashSet<_> = appended.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 3, "entry ids are unique");
    assert!(
        appended
            .windows(2)
            .all(|w| w[0].appended_at_ns <= w[1].appended_at_ns)
    );

    let got = c
        .get(v1::GetRequest {
            context_id: "growth-strategy-001".into(),
            key: "facts".into(),
            after_sequence: 0,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.latest_sequence, 3);
    assert_eq!(got.entries, vec![appended[0].clone(), appended[2].clone()]);

    let snap = c
        .snapshot(v1::SnapshotRequest {
            context_id: "growth-strategy-001".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(snap.sequence, 3);
    let meta = snap.metadata.unwrap();
    assert_eq!((meta.entry_count, meta.version), (3, 2));

    let loaded = c
        .load(v1::LoadRequest {
            context_id: "copy".into(),
            snapshot: snap.snapshot,
            fail_if_exists: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((loaded.entries_restored, loaded.latest_sequence), (3, 3));

    let mut watch = c
        .watch(v1::WatchRequest {
            context_id: "copy".into(),
            key: String::new(),
            from_sequence: 1,
        })
        .await
        .unwrap()
        .into_inner();
    for expected in [2, 3] {
        let e = watch.next().await.unwrap().unwrap().entry.unwrap();
        assert_eq!(e.sequence, expected);
        assert_eq!(e.payload, appended[expected as usize - 1].payload);
        assert_eq!(
            e.appended_at_ns,
            appended[expected as usize - 1].appended_at_ns
        );
    }
    c.append(v1::AppendRequest {
        context_id: "copy".into(),
        key: "live".into(),
        payload: b"4".to_vec(),
        metadata: HashMap::new(),
    })
    .await
    .unwrap();
    let live = watch.next().await.unwrap().unwrap().entry.unwrap();
    assert_eq!((live.sequence, live.key.as_str()), (4, "live"));
    drop(watch);
    server.stop().await;
}
