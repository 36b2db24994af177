//! `keyline-agent`, the workstation agent: it finds the office gateway by
//! mDNS (or `--gateway`), enrols with a pairing code, stays registered, and
//! runs calls — ringing, answering, dialling, hanging up — with each call's
//! media on an end-to-end QUIC connection to the other end ([`session`]).
//! Its command line talks to the running daemon over a control socket.

pub mod audio;
pub mod cli;
pub mod daemon;
pub mod session;
