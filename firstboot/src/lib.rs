//! `ciab-firstboot`: the service that turns a generic ciab image into one box's
//! system on its first power-on. The on-disk contract it reads is
//! `ciab_core::contract`, shared with the builder and the installer.

pub mod cloud;
pub mod ctx;
pub mod engine;
pub mod host;
pub mod http;
pub mod model;
pub mod status;
pub mod steps;
