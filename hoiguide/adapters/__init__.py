"""Foundation-model adapters: each wraps one model, states its native frame and converts its
output into the image-aligned frame (OpenCV camera frame of the crop, metres, pixels with
centres at +0.5). Heavy dependencies are imported lazily; a missing one raises an
``ImportError`` naming the extra (or the pip command) to install, missing weights raise
:class:`~hoiguide.adapters._util.WeightsNotFoundError` listing where we looked.

Roles and what they need:

* crop: :func:`make_crop` -> :class:`Crop` (core dependencies only);
* text segmentation: :class:`TextSegmenter` (GroundingDINO + SAM through ``transformers``,
  extra ``[segment]``; or the ``lang_sam`` package when installed);
* inpainting: :class:`FluxKontextInpainter` (``diffusers``, extra ``[inpaint]``; gated,
  non-commercial weights) or :class:`OpenCVInpainter` (offline), then :func:`object_image`;
* monocular geometry: :class:`MoGeEstimator` -> :class:`PointMap` (MoGe, installed from its
  GitHub repository);
* hand: :class:`HaMeREstimator` (HaMeR from GitHub + the user's MANO file) or
  :class:`MediaPipeHandEstimator` (mediapipe 0.10.21, offline) with
  :func:`fit_hand_to_keypoints`.

The chain from a photo to :class:`~hoiguide.types.Observations` is
:func:`observations_from_image` with the models of :class:`Models`; for a clip,
:func:`clip_observations_from_frames` runs it on every frame with the models loaded once and
the hand box tracked between frames (:func:`track_boxes`), and :func:`clip_to_full_frame`
maps a clip reconstruction from the crops back to the video's camera frame.
"""

from hoiguide._lazy import lazy_exports

# public name -> submodule that defines it (imported on first use, so optional heavy
# dependencies are only needed by the parts that use them)
_EXPORTS = {
    # crop
    'Crop': 'crop',
    'make_crop': 'crop',
    'default_camera': 'crop',
    'resample_box': 'crop',
    # segmentation
    'SegmentationResult': 'segmentation',
    'TextSegmenter': 'segmentation',
    # inpainting
    'Inpainter': 'inpainting',
    'OpenCVInpainter': 'inpainting',
    'FluxKontextInpainter': 'inpainting',
    'object_image': 'inpainting',
    # monocular geometry
    'PointMap': 'moge',
    'MoGeEstimator': 'moge',
    'moge_to_point_map': 'moge',
    # hands
    'HandEstimate': 'hand',
    'HaMeREstimator': 'hamer',
    'MediaPipeHandEstimator': 'mediapipe_hand',
    'fit_hand_to_keypoints': 'keypoint_fit',
    'hamer_to_hand_estimate': 'hamer',
    'mediapipe_to_keypoints': 'mediapipe_hand',
    # errors
    'WeightsNotFoundError': '_util',
    'NoDetectionError': '_util',
    # the image -> Observations chain (pipeline.py, models.py)
    'Models': 'models',
    'ModelsConfigError': 'models',
    'ModelLoadError': 'models',
    'load_models_config': 'models',
    'PipelineError': 'pipeline',
    'PipelineOptions': 'options',
    'ImageError': 'pipeline',
    'load_image': 'pipeline',
    'observations_from_image': 'pipeline',
    # clips: the image chain per frame, the hand box tracked (clip.py)
    'clip_observations_from_frames': 'clip',
    'clip_to_full_frame': 'clip',
    'track_boxes': 'clip',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
