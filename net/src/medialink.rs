//! The opening of a call's media link, one way for every end.
//!
//! The dialling end opens the connection's first bidirectional stream and
//! presents the call's flow id and the token its gateway or directory
//! issued (`MediaHello`); the accepting end checks both against the call it
//! expects and answers `MediaOk`, or closes the connection with
//! [`BAD_CREDENTIAL`]. Stations, terminals, the gateway's mailboxes and the
//! load generator all use these functions, so the handshake is written
//! once. Certificates are checked by the caller (the dialling end pins the
//! peer's fingerprint in its client config; the accepting end compares
//! [`crate::peer_fingerprint`] before it reads the hello).

use std::time::Duration;

use keyline_proto::codec::{read_frame, write_frame};
use keyline_proto::msg::{CallId, Msg};
use keyline_proto::MAX_MESSAGE;

/// The QUIC application close code and reason of a refused credential.
pub const BAD_CREDENTIAL: (u32, &[u8]) = (1, b"bad media credential");

/// Why a media link did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The other end's answer or hello did not name this call, or named it
    /// with another token.
    #[error("wrong media credential")]
    BadCredential,
    /// Nothing came within the time allowed.
    #[error("no {what} within {within:?}")]
    Timeout {
        what: &'static str,
        within: Duration,
    },
    /// The stream or connection failed (with the peer's close reason when
    /// it gave one).
    #[error("{0}")]
    Failed(String),
}

/// Dialling end: present `flow` and `token` on a new stream of `conn` and
/// wait up to `within` for the far end's `MediaOk`.
pub async fn dial(
    conn: &quinn::Connection,
    flow: CallId,
    token: &str,
    within: Duration,
) -> Result<(), LinkError> {
    let lost = |e: &dyn std::fmt::Display| match conn.close_reason() {
        Some(why) => LinkError::Failed(format!("{e}: {why}")),
        None => LinkError::Failed(e.to_string()),
    };
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
    let hello = Msg::MediaHello {
        call: flow,
        token: token.to_owned(),
    };
    write_frame(&mut send, &hello, MAX_MESSAGE)
        .await
        .map_err(|e| lost(&e))?;
    // `send` stays open until the answer is in: the far end may be slow to
    // read, and a finished stream would tell it nothing more.
    let body = tokio::time::timeout(within, read_frame(&mut recv, MAX_MESSAGE))
        .await
        .map_err(|_| LinkError::Timeout {
            what: "media answer",
            within,
        })?
        .map_err(|e| lost(&e))?
        .ok_or_else(|| lost(&"the peer closed the media stream"))?;
    match Msg::from_cbor(&body) {
        Ok(Msg::MediaOk { call }) if call == flow => Ok(()),
        // An answer for another call: our credential was not the one it
        // expected.
        Ok(Msg::MediaOk { .. }) => Err(LinkError::BadCredential),
        Ok(other) => Err(LinkError::Failed(format!(
            "unexpected media answer {:?}",
            other.kind()
        ))),
        Err(e) => Err(LinkError::Failed(format!("unreadable media answer: {e}"))),
    }
}

/// A `MediaHello` read on the accepting end, not yet answered.
#[derive(Debug)]
pub struct Hello {
    /// The flow id the dialling end named.
    pub flow: CallId,
    /// The token it presented.
    pub token: String,
    send: quinn::SendStream,
}

impl Hello {
    /// A hello read by someone else (the gateway reads the first message of
    /// every connection itself, to tell stations from media).
    pub fn new(flow: CallId, token: String, send: quinn::SendStream) -> Self {
        Hello { flow, token, send }
    }

    /// Accept: answer `MediaOk` for this flow.
    pub async fn accept(mut self) -> Result<(), LinkError> {
        write_frame(
            &mut self.send,
            &Msg::MediaOk { call: self.flow },
            MAX_MESSAGE,
        )
        .await
        .map_err(|e| LinkError::Failed(e.to_string()))
    }
}

/// Refuse a media connection whose credential is wrong.
pub fn refuse(conn: &quinn::Connection) {
    let (code, reason) = BAD_CREDENTIAL;
    conn.close(quinn::VarInt::from_u32(code), reason);
}

