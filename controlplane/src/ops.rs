//! The control plane's operations, written once against [`Tx`]: create, read, patch, delete
//! objects; create, rotate and revoke keys; resolve a key hash into a bundle's claims. Every
//! write appends its change-feed entries in the same transaction.

use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::model::{
    bundle_key, rfc3339, BudgetSpec, KeyDoc, KeySpec, Kind, PreviousHash, Spec, TenantSpec,
};
use crate::store::{Change, StoredDoc, Tx};

/// What a write returns: its answer and the change-feed entries it appended.
#[derive(Debug)]
pub struct Written {
    /// The API answer.
    pub value: Value,
    /// The entries appended.
    pub changes: Vec<Change>,
}

/// Appends entries and prunes the feed to `keep` entries.
fn changed(
    tx: &mut dyn Tx,
    entries: &[(&str, &str)],
    now: i64,
    keep: i64,
) -> Result<Vec<Change>, ApiError> {
    let mut out = Vec::with_capacity(entries.len());
    for (kind, name) in entries {
        let seq = tx.append_change(kind, name, now)?;
        out.push(Change {
            seq,
            kind: (*kind).to_owned(),
            name: (*name).to_owned(),
        });
    }
    tx.prune_changes(keep)?;
    Ok(out)
}

fn invalid(errs: Vec<String>) -> Result<(), ApiError> {
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(errs.join("; ")))
    }
}

fn not_found(kind: Kind, name: &str) -> ApiError {
    ApiError::NotFound(format!("no {} `{name}`", kind.label()))
}

/// The API view of a tenant, team or budget.
fn object_view(d: &StoredDoc) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_str(&d.doc)?;
    if let Some(m) = v.as_object_mut() {
        m.insert("created_at".into(), rfc3339(d.created_at));
        m.insert("updated_at".into(), rfc3339(d.updated_at));
    }
    Ok(v)
}

