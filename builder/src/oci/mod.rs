//! The data model of the offline registry: digests, image references,
//! platforms, manifests as the registry serves them, and Docker
//! Distribution's storage layout that the box's `docker-registry` reads.
//! Nothing here touches the network; fetching lives in [`crate::fetch`].

pub mod digest;
pub mod distribution;
pub mod media;
pub mod platform;
pub mod reference;
