//! Checks that decide whether a member's request may enter the log: the
//! signature against the member's key, and what can be known from the
//! state before anything is written. `apply` runs the same checks again.

use crate::error::{CoreError, Impossible, MAX_REQUEST_ID_LEN};
use crate::identity::{self, Auth, AuthError, MemberRequest, NodeReport, PublicKey};
use crate::ids::{JobId, MemberId, NodeId};
use crate::job::{EnvSalt, Job, JobSpec};

use super::ClusterState;

impl ClusterState {
    /// Checks a member's signed request against its registered key and the
    /// given time (the log's in `apply`; the receiving replica's before it).
    pub fn verify(
        &self,
        member: &MemberId,
        request_id: &str,
        auth: &Auth,
        request: &MemberRequest<'_>,
        now_ms: u64,
    ) -> Result<(), CoreError> {
        // Every member request has a request id: the dedup key it signs.
        if request_id.is_empty() || request_id.len() > MAX_REQUEST_ID_LEN {
            return Err(CoreError::BadRequestId);
        }
        identity::verify_request(
            self.member_key(member)?,
            &self.cluster_id,
            member,
            request_id,
            auth,
            request,
            now_ms,
        )?;
        Ok(())
    }

    /// Checks a member's read credential (see `identity::read_message`)
    /// against its registered key and the replica's clock.
    pub fn verify_read(
        &self,
        member: &MemberId,
        auth: &Auth,
        now_ms: u64,
    ) -> Result<(), CoreError> {
        identity::verify_read(
            self.member_key(member)?,
            &self.cluster_id,
            member,
            auth,
            now_ms,
        )?;
        Ok(())
    }

    /// Checks a node's signed report against the key its owner authorized
    /// (and that the owner is still a member) at the given time.
    pub fn verify_node_report(
        &self,
        node: &NodeId,
        incarnation: u64,
        auth: &Auth,
        report: &NodeReport<'_>,
        now_ms: u64,
    ) -> Result<(), CoreError> {
        identity::verify_node_report(
            self.node_key(node)?,
            &self.cluster_id,
            node,
            incarnation,
            auth,
            report,
            now_ms,
        )?;
        Ok(())
    }

    /// Checks a node's session credential (heartbeats, assignments).
    pub fn verify_node_session(
        &self,
        node: &NodeId,
        incarnation: u64,
        auth: &Auth,
        now_ms: u64,
    ) -> Result<(), CoreError> {
        identity::verify_node_session(
            self.node_key(node)?,
            &self.cluster_id,
            node,
            incarnation,
            auth,
            now_ms,
        )?;
        Ok(())
    }

    /// The key a node was authorized with, while its owner is a member.
    fn node_key(&self, node: &NodeId) -> Result<&PublicKey, AuthError> {
        self.node_grants
            .get(node)
            .filter(|g| self.members.contains_key(&g.owner))
            .map(|g| &g.key)
            .ok_or_else(|| AuthError::UnknownNode { node: node.clone() })
    }

    /// Checks a member's authorization of a node: signed by the member, the
    /// node is not another member's, and no later authorization exists.
    pub fn check_add_node(
        &self,
        node: &NodeId,
        member: &MemberId,
        key: &PublicKey,
        request_id: &str,
        auth: &Auth,
        now_ms: u64,
    ) -> Result<(), CoreError> {
        crate::ids::validate_name("node", node.as_str())?;
        self.verify(
            member,
            request_id,
            auth,
            &MemberRequest::AddNode { node, key },
            now_ms,
        )?;
        if let Some(grant) = self.node_grants.get(node) {
            if &grant.owner != member {
                return Err(CoreError::NodeOwned {
                    node: node.clone(),
                    owner: grant.owner.clone(),
                });
            }
            // A replay of an older grant must not bring back a replaced key.
            if auth.issued_at_ms <= grant.issued_at_ms && grant.key != *key {
                return Err(CoreError::GrantOutdated { node: node.clone() });
            }
        }
        Ok(())
    }

    /// Checks a member's request to add a replica: signed, well-formed.
    pub fn check_add_replica(
        &self,
        id: u64,
        addr: &str,
        member: &MemberId,
        request_id: &str,
        auth: &Auth,
        now_ms: u64,
    ) -> Result<(), CoreError> {
        self.verify(
            member,
            request_id,
            auth,
            &MemberRequest::AddReplica { id, addr },
            now_ms,
        )?;
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if id == 0 || !port_ok || addr.len() > 253 {
            return Err(CoreError::BadReplica {
                id,
                addr: addr.to_string(),
            });
        }
        Ok(())
    }

