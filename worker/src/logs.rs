//! `WorkerAgent`: serves job logs to the scheduler replicas.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use coop_proto::worker::worker_agent_server::WorkerAgent;
use coop_proto::worker::{ReadLogsRequest, ReadLogsResponse};
use tonic::{Request, Response, Status};

use crate::executor::alloc_dir;
use crate::reconcile::Local;

pub struct LogService {
    pub work_dir: PathBuf,
    pub local: Arc<Mutex<BTreeMap<u64, Local>>>,
}

/// Largest chunk one call returns.
const MAX_CHUNK: u64 = 1024 * 1024;

#[tonic::async_trait]
impl WorkerAgent for LogService {
    async fn read_logs(
        &self,
        request: Request<ReadLogsRequest>,
    ) -> Result<Response<ReadLogsResponse>, Status> {
        let req = request.into_inner();
        let file = match req.stream.as_str() {
            "stdout" => "stdout.log",
            "stderr" => "stderr.log",
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown stream {other:?}"
                )))
            }
        };
        let path = alloc_dir(&self.work_dir, req.alloc_id).join(file);
        let running = {
            let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
            matches!(
                local.get(&req.alloc_id),
                Some(Local::Running | Local::Stopping)
            )
        };
        let max = u64::from(req.max_bytes).clamp(1, MAX_CHUNK);
        let offset = req.offset;
        let data = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            f.take(max).read_to_end(&mut buf)?;
            Ok(buf)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let data = match data {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Status::not_found(format!(
                    "no logs for allocation {} on this worker (removed, or never started here)",
                    req.alloc_id
                )))
            }
            Err(e) => return Err(Status::internal(format!("read logs: {e}"))),
        };
        Ok(Response::new(ReadLogsResponse {
            next_offset: offset + data.len() as u64,
            data,
            running,
        }))
    }
}
