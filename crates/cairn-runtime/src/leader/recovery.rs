//! Recovery: the checkpoint store as the state machine's instance source, replaying the log
//! after the checkpoint, and restarting the work the recovered state says is outstanding.

use super::*;

/// What recovery found in one partition.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    pub partition: u32,
    pub checkpoint_position: u64,
    pub replayed_records: u64,
    pub runnable: usize,
    pub activities: usize,
    pub timers: usize,
    pub torn_tail_bytes: u64,
}

impl Leader {
    /// Loads the last checkpoint and replays the log after it. Blocking (disk reads).
    pub(crate) fn recover(
        partition: u32,
        shared: Arc<Shared>,
        me: mpsc::UnboundedSender<Input>,
        rx: mpsc::UnboundedReceiver<Input>,
        inbox: mpsc::Receiver<Input>,
    ) -> Result<(Leader, RecoveryReport), EngineError> {
        let storage_err = |message: String| EngineError::Storage { partition, message };
        let store = shared
            .checkpoints
            .open(partition)
            .map_err(|e| storage_err(e.to_string()))?;
        let checkpoint = store
            .checkpoint_position()
            .map_err(|e| storage_err(e.to_string()))?;
        let globals = store
            .load_globals()
            .map_err(|e| storage_err(e.to_string()))?;
        let mut state = match &globals {
            Some(bytes) => PartitionState::recover(bytes)
                .map_err(|e| storage_err(format!("checkpoint globals are unreadable: {e}")))?,
            None => PartitionState::new(partition, shared.partition_count),
        };
        upgrade_older_format(partition, &*store, &mut state, checkpoint).map_err(storage_err)?;
        let tx = me.clone();
        let opened = shared
            .logs
            .open(
                partition,
                checkpoint + 1,
                Box::new(move |lsn| {
                    let _ = tx.send(Input::Durable(lsn));
                }),
            )
            .map_err(|e| storage_err(e.to_string()))?;
        let torn_tail_bytes = opened.torn_tail_bytes;
        let log = opened.log;
        let mut replayed = 0u64;
        {
            let source = StoreSource(&*store);
            let records = log
                .read_from(checkpoint + 1)
                .map_err(|e| storage_err(e.to_string()))?;
            for (lsn, bytes) in records {
                let record = LogRecord::decode(&bytes).map_err(|e| {
                    storage_err(format!(
                        "log record {lsn} cannot be decoded ({e}); it was written by another Cairn version or is damaged"
                    ))
                })?;
                state
                    .apply(lsn, &record, &source)
                    .map_err(|e| storage_err(e.to_string()))?;
                replayed += 1;
            }
        }
        let durable = log.next_position() - 1;
        let stats = shared.stats[partition as usize].clone();
        let g = state.globals();
        let report = RecoveryReport {
            partition,
            checkpoint_position: checkpoint,
            replayed_records: replayed,
            runnable: g.backlog.values().sum::<u64>() as usize,
            activities: g.activity_backlog.values().sum::<u64>() as usize,
            timers: g.timer_count as usize,
            torn_tail_bytes,
        };
        let overlay = Arc::new(super::overlay::OverlayStore::new(store.clone()));
        let last_checkpoint = shared.clock.now_millis();
        let timers = super::timers::TimerWheel::new(shared.config.timer_window);
        let leader = Leader {
            partition,
            shared,
            me,
            rx,
            inbox,
            state,
            store: overlay.clone(),
            overlay,
            writing: None,
            checkpoint_asked: Vec::new(),
            checkpoint_promised: Vec::new(),
            log: Some(Arc::new(log)),
            durable,
            held: VecDeque::new(),
            replies: HashMap::new(),
            next_request: 1,
            dispatch: Default::default(),
            activity_dispatch: Default::default(),
            cursors: HashMap::new(),
            remote_episodes: HashMap::new(),
            timers,
            waiters: HashMap::new(),
            sent_up_to: HashMap::new(),
            touched: HashMap::new(),
            tick: 0,
            records_since_checkpoint: replayed,
            last_checkpoint,
            failed: None,
            reads_in_flight: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            store_users: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            stats,
        };
        // Counts are known from the checkpoint and the replay: published before the engine
        // answers anything, so that stats read right after opening are whole.
        leader.publish_state_stats();
        Ok((leader, report))
    }

