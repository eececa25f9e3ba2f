//! `sync-users`: local accounts for the members of IAM groups, so sshd has someone to ask us about.
//! Additive steps (create, reactivate, prefetch keys, grant sudo) run on whatever IAM answered; the
//! removal phase runs only when every IAM answer of the run was complete, and an account disappears only
//! after N consecutive successful syncs without it. Only accounts in the marker group, with a UID at or
//! above --min-uid, are ever changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::cache::GroupsTag;
use crate::cli::SyncArgs;
use crate::config::{check_tag_key, Config};
use crate::error::Error;
use crate::log::Log;
use crate::lookup;
use crate::username::{iam_to_linux, IamUser, LoginName};
use crate::{fsutil, iam, output};

const STATE_VERSION: u32 = 1;

/// GetGroup's answer for one group: members, `None` for no such group, or the error.
type GroupAnswer = Arc<Result<Option<Vec<String>>, String>>;

/// What survives between runs: how many consecutive successful syncs each managed account was absent.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    version: u32,
    absent: BTreeMap<String, u32>,
}

fn read_state(path: &Path, log: &Log) -> State {
    match fsutil::read_checked(path, 0) {
        Ok(None) => State::default(),
        Ok(Some(bytes)) => match serde_json::from_slice::<State>(&bytes) {
            Ok(s) if s.version == STATE_VERSION => s,
            _ => {
                // Starting the counters again only delays removals: the safe direction.
                log.warn(&format!(
                    "{} is not a state file of this version; absence counters start again",
                    path.display()
                ));
                State::default()
            }
        },
        Err(e) => {
            log.warn(&format!("{e}; absence counters start again"));
            State::default()
        }
    }
}

fn write_state(path: &Path, state: &State) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut bytes = serde_json::to_vec_pretty(state)
        .map_err(|e| Error::Config(format!("cannot encode the sync state: {e}")))?;
    bytes.push(b'\n');
    fsutil::write_atomic(path, &bytes, 0)
}

/// A local account as /etc/passwd and /etc/shadow describe it.
#[derive(Debug, Clone)]
struct Account {
    uid: u32,
    /// Expired on purpose by us (shadow expire date 1).
    locked: bool,
}

fn accounts() -> Result<BTreeMap<String, Account>, Error> {
    let passwd = std::fs::read_to_string(crate::policy::PASSWD)
        .map_err(|e| Error::io(crate::policy::PASSWD, e))?;
    // Unreadable shadow is an error: guessing "not locked" would unlock or re-lock the wrong accounts.
    let shadow = crate::policy::read_shadow()?;
    let expired: BTreeSet<&str> = crate::policy::shadow_entries(&shadow)
        .filter(|e| e.expire == "1")
        .map(|e| e.name)
        .collect();
    Ok(crate::policy::passwd_entries(&passwd)
        .map(|e| {
            (
                e.name.to_string(),
                Account {
                    uid: e.uid,
                    locked: expired.contains(e.name),
                },
            )
        })
        .collect())
}

/// Members of local group `name` (supplementary members listed in /etc/group), `None` if no such group.
fn group_members(name: &str) -> Result<Option<BTreeSet<String>>, Error> {
    let text = std::fs::read_to_string("/etc/group").map_err(|e| Error::io("/etc/group", e))?;
    Ok(text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| {
            f[3].split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect()
        })
    }))
}

