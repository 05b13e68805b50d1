//! `dualtrust keys`, `keys rotate` and `keygen --out`.

use std::path::Path;

use crate::app;
use crate::config::Config;
use crate::keyring::KeySource;
use crate::keys::KeyPair;

use super::BoxError;

/// The JWK Set of every key that signed the log, with its span.
pub(super) async fn print(config: &Config) -> Result<(), BoxError> {
    app::ensure_data_dir(config)?;
    let store = crate::store::Store::open(&config.store_target).await?;
    let keys = app::open_keys(config, &store, false).await?;
    println!("{}", serde_json::to_string_pretty(&keys.jwks())?);
    Ok(())
}

/// A new key in a new file, mode 0600: the next key of a rotation, to be
/// added to every replica's key file (or variable) before `keys rotate`.
pub(super) fn generate(out: &Path) -> Result<(), BoxError> {
    if out.exists() {
        return Err(format!("{} exists; not overwriting a key", out.display()).into());
    }
    let (key, _) = KeyPair::load_or_create(out, true)?;
    eprintln!(
        "wrote {} (add it beside the current key in every replica's key file, then `dualtrust keys rotate --next {}`)",
        out.display(),
        out.display()
    );
    println!("{}", serde_json::to_string_pretty(&key.public_jwk())?);
    Ok(())
}

pub(super) async fn rotate(config: &Config, next: Option<&Path>) -> Result<(), BoxError> {
    app::ensure_data_dir(config)?;
    let store = crate::store::Store::open(&config.store_target).await?;
    let keys = app::open_keys(config, &store, false).await?;
    let source = KeySource::from_config(config);
    let (next, key_file) = match (next, &source) {
        (Some(path), _) => {
            crate::keys::check_private_mode(path)?;
            (KeyPair::load_or_create(path, false)?.0, None)
        }
        (None, KeySource::File { path, .. }) => (KeyPair::generate()?, Some(path.clone())),
        (None, _) => {
            return Err(
                "the keys come from keys.env: make the next key with `dualtrust keygen --out FILE`, add it to the variable beside the current key on every replica, then run `dualtrust keys rotate --next FILE`"
                    .into(),
            );
        }
    };
    let retiring = keys.active_kid();
    if next.kid() == retiring {
        return Err(format!("{} is already the active server key", next.kid()).into());
    }
    if keys.published().iter().any(|k| k.kid == next.kid()) {
        return Err(format!(
            "{} signed this log before; a retired key is never made active again",
            next.kid()
        )
        .into());
    }
    if let Some(path) = &key_file {
        // The new key goes in beside the current one first, so a server on
        // this host that reads the file mid-rotation holds whichever key
        // the registry names.
        let current = source.load()?;
        let mut both: Vec<&KeyPair> = current.iter().map(|k| &**k).collect();
        both.push(&next);
        crate::keys::write_keys(path, &both, true)?;
    }
    let log = crate::audit::AuditLog::open(store, keys.clone()).await?;
    let at = log.rotate_key(&next).await?;
    if let Some(path) = &key_file {
        // The retired key's private half leaves the disk: nothing it could
        // sign from here on would verify, and nothing needs it.
        crate::keys::write_keys(path, &[&next], true)?;
    }
    println!(
        "rotated at log size {at}: {retiring} retired (it signs nothing from receipt {at} on), {} signs from receipt {at} on; servers pick it up within keys.refresh_ms ({} ms)",
        next.kid(),
        config.keys.refresh_ms
    );
    if key_file.is_none() {
        println!("now remove the retired key from every replica's key file or variable");
    }
    Ok(())
}
