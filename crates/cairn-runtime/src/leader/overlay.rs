//! The checkpoint store as the leader reads it while a checkpoint is being written in the
//! background: the batch in flight overlaid on the store, so that a read never misses what the
//! state machine already considers persisted (it marked those instances clean and moved their
//! history to "persisted" when it took the batch).

use super::*;
use cairn_storage::seam::StoreReads;
use cairn_storage::store::StoreError;
use parking_lot::Mutex;
use std::collections::BTreeMap;

/// The store plus the checkpoint batch being written to it, if any.
pub(crate) struct OverlayStore {
    base: Arc<dyn CheckpointStore>,
    in_flight: Mutex<Option<Arc<Overlay>>>,
}

/// A batch in flight, as the state machine took it. Point reads (an instance, its history, a
/// work item) answer from the take itself, encoding only what they return: the partition's
/// task reads while a checkpoint is written (an instance started, an activity completed) and
/// must never wait for the batch to be encoded. Scans (queries, and the partition's own scans
/// of its backlog index) use the changed instances' states and index entries in key order
/// ([`Self::sorted`]), which the writer thread builds first thing, before it encodes the rest
/// (history rows, deletions: a purge's took 15–25 ms, a stall of every step when it was on the
/// partition's task).
pub(crate) struct Overlay {
    take: CheckpointTake,
    /// The batch's work keys: the index of the put in the take, or None if the batch deletes
    /// the key (deletes come after puts). Built by the writer thread first thing, or by an
    /// earlier read (it is pending work only: small next to the batch).
    work: std::sync::OnceLock<BTreeMap<Vec<u8>, Option<usize>>>,
    sorted: std::sync::OnceLock<Result<Sorted, String>>,
}

/// The instances a batch in flight writes, for scans: encoded, in id order, and their index
/// entries. The batch the writer writes copies these encodings.
pub(crate) struct Sorted {
    instances: Vec<EncodedInstance>,
    index: BTreeMap<Vec<u8>, String>,
}

impl Overlay {
    pub fn new(take: CheckpointTake) -> Overlay {
        Overlay {
            take,
            work: std::sync::OnceLock::new(),
            sorted: std::sync::OnceLock::new(),
        }
    }

    /// The batch encoded for the store (by the writer thread, which frees it once written), or
    /// why it could not be: then nothing of it may be written, and the partition stops when
    /// its writer reports. Its instances are copied from the encodings scans read
    /// ([`Self::sorted`]), not encoded again.
    pub fn encode(&self) -> Result<CheckpointBatch, String> {
        let failed = |e: &dyn std::fmt::Display| {
            format!("the checkpoint could not be encoded (nothing of it was written): {e}")
        };
        let sorted = self.sorted().map_err(|e| failed(&e))?;
        self.take
            .encode_with(sorted.instances.clone())
            .map(batch_of)
            .map_err(|e| failed(&e))
    }

    /// Builds what reads need before the writer encodes the batch, if no read has: the work
    /// keys, then the changed instances in key order.
    pub fn prepare_reads(&self) {
        self.work();
        let _ = self.sorted();
    }

    /// The changed instances in key order (built by the first caller; others wait for it).
    fn sorted(&self) -> Result<&Sorted, StoreError> {
        // Kept as its message: every scan that waited for it reports the same error.
        self.sorted
            .get_or_init(|| {
                let instances = self.take.encode_instances().map_err(unencodable)?;
                let index = instances
                    .iter()
                    .flat_map(|i| i.index_keys.iter().map(|k| (k.clone(), i.id.clone())))
                    .collect();
                Ok(Sorted { instances, index })
            })
            .as_ref()
            .map_err(|e| StoreError::Io(e.clone()))
    }

    fn work(&self) -> &BTreeMap<Vec<u8>, Option<usize>> {
        self.work.get_or_init(|| {
            let mut work: BTreeMap<Vec<u8>, Option<usize>> = (self.take.work_puts.iter())
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), Some(i)))
                .collect();
            work.extend(self.take.work_deletes.iter().map(|k| (k.clone(), None)));
            work
        })
    }
}

/// The state machine's checkpoint data as the store takes it.
pub(crate) fn batch_of(data: CheckpointData) -> CheckpointBatch {
    CheckpointBatch {
        position: data.position,
        globals: data.globals,
        instance_puts: data.puts,
        instance_deletes: data.deletes,
        history_truncates: data.history_resets,
        history_appends: data.history_appends,
        index_keys: data.index_keys,
        work_puts: data.work_puts,
        work_deletes: data.work_deletes,
    }
}

