//! Turning an uploaded picture into the avatar that is served.
//!
//! The upload is never served as it came: it is decoded (within the same
//! limits as thumbnails, so a decompression bomb fails on its header),
//! cropped to the centre square, scaled down to at most [`AVATAR_SIZE`] a
//! side and encoded again. What is served is therefore always a small PNG
//! or JPEG made by us: no EXIF (location, camera serial), no second
//! payload hidden after the image, no huge pixel count for clients to
//! decode.

use crate::attachments::thumbnails::DecodeLimits;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// The side of an avatar, in pixels: a profile picture at three times the
/// density of a large list avatar (about 80 px). Smaller squares stay as
/// they are, never enlarged.
pub const AVATAR_SIZE: u32 = 256;

/// JPEG quality of avatars: as for thumbnails.
const JPEG_QUALITY: u8 = 85;

/// An avatar ready to store.
pub struct Avatar {
    pub side: u32,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

/// Decodes `bytes` within `limits`, crops the centre square and scales it
/// to at most [`AVATAR_SIZE`]: PNG when the image has transparency, JPEG
/// otherwise; a GIF gives its first frame. CPU-bound: call it on a blocking
/// thread. The error is the reason, for the log.
pub fn render(bytes: &[u8], limits: DecodeLimits) -> Result<Avatar, String> {
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| e.to_string())
    };
    // The declared size first: a bomb is refused before any pixel exists.
    let (width, height) = reader()?.into_dimensions().map_err(|e| e.to_string())?;
    if width > limits.max_dimension || height > limits.max_dimension {
        return Err(format!(
            "{width}x{height} is over the {} px limit",
            limits.max_dimension
        ));
    }
    let mut decode_limits = Limits::default();
    decode_limits.max_image_width = Some(limits.max_dimension);
    decode_limits.max_image_height = Some(limits.max_dimension);
    decode_limits.max_alloc = Some(limits.max_alloc);
    let mut reader = reader()?;
    reader.limits(decode_limits);
    let image = reader.decode().map_err(|e| e.to_string())?;
    let side = width.min(height);
    if side == 0 {
        return Err("the image has no pixels".into());
    }
    let square = image.crop_imm((width - side) / 2, (height - side) / 2, side, side);
    let small = if side > AVATAR_SIZE {
        square.thumbnail_exact(AVATAR_SIZE, AVATAR_SIZE)
    } else {
        square
    };
    let mut out = Cursor::new(Vec::new());
    let content_type = if small.color().has_alpha() {
        DynamicImage::ImageRgba8(small.to_rgba8())
            .write_to(&mut out, ImageFormat::Png)
            .map_err(|e| e.to_string())?;
        "image/png"
    } else {
        let rgb = DynamicImage::ImageRgb8(small.to_rgb8());
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY);
        rgb.write_with_encoder(encoder).map_err(|e| e.to_string())?;
        "image/jpeg"
    };
    Ok(Avatar {
        side: small.width(),
        content_type,
        bytes: out.into_inner(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DecodeLimits = DecodeLimits {
        max_dimension: 4096,
        max_alloc: 64 * 1024 * 1024,
    };

    fn encoded(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_wide_photo_becomes_a_centred_square_of_the_avatar_size() {
        let photo = DynamicImage::ImageRgb8(image::RgbImage::from_fn(1000, 500, |x, _| {
            if (250..750).contains(&x) {
                image::Rgb([0, 200, 0])
            } else {
                image::Rgb([200, 0, 0])
            }
        }));
        let avatar = render(&encoded(photo, ImageFormat::Png), LIMITS).unwrap();
        assert_eq!(avatar.content_type, "image/jpeg");
        let decoded = image::load_from_memory(&avatar.bytes).unwrap().to_rgb8();
        assert_eq!(decoded.dimensions(), (AVATAR_SIZE, AVATAR_SIZE));
        // The centre square is the green band: no red from the sides.
        let corner = decoded.get_pixel(0, 0);
        assert!(corner[1] > 150 && corner[0] < 60, "{corner:?}");
    }

    #[test]
    fn transparency_keeps_a_png_and_small_squares_are_not_enlarged() {
        let icon = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            40,
            60,
            image::Rgba([1, 2, 3, 0]),
        ));
        let avatar = render(&encoded(icon, ImageFormat::Png), LIMITS).unwrap();
        assert_eq!(avatar.content_type, "image/png");
        assert_eq!(avatar.side, 40);
    }

    #[test]
    fn exif_and_trailing_bytes_do_not_survive() {
        let photo =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(300, 300, image::Rgb([9, 9, 9])));
        let mut jpeg = encoded(photo, ImageFormat::Jpeg);
        // An APP1 "Exif" segment right after SOI, and a payload after EOI.
        let exif = b"\xff\xe1\x00\x10Exif\x00\x00SECRETGPS";
        jpeg.splice(2..2, exif.iter().copied());
        jpeg.extend_from_slice(b"<script>alert(1)</script>");
        let avatar = render(&jpeg, LIMITS).unwrap();
        let contains = |needle: &[u8]| avatar.bytes.windows(needle.len()).any(|w| w == needle);
        assert!(!contains(b"Exif"));
        assert!(!contains(b"SECRETGPS"));
        assert!(!contains(b"<script>"));
    }

    #[test]
    fn a_declared_size_over_the_limit_is_refused() {
        let limits = DecodeLimits {
            max_dimension: 100,
            max_alloc: 64 * 1024 * 1024,
        };
        let big = DynamicImage::ImageRgb8(image::RgbImage::new(101, 10));
        assert!(render(&encoded(big, ImageFormat::Png), limits).is_err());
    }

    #[test]
    fn garbage_with_an_image_header_fails_without_panicking() {
        assert!(render(b"\x89PNG\r\n\x1a\nnot really", LIMITS).is_err());
        assert!(render(b"GIF89a", LIMITS).is_err());
    }
}
