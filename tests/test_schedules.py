"""Schedules: DFC weight/shift decay and FPS sample decay in both step units (METHOD.md §2.4, §3.5)."""

import pytest

from depthg.config import ScheduleConfig
from depthg.errors import ConfigError, TrainingError
from depthg.training.schedules import Schedule as _Schedule
from depthg.training.schedules import num_iterations


# paper_reproduction.sh presets (METHOD.md §7.2)
def Schedule(*, dfc_weight, dfc_shift, samples, step_unit="reference", **rules):  # noqa: N802 (reads as the class)
    """The schedule of a preset written flat, as the release's config lists it: rules go to ScheduleConfig."""
    return _Schedule(
        dfc_weight=dfc_weight, dfc_shift=dfc_shift, samples=samples, step_unit=step_unit, rules=ScheduleConfig(**rules)
    )


COCO_VITS = dict(
    dfc_weight=0.19,
    dfc_shift=0.03,
    samples=11,
    depth_loss_decay=True,
    decay_every_steps=250,
    depth_loss_decay_factor=0.6,
    fps_sample_decay=True,
    fps_sample_decay_every_steps=1000,
    fps_sample_decay_factor=0.9,
)
COCO_VITB = dict(
    dfc_weight=0.16026274975444096,
    dfc_shift=0.035909146298813595,
    samples=12,
    depth_loss_decay=True,
    decay_every_steps=300,
    depth_loss_decay_factor=0.64,
    fps_sample_decay=True,
    fps_sample_decay_every_steps=1000,
    fps_sample_decay_factor=1.0,
)
CITYSCAPES = dict(
    dfc_weight=0.09,
    dfc_shift=0.03,
    samples=11,
    depth_loss_decay=True,
    decay_every_steps=400,
    depth_loss_decay_factor=0.8,
)
POTSDAM = dict(
    dfc_weight=0.13,
    dfc_shift=0.14,
    samples=11,
    depth_loss_decay=True,
    decay_every_steps=200,
    depth_loss_decay_factor=1.0,
)


def _run(schedule, iterations):
    """Values used at every iteration, stepping the state, and checked against the closed form."""
    state, used = schedule.start(), []
    for it in range(iterations):
        assert state.iteration == it
        used.append((state.dfc_weight, state.dfc_shift, state.samples))
        closed = schedule.at(it)
        assert closed[2] == state.samples
        assert closed[0] == pytest.approx(state.dfc_weight, rel=1e-12)
        assert closed[1] == pytest.approx(state.dfc_shift, rel=1e-12)
        state.advance()
    return used


def _changes(values):
    return [it for it in range(1, len(values)) if values[it] != values[it - 1]]


def test_released_step_count():
    assert num_iterations(7000, step_unit="reference") == 2334
    assert num_iterations(7000, step_unit="paper") == 7000


def test_coco_vits_reference_table():
    used = _run(Schedule(**COCO_VITS, step_unit="reference"), 2334)
    samples = [u[2] for u in used]
    assert samples[0] == 11 and set(samples[1:1001]) == {9} and set(samples[1001:2001]) == {8}
    assert set(samples[2001:]) == {7}
    weight_changes = _changes([u[0] for u in used])
    assert weight_changes == [251, 501, 751, 1001, 1251, 1501, 1751, 2001, 2251], "decays after it 250, 500, ..."
    assert used[-1][0] == pytest.approx(0.19 * 0.6**9) and used[-1][0] == pytest.approx(1.9e-3, rel=0.01)
    assert used[-1][1] == pytest.approx(0.03 * 0.6**9)


def test_coco_vitb_decays_every_100_iterations():
    used = _run(Schedule(**COCO_VITB, step_unit="reference"), 2334)
    changes = _changes([u[0] for u in used])
    assert len(changes) == 23 and changes[:3] == [101, 201, 301]
    assert used[-1][0] == pytest.approx(5.6e-6, rel=0.01)
    assert {u[2] for u in used} == {12}


def test_cityscapes_and_potsdam():
    used = _run(Schedule(**CITYSCAPES, step_unit="reference"), 2334)
    assert len(_changes([u[0] for u in used])) == 5 and used[-1][0] == pytest.approx(0.0295, rel=0.01)
    used = _run(Schedule(**POTSDAM, step_unit="reference"), 2334)
    assert {u[0] for u in used} == {0.13} and {u[2] for u in used} == {11}


def test_paper_step_unit_counts_iterations():
    used = _run(Schedule(**COCO_VITS, step_unit="paper"), 7000)
    samples = [u[2] for u in used]
    assert set(samples[:1001]) == {11}, "no FPS decay at step 0 in iterations"
    assert samples[1001] == 9 and samples[2001] == 8
    assert len(_changes([u[0] for u in used])) == 27
    used = _run(Schedule(**CITYSCAPES, step_unit="paper"), 7000)
    assert len(_changes([u[0] for u in used])) == 17


def test_fix_shift_and_min_samples():
    s = Schedule(**{**COCO_VITS, "fix_depth_feat_shift": True, "fps_min_samples": 10}, step_unit="reference")
    weight, shift, samples = s.at(2000)
    assert shift == 0.03 and weight < 0.19 and samples == 10


def test_resume_matches_uninterrupted_run():
    schedule = Schedule(**COCO_VITS, step_unit="reference")
    full = schedule.start()
    for _ in range(1500):
        full.advance()
    first = schedule.start()
    for _ in range(700):
        first.advance()
    saved = dict(first.state_dict())
    resumed = schedule.start()
    resumed.load_state_dict(saved)
    for _ in range(800):
        resumed.advance()
    assert resumed.state_dict() == full.state_dict()
    assert Schedule(**COCO_VITS).dfc_weight == 0.19, "the hyper-parameters never change"
    with pytest.raises(TrainingError):
        resumed.load_state_dict({"iteration": 3})


def test_bad_values_raise():
    with pytest.raises(ConfigError):
        Schedule(**COCO_VITS, step_unit="epochs")
    with pytest.raises(ConfigError):
        Schedule(**{**COCO_VITS, "decay_every_steps": 0})