/// Why an instance of the batch in flight could not be encoded for a read.
fn unencodable(e: cairn_core::EncodeError) -> String {
    format!("the checkpoint being written holds something that cannot be encoded: {e}")
}

impl OverlayStore {
    pub fn new(base: Arc<dyn CheckpointStore>) -> OverlayStore {
        OverlayStore {
            base,
            in_flight: Mutex::new(None),
        }
    }

    pub fn base(&self) -> Arc<dyn CheckpointStore> {
        self.base.clone()
    }

    pub fn set(&self, overlay: Option<Arc<Overlay>>) {
        *self.in_flight.lock() = overlay;
    }

    /// Drops the batch from reads, returning it.
    pub fn take(&self) -> Option<Arc<Overlay>> {
        self.in_flight.lock().take()
    }

    fn current(&self) -> Option<Arc<Overlay>> {
        self.in_flight.lock().clone()
    }
}

/// Reads of `base` with the batch `overlay` (if any) laid over it: what `base` will hold once
/// the batch is written. The batch is idempotent over the store with or without it, so a
/// snapshot of the store taken while the batch is being written reads the same either way.
struct Layered<'a, B: StoreReads + ?Sized> {
    base: &'a B,
    overlay: Option<&'a Overlay>,
}

impl<'a, B: StoreReads + ?Sized> Layered<'a, B> {
    /// The batch in flight, with its changed instances in key order (scans wait for them).
    fn sorted(&self) -> Result<Option<(&'a Overlay, &'a Sorted)>, StoreError> {
        let Some(o) = self.overlay else {
            return Ok(None);
        };
        Ok(Some((o, o.sorted()?)))
    }
}

impl<B: StoreReads + ?Sized> StoreReads for Layered<'_, B> {
    fn checkpoint_position(&self) -> Result<u64, StoreError> {
        match self.overlay {
            Some(o) => Ok(o.take.position),
            None => self.base.checkpoint_position(),
        }
    }
    fn load_globals(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay {
            Some(o) => Ok(Some(o.take.globals.clone())),
            None => self.base.load_globals(),
        }
    }
    fn get_instance(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(o) = self.overlay {
            if let Some(c) = o.take.changed(id) {
                return c
                    .state
                    .encode()
                    .map(Some)
                    .map_err(|e| StoreError::Io(unencodable(e)));
            }
            if o.take.deletes(id) {
                return Ok(None);
            }
        }
        self.base.get_instance(id)
    }
    fn read_history(&self, id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let Some(o) = self.overlay else {
            return self.base.read_history(id);
        };
        if o.take.deletes(id) {
            return Ok(Vec::new());
        }
        let Some(c) = o.take.changed(id) else {
            return self.base.read_history(id);
        };
        // Rows by sequence: the store's (unless the batch drops them), then the batch's.
        let mut rows: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        if !c.reset {
            for (seq, row) in self.base.read_history(id)?.into_iter().enumerate() {
                rows.insert(seq as u32, row);
            }
        }
        rows.extend(
            c.history_rows()
                .map_err(|e| StoreError::Io(unencodable(e)))?,
        );
        Ok(rows.into_values().collect())
    }
    fn scan_instances(
        &self,
        start_after: Option<&str>,
        prefix: Option<&str>,
        f: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let Some((o, sorted)) = self.sorted()? else {
            return self.base.scan_instances(start_after, prefix, f);
        };
        let pre = prefix.unwrap_or("");
        let in_range = |id: &str| id.starts_with(pre) && start_after.is_none_or(|a| id > a);
        // In id order, and none of them deleted.
        let puts = sorted
            .instances
            .iter()
            .filter(|i| in_range(&i.id))
            .map(|i| (i.id.as_str(), i.state.as_slice()));
        merge_into_scan(
            puts,
            Order::Ascending,
            |id: &str, _: &[u8]| o.take.touches(id),
            |g| self.base.scan_instances(start_after, prefix, g),
            f,
        )
    }
    fn instance_count(&self) -> Result<u64, StoreError> {
        // Approximate while a batch is in flight (its puts and deletes are not counted).
        self.base.instance_count()
    }
    fn scan_index_desc(
        &self,
        prefix: &[u8],
        below: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &str) -> bool,
    ) -> Result<(), StoreError> {
        let Some((o, sorted)) = self.sorted()? else {
            return self.base.scan_index_desc(prefix, below, f);
        };
        let entries = sorted
            .index
            .range(cairn_storage::store::index_range(prefix, below))
            .rev()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, id)| (k.as_slice(), id.as_str()));
        merge_into_scan(
            entries,
            Order::Descending,
            |_: &[u8], id: &str| o.take.touches(id),
            |g| self.base.scan_index_desc(prefix, below, g),
            f,
        )
    }
    fn get_work(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay.and_then(|o| Some((o, *o.work().get(key)?))) {
            Some((o, Some(i))) => Ok(Some(o.take.work_puts[i].1.clone())),
            Some((_, None)) => Ok(None),
            None => self.base.get_work(key),
        }
    }
    fn scan_work(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let Some(o) = self.overlay else {
            return self.base.scan_work(prefix, after, f);
        };
        let work = o.work();
        let puts = work
            .range::<[u8], _>((
                after.map_or(std::ops::Bound::Included(prefix), std::ops::Bound::Excluded),
                std::ops::Bound::Unbounded,
            ))
            .filter(|(k, _)| after.is_none_or(|a| k.as_slice() > a))
            .skip_while(|(k, _)| k.as_slice() < prefix)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, put)| Some((k.as_slice(), o.take.work_puts[(*put)?].1.as_slice())));
        merge_into_scan(
            puts,
            Order::Ascending,
            |k: &[u8], _: &[u8]| work.contains_key(k),
            |g| self.base.scan_work(prefix, after, g),
            f,
        )
    }
}