/// The API view of a key (never the secret: only its hash).
fn key_view(d: &StoredDoc, now: i64) -> Result<Value, ApiError> {
    let doc: KeyDoc = serde_json::from_str(&d.doc)?;
    let mut m = match serde_json::to_value(&doc.spec)? {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let status = if doc.revoked_at.is_some() {
        "revoked"
    } else if doc
        .spec
        .expires_at
        .is_some_and(|e| e.unix_timestamp() <= now)
    {
        "expired"
    } else if doc.spec.disabled {
        "disabled"
    } else {
        "active"
    };
    m.insert("hash".into(), doc.hash.clone().into());
    m.insert("status".into(), status.into());
    m.insert(
        "revoked_at".into(),
        doc.revoked_at.map_or(Value::Null, rfc3339),
    );
    m.insert(
        "previous_hashes".into(),
        doc.previous
            .iter()
            .filter(|p| p.valid_until > now)
            .map(|p| serde_json::json!({"hash": p.hash, "valid_until": rfc3339(p.valid_until)}))
            .collect::<Vec<_>>()
            .into(),
    );
    m.insert("created_at".into(), rfc3339(d.created_at));
    m.insert("updated_at".into(), rfc3339(d.updated_at));
    Ok(Value::Object(m))
}

/// Creates a tenant, team or budget.
pub fn create<S: Spec>(tx: &mut dyn Tx, spec: S, now: i64, keep: i64) -> Result<Written, ApiError> {
    invalid(spec.validate())?;
    let name = spec.name().to_owned();
    if tx.get(S::KIND, &name)?.is_some() {
        return Err(ApiError::Conflict(format!(
            "{} `{name}` exists",
            S::KIND.label()
        )));
    }
    tx.insert(S::KIND, &name, &serde_json::to_string(&spec)?, now)?;
    let changes = changed(tx, &[(S::KIND.label(), &name)], now, keep)?;
    let d = tx
        .get(S::KIND, &name)?
        .ok_or_else(|| not_found(S::KIND, &name))?;
    Ok(Written {
        value: object_view(&d)?,
        changes,
    })
}

/// One tenant, team or budget.
pub fn get<S: Spec>(tx: &mut dyn Tx, name: &str) -> Result<Value, ApiError> {
    let d = tx
        .get(S::KIND, name)?
        .ok_or_else(|| not_found(S::KIND, name))?;
    object_view(&d)
}

/// Every tenant, team or budget.
pub fn list<S: Spec>(tx: &mut dyn Tx) -> Result<Value, ApiError> {
    let items = tx
        .list(S::KIND)?
        .iter()
        .map(object_view)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(serde_json::json!({ "items": items }))
}

/// Applies a JSON merge patch (RFC 7396) to a spec; the name cannot change.
fn patched<S: Spec>(current: &S, patch: Value) -> Result<S, ApiError> {
    let Value::Object(patch) = patch else {
        return Err(ApiError::Invalid(
            "the body must be a JSON object (a merge patch)".to_owned(),
        ));
    };
    let field = S::KIND.name_field();
    if let Some(v) = patch.get(field) {
        if v.as_str() != Some(current.name()) {
            return Err(ApiError::Invalid(format!("{field}: cannot be changed")));
        }
    }
    let mut v = serde_json::to_value(current)?;
    if let Value::Object(m) = &mut v {
        for (k, pv) in patch {
            if pv.is_null() {
                m.remove(&k);
            } else {
                m.insert(k, pv);
            }
        }
    }
    let next: S = serde_path_to_error::deserialize(v)
        .map_err(|e| ApiError::Invalid(format!("{}: {}", e.path(), e.inner())))?;
    invalid(next.validate())?;
    Ok(next)
}

/// Patches a tenant, team or budget.
pub fn patch<S: Spec>(
    tx: &mut dyn Tx,
    name: &str,
    patch: Value,
    now: i64,
    keep: i64,
) -> Result<Written, ApiError> {
    let d = tx
        .get(S::KIND, name)?
        .ok_or_else(|| not_found(S::KIND, name))?;
    let current: S = serde_json::from_str(&d.doc)?;
    let next = patched(&current, patch)?;
    tx.update(S::KIND, name, &serde_json::to_string(&next)?, now)?;
    let changes = changed(tx, &[(S::KIND.label(), name)], now, keep)?;
    let d = tx
        .get(S::KIND, name)?
        .ok_or_else(|| not_found(S::KIND, name))?;
    Ok(Written {
        value: object_view(&d)?,
        changes,
    })
}

/// Deletes a tenant, team or budget.
pub fn delete<S: Spec>(
    tx: &mut dyn Tx,
    name: &str,
    now: i64,
    keep: i64,
) -> Result<Written, ApiError> {
    let d = tx
        .get(S::KIND, name)?
        .ok_or_else(|| not_found(S::KIND, name))?;
    tx.delete(S::KIND, name)?;
    let changes = changed(tx, &[(S::KIND.label(), name)], now, keep)?;
    Ok(Written {
        value: object_view(&d)?,
        changes,
    })
}

fn load_key(tx: &mut dyn Tx, id: &str) -> Result<(StoredDoc, KeyDoc), ApiError> {
    let d = tx
        .get(Kind::Key, id)?
        .ok_or_else(|| not_found(Kind::Key, id))?;
    let doc: KeyDoc = serde_json::from_str(&d.doc)?;
    Ok((d, doc))
}

fn live_hashes(doc: &KeyDoc, now: i64) -> Vec<String> {
    let mut v = vec![doc.hash.clone()];
    v.extend(
        doc.previous
            .iter()
            .filter(|p| p.valid_until > now)
            .map(|p| p.hash.clone()),
    );
    v
}

/// Creates a key whose secret hashes to `hash`; the caller shows the secret once.
pub fn create_key(
    tx: &mut dyn Tx,
    spec: KeySpec,
    hash: &str,
    now: i64,
    keep: i64,
) -> Result<Written, ApiError> {
    invalid(spec.validate())?;
    if tx.get(Kind::Key, &spec.id)?.is_some() {
        return Err(ApiError::Conflict(format!(
            "key `{}` exists (ids of revoked keys are not reused)",
            spec.id
        )));
    }
    let id = spec.id.clone();
    let doc = KeyDoc {
        spec,
        hash: hash.to_owned(),
        revoked_at: None,
        previous: Vec::new(),
    };
    tx.insert(Kind::Key, &id, &serde_json::to_string(&doc)?, now)?;
    tx.hash_put(hash, &id, None)?;
    let changes = changed(tx, &[("key", hash)], now, keep)?;
    let (d, _) = load_key(tx, &id)?;
    Ok(Written {
        value: key_view(&d, now)?,
        changes,
    })
}

/// One key.
pub fn get_key(tx: &mut dyn Tx, id: &str, now: i64) -> Result<Value, ApiError> {
    let (d, _) = load_key(tx, id)?;
    key_view(&d, now)
}

/// Every key.
pub fn list_keys(tx: &mut dyn Tx, now: i64) -> Result<Value, ApiError> {
    let items = tx
        .list(Kind::Key)?
        .iter()
        .map(|d| key_view(d, now))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(serde_json::json!({ "items": items }))
}

/// Patches a key's spec (models, expiry, limits, ...); a revoked key cannot change.
pub fn patch_key(
    tx: &mut dyn Tx,
    id: &str,
    patch: Value,
    now: i64,
    keep: i64,
) -> Result<Written, ApiError> {
    let (_, mut doc) = load_key(tx, id)?;
    if doc.revoked_at.is_some() {
        return Err(ApiError::Conflict(format!("key `{id}` is revoked")));
    }
    doc.spec = patched(&doc.spec, patch)?;
    tx.update(Kind::Key, id, &serde_json::to_string(&doc)?, now)?;
    let hashes = live_hashes(&doc, now);
    let entries: Vec<(&str, &str)> = hashes.iter().map(|h| ("key", h.as_str())).collect();
    let changes = changed(tx, &entries, now, keep)?;
    let (d, _) = load_key(tx, id)?;
    Ok(Written {
        value: key_view(&d, now)?,
        changes,
    })
}

/// Gives a key a new secret (hashing to `new_hash`); the old one keeps resolving for
/// `grace_secs` (0: not at all).
pub fn rotate_key(
    tx: &mut dyn Tx,
    id: &str,
    new_hash: &str,
    grace_secs: i64,
    now: i64,
    keep: i64,
) -> Result<Written, ApiError> {
    let (_, mut doc) = load_key(tx, id)?;
    if doc.revoked_at.is_some() {
        return Err(ApiError::Conflict(format!("key `{id}` is revoked")));
    }
    let old = std::mem::replace(&mut doc.hash, new_hash.to_owned());
    doc.previous.retain(|p| p.valid_until > now);
    if grace_secs > 0 {
        let valid_until = now + grace_secs;
        doc.previous.push(PreviousHash {
            hash: old.clone(),
            valid_until,
        });
        tx.hash_put(&old, id, Some(valid_until))?;
    } else {
        tx.hash_delete(&old)?;
    }
    tx.hash_put(new_hash, id, None)?;
    tx.update(Kind::Key, id, &serde_json::to_string(&doc)?, now)?;
    let changes = changed(tx, &[("key", &old), ("key", new_hash)], now, keep)?;
    let (d, _) = load_key(tx, id)?;
    Ok(Written {
        value: key_view(&d, now)?,
        changes,
    })
}

/// Revokes a key: none of its hashes resolves again.
pub fn revoke_key(tx: &mut dyn Tx, id: &str, now: i64, keep: i64) -> Result<Written, ApiError> {
    let (_, mut doc) = load_key(tx, id)?;
    if doc.revoked_at.is_some() {
        return Err(ApiError::Conflict(format!("key `{id}` is already revoked")));
    }
    let mut hashes = vec![doc.hash.clone()];
    hashes.extend(doc.previous.iter().map(|p| p.hash.clone()));
    for h in &hashes {
        tx.hash_delete(h)?;
    }
    doc.revoked_at = Some(now);
    doc.previous.clear();
    tx.update(Kind::Key, id, &serde_json::to_string(&doc)?, now)?;
    let entries: Vec<(&str, &str)> = hashes.iter().map(|h| ("key", h.as_str())).collect();
    let changes = changed(tx, &entries, now, keep)?;
    let (d, _) = load_key(tx, id)?;
    Ok(Written {
        value: key_view(&d, now)?,
        changes,
    })
}

/// What `resolve-key` found for a hash, before `iat`/`exp` are added.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The claims JSON without its closing `}`: `{"key":...,"tenant":...,"budgets":[...],"seq":N`.
    pub claims_prefix: String,
    /// When it stops resolving (unix seconds): the key's expiry or the end of a rotation grace.
    pub valid_until: Option<i64>,
}

