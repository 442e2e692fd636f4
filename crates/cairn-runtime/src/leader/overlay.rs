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

/// A batch in flight. Its index for reads is built on first use, normally by the writer thread
/// before it writes: building it took milliseconds of the partition's task per checkpoint.
pub(crate) struct Overlay {
    pub batch: Arc<CheckpointBatch>,
    indexed: std::sync::OnceLock<Indexed>,
}

/// A batch in flight, indexed for reads.
pub(crate) struct Indexed {
    batch: Arc<CheckpointBatch>,
    puts: BTreeMap<String, usize>,
    deletes: HashSet<String>,
    truncated: HashSet<String>,
    appends: BTreeMap<(String, u32), usize>,
    /// The batch's index entries (of instances it puts and does not delete)...
    index: BTreeMap<Vec<u8>, String>,
    /// ...and the instances whose entries in the store it replaces or drops.
    reindexed: HashSet<String>,
    /// The batch's work keys: the index of the put, or None if the batch deletes the key
    /// (deletes come after puts).
    work: BTreeMap<Vec<u8>, Option<usize>>,
}

impl Overlay {
    pub fn new(batch: Arc<CheckpointBatch>) -> Overlay {
        Overlay {
            batch,
            indexed: std::sync::OnceLock::new(),
        }
    }

    /// The batch indexed for reads (built by the first caller; others wait for it).
    pub fn indexed(&self) -> &Indexed {
        self.indexed
            .get_or_init(|| Indexed::new(self.batch.clone()))
    }
}

impl Indexed {
    fn new(batch: Arc<CheckpointBatch>) -> Indexed {
        let puts = batch
            .instance_puts
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (id.clone(), i))
            .collect();
        let appends = batch
            .history_appends
            .iter()
            .enumerate()
            .map(|(i, (id, seq, _))| ((id.clone(), *seq), i))
            .collect();
        let deletes: HashSet<String> = batch.instance_deletes.iter().cloned().collect();
        let index = batch
            .index_keys
            .iter()
            .filter(|(id, _)| !deletes.contains(id))
            .flat_map(|(id, keys)| keys.iter().map(move |k| (k.clone(), id.clone())))
            .collect();
        let reindexed = batch
            .index_keys
            .iter()
            .map(|(id, _)| id.clone())
            .chain(deletes.iter().cloned())
            .collect();
        let mut work: BTreeMap<Vec<u8>, Option<usize>> = batch
            .work_puts
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), Some(i)))
            .collect();
        work.extend(batch.work_deletes.iter().map(|k| (k.clone(), None)));
        Indexed {
            index,
            reindexed,
            work,
            deletes,
            truncated: batch.history_truncates.iter().cloned().collect(),
            puts,
            appends,
            batch,
        }
    }
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
    overlay: Option<&'a Indexed>,
}

