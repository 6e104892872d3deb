//! placeholder
use std::path::PathBuf;
pub fn run(_thinvm: Option<PathBuf>, _echo: bool) -> anyhow::Result<bool> {
    Ok(false)
}
