//! Keyline's wire protocol, shared by every program: the control messages
//! ([`msg`]), their length-prefixed CBOR framing ([`codec`]), number
//! canonicalisation ([`number`]), RTP-over-QUIC media datagrams ([`media`]),
//! the sans-IO call core the gateway drives ([`call`]), the sans-IO
//! phone core every station drives ([`phone`]), and VP8 in RTP
//! ([`vp8rtp`]: packets out, frames back together).
//!
//! Nothing in this crate does I/O except the thin async helpers in
//! [`codec`] (`read_frame`, `write_frame`), which exist only with the
//! default feature `io` (tokio); without it the crate has no async runtime
//! in its tree. State machines take the current time as an input.

pub mod call;
pub mod codec;
pub mod dir;
pub mod media;
pub mod msg;
pub mod number;
pub mod phone;
pub mod vp8rtp;

/// ALPN protocol identifier of every Keyline QUIC connection.
pub const ALPN: &[u8] = b"keyline/1";
/// Version carried in `Hello`; peers with a different major version are refused.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest control message accepted on a stream (bytes of CBOR, prefix excluded).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// mDNS service type every Keyline process advertises and browses.
pub const MDNS_SERVICE: &str = "_keyline._udp.local.";
