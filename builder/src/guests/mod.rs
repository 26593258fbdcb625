//! The guest images the builder makes for the bundle, which first boot
//! registers in Glance: not stages of the image's own build, but disks of
//! their own that the bundle stage puts into its tree.
//!
//! - [`tiny`]: the busybox test guest, from the image's own kernel;
//! - [`debian`]: a Debian generic cloud image with cloud-init, cached apart
//!   from the image's tree.

pub mod debian;
pub mod tiny;