/// The order a store scan runs in.
#[derive(Clone, Copy)]
enum Order {
    Ascending,
    Descending,
}

/// Runs `scan` (a store scan in `order`) with the batch's own entries `mine` (in the same
/// order) merged in where they fall, and the store's entries the batch replaces or drops
/// (`superseded`) left out: what the scan will return once the batch is written. Stops when
/// `f` returns false.
fn merge_into_scan<'m, K: Ord + ?Sized + 'm, V: ?Sized + 'm>(
    mine: impl Iterator<Item = (&'m K, &'m V)>,
    order: Order,
    superseded: impl Fn(&K, &V) -> bool,
    scan: impl FnOnce(&mut dyn FnMut(&K, &V) -> bool) -> Result<(), StoreError>,
    f: &mut dyn FnMut(&K, &V) -> bool,
) -> Result<(), StoreError> {
    let mut mine = mine.peekable();
    let mut stopped = false;
    scan(&mut |k, v| {
        while let Some(&(mk, mv)) = mine.peek() {
            let goes_first = match order {
                Order::Ascending => mk < k,
                Order::Descending => mk > k,
            };
            if !goes_first {
                break;
            }
            if !f(mk, mv) {
                stopped = true;
                return false;
            }
            mine.next();
        }
        if superseded(k, v) {
            return true;
        }
        let keep = f(k, v);
        stopped = !keep;
        keep
    })?;
    if !stopped {
        for (mk, mv) in mine {
            if !f(mk, mv) {
                break;
            }
        }
    }
    Ok(())
}

cairn_storage::forward_store_reads!(OverlayStore, |s| &Layered {
    base: &*s.base,
    overlay: s.current().as_deref(),
});
cairn_storage::forward_store_reads!(OverlaySnapshot, |s| &Layered {
    base: &*s.base,
    overlay: s.overlay.as_deref(),
});

/// A snapshot of the store with the batch that was in flight when it was taken laid over it.
struct OverlaySnapshot {
    base: Box<dyn StoreReads>,
    overlay: Option<Arc<Overlay>>,
}

