//! The admin commands, one file each. They sit above the lookup core: they may call `lookup` and the
//! modules below it, and nothing in the core imports them.

pub mod cache;
pub mod docs;
pub mod doctor;
pub mod map;
pub mod sshd_unit;
pub mod sync_users;