    /// Stops the log writer of a leader that will never run (another partition failed to open).
    pub(crate) fn abandon(mut self) {
        if let Some(log) = self.log.take() {
            let _ = close_log(log);
        }
    }

    /// Restarts the work the recovered state says is outstanding.
    pub(super) fn resume(&mut self) {
        let destinations = self.state.outbox_destinations();
        self.resume_backlog();
        self.fill_timers();
        for to in destinations {
            self.send_outbox(to);
        }
        // Counts are known from the checkpoint; an idle partition must not read as empty.
        self.publish_state_stats();
    }
}

/// The checkpoint store seen as the state machine's instance source.
pub(super) struct StoreSource<'a>(pub(super) &'a dyn CheckpointStore);

impl InstanceSource for StoreSource<'_> {
    fn load(&self, id: &str) -> Result<Option<InstanceState>, SourceError> {
        match self.0.get_instance(id) {
            Ok(Some(bytes)) => InstanceState::decode(&bytes).map(Some).map_err(|e| {
                SourceError(format!(
                    "instance '{id}' in the checkpoint store is unreadable: {e}"
                ))
            }),
            Ok(None) => Ok(None),
            Err(e) => Err(SourceError(e.to_string())),
        }
    }

    fn load_history(&self, id: &str) -> Result<Vec<HistoryEvent>, SourceError> {
        let rows = self
            .0
            .read_history(id)
            .map_err(|e| SourceError(e.to_string()))?;
        rows.iter()
            .map(|row| {
                cairn_core::partition::decode_history_event(row).map_err(|e| {
                    SourceError(format!(
                        "history of instance '{id}' in the checkpoint store is unreadable: {e}"
                    ))
                })
            })
            .collect()
    }

    fn load_activity(&self, id: u64) -> Result<Option<ActivityWorkItem>, SourceError> {
        self.filed(&cairn_core::work::activity_key(id), "queued activity", id)
    }

    fn activities_of(
        &self,
        instance_id: &str,
    ) -> Result<Vec<(u64, ActivityWorkItem)>, SourceError> {
        self.filed_under(
            &cairn_core::work::activity_instance_prefix(instance_id),
            |id| self.load_activity(id),
        )
    }

    fn load_timer(&self, id: u64) -> Result<Option<TimerEntry>, SourceError> {
        self.filed(&cairn_core::work::timer_key(id), "armed timer", id)
    }

    fn timers_of(&self, instance_id: &str) -> Result<Vec<(u64, TimerEntry)>, SourceError> {
        self.filed_under(
            &cairn_core::work::timer_instance_prefix(instance_id),
            |id| self.load_timer(id),
        )
    }
}

impl StoreSource<'_> {
    /// The pending work (`what`, number `id`) filed under `key` in the `work` table.
    fn filed<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        what: &str,
        id: u64,
    ) -> Result<Option<T>, SourceError> {
        let bytes = self
            .0
            .get_work(key)
            .map_err(|e| SourceError(e.to_string()))?;
        bytes
            .map(|b| {
                postcard::from_bytes(&b).map_err(|e| {
                    SourceError(format!(
                        "{what} {id} in the checkpoint store is unreadable: {e}"
                    ))
                })
            })
            .transpose()
    }

    /// The pending work whose ids are listed under `prefix`, each read with `load`.
    fn filed_under<T>(
        &self,
        prefix: &[u8],
        load: impl Fn(u64) -> Result<Option<T>, SourceError>,
    ) -> Result<Vec<(u64, T)>, SourceError> {
        let mut ids = Vec::new();
        self.0
            .scan_work(prefix, None, &mut |key, _| {
                ids.extend(cairn_core::work::id_of(key));
                true
            })
            .map_err(|e| SourceError(e.to_string()))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(item) = load(id)? {
                out.push((id, item));
            }
        }
        Ok(out)
    }
}

