//! The task hub's directory: what it holds, who may use it, and whether it is whole.
//!
//! ```text
//! cairn-data/
//!   LOCK                          held (flock) by the one process using the hub
//!   hub.json                      format version, partition count, the hub's id
//!   partitions/p00/partition.json this partition's identity: hub id and number
//!   partitions/p00/log/           the partition's segmented log
//!   partitions/p00/store.redb     the partition's checkpoint store
//!   ...
//! ```
//!
//! This module owns opening that directory safely: a second process is refused (the lock), and
//! a hub whose partition directories are missing, swapped with another hub's or another
//! partition's, or re-created empty is refused with what is wrong and what to do, instead of
//! starting with the instances of that partition silently gone. It never reads or writes a
//! partition's log or store contents; the leaders do.

use crate::error::EngineError;
use cairn_core::{LOG_FORMAT_VERSION, OLDEST_READABLE_FORMAT_VERSION};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::Path;

pub const DEFAULT_PARTITIONS: u32 = 12;
pub const MAX_PARTITIONS: u32 = 256;

/// `hub.json`: what a data directory holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HubMeta {
    pub format: String,
    pub format_version: u32,
    pub partitions: u32,
    /// Random, fixed at creation; every partition directory records it. Hubs created before
    /// Cairn kept identities have none until they are next opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_id: Option<String>,
    /// False from the moment `hub.json` is first written until every partition directory has
    /// been created with its identity: a crash in between finishes the creation on the next
    /// open instead of reporting partitions as lost. Hubs written before this field existed
    /// were complete, hence the default.
    #[serde(default = "yes")]
    pub partitions_ready: bool,
}

fn yes() -> bool {
    true
}

/// `partitions/pNN/partition.json`: which hub and which partition a directory belongs to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartitionIdentity {
    pub hub_id: String,
    pub partition: u32,
    pub partitions: u32,
}

/// An open hub directory, held by this process until dropped.
#[derive(Debug)]
pub struct OpenedHub {
    pub meta: HubMeta,
    /// True when this open created the hub (the directory had none).
    pub created: bool,
    _lock: File,
}

pub(crate) fn data_dir_error(dir: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::DataDir {
        dir: dir.display().to_string(),
        reason: reason.into(),
    }
}

pub use cairn_storage::seam::partition_dir;
use cairn_storage::seam::{LOG_DIR, STORE_FILE};

/// Opens (or creates) the hub in `dir`: takes its lock, reads or writes `hub.json`, and checks
/// that every partition directory is this hub's own and still holds its data.
pub fn open(dir: &Path, requested: Option<u32>) -> Result<OpenedHub, EngineError> {
    if let Some(p) = requested {
        if p == 0 || p > MAX_PARTITIONS {
            return Err(EngineError::InvalidArgument(format!(
                "partition count must be between 1 and {MAX_PARTITIONS}, got {p}"
            )));
        }
    }
    if dir.exists() && !dir.is_dir() {
        return Err(data_dir_error(
            dir,
            "it is a file, not a directory: --data (CAIRN_DATA) names the directory that holds \
             the task hub, created if missing",
        ));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| data_dir_error(dir, format!("cannot create it: {e}")))?;
    let lock = lock(dir)?;
    let (mut meta, created) = read_or_create(dir, requested)?;
    let upgrade = meta.hub_id.is_none();
    if upgrade {
        // A hub from before identities: its directories are taken as they are, and marked.
        meta.hub_id = Some(new_hub_id());
    }
    let hub_id = meta.hub_id.clone().unwrap_or_default();
    let mode = if !meta.partitions_ready {
        Mode::Create
    } else if upgrade {
        Mode::Mark
    } else {
        Mode::Check
    };
    for p in 0..meta.partitions {
        check_partition(dir, &meta, &hub_id, p, mode)?;
    }
    if upgrade || !meta.partitions_ready {
        meta.partitions_ready = true;
        write_json(dir, &dir.join("hub.json"), &meta)?;
    }
    Ok(OpenedHub {
        meta,
        created,
        _lock: lock,
    })
}

