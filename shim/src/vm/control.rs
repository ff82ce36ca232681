//! husk-vmm's control socket, from the shim's side: one request line per connection, one
//! answer line (`ok ...` or `error ...`), bounded in time and length.

use std::path::Path;
use std::time::Duration;

use husk_protocol::ControlRequest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The longest answer read (`queues` on a VM with many devices is the longest).
const MAX_ANSWER: u64 = 64 << 10;

/// How long an answer may take: a snapshot of a large guest writes its whole RAM.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// A request that did not get an `ok`.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket failed or the answer did not come in time.
    #[error("husk-vmm's control socket {path}: {why}")]
    Socket {
        /// The socket.
        path: String,
        /// What failed.
        why: String,
    },
    /// husk-vmm refused.
    #[error("husk-vmm refused {request:?}: {answer}")]
    Refused {
        /// The request.
        request: String,
        /// Its answer.
        answer: String,
    },
}

/// Sends `request` and returns the text after `ok `.
pub async fn request(socket: &Path, request: ControlRequest) -> Result<String, ControlError> {
    let fail = |why: String| ControlError::Socket {
        path: socket.display().to_string(),
        why,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(socket).await?;
        stream.write_all(request.line().as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(stream.take(MAX_ANSWER))
            .read_line(&mut line)
            .await?;
        Ok::<_, std::io::Error>(line)
    };
    let line = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {ANSWER_TIMEOUT:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    let line = line.trim_end();
    match line.strip_prefix("ok") {
        Some(rest) => Ok(rest.trim_start().to_string()),
        None => Err(ControlError::Refused {
            request: request.line().trim().to_string(),
            answer: line.strip_prefix("error ").unwrap_or(line).to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;

    async fn serve_once(answer: &'static str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut line = String::new();
            BufReader::new(r).read_line(&mut line).await.unwrap();
            assert_eq!(line, "pause\n");
            w.write_all(answer.as_bytes()).await.unwrap();
        });
        (dir, path)
    }

    #[tokio::test]
    async fn ok_answers_and_refusals_are_told_apart() {
        let (_d, path) = serve_once("ok paused\n").await;
        assert_eq!(
            request(&path, ControlRequest::Pause).await.unwrap(),
            "paused"
        );
        let (_d, path) = serve_once("error the VM is created and cannot become paused\n").await;
        let e = request(&path, ControlRequest::Pause).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "husk-vmm refused \"pause\": the VM is created and cannot become paused"
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_named() {
        let e = request(Path::new("/nonexistent/ctl"), ControlRequest::Ping)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ctl"), "{e}");
    }
}
