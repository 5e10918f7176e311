//! Where attachment bytes live: the seam.
//!
//! The seam is `object_store`'s `ObjectStore` trait, which already has the
//! two engines we need behind one interface (multipart uploads, ranged
//! reads, deletes): the data directory on a single node
//! (`LocalFileSystem`), and any S3-compatible bucket in a cluster
//! (`AmazonS3`: AWS, MinIO, Ceph, R2...). [`open`] chooses at start-up, the
//! one place that knows which; everything else sees `Arc<dyn ObjectStore>`.
//!
//! Keys are `attachments/<id>` for the file and `attachments/<id>.thumbnail`
//! for its thumbnail, the same in both engines (on disk: files under
//! `<data dir>/attachments/`).

use crate::config::AttachmentArgs;
use anyhow::Context;
use object_store::ObjectStore;
use object_store::path::Path;
use std::sync::Arc;

/// Which engine, for logs and the start-up banner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Disk,
    S3,
}

/// The attachment store: the data directory unless a bucket is configured.
pub fn open(
    config: &AttachmentArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<(Arc<dyn ObjectStore>, Engine)> {
    match &config.s3_bucket {
        Some(bucket) => {
            use object_store::aws::AmazonS3Builder;
            use secrecy::ExposeSecret;
            // The usual AWS_* variables first (roles, session tokens), the
            // PARLEY_S3_* settings over them.
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_region(&config.s3_region)
                .with_allow_http(config.s3_allow_http);
            if let Some(endpoint) = &config.s3_endpoint {
                // Path-style requests (`endpoint/bucket/key`) work with every
                // S3-compatible server; virtual hosts need DNS per bucket.
                builder = builder
                    .with_endpoint(endpoint)
                    .with_virtual_hosted_style_request(false);
            }
            if let Some(key) = &config.s3_access_key_id {
                builder = builder.with_access_key_id(key);
            }
            if let Some(secret) = &config.s3_secret_access_key {
                builder = builder.with_secret_access_key(secret.expose_secret());
            }
            let store = builder
                .build()
                .with_context(|| format!("configuring the S3 bucket {bucket:?}"))?;
            Ok((Arc::new(store), Engine::S3))
        }
        None => {
            std::fs::create_dir_all(data_dir.join("attachments"))
                .with_context(|| format!("creating {}", data_dir.join("attachments").display()))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(data_dir)
                .with_context(|| format!("opening {} for attachments", data_dir.display()))?;
            Ok((Arc::new(store), Engine::Disk))
        }
    }
}

/// The key of attachment `id`'s bytes.
pub fn original_key(id: &str) -> Path {
    Path::from(format!("attachments/{id}"))
}

/// The key of attachment `id`'s thumbnail.
pub fn thumbnail_key(id: &str) -> Path {
    Path::from(format!("attachments/{id}.thumbnail"))
}

/// The part size of an upload: S3 refuses parts under 5 MiB (but the last);
/// on disk a smaller part holds less memory per upload.
pub fn part_size(engine: Engine) -> usize {
    match engine {
        Engine::S3 => 5 * 1024 * 1024,
        Engine::Disk => 1024 * 1024,
    }
}
