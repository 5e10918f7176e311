//! Thumbnails of image attachments, made off the request path.
//!
//! An upload of an image queues its id ([`Thumbnailer::enqueue`], never
//! waiting: a full queue drops the job, and the periodic sweep of pending
//! thumbnails queues it again). One dispatcher task owns the queue's
//! receiver and runs at most `workers` jobs at once (a semaphore); each job
//! reads the image from the attachment store and decodes, scales and
//! encodes it on a blocking thread, under `image::Limits` (largest width and
//! height, most memory), so a decompression bomb fails fast with an error
//! instead of taking the node's memory. The result is recorded by
//! `Store::thumbnail_done`, which appends `attachment.thumbnail_ready` to
//! the room when the image is already in a message; that event is
//! published like any other.
//!
//! Bounds: the queue (`PARLEY_THUMBNAIL_QUEUE` ids), the jobs in flight
//! (`PARLEY_THUMBNAIL_WORKERS`, each holding one image of at most the
//! upload limit plus its decoded pixels, at most `PARLEY_THUMBNAIL_MAX_ALLOC`).

use super::storage::{original_key, thumbnail_key};
use crate::config::AttachmentArgs;
use crate::events::Events;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use object_store::{ObjectStore, PutPayload};
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use store::{Store, ThumbnailRecorded, ThumbnailResult};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

/// The longest side of a thumbnail, in pixels: a chat bubble's preview at
/// twice the density of a phone screen.
pub const THUMBNAIL_SIZE: u32 = 320;

/// JPEG quality of thumbnails: small files, no visible blocks at 320 px.
const JPEG_QUALITY: u8 = 80;

/// The decode limits of one image.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    pub max_dimension: u32,
    pub max_alloc: u64,
}

/// A thumbnail made from an image.
pub struct Thumbnail {
    pub width: u32,
    pub height: u32,
    pub thumb_width: u32,
    pub thumb_height: u32,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

/// Why an image has no thumbnail.
#[derive(Debug)]
pub struct Undecodable {
    /// The size its header declares, when it could be read.
    pub dimensions: Option<(u32, u32)>,
    pub reason: String,
}

/// Decodes `bytes` within `limits` and scales it to fit
/// [`THUMBNAIL_SIZE`]: JPEG, or PNG when the image has transparency. GIFs
/// give their first frame. CPU-bound: call it on a blocking thread.
pub fn render(bytes: &[u8], limits: DecodeLimits) -> Result<Thumbnail, Undecodable> {
    let fail = |dimensions, reason: String| Undecodable { dimensions, reason };
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| fail(None, e.to_string()))
    };
    // The header alone first: a bomb declares its size there, and is
    // refused before a single pixel is allocated.
    let (width, height) = reader()?
        .into_dimensions()
        .map_err(|e| fail(None, e.to_string()))?;
    if width > limits.max_dimension || height > limits.max_dimension {
        return Err(fail(
            Some((width, height)),
            format!(
                "{width}x{height} is over the {} px limit",
                limits.max_dimension
            ),
        ));
    }
    let mut decode_limits = Limits::default();
    decode_limits.max_image_width = Some(limits.max_dimension);
    decode_limits.max_image_height = Some(limits.max_dimension);
    decode_limits.max_alloc = Some(limits.max_alloc);
    let mut reader = reader()?;
    reader.limits(decode_limits);
    let image = reader
        .decode()
        .map_err(|e| fail(Some((width, height)), e.to_string()))?;
    // Never enlarged: a small image is its own thumbnail.
    let small = if width <= THUMBNAIL_SIZE && height <= THUMBNAIL_SIZE {
        image
    } else {
        image.thumbnail(THUMBNAIL_SIZE, THUMBNAIL_SIZE)
    };
    let mut out = Cursor::new(Vec::new());
    let content_type = if small.color().has_alpha() {
        small
            .write_to(&mut out, ImageFormat::Png)
            .map_err(|e| fail(Some((width, height)), e.to_string()))?;
        "image/png"
    } else {
        let rgb = DynamicImage::ImageRgb8(small.to_rgb8());
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY);
        rgb.write_with_encoder(encoder)
            .map_err(|e| fail(Some((width, height)), e.to_string()))?;
        "image/jpeg"
    };
    Ok(Thumbnail {
        width,
        height,
        thumb_width: small.width(),
        thumb_height: small.height(),
        content_type,
        bytes: out.into_inner(),
    })
}

