//! `ciab-firstboot`: the service that turns a generic ciab image into one box's
//! system on its first power-on. The on-disk contract it reads is
//! `ciab_core::contract`, shared with the builder and the installer.

pub mod cloud;
pub mod discover;
pub mod engine;
pub mod journal;
pub mod network;
pub mod status;
pub mod plan;
pub mod registry;
pub mod secrets;
pub mod site;
pub mod site_source;
pub mod steps;
pub mod storage;
