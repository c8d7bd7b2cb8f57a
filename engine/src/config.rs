//! Engine tuning: `engine.windowMs` and `engine.causalThresholdNs` from the
//! Helm values (defaults as in the chart: 100 ms, 50 µs).

use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::Path;

/// How the engine correlates and what becomes an edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Events are grouped in windows of this length (`engine.windowMs`): a
    /// cause is looked for in the effect's interval and up to one window
    /// before it, and the streaming engine emits a window once it is this
    /// far behind the newest event.
    pub window_ns: u64,
    /// Smallest latency contribution that becomes an edge (`engine.causalThresholdNs`).
    pub threshold_ns: u64,
    /// The span (or resource) attribute that holds the transaction id.
    pub txn_attribute: String,
    /// How far the engine follows "waited for another thread" edges.
    pub max_depth: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { window_ns: 100_000_000, threshold_ns: 50_000, txn_attribute: "transaction.id".into(), max_depth: 4 }
    }
}

#[derive(Deserialize, Default)]
struct Values {
    #[serde(default)]
    engine: EngineValues,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct EngineValues {
    window_ms: Option<u64>,
    causal_threshold_ns: Option<u64>,
    transaction_attribute: Option<String>,
}

impl EngineConfig {
    /// Reads `engine.windowMs`, `engine.causalThresholdNs` (and the optional
    /// `engine.transactionAttribute`) from a Helm values file; missing
    /// values keep their defaults.
    pub fn from_values_file(path: &Path) -> Result<EngineConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_values_str(&text).with_context(|| format!("{}: bad values file", path.display()))
    }

    /// As [`EngineConfig::from_values_file`], from the YAML text.
    pub fn from_values_str(text: &str) -> Result<EngineConfig> {
        let v: Values = serde_yaml_ng::from_str(text)?;
        let mut c = EngineConfig::default();
        if let Some(w) = v.engine.window_ms {
            anyhow::ensure!(w > 0, "engine.windowMs must be positive");
            c.window_ns = w * 1_000_000;
        }
        if let Some(t) = v.engine.causal_threshold_ns {
            c.threshold_ns = t;
        }
        if let Some(a) = v.engine.transaction_attribute {
            c.txn_attribute = a;
        }
        Ok(c)
    }
}

/// `kafka.replicationFactor` of a Helm values file, if it sets one.
pub fn kafka_replication_factor(path: &Path) -> Result<Option<i32>> {
    #[derive(Deserialize, Default)]
    struct V {
        #[serde(default)]
        kafka: K,
    }
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase")]
    struct K {
        replication_factor: Option<i32>,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: V = serde_yaml_ng::from_str(&text).with_context(|| format!("{}: bad values file", path.display()))?;
    Ok(v.kafka.replication_factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_values() {
        let c = EngineConfig::from_values_str("engine:\n  windowMs: 100\n  causalThresholdNs: 50000\nneo4j:\n  password: x\n").unwrap();
        assert_eq!(c, EngineConfig::default());
        let c = EngineConfig::from_values_str("engine:\n  windowMs: 50\n").unwrap();
        assert_eq!(c.window_ns, 50_000_000);
        assert!(EngineConfig::from_values_str("engine:\n  windowMs: fast\n").is_err());
    }
}
