//! Any instance tag value as a list of IAM groups (`--allowed-groups-tag`), and any tag key: parsing never
//! panics, every accepted group is a valid IAM group name listed once (case-insensitively), and the list
//! written back comma-separated parses to itself.
#![no_main]
use iam_authorized_keys::cache::{parse_groups_tag, valid_group, valid_tag_key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if valid_tag_key(s) {
        assert!(!s.contains('/') && !s.contains(' ') && s != "." && s != ".." && s != "_index");
    }
    if let Ok(groups) = parse_groups_tag(s) {
        assert!(!groups.is_empty());
        for (i, g) in groups.iter().enumerate() {
            assert!(valid_group(g), "accepted an invalid group {g:?}");
            assert!(!groups[..i].iter().any(|h| h.eq_ignore_ascii_case(g)), "listed twice: {g:?}");
        }
        assert_eq!(parse_groups_tag(&groups.join(",")).as_ref(), Ok(&groups));
    }
});
