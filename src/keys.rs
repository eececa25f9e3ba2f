//! SSH public key bodies from IAM (or from a cache record) become canonical OpenSSH key text, or are refused.
//! Pure: no I/O. Nothing that has not passed through [`canonicalize`] may be printed.

use ssh_key::{HashAlg, PublicKey};

/// Smallest RSA modulus we serve. IAM refuses smaller keys on upload; anything smaller here is tampering.
pub const MIN_RSA_BITS: usize = 2048;

/// A key that parsed, re-encoded by us: `<algorithm> <base64>`, no options, no comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalKey {
    text: String,
    key: PublicKey,
}

impl CanonicalKey {
    /// `<algorithm> <base64>`.
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// `SHA256:<base64>`, as `ssh-keygen -l` and sshd's `%f` print it. Computed on demand: a cache hit
    /// that only prints keys never hashes them.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }
    pub fn algorithm(&self) -> &str {
        self.text.split(' ').next().unwrap_or_default()
    }
}

/// Why a body was not accepted. Bodies are untrusted: the reason never quotes them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejected {
    #[error("empty key body")]
    Empty,
    #[error("key body contains a control character (embedded newline, tab or NUL)")]
    ControlCharacter,
    #[error("key body is not a single OpenSSH public key: {0}")]
    Parse(String),
    #[error("DSA keys are refused (disabled in OpenSSH since 7.0)")]
    Dsa,
    #[error("RSA key has {0} bits, fewer than the {MIN_RSA_BITS} required")]
    WeakRsa(usize),
    #[error("key algorithm is not one sshd accepts for authorized_keys (rsa, ed25519, ecdsa-nistp*, sk-*)")]
    UnknownAlgorithm,
}

/// Parses one OpenSSH public key line (`<algorithm> <base64> [comment]`) and re-encodes it. Anything else,
/// options in front, several keys, PEM, embedded control characters, is refused.
pub fn canonicalize(body: &str) -> Result<CanonicalKey, KeyRejected> {
    let body = body.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r' || c == '\n');
    if body.is_empty() {
        return Err(KeyRejected::Empty);
    }
    if body.chars().any(|c| c.is_control()) {
        return Err(KeyRejected::ControlCharacter);
    }
    let key = PublicKey::from_openssh(body).map_err(|e| KeyRejected::Parse(e.to_string()))?;
    match key.key_data() {
        ssh_key::public::KeyData::Dsa(_) => return Err(KeyRejected::Dsa),
        ssh_key::public::KeyData::Rsa(rsa) => {
            let bits = rsa
                .n
                .as_positive_bytes()
                .map(bit_length)
                .unwrap_or_default();
            if bits < MIN_RSA_BITS {
                return Err(KeyRejected::WeakRsa(bits));
            }
        }
        // The parser keeps any name it does not know (`foo@bar.com`, certificate types) as opaque data:
        // such a body is well-formed wire data, but not a key we know, so it is never printed.
        ssh_key::public::KeyData::Other(_) => return Err(KeyRejected::UnknownAlgorithm),
        ssh_key::public::KeyData::Ecdsa(_)
        | ssh_key::public::KeyData::Ed25519(_)
        | ssh_key::public::KeyData::SkEcdsaSha2NistP256(_)
        | ssh_key::public::KeyData::SkEd25519(_) => {}
        #[allow(unreachable_patterns)]
        _ => return Err(KeyRejected::UnknownAlgorithm),
    }
    let bare = PublicKey::new(key.key_data().clone(), "");
    let text = bare
        .to_openssh()
        .map_err(|e| KeyRejected::Parse(e.to_string()))?
        .trim_end()
        .to_string();
    Ok(CanonicalKey { text, key: bare })
}

fn bit_length(be: &[u8]) -> usize {
    match be.iter().position(|b| *b != 0) {
        None => 0,
        Some(i) => (be.len() - i) * 8 - be[i].leading_zeros() as usize,
    }
}

