//! Signed heads, their verification against a pinned key, and Merkle
//! proofs.

use converge_ledger_core::merkle;
use converge_ledger_core::{Entry, LoadedFrom, PublicKey};
use converge_ledger_proto::ledger::v1 as ext;

use super::*;
use crate::ClientError;

impl Client {
    /// The head of a context.
    pub async fn head(&self, context: &str) -> Result<HeadInfo, ClientError> {
        Ok(self.head_request(context, false).await?.0)
    }

    /// The head of a context and its last entry (`None`: the context is
    /// empty), read together in one call: the entry is the one the head
    /// names, checked against the head's hash.
    pub async fn last_entry(
        &self,
        context: &str,
    ) -> Result<(HeadInfo, Option<Entry>), ClientError> {
        let (head, entry) = self.head_request(context, true).await?;
        match &entry {
            None if head.sequence > 0 => Err(ClientError::Protocol(format!(
                "the head of {context:?} is at sequence {} but came without its entry",
                head.sequence
            ))),
            Some(e) if e.sequence != head.sequence || e.hash != head.hash => {
                Err(ClientError::Verification(format!(
                    "the last entry of {context:?} (sequence {}) is not the one its head names \
                     (sequence {})",
                    e.sequence, head.sequence
                )))
            }
            _ => Ok((head, entry)),
        }
    }

    async fn head_request(
        &self,
        context: &str,
        include_entry: bool,
    ) -> Result<(HeadInfo, Option<Entry>), ClientError> {
        let request = ext::HeadRequest {
            context_id: context.to_owned(),
            include_entry,
        };
        self.retry(|| {
            let mut c = self.ledger.clone();
            let r = self.request(request.clone());
            async move {
                let mut h = c.head(r).await?.into_inner();
                let entry = match h.entry.take() {
                    Some(e) => {
                        let e = entry_from_proto(e)?;
                        EntryCheck::new(context).check(&e)?;
                        Some(e)
                    }
                    None => None,
                };
                let signature = <[u8; 64]>::try_from(h.signature.as_slice()).map_err(|_| {
                    ClientError::Protocol(format!(
                        "head signature is {} bytes, not 64",
                        h.signature.len()
                    ))
                })?;
                let info = HeadInfo {
                    context_id: h.context_id,
                    sequence: h.sequence,
                    hash: digest(&h.hash, "head hash")?,
                    merkle_root: digest(&h.merkle_root, "Merkle root")?,
                    lamport: h.lamport,
                    appended_at_ns: h.appended_at_ns,
                    public_key: PublicKey(digest(&h.public_key, "public key")?.0),
                    signature,
                    loaded: match (h.loaded_through, h.loaded_signer.is_empty()) {
                        (0, true) => None,
                        (through, false) if through >= 1 && through <= h.sequence => {
                            Some(LoadedFrom {
                                through,
                                signer: PublicKey(digest(&h.loaded_signer, "loaded signer")?.0),
                            })
                        }
                        (through, _) => {
                            return Err(ClientError::Protocol(format!(
                                "the head of {context:?} at sequence {} says history was loaded \
                                 through {through} with a signer of {} bytes",
                                h.sequence,
                                h.loaded_signer.len()
                            )));
                        }
                    },
                };
                if info.context_id != context {
                    return Err(ClientError::Verification(format!(
                        "asked for the head of {context:?}, the server answered with the head of {:?}",
                        info.context_id
                    )));
                }
                info.signed()
                    .verify()
                    .map_err(|e| ClientError::Verification(e.0))?;
                Ok((info, entry))
            }
        })
        .await
    }

    /// Fetches the head of `context`, checks its signature is by the trusted
    /// key, and — if this client verified a head of the context before —
    /// checks with a consistency proof that the new head extends it. Any
    /// rewrite of history the client has seen is reported as
    /// [`ClientError::Verification`]; on success the new head is remembered.
    pub async fn verify_head(&self, context: &str) -> Result<HeadInfo, ClientError> {
        let _one_at_a_time = self.verifying.lock().await;
        let trusted = self.trusted_key().await?;
        let head = self.head(context).await?;
        if head.public_key != trusted {
            return Err(ClientError::Verification(format!(
                "the head of {context:?} is signed by {}, not by the trusted key {trusted}",
                head.public_key
            )));
        }
        let previous = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(context)
            .cloned();
        if let Some(old) = previous {
            if head.sequence < old.sequence {
                return Err(ClientError::Verification(format!(
                    "context {context:?} shrank from {} to {} entries: history was rewritten",
                    old.sequence, head.sequence
                )));
            }
            if old.sequence > 0 {
                let p = self
                    .fetch_consistency(context, old.sequence, head.sequence)
                    .await?;
                merkle::verify_consistency(old.sequence, head.sequence, &old.merkle_root, &head.merkle_root, &p.proof)
                    .map_err(|e| {
                        ClientError::Verification(format!(
                            "context {context:?} at size {} is not an extension of the size {} verified before: {e}",
                            head.sequence, old.sequence
                        ))
                    })?;
            }
        }
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(context.to_owned(), head.clone());
        Ok(head)
    }

