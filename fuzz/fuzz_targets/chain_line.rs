//! Any text as a line of a chained key command's output: parsing never panics, and an accepted line
//! prints as one clean authorized_keys line that parses again to the same key and options.
#![no_main]
use iam_authorized_keys::chain;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(k) = chain::parse_line(s) {
        let line = match &k.options {
            Some(o) => format!("{} {}", o.as_str(), k.key.as_str()),
            None => k.key.as_str().to_string(),
        };
        assert!(!line.chars().any(|c| c.is_control()));
        let again = chain::parse_line(&line).expect("printed line must parse");
        assert_eq!(again, k);
    }
});
