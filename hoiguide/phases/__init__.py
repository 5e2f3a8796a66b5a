"""Phase schedules: what the guided sampler optimises, when, how and against which losses.

Modules: :mod:`~hoiguide.phases.model` (the frozen data model and its validation),
:mod:`~hoiguide.phases.steps` (which steps a phase covers), :mod:`~hoiguide.phases.load`
(files, presets, ``base:``), presets in ``presets/``.

One YAML file describes one schedule::

    name: my_schedule
    description: free text
    num_steps: 20                 # default number of flow steps (the caller may override)
    guidance_scale: 5.0           # classifier-free guidance weight
    guidance_decay:               # optional; null = constant CFG weight
      start: 0.55                 # fraction of the trajectory (or start_step: 11)
      kind: linear                # w_i = guidance_scale * (1 - i / num_steps) from there on
    on_nonfinite: skip            # raise | skip | stop  (a NaN/inf loss term)
    phases:
      - name: hand
        window: {start: 0.45, end: 0.5}   # fractions of the trajectory (or steps: [9])
        iterations: 200                   # inner iterations per covered step
        optimizer: {type: adam, eps: 1.0e-4}
        optimize:                         # parameter group -> learning rate
          hand.scale: 1.0e-2
          hand.translation: 1.0e-2
          hand.rotation: 0.5
        weights:                          # registered loss name -> weight (or mapping)
          keypoints_2d: 1.0e-2
          normal: {weight: 1.0, mask: hand}
          normal@late: {weight: 1.0e-3, mask: hand}   # label@suffix: a 2nd term of one loss
          intersection:
            weight: 1.0e-9
            by_step: [{from: -3, weight: 1.0e-5}]     # from the phase's 3rd-to-last step on

**Windows.** ``window: {start, end}`` covers the steps ``i`` with
``floor(start * N) <= i < floor(end * N)`` (``N`` = number of steps), so windows keep their
meaning when ``N`` changes; with ``N = 20`` the window ``[0.45, 0.5)`` is step 9. Phases are
resolved in trajectory order and every windowed phase gets at least one step while there are
as many steps as windows: a window too narrow for ``N`` takes the next free step and pushes
the following windows along (``N = 10``: ``[0.45, 0.5) -> [4]``, ``[0.5, 0.55) -> [5]``,
``[0.55, 1] -> [6..9]``); windows pushed past the end take free steps before them instead
(``N = 3``: ``[0]``, ``[1]``, ``[2]``). With fewer steps than windows the EARLIEST phases are
left without a step: :meth:`resolve` reports them empty (and the engine skips them).
``steps: [9, 10]`` gives explicit step indices (negative ones count from the end).
``window: after_sampling`` makes a phase run once AFTER the last flow step on the final
sample: it may only optimise similarity groups (and ``latent``), never ``velocity``; such
phases run in list order (the ``no_guidance`` ablation: generate, then fit the transforms).

**Update rules** (per in-loop phase): ``update: euler`` (default, the reference: the flow step
uses the optimised velocity) or ``update: renoise`` (the optimised clean estimate is re-noised
to the next sigma with the model's own noise estimate, so the whole correction is kept);
``repeats: r`` runs the inner loop and the update ``r`` times per step, going back to the
step's sigma with fresh noise in between ("time travel"). Formulas for both time conventions:
:mod:`hoiguide.guidance.updates`.

**Parameter groups** (``optimize``): ``velocity``, ``latent``, ``hand.scale``,
``hand.rotation``, ``hand.translation``, ``object.scale``, ``object.rotation``,
``object.translation``. A fresh optimiser is built for each step a phase covers
(:meth:`Phase.make_optimizer`).

**Weights** name losses registered in :data:`hoiguide.losses.LOSSES`; a value is a number or a
mapping with ``weight`` plus the loss's options (and optionally ``by_step``: a list of
``{from: k, weight: w}``, ``k`` an index into the phase's steps, negative from the end; later
entries win). A key ``loss@label`` adds a second term of the same loss with its own options
and weight.

**Deriving a schedule** from another one (``base:``): the file is deep-merged onto the base
(a preset name or a path relative to the file). Mappings merge key by key, ``null`` deletes a
key, scalars and lists replace. ``phases`` may be a LIST (replaces the base's phases) or a
MAPPING ``phase name -> changes``: changes deep-merge into that phase, ``null`` removes it, an
unknown name adds a new (complete) phase. ``drop_losses: [normal]`` then removes every term of
those losses (labelled variants included) from every phase. ``name`` defaults to the file's
stem.

**Clips** (``clip:``, :class:`~hoiguide.phases.model.ClipSpec`): how a multi-frame run
(:func:`hoiguide.guided_reconstruct_video`, :class:`hoiguide.guidance.clip.ClipGuidedSampler`)
uses the frames of a clip. A single-image run ignores the block; a clip run of a schedule
without it uses the defaults below (the presets ``video_fast`` and ``video`` are ``fast`` and
``followmyhold`` with this block). The phases, windows and weights above apply unchanged: a
phase's image terms are evaluated per frame, and the temporal terms below are added in every
phase. Unknown keys are refused with a did-you-mean message, like every other key::

    clip:
      frames_per_iteration: 2      # observed frames whose image terms each inner iteration
                                   # evaluates, in turn so every frame is visited (averaged)
      condition: reference         # reference: every flow step is conditioned on the
                                   # reference frame's object image; cycle: step i on the
                                   # (i mod n)-th observed frame, the reference first
      smoothness_weight: 1.0e4     # second differences over time of the object's pose (the
                                   # decode box's corners and centre placed per frame)
      hand_smoothness_weight: 1.0e3  # the same on the observed hands' vertices
      contact_weight: 1.0e4        # contact consistency: the reference frame's hand vertices
                                   # in contact keep their place on the object where visible
      contact_distance: 0.005      # metres: hand vertices this close to the object surface
                                   # (reference frame) form the contact set
      initial_poses: robust        # robust: a frame whose pose disagrees with both its
                                   # neighbours and the hand's motion takes the pose carried
                                   # by the grasp; icp: each frame's alignment as given
      outlier_rotation_deg: 20.0   # robust: disagreement in degrees ...
      outlier_translation: 0.02    # ... or in metres at the object's centre

Weights multiply terms in metres^2 (:mod:`hoiguide.losses.temporal`); all must be ``>= 0``,
``frames_per_iteration`` a positive integer, the outlier thresholds positive.
"""
from hoiguide._lazy import lazy_exports

DEFAULT_SCHEDULE = "fast_posthoc_fit"
"""The schedule every entry point uses when none is given (``guided_reconstruct``, the photo
chain, ``demo``, ``bench``, ``batch``, the app): on the bundled tiny generator it was the best
preset of the README's benchmark at the CPU budget (sample, then fit the final latent and
the transforms; ``fast`` is the same budget with guidance in the loop, ``followmyhold`` the
paper's full schedule)."""

# public name -> submodule that defines it (imported on first use)
_EXPORTS = {
    'load_schedule': 'load',
    'available_presets': 'load',
    'PhaseSchedule': 'model',
    'Phase': 'model',
    'OptimizerSpec': 'model',
    'LossWeight': 'model',
    'Term': 'model',
    'Window': 'model',
    'GuidanceDecay': 'model',
    'ResolvedPhase': 'model',
    'ResolvedSchedule': 'model',
    'ClipSpec': 'model',
    'parse_schedule': 'model',
    'GROUPS': 'model',
    'SIMILARITY_GROUPS': 'model',
    'ScheduleError': 'errors',
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
