//! `thinvm bench-api` (hidden, run by `cargo xtask bench density`): latency of the daemon's
//! API as a client sees it, over one Unix socket connection per request (as the CLI makes).
//! Requests alternate between `GET /v1/vms` (the list, from the database and every VMM's
//! state) and `GET /v1/vms/NAME` for each VM in turn.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};

/// Percentile `p` (0..=100) of sorted `v`, nearest rank.
pub fn percentile(v: &[u64], p: u32) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let rank = (u64::from(p.min(100)) * v.len() as u64)
        .div_ceil(100)
        .max(1);
    v.get(rank as usize - 1).copied()
}

/// Sends `requests` requests and prints one `@@API ...@@` line with p50 and p99 in µs.
pub fn run(socket: &Path, requests: usize) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let client = api::client::Client::new(socket);
    let lat = rt.block_on(async {
        let list: serde_json::Value = client
            .call("GET", "/v1/vms", None)
            .await
            .with_context(|| format!("GET /v1/vms on {}", socket.display()))?;
        let names: Vec<String> = list
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.get("name")?.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let mut lat = Vec::with_capacity(requests);
        for i in 0..requests {
            let uri = match names.get(i / 2 % names.len().max(1)) {
                Some(n) if i % 2 == 1 => format!("/v1/vms/{n}"),
                _ => "/v1/vms".to_string(),
            };
            let t = Instant::now();
            let r = client.request("GET", &uri, None).await?;
            lat.push(t.elapsed().as_micros() as u64);
            if r.status != 200 {
                bail!("GET {uri}: status {}", r.status);
            }
        }
        anyhow::Ok(lat)
    })?;
    let mut sorted = lat;
    sorted.sort_unstable();
    let (Some(p50), Some(p99)) = (percentile(&sorted, 50), percentile(&sorted, 99)) else {
        bail!("no requests were made");
    };
    println!(
        "@@API requests={} p50_us={p50} p99_us={p99}@@",
        sorted.len()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 99), Some(99));
        assert_eq!(percentile(&v, 100), Some(100));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[1, 2, 3], 0), Some(1));
        assert_eq!(percentile(&[], 50), None);
    }
}
