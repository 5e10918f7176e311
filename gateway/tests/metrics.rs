//! What a freshly started `parley-gateway` process exports at `/metrics`.

use std::path::Path;
use testkit::binary::{Binary, missing_dashboard_metrics, unique_redis_prefix};

#[tokio::test]
async fn a_fresh_gateway_exports_every_gateway_metric_the_dashboard_uses() {
    let db = testkit::TestDatabase::create()
        .await
        .expect("a test database");
    let keys = shared::auth::KeyPair::generate();
    let gateway = Binary::start(
        Path::new(env!("CARGO_BIN_EXE_parley-gateway")),
        &[
            ("PARLEY_DATABASE_URL", db.url.clone()),
            ("PARLEY_REDIS_URL", testkit::redis_url()),
            ("PARLEY_REDIS_PREFIX", unique_redis_prefix()),
            ("PARLEY_JWT_PUBLIC_KEY", keys.public_pem.clone()),
        ],
        "gateway listening",
    )
    .await;
    let body = gateway.scrape().await;
    gateway.stop().await;
    db.drop_database().await;
    let missing = missing_dashboard_metrics(&body, &["gateway_", "broker_", "process_"]);
    assert!(
        missing.is_empty(),
        "a fresh gateway does not export {missing:?}; its /metrics:\n{body}"
    );
}
