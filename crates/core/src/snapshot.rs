//! The portable snapshot of a context.
//!
//! Self-describing and versioned; everything is verified before anything is
//! written. Layout (integers big-endian), see `docs/design.md`:
//!
//! ```text
//! [8] magic "CVLGSNAP" | u32 version (2) | u32 len, context id
//! | u64 created_at_ns | u64 entry_count | u64 head sequence | [32] head hash
//! | [32] Merkle root | u64 loaded_through | [32] loaded_signer
//! | [32] signer public key | [64] Ed25519 signature
//! | entry_count × (u32 len, entry record)
//! | [32] SHA-256 of every byte before it
//! ```
//!
//! Entries are always the whole context, sequences `1..=entry_count`.

use std::fmt;

use crate::{
    DecodeError, Digest, Entry, Head, Limits, LoadedFrom, PublicKey, Reader, SignedHead, record,
};

/// First bytes of every snapshot.
pub const MAGIC: &[u8; 8] = b"CVLGSNAP";
/// The version this build writes. Version 1 (without the loaded fields,
/// signed over the version 1 statement) is still read.
pub const VERSION: u32 = 2;

/// What a snapshot says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The context the snapshot was taken from.
    pub context: String,
    /// Server time the snapshot was taken.
    pub created_at_ns: u64,
    /// Number of entries, equal to the head sequence.
    pub entry_count: u64,
    /// Head sequence.
    pub head_sequence: u64,
    /// Hash of the last entry (genesis hash when empty).
    pub head_hash: Digest,
    /// Merkle root over all entries.
    pub merkle_root: Digest,
    /// The server's signature over the head (verified by
    /// [`decode_and_verify`]; whether the signer is trusted is the caller's
    /// decision).
    pub signed: SignedHead,
}

/// Why a snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not a snapshot, truncated, or its bytes were altered.
    Malformed(String),
    /// A snapshot of a version this build does not read.
    UnsupportedVersion(u32),
    /// Well-formed, but its entries do not form the chain it claims.
    Chain(String),
    /// The head signature does not verify.
    Signature(String),
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Malformed(m) => write!(f, "snapshot is malformed: {m}"),
            SnapshotError::UnsupportedVersion(v) => write!(
                f,
                "snapshot has version {v}; this build reads versions 1 to {VERSION}"
            ),
            SnapshotError::Chain(m) => write!(f, "snapshot fails verification: {m}"),
            SnapshotError::Signature(m) => write!(f, "snapshot signature is invalid: {m}"),
        }
    }
}

impl std::error::Error for SnapshotError {}

impl From<DecodeError> for SnapshotError {
    fn from(e: DecodeError) -> Self {
        SnapshotError::Malformed(e.0)
    }
}

/// Writes a snapshot entry by entry, so the caller can stream them out of
/// storage.
pub struct Writer {
    /// Bytes not yet taken.
    out: Vec<u8>,
    /// Bytes already taken ([`Writer::take`]).
    taken: usize,
    /// SHA-256 of the bytes taken so far.
    sum: sha2::Sha256,
    context: String,
    expected: Head,
    written: Head,
}