fn run_tool(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[derive(Default)]
struct Report {
    created: Vec<String>,
    reactivated: Vec<String>,
    prefetched: Vec<serde_json::Value>,
    granted: Vec<String>,
    revoked: Vec<String>,
    sudoers_changed: bool,
    absent: Vec<serde_json::Value>,
    removed: Vec<serde_json::Value>,
    skipped: Vec<serde_json::Value>,
    errors: Vec<String>,
    removal_phase: &'static str,
    /// Instance tags read for this run and the groups they listed.
    tags: Vec<serde_json::Value>,
    /// Worth a look, but the run did what it should (a sudo tag that grants nobody sudo).
    warnings: Vec<String>,
}

/// Reads the groups tag and the sudo groups tag from instance metadata (one IMDS client, one token). A
/// groups tag that cannot be read ends the run before anything changes; the sudo tag's result is
/// returned as it is, for the caller to decide.
#[allow(clippy::type_complexity)]
fn read_tags(
    cfg: &Config,
    group_tag: Option<&str>,
    sudo_tag: Option<&str>,
) -> Result<(Option<GroupsTag>, Option<Result<GroupsTag, Error>>), Error> {
    if group_tag.is_none() && sudo_tag.is_none() {
        return Ok((None, None));
    }
    let budget = cfg.timeout.max(Duration::from_secs(10));
    lookup::with_runtime(cfg, budget, async {
        let c = iam::connect(cfg, budget).await?;
        let deadline = std::time::Instant::now() + budget / 2;
        let group = match group_tag {
            Some(k) => {
                Some(crate::credentials::groups_tag(&c.imds, k, "--group-tag", deadline).await?)
            }
            None => None,
        };
        let sudo = match sudo_tag {
            Some(k) => {
                Some(crate::credentials::groups_tag(&c.imds, k, "--sudo-group-tag", deadline).await)
            }
            None => None,
        };
        Ok((group, sudo))
    })
}

/// The sudoers drop-in for `users`, in a fixed order so an unchanged set rewrites nothing.
fn sudoers_text(users: &BTreeSet<String>) -> String {
    let mut s = String::from(
        "# Written by iam-authorized-keys sync-users: managed accounts whose IAM user is in a sudo group.\n",
    );
    for u in users {
        s.push_str(&format!("{u} ALL=(ALL) NOPASSWD:ALL\n"));
    }
    s
}

/// Validates `text` with `visudo -cf` in a temp file beside `path`, then moves it into place (0440).
fn install_sudoers(path: &Path, text: &str) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o440))
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let tmp_s = tmp.to_string_lossy().into_owned();
        run_tool("visudo", &["-cf", &tmp_s])?;
        std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub fn run(args: &SyncArgs, cfg: &Config, log: &Log) -> Result<(), Error> {
    if !args.dry_run && fsutil::euid() != 0 {
        return Err(Error::Config(
            "sync-users changes accounts and needs root (or use --dry-run)".into(),
        ));
    }
    if !args.group.is_empty() && args.group_tag.is_some() {
        return Err(Error::Config(
            "--group and --group-tag: choose one (the tag's value is the list of groups)".into(),
        ));
    }
    if !args.sudo_group.is_empty() && args.sudo_group_tag.is_some() {
        return Err(Error::Config(
            "--sudo-group and --sudo-group-tag: choose one (the tag's value is the list of groups)"
                .into(),
        ));
    }
    // Groups from instance tags: --group-tag, else (without --group) the lookups' --allowed-groups-tag.
    let group_tag = match &args.group_tag {
        Some(k) => Some(check_tag_key("group-tag", k)?),
        None if args.group.is_empty() => cfg.allowed_groups_tag.clone(),
        None => None,
    };
    let sudo_tag = args
        .sudo_group_tag
        .as_deref()
        .map(|k| check_tag_key("sudo-group-tag", k))
        .transpose()?;
    if args.remove_after == 0 {
        return Err(Error::Config("--remove-after must be at least 1".into()));
    }
    let mut rep = Report::default();
    let (tagged, sudo_tagged) = read_tags(cfg, group_tag.as_deref(), sudo_tag.as_deref())?;
    let login_groups: Vec<String> = match &tagged {
        Some(t) => {
            rep.tags
                .push(json!({"option": "--group-tag", "key": t.key, "groups": t.groups}));
            t.groups.clone()
        }
        None if args.group.is_empty() => cfg.allowed_groups.clone(),
        None => args.group.clone(),
    };
    if login_groups.is_empty() {
        return Err(Error::Config(
            "name the IAM groups whose members get accounts: --group G or --group-tag KEY (or --allowed-group, --allowed-groups-tag)".into(),
        ));
    }
    // A sudo tag that instance metadata says is missing or unusable grants sudo to nobody (fail closed);
    // one that could not be read leaves sudoers as it is, as an IAM failure does.
    let mut sudo_revoke_all = false;
    let sudo_groups: Vec<String> = match sudo_tagged {
        None => args.sudo_group.clone(),
        Some(Ok(t)) => {
            rep.tags
                .push(json!({"option": "--sudo-group-tag", "key": t.key, "groups": t.groups}));
            t.groups
        }
        // Not an error of the run: taking the sudo tag away is a way to say "sudo for nobody", and it
        // must not stop account removal or fail every run.
        Some(Err(e @ Error::InstanceTag { settled: true, .. })) => {
            rep.warnings.push(format!("{e}; sudo granted to nobody"));
            sudo_revoke_all = true;
            Vec::new()
        }
        Some(Err(e)) => {
            rep.errors.push(format!("{e}; sudoers left as is"));
            Vec::new()
        }
    };

    // --- IAM: group members, each group asked once (moka dedupes a group named twice) -----------------
    let groups_cache: moka::sync::Cache<String, GroupAnswer> = moka::sync::Cache::new(64);
    let fetch_group = |g: &str| -> GroupAnswer {
        groups_cache.get_with(g.to_string(), || {
            let budget = cfg.timeout.max(Duration::from_secs(10));
            Arc::new(
                lookup::with_runtime(cfg, budget, async {
                    let client = iam::client(cfg, budget).await?;
                    iam::group_members(&client, g).await
                })
                .map_err(|e| e.to_string()),
            )
        })
    };
    let mut complete = true;
    let mut wanted: BTreeMap<String, IamUser> = BTreeMap::new();
    let mut group_sizes = serde_json::Map::new();
    for g in &login_groups {
        match &*fetch_group(g) {
            Ok(Some(members)) => {
                group_sizes.insert(g.clone(), json!(members.len()));
                for m in members {
                    let Ok(iam_user) = IamUser::parse(m) else {
                        rep.skipped.push(json!({"iam_user": crate::username::sanitize(m), "reason": "not a valid IAM name"}));
                        continue;
                    };
                    match iam_to_linux(&iam_user, cfg.name_case) {
                        Ok(linux) => {
                            wanted.insert(linux, iam_user);
                        }
                        Err(why) => rep.skipped.push(
                            json!({"iam_user": m, "reason": format!("no Linux name: {why}")}),
                        ),
                    }
                }
            }
            Ok(None) => {
                complete = false;
                rep.errors.push(format!("IAM group {g} does not exist"));
            }
            Err(e) => {
                complete = false;
                rep.errors.push(format!("cannot list IAM group {g}: {e}"));
            }
        }
    }
    let sudo_unread = sudo_tag.is_some() && sudo_groups.is_empty() && !sudo_revoke_all;
    let mut sudo_wanted: Option<BTreeSet<String>> = (!sudo_unread).then(BTreeSet::new);
    for g in &sudo_groups {
        match &*fetch_group(g) {
            Ok(Some(members)) => {
                if let Some(s) = sudo_wanted.as_mut() {
                    s.extend(members.iter().filter_map(|m| {
                        IamUser::parse(m)
                            .ok()
                            .and_then(|u| iam_to_linux(&u, cfg.name_case).ok())
                    }));
                }
            }
            Ok(None) => {
                sudo_wanted = None;
                complete = false;
                rep.errors.push(format!(
                    "IAM sudo group {g} does not exist; sudoers left as is"
                ));
            }
            Err(e) => {
                sudo_wanted = None;
                complete = false;
                rep.errors.push(format!(
                    "cannot list IAM sudo group {g}: {e}; sudoers left as is"
                ));
            }
        }
    }

    // --- local accounts ----------------------------------------------------------------------------------
    let mut local = accounts()?;
    let marker_exists = group_members(&args.managed_group)?.is_some();
    if !marker_exists && !args.dry_run {
        run_tool("groupadd", &["--system", &args.managed_group]).map_err(Error::Config)?;
    }
    let managed_now = |local: &BTreeMap<String, Account>| -> Result<BTreeSet<String>, Error> {
        Ok(group_members(&args.managed_group)?
            .unwrap_or_default()
            .into_iter()
            .filter(|m| {
                local
                    .get(m)
                    .is_some_and(|a| a.uid != 0 && a.uid >= cfg.accounts.min_uid)
            })
            .collect())
    };
    let managed = managed_now(&local)?;
    let comment_of = |iam: &IamUser| format!("IAM user {iam} (managed by iam-authorized-keys)");
    for (linux, iam_user) in &wanted {
        match local.get(linux) {
            None => {
                rep.created.push(linux.clone());
                if args.dry_run {
                    continue;
                }
                let comment = comment_of(iam_user);
                // New UIDs start at --min-uid when that is above the system's default (1000), so the
                // key command never treats an account this tool made as a system account.
                let uid_min = format!("UID_MIN={}", cfg.accounts.min_uid.max(1000));
                let made = run_tool(
                    "useradd",
                    &[
                        "--create-home",
                        "--shell",
                        &args.shell,
                        "--user-group",
                        "--groups",
                        &args.managed_group,
                        "--comment",
                        &comment,
                        "-K",
                        &uid_min,
                        "--",
                        linux,
                    ],
                )
                // No password, but not locked: with UsePAM no, sshd refuses a '!' password field.
                .and_then(|()| run_tool("usermod", &["-p", "*", "--", linux]));
                if let Err(e) = made {
                    rep.created.pop();
                    rep.errors.push(e);
                }
            }
            Some(a) if managed.contains(linux) && a.locked => {
                rep.reactivated.push(linux.clone());
                if !args.dry_run {
                    if let Err(e) = run_tool("usermod", &["--expiredate", "", "-p", "*", "--", linux]) {
                        rep.reactivated.pop();
                        rep.errors.push(e);
                    }
                }
            }
            Some(_) if managed.contains(linux) => {}
            Some(a) => rep.skipped.push(json!({
                "user": linux,
                "reason": format!("a local account not created by this tool (uid {}): never touched", a.uid),
            })),
        }
    }
    if !args.dry_run {
        local = accounts()?;
    }
    let managed = if args.dry_run {
        managed
            .into_iter()
            .chain(rep.created.iter().cloned())
            .collect()
    } else {
        managed_now(&local)?
    };

    // --- prefetch keys so the first login is warm (parallel; moka: one lookup per user per run) ----------
    // Only into a cache directory that exists: one root created would be root's, and the sshd command
    // user would refuse it (records written here are handed to the directory's owner).
    let cache_ready = match cfg.cache_dir.as_deref() {
        Some(dir) if !args.dry_run => match fsutil::check_dir(dir) {
            Ok(_) => true,
            Err(e) => {
                rep.errors.push(format!(
                    "keys not prefetched: cache directory {e}; create it owned by the AuthorizedKeysCommandUser \
                     (install.sh does; by hand: install -d -m 0700 -o USER {})",
                    dir.display()
                ));
                false
            }
        },
        _ => false,
    };
    if cache_ready {
        let lookups: moka::sync::Cache<String, Arc<serde_json::Value>> =
            moka::sync::Cache::new(4096);
        let todo: Vec<(&String, &IamUser)> = wanted
            .iter()
            .filter(|(l, _)| managed.contains(*l))
            .collect();
        let results = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for chunk in todo.chunks(todo.len().div_ceil(4).max(1)) {
                let (lookups, results) = (&lookups, &results);
                scope.spawn(move || {
                    for (linux, _) in chunk {
                        let v = lookups
                            .get_with((*linux).clone(), || Arc::new(prefetch(cfg, linux, log)));
                        if let Ok(mut r) = results.lock() {
                            r.push((*v).clone());
                        }
                    }
                });
            }
        });
        let mut r = results.into_inner().unwrap_or_default();
        r.sort_by(|a, b| a["user"].as_str().cmp(&b["user"].as_str()));
        rep.prefetched = r;
    }

    // --- sudo --------------------------------------------------------------------------------------------
    if let (Some(sudo), true) = (
        &sudo_wanted,
        !args.sudo_group.is_empty() || sudo_tag.is_some(),
    ) {
        let want: BTreeSet<String> = sudo.intersection(&managed).cloned().collect();
        let current_text = std::fs::read_to_string(&args.sudoers_file).unwrap_or_default();
        let current: BTreeSet<String> = current_text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        rep.granted = want.difference(&current).cloned().collect();
        rep.revoked = current.difference(&want).cloned().collect();
        let text = sudoers_text(&want);
        if text != current_text {
            rep.sudoers_changed = true;
            if !args.dry_run {
                if let Err(e) = install_sudoers(&args.sudoers_file, &text) {
                    rep.sudoers_changed = false;
                    rep.errors.push(format!("sudoers not changed: {e}"));
                }
            }
        }
    }

    // --- removal: only after a complete run, only managed accounts, only after N absences -------------
    let mut state = read_state(&args.state, log);
    if complete && rep.errors.is_empty() {
        rep.removal_phase = "ran";
        let mut next = BTreeMap::new();
        for m in &managed {
            if wanted.contains_key(m) {
                continue;
            }
            let Some(acct) = local.get(m) else { continue };
            if acct.locked && args.remove == "lock" {
                continue; // removed earlier
            }
            let count = state.absent.get(m).copied().unwrap_or(0) + 1;
            if count < args.remove_after {
                rep.absent.push(
                    json!({"user": m, "absent_syncs": count, "removed_at": args.remove_after}),
                );
                next.insert(m.clone(), count);
                continue;
            }
            let how = args.remove.as_str();
            let done = if args.dry_run {
                Ok(())
            } else if how == "delete" {
                run_tool("userdel", &["--remove", "--", m])
            } else {
                run_tool("usermod", &["--lock", "--expiredate", "1", "--", m])
            };
            match done {
                Ok(()) => rep
                    .removed
                    .push(json!({"user": m, "how": how, "absent_syncs": count})),
                Err(e) => {
                    rep.errors.push(e);
                    next.insert(m.clone(), count);
                }
            }
        }
        state.absent = next;
    } else {
        rep.removal_phase =
            "skipped: an IAM answer was missing or incomplete; nothing removed, counters kept";
        log.warn(
            "sync-users: removal phase skipped because an IAM answer was missing or incomplete",
        );
    }
    state.version = STATE_VERSION;
    if !args.dry_run {
        if let Err(e) = write_state(&args.state, &state) {
            rep.errors
                .push(format!("cannot write {}: {e}", args.state.display()));
        }
    }

    let ok = rep.errors.is_empty();
    let v = json!({
        "ok": ok,
        "dry_run": args.dry_run,
        "groups": group_sizes,
        "tags": rep.tags,
        "created": rep.created,
        "reactivated": rep.reactivated,
        "prefetched": rep.prefetched,
        "sudo": {"granted": rep.granted, "revoked": rep.revoked, "changed": rep.sudoers_changed,
                 "file": args.sudoers_file},
        "absent": rep.absent,
        "removed": rep.removed,
        "removal_phase": rep.removal_phase,
        "skipped": rep.skipped,
        "warnings": rep.warnings,
        "errors": rep.errors,
    });
    for w in &rep.warnings {
        log.warn(&format!("sync-users: {w}"));
    }
    for e in v["errors"].as_array().into_iter().flatten() {
        log.error(&format!("sync-users: {}", e.as_str().unwrap_or("")));
    }
    output::emit(&if cfg.json {
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into());
        s.push('\n');
        s
    } else {
        render(&v)
    })?;
    if ok {
        Ok(())
    } else {
        Err(Error::Sync(v["errors"].as_array().map_or(0, Vec::len)))
    }
}

