//! Generated gRPC code of the Converge ledger.
//!
//! - [`context::v1`]: `converge.context.v1`, the wire contract of the
//!   Converge runtime's ledger client, with the ledger's added fields.
//! - [`ledger::v1`]: `converge.ledger.v1`, the ledger's own operations.

#![allow(missing_docs)]

pub mod codec;

/// The encoded `FileDescriptorSet` of both packages (and their imports),
/// served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));

/// `converge.context.v1`.
pub mod context {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("converge.context.v1");
    }
}

/// `converge.ledger.v1`.
pub mod ledger {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("converge.ledger.v1");
    }
}

/// A client generated from the unchanged contract file
/// (`proto/contract/context_v1.proto`), used to prove wire compatibility.
#[cfg(feature = "contract")]
pub mod contract {
    include!(concat!(env!("OUT_DIR"), "/contract/converge.context.v1.rs"));
}
