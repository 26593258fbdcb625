//! placeholder
use anyhow::Result;
pub fn run(_a: &crate::cli::RunArgs) -> Result<()> { anyhow::bail!("todo") }
pub fn up(_a: &crate::cli::UpArgs) -> Result<()> { anyhow::bail!("todo") }
