-- Input images (img2img init images, inpainting masks), stored once by content: the sha256
-- (hex) of the image file's bytes. A job's request names them "sha256:<hex>", so reading a
-- job decodes no image and job lists carry no image data. Written in the transaction that
-- queues the job, so no committed job names a missing image. Jobs queued before this
-- migration carried their images inline; a step after this file moves them here
-- (store/inputs.py, move_inline_inputs).
CREATE TABLE input_images (
    sha256 TEXT PRIMARY KEY,
    data {blob} NOT NULL,
    bytes INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
