//! `ciab-firstboot`: the service that turns a generic ciab image into one box's
//! system on its first power-on, plus the on-disk contract (`contract`) that the
//! builder writes and the box reads. The contract lives here, once, so the
//! builder and the box can never disagree about it.

pub mod atomic;
pub mod blockdev;
pub mod cloud;
pub mod contract;
pub mod discover;
pub mod engine;
pub mod journal;
pub mod network;
pub mod status;
pub mod exec;
pub mod flash;
pub mod installer;
pub mod plan;
pub mod registry;
pub mod secrets;
pub mod site;
pub mod site_source;
pub mod sparse;
pub mod steps;
pub mod storage;
