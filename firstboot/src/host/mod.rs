//! The box's own first-boot steps, one file each with the work it does:
//! what the hardware is, what the site says, how the box is sized, its
//! secrets, disk, network and system settings, the offline registry, and
//! the summary at ready. They run on every profile, with or without a cloud.

pub mod discover;
pub mod network;
pub mod plan;
pub mod ready;
pub mod registry;
pub mod secrets;
pub mod site_config;
pub mod storage;
pub mod system;
