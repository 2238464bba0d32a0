//! The device's MLS storage: KeyPackage private keys and group state, in memory, shared
//! by the device and its groups, and serialized as one byte blob
//! ([`crate::Device::export_state`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use mls_rs::mls_rs_codec::{MlsDecode as _, MlsEncode as _};
use mls_rs::storage_provider::KeyPackageData;
use mls_rs::{GroupStateStorage, KeyPackageStorage};
use mls_rs_core::group::{EpochRecord, GroupState};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Version byte of the exported state.
const STATE_VERSION: u8 = 2;
/// Past epochs kept per group, so application messages (chat) sealed just before a
/// commit still open after it.
pub(crate) const MAX_PAST_EPOCHS: usize = 2;

/// Storage failures never happen in memory; the type exists for the traits.
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub(crate) struct StorageError(&'static str);

impl mls_rs::error::IntoAnyError for StorageError {
    fn into_dyn_error(self) -> std::result::Result<Box<dyn std::error::Error + Send + Sync>, Self> {
        Ok(Box::new(self))
    }
}

#[derive(Default)]
struct StoredGroup {
    state: Zeroizing<Vec<u8>>,
    /// Past epochs, oldest first.
    epochs: VecDeque<(u64, Zeroizing<Vec<u8>>)>,
}

#[derive(Default)]
struct Inner {
    key_packages: BTreeMap<Vec<u8>, KeyPackageData>,
    groups: BTreeMap<Vec<u8>, StoredGroup>,
}

/// One store for both traits; clones share the same data.
#[derive(Clone, Default)]
pub(crate) struct Store(Arc<Mutex<Inner>>);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Forget a group's state and past epochs.
    pub(crate) fn delete_group(&self, group_id: &[u8]) {
        self.lock().groups.remove(group_id);
    }

    /// Everything, as one blob. Maps are ordered, so two exports of the same state are
    /// byte-identical.
    pub(crate) fn export(&self) -> Zeroizing<Vec<u8>> {
        let inner = self.lock();
        let mut out = Zeroizing::new(vec![STATE_VERSION]);
        put_len(&mut out, inner.key_packages.len());
        for (id, kp) in &inner.key_packages {
            put_bytes(&mut out, id);
            // Encoding an in-memory KeyPackageData cannot fail (lengths fit the codec).
            let data = Zeroizing::new(kp.mls_encode_to_vec().unwrap_or_default());
            put_bytes(&mut out, &data);
        }
        put_len(&mut out, inner.groups.len());
        for (id, g) in &inner.groups {
            put_bytes(&mut out, id);
            put_bytes(&mut out, &g.state);
            put_len(&mut out, g.epochs.len());
            for (epoch, data) in &g.epochs {
                out.extend_from_slice(&epoch.to_be_bytes());
                put_bytes(&mut out, data);
            }
        }
        out
    }

    /// Parse a blob made by [`Self::export`]. Refuses anything else, including a
    /// truncated or extended blob.
    pub(crate) fn import(state: &[u8]) -> Result<Self> {
        let mut r = Reader(state);
        if r.take(1)?[0] != STATE_VERSION {
            return Err(corrupt());
        }
        let mut inner = Inner::default();
        for _ in 0..r.len()? {
            let id = r.bytes()?.to_vec();
            let mut data = r.bytes()?;
            let kp = KeyPackageData::mls_decode(&mut data).map_err(|_| corrupt())?;
            if !data.is_empty() {
                return Err(corrupt());
            }
            inner.key_packages.insert(id, kp);
        }
        for _ in 0..r.len()? {
            let id = r.bytes()?.to_vec();
            let state = Zeroizing::new(r.bytes()?.to_vec());
            let mut epochs = VecDeque::new();
            for _ in 0..r.len()? {
                let epoch = u64::from_be_bytes(r.take(8)?.try_into().map_err(|_| corrupt())?);
                epochs.push_back((epoch, Zeroizing::new(r.bytes()?.to_vec())));
            }
            inner.groups.insert(id, StoredGroup { state, epochs });
        }
        if !r.0.is_empty() {
            return Err(corrupt());
        }
        Ok(Self(Arc::new(Mutex::new(inner))))
    }
}

fn corrupt() -> Error {
    Error::InvalidArgument("device state is corrupt")
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    // Lengths are of in-memory data far below 4 GiB.
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_len(out, b.len());
    out.extend_from_slice(b);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn len(&mut self) -> Result<usize> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.len()?;
        self.take(n)
    }
}

impl KeyPackageStorage for Store {
    type Error = StorageError;

    fn delete(&mut self, id: &[u8]) -> std::result::Result<(), Self::Error> {
        self.lock().key_packages.remove(id);
        Ok(())
    }

    fn insert(&mut self, id: Vec<u8>, pkg: KeyPackageData) -> std::result::Result<(), Self::Error> {
        self.lock().key_packages.insert(id, pkg);
        Ok(())
    }

    fn get(&self, id: &[u8]) -> std::result::Result<Option<KeyPackageData>, Self::Error> {
        Ok(self.lock().key_packages.get(id).cloned())
    }
}

impl GroupStateStorage for Store {
    type Error = StorageError;

    fn state(
        &self,
        group_id: &[u8],
    ) -> std::result::Result<Option<Zeroizing<Vec<u8>>>, Self::Error> {
        Ok(self.lock().groups.get(group_id).map(|g| g.state.clone()))
    }

    fn epoch(
        &self,
        group_id: &[u8],
        epoch_id: u64,
    ) -> std::result::Result<Option<Zeroizing<Vec<u8>>>, Self::Error> {
        Ok(self.lock().groups.get(group_id).and_then(|g| {
            g.epochs
                .iter()
                .find(|(e, _)| *e == epoch_id)
                .map(|(_, d)| d.clone())
        }))
    }

    fn write(
        &mut self,
        state: GroupState,
        epoch_inserts: Vec<EpochRecord>,
        epoch_updates: Vec<EpochRecord>,
    ) -> std::result::Result<(), Self::Error> {
        let mut inner = self.lock();
        let g = inner.groups.entry(state.id).or_default();
        g.state = state.data;
        for u in epoch_updates {
            if let Some(slot) = g.epochs.iter_mut().find(|(e, _)| *e == u.id) {
                slot.1 = u.data;
            }
        }
        for i in epoch_inserts {
            if g.epochs.back().is_some_and(|(e, _)| *e >= i.id) {
                return Err(StorageError("epochs out of order"));
            }
            g.epochs.push_back((i.id, i.data));
        }
        while g.epochs.len() > MAX_PAST_EPOCHS {
            g.epochs.pop_front();
        }
        Ok(())
    }

    fn max_epoch_id(&self, group_id: &[u8]) -> std::result::Result<Option<u64>, Self::Error> {
        Ok(self
            .lock()
            .groups
            .get(group_id)
            .and_then(|g| g.epochs.back().map(|(e, _)| *e)))
    }
}
