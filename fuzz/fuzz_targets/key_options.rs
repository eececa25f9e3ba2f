//! Any text as --key-options: never panics; an accepted list holds no whitespace outside quotes, no
//! newline, and parses to itself.
#![no_main]
use iam_authorized_keys::keyopts::KeyOptions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(o) = KeyOptions::parse(s) {
        let text = o.as_str();
        assert!(!text.chars().any(|c| c.is_control()));
        let again = KeyOptions::parse(text).expect("canonical options must be accepted");
        assert_eq!(again.as_str(), text);
    }
});
