//! Data-key management on top of the store: load the keyring at start, rotate the
//! master key (re-wrap the data keys) and rotate the data key (re-seal every value).

use rand::rngs::OsRng;

use super::{SealedCell, Store, StoreError, WrappedDataKey};
use crate::crypto::{CryptoError, DataKey, Keyring, MasterKey};
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
    for id in old_ids {
        store.delete_data_key(id).await?;
    }
    Ok(new_id)
}
