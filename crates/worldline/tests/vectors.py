#!/usr/bin/env python3
"""Test vectors of the WorldLine profile (docs/design.md section 18).

An implementation independent of the Rust crate: written from the byte
layouts in the design document, with nothing but hashlib. Run it with
`python3 crates/worldline/tests/vectors.py`; the values it prints are the
ones docs/design.md publishes and crates/worldline/tests/vectors.rs checks.
"""

import hashlib


def sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def u8(v: int) -> bytes:
    return v.to_bytes(1, "big")


def u32(v: int) -> bytes:
    return v.to_bytes(4, "big")


def u64(v: int) -> bytes:
    return v.to_bytes(8, "big")


def len32(b: bytes) -> bytes:
    return u32(len(b)) + b


def strs(items) -> bytes:
    """u32 count, then len32 of each item."""
    return u32(len(items)) + b"".join(len32(s.encode()) for s in items)


# --- the ledger's entry hash (docs/design.md section 3) ---------------------

def genesis(context: str) -> bytes:
    return sha256(b"converge-ledger/genesis/v1\0", len32(context.encode()))


def entry_hash(context, seq, key, payload, appended_at_ns, lamport, prev):
    return sha256(
        b"converge-ledger/entry/v1\0",
        len32(context.encode()),
        u64(seq),
        len32(key.encode()),
        u64(len(payload)), payload,
        u32(0),  # receipts carry no metadata
        u64(appended_at_ns),
        u64(lamport),
        prev,
    )


# --- the WorldLine profile (section 18) -------------------------------------

def worldline_id(material: bytes) -> bytes:
    return sha256(b"converge-ledger/worldline-id/v1\0", len32(material))


def commitment_payload(c) -> bytes:
    out = b"WLLC" + u8(1) + c["id"]
    out += len32(c["class"].encode()) + len32(c["intent"].encode())
    out += strs(sorted(c["requested"], key=str.encode))
    out += strs(c["targets"])
    out += u32(len(c["evidence"])) + b"".join(len32(u.encode()) + d for u, d in c["evidence"])
    out += len32(c["proposer"].encode())
    out += u8(1) if c["reason"] is None else u8(2) + len32(c["reason"].encode())
    out += c["policy_hash"] + len32(c["policy_version"].encode())
    out += strs(sorted(c["granted"], key=str.encode))
    out += strs(sorted(c["revoked"], key=str.encode))
    out += len32(c["decider"].encode())
    return out


def outcome_payload(o) -> bytes:
    out = b"WLLO" + u8(1) + o["commitment"]
    out += u8(1)  # succeeded
    out += u32(len(o["effects"])) + b"".join(
        len32(k.encode()) + len32(t.encode()) + len32(d.encode()) for k, t, d in o["effects"])
    out += u32(len(o["proofs"])) + b"".join(len32(u.encode()) + d for u, d in o["proofs"])
    out += u32(len(o["updates"]))
    for op in o["updates"]:
        if op[0] == "put":
            out += u8(1) + len32(op[1].encode()) + len32(op[2])
        else:
            out += u8(2) + len32(op[1].encode())
    out += len32(o["reporter"].encode())
    return out


def state_hash(state: dict) -> bytes:
    out = [b"converge-ledger/wll-state/v1\0", u64(len(state))]
    for k in sorted(state, key=str.encode):
        out += [len32(k.encode()), u64(len(state[k])), state[k]]
    return sha256(*out)


def snapshot(anchor_seq, anchor_hash, state, chunk_bytes_max):
    """Header payload and chunk payloads; every pair fits one chunk here."""
    pairs = b"".join(len32(k.encode()) + len32(state[k]) for k in sorted(state, key=str.encode))
    chunk = b"WLLK" + u8(1) + u64(anchor_seq) + u32(0) + u32(len(state)) + pairs
    assert len(chunk) <= chunk_bytes_max
    nbytes = sum(len(k.encode()) + len(v) for k, v in state.items())
    header = (b"WLLS" + u8(1) + u64(anchor_seq) + anchor_hash + state_hash(state)
              + u64(len(state)) + u64(nbytes) + u32(chunk_bytes_max) + u32(1))
    return header, [chunk]


def main():
    w = worldline_id(b"agent-7")
    context = "wll/" + w.hex()
    g = genesis(context)

    commitment = {
        "id": bytes.fromhex("0190a5b27c3e7def8a123456789abcde"),
        "class": "deploy",
        "intent": "roll out v2",
        "requested": ["repo.write", "net.egress"],
        "targets": ["svc/api"],
        "evidence": [("cas://e1", sha256(b"evidence"))],
        "proposer": "agent-7",
        "reason": None,
        "policy_hash": sha256(b"policy"),
        "policy_version": "v12",
        "granted": ["repo.write"],
        "revoked": [],
        "decider": "kernel",
    }
    c_payload = commitment_payload(commitment)
    t1, t2 = 1_700_000_000_000_000_000, 1_700_000_000_001_000_000
    r1 = entry_hash(context, 1, "wll.commitment", c_payload, t1, 1, g)

    outcome = {
        "commitment": r1,
        "effects": [("deploy", "svc/api", "v2 live")],
        "proofs": [("cas://p1", sha256(b"proof"))],
        "updates": [("put", "svc/api/version", b"2"), ("delete", "svc/api/canary")],
        "reporter": "driver-1",
    }
    o_payload = outcome_payload(outcome)
    r2 = entry_hash(context, 2, "wll.outcome", o_payload, t2, 2, r1)

    after = {"svc/api/version": b"2"}
    header, chunks = snapshot(2, r2, after, 2 * 1024 * 1024)

    rows = [
        ("worldline id of material `agent-7`", w.hex()),
        ("its context id", context),
        ("genesis of that context", g.hex()),
        ("commitment payload", c_payload.hex()),
        ("receipt 1 (time 1700000000000000000, Lamport 1)", r1.hex()),
        ("outcome payload", o_payload.hex()),
        ("receipt 2 (time 1700000000001000000, Lamport 2)", r2.hex()),
        ("state hash of {} (empty)", state_hash({}).hex()),
        ("state hash of {a: \"1\", b: \"\"}", state_hash({"a": b"1", "b": b""}).hex()),
        ("state hash after receipt 2, {svc/api/version: \"2\"}", state_hash(after).hex()),
        ("snapshot header at receipt 2, chunks of 2 MiB", header.hex()),
        ("its one chunk", chunks[0].hex()),
    ]
    for name, value in rows:
        print(f"{name}\n  {value}")


if __name__ == "__main__":
    main()
