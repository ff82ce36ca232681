//! The first line of a stdio connection (`husk-stdio <cid> <eid|-> <kind>`): which process's
//! stream it is. The agent answers `ok` only after reserving the slot, and the connection joins
//! the process after the answer is written, so no output can precede the `ok` line.

use std::sync::Arc;
use std::time::Duration;

use husk_protocol::stdio::{answer_line, StdioHello, MAX_LINE};
use tokio::io::AsyncWriteExt;

use crate::conn::{read_line, Conn};
use crate::sandbox::Sandbox;

/// How long a client may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection on the stdio port.
pub async fn handle(sandbox: Arc<Sandbox>, mut conn: Conn) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_line(&mut conn, MAX_LINE)).await {
        Ok(Ok(line)) => match std::str::from_utf8(&line)
            .map_err(|_| "hello is not UTF-8".to_string())
            .and_then(|l| StdioHello::parse(l).map_err(|e| e.to_string()))
        {
            Ok(h) => h,
            Err(why) => return refuse(conn, &why).await,
        },
        Ok(Err(e)) => return refuse(conn, &format!("reading the hello: {e}")).await,
        Err(_) => return refuse(conn, "no hello within 10 s").await,
    };
    if let Err(e) = sandbox.reserve_stream(&hello) {
        return refuse(conn, &e.to_string()).await;
    }
    if let Err(e) = conn.write_all(answer_line(Ok(())).as_bytes()).await {
        tracing::debug!(error = %e, "stdio client left before its ok");
        sandbox.release_stream(&hello);
        return;
    }
    sandbox.attach_stream(&hello, conn);
}

async fn refuse(mut conn: Conn, why: &str) {
    tracing::debug!(why, "stdio stream refused");
    let _ = conn.write_all(answer_line(Err(why)).as_bytes()).await;
    let _ = conn.shutdown().await;
}
