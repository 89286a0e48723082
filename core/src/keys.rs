//! Virtual keys: random secrets handed to clients once, stored only as SHA-256 hashes.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Every virtual key starts with this prefix, so leaked keys are easy to grep for.
pub const KEY_PREFIX: &str = "tg-";
/// The prefix of a stored key hash in config.
pub const HASH_PREFIX: &str = "sha256:";

/// A SHA-256 digest of a client key.
pub type KeyHash = [u8; 32];

/// Hashes a presented client key.
pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// Generates a new random key (256 bits of entropy, hex-encoded).
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", hex::encode(bytes))
}

/// The config form of a key's hash: `sha256:<hex>`.
pub fn format_hash(hash: &KeyHash) -> String {
    format!("{HASH_PREFIX}{}", hex::encode(hash))
}

/// Parses `sha256:<64 hex digits>`.
pub fn parse_hash(s: &str) -> Result<KeyHash, String> {
    let hex_part = s
        .strip_prefix(HASH_PREFIX)
        .ok_or_else(|| format!("must start with `{HASH_PREFIX}`"))?;
    if !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("is not valid hex".to_owned());
    }
    if hex_part.len() != 64 {
        return Err("must be 32 bytes (64 hex digits)".to_owned());
    }
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut hash).map_err(|_| "is not valid hex".to_owned())?;
    Ok(hash)
}

/// Compares two hashes in constant time.
pub fn hashes_equal(a: &KeyHash, b: &KeyHash) -> bool {
    constant_time_eq::constant_time_eq_32(a, b)
}

/// A new random request id: 128 random bits as 32 hex digits.
pub fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_round_trip_through_their_hash() {
        let key = generate_key();
        assert!(key.starts_with(KEY_PREFIX));
        assert_eq!(key.len(), KEY_PREFIX.len() + 64);
        let stored = format_hash(&hash_key(&key));
        let parsed = parse_hash(&stored).unwrap();
        assert!(hashes_equal(&parsed, &hash_key(&key)));
        assert!(!hashes_equal(&parsed, &hash_key("tg-other")));
        assert_ne!(generate_key(), key);
    }

    #[test]
    fn bad_hashes_are_rejected_with_a_reason() {
        assert!(parse_hash("md5:00").unwrap_err().contains("sha256:"));
        assert!(parse_hash("sha256:zz").unwrap_err().contains("hex"));
        assert!(parse_hash("sha256:00ff").unwrap_err().contains("32 bytes"));
    }
}
