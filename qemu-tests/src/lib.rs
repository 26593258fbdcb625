//! End-to-end tests for ciab images: a QEMU harness (serial over a socket,
//! QMP, power cut, port forwards, the child killed on drop), helpers that
//! build the test images once per run, and the benchmark.

pub mod guest_disk;
pub mod harness;
pub mod images;
pub mod oci_fixtures;
pub mod scs;
