//! What a freshly started `parley-api` process exports at `/metrics`.

use std::path::Path;
use testkit::binary::{Binary, missing_dashboard_metrics, unique_redis_prefix};

#[tokio::test]
async fn a_fresh_api_exports_every_api_metric_the_dashboard_uses() {
    let db = testkit::TestDatabase::create()
        .await
        .expect("a test database");
    let api = Binary::start(
        Path::new(env!("CARGO_BIN_EXE_parley-api")),
        &[
            ("PARLEY_DATABASE_URL", db.url.clone()),
            ("PARLEY_REDIS_URL", testkit::redis_url()),
            ("PARLEY_REDIS_PREFIX", unique_redis_prefix()),
        ],
        "api listening",
    )
    .await;
    let body = api.scrape().await;
    api.stop().await;
    db.drop_database().await;
    let missing =
        missing_dashboard_metrics(&body, &["api_", "http_", "store_", "broker_", "process_"]);
    assert!(
        missing.is_empty(),
        "a fresh api does not export {missing:?}; its /metrics:\n{body}"
    );
}
