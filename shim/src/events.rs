//! Task events to containerd, in order.
//!
//! The runtime v2 spec orders events per task: create, start, exit, delete; exec-added before
//! exec-started before the exec's exit. Every event goes through one unbounded queue in the
//! order the shim produced it, and one task forwards them to containerd's
//! `containerd.services.events.ttrpc.v1.Events/Forward` at `$TTRPC_ADDRESS`, one at a time,
//! waiting for each answer. So the order on the wire is the order of [`Events::send`] calls, and
//! the shim orders those (for example, a process's exit is only sent after its start was).
//! A failed forward is retried (reconnecting) a bounded number of times, then dropped with a
//! warning. [`Events::flush`] lets the shim exit only after everything queued was delivered.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::context;
use tokio::sync::{mpsc, oneshot};

/// One task event.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    /// `/tasks/create`
    Create(TaskCreate),
    /// `/tasks/start`
    Start(TaskStart),
    /// `/tasks/exit`
    Exit(TaskExit),
    /// `/tasks/delete`
    Delete(TaskDelete),
    /// `/tasks/exec-added`
    ExecAdded(TaskExecAdded),
    /// `/tasks/exec-started`
    ExecStarted(TaskExecStarted),
    /// `/tasks/paused`
    Paused(TaskPaused),
    /// `/tasks/resumed`
    Resumed(TaskResumed),
    /// `/tasks/oom`
    Oom(TaskOOM),
}

impl TaskEvent {
    /// The topic containerd files it under.
    pub fn topic(&self) -> &'static str {
        match self {
            TaskEvent::Create(_) => topics::TASK_CREATE_EVENT_TOPIC,
            TaskEvent::Start(_) => topics::TASK_START_EVENT_TOPIC,
            TaskEvent::Exit(_) => topics::TASK_EXIT_EVENT_TOPIC,
            TaskEvent::Delete(_) => topics::TASK_DELETE_EVENT_TOPIC,
            TaskEvent::ExecAdded(_) => topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskEvent::ExecStarted(_) => topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskEvent::Paused(_) => topics::TASK_PAUSED_EVENT_TOPIC,
            TaskEvent::Resumed(_) => topics::TASK_RESUMED_EVENT_TOPIC,
            TaskEvent::Oom(_) => topics::TASK_OOM_EVENT_TOPIC,
        }
    }

    fn message(&self) -> &dyn MessageDyn {
        match self {
            TaskEvent::Create(m) => m,
            TaskEvent::Start(m) => m,
            TaskEvent::Exit(m) => m,
            TaskEvent::Delete(m) => m,
            TaskEvent::ExecAdded(m) => m,
            TaskEvent::ExecStarted(m) => m,
            TaskEvent::Paused(m) => m,
            TaskEvent::Resumed(m) => m,
            TaskEvent::Oom(m) => m,
        }
    }

    /// The event as containerd's `Any` (type URL = the full protobuf name).
    pub fn to_any(&self) -> Any {
        let m = self.message();
        let mut any = Any::new();
        any.type_url = m.descriptor_dyn().full_name().to_string();
        any.value = m.write_to_bytes_dyn().unwrap_or_default();
        any
    }
}

/// What travels through the queue.
#[derive(Debug)]
pub enum Queued {
    /// An event and when it happened.
    Event(TaskEvent, Timestamp),
    /// Answered once everything before it was forwarded.
    Flush(oneshot::Sender<()>),
}

/// The sending side, cloned wherever events are produced.
#[derive(Debug, Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<Queued>,
}

/// Now as a protobuf timestamp.
pub fn now() -> Timestamp {
    timestamp(SystemTime::now())
}

/// A time as a protobuf timestamp.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    ts
}

impl Events {
    /// A queue and its receiving end (for [`forward`], or a test).
    pub fn channel() -> (Events, mpsc::UnboundedReceiver<Queued>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Events { tx }, rx)
    }

    /// Queues an event; the queue keeps the order of calls.
    pub fn send(&self, event: TaskEvent) {
        tracing::debug!(topic = event.topic(), "event");
        if self.tx.send(Queued::Event(event, now())).is_err() {
            tracing::warn!("event queue closed; an event was dropped");
        }
    }

    /// Waits (at most `limit`) until every event queued so far was forwarded or dropped.
    pub async fn flush(&self, limit: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Queued::Flush(tx)).is_ok() {
            let _ = tokio::time::timeout(limit, rx).await;
        }
    }
}

const ATTEMPTS: u32 = 5;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect(ttrpc_address: &str) -> Option<EventsClient> {
    let addr = if ttrpc_address.contains("://") {
        ttrpc_address.to_string()
    } else {
        format!("unix://{ttrpc_address}")
    };
    match Client::connect(&addr).await {
        Ok(c) => Some(EventsClient::new(c)),
        Err(e) => {
            tracing::warn!("connecting to containerd's event service {addr}: {e}");
            None
        }
    }
}

/// Forwards queued events to containerd at `ttrpc_address`, in order, until the queue closes.
pub async fn forward(
    ttrpc_address: String,
    namespace: String,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) {
    let mut client = None;
    while let Some(item) = rx.recv().await {
        let (event, ts) = match item {
            Queued::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Queued::Event(e, ts) => (e, ts),
        };
        let mut envelope = Envelope::new();
        envelope.timestamp = MessageField::some(ts);
        envelope.namespace = namespace.clone();
        envelope.topic = event.topic().to_string();
        envelope.event = MessageField::some(event.to_any());
        let mut req = ForwardRequest::new();
        req.envelope = MessageField::some(envelope);
        let mut delivered = false;
        for attempt in 0..ATTEMPTS {
            if client.is_none() {
                client = connect(&ttrpc_address).await;
            }
            if let Some(c) = &client {
                match c
                    .forward(context::with_duration(FORWARD_TIMEOUT), &req)
                    .await
                {
                    Ok(_) => {
                        delivered = true;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(topic = event.topic(), attempt, "forwarding event: {e}");
                        client = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        if !delivered {
            tracing::error!(
                topic = event.topic(),
                "event dropped after {ATTEMPTS} attempts"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::protobuf::Message;

    use super::*;

    #[test]
    fn any_carries_the_full_protobuf_name() {
        let mut e = TaskExit::new();
        e.container_id = "c1".into();
        e.exit_status = 137;
        let ev = TaskEvent::Exit(e.clone());
        assert_eq!(ev.topic(), "/tasks/exit");
        let any = ev.to_any();
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        assert_eq!(TaskExit::parse_from_bytes(&any.value).unwrap(), e);
    }

    #[tokio::test]
    async fn queue_keeps_order_and_flush_waits() {
        let (events, mut rx) = Events::channel();
        events.send(TaskEvent::Start(TaskStart::new()));
        events.send(TaskEvent::Exit(TaskExit::new()));
        let topics: Vec<_> = [rx.recv().await, rx.recv().await]
            .into_iter()
            .map(|q| match q {
                Some(Queued::Event(e, _)) => e.topic(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(topics, ["/tasks/start", "/tasks/exit"]);
        let flusher = tokio::spawn({
            let events = events.clone();
            async move { events.flush(Duration::from_secs(5)).await }
        });
        match rx.recv().await {
            Some(Queued::Flush(done)) => done.send(()).unwrap(),
            other => panic!("{other:?}"),
        }
        flusher.await.unwrap();
    }
}