    /// Fetches and verifies a proof that entry `sequence` is in the tree of
    /// `tree_size` entries (0: the head) of `context`, and anchors the
    /// tree's root to a signed head verified against the trusted key
    /// ([`Client::verify_head`]): a root the server merely sent proves
    /// nothing.
    pub async fn inclusion_proof(
        &self,
        context: &str,
        sequence: u64,
        tree_size: u64,
    ) -> Result<InclusionProofInfo, ClientError> {
        let r = self
            .ledger
            .clone()
            .inclusion_proof(self.request(ext::InclusionProofRequest {
                context_id: context.to_owned(),
                sequence,
                tree_size,
            }))
            .await?
            .into_inner();
        if r.sequence != sequence || (tree_size != 0 && r.tree_size != tree_size) {
            return Err(ClientError::Verification(format!(
                "asked for entry {sequence} in a tree of {tree_size}, the server proved entry {} in a tree of {}",
                r.sequence, r.tree_size
            )));
        }
        let path = r
            .path
            .iter()
            .map(|p| digest(p, "proof node"))
            .collect::<Result<Vec<_>, _>>()?;
        let (entry_hash, root) = (
            digest(&r.entry_hash, "entry hash")?,
            digest(&r.root, "root")?,
        );
        merkle::verify_inclusion(
            &merkle::leaf_hash(&entry_hash.0),
            r.sequence.saturating_sub(1),
            r.tree_size,
            &path,
            &root,
        )
        .map_err(|e| ClientError::Verification(e.0))?;
        let anchor = self.anchor(context, r.tree_size, &root).await?;
        Ok(InclusionProofInfo {
            sequence: r.sequence,
            tree_size: r.tree_size,
            entry_hash,
            path,
            root,
            anchor,
        })
    }

    /// Fetches and verifies a consistency proof between two tree sizes of
    /// `context` (`new_size` 0: the head), and anchors the newer root to a
    /// signed head verified against the trusted key, as
    /// [`Client::inclusion_proof`] does.
    pub async fn consistency_proof(
        &self,
        context: &str,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProofInfo, ClientError> {
        let mut p = self.fetch_consistency(context, old_size, new_size).await?;
        if p.old_size != old_size || (new_size != 0 && p.new_size != new_size) {
            return Err(ClientError::Verification(format!(
                "asked for a proof from {old_size} to {new_size}, the server proved {} to {}",
                p.old_size, p.new_size
            )));
        }
        merkle::verify_consistency(p.old_size, p.new_size, &p.old_root, &p.new_root, &p.proof)
            .map_err(|e| ClientError::Verification(e.0))?;
        p.anchor = Some(self.anchor(context, p.new_size, &p.new_root).await?);
        Ok(p)
    }

    /// Ties `root`, the root of the tree of the first `size` entries of
    /// `context`, to a head verified against the trusted key: equal to its
    /// root, or proven a prefix of it with a consistency proof checked
    /// against the two roots the client holds (never the server's copies).
    async fn anchor(
        &self,
        context: &str,
        size: u64,
        root: &Digest,
    ) -> Result<HeadInfo, ClientError> {
        let head = self.verify_head(context).await?;
        if head.sequence < size {
            return Err(ClientError::Verification(format!(
                "the proof is for a tree of {size} entries of {context:?}, but the signed head has only {}",
                head.sequence
            )));
        }
        if head.sequence == size {
            if head.merkle_root != *root {
                return Err(ClientError::Verification(format!(
                    "the proof's root {root} is not the root {} of the signed head of {context:?}",
                    head.merkle_root
                )));
            }
            return Ok(head);
        }
        let link = self.fetch_consistency(context, size, head.sequence).await?;
        merkle::verify_consistency(size, head.sequence, root, &head.merkle_root, &link.proof)
            .map_err(|e| {
                ClientError::Verification(format!(
                    "the proof's tree of {size} entries (root {root}) is not a prefix of the signed head \
                     of {context:?} at {}: {e}",
                    head.sequence
                ))
            })?;
        Ok(head)
    }

    async fn fetch_consistency(
        &self,
        context: &str,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProofInfo, ClientError> {
        let r = self
            .ledger
            .clone()
            .consistency_proof(self.request(ext::ConsistencyProofRequest {
                context_id: context.to_owned(),
                old_size,
                new_size,
            }))
            .await?
            .into_inner();
        Ok(ConsistencyProofInfo {
            old_size: r.old_size,
            new_size: r.new_size,
            proof: r
                .proof
                .iter()
                .map(|p| digest(p, "proof node"))
                .collect::<Result<_, _>>()?,
            old_root: digest(&r.old_root, "old root")?,
            new_root: digest(&r.new_root, "new root")?,
            anchor: None,
        })
    }
}
