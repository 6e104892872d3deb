//! placeholder
use std::path::PathBuf;
pub fn boot(_r: u32, _t: Option<PathBuf>, _n: bool, _echo: bool) -> anyhow::Result<bool> {
    Ok(false)
}
