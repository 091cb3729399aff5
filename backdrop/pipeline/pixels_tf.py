"""The per-pixel operations as TensorFlow ops (placed on the GPU when TensorFlow sees one)."""

from __future__ import annotations

import cv2
import numpy as np
import tensorflow as tf

# cv2.cvtColor(BGR2GRAY) weights, applied to B, G, R.
_GRAY = tf.constant([0.114, 0.587, 0.299], tf.float32)


def _to_uint8(values: tf.Tensor) -> np.ndarray:
    return tf.cast(tf.clip_by_value(tf.round(values), 0.0, 255.0), tf.uint8).numpy()


def _mirror_pad(pixels: tf.Tensor, pad_h: int, pad_w: int) -> tf.Tensor:
    # SYMMETRIC repeats the edge pixel, like OpenCV's BORDER_REFLECT; small images are padded in steps.
    while pad_h or pad_w:
        step_h, step_w = min(pad_h, int(pixels.shape[1])), min(pad_w, int(pixels.shape[2]))
        pixels = tf.pad(pixels, [[0, 0], [step_h, step_h], [step_w, step_w], [0, 0]], mode="SYMMETRIC")
        pad_h, pad_w = pad_h - step_h, pad_w - step_w
    return pixels


def _depthwise(pixels: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    planes = pixels if pixels.ndim == 3 else pixels[..., None]
    channels = planes.shape[2]
    kh, kw = kernel.shape
    x = _mirror_pad(tf.convert_to_tensor(planes[None], tf.float32), kh // 2, kw // 2)
    filters = tf.tile(tf.convert_to_tensor(kernel, tf.float32)[:, :, None, None], [1, 1, channels, 1])
    y = tf.nn.depthwise_conv2d(x, filters, strides=[1, 1, 1, 1], padding="VALID")[0].numpy()
    return y if pixels.ndim == 3 else y[..., 0]


class TensorFlowPixels:
    name = "tensorflow"

    def resize(self, pixels: np.ndarray, width: int, height: int) -> np.ndarray:
        if pixels.shape[1] == width and pixels.shape[0] == height:
            return pixels
        shrinking = width * height < pixels.shape[0] * pixels.shape[1]
        planes = pixels if pixels.ndim == 3 else pixels[..., None]
        resized = tf.image.resize(
            tf.convert_to_tensor(planes, tf.float32), (height, width), method="area" if shrinking else "bilinear"
        )
        result = _to_uint8(resized) if pixels.dtype == np.uint8 else resized.numpy().astype(pixels.dtype)
        return result if pixels.ndim == 3 else result[..., 0]

    def gaussian(self, pixels: np.ndarray, sigma: float) -> np.ndarray:
        size = round(sigma * 8 + 1) | 1  # OpenCV's kernel size for float images
        line = cv2.getGaussianKernel(size, sigma).astype(np.float32)[:, 0]
        return _depthwise(_depthwise(pixels, line[None, :]), line[:, None])

    def convolve(self, pixels: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        return _depthwise(pixels, kernel)

    def matte(self, gain: np.ndarray, offset: np.ndarray, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        planes = tf.image.resize(tf.convert_to_tensor(np.stack([gain, offset], -1), tf.float32), (height, width))
        gray = tf.reduce_sum(tf.cast(image, tf.float32) * _GRAY, axis=-1)
        return _to_uint8(planes[..., 0] * tf.round(gray) + planes[..., 1])

    def composite(self, foreground: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        a = tf.cast(alpha, tf.float32)[..., None] / 255.0
        mixed = tf.cast(foreground, tf.float32) * a + tf.cast(background, tf.float32) * (1.0 - a)
        return _to_uint8(mixed)
