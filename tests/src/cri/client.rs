//! A blocking CRI client (`runtime.v1`, k8s-cri 0.11 / tonic 0.14) over containerd's Unix
//! socket, with the calls kubelet makes, in the order it makes them. It owns a small tokio
//! runtime, so tests stay synchronous; it is `Clone` + `Send` and may be used from many threads
//! at once (tonic channels multiplex).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerStats, ContainerStatsRequest, ContainerStatus,
    ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ExecSyncResponse,
    LinuxContainerResources, PodSandboxConfig, PodSandboxStatus, PodSandboxStatusRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest, UpdateContainerResourcesRequest,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// What can go wrong talking CRI.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// The tokio runtime could not be built.
    #[error("building the CRI client's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// containerd's socket did not accept a connection.
    #[error("connecting to CRI at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call failed (the status message is containerd's, often the shim's, error).
    #[error("CRI {call} failed: {code:?}: {message}")]
    Rpc {
        /// The RPC.
        call: &'static str,
        /// The gRPC code.
        code: tonic::Code,
        /// The message.
        message: String,
    },
    /// A reply lacked a field kubelet relies on.
    #[error("CRI {call} replied without {field}")]
    Missing {
        /// The RPC.
        call: &'static str,
        /// The field.
        field: &'static str,
    },
}

impl CriError {
    fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> CriError {
        move |s| CriError::Rpc {
            call,
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}

/// The CRI runtime service of one containerd.
#[derive(Debug, Clone)]
pub struct Cri {
    rt: Arc<tokio::runtime::Runtime>,
    client: RuntimeServiceClient<Channel>,
}

/// How long one CRI call may take (pod start in the nested test host can take minutes).
const CALL_TIMEOUT: Duration = Duration::from_secs(600);

impl Cri {
    /// Connects to containerd's gRPC socket.
    pub fn connect(socket: &Path) -> Result<Cri, CriError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(CriError::Runtime)?;
        let path = socket.to_path_buf();
        let p = path.clone();
        let channel = rt
            .block_on(async move {
                Endpoint::from_static("http://[::]")
                    .timeout(CALL_TIMEOUT)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let p = p.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?))
                        }
                    }))
                    .await
            })
            .map_err(|source| CriError::Connect { path, source })?;
        Ok(Cri {
            rt: Arc::new(rt),
            client: RuntimeServiceClient::new(channel),
        })
    }

    fn call<T, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        self.rt.block_on(f(self.client.clone()))
    }

    /// RunPodSandbox with `runtime_handler`; returns the pod sandbox id.
    pub fn run_pod(&self, config: &PodSandboxConfig, handler: &str) -> Result<String, CriError> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        let r = self
            .call(|mut c| async move { c.run_pod_sandbox(req).await })
            .map_err(CriError::rpc("RunPodSandbox"))?;
        Ok(r.into_inner().pod_sandbox_id)
    }

    /// CreateContainer + StartContainer in pod `pod_id`; returns the container id.
    pub fn create_and_start(
        &self,
        pod_id: &str,
        pod: &PodSandboxConfig,
        config: &ContainerConfig,
    ) -> Result<String, CriError> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(pod.clone()),
        };
        let id = self
            .call(|mut c| async move { c.create_container(req).await })
            .map_err(CriError::rpc("CreateContainer"))?
            .into_inner()
            .container_id;
        let req = StartContainerRequest {
            container_id: id.clone(),
        };
        self.call(|mut c| async move { c.start_container(req).await })
            .map_err(CriError::rpc("StartContainer"))?;
        Ok(id)
    }

    /// ExecSync `cmd` in container `id` (timeout in seconds; 0 = none).
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<ExecSyncResponse, CriError> {
        let req = ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        Ok(self
            .call(|mut c| async move { c.exec_sync(req).await })
            .map_err(CriError::rpc("ExecSync"))?
            .into_inner())
    }

    /// ContainerStatus.
    pub fn container_status(&self, id: &str) -> Result<ContainerStatus, CriError> {
        let req = ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.call(|mut c| async move { c.container_status(req).await })
            .map_err(CriError::rpc("ContainerStatus"))?
            .into_inner()
            .status
            .ok_or(CriError::Missing {
                call: "ContainerStatus",
                field: "status",
            })
    }

    /// PodSandboxStatus.
    pub fn pod_status(&self, id: &str) -> Result<PodSandboxStatus, CriError> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: false,
        };
        self.call(|mut c| async move { c.pod_sandbox_status(req).await })
            .map_err(CriError::rpc("PodSandboxStatus"))?
            .into_inner()
            .status
            .ok_or(CriError::Missing {
                call: "PodSandboxStatus",
                field: "status",
            })
    }

    /// ContainerStats.
    pub fn stats(&self, id: &str) -> Result<ContainerStats, CriError> {
        let req = ContainerStatsRequest {
            container_id: id.to_string(),
        };
        self.call(|mut c| async move { c.container_stats(req).await })
            .map_err(CriError::rpc("ContainerStats"))?
            .into_inner()
            .stats
            .ok_or(CriError::Missing {
                call: "ContainerStats",
                field: "stats",
            })
    }

    /// UpdateContainerResources (Linux resources).
    pub fn update_resources(
        &self,
        id: &str,
        linux: LinuxContainerResources,
    ) -> Result<(), CriError> {
        let req = UpdateContainerResourcesRequest {
            container_id: id.to_string(),
            linux: Some(linux),
            ..Default::default()
        };
        self.call(|mut c| async move { c.update_container_resources(req).await })
            .map_err(CriError::rpc("UpdateContainerResources"))?;
        Ok(())
    }

    /// StopContainer with a grace period in seconds.
    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<(), CriError> {
        let req = StopContainerRequest {
            container_id: id.to_string(),
            timeout,
        };
        self.call(|mut c| async move { c.stop_container(req).await })
            .map_err(CriError::rpc("StopContainer"))?;
        Ok(())
    }

    /// RemoveContainer.
    pub fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let req = RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.call(|mut c| async move { c.remove_container(req).await })
            .map_err(CriError::rpc("RemoveContainer"))?;
        Ok(())
    }

    /// StopPodSandbox.
    pub fn stop_pod(&self, id: &str) -> Result<(), CriError> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call(|mut c| async move { c.stop_pod_sandbox(req).await })
            .map_err(CriError::rpc("StopPodSandbox"))?;
        Ok(())
    }

    /// RemovePodSandbox.
    pub fn remove_pod(&self, id: &str) -> Result<(), CriError> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.call(|mut c| async move { c.remove_pod_sandbox(req).await })
            .map_err(CriError::rpc("RemovePodSandbox"))?;
        Ok(())
    }

    /// StopPodSandbox then RemovePodSandbox, as kubelet does when a pod is deleted.
    pub fn stop_and_remove_pod(&self, id: &str) -> Result<(), CriError> {
        self.stop_pod(id)?;
        self.remove_pod(id)
    }
}
