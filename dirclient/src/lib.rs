//! `keyline-dirclient`: how an endpoint talks to a `keyline-directory`.
//!
//! The crate owns [`client`], the async library a gateway or an internet
//! terminal uses to log in, register, call, answer, look up, forward and
//! leave or collect mail, and [`wire`], the framing of directory messages
//! and raw mail bodies on QUIC streams that the client and the directory
//! server share, and [`addrs`], where a directory (or each node of a
//! cluster) is. It links no database, no password hashing and no command
//! line: a terminal needs only this and `keyline-net` to reach a directory.

pub mod addrs;
pub mod client;
pub mod wire;
