//! ciab: builds signed, reproducible Cloud-in-a-Box appliance disk images.
//!
//! The binary `ciab` is a thin layer over this library: `cli` parses,
//! each verb lives in its own module.

pub mod blockmap;
pub mod build;
pub mod cache;
pub mod cli;
pub mod dates;
pub mod doctor;
pub mod flash;
pub mod fsutil;
pub mod guests;
pub mod fetch;
pub mod kmod;
pub mod lock;
pub mod mirror;
pub mod oci;
pub mod progress;
pub mod qemu;
pub mod run;
pub mod sign;
pub mod spec;
pub mod stages;
pub mod tree;
pub mod verify;
pub mod writers;
