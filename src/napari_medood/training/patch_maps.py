"""What the map networks trained on patches share (the U-Net, the segmenter): their step plan
for the spine (AdamW with mood22's one-cycle schedule, a loss on the network's outputs) and
validation scored exactly as ``medood-eval`` scores a detector, so that the checkpoint kept is
the best by what users measure."""

from __future__ import annotations

from napari_medood.errors import MedoodError


def validate_map(
    model, card: dict, cases, device: str, precision: str = "auto", detector_class=None
) -> dict:
    """Pixel AP (MOOD, all brain voxels pooled) and sample AUROC of ``model`` on ``cases``,
    predicted and scored as ``medood-eval`` does (by ``detector_class``, a map detector with
    ``from_models``; default the U-Net's)."""
    from napari_medood.detectors.unet import UNetDetector
    from napari_medood.evaluation import DetectorPredictions, EvalOptions, evaluate

    was_training = model.training
    model.eval()
    detector = (detector_class or UNetDetector).from_models(
        [model], [card], device=device, precision=precision
    )
    result = evaluate(
        cases, DetectorPredictions(detector), options=EvalOptions(bootstrap=0, fprs=())
    )
    if was_training:
        model.train()
    failed = result.settings["failed"]
    if failed:
        raise MedoodError(f"validation failed on {failed[0]['case']}: {failed[0]['error']}")
    return {
        "pixel_ap": result.pixel.get("ap"),
        "pixel_auroc": result.pixel.get("auroc"),
        "sample_auroc": result.sample.get("auroc"),
        "cases": len(cases),
    }


def patch_map_plan(
    run, network, dataset, loss, card_of, training: dict, val_cases, detector_class=None
):
    """The spine's plan for a map network trained on ``(patch, target)`` batches:
    ``loss(outputs, targets)`` after a forward pass under the run's autocast; AdamW
    (``lr``, ``weight_decay``) with a one-cycle schedule up to ``max_lr``; validation by
    pixel AP on ``val_cases`` (none without them) with the card ``card_of({}, training)``."""
    import torch

    from napari_medood.training.spine import Schedule, StepPlan

    config, execution = run.config, run.execution

    def step_loss(model, batch, step):
        images, targets = batch
        with execution.autocast():
            outputs = model(execution.inputs(images))
        return loss(outputs, targets.to(run.device, non_blocking=True))

    def validate(module) -> dict:
        card = card_of({}, training)
        return validate_map(
            module, card, val_cases, run.device, execution.precision, detector_class
        )

    return StepPlan(
        network=network,
        dataset=dataset,
        step_loss=step_loss,
        optimiser=lambda parameters: torch.optim.AdamW(
            parameters, lr=config.lr, weight_decay=config.weight_decay
        ),
        schedule=Schedule("one-cycle", config.lr, peak=config.max_lr),
        card=card_of,
        training=training,
        validate=validate if val_cases else None,
    )
