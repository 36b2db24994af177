//! Keyline's transport plumbing, shared by the gateway, the agent and the
//! directory: a process's long-lived identity (a self-signed certificate),
//! TLS 1.3 configurations that trust peers by certificate fingerprint
//! rather than by a CA, the one quinn endpoint each process runs, the media
//! forwarder (opaque UDP relay), the local
//! control socket behind every CLI, state-directory resolution, and mDNS
//! advertising and browsing (a hint of where to connect, never of whom to
//! trust), and the limits a server puts on who may start a handshake
//! (`admission`, over the networks of `ipnet`), and the connectivity checks
//! that open a call's direct path through NAT routers (`checks`).

pub mod admission;
pub mod checks;
pub mod control;
pub mod endpoint;
pub mod identity;
pub mod ipnet;
pub mod lifecycle;
pub mod mdns;
pub mod medialink;
pub mod relay;
pub mod statedir;
pub mod tls;

pub use endpoint::{
    make_endpoint, make_endpoint_with_checks, make_endpoint_with_puncher, peer_fingerprint,
    Checker, Puncher,
};
pub use identity::{pairing_code, Identity};
