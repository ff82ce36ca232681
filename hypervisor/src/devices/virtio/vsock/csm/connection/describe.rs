//! A connection's state in one line, for diagnosis.

use super::{
    ConnStream, Connection, P_CREDIT_REQUEST, P_CREDIT_UPDATE, P_REQUEST, P_RESPONSE, P_RST, P_RW,
    P_SHUTDOWN,
};

impl<S: ConnStream> Connection<S> {
    /// The connection's flow-control state in one line, for diagnosis (the control socket's
    /// `queues` asks the vsock worker to log it): who holds the ball when a stream stalls.
    pub fn describe(&self) -> String {
        let pending: Vec<&str> = [
            (P_RST, "rst"),
            (P_REQUEST, "request"),
            (P_RESPONSE, "response"),
            (P_RW, "rw"),
            (P_SHUTDOWN, "shutdown"),
            (P_CREDIT_UPDATE, "credit-update"),
            (P_CREDIT_REQUEST, "credit-request"),
        ]
        .iter()
        .filter(|(bit, _)| self.pending & bit != 0)
        .map(|(_, name)| *name)
        .collect();
        format!(
            "state={} owed=[{}] guest-credit={} (buf_alloc {}, sent {}, guest consumed {}) \
             host-forwarded={} (guest told {}) queued-for-host={} interest={:?} eof={} hup={}",
            self.state,
            pending.join(","),
            self.peer_credit(),
            self.peer_buf_alloc,
            self.rx_cnt.0,
            self.peer_fwd_cnt.0,
            self.fwd_cnt.0,
            self.last_fwd_cnt_sent.0,
            self.tx_buf.len(),
            self.interest(),
            self.local_eof,
            self.hup,
        )
    }
}
