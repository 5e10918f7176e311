//! What a freshly started single node (`parley`) exports at `/metrics`.

use std::path::Path;
use testkit::binary::{Binary, missing_dashboard_metrics};

#[tokio::test]
async fn a_fresh_single_node_exports_every_metric_the_dashboard_uses() {
    let node = Binary::start(
        Path::new(env!("CARGO_BIN_EXE_parley")),
        &[],
        "node listening",
    )
    .await;
    let body = node.scrape().await;
    node.stop().await;
    let missing = missing_dashboard_metrics(&body, &[""]);
    assert!(
        missing.is_empty(),
        "a fresh single node does not export {missing:?}; its /metrics:\n{body}"
    );
}
