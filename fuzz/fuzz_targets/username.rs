//! Any string as a login name or IAM name: validation and mapping never panic, accepted Linux names are
//! canonical images, and mapped IAM names round-trip.
#![no_main]
use iam_authorized_keys::username::{iam_to_linux, linux_name_problem, linux_to_iam, IamUser, NameCase};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    for case in [NameCase::Fold, NameCase::Preserve] {
        if let Ok(iam) = linux_to_iam(s, case) {
            assert_eq!(iam_to_linux(&iam, case).as_deref(), Ok(s), "accepted Linux name is not canonical");
        }
        if let Ok(iam) = IamUser::parse(s) {
            assert!(!iam.as_str().contains('/') && iam.as_str() != "." && iam.as_str() != "..");
            if let Ok(linux) = iam_to_linux(&iam, case) {
                assert_eq!(linux_name_problem(&linux, case), None);
                let back = linux_to_iam(&linux, case).expect("image maps back");
                assert!(back.as_str().eq_ignore_ascii_case(iam.as_str()));
            }
        }
    }
});
