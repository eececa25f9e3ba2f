//! `map NAME...`: how each name reads as a Linux login and as an IAM user name, in both directions, with the
//! reason where a direction has no mapping. Pure: no cache, no IAM call.

use std::ffi::OsString;

use crate::config::Config;
use crate::error::Error;
use crate::output;
use crate::username::{iam_to_linux, linux_to_iam, sanitize, IamUser};

/// `map NAME...`: each name read as a Linux name and as an IAM name.
pub fn run(names: &[OsString], cfg: &Config) -> Result<(), Error> {
    let mut rows = Vec::new();
    let mut all_ok = true;
    for raw in names {
        let name = raw.to_string_lossy();
        let reason = |e: Error| match e {
            Error::InvalidUser { reason, .. } => reason,
            other => other.to_string(),
        };
        let as_linux = linux_to_iam(&name, cfg.name_case)
            .map(|u| u.as_str().to_string())
            .map_err(reason);
        let as_iam = IamUser::parse(&name)
            .map_err(reason)
            .and_then(|u| iam_to_linux(&u, cfg.name_case));
        all_ok &= as_linux.is_ok() || as_iam.is_ok();
        rows.push((sanitize(&name), as_linux, as_iam));
    }
    output::emit(&if cfg.json {
        output::render_map_json(&rows)
    } else {
        output::render_map(&rows)
    })?;
    if all_ok {
        Ok(())
    } else {
        Err(Error::InvalidUser {
            shown: rows
                .iter()
                .filter(|(_, a, b)| a.is_err() && b.is_err())
                .map(|(n, _, _)| n.clone())
                .collect::<Vec<_>>()
                .join(", "),
            reason: "no mapping in either direction (see above)".into(),
        })
    }
}
