//! The protobuf codec of the ledger's services.
//!
//! Identical to `tonic_prost::ProstCodec` except for one thing: a request
//! that is not a valid protobuf message (for instance a `string` field that
//! is not UTF-8) is the caller's mistake, so it is answered with
//! `INVALID_ARGUMENT` and a message, not `INTERNAL`.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

/// Protobuf codec mapping malformed messages to `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct LedgerCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LedgerCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for LedgerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = LedgerDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        LedgerDecoder(PhantomData)
    }
}

/// Decodes `U`, reporting malformed input as `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct LedgerDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for LedgerDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            Status::invalid_argument(format!(
                "the message is not a valid {}: {e} (string fields must be UTF-8)",
                std::any::type_name::<U>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("message")
            ))
        })
    }
}