/// Queues thumbnail jobs for the dispatcher; cheap to share.
pub struct Thumbnailer {
    queue: mpsc::Sender<String>,
    /// The dispatcher, until [`Thumbnailer::close`] waits for it.
    dispatcher: Mutex<Option<JoinHandle<()>>>,
    stop: tokio_util::sync::CancellationToken,
}

/// What a job needs.
#[derive(Clone)]
struct Context {
    store: Store,
    blobs: Arc<dyn ObjectStore>,
    events: Events,
    limits: DecodeLimits,
}

impl Thumbnailer {
    /// Starts the dispatcher (needs a Tokio runtime).
    pub fn start(
        store: Store,
        blobs: Arc<dyn ObjectStore>,
        events: Events,
        config: &AttachmentArgs,
    ) -> Self {
        let (queue, jobs) = mpsc::channel(config.thumbnail_queue.max(1));
        let stop = tokio_util::sync::CancellationToken::new();
        let context = Context {
            store,
            blobs,
            events,
            limits: DecodeLimits {
                max_dimension: config.thumbnail_max_dimension,
                max_alloc: config.thumbnail_max_alloc,
            },
        };
        let dispatcher = tokio::spawn(dispatch(
            jobs,
            context,
            config.thumbnail_workers.max(1),
            stop.clone(),
        ));
        Self {
            queue,
            dispatcher: Mutex::new(Some(dispatcher)),
            stop,
        }
    }

    /// Queues a thumbnail of attachment `id`, without waiting: when the
    /// queue is full the job is left to the sweep of pending thumbnails.
    pub fn enqueue(&self, id: String) {
        match self.queue.try_send(id) {
            Ok(()) => metrics::gauge!("api_thumbnail_queue").increment(1.0),
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("api_thumbnails_total", "outcome" => "deferred").increment(1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Stops taking jobs and waits for those in flight.
    pub async fn close(&self) {
        self.stop.cancel();
        let handle = self.dispatcher.lock().ok().and_then(|mut d| d.take());
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }
}

async fn dispatch(
    mut jobs: mpsc::Receiver<String>,
    context: Context,
    workers: usize,
    stop: tokio_util::sync::CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(workers));
    let mut running = JoinSet::new();
    loop {
        let id = tokio::select! {
            _ = stop.cancelled() => break,
            id = jobs.recv() => match id {
                Some(id) => id,
                None => break,
            },
        };
        metrics::gauge!("api_thumbnail_queue").decrement(1.0);
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        // Reap finished jobs so the set stays as small as the slots.
        while running.try_join_next().is_some() {}
        let context = context.clone();
        running.spawn(async move {
            make(&context, &id).await;
            drop(slot);
        });
    }
    while running.join_next().await.is_some() {}
}

/// Makes and records the thumbnail of attachment `id`. A failure to read or
/// write the store leaves it pending, for the sweep to try again.
#[tracing::instrument(skip(context))]
async fn make(context: &Context, id: &str) {
    let bytes = match context.blobs.get(&original_key(id)).await {
        Ok(found) => match found.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(error = %e, "reading an image for its thumbnail failed");
                metrics::counter!("api_thumbnails_total", "outcome" => "error").increment(1);
                return;
            }
        },
        // Purged meanwhile: nothing to make.
        Err(object_store::Error::NotFound { .. }) => return,
        Err(e) => {
            tracing::warn!(error = %e, "reading an image for its thumbnail failed");
            metrics::counter!("api_thumbnails_total", "outcome" => "error").increment(1);
            return;
        }
    };
    let limits = context.limits;
    let rendered = tokio::task::spawn_blocking(move || render(&bytes, limits)).await;
    let result = match rendered {
        Ok(Ok(thumbnail)) => {
            let key = thumbnail_key(id);
            let stored = context
                .blobs
                .put(&key, PutPayload::from(thumbnail.bytes))
                .await;
            if let Err(e) = stored {
                tracing::warn!(error = %e, "storing a thumbnail failed");
                metrics::counter!("api_thumbnails_total", "outcome" => "error").increment(1);
                return;
            }
            ThumbnailResult::Ready {
                width: i64::from(thumbnail.width),
                height: i64::from(thumbnail.height),
                thumb_width: i64::from(thumbnail.thumb_width),
                thumb_height: i64::from(thumbnail.thumb_height),
                thumb_type: thumbnail.content_type,
            }
        }
        Ok(Err(undecodable)) => {
            tracing::info!(reason = %undecodable.reason, "no thumbnail: the image cannot be decoded within the limits");
            ThumbnailResult::Failed {
                width: undecodable.dimensions.map(|d| i64::from(d.0)),
                height: undecodable.dimensions.map(|d| i64::from(d.1)),
            }
        }
        Err(e) => {
            // The decoder panicked: a bug in it, not in the image's owner.
            tracing::error!(error = %e, "the image decoder panicked");
            ThumbnailResult::Failed {
                width: None,
                height: None,
            }
        }
    };
    let outcome = match result {
        ThumbnailResult::Ready { .. } => "ready",
        ThumbnailResult::Failed { .. } => "failed",
    };
    match context.store.thumbnail_done(id, result).await {
        Ok(ThumbnailRecorded::Recorded(event)) => {
            metrics::counter!("api_thumbnails_total", "outcome" => outcome).increment(1);
            if let Some(event) = event {
                context.events.room_event(&event).await;
            }
        }
        Ok(ThumbnailRecorded::Gone) => {
            // Deleted while we worked: take back what was just stored.
            if let Err(e) = context.blobs.delete(&thumbnail_key(id)).await
                && !matches!(e, object_store::Error::NotFound { .. })
            {
                tracing::warn!(error = %e, "removing the thumbnail of a deleted attachment failed");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "recording a thumbnail failed");
            metrics::counter!("api_thumbnails_total", "outcome" => "error").increment(1);
        }
    }
}

