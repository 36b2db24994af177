//! `keyline-agent`, the workstation agent. It runs in one of two modes:
//!
//! - as an office station ([`daemon`]): it finds the office gateway by mDNS
//!   (or `--gateway`), enrols with a pairing code, stays registered, and
//!   runs calls — ringing, answering, dialling, hanging up, hold, transfer,
//!   voicemail, texts — on the gateway's word or its CLI's;
//! - as a standalone internet terminal ([`terminal`]): no gateway; it logs
//!   in to a `keyline-directory`, registers its own numbers there, and
//!   places and takes calls through it, keeping delivered mail on disk.
//!
//! Either way each call's media runs on an end-to-end QUIC connection to
//! the other end ([`session`]), with the station's own sound (devices,
//! ringing, voicemail playback) in [`audio`] and what both modes keep of a
//! call in `calls`. Its command line ([`cli`]) talks to the running daemon
//! over a control socket, whose requests are typed in [`api`].

pub mod api;
pub mod audio;
pub(crate) mod calls;
pub mod cli;
pub mod daemon;
pub(crate) mod metrics;
pub mod session;
pub(crate) mod station;
pub mod terminal;
pub mod video;
pub mod viewers;