impl Writer {
    /// Starts a snapshot of `context` whose entries will end at `head`,
    /// carrying `signed`, the server's signature over that head.
    pub fn new(context: &str, head: &Head, created_at_ns: u64, signed: &SignedHead) -> Writer {
        debug_assert!(signed.matches(context, head));
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&(context.len() as u32).to_be_bytes());
        out.extend_from_slice(context.as_bytes());
        out.extend_from_slice(&created_at_ns.to_be_bytes());
        out.extend_from_slice(&head.sequence.to_be_bytes());
        out.extend_from_slice(&head.sequence.to_be_bytes());
        out.extend_from_slice(&head.hash.0);
        out.extend_from_slice(&head.merkle_root().0);
        let (through, signer) = head
            .loaded
            .map_or((0, [0; 32]), |l| (l.through, l.signer.0));
        out.extend_from_slice(&through.to_be_bytes());
        out.extend_from_slice(&signer);
        out.extend_from_slice(&signed.public_key.0);
        out.extend_from_slice(&signed.signature);
        Writer {
            out,
            taken: 0,
            sum: sha2::Sha256::default(),
            context: context.to_owned(),
            expected: head.clone(),
            written: Head::empty(context),
        }
    }

    /// Appends the next entry, checking it extends the chain written so far
    /// (so a snapshot is never produced from inconsistent storage).
    pub fn push(&mut self, entry: &Entry) -> Result<(), SnapshotError> {
        self.written
            .check_next(&self.context, entry)
            .map_err(|e| SnapshotError::Chain(e.to_string()))?;
        self.written.advance(entry);
        let len_at = self.out.len();
        self.out.extend_from_slice(&[0; 4]);
        record::encode_into(entry, &mut self.out);
        let len = (self.out.len() - len_at - 4) as u32;
        self.out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Bytes written so far (taken or not).
    pub fn len(&self) -> usize {
        self.taken + self.out.len()
    }

    /// Bytes written and not taken yet.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Bytes written since the last take: the next piece of a snapshot
    /// sent in pieces. The pieces in order, then what [`Writer::finish`]
    /// returns, are the whole snapshot.
    pub fn take(&mut self) -> Vec<u8> {
        use sha2::Digest as _;
        self.sum.update(&self.out);
        self.taken += self.out.len();
        std::mem::take(&mut self.out)
    }

    /// Whether nothing but the header was written.
    pub fn is_empty(&self) -> bool {
        self.written.sequence == 0
    }

    /// Closes the snapshot with its checksum and returns the bytes not
    /// taken yet (all of it when nothing was taken); fails unless every
    /// entry up to the head was pushed and they reproduce the head.
    pub fn finish(mut self) -> Result<Vec<u8>, SnapshotError> {
        if self.written.sequence != self.expected.sequence
            || self.written.hash != self.expected.hash
        {
            return Err(SnapshotError::Chain(format!(
                "entries end at sequence {} but the head is at {}",
                self.written.sequence, self.expected.sequence
            )));
        }
        use sha2::Digest as _;
        self.sum.update(&self.out);
        let sum: [u8; 32] = self.sum.finalize().into();
        self.out.extend_from_slice(&sum);
        Ok(self.out)
    }
}

/// Checks a snapshot received in pieces against its trailing SHA-256
/// without holding it: a stream that ended early or was altered on the way
/// fails [`PieceCheck::finish`].
#[derive(Default)]
pub struct PieceCheck {
    sum: sha2::Sha256,
    /// The last (at most) 32 bytes seen: possibly the checksum.
    tail: Vec<u8>,
    len: u64,
}

impl PieceCheck {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next piece.
    pub fn update(&mut self, piece: &[u8]) {
        use sha2::Digest as _;
        self.len += piece.len() as u64;
        if piece.len() >= 32 {
            self.sum.update(&self.tail);
            let (body, tail) = piece.split_at(piece.len() - 32);
            self.sum.update(body);
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(piece);
            if self.tail.len() > 32 {
                let over = self.tail.len() - 32;
                self.sum.update(&self.tail[..over]);
                self.tail.drain(..over);
            }
        }
    }

    /// Bytes seen.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was seen.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the pieces seen end with the SHA-256 of everything before.
    pub fn finish(self) -> Result<(), SnapshotError> {
        use sha2::Digest as _;
        let min = MAGIC.len() as u64 + 32;
        if self.len < min {
            return Err(SnapshotError::Malformed(format!(
                "{} bytes received; a snapshot has at least {min}",
                self.len
            )));
        }
        let sum: [u8; 32] = self.sum.finalize().into();
        if sum[..] != self.tail[..] {
            return Err(SnapshotError::Malformed(format!(
                "the {} bytes received do not end with their checksum: the snapshot is \
                 truncated or was altered",
                self.len
            )));
        }
        Ok(())
    }
}

