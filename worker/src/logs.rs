//! `WorkerAgent`: serves job logs, and the files an ended job left, to the
//! scheduler replicas, for the job's member only.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use coop_proto::worker::worker_agent_server::WorkerAgent;
use coop_proto::worker::{ReadFileRequest, ReadFileResponse, ReadLogsRequest, ReadLogsResponse};
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

impl LogService {
    /// Admits a read of allocation `alloc`'s logs or files: the replica
    /// passes on the reader's own credential, and only one signed by the
    /// job's member opens them.
    fn admit(
        &self,
        alloc: u64,
        reader: &str,
        issued_at_ms: u64,
        signature: &[u8],
    ) -> Result<(), Status> {
        let Some((member, key)) = crate::executor::read_reader(&self.work_dir, alloc) else {
            return Err(Status::not_found(format!(
                "nothing of allocation {alloc} on this worker (removed after the retention period, or never started here)"
            )));
        };
        if reader != member {
            return Err(Status::permission_denied(format!(
                "allocation {alloc}'s logs and files are {member}'s alone"
            )));
        }
        let auth = coop_proto::convert::auth(issued_at_ms, signature)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let cluster = self.id.cluster_id.get().map(String::as_str).unwrap_or("");
        coop_core::identity::verify_read(
            &key,
            cluster,
            &coop_core::MemberId::new(member),
            &auth,
            self.id.now_ms(),
        )
        .map_err(|e| Status::unauthenticated(e.to_string()))
    }

    fn running(&self, alloc: u64) -> bool {
        let local = self.local.lock().unwrap_or_else(|p| p.into_inner());
        matches!(local.get(&alloc), Some(Local::Running | Local::Stopping))
    }
}

#[tonic::async_trait]
impl WorkerAgent for LogService {
    async fn read_logs(
        &self,
        request: Request<ReadLogsRequest>,
    ) -> Result<Response<ReadLogsResponse>, Status> {
        let req = request.into_inner();
        self.admit(req.alloc_id, &req.member, req.issued_at_ms, &req.signature)?;
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
        let running = self.running(req.alloc_id);
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

    async fn read_file(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<ReadFileResponse>, Status> {
        let req = request.into_inner();
        self.admit(req.alloc_id, &req.member, req.issued_at_ms, &req.signature)?;
        // Only once the job has ended: no process of it can then move a
        // file or a link while it is read, and what is read is final.
        if self.running(req.alloc_id) {
            return Err(Status::failed_precondition(format!(
                "allocation {} is still running: its files can be fetched once it ends",
                req.alloc_id
            )));
        }
        let dir = alloc_dir(&self.work_dir, req.alloc_id);
        if req.path.is_empty() {
            let files = tokio::task::spawn_blocking(move || crate::files::list(&dir))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::internal(format!("list the job's files: {e}")))?;
            return Ok(Response::new(ReadFileResponse {
                files: files
                    .into_iter()
                    .map(|(path, size)| coop_proto::api::FileEntry { path, size })
                    .collect(),
                ..Default::default()
            }));
        }
        crate::files::check_relative(&req.path).map_err(Status::invalid_argument)?;
        let max = u64::from(req.max_bytes).clamp(1, MAX_CHUNK);
        let (offset, path) = (req.offset, req.path.clone());
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, u64)> {
            let mut f = crate::files::open_beneath(&dir, &path)?;
            let size = f.metadata()?.len();
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = Vec::new();
            f.take(max).read_to_end(&mut buf)?;
            Ok((buf, size))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let (data, size) = read.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Status::not_found(format!(
                "no file {:?} in the job's work dir (coop fetch JOB lists them)",
                req.path
            )),
            _ => Status::invalid_argument(format!(
                "{:?} cannot be read as the job's file (a link, a directory or unreadable): {e}",
                req.path
            )),
        })?;
        Ok(Response::new(ReadFileResponse {
            next_offset: offset + data.len() as u64,
            data,
            size,
            files: Vec::new(),
        }))
    }
}
