//! What the box knows about itself, and how it works that out: the
//! hardware (`hardware`), the site configuration and where it comes from
//! (`site`, `site_source`), the sizing plan (`plan`) and the secret store
//! (`secrets`). Nothing here is a step or knows the step context: the steps
//! in `host` and `cloud` and the context they share (`crate::ctx`) build on
//! these, and the installer reads the site configuration through them.

pub mod hardware;
pub mod plan;
pub mod secrets;
pub mod site;
pub mod site_source;
