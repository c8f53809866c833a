//! Argon2id password hashes (PHC strings) computed in a memory block that
//! each hashing thread allocates once and reuses.
//!
//! Why not `argon2`'s `PasswordHasher`: it allocates the whole memory cost
//! (19 MiB by default) per hash and frees it. glibc serves such a block
//! with `mmap`, and on the first free raises its mmap threshold to the
//! block's size, so every later block comes from a heap arena that keeps
//! the pages: measured, a node grew from 8 MiB to 106 MiB after 20 logins
//! and to 184 MiB later. With one reused block per hashing thread the cost
//! is fixed at `auth.hash_threads` × `auth.argon2_memory_kib`, touched once.
//! The strings are the same PHC strings `argon2` writes and reads, so
//! existing hashes keep verifying.

use std::cell::RefCell;

use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

thread_local! {
    /// This thread's argon2 memory, grown to the largest cost it has met.
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs argon2id with `params` on this thread's reused memory.
fn compute(
    params: &Params,
    version: Version,
    password: &[u8],
    salt: Salt<'_>,
) -> Result<Output, argon2::password_hash::Error> {
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let argon2 = Argon2::new(Algorithm::Argon2id, version, params.clone());
    let len = params.output_len().unwrap_or(Params::DEFAULT_OUTPUT_LEN);
    BLOCKS.with_borrow_mut(|blocks| {
        let need = params.block_count();
        if blocks.len() < need {
            blocks.resize(need, Block::default());
        }
        Output::init_with(len, |out| {
            argon2
                .hash_password_into_with_memory(password, salt_bytes, out, &mut blocks[..need])
                .map_err(Into::into)
        })
    })
}

/// A new PHC string for `password` with a random salt.
pub fn hash(params: &Params, password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let output = compute(params, Version::V0x13, password.as_bytes(), salt.as_salt())?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc` (with the parameters
/// written in it). The comparison is constant-time (`Output`'s `Eq`).
pub fn verify(phc: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return false;
    }
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .ok()
        .flatten()
        .unwrap_or_default();
    compute(&params, version, password.as_bytes(), salt).is_ok_and(|out| out == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};

    fn params() -> Params {
        Params::new(1024, 1, 1, None).unwrap()
    }

    #[test]
    fn our_hashes_and_argon2s_verify_each_other() {
        let ours = hash(&params(), "correct horse").unwrap();
        assert!(verify(&ours, "correct horse"));
        assert!(!verify(&ours, "correct horsf"));
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params());
        let parsed = PasswordHash::new(&ours).unwrap();
        argon2
            .verify_password(b"correct horse", &parsed)
            .expect("argon2 accepts our hash");
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        let theirs = argon2
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(verify(&theirs, "correct horse"), "we accept argon2's hash");
        assert!(!verify(&theirs, "wrong"));
    }

    #[test]
    fn hashes_with_other_parameters_still_verify() {
        let old = hash(&Params::new(2048, 2, 1, None).unwrap(), "pw-pw-pw-pw").unwrap();
        // A larger cost after a smaller one on the same thread, and back.
        assert!(verify(&old, "pw-pw-pw-pw"));
        let new = hash(&params(), "pw-pw-pw-pw").unwrap();
        assert!(verify(&new, "pw-pw-pw-pw"));
        assert!(!verify("not a phc string", "pw"));
    }
}