/// Describes and registers the thumbnail metrics at zero.
pub fn register_metrics() {
    metrics::describe_counter!(
        "api_thumbnails_total",
        "Thumbnail jobs by outcome: ready, failed (not decodable within the limits), deferred (queue full; the sweep retries), error (store unavailable; the sweep retries)"
    );
    for outcome in ["ready", "failed", "deferred", "error"] {
        metrics::counter!("api_thumbnails_total", "outcome" => outcome).increment(0);
    }
    metrics::describe_gauge!("api_thumbnail_queue", "Thumbnail jobs waiting for a worker");
    metrics::gauge!("api_thumbnail_queue").set(0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_dimension: 4096,
        max_alloc: 64 * 1024 * 1024,
    };

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_pixel(width, height, image::Rgb([200, 30, 30]));
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_photo_becomes_a_jpeg_that_fits_the_thumbnail_box() {
        let thumbnail = render(&png(1000, 500), LIMITS).unwrap();
        assert_eq!((thumbnail.width, thumbnail.height), (1000, 500));
        assert_eq!((thumbnail.thumb_width, thumbnail.thumb_height), (320, 160));
        assert_eq!(thumbnail.content_type, "image/jpeg");
        assert_eq!(&thumbnail.bytes[..3], b"\xff\xd8\xff");
    }

    /// CRC-32 (IEEE), as PNG chunks carry it.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn a_declared_size_over_the_limit_fails_before_decoding() {
        let mut bomb = png(1, 1);
        // IHDR's width and height (bytes 16..24): 100000 x 100000, with
        // the chunk's CRC (bytes 29..33) made right again.
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let failed = render(&bomb, LIMITS).err().expect("refused");
        assert_eq!(failed.dimensions, Some((100_000, 100_000)));
    }

    #[test]
    fn an_image_over_the_memory_limit_fails() {
        let limits = DecodeLimits {
            max_dimension: 4096,
            max_alloc: 1024,
        };
        assert!(render(&png(100, 100), limits).is_err());
    }

    #[test]
    fn garbage_fails_without_panicking() {
        assert!(render(b"\x89PNG\r\n\x1a\nnot really", LIMITS).is_err());
    }
}