/// Fetches `linux`'s keys into the cache through the same path as a login (account rules included).
fn prefetch(cfg: &Config, linux: &str, log: &Log) -> serde_json::Value {
    let login = match LoginName::parse(linux, cfg.name_case) {
        Ok(l) => l,
        Err(e) => return json!({"user": linux, "result": "failed", "error": e.to_string()}),
    };
    crate::cmd::cache::warm_one(cfg, &login, log)
}

fn render(v: &serde_json::Value) -> String {
    let list = |k: &str| -> Vec<String> {
        v[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    let mut s = String::new();
    let dry = if v["dry_run"] == json!(true) {
        "would be "
    } else {
        ""
    };
    s.push_str(&format!(
        "sync-users{}: groups {}\n",
        if dry.is_empty() {
            ""
        } else {
            " (dry run: nothing changed)"
        },
        v["groups"]
    ));
    for t in v["tags"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{} {}: {}\n",
            t["option"].as_str().unwrap_or(""),
            t["key"].as_str().unwrap_or(""),
            output::joined(&t["groups"])
        ));
    }
    for (k, label) in [("created", "created"), ("reactivated", "reactivated")] {
        let l = list(k);
        if !l.is_empty() {
            s.push_str(&format!("{dry}{label}: {}\n", l.join(", ")));
        }
    }
    for p in v["prefetched"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "keys {}: {} {}\n",
            p["user"].as_str().unwrap_or(""),
            p["result"].as_str().unwrap_or(""),
            p.get("keys")
                .map(|k| format!("({k} key(s) from {})", p["source"].as_str().unwrap_or("")))
                .or_else(|| p.get("error").or(p.get("reason")).map(|e| e.to_string()))
                .unwrap_or_default()
        ));
    }
    let sudo = &v["sudo"];
    for (k, label) in [("granted", "sudo granted"), ("revoked", "sudo revoked")] {
        let l: Vec<&str> = sudo[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str())
            .collect();
        if !l.is_empty() {
            s.push_str(&format!("{dry}{label}: {}\n", l.join(", ")));
        }
    }
    for a in v["absent"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "absent from IAM: {} ({} of {} syncs before removal)\n",
            a["user"].as_str().unwrap_or(""),
            a["absent_syncs"],
            a["removed_at"]
        ));
    }
    for r in v["removed"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "{dry}removed ({}): {}\n",
            r["how"].as_str().unwrap_or(""),
            r["user"].as_str().unwrap_or("")
        ));
    }
    s.push_str(&format!(
        "removal phase: {}\n",
        v["removal_phase"].as_str().unwrap_or("")
    ));
    for k in v["skipped"].as_array().into_iter().flatten() {
        s.push_str(&format!("skipped: {k}\n"));
    }
    for w in list("warnings") {
        s.push_str(&format!("WARNING: {w}\n"));
    }
    for e in list("errors") {
        s.push_str(&format!("ERROR: {e}\n"));
    }
    s
}
