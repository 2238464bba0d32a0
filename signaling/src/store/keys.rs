//! Data-key management on top of the store: load the keyring at start, rotate the
//! master key (re-wrap the data keys) and rotate the data key (re-seal every value).

use rand::rngs::OsRng;

use super::{SealedCell, Store, StoreError, WrappedDataKey};
use crate::blind_index::{self, DateOfBirth};
use crate::crypto::{CryptoError, DataKey, Keyring, MasterKey, ctx};
use crate::model::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("no active data key")]
    NoActiveKey,
}

/// Unwrap every data key with `master`; on an empty database make the first one.
pub async fn load_keyring(
    store: &dyn Store,
    master: &MasterKey,
    now: Timestamp,
) -> Result<Keyring, KeyError> {
    let wrapped = store.data_keys().await?;
    if wrapped.is_empty() {
        let dk = DataKey::generate(1, &mut OsRng);
        store
            .put_data_key(
                WrappedDataKey {
                    id: 1,
                    wrapped: master.wrap(&dk, &mut OsRng),
                    active: true,
                },
                now,
            )
            .await?;
        return Ok(Keyring::new(dk));
    }
    let active = wrapped
        .iter()
        .find(|k| k.active)
        .ok_or(KeyError::NoActiveKey)?;
    let mut ring = Keyring::new(master.unwrap_key(active.id, &active.wrapped)?);
    for k in wrapped.iter().filter(|k| !k.active) {
        ring.add(master.unwrap_key(k.id, &k.wrapped)?);
    }
    Ok(ring)
}

/// Re-wrap every data key under `new`. Sealed values are untouched: only the small
/// wrapped keys change, so this is quick and safe to run on a live copy.
pub async fn rotate_master_key(
    store: &dyn Store,
    old: &MasterKey,
    new: &MasterKey,
    now: Timestamp,
) -> Result<usize, KeyError> {
    let wrapped = store.data_keys().await?;
    // Unwrap all first so a wrong old key changes nothing.
    let mut plain = Vec::new();
    for k in &wrapped {
        plain.push((old.unwrap_key(k.id, &k.wrapped)?, k.active));
    }
    for (dk, active) in &plain {
        store
            .put_data_key(
                WrappedDataKey {
                    id: dk.id,
                    wrapped: new.wrap(dk, &mut OsRng),
                    active: *active,
                },
                now,
            )
            .await?;
    }
    Ok(plain.len())
}

/// Make a new data key, re-seal every sealed value under it, then drop the old
/// keys. Returns the new key id. Values are re-sealed one by one with the old keys
/// still present, so an interruption leaves every value readable; rerun to finish.
pub async fn rotate_data_key(
    store: &dyn Store,
    master: &MasterKey,
    now: Timestamp,
) -> Result<u32, KeyError> {
    let mut ring = load_keyring(store, master, now).await?;
    let old_ids: Vec<u32> = store.data_keys().await?.iter().map(|k| k.id).collect();
    let new_id = old_ids.iter().copied().max().unwrap_or(0) + 1;
    let dk = DataKey::generate(new_id, &mut OsRng);
    store
        .put_data_key(
            WrappedDataKey {
                id: new_id,
                wrapped: master.wrap(&dk, &mut OsRng),
                active: true,
            },
            now,
        )
        .await?;
    let old = std::mem::replace(&mut ring, Keyring::new(dk));
    for cell in store.sealed_cells().await? {
        let ctx = cell.column.context();
        let plain = match old.open(ctx, &cell.value) {
            Ok(p) => p,
            // Already under the new key (a rerun): leave it.
            Err(CryptoError::UnknownKey(id)) if id == new_id => continue,
            Err(e) => return Err(e.into()),
        };
        let resealed = SealedCell {
            value: ring.seal(ctx, &plain, &mut OsRng),
            ..cell
        };
        store.update_sealed_cell(&resealed).await?;
    }
    // The blind index is keyed by the data key too: make it again under the new key
    // (the old rows keep answering searches until then), then drop the old rows.
    index_patients(store, &ring).await?;
    for id in old_ids {
        store.delete_data_key(id).await?;
    }
    Ok(new_id)
}

/// The blind-index MACs of a patient record under `ring`'s active key.
pub fn patient_index_macs(
    ring: &Keyring,
    name: &str,
    dob: Option<DateOfBirth>,
) -> (u32, Vec<[u8; 32]>) {
    let terms = blind_index::record_terms(name, dob);
    let macs = terms.iter().map(|t| ring.blind_index(t).1).collect();
    (ring.active_id(), macs)
}

/// Index every patient that has no index rows under `ring`'s active key (patients
/// from before the index existed, or every patient after a data key rotation), then
/// drop rows made under other keys. Returns how many patients were indexed. Run at
/// every start and by [`rotate_data_key`]; idempotent.
pub async fn index_patients(store: &dyn Store, ring: &Keyring) -> Result<usize, KeyError> {
    let todo = store.unindexed_patients(ring.active_id()).await?;
    for id in &todo {
        let Some(account) = store.account(*id).await? else {
            continue;
        };
        let name = ring.open_string(ctx::DISPLAY_NAME, &account.display_name)?;
        let dob = match store.date_of_birth(*id).await? {
            Some(sealed) => DateOfBirth::parse(&ring.open_string(ctx::DATE_OF_BIRTH, &sealed)?),
            None => None,
        };
        let (key_id, macs) = patient_index_macs(ring, &name, dob);
        store.replace_patient_index(*id, key_id, macs).await?;
    }
    store.drop_patient_index_except(ring.active_id()).await?;
    Ok(todo.len())
}