/// Brings a checkpoint written by an older format up to date, in one atomic checkpoint write
/// at the same position:
/// * format 2 (no index entries, no name counts): every instance is filed under its index
///   keys and counted by name, in one pass over the store;
/// * formats 2 and 3 (the runnable instances listed in the globals): those instances are filed
///   under their backlog keys and counted in the backlog;
/// * formats 2 to 4 (the queued activities in the globals): those are filed in the `work`
///   table (format 4 needs nothing else, so its next checkpoint does that);
///
/// and the globals are rewritten in today's format, so the upgrade happens once. A store has
/// instances but no index entries only if format 2 wrote it, since every put since carries
/// its keys.
fn upgrade_older_format(
    partition: u32,
    store: &dyn CheckpointStore,
    state: &mut PartitionState,
    position: u64,
) -> Result<(), String> {
    let Some(upgrade) = state.upgrade().cloned() else {
        return Ok(());
    };
    let mut indexed = false;
    store
        .scan_index_desc(b"", None, &mut |_, _| {
            indexed = true;
            false
        })
        .map_err(|e| e.to_string())?;
    let index_missing = !indexed && store.instance_count().map_err(|e| e.to_string())? > 0;
    let mut index_keys = Vec::new();
    let mut names = BTreeMap::new();
    let mut backlog = BTreeMap::new();
    let mut count_backlog = |s: &InstanceState| {
        if is_runnable(s) {
            *backlog.entry(s.name.clone()).or_insert(0) += 1;
        }
    };
    if index_missing || upgrade.count_names {
        each_stored_instance(store, |id, s| {
            if index_missing {
                index_keys.push((id.to_string(), cairn_core::index::keys(&s)));
                count_backlog(&s);
            }
            if s.entity.is_none() {
                *names.entry(s.name).or_insert(0) += 1;
            }
        })?;
    }
    if !index_missing {
        let source = StoreSource(store);
        for id in &upgrade.runnable {
            if let Some(s) = source.load(id).map_err(|e| e.to_string())? {
                index_keys.push((id.clone(), cairn_core::index::keys(&s)));
                count_backlog(&s);
            }
        }
    }
    state.finish_upgrade(upgrade.count_names.then_some(names), backlog);
    let count = index_keys.len();
    // The older globals held the queued activities: today's do not, so they are filed in the
    // same write.
    let (work_puts, work_deletes) = state.take_work().map_err(|e| e.to_string())?;
    let batch = CheckpointBatch {
        position,
        globals: state.globals().encode().map_err(|e| e.to_string())?,
        index_keys,
        work_puts,
        work_deletes,
        ..CheckpointBatch::default()
    };
    store.write_checkpoint(&batch).map_err(|e| e.to_string())?;
    tracing::info!(
        partition,
        "upgraded the checkpoint to format {}: {count} instances indexed",
        cairn_core::LOG_FORMAT_VERSION
    );
    Ok(())
}

/// Calls `f` with every instance of the store, decoded (for the one-time upgrades of a store
/// written by an older format); a row that does not decode is an error.
fn each_stored_instance(
    store: &dyn CheckpointStore,
    mut f: impl FnMut(&str, InstanceState),
) -> Result<(), String> {
    let mut failure = None;
    store
        .scan_instances(None, None, &mut |id, bytes| {
            match InstanceState::decode(bytes) {
                Ok(s) => f(id, s),
                Err(e) => {
                    failure = Some(format!("instance '{id}' in the store is unreadable: {e}"));
                    return false;
                }
            }
            true
        })
        .map_err(|e| e.to_string())?;
    failure.map_or(Ok(()), Err)
}