    /// Checks a member's request to remove a replica: signed.
    pub fn check_remove_replica(
        &self,
        id: u64,
        member: &MemberId,
        request_id: &str,
        auth: &Auth,
        now_ms: u64,
    ) -> Result<(), CoreError> {
        self.verify(
            member,
            request_id,
            auth,
            &MemberRequest::RemoveReplica { id },
            now_ms,
        )
    }

    /// A member's registered key; only members have one.
    fn member_key(&self, member: &MemberId) -> Result<&PublicKey, AuthError> {
        self.members
            .get(member)
            .map(|m| &m.public_key)
            .ok_or_else(|| AuthError::UnknownMember {
                member: member.clone(),
            })
    }

    /// Checks a submission against the state without applying it, so a
    /// server can reject bad input before it reaches the log. `Ok(Some(job))`
    /// is a retry of a request already made: nothing new would be created.
    /// `spec` holds env values when `env_salt` is given (the receiving
    /// replica and the live log), else their commitments (the public
    /// record); the signature and every check in the log cover only what
    /// the public record shows, so a replay of it agrees.
    pub fn check_submit(
        &self,
        request_id: &str,
        member: &MemberId,
        spec: &JobSpec,
        env_salt: Option<&EnvSalt>,
        auth: &Auth,
        now_ms: u64,
    ) -> Result<Option<JobId>, CoreError> {
        let public = match env_salt {
            Some(salt) => std::borrow::Cow::Owned(spec.committed(salt)),
            None => std::borrow::Cow::Borrowed(spec),
        };
        self.verify(
            member,
            request_id,
            auth,
            &MemberRequest::Submit { spec: &public },
            now_ms,
        )?;
        if let Some(job) = self.request(member, request_id) {
            // A retry must be the same request; a reused id with another
            // spec is a client bug that would otherwise be silently merged.
            return match self.jobs.get(&job) {
                Some(j) if j.public_spec() != *public => Err(CoreError::RequestIdReused {
                    request_id: request_id.to_string(),
                    job,
                }),
                _ => Ok(Some(job)),
            };
        }
        public.validate()?;
        let want = spec.resources;
        let version = self.policy.version;
        if let Some(max) = self.policy.max_job_gpus.filter(|max| want.gpus > *max) {
            return Err(Impossible::MaxJobGpus { max, version }.into());
        }
        if let (Some(max), Some(asked)) = (self.policy.max_job_runtime_secs, spec.timeout_secs) {
            if asked > max {
                return Err(Impossible::MaxRuntime { max, version }.into());
            }
        }
        // Impossible asks are refused up front rather than queued forever.
        // With no node registered yet there is nothing to compare against,
        // so the job waits for the pool to form.
        if self.nodes.is_empty() {
            return Ok(None);
        }
        match crate::node::never_fits(spec, self.nodes.values()) {
            Some(why) => Err(why.into()),
            None => Ok(None),
        }
    }

    /// Checks a cancel without applying it: the job exists, is the member's
    /// own, and has not ended. A refusal costs no log entry.
    pub fn check_cancel(
        &self,
        job: JobId,
        member: &MemberId,
        request_id: &str,
        auth: &Auth,
        now_ms: u64,
    ) -> Result<(), CoreError> {
        self.verify(
            member,
            request_id,
            auth,
            &MemberRequest::Cancel { job },
            now_ms,
        )?;
        let j = self.own_job(job, member)?;
        if j.state().is_terminal() {
            return Err(CoreError::AlreadyEnded {
                job,
                state: j.state(),
            });
        }
        Ok(())
    }

    /// Job `job`, if it is `member`'s.
    fn own_job(&self, job: JobId, member: &MemberId) -> Result<&Job, CoreError> {
        let j = self.jobs.get(&job).ok_or(CoreError::UnknownJob(job))?;
        if &j.member != member {
            return Err(CoreError::NotOwner {
                job,
                owner: j.member.clone(),
            });
        }
        Ok(j)
    }

    /// Checks an array cancel without applying it: `job` is one of the
    /// member's own arrays. Returns the array's unfinished jobs (none is
    /// refused: there is nothing to cancel).
    pub fn check_cancel_array(
        &self,
        job: JobId,
        member: &MemberId,
        request_id: &str,
        auth: &Auth,
        now_ms: u64,
    ) -> Result<Vec<JobId>, CoreError> {
        self.verify(
            member,
            request_id,
            auth,
            &MemberRequest::CancelArray { job },
            now_ms,
        )?;
        let j = self.own_job(job, member)?;
        if j.array.is_none() {
            return Err(CoreError::NotAnArray(job));
        }
        let open: Vec<JobId> = self
            .array_jobs(j)
            .filter(|j| !j.state().is_terminal())
            .map(|j| j.id)
            .collect();
        if open.is_empty() {
            return Err(CoreError::AlreadyEnded {
                job,
                state: j.state(),
            });
        }
        Ok(open)
    }
}
