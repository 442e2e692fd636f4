//! Reads: instance status, history, queries and scans, answered from the in-memory state
//! overlaid on the checkpoint store.

use super::*;

impl Leader {
    /// A status snapshot of an instance as the state machine sees it now.
    pub(super) fn snapshot(&mut self, id: &str, with_history: bool) -> Option<InstanceStatus> {
        let store = self.store.clone();
        let inst = self.state.get(id, &StoreSource(&*store)).ok()??;
        let mut status = InstanceStatus::from_state(&inst.state);
        if with_history {
            status.history = read_history(&*store, id, inst.persisted_len(), inst.tail.clone());
        }
        Some(status)
    }

    pub(super) fn read(&mut self, request: ReadRequest) -> Result<ReadResponse, EngineError> {
        match request {
            ReadRequest::Status {
                instance_id,
                with_history,
            } => {
                let found = self.snapshot(&instance_id, with_history);
                self.tick += 1;
                if found.is_some() {
                    self.touched.insert(instance_id, self.tick);
                }
                Ok(ReadResponse::Status(found.map(Box::new)))
            }
            ReadRequest::Query {
                filter,
                after,
                limit,
            } => self.query(&filter, after.as_deref(), limit),
            ReadRequest::Entities {
                prefix,
                after,
                limit,
                include_state,
            } => {
                let page = self.scan(Some(&prefix), after.as_deref(), limit, |s| {
                    EntityStatus::from_state(s).map(|mut e| {
                        if !include_state {
                            e.state = None;
                        }
                        e
                    })
                })?;
                Ok(ReadResponse::Entities(
                    page.into_iter().map(|(_, e)| e).collect(),
                ))
            }
            ReadRequest::Entity { entity_id } => {
                let store = self.store.clone();
                let partition = self.partition;
                let inst = self
                    .state
                    .get(&entity_id, &StoreSource(&*store))
                    .map_err(|e| EngineError::Storage {
                        partition,
                        message: e.to_string(),
                    })?;
                Ok(ReadResponse::Entity(
                    inst.and_then(|i| EntityStatus::from_state(&i.state)),
                ))
            }
        }
    }

    pub(super) fn query(
        &mut self,
        filter: &QueryFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ReadResponse, EngineError> {
        let page = self.scan(filter.instance_id_prefix.as_deref(), after, limit, |s| {
            filter.matches(s).then(|| InstanceStatus::from_state(s))
        })?;
        Ok(ReadResponse::Page(
            page.into_iter().map(|(_, s)| s).collect(),
        ))
    }

    /// Instances (store overlaid with memory) with ids after `after` and starting with
    /// `prefix`, that `select` keeps, ordered by id; at most `limit`.
    pub(super) fn scan<T>(
        &self,
        prefix: Option<&str>,
        after: Option<&str>,
        limit: usize,
        select: impl Fn(&InstanceState) -> Option<T>,
    ) -> Result<Vec<(String, T)>, EngineError> {
        let mut found: Vec<(String, T)> = Vec::new();
        let state = &self.state;
        let mut scan_error = None;
        let mut visit = |id: &str, bytes: &[u8]| -> bool {
            if state.is_resident(id) {
                return true; // memory has the current version
            }
            match InstanceState::decode(bytes) {
                Ok(s) => {
                    if let Some(t) = select(&s) {
                        found.push((id.to_string(), t));
                    }
                }
                Err(e) => {
                    scan_error = Some(format!("instance '{id}' in the store is unreadable: {e}"));
                    return false;
                }
            }
            found.len() < limit
        };
        self.store
            .scan_instances(after, prefix, &mut visit)
            .map_err(|e| self.storage_error(e.to_string()))?;
        if let Some(e) = scan_error {
            return Err(self.storage_error(e));
        }
        for id in self.state.loaded_ids() {
            if after.is_some_and(|a| id.as_str() <= a) || prefix.is_some_and(|p| !id.starts_with(p))
            {
                continue;
            }
            if let Some(t) = self.state.loaded(id).and_then(|inst| select(&inst.state)) {
                found.push((id.clone(), t));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.truncate(limit);
        Ok(found)
    }
}
