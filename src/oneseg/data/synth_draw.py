"""Drawing the synthetic dataset's shapes, ground layouts and textures.

Sizes scale with the image, so the same scene reads alike at 160x160 and at 640x480.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

# (name, RGB): each thing class has its own shape and its own colour
THINGS = [
    ("circle", (220, 40, 40)),
    ("square", (40, 70, 215)),
    ("triangle", (240, 215, 40)),
    ("star", (200, 50, 200)),
    ("cross", (255, 140, 0)),
]
STUFF = [
    ("sky", (150, 195, 240)),
    ("grass", (70, 150, 60)),
    ("wall", (165, 120, 95)),
]
SKY, GRASS, WALL = range(3)


def _polygon_mask(points: list[tuple[float, float]], height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def _rotated(points, cx: float, cy: float, angle: float):
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def shape_mask(
    kind: str, cx: float, cy: float, radius: float, angle: float, height: int, width: int
) -> np.ndarray:
    """[H, W] bool of a shape centred at (cx, cy) with about `radius` reach, rotated."""
    if kind == "circle":
        canvas = Image.new("L", (width, height), 0)
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        ImageDraw.Draw(canvas).ellipse(box, fill=1)
        return np.asarray(canvas, dtype=bool)
    if kind == "square":
        half = radius / math.sqrt(2) * 1.1
        points = [(-half, -half), (half, -half), (half, half), (-half, half)]
    elif kind == "triangle":
        r = radius * 1.2
        points = [
            (r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
    elif kind == "star":
        points = []
        for k in range(10):
            r = radius * (1.2 if k % 2 == 0 else 0.5)
            a = -math.pi / 2 + k * math.pi / 5
            points.append((r * math.cos(a), r * math.sin(a)))
    elif kind == "cross":
        a, b = radius * 1.05, radius * 0.36
        points = [
            (-b, -a),
            (b, -a),
            (b, -b),
            (a, -b),
            (a, b),
            (b, b),
            (b, a),
            (-b, a),
            (-b, b),
            (-a, b),
            (-a, -b),
            (-b, -b),
        ]
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return _polygon_mask(_rotated(points, cx, cy, angle), height, width)


def crowd_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A cluster of small touching circles: one crowd region."""
    short = min(height, width)
    box = rng.uniform(0.2, 0.3) * short
    x0, y0 = rng.uniform(0, width - box), rng.uniform(0, height - box)
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(int(rng.integers(6, 11))):
        r = rng.uniform(0.025, 0.045) * short
        cx, cy = x0 + rng.uniform(0, box), y0 + rng.uniform(0, box)
        mask |= shape_mask("circle", cx, cy, r, 0.0, height, width)
    return mask


def _wavy(rng: np.random.Generator, base: float, amplitude: float, length: int) -> np.ndarray:
    x = np.arange(length)
    period = rng.uniform(0.4, 1.2) * length
    return base + amplitude * np.sin(2 * np.pi * x / period + rng.uniform(0, 2 * np.pi))


def stuff_layout(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """[H, W] stuff index per pixel, in one of four arrangements."""
    ys, xs = np.mgrid[0:height, 0:width]
    layout = int(rng.integers(4))
    out = np.full((height, width), GRASS, dtype=np.int8)
    if layout == 0:  # sky, wall, grass from top to bottom
        sky_end = rng.uniform(0.2, 0.4) * height
        grass_top = _wavy(rng, rng.uniform(0.6, 0.8) * height, 0.04 * height, width)
        out[ys < grass_top[None, :]] = WALL
        out[ys < sky_end] = SKY
    elif layout == 1:  # sky over a wall on one side and grass on the other
        split = rng.uniform(0.3, 0.7) * width
        wall_side = (xs < split) if rng.random() < 0.5 else (xs >= split)
        out[wall_side] = WALL
        out[ys < rng.uniform(0.2, 0.4) * height] = SKY
    elif layout == 2:  # sky over grass, a wavy horizon
        horizon = _wavy(rng, rng.uniform(0.35, 0.65) * height, 0.06 * height, width)
        out[ys < horizon[None, :]] = SKY
    else:  # wall and grass with a slanted boundary
        slope = rng.uniform(-0.5, 0.5)
        out[ys < rng.uniform(0.4, 0.6) * height + slope * (xs - width / 2)] = WALL
    return out


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Noise in [-1, 1] varying over about `cell` pixels."""
    grid = rng.uniform(-1, 1, (height // cell + 2, width // cell + 2)).astype(np.float32)
    image = Image.fromarray(grid, mode="F").resize(
        ((width // cell + 2) * cell, (height // cell + 2) * cell), Image.BICUBIC
    )
    return np.asarray(image)[:height, :width]


def stuff_texture(name: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """[H, W, 3] float texture of a stuff class over the whole image."""
    scale = min(height, width) / 160
    base = np.array(dict(STUFF)[name], dtype=np.float32)
    if name == "sky":  # light at the horizon, deeper blue above
        t = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        top = base * 0.8
        bottom = np.minimum(base * 1.15 + 20, 255)
        tex = top + (bottom - top) * t + np.zeros((1, width, 1), np.float32)
        return tex + rng.normal(0, 2.5, (height, width, 3)).astype(np.float32)
    if name == "grass":  # blotches and fine speckle
        blotch = _smooth_noise(rng, height, width, max(2, int(12 * scale)))[..., None]
        speckle = rng.normal(0, 14, (height, width, 3)).astype(np.float32)
        return base * (1 + 0.22 * blotch) + speckle
    # wall: rows of bricks with lighter mortar lines, rows offset by half a brick
    brick_h = max(4, int(rng.uniform(8, 13) * scale))
    brick_w = brick_h * 2
    ys, xs = np.mgrid[0:height, 0:width]
    row = ys // brick_h
    shifted = xs + (row % 2) * (brick_w // 2)
    mortar = (ys % brick_h < max(1, brick_h // 6)) | (shifted % brick_w < max(1, brick_h // 6))
    shade = 0.85 + 0.3 * ((row * 7 + shifted // brick_w * 13) % 5 / 4.0)
    tex = base * shade[..., None].astype(np.float32)
    tex[mortar] = (205, 200, 190)
    return tex + rng.normal(0, 4, (height, width, 3)).astype(np.float32)


def paint_thing(
    color: tuple[int, int, int], rng: np.random.Generator, height: int, width: int
) -> np.ndarray:
    """[H, W, 3] float colour of one instance: its class colour, shifted a little per
    instance, with soft shading so that it is not flat."""
    shift = rng.uniform(-18, 18, 3).astype(np.float32)
    light = _smooth_noise(rng, height, width, max(4, min(height, width) // 6))[..., None]
    return (np.array(color, np.float32) + shift) * (1 + 0.08 * light)


def drawn_scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A textured picture with shapes, for when no photograph is at hand."""
    rng = np.random.default_rng(seed)
    layout = stuff_layout(rng, height, width)
    picture = np.zeros((height, width, 3), dtype=np.float32)
    for index, (name, _) in enumerate(STUFF):
        region = layout == index
        picture[region] = stuff_texture(name, rng, height, width)[region]
    for color, (cx, cy) in (((200, 40, 40), (0.3, 0.6)), ((40, 40, 200), (0.7, 0.7))):
        mask = shape_mask("circle", cx * width, cy * height, 0.15 * width, 0.0, height, width)
        picture[mask] = paint_thing(color, rng, height, width)[mask]
    return picture.clip(0, 255).astype(np.uint8)
