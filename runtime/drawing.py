"""Drawing on frames: boxes with labels, the score heatmap with its colour scale, a caption.

Everything draws on a copy (the source frame is never changed) and is sized
from the frame, so labels stay legible from 320x240 to 4K.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

_PALETTE = ((0, 200, 255), (255, 128, 0), (0, 220, 0), (220, 0, 220), (0, 0, 255), (255, 255, 0))


def heatmap_overlay(image: np.ndarray, heatmap: np.ndarray, threshold: float = 0.0, alpha: float = 0.4) -> np.ndarray:
    """Blend a score map onto a frame with the JET colour map.

    Args:
        image: uint8 BGR [H, W, 3].
        heatmap: float [h, w] scores covering the whole frame; resized to [H, W].
        threshold: Scores are scaled to ``[0, max(2 * threshold, max score)]`` so the
            threshold sits mid-scale when it is set; the colour scale at the right edge
            shows that range and marks the threshold.
        alpha: Weight of the colours.

    Returns:
        uint8 BGR [H, W, 3], a new array.
    """
    h, w = image.shape[:2]
    scores = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if scores.ndim != 2 or scores.size == 0:
        return image.copy()
    top = max(float(scores.max()), 2.0 * float(threshold), 1e-6)
    levels = np.clip(scores / top * 255.0, 0, 255).astype(np.uint8)
    levels = cv2.resize(levels, (w, h), interpolation=cv2.INTER_LINEAR)
    colours = cv2.applyColorMap(levels, cv2.COLORMAP_JET)
    blended = cv2.addWeighted(image, 1.0 - alpha, colours, alpha, 0.0)
    draw_colour_scale(blended, top, threshold)
    return blended


def draw_colour_scale(canvas: np.ndarray, top: float, threshold: float = 0.0) -> None:
    """A vertical JET bar at the right edge, labelled 0 and ``top``, with a white tick at ``threshold``."""
    h, w = canvas.shape[:2]
    bar_w, margin = max(6, w // 60), max(4, w // 160)
    bar_h = max(16, h // 3)
    if w < bar_w * 8 or h < bar_h + 4 * margin:
        return  # too small a frame to carry a legend
    scale = max(0.35, min(h, w) / 1200)
    (label_w, label_h), base = cv2.getTextSize(f"{top:.3g}", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x1, y0 = w - margin, margin + label_h + base + margin
    x0, y1 = x1 - bar_w, y0 + bar_h
    ramp = np.linspace(255, 0, bar_h, dtype=np.float32).astype(np.uint8).reshape(-1, 1)
    bar = cv2.applyColorMap(np.repeat(ramp, bar_w, axis=1), cv2.COLORMAP_JET)
    box_x0 = min(x0, w - margin - label_w) - margin
    cv2.rectangle(canvas, (box_x0, 0), (w - 1, y1 + label_h + base + 2 * margin), (32, 32, 32), -1)
    canvas[y0:y1, x0:x1] = bar
    if 0 < threshold < top:
        ty = y1 - int(round(threshold / top * (bar_h - 1)))
        cv2.line(canvas, (x0 - margin, ty), (x1 - 1, ty), (255, 255, 255), 1)
    for text, y in ((f"{top:.3g}", y0 - base - 2), ("0", y1 + label_h + 2)):
        cv2.putText(canvas, text, (w - margin - cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0], y),
                    cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def annotate(
    image: np.ndarray,
    detections: Any,
    class_names: tuple[str, ...] | list[str] = (),
    heatmap: np.ndarray | None = None,
    threshold: float = 0.0,
    caption: str = "",
) -> np.ndarray:
    """Draw boxes with ``class score`` labels (and optionally the heatmap) on a copy of ``image``."""
    canvas = heatmap_overlay(image, heatmap, threshold) if heatmap is not None else image.copy()
    h, w = canvas.shape[:2]
    thickness = max(1, round(min(h, w) / 360))
    scale = max(0.4, min(h, w) / 900)
    xyxy = np.asarray(detections.xyxy, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(detections.score, dtype=np.float32).reshape(-1)
    class_ids = np.asarray(detections.class_id).reshape(-1)
    for (x0, y0, x1, y1), score, class_id in zip(xyxy, scores, class_ids, strict=True):
        colour = _PALETTE[int(class_id) % len(_PALETTE)]
        p0, p1 = (int(round(x0)), int(round(y0))), (int(round(x1)) - 1, int(round(y1)) - 1)
        cv2.rectangle(canvas, p0, p1, colour, thickness)
        name = class_names[int(class_id)] if 0 <= int(class_id) < len(class_names) else str(int(class_id))
        label = f"{name} {score:.2f}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        ty = max(p0[1], th + base)
        cv2.rectangle(canvas, (p0[0], ty - th - base), (p0[0] + tw, ty), colour, -1)
        cv2.putText(canvas, label, (p0[0], ty - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness)
    if caption:
        draw_caption(canvas, caption, scale, thickness)
    return canvas


def draw_caption(canvas: np.ndarray, text: str, scale: float, thickness: int) -> None:
    """White text on a solid dark box in the top-left corner, readable over sky, leaves or snow."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, thickness * 2)
    x1, y1 = min(canvas.shape[1], 2 * pad + tw), min(canvas.shape[0], 2 * pad + th + base)
    cv2.rectangle(canvas, (0, 0), (x1, y1), (32, 32, 32), -1)
    cv2.putText(canvas, text, (pad, pad + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)
