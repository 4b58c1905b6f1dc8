import pytest

from peel.config import LayerRange
from peel.errors import PeelError
from peel.unlearning.schedules import forget_coefficient, progress, retain_coefficient, retain_layer_set
from peel.layers import target_layers


def test_layer_ranges_from_the_seed():
    assert target_layers(LayerRange(start=28, end=16, step=4), 32) == [28, 24, 20, 16]
    assert target_layers(LayerRange(start=31, end=11, step=4), 32) == [31, 27, 23, 19, 15, 11]
    assert target_layers(LayerRange(start=None, end=8, step=4), 32) == [31, 27, 23, 19, 15, 11]
    assert target_layers([5, 2], 8) == [5, 2]


@pytest.mark.parametrize(
    "layers, message",
    [([8], "layer 8; the model has layers 0..7"), ([-1], "layer -1"), ([], "empty"), ([3, 3], "repeats"),
     (LayerRange(start=2, end=5, step=1), "after start"), (LayerRange(start=5, end=1, step=0), "positive")],
)
def test_bad_layer_schedules(layers, message):
    with pytest.raises(PeelError, match=message):
        target_layers(layers, 8)


def test_retain_layer_sets():
    assert retain_layer_set("all", 5, 8) == list(range(8))
    assert retain_layer_set("target", 5, 8) == [5]
    assert retain_layer_set([6, 2, 2], 5, 8) == [2, 6]
    with pytest.raises(PeelError, match="layer 9"):
        retain_layer_set([9], 5, 8)


def test_ramps():
    assert [progress(i, 5) for i in range(5)] == [0, 0.25, 0.5, 0.75, 1]
    assert retain_coefficient(8, "from_zero", 0) == 0 and retain_coefficient(8, "from_zero", 1) == 8
    assert retain_coefficient(8, "from_quarter", 0) == 2 and retain_coefficient(8, "from_quarter", 0.5) == 5
    assert forget_coefficient(40, 0) == 40 and forget_coefficient(40, 1) == 30 and forget_coefficient(40, 0.5) == 35