/// Accepting end: wait up to `within` for the dialling end's stream and its
/// `MediaHello`. Anything else on that stream refuses the connection.
pub async fn read_hello(conn: &quinn::Connection, within: Duration) -> Result<Hello, LinkError> {
    let read = async {
        let (send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| LinkError::Failed(e.to_string()))?;
        let body = read_frame(&mut recv, MAX_MESSAGE)
            .await
            .map_err(|e| LinkError::Failed(e.to_string()))?
            .ok_or(LinkError::BadCredential)?;
        match Msg::from_cbor(&body) {
            Ok(Msg::MediaHello { call, token }) => Ok(Hello::new(call, token, send)),
            _ => Err(LinkError::BadCredential),
        }
    };
    let res = tokio::time::timeout(within, read)
        .await
        .unwrap_or(Err(LinkError::Timeout {
            what: "media hello",
            within,
        }));
    if matches!(res, Err(LinkError::BadCredential)) {
        refuse(conn);
    }
    res
}

/// Accepting end, all in one: read the hello and accept it if `flow` and
/// `token` are the expected ones; refuse the connection otherwise.
pub async fn accept(
    conn: &quinn::Connection,
    flow: CallId,
    token: &str,
    within: Duration,
) -> Result<(), LinkError> {
    let hello = read_hello(conn, within).await?;
    if hello.flow != flow || hello.token != token {
        refuse(conn);
        return Err(LinkError::BadCredential);
    }
    hello.accept().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{endpoint, Identity};
    use std::net::SocketAddr;

    /// Two real endpoints on loopback, the dialling one pinned to the other.
    async fn pair() -> (quinn::Connection, quinn::Connection, [quinn::Endpoint; 2]) {
        let a_id = Identity::generate("accepting").expect("identity a");
        let b_id = Identity::generate("dialling").expect("identity b");
        let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let a = crate::make_endpoint(local, &a_id).expect("endpoint a");
        let b = crate::make_endpoint(local, &b_id).expect("endpoint b");
        let cfg = endpoint::client_config(&b_id, Some(a_id.fingerprint.clone())).expect("config");
        let addr = a.local_addr().expect("a's address");
        let dialled = b
            .connect_with(cfg, addr, endpoint::SERVER_NAME)
            .expect("connect");
        let incoming = a.accept().await.expect("incoming");
        let (accepted, dialled) = tokio::join!(incoming, dialled);
        (
            accepted.expect("accepted"),
            dialled.expect("dialled"),
            [a, b],
        )
    }

    #[tokio::test]
    async fn the_right_credential_opens_the_link() {
        let (acc, dial_conn, _eps) = pair().await;
        let (d, a) = tokio::join!(
            dial(&dial_conn, 7, "secret", Duration::from_secs(5)),
            accept(&acc, 7, "secret", Duration::from_secs(5)),
        );
        assert_eq!(d, Ok(()));
        assert_eq!(a, Ok(()));
    }

    #[tokio::test]
    async fn a_wrong_token_or_flow_is_refused_and_the_dialler_told() {
        for (flow, token) in [(7, "guess"), (8, "secret")] {
            let (acc, dial_conn, _eps) = pair().await;
            let (d, a) = tokio::join!(
                dial(&dial_conn, flow, token, Duration::from_secs(5)),
                accept(&acc, 7, "secret", Duration::from_secs(5)),
            );
            assert_eq!(a, Err(LinkError::BadCredential));
            match d {
                Err(LinkError::Failed(why)) => {
                    assert!(why.contains("bad media credential"), "{why}")
                }
                other => panic!("dialler saw {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn silence_is_a_timeout_on_both_ends() {
        let (acc, dial_conn, _eps) = pair().await;
        let a = accept(&acc, 7, "secret", Duration::from_millis(200)).await;
        assert!(
            matches!(
                a,
                Err(LinkError::Timeout {
                    what: "media hello",
                    ..
                })
            ),
            "{a:?}"
        );
        let (acc, dial_conn2, _eps2) = pair().await;
        let (d, hello) = tokio::join!(
            dial(&dial_conn2, 7, "secret", Duration::from_millis(200)),
            read_hello(&acc, Duration::from_secs(5)),
        );
        // The hello was read but never answered.
        assert!(hello.is_ok());
        assert!(
            matches!(
                d,
                Err(LinkError::Timeout {
                    what: "media answer",
                    ..
                })
            ),
            "{d:?}"
        );
        drop(dial_conn);
    }
}
