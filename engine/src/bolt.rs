//! placeholder
use crate::graph::CausalGraph;
use anyhow::Result;
/// x
pub struct BoltConfig {
    /// x
    pub uri: String,
    /// x
    pub user: String,
    /// x
    pub password: String,
    /// x
    pub db: String,
}
/// x
pub struct Store;
impl Store {
    /// x
    pub fn connect_blocking(_c: &BoltConfig) -> Result<Store> {
        anyhow::bail!("todo")
    }
    /// x
    pub fn save_blocking(&mut self, _g: &[CausalGraph]) -> Result<usize> {
        anyhow::bail!("todo")
    }
    /// x
    pub fn why_blocking(&mut self, _t: &str) -> Result<Option<CausalGraph>> {
        anyhow::bail!("todo")
    }
}
