"""CarRacing's road drawn with the same pygame calls, its per-vertex Python vectorised.

Gymnasium's `CarRacing._render_road` rotates, scales and culls every one of the ≈ 700 grass and road
polygons vertex by vertex in Python on every step, to draw the ≈ 60 that are on screen: 14 of the 20 ms a
step took here. `render_road` computes the same transforms with numpy on arrays built once per track and
then makes the very same `gfxdraw` calls, in the same order, with the same coordinates, so the frames are
pixel-identical (tests/test_tasks.py compares whole episodes). The rotation's cosine and sine come from
pygame's own `Vector2.rotate_rad` (which special-cases right angles), and the products are the ones it
computes, so the vertices agree to the bit.
"""
from __future__ import annotations

from types import MethodType
from typing import Any, List, Tuple

import numpy as np


def _grass(grass_dim: float) -> np.ndarray:
    """(400, 4, 2): the grass patches `_render_road` lists, in its order."""
    patches = []
    for x in range(-20, 20, 2):
        for y in range(-20, 20, 2):
            patches.append([(grass_dim * x + grass_dim, grass_dim * y + 0), (grass_dim * x + 0, grass_dim * y + 0),
                            (grass_dim * x + 0, grass_dim * y + grass_dim),
                            (grass_dim * x + grass_dim, grass_dim * y + grass_dim)])
    return np.asarray(patches, dtype=np.float64)


def _road(road_poly: List[Tuple[Any, Any]]) -> np.ndarray:
    """The track's polygons: every one has 4 vertices. (Their colours are read at each draw: a tile's colour
    changes when the car first touches it.)"""
    return np.asarray([[(p[0], p[1]) for p in poly] for poly, _ in road_poly], dtype=np.float64).reshape(-1, 4, 2)


def render_road(self: Any, zoom: float, translation: Tuple[float, float], angle: float) -> None:
    import pygame
    from gymnasium.envs.box2d import car_racing as cr
    from pygame import gfxdraw

    cache = self.__dict__.get("_edge_digr_road")
    if cache is None or cache[0] is not self.road_poly:  # a new track after each reset
        cache = (self.road_poly, _road(self.road_poly))
        self._edge_digr_road = cache
    road = cache[1]
    cos, sin = pygame.math.Vector2(1.0, 0.0).rotate_rad(angle)
    tx, ty = translation

    def screen(polys: np.ndarray) -> np.ndarray:
        x, y = polys[..., 0], polys[..., 1]
        return np.stack([(cos * x - sin * y) * zoom + tx, (sin * x + cos * y) * zoom + ty], axis=-1)

    def draw(polys: np.ndarray, colors: Any, clip: bool = True) -> None:
        """`colors`: one colour for all, or road_poly's (polygon, colour) list."""
        pts = screen(polys)
        m = cr.MAX_SHAPE_DIM
        visible = (((-m <= pts[..., 0]) & (pts[..., 0] <= cr.WINDOW_W + m) &
                    (-m <= pts[..., 1]) & (pts[..., 1] <= cr.WINDOW_H + m)).any(axis=1) if clip
                   else np.ones(len(pts), bool))
        for i in np.flatnonzero(visible):
            poly = [tuple(p) for p in pts[i].tolist()]
            color = [int(c) for c in colors[i][1]] if isinstance(colors, list) else colors
            gfxdraw.aapolygon(self.surf, poly, color)
            gfxdraw.filled_polygon(self.surf, poly, color)

    b = cr.PLAYFIELD
    draw(np.asarray([[(b, b), (b, -b), (-b, -b), (-b, b)]], dtype=np.float64), self.bg_color, clip=False)
    draw(_GRASS, self.grass_color)
    draw(road, self.road_poly)


GRASS_DIM = 2000 / 6.0 / 20.0  # gymnasium's PLAYFIELD / 20, written out so that importing this needs no gymnasium
_GRASS = _grass(GRASS_DIM)


def install(env: Any) -> Any:
    """Give this CarRacing env the vectorised road renderer; returns `env`."""
    from gymnasium.envs.box2d import car_racing as cr

    if cr.GRASS_DIM != GRASS_DIM:  # another gymnasium, other patches: keep its own renderer
        return env
    base = env.unwrapped
    base._render_road = MethodType(render_road, base)
    return env
