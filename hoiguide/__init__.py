"""hoiguide: hand-held object reconstruction by geometrically guided rectified-flow sampling.

The public API is flat; see the README for a tour. Heavy optional parts import lazily.
"""

from hoiguide.types import Camera, Mesh, Observations, Similarity, SimilarityParams

__version__ = "0.1.0"

__all__ = ["Camera", "Mesh", "Observations", "Similarity", "SimilarityParams", "__version__"]
