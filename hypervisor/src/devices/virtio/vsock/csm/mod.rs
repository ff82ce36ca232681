//! The connection state machine: one vsock stream between a guest port and a host Unix
//! stream.
//!
//! ```text
//!  host CONNECT ─▶ LocalInit ──guest RESPONSE──▶ Established ◀── ResponseSent ── PeerInit ◀─ guest REQUEST
//!                                                 │       │
//!                               guest SHUTDOWN ───┘       └─── host stream closed
//!                                     ▼                               ▼
//!                        PeerClosed { rcv, send }               LocalClosed (await RST)
//!                                     └──────────────┬────────────────┘
//!                                                    ▼
//!                                 Killed (RST sent or received, timeout, error)
//! ```
//!
//! [`ConnState::on`] is the only way to move between states; it refuses what the diagram does
//! not allow. Credit-based flow control and buffering live in [`connection::Connection`].

pub mod connection;
pub mod txbuf;

use std::fmt;
use std::time::Duration;

/// The receive buffer each connection advertises to the guest (and the most it queues).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Send a credit update once this many bytes were forwarded since the last one the guest saw.
pub const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_ALLOC / 4;
/// How long the guest has to answer a host connection's REQUEST. Generous on purpose: a guest
/// whose vCPU is busy answers late but answers (a console line drains at one port exit per byte,
/// and a nested guest draining a 4 KiB serial buffer took more than 2 s), while the host's caller
/// keeps its own deadline and the device's connection limit bounds what waits.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the guest has to send RST after our SHUTDOWN (the connection is over either way).
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The guest's deadline in `state`, for messages.
pub fn timeout_in(state: ConnState) -> Duration {
    match state {
        ConnState::LocalInit => REQUEST_TIMEOUT,
        _ => CLOSE_TIMEOUT,
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// The host connected; REQUEST is (being) sent to the guest, no answer yet.
    LocalInit,
    /// The guest sent REQUEST and the host stream is connected; RESPONSE not sent yet.
    PeerInit,
    /// Data flows both ways.
    Established,
    /// The host stream closed completely; SHUTDOWN sent, waiting for the guest's RST.
    LocalClosed,
    /// The guest announced SHUTDOWN: it will receive (`rcv`) and/or send (`send`) no more.
    PeerClosed {
        /// The guest will receive no more data.
        rcv: bool,
        /// The guest will send no more data.
        send: bool,
    },
    /// Over: RST went either way. The connection is dropped.
    Killed,
}

/// What moves a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    /// The device sent RESPONSE to the guest's REQUEST.
    ResponseSent,
    /// The guest answered our REQUEST.
    PeerResponse,
    /// The guest sent SHUTDOWN with these flags.
    PeerShutdown {
        /// RCV flag.
        rcv: bool,
        /// SEND flag.
        send: bool,
    },
    /// The host stream closed in both directions.
    LocalClosed,
    /// RST sent or received, a timeout or an I/O error.
    Reset,
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection in state {from} cannot take {event:?}")]
pub struct BadTransition {
    /// The state.
    pub from: ConnState,
    /// The event.
    pub event: ConnEvent,
}

impl fmt::Display for ConnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnState::LocalInit => f.write_str("local-init"),
            ConnState::PeerInit => f.write_str("peer-init"),
            ConnState::Established => f.write_str("established"),
            ConnState::LocalClosed => f.write_str("local-closed"),
            ConnState::PeerClosed { rcv, send } => write!(f, "peer-closed(rcv={rcv}, send={send})"),
            ConnState::Killed => f.write_str("killed"),
        }
    }
}

impl ConnState {
    /// The state after `event`.
    pub fn on(self, event: ConnEvent) -> Result<ConnState, BadTransition> {
        use ConnEvent as E;
        use ConnState as S;
        let next = match (self, event) {
            (S::Killed, _) => None,
            (_, E::Reset) => Some(S::Killed),
            (S::PeerInit, E::ResponseSent) => Some(S::Established),
            (S::LocalInit, E::PeerResponse) => Some(S::Established),
            (S::Established, E::PeerShutdown { rcv, send }) => Some(S::PeerClosed { rcv, send }),
            (S::PeerClosed { rcv, send }, E::PeerShutdown { rcv: r, send: s }) => {
                Some(S::PeerClosed {
                    rcv: rcv || r,
                    send: send || s,
                })
            }
            // Our SHUTDOWN crossed the guest's: still waiting for the RST.
            (S::LocalClosed, E::PeerShutdown { .. }) => Some(S::LocalClosed),
            (S::Established | S::PeerClosed { .. }, E::LocalClosed) => Some(S::LocalClosed),
            _ => None,
        };
        next.ok_or(BadTransition { from: self, event })
    }

    /// Whether the device may send data to the guest in this state.
    pub fn guest_receives(self) -> bool {
        matches!(
            self,
            ConnState::Established | ConnState::PeerClosed { rcv: false, .. }
        )
    }

    /// Whether the guest may send data in this state.
    pub fn guest_sends(self) -> bool {
        matches!(
            self,
            ConnState::Established | ConnState::PeerClosed { send: false, .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::ConnEvent as E;
    use super::ConnState as S;
    use super::*;

    #[test]
    fn allowed_transitions() {
        assert_eq!(S::LocalInit.on(E::PeerResponse), Ok(S::Established));
        assert_eq!(S::PeerInit.on(E::ResponseSent), Ok(S::Established));
        let half = S::Established.on(E::PeerShutdown {
            rcv: false,
            send: true,
        });
        assert_eq!(
            half,
            Ok(S::PeerClosed {
                rcv: false,
                send: true
            })
        );
        assert_eq!(
            half.unwrap().on(E::PeerShutdown {
                rcv: true,
                send: false
            }),
            Ok(S::PeerClosed {
                rcv: true,
                send: true
            }),
            "shutdown flags accumulate"
        );
        assert_eq!(S::Established.on(E::LocalClosed), Ok(S::LocalClosed));
        assert_eq!(
            S::LocalClosed.on(E::PeerShutdown {
                rcv: true,
                send: true
            }),
            Ok(S::LocalClosed)
        );
        for s in [S::LocalInit, S::PeerInit, S::Established, S::LocalClosed] {
            assert_eq!(s.on(E::Reset), Ok(S::Killed));
        }
    }

    #[test]
    fn refused_transitions() {
        for (from, event) in [
            (S::LocalInit, E::ResponseSent),
            (S::PeerInit, E::PeerResponse),
            (S::Established, E::PeerResponse),
            (
                S::LocalInit,
                E::PeerShutdown {
                    rcv: true,
                    send: true,
                },
            ),
            (S::PeerInit, E::LocalClosed),
            (S::Killed, E::Reset),
            (S::Killed, E::PeerResponse),
        ] {
            assert_eq!(from.on(event), Err(BadTransition { from, event }));
        }
    }

    #[test]
    fn data_directions_follow_shutdown_flags() {
        assert!(S::Established.guest_receives() && S::Established.guest_sends());
        let s = S::PeerClosed {
            rcv: true,
            send: false,
        };
        assert!(!s.guest_receives() && s.guest_sends());
        assert!(!S::LocalInit.guest_sends() && !S::LocalClosed.guest_receives());
    }
}
