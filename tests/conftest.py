"""Shared fixtures: one synthetic hand-object scene (made once per test session)."""

import pytest


@pytest.fixture(scope="session")
def synth_scene():
    """A 96x96 scene: the procedural hand holding a procedural bottle (seed 3)."""
    from hoiguide.synth.generate import make_scene

    return make_scene("procedural:bottle", seed=3, index=0, image_size=96)