/// Takes the data directory for this process: an exclusive lock on its `LOCK` file (released
/// when the file is dropped or the process dies, even by `kill -9`), so a second `cairn serve`
/// on the same directory is refused with a message that says so, instead of failing deep
/// inside a partition's store.
fn lock(dir: &Path) -> Result<File, EngineError> {
    use std::io::{Read, Seek, Write};
    let path = dir.join("LOCK");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| data_dir_error(dir, format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            // Who holds it, for the message another process will print.
            let _ = file.set_len(0).and_then(|_| {
                file.rewind()?;
                write!(file, "{}", std::process::id())
            });
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() {
                "another process".to_string()
            } else {
                format!("another process (pid {holder})")
            };
            Err(data_dir_error(
                dir,
                format!(
                    "{who} is using this task hub: another `cairn serve` (or a program embedding Cairn) \
                     has it open. Stop that process first, or give this one its own --data directory"
                ),
            ))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(data_dir_error(
            dir,
            format!("cannot lock {}: {e}", path.display()),
        )),
    }
}

/// Reads `hub.json`, checking version and partition count, or writes a new one (not yet
/// `partitions_ready`) in an empty directory. The flag says whether the hub was created now.
fn read_or_create(dir: &Path, requested: Option<u32>) -> Result<(HubMeta, bool), EngineError> {
    let meta_path = dir.join("hub.json");
    match std::fs::read(&meta_path) {
        Ok(bytes) => {
            let meta: HubMeta = serde_json::from_slice(&bytes).map_err(|e| {
                data_dir_error(
                    dir,
                    format!(
                        "hub.json is not valid ({e}); it was not written by Cairn or is damaged"
                    ),
                )
            })?;
            if meta.format != "cairn" {
                return Err(data_dir_error(
                    dir,
                    format!("hub.json says format '{}', not 'cairn'", meta.format),
                ));
            }
            if !(OLDEST_READABLE_FORMAT_VERSION..=LOG_FORMAT_VERSION).contains(&meta.format_version)
            {
                return Err(data_dir_error(
                    dir,
                    format!(
                        "it was written by format version {} and this Cairn reads versions {} to \
                         {}; use the Cairn release that created it, or a new data directory",
                        meta.format_version, OLDEST_READABLE_FORMAT_VERSION, LOG_FORMAT_VERSION
                    ),
                ));
            }
            let mut meta = meta;
            if meta.format_version < LOG_FORMAT_VERSION {
                // This version reads the older checkpoints and writes its own from now on;
                // older releases must not open the hub again.
                tracing::info!(
                    "upgrading the task hub in {} from format {} to {LOG_FORMAT_VERSION}",
                    dir.display(),
                    meta.format_version
                );
                meta.format_version = LOG_FORMAT_VERSION;
                write_json(dir, &meta_path, &meta)?;
            }
            if meta.partitions == 0 || meta.partitions > MAX_PARTITIONS {
                return Err(data_dir_error(
                    dir,
                    format!(
                        "hub.json names {} partitions, outside 1..={MAX_PARTITIONS}; it is damaged",
                        meta.partitions
                    ),
                ));
            }
            if let Some(p) = requested {
                if p != meta.partitions {
                    return Err(data_dir_error(
                        dir,
                        format!(
                            "the task hub has {} partitions but {p} were requested; the partition count \
                             is fixed when a hub is created: omit --partitions or use a new data directory",
                            meta.partitions
                        ),
                    ));
                }
            }
            Ok((meta, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The lock file is ours; anything else means the directory holds something else.
            let non_empty = std::fs::read_dir(dir)
                .map_err(|e| data_dir_error(dir, e.to_string()))?
                .filter_map(|e| e.ok())
                .any(|e| e.file_name() != "LOCK");
            if non_empty {
                return Err(data_dir_error(
                    dir,
                    "it is not empty and has no hub.json, so it is not a Cairn task hub; choose an empty or new directory",
                ));
            }
            let meta = HubMeta {
                format: "cairn".into(),
                format_version: LOG_FORMAT_VERSION,
                partitions: requested.unwrap_or(DEFAULT_PARTITIONS),
                hub_id: Some(new_hub_id()),
                partitions_ready: false,
            };
            write_json(dir, &meta_path, &meta)?;
            Ok((meta, true))
        }
        Err(e) => Err(data_dir_error(dir, format!("cannot read hub.json: {e}"))),
    }
}

/// What opening may do to a partition directory.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// The hub is being created (perhaps again, after a crash during creation): make what is
    /// missing.
    Create,
    /// A hub from before partition identities: every directory must be there with its data;
    /// it gets its identity file.
    Mark,
    /// Everything must be there.
    Check,
}

/// Checks partition `p`'s directory, creating or marking it as `mode` allows.
fn check_partition(
    dir: &Path,
    meta: &HubMeta,
    hub_id: &str,
    p: u32,
    mode: Mode,
) -> Result<(), EngineError> {
    let pdir = partition_dir(dir, p);
    let name = format!("partitions/p{p:02}");
    let id_path = pdir.join("partition.json");
    let restore = "Restore the whole data directory from a backup (a hub's partitions are only \
                   consistent with each other), or start an empty hub in a new --data directory";
    let identity = PartitionIdentity {
        hub_id: hub_id.to_string(),
        partition: p,
        partitions: meta.partitions,
    };
    if !pdir.exists() {
        if mode != Mode::Create {
            return Err(data_dir_error(
                dir,
                format!(
                    "{name} is missing: the instances stored in partition {p} would be lost if \
                     Cairn started without it. {restore}"
                ),
            ));
        }
        std::fs::create_dir_all(&pdir)
            .map_err(|e| data_dir_error(dir, format!("cannot create {name}: {e}")))?;
    }
    match std::fs::read(&id_path) {
        Ok(bytes) => {
            let found: PartitionIdentity = serde_json::from_slice(&bytes).map_err(|e| {
                data_dir_error(
                    dir,
                    format!("{name}/partition.json is not valid ({e}); it is damaged. {restore}"),
                )
            })?;
            if found.hub_id != hub_id {
                return Err(data_dir_error(
                    dir,
                    format!(
                        "{name} belongs to another task hub (its hub id is {}, this hub's is \
                         {hub_id}): partition directories of different hubs were mixed. {restore}",
                        found.hub_id
                    ),
                ));
            }
            if found.partition != p || found.partitions != meta.partitions {
                return Err(data_dir_error(
                    dir,
                    format!(
                        "{name} holds partition {} of {}, not partition {p} of {}: partition \
                         directories were renamed or swapped. Put each back under its own name \
                         (partition.json in each says which it is)",
                        found.partition, found.partitions, meta.partitions
                    ),
                ));
            }
            // The identity survived, but the data next to it must too (both are created before
            // the identity is written).
            data_present(dir, &pdir, &name, restore)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if mode == Mode::Mark {
                data_present(dir, &pdir, &name, restore)?;
                return write_json(dir, &id_path, &identity);
            }
            if mode == Mode::Check {
                return Err(data_dir_error(
                    dir,
                    format!(
                        "{name} has no partition.json: it was re-created or copied in from \
                         elsewhere, and what it holds may not be this hub's partition {p}. {restore}"
                    ),
                ));
            }
            // The store and the log are created now, so that from here on a missing one means
            // data lost, never "not created yet".
            cairn_storage::store::PartitionStore::open(&pdir.join(STORE_FILE)).map_err(|e| {
                data_dir_error(dir, format!("cannot create {name}/store.redb: {e}"))
            })?;
            std::fs::create_dir_all(pdir.join(LOG_DIR))
                .map_err(|e| data_dir_error(dir, format!("cannot create {name}/log: {e}")))?;
            write_json(dir, &id_path, &identity)
        }
        Err(e) => Err(data_dir_error(
            dir,
            format!("cannot read {name}/partition.json: {e}"),
        )),
    }
}

/// A partition's store and log are both there.
fn data_present(dir: &Path, pdir: &Path, name: &str, restore: &str) -> Result<(), EngineError> {
    for (what, path) in [
        ("its checkpoint store (store.redb)", pdir.join(STORE_FILE)),
        ("its log (log/)", pdir.join(LOG_DIR)),
    ] {
        if !path.exists() {
            return Err(data_dir_error(
                dir,
                format!(
                    "{name} has lost {what}: the partition's instances would be lost if Cairn \
                     started without it. {restore}"
                ),
            ));
        }
    }
    Ok(())
}

/// Writes `value` as JSON to `path` atomically (a temporary file, fsynced, then renamed).
fn write_json<T: Serialize>(dir: &Path, path: &Path, value: &T) -> Result<(), EngineError> {
    let text = serde_json::to_vec_pretty(value)?;
    cairn_storage::settings::write_file_atomically(path, &text)
        .map_err(|e| data_dir_error(dir, format!("cannot write {}: {e}", path.display())))
}

/// A hub id: random (not a secret; it only has to differ between hubs).
fn new_hub_id() -> String {
    use crate::clock::IdGen;
    crate::clock::RandomIds.next_id()
}