/// IAM key ids are upper-case alphanumerics (`APKA...`); the id lands in the comment field and the cache,
/// so anything else is refused.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = include_str!("../tests/fixtures/ed25519.pub");
    const RSA: &str = include_str!("../tests/fixtures/rsa3072.pub");
    const RSA1024: &str = include_str!("../tests/fixtures/rsa1024.pub");
    const ECDSA: &str = include_str!("../tests/fixtures/ecdsa256.pub");
    const DSA: &str = include_str!("../tests/fixtures/dsa.pub");
    const FP: &str = include_str!("../tests/fixtures/fingerprints.txt");

    fn field(line: &str, n: usize) -> &str {
        line.split_whitespace().nth(n).expect("field")
    }

    #[test]
    fn canonical_form_drops_comment_and_matches_ssh_keygen() {
        for (name, body) in [("ed25519", ED), ("rsa3072", RSA), ("ecdsa256", ECDSA)] {
            let k = canonicalize(body).expect(name);
            assert_eq!(k.as_str(), format!("{} {}", field(body, 0), field(body, 1)));
            let want = FP
                .lines()
                .find(|l| l.ends_with(&format!("({name})")))
                .expect("fingerprint line");
            assert_eq!(k.fingerprint(), field(want, 1), "{name}");
            assert_eq!(k.algorithm(), field(body, 0));
        }
    }

    #[test]
    fn tolerates_surrounding_whitespace_only() {
        let k = canonicalize(&format!("  {}\r\n", ED.trim())).expect("trailing CRLF");
        assert!(k.as_str().starts_with("ssh-ed25519 AAAA"));
    }

    #[test]
    fn refuses_bodies_that_must_never_be_printed() {
        let ed = ED.trim();
        let cases = [
            (String::new(), "empty"),
            (format!("{ed}\n{ed}"), "control"),
            (format!("{ed}\ncommand=\"/bin/sh\" {ed}"), "control"),
            (format!("command=\"/bin/sh\" {ed}"), "single OpenSSH"),
            (format!("no-pty,from=\"*\" {ed}"), "single OpenSSH"),
            (ed.replace("ssh-ed25519", "ssh-rsa"), "single OpenSSH"),
            (format!("{} x\tcomment", ed), "control"),
            (format!("{}\0", ed), "control"),
            ("ssh-ed25519 !!!notbase64".to_string(), "single OpenSSH"),
            ("-----BEGIN PUBLIC KEY-----".to_string(), "single OpenSSH"),
            ("garbage".to_string(), "single OpenSSH"),
            (DSA.to_string(), "DSA"),
            (RSA1024.to_string(), "1024 bits"),
        ];
        for (body, want) in cases {
            let err = canonicalize(&body).expect_err(&body).to_string();
            assert!(err.contains(want), "{body:?}: {err}");
        }
    }

    #[test]
    fn unknown_algorithms_are_refused() {
        // Finding 8 of the hardening review: the parser's catch-all variant reached stdout.
        for name in [
            "foo@bar.com",
            "restrict@x",
            "ssh-ed25519-cert-v01@openssh.com",
            "made-up@example.org",
        ] {
            let alg = ssh_key::Algorithm::Other(ssh_key::AlgorithmName::new(name).expect("name"));
            let data = ssh_key::public::KeyData::Other(ssh_key::public::OpaquePublicKey::new(
                vec![0, 0, 0, 1, 7],
                alg,
            ));
            let line = PublicKey::new(data, "").to_openssh().expect("encode");
            assert!(line.starts_with(name), "{line}");
            let err = canonicalize(&line).expect_err(&line);
            assert_eq!(err, KeyRejected::UnknownAlgorithm, "{line}");
        }
        // The known ones still pass (sk-* fixtures are not generated here: no authenticator).
        for body in [ED, RSA, ECDSA] {
            canonicalize(body).expect("known algorithm");
        }
    }

    #[test]
    fn truncated_base64_is_refused() {
        let ed = ED.trim();
        let cut = &ed[..ed.len() / 2];
        assert!(canonicalize(cut).is_err());
    }

    #[test]
    fn key_ids() {
        assert!(valid_key_id("APKAEIBAERJR2EXAMPLE"));
        for bad in ["", "APKA/../x", "a b", "APKA\n", &"A".repeat(129)] {
            assert!(!valid_key_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn bit_length_counts_from_the_top_set_bit() {
        assert_eq!(bit_length(&[0, 0x80, 0]), 16);
        assert_eq!(bit_length(&[0x01]), 1);
        assert_eq!(bit_length(&[0, 0]), 0);
    }
}