impl<B: StoreReads + ?Sized> StoreReads for Layered<'_, B> {
    fn checkpoint_position(&self) -> Result<u64, StoreError> {
        match self.overlay {
            Some(o) => Ok(o.batch.position),
            None => self.base.checkpoint_position(),
        }
    }
    fn load_globals(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay {
            Some(o) => Ok(Some(o.batch.globals.clone())),
            None => self.base.load_globals(),
        }
    }
    fn get_instance(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(o) = self.overlay {
            // Deletes are applied after puts within a batch.
            if o.deletes.contains(id) {
                return Ok(None);
            }
            if let Some(i) = o.puts.get(id) {
                return Ok(Some(o.batch.instance_puts[*i].1.clone()));
            }
        }
        self.base.get_instance(id)
    }
    fn read_history(&self, id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let Some(o) = self.overlay else {
            return self.base.read_history(id);
        };
        // Rows by sequence: the store's (unless the batch truncates them), then the batch's.
        let mut rows: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        if !o.truncated.contains(id) {
            for (seq, row) in self.base.read_history(id)?.into_iter().enumerate() {
                rows.insert(seq as u32, row);
            }
        }
        for ((_, seq), i) in o
            .appends
            .range((id.to_string(), 0)..=(id.to_string(), u32::MAX))
        {
            rows.insert(*seq, o.batch.history_appends[*i].2.clone());
        }
        Ok(rows.into_values().collect())
    }
    fn scan_instances(
        &self,
        start_after: Option<&str>,
        prefix: Option<&str>,
        f: &mut dyn FnMut(&str, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let Some(o) = self.overlay else {
            return self.base.scan_instances(start_after, prefix, f);
        };
        let pre = prefix.unwrap_or("");
        let in_range = |id: &str| id.starts_with(pre) && start_after.is_none_or(|a| id > a);
        let puts = o
            .puts
            .iter()
            .filter(|(id, _)| in_range(id) && !o.deletes.contains(*id))
            .map(|(id, i)| (id.as_str(), o.batch.instance_puts[*i].1.as_slice()));
        merge_into_scan(
            puts,
            Order::Ascending,
            |id: &str, _: &[u8]| o.deletes.contains(id) || o.puts.contains_key(id),
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
        let Some(o) = self.overlay else {
            return self.base.scan_index_desc(prefix, below, f);
        };
        let entries = o
            .index
            .range(cairn_storage::store::index_range(prefix, below))
            .rev()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, id)| (k.as_slice(), id.as_str()));
        merge_into_scan(
            entries,
            Order::Descending,
            |_: &[u8], id: &str| o.reindexed.contains(id),
            |g| self.base.scan_index_desc(prefix, below, g),
            f,
        )
    }
    fn get_work(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay.and_then(|o| Some((o, *o.work.get(key)?))) {
            Some((o, Some(i))) => Ok(Some(o.batch.work_puts[i].1.clone())),
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
        let puts = o
            .work
            .range::<[u8], _>((
                after.map_or(std::ops::Bound::Included(prefix), std::ops::Bound::Excluded),
                std::ops::Bound::Unbounded,
            ))
            .filter(|(k, _)| after.is_none_or(|a| k.as_slice() > a))
            .skip_while(|(k, _)| k.as_slice() < prefix)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, put)| Some((k.as_slice(), o.batch.work_puts[(*put)?].1.as_slice())));
        merge_into_scan(
            puts,
            Order::Ascending,
            |k: &[u8], _: &[u8]| o.work.contains_key(k),
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
    overlay: s.current().as_deref().map(Overlay::indexed),
});
cairn_storage::forward_store_reads!(OverlaySnapshot, |s| &Layered {
    base: &*s.base,
    overlay: s.overlay.as_deref().map(Overlay::indexed),
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

    fn keys_of(id: &str, time: u8) -> Vec<Vec<u8>> {
        vec![
            [b"x", format!("{time}").as_bytes(), id.as_bytes()].concat(),
            [b"y", id.as_bytes()].concat(),
        ]
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

    /// What reads see through the overlay is what they will see once the batch is written.
    #[test]
    fn the_overlay_reads_as_the_store_will_after_the_batch() {
        let base = MemoryCheckpointStore::new();
        let ids = ["a", "b", "b-1", "b-2", "c", "d", "e"];
        base.write_checkpoint(&CheckpointBatch {
            position: 10,
            globals: b"g1".to_vec(),
            instance_puts: ids
                .iter()
                .map(|id| (id.to_string(), format!("old {id}").into_bytes()))
                .collect(),
            history_appends: ids
                .iter()
                .flat_map(|id| {
                    (0..3u32).map(move |s| (id.to_string(), s, format!("{id}{s}").into_bytes()))
                })
                .collect(),
            // Two index entries each: "x" + a time that sorts ids in reverse, and "y" + id.
            index_keys: ids
                .iter()
                .map(|id| (id.to_string(), keys_of(id, 5)))
                .collect(),
            work_puts: ["wa1", "wa3", "wb1", "wb2", "wc1"]
                .iter()
                .map(|k| (k.as_bytes().to_vec(), format!("old {k}").into_bytes()))
                .collect(),
            ..CheckpointBatch::default()
        })
        .unwrap();
        let batch = CheckpointBatch {
            position: 20,
            globals: b"g2".to_vec(),
            instance_puts: vec![
                ("b-1".into(), b"new b-1".to_vec()),
                ("b-15".into(), b"new b-15".to_vec()),
                ("aa".into(), b"new aa".to_vec()),
                ("z".into(), b"new z".to_vec()),
                ("d".into(), b"new d".to_vec()),
            ],
            instance_deletes: vec!["c".into(), "d".into()],
            history_truncates: vec!["b".into(), "c".into()],
            history_appends: vec![
                ("a".into(), 3, b"a3".to_vec()),
                ("b".into(), 0, b"B0".to_vec()),
                ("z".into(), 0, b"z0".to_vec()),
            ],
            index_keys: ["b-1", "b-15", "aa", "z", "d"]
                .iter()
                .map(|id| (id.to_string(), keys_of(id, 1)))
                .collect(),
            work_puts: ["wa2", "wa3", "wb0", "wd1", "wb9"]
                .iter()
                .map(|k| (k.as_bytes().to_vec(), format!("new {k}").into_bytes()))
                .collect(),
            work_deletes: ["wa1", "wb9", "wc1", "wz"]
                .iter()
                .map(|k| k.as_bytes().to_vec())
                .collect(),
        };
        let after = base.clone_contents();
        after.write_checkpoint(&batch).unwrap();
        let overlay = OverlayStore::new(Arc::new(base));
        overlay.set(Some(Arc::new(Overlay::new(Arc::new(batch)))));
        assert_eq!(overlay.checkpoint_position().unwrap(), 20);
        assert_eq!(overlay.load_globals().unwrap(), Some(b"g2".to_vec()));
        for id in [
            "a", "aa", "b", "b-1", "b-15", "b-2", "c", "d", "e", "z", "missing",
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
        for (prefix, below) in [
            (&b""[..], None),
            (b"x", None),
            (b"y", None),
            (b"x", Some(&b"x5b"[..])),
            (b"x1", None),
            (b"y", Some(b"yb-15")),
            (b"yc", None),
        ] {
            assert_eq!(
                index(&overlay, prefix, below),
                index(&after, prefix, below),
                "index below {below:?} under {prefix:?}"
            );
        }
        for key in ["wa1", "wa2", "wa3", "wb9", "wc1", "wd1", "wz"] {
            assert_eq!(
                overlay.get_work(key.as_bytes()).unwrap(),
                after.get_work(key.as_bytes()).unwrap(),
                "work {key}"
            );
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
        // A snapshot taken while the batch is in flight reads the same after the batch is
        // written and the overlay dropped, and after later checkpoints.
        let snapshot = overlay.snapshot().unwrap();
        overlay
            .base()
            .write_checkpoint(&overlay.current().unwrap().batch)
            .unwrap();
        overlay.set(None);
        overlay
            .base()
            .write_checkpoint(&CheckpointBatch {
                position: 30,
                instance_deletes: ids.iter().map(|id| id.to_string()).collect(),
                history_truncates: ids.iter().map(|id| id.to_string()).collect(),
                ..CheckpointBatch::default()
            })
            .unwrap();
        for id in ["a", "aa", "b", "b-1", "c", "d", "z"] {
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
        // An early stop stops, in both.
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
