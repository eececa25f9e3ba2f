//! Any text as an IAM key body: canonicalisation never panics, and its output is one clean line that
//! canonicalises to itself.
#![no_main]
use iam_authorized_keys::keys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(k) = keys::canonicalize(s) {
        let text = k.as_str();
        assert!(!text.chars().any(|c| c.is_control()));
        let again = keys::canonicalize(text).expect("canonical output must be accepted");
        assert_eq!(again.as_str(), text);
        let _ = k.fingerprint();
    }
});
