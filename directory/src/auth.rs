//! Passwords (argon2id), session tokens and account names.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 8;
/// Longest password accepted, in bytes (argon2 cost does not depend on it,
/// but nobody needs more and it bounds the work per attempt).
pub const MAX_PASSWORD: usize = 1024;
/// Longest account name, in characters.
pub const MAX_ACCOUNT: usize = 64;

/// An argon2id hash in PHC string form.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

/// Does `password` match the stored `hash`? A malformed hash never matches.
pub fn verify_password(hash: &str, password: &str) -> bool {
    if password.len() > MAX_PASSWORD {
        return false;
    }
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// Spend the time a real verification takes, so an unknown account cannot
/// be told from a wrong password by timing.
pub fn dummy_verify(password: &str) {
    static DUMMY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    if let Some(h) = DUMMY.get_or_init(|| hash_password("keyline dummy password").ok()) {
        let _ = verify_password(h, password);
    }
}

/// Is `password` acceptable as a new password?
pub fn check_new_password(password: &str) -> Result<(), String> {
    let n = password.chars().count();
    if n < MIN_PASSWORD {
        return Err(format!(
            "the password is too short (at least {MIN_PASSWORD} characters)"
        ));
    }
    if password.len() > MAX_PASSWORD {
        return Err(format!(
            "the password is too long (at most {MAX_PASSWORD} bytes)"
        ));
    }
    if password.chars().any(char::is_control) {
        return Err("the password contains a control character".into());
    }
    Ok(())
}

/// Is `id` acceptable as an account name?
pub fn check_account_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the account name is empty".into());
    }
    if id.chars().count() > MAX_ACCOUNT {
        return Err(format!(
            "the account name is too long (at most {MAX_ACCOUNT} characters)"
        ));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the account name contains a space or control character".into());
    }
    Ok(())
}

/// A fresh session token (256 random bits, hex).
pub fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A fresh per-call secret (128 random bits, hex).
pub fn new_call_token() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// A fresh invite code: 100 random bits in five groups of four letters
/// and digits (no 0/O, 1/I/L), easy to read out and type.
pub fn new_invite_code() -> String {
    const ALPHABET: &[u8] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
    let mut rng = rand::thread_rng();
    let mut out = String::with_capacity(24);
    for g in 0..5 {
        if g > 0 {
            out.push('-');
        }
        for _ in 0..4 {
            let i = (rng.next_u32() as usize) % ALPHABET.len();
            out.push(ALPHABET[i] as char);
        }
    }
    out
}

/// An invite code as typed: upper case, without spaces.
pub fn normalise_invite_code(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_uppercase)
        .collect()
}

/// What is stored for a token: its SHA-256, so a copy of the database
/// gives nobody a session.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "correct horsE"));
        assert!(!verify_password("garbage", "x"));
        assert_ne!(h, hash_password("correct horse").expect("hash"));
    }

    #[test]
    fn rules() {
        assert!(check_new_password("short").is_err());
        assert!(check_new_password("long enough").is_ok());
        assert!(check_new_password("bad\u{7}password").is_err());
        assert!(check_account_id("alice").is_ok());
        assert!(check_account_id("김민준").is_ok());
        assert!(check_account_id("a b").is_err());
        assert!(check_account_id("").is_err());
        assert_eq!(new_token().len(), 64);
        assert_eq!(token_hash("x").len(), 64);
        assert_ne!(new_token(), new_token());
        let code = new_invite_code();
        assert_eq!(code.len(), 24);
        assert_eq!(normalise_invite_code(&code.to_lowercase()), code);
        assert_ne!(code, new_invite_code());
    }
}
