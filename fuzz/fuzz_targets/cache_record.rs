//! Any bytes in a cache file: parse never panics, and whatever it accepts is canonical and re-parses.
#![no_main]
use iam_authorized_keys::cache;
use iam_authorized_keys::username::IamUser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(user) = IamUser::parse("alice") else { return };
    if let Ok(loaded) = cache::parse(data, &user) {
        assert_eq!(loaded.record.iam_user, "alice");
        for k in &loaded.keys {
            let text = k.key.as_str();
            assert!(!text.chars().any(|c| c.is_control()), "control character in an accepted key");
            assert_eq!(text.split(' ').count(), 2, "an accepted key is exactly `algorithm base64`");
        }
        let again = serde_json::to_vec(&loaded.record).expect("re-encode");
        assert!(cache::parse(&again, &user).is_ok(), "an accepted record must re-parse");
    }
});