/// Resolves a hash: `None` when unknown or revoked (expiry is checked by the caller, since
/// the answer is cached). Also returns the feed sequence number the answer reflects.
pub fn resolve(tx: &mut dyn Tx, hash: &str) -> Result<(Option<Resolved>, i64), ApiError> {
    let seq = tx.latest_seq()?;
    let Some((key_id, hash_until)) = tx.hash_get(hash)? else {
        return Ok((None, seq));
    };
    let Some(d) = tx.get(Kind::Key, &key_id)? else {
        return Ok((None, seq));
    };
    let doc: KeyDoc = serde_json::from_str(&d.doc)?;
    if doc.revoked_at.is_some() {
        return Ok((None, seq));
    }
    let key_until = doc.spec.expires_at.map(OffsetDateTime::unix_timestamp);
    let valid_until = match (key_until, hash_until) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let expires_at = valid_until.and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
    let key = bundle_key(&doc.spec, hash, expires_at);
    let tenant = match &doc.spec.tenant {
        Some(t) => match tx.get(Kind::Tenant, t)? {
            Some(td) => serde_json::from_str::<TenantSpec>(&td.doc)?.raw(),
            None => Value::Null,
        },
        None => Value::Null,
    };
    let mut budgets = Vec::new();
    for bd in tx.list(Kind::Budget)? {
        let b: BudgetSpec = serde_json::from_str(&bd.doc)?;
        if b.applies_to(&doc.spec) {
            budgets.push(serde_json::to_value(&b)?);
        }
    }
    let claims_prefix = format!(
        "{{\"key\":{},\"tenant\":{},\"budgets\":{},\"seq\":{seq}",
        serde_json::to_string(&key)?,
        serde_json::to_string(&tenant)?,
        serde_json::to_string(&budgets)?,
    );
    Ok((
        Some(Resolved {
            claims_prefix,
            valid_until,
        }),
        seq,
    ))
}

/// The change feed after `since`: `(latest, reset, entries)`.
pub fn changes(
    tx: &mut dyn Tx,
    since: i64,
    limit: i64,
) -> Result<(i64, bool, Vec<Change>), ApiError> {
    let latest = tx.latest_seq()?;
    let oldest = tx.oldest_seq()?;
    let reset = since > latest || oldest.is_some_and(|o| since < o - 1);
    if reset {
        return Ok((latest, true, Vec::new()));
    }
    let entries = tx.changes_after(since, limit)?;
    let seq = if entries.len() as i64 >= limit {
        entries.last().map_or(latest, |c| c.seq)
    } else {
        latest
    };
    Ok((seq, false, entries))
}
