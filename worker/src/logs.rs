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
    pub id: Arc<crate::agent::Identity>,
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
        // The replica passes on the reader's own credential: only a read
        // signed by the job's member opens its logs.
        let Some((member, key)) = crate::executor::read_reader(&self.work_dir, req.alloc_id) else {
            return Err(Status::not_found(format!(
                "no logs for allocation {} on this worker (removed, or never started here)",
                req.alloc_id
            )));
        };
        if req.member != member {
            return Err(Status::permission_denied(format!(
                "allocation {}'s logs are {member}'s alone",
                req.alloc_id
            )));
        }
        let auth = coop_proto::convert::auth(req.issued_at_ms, &req.signature)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let cluster = self.id.cluster_id.get().map(String::as_str).unwrap_or("");
        coop_core::identity::verify_read(
            &key,
            cluster,
            &coop_core::MemberId::new(member.clone()),
            &auth,
            self.id.now_ms(),
        )
        .map_err(|e| Status::unauthenticated(e.to_string()))?;
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