impl CheckpointStore for OverlayStore {
    fn snapshot(&self) -> Result<Box<dyn StoreReads>, StoreError> {
        // The batch first: it is only dropped after it is in the store, so a store snapshot
        // taken after it either has the batch or gets it from the overlay.
        let overlay = self.current();
        Ok(Box::new(OverlaySnapshot {
            base: self.base.snapshot()?,
            overlay,
        }))
    }
    fn write_checkpoint(&self, batch: &CheckpointBatch) -> Result<(), StoreError> {
        self.base.write_checkpoint(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_storage::seam::MemoryCheckpointStore;

    fn all(
        store: &dyn StoreReads,
        after: Option<&str>,
        prefix: Option<&str>,
    ) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        store
            .scan_instances(after, prefix, &mut |id, v| {
                out.push((id.to_string(), v.to_vec()));
                true
            })
            .unwrap();
        out
    }

    fn index(
        store: &dyn StoreReads,
        prefix: &[u8],
        below: Option<&[u8]>,
    ) -> Vec<(Vec<u8>, String)> {
        let mut out = Vec::new();
        store
            .scan_index_desc(prefix, below, &mut |k, id| {
                out.push((k.to_vec(), id.to_string()));
                true
            })
            .unwrap();
        out
    }

    /// An orchestration instance `id`, created at `created`, with `history_len` events.
    fn state(id: &str, created: Millis, status: RuntimeStatus, history_len: u32) -> InstanceState {
        InstanceState {
            instance_id: id.to_string(),
            name: format!("name-{}", &id[..1]),
            version: None,
            execution_id: format!("{id}-{created}"),
            status,
            input: Some(format!("input of {id} at {created}")),
            output: None,
            failure: None,
            custom_status: None,
            created_at: created,
            last_updated_at: created,
            completed_at: None,
            scheduled_start: None,
            tags: BTreeMap::new(),
            parent: None,
            pending: Vec::new(),
            history_len,
            children: BTreeMap::new(),
            not_before: None,
            entity: None,
            held_locks: BTreeMap::new(),
        }
    }

    fn event(n: u32) -> HistoryEvent {
        HistoryEvent::new(
            n as Millis,
            EventKind::ExecutionSuspended {
                reason: Some(format!("event {n}")),
            },
        )
    }

    /// `id` changed as the batch writes it: `events` new events from `first_seq`.
    fn changed(id: &str, created: Millis, first_seq: u32, events: u32, reset: bool) -> Changed {
        Changed {
            state: state(id, created, RuntimeStatus::Running, first_seq + events),
            events: (0..events).map(|i| event(first_seq + i + 100)).collect(),
            first_seq,
            reset,
        }
    }

    /// What reads see through the overlay is what they will see once the batch is written:
    /// point reads answered from the take as the state machine left it, scans from the batch
    /// encoded.
    #[test]
    fn the_overlay_reads_as_the_store_will_after_the_batch() {
        let base = MemoryCheckpointStore::new();
        let ids = ["a", "b", "b-1", "b-2", "c", "d", "e"];
        let old: Vec<InstanceState> = (ids.iter().enumerate())
            .map(|(i, id)| state(id, 10 + i as Millis, RuntimeStatus::Completed, 3))
            .collect();
        base.write_checkpoint(&CheckpointBatch {
            position: 10,
            globals: b"g1".to_vec(),
            instance_puts: old
                .iter()
                .map(|s| (s.instance_id.clone(), s.encode().unwrap()))
                .collect(),
            history_appends: ids
                .iter()
                .flat_map(|id| {
                    (0..3u32).map(move |s| {
                        (
                            id.to_string(),
                            s,
                            cairn_core::encode("an event", &event(s)).unwrap(),
                        )
                    })
                })
                .collect(),
            index_keys: old
                .iter()
                .map(|s| (s.instance_id.clone(), cairn_core::index::keys(s)))
                .collect(),
            work_puts: ["wa1", "wa3", "wb1", "wb2", "wc1"]
                .iter()
                .map(|k| (k.as_bytes().to_vec(), format!("old {k}").into_bytes()))
                .collect(),
            ..CheckpointBatch::default()
        })
        .unwrap();
        let take = || {
            CheckpointTake::from_parts(
                20,
                b"g2".to_vec(),
                vec![
                    // More history on what the store has; a restart (its rows replaced); new
                    // instances, one among existing ids; one purged and created again.
                    changed("b-1", 11, 3, 2, false),
                    changed("b", 40, 0, 1, true),
                    changed("b-15", 41, 0, 2, false),
                    changed("aa", 42, 0, 1, false),
                    changed("z", 43, 0, 3, false),
                    changed("d", 44, 0, 1, true),
                ],
                vec!["c".into(), "d".into(), "e".into(), "never".into()],
                ["wa2", "wa3", "wb0", "wd1", "wb9"]
                    .iter()
                    .map(|k| (k.as_bytes().to_vec(), format!("new {k}").into_bytes()))
                    .collect(),
                ["wa1", "wb9", "wc1", "wz"]
                    .iter()
                    .map(|k| k.as_bytes().to_vec())
                    .collect(),
            )
        };
        let after = base.clone_contents();
        after
            .write_checkpoint(&batch_of(take().encode().unwrap()))
            .unwrap();
        let overlay = OverlayStore::new(Arc::new(base));
        overlay.set(Some(Arc::new(Overlay::new(take()))));
        // Point reads first: they answer before anything encoded the batch.
        for id in [
            "a", "aa", "b", "b-1", "b-15", "b-2", "c", "d", "e", "z", "never", "missing",
        ] {
            assert_eq!(
                overlay.get_instance(id).unwrap(),
                after.get_instance(id).unwrap(),
                "{id}"
            );
            assert_eq!(
                overlay.read_history(id).unwrap(),
                after.read_history(id).unwrap(),
                "{id}"
            );
        }
        for key in ["wa1", "wa2", "wa3", "wb9", "wc1", "wd1", "wz"] {
            assert_eq!(
                overlay.get_work(key.as_bytes()).unwrap(),
                after.get_work(key.as_bytes()).unwrap(),
                "work {key}"
            );
        }
        assert!(
            overlay.current().unwrap().sorted.get().is_none(),
            "a point read waited for the batch to be sorted"
        );
        assert_eq!(overlay.checkpoint_position().unwrap(), 20);
        assert_eq!(overlay.load_globals().unwrap(), Some(b"g2".to_vec()));
        for (start, prefix) in [
            (None, None),
            (None, Some("b")),
            (None, Some("b-1")),
            (Some("a"), None),
            (Some("b-1"), Some("b")),
            (Some("b-15"), None),
            (Some("y"), None),
            (None, Some("zz")),
        ] {
            assert_eq!(
                all(&overlay, start, prefix),
                all(&after, start, prefix),
                "scan after {start:?} prefix {prefix:?}"
            );
        }
        // Every index range the store will hold: under each key's first bytes, below it.
        let keys = index(&after, b"", None);
        assert!(keys.len() > 20, "{} index entries", keys.len());
        assert_eq!(index(&overlay, b"", None), keys);
        for (key, _) in &keys {
            for cut in [1, 2, key.len() / 2, key.len()] {
                let prefix = &key[..cut.min(key.len())];
                for below in [None, Some(key.as_slice())] {
                    assert_eq!(
                        index(&overlay, prefix, below),
                        index(&after, prefix, below),
                        "index below {below:?} under {prefix:?}"
                    );
                }
            }
        }
        for (prefix, after_key) in [
            (&b"w"[..], None),
            (b"wa", None),
            (b"wb", None),
            (b"wa", Some(&b"wa1"[..])),
            (b"wa", Some(b"wa2")),
            (b"wb", Some(b"wa9")),
            (b"wc", None),
            (b"w", Some(b"wb0")),
        ] {
            let work = |store: &dyn StoreReads| {
                let mut out = Vec::new();
                store
                    .scan_work(prefix, after_key, &mut |k, v| {
                        out.push((k.to_vec(), v.to_vec()));
                        true
                    })
                    .unwrap();
                out
            };
            assert_eq!(
                work(&overlay),
                work(&after),
                "work under {prefix:?} after {after_key:?}"
            );
        }
        // The batch the writer writes, made of the encodings the scans read, is the take's
        // own encoding.
        let batch = overlay.current().unwrap().encode().unwrap();
        assert_eq!(batch, batch_of(take().encode().unwrap()));
        // A snapshot taken while the batch is in flight reads the same after the batch is
        // written and the overlay dropped, and after later checkpoints.
        let snapshot = overlay.snapshot().unwrap();
        overlay.base().write_checkpoint(&batch).unwrap();
        overlay.set(None);
        let all_ids = ["a", "aa", "b", "b-1", "b-15", "b-2", "c", "d", "e", "z"];
        overlay
            .base()
            .write_checkpoint(&CheckpointBatch {
                position: 30,
                instance_deletes: ids.iter().map(|id| id.to_string()).collect(),
                history_truncates: ids.iter().map(|id| id.to_string()).collect(),
                ..CheckpointBatch::default()
            })
            .unwrap();
        for id in all_ids {
            assert_eq!(
                snapshot.get_instance(id).unwrap(),
                after.get_instance(id).unwrap(),
                "{id}"
            );
            assert_eq!(
                snapshot.read_history(id).unwrap(),
                after.read_history(id).unwrap(),
                "{id}"
            );
        }
        assert_eq!(all(&*snapshot, None, None), all(&after, None, None));
        // An early stop stops (aa, b-15 and z are left).
        let mut seen = 0;
        overlay
            .scan_instances(None, None, &mut |_, _| {
                seen += 1;
                seen < 3
            })
            .unwrap();
        assert_eq!(seen, 3);
    }
}