/// Parses and fully verifies a snapshot: checksum, version, every entry's
/// hash and chain link, the head and the Merkle root; and every entry against
/// `limits`. Returns the header and the entries only if all of it holds.
pub fn decode_and_verify(
    bytes: &[u8],
    limits: &Limits,
) -> Result<(Header, Vec<Entry>), SnapshotError> {
    if bytes.len() < MAGIC.len() + 4 + 32 || &bytes[..8] != MAGIC {
        return Err(SnapshotError::Malformed(
            "it does not start with the snapshot magic \"CVLGSNAP\"".into(),
        ));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Digest::of(&[body]).0 != sum {
        return Err(SnapshotError::Malformed(
            "its SHA-256 checksum does not match: the bytes were altered or truncated".into(),
        ));
    }
    let mut r = Reader::new(&body[8..], "snapshot");
    let version = r.u32()?;
    if version != 1 && version != VERSION {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    let context = r.string32(limits.context_id_bytes_max, "context id")?;
    let created_at_ns = r.u64()?;
    let entry_count = r.u64()?;
    let head_sequence = r.u64()?;
    let head_hash = r.digest()?;
    let merkle_root = r.digest()?;
    let loaded = if version >= 2 {
        let through = r.u64()?;
        let signer = PublicKey(r.digest()?.0);
        match (through, signer.0 == [0; 32]) {
            (0, true) => None,
            (t, false) if t >= 1 && t <= head_sequence => Some(LoadedFrom { through: t, signer }),
            _ => {
                return Err(SnapshotError::Malformed(format!(
                    "it says history was loaded through {through} of {head_sequence} entries, \
                     with signer {signer}"
                )));
            }
        }
    } else {
        None
    };
    let public_key = PublicKey(r.digest()?.0);
    let mut signature = [0u8; 64];
    signature.copy_from_slice(r.take(64)?);
    let header = Header {
        signed: SignedHead {
            context: context.clone(),
            size: head_sequence,
            root: merkle_root,
            head_hash,
            timestamp_ns: 0,
            loaded,
            public_key,
            signature,
        },
        context,
        created_at_ns,
        entry_count,
        head_sequence,
        head_hash,
        merkle_root,
    };
    if header.entry_count != header.head_sequence {
        return Err(SnapshotError::Malformed(format!(
            "it claims {} entries but a head at sequence {}",
            header.entry_count, header.head_sequence
        )));
    }
    let mut head = Head::empty(&header.context);
    // Bound the allocation by what the bytes can actually hold.
    let mut entries = Vec::with_capacity((header.entry_count as usize).min(r.remaining() / 64));
    for _ in 0..header.entry_count {
        let rec = r.bytes32(usize::MAX, "record")?;
        let entry = record::decode(rec)?;
        head.check_next(&header.context, &entry)
            .map_err(|e| SnapshotError::Chain(e.to_string()))?;
        check_limits(limits, &entry).map_err(SnapshotError::Chain)?;
        head.advance(&entry);
        entries.push(entry);
    }
    if r.remaining() != 0 {
        return Err(SnapshotError::Malformed(format!(
            "{} unexpected bytes after the last entry",
            r.remaining()
        )));
    }
    if head.hash != header.head_hash {
        return Err(SnapshotError::Chain(format!(
            "the entries end in hash {} but the header claims {}",
            head.hash, header.head_hash
        )));
    }
    if head.merkle_root() != header.merkle_root {
        return Err(SnapshotError::Chain(format!(
            "the entries have Merkle root {} but the header claims {}",
            head.merkle_root(),
            header.merkle_root
        )));
    }
    let mut header = header;
    header.signed.timestamp_ns = head.appended_at_ns;
    let verified = if version == 1 {
        header.signed.verify_v1()
    } else {
        header.signed.verify()
    };
    verified.map_err(|e| SnapshotError::Signature(e.0))?;
    Ok((header, entries))
}

fn check_limits(limits: &Limits, e: &Entry) -> Result<(), String> {
    limits
        .check_entry(&e.key, e.payload.len(), &e.metadata, e.lamport)
        .map_err(|l| format!("sequence {}: {l}", e.sequence))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Metadata, NewEntry};

    fn build(context: &str, n: u64) -> (Head, Vec<Entry>) {
        let mut head = Head::empty(context);
        let mut entries = Vec::new();
        for i in 0..n {
            let mut metadata = Metadata::new();
            metadata.insert("i".into(), i.to_string());
            let e = head.next_entry(
                context,
                NewEntry {
                    key: format!("k{}", i % 3),
                    payload: vec![i as u8; (i % 7) as usize],
                    metadata,
                    lamport: 0,
                },
                1000 + i,
            );
            head.advance(&e);
            entries.push(e);
        }
        (head, entries)
    }

    fn signer() -> crate::HeadSigner {
        crate::HeadSigner::from_seed([3; 32])
    }

    fn snapshot(context: &str, n: u64) -> Vec<u8> {
        let (head, entries) = build(context, n);
        let mut w = Writer::new(context, &head, 77, &signer().sign(context, &head));
        for e in &entries {
            w.push(e).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn a_snapshot_taken_in_pieces_is_the_same_bytes() {
        for n in [0, 1, 5, 33] {
            let (head, entries) = build("ctx", n);
            let mut w = Writer::new("ctx", &head, 77, &signer().sign("ctx", &head));
            let mut pieces = w.take();
            for (i, e) in entries.iter().enumerate() {
                w.push(e).unwrap();
                if i % 4 == 1 {
                    pieces.extend(w.take());
                }
                assert_eq!(w.len(), pieces.len() + w.out.len());
            }
            pieces.extend(w.finish().unwrap());
            assert_eq!(pieces, snapshot("ctx", n), "{n} entries");
        }
    }

    #[test]
    fn pieces_are_checked_against_the_trailing_checksum() {
        let bytes = snapshot("ctx", 9);
        for cut in [1usize, 7, 31, 32, 33, 100] {
            let mut ok = PieceCheck::new();
            for piece in bytes.chunks(cut) {
                ok.update(piece);
            }
            assert_eq!(ok.len(), bytes.len() as u64);
            ok.finish().unwrap();
            // Truncated at any point, or one byte altered: refused.
            let mut short = PieceCheck::new();
            for piece in bytes[..bytes.len() - cut.min(40)].chunks(cut) {
                short.update(piece);
            }
            assert!(short.finish().is_err(), "cut {cut}");
            let mut altered = bytes.clone();
            altered[cut] ^= 1;
            let mut bad = PieceCheck::new();
            for piece in altered.chunks(cut) {
                bad.update(piece);
            }
            assert!(bad.finish().is_err(), "cut {cut}");
        }
    }

    #[test]
    fn round_trip_including_empty() {
        for n in [0, 1, 5, 33] {
            let (head, entries) = build("ctx", n);
            let bytes = snapshot("ctx", n);
            let (h, got) = decode_and_verify(&bytes, &Limits::default()).unwrap();
            assert_eq!(got, entries);
            assert_eq!(h.entry_count, n);
            assert_eq!(h.head_hash, head.hash);
            assert_eq!(h.merkle_root, head.merkle_root());
            assert_eq!(h.created_at_ns, 77);
            assert_eq!(h.signed.public_key, signer().public_key());
        }
    }

    #[test]
    fn any_altered_byte_fails() {
        let bytes = snapshot("ctx", 4);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] = b[i].wrapping_add(1);
            assert!(
                decode_and_verify(&b, &Limits::default()).is_err(),
                "byte {i}"
            );
        }
        for n in 0..bytes.len() {
            assert!(decode_and_verify(&bytes[..n], &Limits::default()).is_err());
        }
        assert!(decode_and_verify(b"garbage", &Limits::default()).is_err());
    }

    #[test]
    fn a_consistent_forgery_with_a_fresh_checksum_still_fails_the_chain() {
        let (head, mut entries) = build("ctx", 3);
        entries[1].payload = b"rewritten".to_vec();
        let mut w = Writer::new("ctx", &head, 1, &signer().sign("ctx", &head));
        w.push(&entries[0]).unwrap();
        assert!(matches!(w.push(&entries[1]), Err(SnapshotError::Chain(_))));
    }

    #[test]
    fn loaded_history_is_part_of_the_signed_header() {
        let (mut head, entries) = build("ctx", 3);
        head.loaded = Some(LoadedFrom {
            through: 2,
            signer: PublicKey([4; 32]),
        });
        let mut w = Writer::new("ctx", &head, 1, &signer().sign("ctx", &head));
        for e in &entries {
            w.push(e).unwrap();
        }
        let bytes = w.finish().unwrap();
        let (header, _) = decode_and_verify(&bytes, &Limits::default()).unwrap();
        assert_eq!(header.signed.loaded, head.loaded);
        // Claiming the history was appended here breaks the signature.
        let at = 8 + 4 + 4 + 3 + 8 * 3 + 32 * 2;
        let mut b = bytes[..bytes.len() - 32].to_vec();
        b[at..at + 40].fill(0);
        let sum = Digest::of(&[&b]);
        b.extend_from_slice(&sum.0);
        assert!(matches!(
            decode_and_verify(&b, &Limits::default()),
            Err(SnapshotError::Signature(_))
        ));
    }

    /// Snapshots of version 1 (no loaded fields, signed over the version 1
    /// statement) still load.
    #[test]
    fn version_1_snapshots_are_still_read() {
        let (head, entries) = build("ctx", 3);
        let mut w = Writer::new("ctx", &head, 1, &signer().sign_v1("ctx", &head));
        for e in &entries {
            w.push(e).unwrap();
        }
        let v2 = w.finish().unwrap();
        let at = 8 + 4 + 4 + 3 + 8 * 3 + 32 * 2;
        let mut v1 = v2[..at].to_vec();
        v1[8..12].copy_from_slice(&1u32.to_be_bytes());
        v1.extend_from_slice(&v2[at + 40..v2.len() - 32]);
        let sum = Digest::of(&[&v1]);
        v1.extend_from_slice(&sum.0);
        let (header, got) = decode_and_verify(&v1, &Limits::default()).unwrap();
        assert_eq!((header.signed.loaded, got), (None, entries));
    }

    #[test]
    fn writer_refuses_to_finish_short() {
        let (head, entries) = build("ctx", 3);
        let mut w = Writer::new("ctx", &head, 1, &signer().sign("ctx", &head));
        w.push(&entries[0]).unwrap();
        assert!(w.finish().is_err());
    }

    /// A snapshot re-signed by another key with a recomputed checksum is
    /// still a valid snapshot (by someone else); one whose signature bytes
    /// were forged and checksum recomputed is refused.
    #[test]
    fn a_forged_signature_with_a_fresh_checksum_fails() {
        let bytes = snapshot("ctx", 3);
        // magic, version, context, three u64, head hash and root, the
        // loaded fields, the signer's key.
        let sig_at = 8 + 4 + 4 + 3 + 8 * 3 + 32 * 2 + 8 + 32 + 32;
        let mut b = bytes[..bytes.len() - 32].to_vec();
        b[sig_at + 5] ^= 1;
        let sum = Digest::of(&[&b]);
        b.extend_from_slice(&sum.0);
        assert!(matches!(
            decode_and_verify(&b, &Limits::default()),
            Err(SnapshotError::Signature(_))
        ));
    }
}
